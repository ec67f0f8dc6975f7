//! Bad input is quarantined with a reason; bad settings give one clear line and a documented code.

use crate::support::{Run, Setup, TestDb, TestKek, queue_depth, send};

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
}

/// One CLI error case: `etl ARGS` with the environment changed, its exit code and its one
/// `error:` line, exactly. `{name}` in a value or the line is replaced by the prepared resource.
struct Case {
    name: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, Option<&'static str>)],
    code: i32,
    line: &'static str,
}

const DRAIN: &[&str] = &["run", "--drain", "--wait-time-secs", "1"];

/// Bad settings, missing services and refused keys: each one line and a documented code, before
/// anything is read from the queue or written.
const CASES: &[Case] = &[
    Case {
        name: "DATABASE_URL unset",
        args: DRAIN,
        env: &[("DATABASE_URL", None)],
        code: 78,
        line: "error: DATABASE_URL is not set. Set it to postgres://user:password@host:5432/database.",
    },
    Case {
        name: "SQS_QUEUE_URL unset",
        args: DRAIN,
        env: &[("SQS_QUEUE_URL", None)],
        code: 78,
        line: "error: SQS_QUEUE_URL is not set. Set it (or --queue-url) to the queue's URL, e.g. https://sqs.us-east-1.amazonaws.com/123456789012/logins.",
    },
    Case {
        name: "PIIVAULT_KEK unset",
        args: DRAIN,
        env: &[("PIIVAULT_KEK", None)],
        code: 78,
        line: "error: PIIVAULT_KEK is not set. Set it to file:<path> (a 32-byte key file, mode 0600) or kms:<key-id|alias|arn>.",
    },
    Case {
        name: "Postgres unreachable (the password never printed)",
        args: &["migrate"],
        env: &[(
            "DATABASE_URL",
            Some("postgres://postgres:secret-pw@127.0.0.1:1/none"),
        )],
        code: 69,
        line: "error: cannot connect to Postgres (DATABASE_URL): pool timed out while waiting for an open connection. Check that Postgres is running and DATABASE_URL is right (scripts/stack.sh up starts a local one).",
    },
    Case {
        name: "SQS unreachable",
        args: &[
            "run",
            "--drain",
            "--wait-time-secs",
            "1",
            "--max-outage-secs",
            "2",
        ],
        env: &[("AWS_ENDPOINT_URL", Some("http://127.0.0.1:1"))],
        code: 69,
        line: "error: SQS is unreachable (GetQueueAttributes on {queue}): dispatch failure: io error: client error (Connect): tcp connect error: Connection refused (os error 111). Check SQS_QUEUE_URL, AWS_ENDPOINT_URL / AWS_REGION and the network, then retry.",
    },
    Case {
        name: "the queue does not exist",
        args: DRAIN,
        env: &[("SQS_QUEUE_URL", Some("{missing_queue}"))],
        code: 78,
        line: "error: the SQS queue {missing_queue} does not exist (AWS.SimpleQueueService.NonExistentQueue: The specified queue does not exist. (HTTP 400)). Check SQS_QUEUE_URL (and AWS_REGION).",
    },
    Case {
        name: "the database is not migrated",
        args: DRAIN,
        env: &[("DATABASE_URL", Some("{fresh_db}"))],
        code: 78,
        line: "error: reading the key states failed: the piivault tables are missing (relation \"vault.data_keys\" does not exist (SQLSTATE 42P01)). Run `etl migrate` first.",
    },
    Case {
        name: "no data keys yet",
        args: DRAIN,
        env: &[("DATABASE_URL", Some("{keyless_db}"))],
        code: 78,
        line: "error: no seal key exists in vault.data_keys. Run `etl keys init` first.",
    },
    Case {
        name: "keys init when keys exist",
        args: &["keys", "init"],
        env: &[],
        code: 73,
        line: "error: vault.data_keys already holds 2 key(s); `etl keys init` never overwrites keys. See them with `etl keys status`.",
    },
    Case {
        name: "keys init --if-missing under a KEK that does not open them",
        args: &["keys", "init", "--if-missing"],
        env: &[("PIIVAULT_KEK", Some("{other_kek}"))],
        code: 78,
        line: "error: cannot unwrap the seal key v1 (deployment {db_name}) with PIIVAULT_KEK={other_kek}: wrong key-encryption key, wrong context (a key copied from another deployment?), or the wrapped key was altered. The key was wrapped under {kek}; set PIIVAULT_KEK to that key.",
    },
    Case {
        name: "a KEK URI of an unknown kind",
        args: DRAIN,
        env: &[("PIIVAULT_KEK", Some("vault:xyz"))],
        code: 78,
        line: "error: PIIVAULT_KEK (scheme \"vault:\") is not a key-encryption key URI. Use file:<path> or kms:<key-id|alias|arn>.",
    },
    Case {
        name: "a KEK file that does not exist",
        args: DRAIN,
        env: &[("PIIVAULT_KEK", Some("file:/nonexistent/kek.bin"))],
        code: 78,
        line: "error: cannot read the key-encryption key file /nonexistent/kek.bin: No such file or directory (os error 2). Create one with `(umask 077; head -c 32 /dev/urandom > /nonexistent/kek.bin)`.",
    },
    Case {
        name: "a KEK file others may read",
        args: DRAIN,
        env: &[("PIIVAULT_KEK", Some("{loose_kek}"))],
        code: 78,
        line: "error: the key-encryption key file {loose_kek_path} is readable by group or others (mode 644). Run `chmod 600 {loose_kek_path}`.",
    },
    Case {
        name: "run under another KEK",
        args: DRAIN,
        env: &[("PIIVAULT_KEK", Some("{other_kek}"))],
        code: 78,
        line: "error: cannot unwrap the seal key v1 (deployment {db_name}) with PIIVAULT_KEK={other_kek}: wrong key-encryption key, wrong context (a key copied from another deployment?), or the wrapped key was altered. The key was wrapped under {kek}; set PIIVAULT_KEK to that key.",
    },
    Case {
        name: "reveal under another KEK",
        args: &[
            "reveal",
            "--user-id",
            "x",
            "--purpose",
            "fraud-investigation",
            "--reason",
            "wrong kek check",
        ],
        env: &[("PIIVAULT_KEK", Some("{other_kek}"))],
        code: 78,
        line: "error: cannot unwrap the seal key v1 (deployment {db_name}) with PIIVAULT_KEK={other_kek}: wrong key-encryption key, wrong context (a key copied from another deployment?), or the wrapped key was altered. The key was wrapped under {kek}; set PIIVAULT_KEK to that key.",
    },
    Case {
        name: "the --input file is missing",
        args: &["run", "--input", "/nonexistent/piivault-logins.json"],
        env: &[],
        code: 66,
        line: "error: cannot read the input file /nonexistent/piivault-logins.json: No such file or directory (os error 2). Check the path, its permissions and (when gzipped) that the file is whole; a rerun loads only what is not loaded yet.",
    },
];

#[tokio::test(flavor = "multi_thread")]
async fn each_cli_error_case_exits_with_its_code_and_one_exact_line() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new().await;
    let fresh = TestDb::new().await;
    let keyless = TestDb::new().await;
    s.etl
        .clone()
        .with("DATABASE_URL", &keyless.url)
        .run(&["migrate"])
        .await
        .assert_success();
    let (other, loose) = (TestKek::new(), TestKek::new());
    std::fs::set_permissions(&loose.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let resources = [
        ("{queue}", s.queue.0.clone()),
        ("{db_name}", s.db.name.clone()),
        ("{kek}", s.kek.uri()),
        (
            "{missing_queue}",
            s.queue.replace("/pv-", "/nonexistent-pv-"),
        ),
        ("{fresh_db}", fresh.url.clone()),
        ("{keyless_db}", keyless.url.clone()),
        ("{other_kek}", other.uri()),
        ("{loose_kek}", loose.uri()),
        ("{loose_kek_path}", loose.path.display().to_string()),
    ];
    let fill = |text: &str| {
        resources
            .iter()
            .fold(text.to_owned(), |t, (name, value)| t.replace(name, value))
    };
    let mut failed = Vec::new();
    for case in CASES {
        let mut etl = s.etl.clone();
        for (name, value) in case.env {
            etl = match value {
                Some(value) => etl.with(name, &fill(value)),
                None => etl.without(name),
            };
        }
        let run = etl.run(case.args).await;
        let errors: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        let want = fill(case.line);
        if run.code != case.code || errors != [want.as_str()] || !run.stdout.is_empty() {
            failed.push(format!(
                "{}: want {} {want:?}, got {} {errors:?} (stdout {:?})",
                case.name, case.code, run.code, run.stdout
            ));
        }
        assert!(
            !run.stderr.contains("secret-pw"),
            "{}: {}",
            case.name,
            run.stderr
        );
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases:\n{}",
        failed.len(),
        CASES.len(),
        failed.join("\n")
    );
    // Nothing was written by any refused command.
    assert_eq!(s.db.count("SELECT count(*) FROM vault.data_keys").await, 2);
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.reveal_audit").await,
        0
    );
    assert_eq!(s.db.count("SELECT count(*) FROM user_logins").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_usage_error_exits_64() {
    let s = Setup::new().await;
    let usage = s.etl.run(&["run", "--no-such-flag"]).await;
    assert_eq!(usage.code, 64, "{}", usage.stderr);
    assert!(usage.stderr.contains("--no-such-flag"), "{}", usage.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn output_errors_and_persistent_conflicts_have_their_own_codes() {
    let s = Setup::new().await;

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
         CREATE TRIGGER pv_test_deadlock BEFORE INSERT ON etl.logins
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
}
