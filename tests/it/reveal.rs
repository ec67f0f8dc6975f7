//! `etl reveal`: originals back, audited before output; tampering detected, never printed.

use crate::support::{Setup, reveal_user, sample_path};

const USER: &str = "424cdd21-063a-43a7-b91b-7ca1a833afae"; // first sample login
const USER_IP: &str = "199.172.111.135";
const USER_DEVICE: &str = "593-47-5928";
const OTHER: &str = "c0173198-76a8-4e67-bfc2-74eaa3bbff57"; // second sample login
const OTHER_IP: &str = "241.6.88.151";

async fn audit_rows(s: &Setup) -> Vec<(String, String, Option<String>, String, i32)> {
    sqlx::query_as(
        "SELECT db_role, actor, user_id, reason, records FROM vault.reveal_audit ORDER BY id",
    )
    .fetch_all(&s.db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn reveal_returns_the_originals_and_leaves_one_audit_row() {
    let s = Setup::with_sample().await;
    let run = s.etl.run(&reveal_user(USER, "INC-42 fraud check")).await;
    run.assert_success();
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["user_id"], USER);
    assert_eq!(lines[0]["ip"], USER_IP);
    assert_eq!(lines[0]["device_id"], USER_DEVICE);
    assert_eq!(lines[0]["key_version"], 1);
    let message_id: String =
        sqlx::query_scalar("SELECT message_id FROM user_logins WHERE user_id = $1")
            .bind(USER)
            .fetch_one(&s.db.pool)
            .await
            .unwrap();
    assert_eq!(lines[0]["message_id"], message_id.as_str());

    let audit = audit_rows(&s).await;
    assert_eq!(audit.len(), 1);
    let (db_role, actor, user, reason, records) = &audit[0];
    assert_eq!(
        (db_role.as_str(), user.as_deref(), reason.as_str(), *records),
        ("postgres", Some(USER), "INC-42 fraud check", 1)
    );
    assert!(!actor.is_empty() && actor != "unknown", "{actor}");

    let table = s
        .etl
        .run(&[
            "reveal",
            "--purpose",
            "fraud-investigation",
            "--user-id",
            USER,
            "--reason",
            "table view",
            "--format",
            "table",
        ])
        .await;
    table.assert_success();
    let rows: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(rows.len(), 2, "{}", table.stdout);
    assert!(
        rows[0].starts_with("message_id")
            && rows[1].contains(USER_IP)
            && rows[1].contains(USER_DEVICE)
    );
    assert_eq!(audit_rows(&s).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_user_is_empty_but_audited_and_a_reason_is_required() {
    let s = Setup::with_sample().await;
    let run = s
        .etl
        .run(&reveal_user("nobody", "unknown user check"))
        .await;
    run.assert_success();
    assert_eq!(run.stdout, "");
    assert_eq!(audit_rows(&s).await[0].4, 0);

    let missing = s
        .etl
        .run(&[
            "reveal",
            "--purpose",
            "fraud-investigation",
            "--user-id",
            USER,
        ])
        .await;
    assert_eq!(missing.code, 64, "{}", missing.stderr);
    assert!(missing.stderr.contains("--reason"));
    let blank = s.etl.run(&reveal_user(USER, "  ")).await;
    assert_eq!(blank.code, 64);
    assert!(
        blank
            .stderr
            .contains("--reason must say why, in at least 8 characters"),
        "{}",
        blank.stderr
    );
    let short = s.etl.run(&reveal_user(USER, "ok")).await;
    assert_eq!(short.code, 64, "{}", short.stderr);
    for run in [&missing, &blank, &short] {
        assert_eq!(run.stdout, "");
    }
    assert_eq!(
        audit_rows(&s).await.len(),
        1,
        "no audit row for refused reveals"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ciphertext_moved_to_another_row_is_an_integrity_error() {
    let s = Setup::with_sample().await;
    // Copy the other user's sealed ip over this user's: valid ciphertext, wrong row.
    sqlx::query(
        "UPDATE vault.login_pii SET ip_sealed = (SELECT ip_sealed FROM vault.login_pii WHERE user_id = $2)
         WHERE user_id = $1",
    )
    .bind(USER)
    .bind(OTHER)
    .execute(&s.db.pool)
    .await
    .unwrap();
    let run = s.etl.run(&reveal_user(USER, "integrity test")).await;
    assert_eq!(run.code, 65, "{}", run.stderr);
    assert_eq!(run.stdout, "", "nothing printed for the broken record");
    assert!(
        run.stderr
            .contains("integrity error: the sealed ip of message"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(OTHER_IP) && !run.stderr.contains(USER_IP));
    assert_eq!(audit_rows(&s).await.len(), 1, "the attempt is audited");

    let fine = s.etl.run(&reveal_user(OTHER, "integrity test")).await;
    fine.assert_success();
    assert!(fine.stdout.contains(OTHER_IP));
}

#[tokio::test(flavor = "multi_thread")]
async fn reveal_unwraps_seal_keys_only() {
    let s = Setup::with_sample().await;
    // Make every token key unusable: an auditor whose KMS grant excludes token keys is in this spot.
    sqlx::query("UPDATE vault.data_keys SET wrapped = '\\x00'::bytea WHERE purpose = 'token'")
        .execute(&s.db.pool)
        .await
        .unwrap();
    let run = s.etl.run(&reveal_user(USER, "seal keys suffice")).await;
    run.assert_success();
    assert!(run.stdout.contains(USER_IP));
    let etl_run = s
        .etl
        .run(&["run", "--input", sample_path().to_str().unwrap()])
        .await;
    assert_eq!(
        etl_run.code, 78,
        "the ETL does need the token key: {}",
        etl_run.stderr
    );
}
