//! `etl audit report` (who looked at what, per login or purpose) and `etl audit export` (the
//! trail as JSON lines for a SIEM, paged and resumable by id), as auditor logins, counted
//! against what the logins actually did.

use crate::support::{Setup, two_logins_each};

/// Five users, two logins each (`r1`..`r5`).
fn logins() -> String {
    two_logins_each("r", 6, "rdev")
}

fn reveal<'a>(user: &'a str, purpose: &'a str) -> [&'a str; 7] {
    [
        "reveal",
        "--user-id",
        user,
        "--purpose",
        purpose,
        "--reason",
        "report case 42",
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_counts_reveals_users_and_refusals_per_login_and_purpose() {
    let s = Setup::new().await;
    s.load_lines(&logins()).await;
    let (_admin, admin_url) = s.login("piivault_admin").await;
    s.etl
        .clone()
        .with("DATABASE_URL", &admin_url)
        .run(&[
            "policy",
            "set",
            "--users-per-window",
            "3",
            "--reason",
            "three users per login per day",
        ])
        .await
        .assert_success();
    let (a, _, as_a) = s.login_etl("piivault_auditor").await;
    let (b, _, as_b) = s.login_etl("piivault_auditor").await;
    for (user, purpose) in [
        ("r1", "fraud-investigation"),
        ("r2", "fraud-investigation"),
        ("r1", "customer-support"),
        ("r3", "customer-support"),
    ] {
        as_a.run(&reveal(user, purpose)).await.assert_success();
    }
    let over = as_a.run(&reveal("r4", "fraud-investigation")).await;
    assert_eq!(
        over.code, 77,
        "the fourth user is over the quota: {}",
        over.stderr
    );
    as_b.run(&reveal("r5", "fraud-investigation"))
        .await
        .assert_success();

    let by_login = as_a
        .run(&["audit", "report", "--by", "login", "--format", "json"])
        .await
        .json_lines();
    let row = |login: &str| {
        by_login
            .iter()
            .find(|g| g["login"] == login)
            .unwrap_or_else(|| panic!("{login} in {by_login:?}"))
            .clone()
    };
    assert_eq!(
        row(&a),
        serde_json::json!({"login": a, "reveals": 4, "records": 8, "users": 3, "refusals": 1,
                           "requests": 0, "approvals": 0})
    );
    assert_eq!(
        row(&b),
        serde_json::json!({"login": b, "reveals": 1, "records": 2, "users": 1, "refusals": 0,
                           "requests": 0, "approvals": 0})
    );
    assert_eq!(
        by_login.len(),
        2,
        "the policy change is no access: {by_login:?}"
    );

    let by_purpose = as_b
        .run(&["audit", "report", "--by", "purpose", "--format", "csv"])
        .await;
    assert_eq!(
        by_purpose.assert_success().stdout,
        "purpose,reveals,records,users,refusals,requests,approvals\n\
         fraud-investigation,3,6,3,1,0,0\n\
         customer-support,2,4,2,0,0,0\n"
    );
    // --since after everything: nothing to report.
    let later = as_a
        .run(&[
            "audit",
            "report",
            "--by",
            "login",
            "--since",
            "2999-01-01T00:00:00Z",
            "--format",
            "json",
        ])
        .await;
    assert_eq!(later.assert_success().stdout, "");
    let table = as_a.run(&["audit", "report", "--by", "login"]).await;
    assert!(
        table.assert_success().stdout.starts_with("login"),
        "{}",
        table.stdout
    );
    assert!(!table.stdout.contains("10.6.") && !table.stdout.contains("rdev-"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_export_streams_every_row_in_pages_and_resumes_by_id() {
    let s = Setup::new().await;
    s.load_lines(&logins()).await;
    let (_auditor, _, etl) = s.login_etl("piivault_auditor").await;
    etl.run(&reveal("r1", "fraud-investigation"))
        .await
        .assert_success();
    // 5,100 more rows, appended by the server's own function (as the owner), so the export
    // (1,000 rows a page) and the chain check (5,000) both cross page boundaries.
    for n in [2000, 2000, 1100] {
        sqlx::query(
            "SELECT vault.audit_record('verify', 'all', NULL, NULL, 'bulk rows for paging', 'test',
                    0, NULL, NULL, NULL, NULL, NULL) FROM generate_series(1, $1)",
        )
        .bind(n)
        .execute(&s.db.pool)
        .await
        .unwrap();
    }
    etl.run(&reveal("r2", "legal-request"))
        .await
        .assert_success();
    let total = s.db.count("SELECT count(*) FROM vault.reveal_audit").await;
    assert_eq!(total, 5102);

    let all = etl.run(&["audit", "export"]).await.json_lines();
    assert_eq!(all.len() as i64, total);
    let ids: Vec<i64> = all.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "every id once, in order"
    );
    assert_eq!(all[0]["action"], "reveal");
    assert_eq!(all[0]["purpose"], "fraud-investigation");
    assert_eq!(all[0]["subjects"], serde_json::json!(["r1"]));
    assert_eq!(all[0]["hash"].as_str().unwrap().len(), 64);
    assert_eq!(all[5101]["purpose"], "legal-request");
    let text = serde_json::to_string(&all).unwrap();
    assert!(
        !text.contains("10.6.") && !text.contains("rdev-"),
        "no revealed value"
    );

    // Resume after the 3,500th row: exactly the rest.
    let cut = ids[3499].to_string();
    let rest = etl
        .run(&["audit", "export", "--after-id", &cut])
        .await
        .json_lines();
    assert_eq!(rest, all[3500..].to_vec());
    let since = all[5101]["at"].as_str().unwrap().to_owned();
    let newest = etl
        .run(&["audit", "export", "--since", &since])
        .await
        .json_lines();
    assert_eq!(newest.last(), all.last());
    assert!(newest.len() < 10, "{}", newest.len());
    // The export reads; the trail still verifies, across the chain check's pages...
    let verified = etl.run(&["audit", "verify"]).await.json();
    assert_eq!(
        (verified["rows"].as_i64(), verified["broken"].as_i64()),
        (Some(5102), Some(0))
    );
    // ...and an edit on its second page shows.
    let mut owner = s.db.pool.acquire().await.unwrap();
    for sql in [
        "SET session_replication_role = replica",
        "UPDATE vault.reveal_audit SET reason = 'nothing to see here' WHERE id = 5050",
        "RESET session_replication_role",
    ] {
        sqlx::query(sql).execute(&mut *owner).await.unwrap();
    }
    drop(owner);
    let edited = etl.run(&["audit", "verify"]).await;
    assert_eq!(edited.code, 65, "{}", edited.stderr);
    assert!(
        edited.stderr.contains("audit row 5050: the row was edited"),
        "{}",
        edited.stderr
    );
}
