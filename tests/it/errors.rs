//! Bad input is quarantined with a reason; bad settings give one clear line and a documented code.

use std::os::unix::fs::PermissionsExt;

use crate::support::{Etl, Run, Setup, TestDb, TestKek, queue_depth, reveal_user, send};

/// Asserts a one-line error with the exit code and text.
fn assert_error(run: &Run, code: i32, text: &str) {
    assert_eq!(run.code, code, "stderr: {}", run.stderr);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {}", run.stderr);
    assert!(
        errors[0].contains(text),
        "expected {text:?} in {:?}",
        errors[0]
    );
    assert_eq!(run.stdout, "", "nothing on stdout");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_bodies_are_quarantined_with_reasons_and_nothing_is_lost() {
    let s = Setup::new().await;
    let cases: [(&str, &str); 10] = [
        (
            "not json at all 10.9.8.7",
            "body is not valid JSON (error at line 1, column 2)",
        ),
        (r#""just a string""#, "body is a JSON string, not an object"),
        (r#"["10.9.8.7", 2]"#, "body is a JSON array, not an object"),
        ("42", "body is a JSON number, not an object"),
        ("null", "body is a JSON null, not an object"),
        (
            r#"{"ip":"10.9.8.7","device_id":"dev-missing-user"}"#,
            "user_id is missing or null",
        ),
        (
            r#"{"user_id": 12, "ip":"10.9.8.7"}"#,
            "user_id must be a string or null, found a JSON number",
        ),
        (
            r#"{"user_id":"u1","app_version":2.3}"#,
            "app_version must be a string or null, found a JSON number",
        ),
        (
            r#"{"user_id":"u2","locale":["x"]}"#,
            "locale must be a string or null, found a JSON array",
        ),
        (
            r#"{"user_id":"u3","ip":"10.9.8.777"}"#,
            "ip is not a valid IPv4 or IPv6 address",
        ),
    ];
    let mut bodies: Vec<String> = cases.iter().map(|(b, _)| b.to_string()).collect();
    bodies.push(r#"{"user_id":"ok","ip":"10.9.8.7","device_id":null,"extra":"ignored"}"#.into());
    send(&s.queue, &bodies).await;
    let run = s
        .etl
        .run(&["run", "--drain", "--wait-time-secs", "2"])
        .await;
    let summary = run.json();
    assert_eq!(
        (summary["loaded"].as_u64(), summary["quarantined"].as_u64()),
        (Some(1), Some(10))
    );
    assert_eq!(queue_depth(&s.queue).await, 0);

    let mut reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM etl.quarantine ORDER BY reason")
            .fetch_all(&s.db.pool)
            .await
            .unwrap();
    let mut expected: Vec<String> = cases.iter().map(|(_, r)| r.to_string()).collect();
    reasons.sort();
    expected.sort();
    assert_eq!(reasons, expected);
    assert_eq!(
        s.db.count("SELECT count(*) FROM etl.quarantine WHERE length(body_sealed) > 32")
            .await,
        10
    );
    for secret in ["10.9.8.7", "dev-missing-user", "10.9.8.777"] {
        assert!(!run.stderr.contains(secret));
    }
    let device: Option<String> =
        sqlx::query_scalar("SELECT masked_device_id FROM user_logins WHERE user_id = 'ok'")
            .fetch_one(&s.db.pool)
            .await
            .unwrap();
    assert_eq!(
        device, None,
        "a null device_id is kept as NULL, the row is loaded"
    );
    s.db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_unreachable_services_give_a_clear_line_and_code() {
    let s = Setup::new().await;
    let missing_db = s
        .etl
        .clone()
        .without("DATABASE_URL")
        .run(&["run", "--drain"])
        .await;
    assert_error(&missing_db, 78, "DATABASE_URL is not set");
    let missing_queue = s
        .etl
        .clone()
        .without("SQS_QUEUE_URL")
        .run(&["run", "--drain"])
        .await;
    assert_error(&missing_queue, 78, "SQS_QUEUE_URL is not set");

    let no_pg = s
        .etl
        .clone()
        .with(
            "DATABASE_URL",
            "postgres://postgres:secret-pw@127.0.0.1:1/none",
        )
        .run(&["migrate"])
        .await;
    assert_error(&no_pg, 69, "cannot connect to Postgres (DATABASE_URL)");
    assert!(!no_pg.stderr.contains("secret-pw"));

    let no_sqs = s
        .etl
        .clone()
        .with("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        .run(&[
            "run",
            "--drain",
            "--wait-time-secs",
            "1",
            "--max-outage-secs",
            "2",
        ])
        .await;
    assert_error(&no_sqs, 69, "SQS is unreachable (GetQueueAttributes");
    let no_queue_url = s.queue.replace("/pv-", "/nonexistent-pv-");
    let no_queue = s
        .etl
        .clone()
        .with("SQS_QUEUE_URL", &no_queue_url)
        .run(&["run", "--drain", "--wait-time-secs", "1"])
        .await;
    assert_error(&no_queue, 78, "does not exist");

    let not_migrated = TestDb::new().await;
    let fresh = s
        .etl
        .clone()
        .with("DATABASE_URL", &not_migrated.url)
        .run(&["run", "--drain"])
        .await;
    assert_error(&fresh, 78, "Run `etl migrate` first");
    s.etl
        .clone()
        .with("DATABASE_URL", &not_migrated.url)
        .run(&["migrate"])
        .await
        .ok();
    let no_keys = s
        .etl
        .clone()
        .with("DATABASE_URL", &not_migrated.url)
        .run(&["run", "--drain"])
        .await;
    assert_error(&no_keys, 78, "Run `etl keys init` first");
    let again = s.etl.run(&["keys", "init"]).await;
    assert_error(&again, 73, "never overwrites keys");
    // Set-up jobs run on every deploy: --if-missing succeeds when the keys exist and the KEK opens
    // them, and still refuses a KEK that does not.
    let idempotent = s.etl.run(&["keys", "init", "--if-missing"]).await.json();
    assert_eq!(idempotent["existing"], 2);
    assert_eq!(idempotent["created"], serde_json::json!([]));
    let other_kek = TestKek::new();
    let wrong = s
        .etl
        .clone()
        .with("PIIVAULT_KEK", &other_kek.uri())
        .run(&["keys", "init", "--if-missing"])
        .await;
    assert_eq!(wrong.code, 78, "{}", wrong.stderr);
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.data_keys").await,
        2,
        "nothing created"
    );
    not_migrated.drop_db().await;

    let usage = s.etl.run(&["run", "--no-such-flag"]).await;
    assert_eq!(usage.code, 64);
    s.db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_key_encryption_key_is_refused_before_anything_is_read() {
    let s = Setup::new().await;
    let drain = ["run", "--drain", "--wait-time-secs", "1"];
    assert_error(
        &s.etl.clone().without("PIIVAULT_KEK").run(&drain).await,
        78,
        "PIIVAULT_KEK is not set",
    );
    assert_error(
        &s.etl
            .clone()
            .with("PIIVAULT_KEK", "vault:xyz")
            .run(&drain)
            .await,
        78,
        "is not a key-encryption key URI",
    );
    assert_error(
        &s.etl
            .clone()
            .with("PIIVAULT_KEK", "file:/nonexistent/kek.bin")
            .run(&drain)
            .await,
        78,
        "cannot read the key-encryption key file /nonexistent/kek.bin",
    );
    std::fs::set_permissions(&s.kek.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let readable = s.etl.run(&drain).await;
    assert_error(&readable, 78, "Run `chmod 600");
    std::fs::set_permissions(&s.kek.path, std::fs::Permissions::from_mode(0o600)).unwrap();

    let wrong = TestKek::new();
    let run = s
        .etl
        .clone()
        .with("PIIVAULT_KEK", &wrong.uri())
        .run(&drain)
        .await;
    assert_error(&run, 78, "cannot unwrap the seal key v1");
    let reveal = Etl { ..s.etl.clone() }
        .with("PIIVAULT_KEK", &wrong.uri())
        .run(&reveal_user("x", "wrong kek check"))
        .await;
    assert_error(&reveal, 78, "cannot unwrap");
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.reveal_audit").await,
        0,
        "nothing written"
    );
    s.db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_input_output_errors_and_persistent_conflicts_have_their_own_codes() {
    let s = Setup::new().await;

    // 66: the --input file is missing; nothing is connected to or written.
    let missing = s
        .etl
        .run(&["run", "--input", "/nonexistent/piivault-logins.json"])
        .await;
    assert_error(&missing, 66, "/nonexistent/piivault-logins.json");

    // 74: stdout cannot be written (a full device).
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = s
        .etl
        .command(&["keys", "status"])
        .stdout(full)
        .stderr(std::process::Stdio::piped())
        .spawn() // not output(): tokio's output() replaces stdout with a pipe
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    let run = Run::from(out);
    assert_eq!(run.code, 74, "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot write the output"),
        "{}",
        run.stderr
    );

    // 75: every batch transaction fails with a deadlock. Real Postgres raises the real SQLSTATE
    // (40P01) from a trigger the test adds, so the conflict happens on every attempt; the run
    // retries, gives up after --max-outage-secs, and the messages stay on the queue.
    sqlx::raw_sql(
        "CREATE FUNCTION pv_test_deadlock() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'test deadlock' USING ERRCODE = 'deadlock_detected'; END $$;
         CREATE TRIGGER pv_test_deadlock BEFORE INSERT ON user_logins
           FOR EACH STATEMENT EXECUTE FUNCTION pv_test_deadlock();",
    )
    .execute(&s.db.pool)
    .await
    .unwrap();
    let bodies: Vec<String> = crate::support::sample_bodies()
        .into_iter()
        .take(5)
        .collect();
    send(&s.queue, &bodies).await;
    let conflicted = s
        .etl
        .run(&[
            "run",
            "--drain",
            "--wait-time-secs",
            "1",
            "--visibility-timeout-secs",
            "60",
            "--max-outage-secs",
            "1",
        ])
        .await;
    assert_eq!(conflicted.code, 75, "{}", conflicted.stderr);
    let last = conflicted.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error:") && last.contains("conflicted with another one"),
        "{}",
        conflicted.stderr
    );
    assert_eq!(s.db.count("SELECT count(*) FROM user_logins").await, 0);
    assert_eq!(s.db.count("SELECT count(*) FROM etl.quarantine").await, 0);
    assert_eq!(queue_depth(&s.queue).await, 5, "nothing deleted");
    s.db.drop_db().await;
}
