//! Reveal governance, enforced by the database (migration 0014): purposes, quotas and the
//! two-person rule, each attacked with plain SQL as the role it restrains, with a real login
//! per role. Every refusal is an audit row, and the chain still verifies.

use sqlx::PgPool;

use crate::support::{Setup, attempt, two_logins_each};

/// Five users, two logins each (`u1`..`u5`).
fn logins() -> String {
    two_logins_each("u", 8, "dev")
}

fn reveal<'a>(user: &'a str, purpose: &'a str, reason: &'a str) -> Vec<&'a str> {
    vec![
        "reveal",
        "--user-id",
        user,
        "--purpose",
        purpose,
        "--reason",
        reason,
    ]
}

async fn audit_rows(pool: &PgPool) -> Vec<(String, Option<String>, Option<i64>, Option<String>)> {
    sqlx::query_as("SELECT action, purpose, request_id, note FROM vault.reveal_audit ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_purpose_is_stored_and_a_bad_one_is_refused() {
    let s = Setup::new().await;
    s.load_lines(&logins()).await;
    let (_auditor, auditor_url, etl) = s.login_etl("piivault_auditor").await;
    let purposes = [
        "fraud-investigation",
        "data-subject-request",
        "legal-request",
        "security-incident",
        "customer-support",
    ];
    for purpose in purposes {
        let run = etl.run(&reveal("u1", purpose, "case 123 review")).await;
        assert_eq!(run.stdout.lines().count(), 2, "{purpose}: {}", run.stderr);
    }
    let long = "a reason long enough for the purpose other, forty+";
    etl.run(&reveal("u1", "other", long)).await.assert_success();
    let stored: Vec<Option<String>> = audit_rows(&s.db.pool)
        .await
        .into_iter()
        .map(|r| r.1)
        .collect();
    let mut expected: Vec<Option<String>> = purposes.iter().map(|p| Some(p.to_string())).collect();
    expected.push(Some("other".into()));
    assert_eq!(stored, expected);

    // Refused before any connection: not a listed purpose, none, or `other` with a short reason.
    for args in [
        reveal("u1", "curiosity", "case 123 review"),
        vec!["reveal", "--user-id", "u1", "--reason", "case 123 review"],
        reveal("u1", "other", "a short reason, 30 characters"),
    ] {
        let run = etl.run(&args).await;
        assert_eq!(run.code, 64, "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    // The database refuses the same with direct SQL, whatever the client checks.
    for sql in [
        "SELECT * FROM vault.reveal_request('user_id', 'u1', 'curiosity', 'case 123 review', NULL, 'x')",
        "SELECT * FROM vault.reveal_request('user_id', 'u1', NULL, 'case 123 review', NULL, 'x')",
        "SELECT * FROM vault.reveal_request('user_id', 'u1', 'other', 'a short reason, 30 characters', NULL, 'x')",
        // The reveal of before migration 0014, without a purpose, is gone.
        "SELECT * FROM vault.reveal_request('user_id', 'u1', 'case 123 review', NULL, 'x')",
    ] {
        let code = attempt(&auditor_url, sql).await;
        assert!(code == "22023" || code == "42883", "{sql}: {code}");
    }
    assert_eq!(
        audit_rows(&s.db.pool).await.len(),
        6,
        "refused input leaves no row"
    );
    s.etl.run(&["audit", "verify"]).await.json();
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_refuse_at_exactly_the_limit_and_the_refusal_is_audited() {
    let s = Setup::new().await;
    s.load_lines(&logins()).await;
    let (_admin, admin_url) = s.login("piivault_admin").await;
    let admin_etl = s.etl.clone().with("DATABASE_URL", &admin_url);
    let set = admin_etl
        .run(&[
            "policy",
            "set",
            "--users-per-window",
            "3",
            "--records-per-reveal",
            "2",
            "--reason",
            "tighten quotas for the test",
        ])
        .await
        .json();
    assert_eq!(set["policy"]["users_per_window"], 3, "{set}");
    let (_auditor, auditor_url, etl) = s.login_etl("piivault_auditor").await;
    for user in ["u1", "u2", "u3"] {
        etl.run(&reveal(user, "fraud-investigation", "case 7 review"))
            .await
            .assert_success();
    }
    // A user already revealed in the window does not count twice.
    etl.run(&reveal("u1", "fraud-investigation", "case 7 review"))
        .await
        .assert_success();
    let refused = etl
        .run(&reveal("u4", "fraud-investigation", "case 7 review"))
        .await;
    assert_eq!(refused.code, 77, "{}", refused.stderr);
    assert!(refused.stdout.is_empty(), "nothing revealed");
    assert!(
        refused
            .stderr
            .contains("would have revealed 4 distinct users in 24 h")
            && refused.stderr.contains("allows 3 (users_per_window)"),
        "{}",
        refused.stderr
    );
    // Direct SQL meets the same refusal, also audited, and no grant to read.
    let (audit_id, records, why): (i64, i32, Option<String>) = sqlx::query_as(
        "SELECT * FROM vault.reveal_request('user_id', 'u5', 'fraud-investigation', 'case 7 review', NULL, 'x')",
    )
    .fetch_one(&PgPool::connect(&auditor_url).await.unwrap())
    .await
    .unwrap();
    assert_eq!(records, 0);
    assert!(why.unwrap().contains("users_per_window"));
    assert_eq!(
        attempt(
            &auditor_url,
            &format!("SELECT * FROM vault.reveal_rows({audit_id})")
        )
        .await,
        "42501"
    );
    // The auditor cannot loosen the policy, by function or by table.
    for sql in [
        "SELECT vault.policy_set(NULL, 1000, NULL, NULL, NULL, NULL, 'loosen my quota', 'x')",
        "UPDATE vault.reveal_policy SET users_per_window = 1000",
    ] {
        assert_eq!(attempt(&auditor_url, sql).await, "42501", "{sql}");
    }
    let rows = audit_rows(&s.db.pool).await;
    let actions: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        actions,
        [
            "policy",
            "reveal",
            "reveal",
            "reveal",
            "reveal",
            "reveal-refused",
            "reveal-refused"
        ]
    );
    assert!(rows[0].3.as_deref().unwrap().contains("users_per_window=3"));
    // `etl audit list` shows the purpose and the server's note of a refusal.
    let listed = etl.run(&["audit", "list", "--format", "json"]).await;
    listed.assert_success();
    let refusal: serde_json::Value = listed
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["action"] == "reveal-refused")
        .expect("a refusal in the list");
    assert_eq!(refusal["purpose"], "fraud-investigation", "{refusal}");
    assert!(
        refusal["note"]
            .as_str()
            .unwrap()
            .contains("users_per_window"),
        "{refusal}"
    );

    // Records per reveal: a token shared by more records than allowed.
    admin_etl
        .run(&[
            "policy",
            "set",
            "--users-per-window",
            "50",
            "--records-per-reveal",
            "1",
            "--reason",
            "one record per reveal now",
        ])
        .await
        .assert_success();
    let too_many = etl
        .run(&reveal("u5", "fraud-investigation", "case 7 review"))
        .await;
    assert_eq!(too_many.code, 77, "{}", too_many.stderr);
    assert!(
        too_many
            .stderr
            .contains("selects 2 records; the policy allows 1 per reveal"),
        "{}",
        too_many.stderr
    );
    s.etl.run(&["audit", "verify"]).await.json();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_person_rule_a_requester_never_approves_and_a_request_runs_once() {
    let s = Setup::new().await;
    s.load_lines(&logins()).await;
    s.etl
        .run(&[
            "policy",
            "set",
            "--two-person",
            "legal-request",
            "--reason",
            "court orders need two people",
        ])
        .await
        .assert_success();
    let (alice, alice_url, alice_etl) = s.login_etl("piivault_auditor").await;
    let (_bob, bob_url, bob_etl) = s.login_etl("piivault_approver").await;

    // A direct reveal under a two-person purpose is refused (and audited).
    let direct = alice_etl
        .run(&reveal("u2", "legal-request", "court order 55"))
        .await;
    assert_eq!(direct.code, 77, "{}", direct.stderr);
    assert!(
        direct
            .stderr
            .contains("needs a request approved by another login")
    );

    let asked = alice_etl
        .run(&[
            "reveal",
            "request",
            "--user-id",
            "u2",
            "--purpose",
            "legal-request",
            "--reason",
            "court order 55",
            "--ticket",
            "LEGAL-55",
        ])
        .await
        .json();
    let id = asked["request_id"].as_i64().unwrap();
    let id_arg = id.to_string();
    let listed = bob_etl
        .run(&["reveal", "requests", "--format", "json"])
        .await;
    let pending: serde_json::Value = serde_json::from_str(listed.stdout.trim()).unwrap();
    assert_eq!(
        (
            pending["id"].as_i64(),
            pending["requested_by"].as_str(),
            pending["records"].as_i64()
        ),
        (Some(id), Some(alice.as_str()), Some(2))
    );

    // Not yet approved: nothing to execute.
    let early = alice_etl.run(&["reveal", "--request", &id_arg]).await;
    assert_eq!(early.code, 77, "{}", early.stderr);
    assert!(early.stderr.contains("is not approved yet"));
    // The requester approving their own request: refused through etl and through plain SQL.
    let own = alice_etl
        .run(&["reveal", "approve", &id_arg, "--reason", "approving myself"])
        .await;
    assert_eq!(own.code, 77, "{}", own.stderr);
    assert!(own.stderr.contains("cannot approve their own request"));
    let alice_pool = PgPool::connect(&alice_url).await.unwrap();
    let (_, why): (i64, Option<String>) =
        sqlx::query_as("SELECT * FROM vault.reveal_approve($1, 'approving myself', 'x')")
            .bind(id)
            .fetch_one(&alice_pool)
            .await
            .unwrap();
    assert!(why.unwrap().contains("two-person rule"));
    // Nor can the requester mark it approved, or read the requests table, by hand.
    assert_eq!(
        attempt(
            &alice_url,
            &format!("UPDATE vault.reveal_requests SET approved_by = 'bob', approved_at = now() WHERE id = {id}")
        )
        .await,
        "42501"
    );
    let approved_by: Option<String> =
        sqlx::query_scalar("SELECT approved_by FROM vault.reveal_requests WHERE id = $1")
            .bind(id)
            .fetch_one(&s.db.pool)
            .await
            .unwrap();
    assert_eq!(approved_by, None);

    // The approver approves, but reveals nothing and cannot execute someone else's request.
    bob_etl
        .run(&[
            "reveal",
            "approve",
            &id_arg,
            "--reason",
            "order checked by legal",
        ])
        .await
        .assert_success();
    for sql in [
        format!("SELECT * FROM vault.reveal_execute({id}, 'x')"),
        "SELECT * FROM vault.reveal_request('user_id', 'u2', 'fraud-investigation', 'approver tries', NULL, 'x')".into(),
        "SELECT vault.reveal_ask('user_id', 'u2', 'legal-request', 'approver asks', NULL, 'x')".into(),
        "SELECT count(*) FROM vault.reveal_audit".into(),
        "SELECT count(*) FROM vault.reveal_requests".into(),
        "SELECT ip_sealed FROM vault.login_pii LIMIT 1".into(),
    ] {
        assert_eq!(attempt(&bob_url, &sql).await, "42501", "{sql}");
    }

    // The requester executes once; a second time is refused.
    let executed = alice_etl.run(&["reveal", "--request", &id_arg]).await;
    executed.assert_success();
    assert_eq!(executed.stdout.lines().count(), 2);
    assert!(executed.stdout.contains("10.8.2.0"));
    let again = alice_etl.run(&["reveal", "--request", &id_arg]).await;
    assert_eq!(again.code, 77, "{}", again.stderr);
    assert!(again.stderr.contains("already executed"));

    // A request past its time to live is refused, approved or not.
    let late = alice_etl
        .run(&[
            "reveal",
            "request",
            "--user-id",
            "u3",
            "--purpose",
            "legal-request",
            "--reason",
            "court order 56",
        ])
        .await
        .json();
    let late_id = late["request_id"].as_i64().unwrap().to_string();
    bob_etl
        .run(&[
            "reveal",
            "approve",
            &late_id,
            "--reason",
            "order checked by legal",
        ])
        .await
        .assert_success();
    // The table's owner moves the clock of this one request (the test cannot wait 24 h).
    sqlx::query(
        "UPDATE vault.reveal_requests SET expires_at = now() - interval '1 second' WHERE id = $1",
    )
    .bind(late["request_id"].as_i64().unwrap())
    .execute(&s.db.pool)
    .await
    .unwrap();
    let expired = alice_etl.run(&["reveal", "--request", &late_id]).await;
    assert_eq!(expired.code, 77, "{}", expired.stderr);
    assert!(expired.stderr.contains("expired"));
    assert!(expired.stdout.is_empty());

    let rows = audit_rows(&s.db.pool).await;
    let trail: Vec<(&str, Option<i64>)> = rows.iter().map(|r| (r.0.as_str(), r.2)).collect();
    let late_id: i64 = late_id.parse().unwrap();
    assert_eq!(
        trail,
        [
            ("policy", None),
            ("reveal-refused", None),
            ("reveal-request", None),
            ("reveal-refused", Some(id)),
            ("reveal-refused", Some(id)),
            ("reveal-refused", Some(id)),
            ("reveal-approve", Some(id)),
            ("reveal", Some(id)),
            ("reveal-refused", Some(id)),
            ("reveal-request", None),
            ("reveal-approve", Some(late_id)),
            ("reveal-refused", Some(late_id)),
        ]
    );
    alice_pool.close().await;
    s.etl.run(&["audit", "verify"]).await.json();
}

#[tokio::test(flavor = "multi_thread")]
async fn reveals_running_at_once_cannot_pass_the_quota_together() {
    let s = Setup::new().await;
    s.load_lines(&logins()).await;
    sqlx::query(
        "SELECT vault.policy_set(NULL, 2, NULL, NULL, NULL, NULL, 'two users per day', 'test')",
    )
    .execute(&s.db.pool)
    .await
    .unwrap();
    let (auditor, url) = s.login("piivault_auditor").await;
    let first = PgPool::connect(&url).await.unwrap();
    let second = PgPool::connect(&url).await.unwrap();
    // The first session reveals two users in a transaction it has not committed yet.
    let mut open = first.begin().await.unwrap();
    for user in ["u1", "u2"] {
        let (_, records, why): (i64, i32, Option<String>) = sqlx::query_as(
            "SELECT * FROM vault.reveal_request('user_id', $1, 'fraud-investigation', 'case 9 review', NULL, 'x')",
        )
        .bind(user)
        .fetch_one(&mut *open)
        .await
        .unwrap();
        assert_eq!((records, why), (2, None));
    }
    // The same login, from another session, meanwhile: it must wait, then count both.
    let racer = tokio::spawn(async move {
        let row: (i64, i32, Option<String>) = sqlx::query_as(
            "SELECT * FROM vault.reveal_request('user_id', 'u3', 'fraud-investigation', 'case 9 review', NULL, 'x')",
        )
        .fetch_one(&second)
        .await
        .unwrap();
        second.close().await;
        row
    });
    // Commit only once the racer is blocked on a lock, so the order is certain.
    let blocked =
        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND wait_event_type = 'Lock'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(blocked)
            .bind(&auditor)
            .fetch_one(&s.db.pool)
            .await
            .unwrap();
        if waiting == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second reveal never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    open.commit().await.unwrap();
    let (_, records, why) = racer.await.unwrap();
    assert_eq!(records, 0, "the third user must not be revealed");
    assert!(
        why.as_deref()
            .unwrap_or_default()
            .contains("would have revealed 3 distinct users"),
        "{why:?}"
    );
    first.close().await;
}
