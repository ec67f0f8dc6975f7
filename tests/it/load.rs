//! Loading the canonical sample through SQS and through --input.

use std::collections::HashMap;

use crate::support::{Setup, queue_depth, sample_bodies, sample_path, send};

#[tokio::test(flavor = "multi_thread")]
async fn sample_via_sqs_loads_99_rows_and_quarantines_1() {
    let s = Setup::new().await;
    let bodies = sample_bodies();
    assert_eq!(bodies.len(), 100);
    send(&s.queue, &bodies).await;

    let summary = s.drain().await;
    let n = |k: &str| summary[k].as_u64().unwrap();
    assert_eq!(n("loaded"), 99);
    assert_eq!(n("quarantined"), 1);
    // SQS (and the emulator) may deliver a message twice; count distinct outcomes, not deliveries.
    assert_eq!(n("received"), 100 + n("duplicates"), "{summary}");
    assert!(n("deleted") >= 100, "{summary}");
    assert_eq!(
        queue_depth(&s.queue).await,
        0,
        "every message deleted after commit"
    );

    assert_eq!(s.db.count("SELECT count(*) FROM user_logins").await, 99);
    assert_eq!(s.db.count("SELECT count(*) FROM vault.login_pii").await, 99);
    assert_eq!(s.db.count("SELECT count(*) FROM etl.quarantine").await, 1);
    assert_eq!(
        s.db.count("SELECT count(*) FROM user_logins WHERE locale IS NULL")
            .await,
        29
    );
    assert_eq!(
        s.db.count("SELECT count(DISTINCT message_id) FROM user_logins")
            .await,
        99
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM user_logins WHERE token_version = 1")
            .await,
        99
    );
    let reason: String = sqlx::query_scalar("SELECT reason FROM etl.quarantine")
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
    assert_eq!(reason, "user_id is missing or null");

    // app_version_text is the exact input; app_version its documented integer.
    let expected: HashMap<String, Option<String>> = bodies
        .iter()
        .map(|b| serde_json::from_str::<serde_json::Value>(b).unwrap())
        .filter(|v| v.get("user_id").is_some())
        .map(|v| {
            (
                v["user_id"].as_str().unwrap().to_owned(),
                v["app_version"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let rows: Vec<(String, Option<String>, Option<i32>)> =
        sqlx::query_as("SELECT user_id, app_version_text, app_version FROM user_logins")
            .fetch_all(&s.db.pool)
            .await
            .unwrap();
    assert_eq!(
        rows.len(),
        expected.len(),
        "user ids in the sample are distinct"
    );
    for (user, text, number) in rows {
        assert_eq!(text, expected[&user], "app_version_text of {user}");
        assert_eq!(
            number,
            text.as_deref()
                .and_then(piivault::event::app_version_number)
        );
    }
    let v230: Option<i32> = sqlx::query_scalar(
        "SELECT app_version FROM user_logins WHERE app_version_text = '2.3.0' LIMIT 1",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(v230, Some(2_003_000));
    // create_date is the UTC date of SentTimestamp: today, for messages just sent.
    let today =
        s.db.count(
            "SELECT count(*) FROM user_logins WHERE create_date = (now() AT TIME ZONE 'UTC')::date",
        )
        .await;
    assert_eq!(today, 99);
}

#[tokio::test(flavor = "multi_thread")]
async fn input_file_loads_once_and_a_second_load_adds_nothing() {
    let s = Setup::new().await;
    let path = sample_path();
    let path = path.to_str().unwrap();
    let first = s.etl.run(&["run", "--input", path]).await.json();
    assert_eq!(
        (
            first["received"].as_u64(),
            first["loaded"].as_u64(),
            first["quarantined"].as_u64()
        ),
        (Some(100), Some(99), Some(1))
    );
    let second = s
        .etl
        .run(&["run", "--input", path, "--batch-size", "7"])
        .await
        .json();
    assert_eq!(second["loaded"], 0);
    assert_eq!(second["quarantined"], 0);
    assert_eq!(second["duplicates"], 100);
    // The same content gzipped is the same file: its messages have the same ids.
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("sample.json.gz");
    let mut encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::Write::write_all(&mut encoder, &std::fs::read(sample_path()).unwrap()).unwrap();
    encoder.finish().unwrap();
    let third = s
        .etl
        .run(&["run", "--input", gz.to_str().unwrap(), "--writers", "3"])
        .await
        .json();
    assert_eq!(
        (third["received"].as_u64(), third["duplicates"].as_u64()),
        (Some(100), Some(100)),
        "{third}"
    );
    assert_eq!(s.db.count("SELECT count(*) FROM user_logins").await, 99);
    assert_eq!(s.db.count("SELECT count(*) FROM etl.quarantine").await, 1);
    assert_eq!(
        s.db.count("SELECT count(*) FROM user_logins WHERE locale IS NULL")
            .await,
        29
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_input_line_of_bad_utf8_or_over_the_limit_is_quarantined_and_the_rest_loads() {
    let s = Setup::new().await;
    let max = piivault::event::BODY_MAX_BYTES;
    let long_device = "secret-device-".repeat(2 * max / 14);
    let long_line = format!(r#"{{"user_id":"long-user","device_id":"{long_device}"}}"#);
    let mut text = Vec::new();
    text.extend_from_slice(b"{\"user_id\":\"u1\",\"ip\":\"10.0.0.1\"}\n");
    text.extend_from_slice(b"{\"user_id\":\"bad-user\",\"ip\":\"10.9.9.9\xff\"}\n");
    text.extend_from_slice(b"{\"user_id\":\"u2\"}\n");
    text.extend_from_slice(long_line.as_bytes());
    text.extend_from_slice(b"\n{\"user_id\":\"u3\",\"device_id\":\"d-3\"}\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input.jsonl");
    std::fs::write(&file, &text).unwrap();
    let file = file.to_str().unwrap();

    let run = s.etl.run(&["run", "--input", file]).await;
    let first = run.json(); // exit 0
    let counts = |summary: &serde_json::Value| {
        ["received", "loaded", "quarantined", "duplicates"].map(|k| summary[k].as_u64().unwrap())
    };
    assert_eq!(counts(&first), [5, 3, 2, 0], "{first}");
    for value in ["secret-device-", "10.9.9.9", "bad-user", "long-user"] {
        assert!(
            !run.stdout.contains(value) && !run.stderr.contains(value),
            "{value} leaked to the output"
        );
    }
    assert_eq!(s.db.count("SELECT count(*) FROM user_logins").await, 3);
    assert_eq!(s.db.count("SELECT count(*) FROM vault.login_pii").await, 3);
    let rows: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT message_id, reason, cardinality(user_tags) FROM etl.quarantine ORDER BY message_id",
    )
    .fetch_all(&s.db.pool)
    .await
    .unwrap();
    let rows: Vec<(&str, &str, i32)> = rows
        .iter()
        .map(|(id, reason, tags)| (&id[id.rfind('-').unwrap()..], reason.as_str(), *tags))
        .collect();
    let long_reason = format!(
        "body is {} bytes, more than the {max} allowed (only its first {} bytes are sealed)",
        long_line.len(),
        max + 1
    );
    assert_eq!(
        rows,
        [
            ("-2", "body is not valid UTF-8", 1),
            ("-4", long_reason.as_str(), 1)
        ],
        "positional ids; each body still tagged with its user for erasure"
    );

    let second = s.etl.run(&["run", "--input", file]).await.json();
    assert_eq!(counts(&second), [5, 0, 0, 5], "{second}");
    assert_eq!(s.db.count("SELECT count(*) FROM user_logins").await, 3);
    assert_eq!(s.db.count("SELECT count(*) FROM etl.quarantine").await, 2);
}
