//! Access control with real login users per role, separate auditor credentials, the
//! tamper-evident audit trail, reveal selectors and erasure.

use crate::support::{DENIED, Setup, VIEW_NOT_WRITABLE, attempt, reveal_user, sample_path};

const USER: &str = "424cdd21-063a-43a7-b91b-7ca1a833afae";
const USER_IP: &str = "199.172.111.135";

#[tokio::test(flavor = "multi_thread")]
async fn each_role_has_exactly_its_privileges_and_the_real_commands_run_under_them() {
    let s = Setup::new().await;
    let (_etl_name, etl_url) = s.login("piivault_etl").await;
    let (_analyst_name, analyst_url) = s.login("piivault_analyst").await;
    let (auditor_name, auditor_url) = s.login("piivault_auditor").await;

    // The real ETL as a login holding only piivault_etl.
    let etl = s.etl.clone().with("DATABASE_URL", &etl_url);
    let summary = etl
        .run(&["run", "--input", sample_path().to_str().unwrap()])
        .await
        .json();
    assert_eq!(summary["loaded"], 99);

    for table in [
        "vault.login_pii",
        "vault.data_keys",
        "vault.reveal_audit",
        "etl.quarantine",
        "etl.logins",
    ] {
        assert_eq!(
            attempt(&analyst_url, &format!("SELECT * FROM {table}")).await,
            DENIED,
            "analyst reads {table}"
        );
    }
    assert_eq!(
        attempt(&analyst_url, "SELECT * FROM user_logins").await,
        "ok"
    );
    // user_logins is a view nobody writes through (55000: "cannot delete from view").
    assert_eq!(
        attempt(&analyst_url, "DELETE FROM user_logins").await,
        VIEW_NOT_WRITABLE
    );

    assert_eq!(
        attempt(&etl_url, "SELECT * FROM vault.login_pii").await,
        DENIED,
        "ETL reads the vault back"
    );
    assert_eq!(
        attempt(&etl_url, "SELECT ip_sealed FROM vault.login_pii").await,
        DENIED
    );
    // The status page's duplicate groups come through shared_tokens(): tokens and counts,
    // while the table itself (user ids) stays unreadable to the ETL role.
    assert_eq!(
        attempt(&etl_url, "SELECT * FROM shared_tokens('device', 2, 10)").await,
        "ok"
    );
    assert_eq!(
        attempt(&etl_url, "SELECT user_id FROM user_logins").await,
        DENIED
    );
    assert_eq!(
        attempt(&etl_url, "SELECT masked_ip FROM user_logins").await,
        DENIED
    );
    assert_eq!(
        attempt(&etl_url, "UPDATE vault.reveal_audit SET reason = 'x'").await,
        DENIED
    );
    assert_eq!(
        attempt(&etl_url, "DELETE FROM vault.reveal_audit").await,
        DENIED
    );
    assert_eq!(
        attempt(&etl_url, "UPDATE vault.data_keys SET state = 'active'").await,
        DENIED
    );

    // The real reveal with separate auditor credentials.
    let auditor = s
        .etl
        .clone()
        .with("PIIVAULT_REVEAL_DATABASE_URL", &auditor_url);
    let reveal = auditor
        .run(&[
            "reveal",
            "--purpose",
            "fraud-investigation",
            "--user-id",
            USER,
            "--reason",
            "fraud case 17",
            "--ticket",
            "SEC-17",
        ])
        .await;
    reveal.assert_success();
    assert!(reveal.stdout.contains(USER_IP));
    assert!(
        !reveal
            .stderr
            .contains("PIIVAULT_REVEAL_DATABASE_URL is not set")
    );
    let (role, ticket): (String, Option<String>) =
        sqlx::query_as("SELECT db_role, ticket FROM vault.reveal_audit")
            .fetch_one(&s.db.pool)
            .await
            .unwrap();
    assert_eq!(
        (role.as_str(), ticket.as_deref()),
        (auditor_name.as_str(), Some("SEC-17"))
    );
    assert_eq!(
        attempt(&auditor_url, "UPDATE vault.reveal_audit SET reason = 'x'").await,
        DENIED
    );
    assert_eq!(
        attempt(&auditor_url, "DELETE FROM vault.reveal_audit").await,
        DENIED
    );
    assert_eq!(
        attempt(&auditor_url, "DELETE FROM vault.login_pii").await,
        DENIED
    );
    assert_eq!(
        attempt(
            &auditor_url,
            "INSERT INTO user_logins (user_id) VALUES ('x')"
        )
        .await,
        VIEW_NOT_WRITABLE
    );
    assert_eq!(
        attempt(
            &auditor_url,
            "INSERT INTO etl.logins (user_id) VALUES ('x')"
        )
        .await,
        DENIED
    );

    // No audit, no reveal: when the server cannot append the audit row, vault.reveal() fails as
    // a whole and nothing is printed.
    sqlx::query("REVOKE INSERT ON vault.reveal_audit FROM piivault_definer")
        .execute(&s.db.pool)
        .await
        .unwrap();
    let refused = auditor.run(&reveal_user(USER, "should not print")).await;
    sqlx::query("GRANT INSERT ON vault.reveal_audit TO piivault_definer")
        .execute(&s.db.pool)
        .await
        .unwrap();
    assert_eq!(refused.code, 77, "{}", refused.stderr);
    assert_eq!(refused.stdout, "");
    assert!(!refused.stderr.contains(USER_IP));
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.reveal_audit").await,
        1
    );

    // Key administration as a login holding only piivault_admin.
    let (_admin_name, admin_url) = s.login("piivault_admin").await;
    let admin = s.etl.clone().with("DATABASE_URL", &admin_url);
    admin
        .run(&["keys", "rotate", "--purpose", "seal"])
        .await
        .json();
    admin
        .run(&["keys", "rotate", "--purpose", "token"])
        .await
        .json();
    assert_eq!(admin.run(&["keys", "reencrypt"]).await.json()["failed"], 0);
    assert_eq!(
        admin.run(&["keys", "retokenize"]).await.json()["retokenized"],
        99
    );
    admin.run(&["keys", "verify"]).await.json();
    for purpose in ["seal", "token"] {
        admin
            .run(&["keys", "retire", "--purpose", purpose, "--version", "1"])
            .await
            .json();
    }
    assert_eq!(
        attempt(&admin_url, "DELETE FROM vault.reveal_audit").await,
        DENIED
    );
    let since = s
        .etl
        .run(&[
            "audit",
            "list",
            "--since",
            "2000-01-01T00:00:00Z",
            "--format",
            "json",
        ])
        .await;
    // The reveal, the three key jobs that opened sealed values (reencrypt, retokenize, verify),
    // and the two retirements, recorded by the database when the wrapped keys were destroyed.
    let actions: Vec<String> = since
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["action"].to_string())
        .collect();
    assert_eq!(
        actions,
        [
            "\"reveal\"",
            "\"reencrypt\"",
            "\"retokenize\"",
            "\"verify\"",
            "\"retire\"",
            "\"retire\""
        ]
    );
    let none = s
        .etl
        .run(&[
            "audit",
            "list",
            "--since",
            "2999-01-01T00:00:00Z",
            "--format",
            "json",
        ])
        .await;
    assert_eq!(none.stdout, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn selectors_formats_and_a_chain_that_shows_tampering() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("shared.jsonl");
    std::fs::write(
        &extra,
        "{\"user_id\":\"g1\",\"ip\":\"10.0.0.1\",\"device_id\":\"dev-g\"}\n{\"user_id\":\"g2\",\"ip\":\"10.0.0.2\",\"device_id\":\"dev-g\"}\n",
    )
    .unwrap();
    s.etl
        .run(&["run", "--input", sample_path().to_str().unwrap()])
        .await
        .json();
    s.etl
        .run(&["run", "--input", extra.to_str().unwrap()])
        .await
        .json();

    let message: String =
        sqlx::query_scalar("SELECT message_id FROM user_logins WHERE user_id = $1")
            .bind(USER)
            .fetch_one(&s.db.pool)
            .await
            .unwrap();
    let one = s
        .etl
        .run(&[
            "reveal",
            "--purpose",
            "fraud-investigation",
            "--message-id",
            &message,
            "--reason",
            "message check",
        ])
        .await
        .json_lines();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["ip"], USER_IP);

    let token: String =
        sqlx::query_scalar("SELECT masked_device_id FROM user_logins WHERE user_id = 'g1'")
            .fetch_one(&s.db.pool)
            .await
            .unwrap();
    let group = s
        .etl
        .run(&[
            "reveal",
            "--purpose",
            "fraud-investigation",
            "--token",
            &token,
            "--reason",
            "duplicate device case",
        ])
        .await
        .json_lines();
    let users: Vec<&str> = group
        .iter()
        .map(|v| v["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 2);
    assert!(users.contains(&"g1") && users.contains(&"g2"));
    assert!(group.iter().all(|v| v["device_id"] == "dev-g"));

    let csv = s
        .etl
        .run(&[
            "reveal",
            "--purpose",
            "fraud-investigation",
            "--user-id",
            "g1",
            "--reason",
            "csv export check",
            "--format",
            "csv",
        ])
        .await;
    csv.assert_success();
    let lines: Vec<&str> = csv.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "message_id,user_id,ip,device_id,key_version,created_at"
    );
    assert!(lines[1].contains(",g1,10.0.0.1,dev-g,1,"), "{}", lines[1]);

    let two = s
        .etl
        .run(&[
            "reveal",
            "--purpose",
            "fraud-investigation",
            "--user-id",
            USER,
            "--message-id",
            &message,
            "--reason",
            "two selectors",
        ])
        .await;
    assert_eq!(two.code, 64, "exactly one selector");

    // The chain verifies, and the list shows selectors, never revealed values.
    let verified = s.etl.run(&["audit", "verify"]).await.json();
    assert_eq!(
        (verified["rows"].as_u64(), verified["broken"].as_u64()),
        (Some(3), Some(0))
    );
    let list = s.etl.run(&["audit", "list", "--format", "json"]).await;
    let entries = list.json_lines();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[1]["selector"], format!("token={token}"));
    assert!(!list.stdout.contains(USER_IP) && !list.stdout.contains("dev-g"));

    // The trail is append-only even for its owner, unless the owner turns the rule off
    // deliberately (here: a superuser's session_replication_role); the chain then shows it.
    assert!(
        sqlx::query("UPDATE vault.reveal_audit SET reason = 'nothing to see' WHERE id = 2")
            .execute(&s.db.pool)
            .await
            .is_err()
    );
    let mut owner = s.db.pool.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *owner)
        .await
        .unwrap();
    // Edit a row: detected. Restore it, delete a row: detected.
    sqlx::query("UPDATE vault.reveal_audit SET reason = 'nothing to see' WHERE id = 2")
        .execute(&mut *owner)
        .await
        .unwrap();
    let edited = s.etl.run(&["audit", "verify"]).await;
    assert_eq!(edited.code, 65);
    assert!(
        edited.stderr.contains("audit row 2: the row was edited"),
        "{}",
        edited.stderr
    );
    sqlx::query("UPDATE vault.reveal_audit SET reason = 'duplicate device case' WHERE id = 2")
        .execute(&mut *owner)
        .await
        .unwrap();
    s.etl.run(&["audit", "verify"]).await.json();
    sqlx::query("DELETE FROM vault.reveal_audit WHERE id = 2")
        .execute(&mut *owner)
        .await
        .unwrap();
    let deleted = s.etl.run(&["audit", "verify"]).await;
    assert_eq!(deleted.code, 65);
    assert!(
        deleted
            .stderr
            .contains("audit row 3: the previous row was deleted"),
        "{}",
        deleted.stderr
    );
    // Deleting the newest row leaves a chain that links, but not to the server's head.
    sqlx::query("DELETE FROM vault.reveal_audit WHERE id = 3")
        .execute(&mut *owner)
        .await
        .unwrap();
    let truncated = s.etl.run(&["audit", "verify"]).await;
    assert_eq!(truncated.code, 65);
    assert!(
        truncated.stderr.contains("the newest rows were deleted"),
        "{}",
        truncated.stderr
    );
    drop(owner);
}

#[tokio::test(flavor = "multi_thread")]
async fn erase_removes_originals_rows_and_quarantined_bodies_and_is_audited() {
    let s = Setup::new().await;
    let loaded = s
        .load_lines(
            "{\"user_id\":\"victim\",\"ip\":\"10.7.7.7\",\"device_id\":\"dev-v\"}\n\
             {\"user_id\":\"victim\",\"ip\":\"10.7.7.8\",\"device_id\":\"dev-v\"}\n\
             {\"user_id\":\"victim\",\"app_version\":2}\n\
             {\"user_id\":\"bystander\",\"app_version\":3}\n",
        )
        .await;
    assert_eq!(
        (loaded["loaded"].as_u64(), loaded["quarantined"].as_u64()),
        (Some(2), Some(2))
    );

    let short = s
        .etl
        .run(&["erase", "--user-id", "victim", "--reason", "gdpr"])
        .await;
    assert_eq!(short.code, 64);
    let erased = s
        .etl
        .run(&[
            "erase",
            "--user-id",
            "victim",
            "--reason",
            "GDPR art. 17 request",
            "--ticket",
            "DPO-9",
        ])
        .await
        .json();
    assert_eq!(erased["erased"]["vault"], 2);
    assert_eq!(erased["erased"]["user_logins"], 2);
    assert_eq!(
        erased["erased"]["quarantine"], 1,
        "the victim's rejected message, not the bystander's"
    );
    assert_eq!(s.db.count("SELECT count(*) FROM etl.quarantine").await, 1);
    assert_eq!(
        s.db.count("SELECT count(*) FROM user_logins WHERE user_id = 'victim'")
            .await,
        0
    );

    let after = s
        .etl
        .run(&reveal_user("victim", "after erasure check"))
        .await;
    after.assert_success();
    assert_eq!(after.stdout, "", "nothing left to reveal");
    let actions: Vec<(String, i32)> =
        sqlx::query_as("SELECT action, records FROM vault.reveal_audit ORDER BY id")
            .fetch_all(&s.db.pool)
            .await
            .unwrap();
    // Bodies carry user tags: erase opens none, so no scan job; then the reveal.
    assert_eq!(
        actions,
        vec![("erase".to_owned(), 3), ("reveal".to_owned(), 0)]
    );
    s.etl.run(&["audit", "verify"]).await.json();
    s.etl.run(&["keys", "verify"]).await.json();
}
