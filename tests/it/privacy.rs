//! Token properties on stored rows, and no plaintext PII in the analysts' table or quarantine.

use std::collections::HashMap;

use sqlx::PgPool;

use crate::support::{Setup, sample_bodies};

const CRAFTED: [&str; 7] = [
    r#"{"user_id":"p1","ip":"1.2.3.4","device_id":"dev-Alpha-1"}"#,
    r#"{"user_id":"p2","ip":"001.002.003.004","device_id":"  dev-Alpha-1 "}"#,
    r#"{"user_id":"p3","ip":"2001:db8::1","device_id":"1.2.3.4"}"#,
    r#"{"user_id":"p4","ip":"2001:0DB8:0000:0000:0000:0000:0000:0001","device_id":"dev-Beta-2"}"#,
    r#"{"user_id":"p5","ip":"::ffff:1.2.3.4","device_id":"dev-Gamma-3"}"#,
    r#"{"user_id":"p6","ip":"1.2.3.5","device_id":"dev-Alpha-1"}"#,
    r#"{"user_id": 6, "ip": "203.0.113.77", "device_id": "dev-Quarantined-9"}"#,
];

fn write_input(dir: &std::path::Path) -> String {
    let mut lines: Vec<String> = sample_bodies();
    lines.extend(CRAFTED.iter().map(|s| s.to_string()));
    let path = dir.join("input.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn tokens(pool: &PgPool) -> HashMap<String, (Option<String>, Option<String>)> {
    let rows: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT user_id, masked_ip, masked_device_id FROM user_logins")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(u, ip, dev)| (u, (ip, dev)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn equal_values_collide_and_fields_and_keys_separate() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    s.etl.run(&["run", "--input", &input]).await.json();
    let t = tokens(&s.db.pool).await;
    let ip = |u: &str| t[u].0.clone().unwrap();
    let dev = |u: &str| t[u].1.clone().unwrap();

    assert_eq!(ip("p1"), ip("p2"), "1.2.3.4 written with leading zeros");
    assert_eq!(ip("p1"), ip("p5"), "IPv4-mapped IPv6");
    assert_eq!(ip("p3"), ip("p4"), "two spellings of one IPv6 address");
    assert_ne!(ip("p1"), ip("p6"), "different addresses");
    assert_eq!(dev("p1"), dev("p2"), "device id trimmed");
    assert_eq!(
        dev("p1"),
        dev("p6"),
        "same device, two users: the duplicate analysts look for"
    );
    assert_ne!(
        dev("p3"),
        ip("p1"),
        "same value in device_id and ip gives different tokens"
    );
    assert!(ip("p1").starts_with("v1:") && dev("p1").starts_with("v1:"));

    // The duplicate-device query analysts run finds exactly that group.
    let groups: Vec<(String, i64)> = sqlx::query_as(
        "SELECT masked_device_id, count(DISTINCT user_id) FROM user_logins
         GROUP BY 1 HAVING count(DISTINCT user_id) > 1",
    )
    .fetch_all(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(groups, vec![(dev("p1"), 3)]);

    // Another deployment (another KEK, other keys) gives other tokens for the same input.
    let other = Setup::new().await;
    other.etl.run(&["run", "--input", &input]).await.json();
    let t2 = tokens(&other.db.pool).await;
    assert_ne!(t2["p1"].0, t["p1"].0);
    assert_ne!(t2["p1"].1, t["p1"].1);
}

/// Every PII value of the input (sample + crafted, quarantined ones included).
fn pii_values() -> Vec<String> {
    let mut values = Vec::new();
    let bodies = sample_bodies()
        .into_iter()
        .chain(CRAFTED.iter().map(|s| s.to_string()));
    for body in bodies {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for field in ["ip", "device_id"] {
            if let Some(text) = v.get(field).and_then(|x| x.as_str()) {
                values.push(text.trim().to_owned());
            }
        }
    }
    values.push("1.2.3.4".into());
    values.sort();
    values.dedup();
    values
}

/// Rows of `table` where any column holds `value`: text columns as text, bytea columns as bytes.
async fn hits(pool: &PgPool, schema: &str, table: &str, value: &str) -> i64 {
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns
         WHERE table_schema = $1 AND table_name = $2",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(!columns.is_empty(), "{schema}.{table} has columns");
    let conditions: Vec<String> = columns
        .iter()
        .map(|(name, kind)| match kind.as_str() {
            "bytea" => format!("position(convert_to($1, 'UTF8') in \"{name}\") > 0"),
            _ => format!("strpos(\"{name}\"::text, $1) > 0"),
        })
        .collect();
    let sql = format!(
        "SELECT count(*) FROM {schema}.{table} WHERE {}",
        conditions.join(" OR ")
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(value)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_plaintext_pii_in_user_logins_quarantine_or_vault() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    let run = s.etl.run(&["run", "--input", &input]).await;
    let summary = run.json();
    assert_eq!(
        summary["quarantined"], 2,
        "the sample's malformed message and the crafted one"
    );
    let values = pii_values();
    assert!(values.len() > 190, "{} values", values.len());
    for value in &values {
        for (schema, table) in [
            ("public", "user_logins"),
            ("etl", "quarantine"),
            ("vault", "login_pii"),
        ] {
            assert_eq!(
                hits(&s.db.pool, schema, table, value).await,
                0,
                "{value} found in {schema}.{table}"
            );
        }
        assert!(!run.stderr.contains(value.as_str()), "{value} in the log");
    }
    // The search itself works: a value that is stored in clear is found.
    let sample_user = "424cdd21-063a-43a7-b91b-7ca1a833afae";
    assert_eq!(
        hits(&s.db.pool, "public", "user_logins", sample_user).await,
        1
    );
    assert_eq!(hits(&s.db.pool, "vault", "login_pii", sample_user).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_level_logs_of_an_sqs_drain_hold_no_pii() {
    let s = Setup::new().await;
    crate::support::send(&s.queue, &sample_bodies()).await;
    let run = s
        .etl
        .clone()
        .with("RUST_LOG", "trace")
        .run(&["run", "--drain", "--wait-time-secs", "2"])
        .await;
    assert_eq!(run.json()["loaded"], 99);
    assert!(
        run.stderr.contains("batch committed"),
        "debug logging was on"
    );
    assert!(run.stderr.lines().count() > 20, "trace output present");
    for value in pii_values() {
        assert!(
            !run.stderr.contains(value.as_str()),
            "{value} in the trace log"
        );
    }
    assert!(
        !run.stderr.contains("oops_wrong_msg_type"),
        "the malformed body is not logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_debug_logs_are_one_object_per_line_and_hold_no_pii_or_key() {
    use base64::Engine;
    let s = Setup::new().await;
    let sample = crate::support::sample_path();
    let run = s
        .etl
        .clone()
        .with("RUST_LOG", "debug")
        .run(&[
            "--log-format",
            "json",
            "run",
            "--input",
            sample.to_str().unwrap(),
            "--batch-size",
            "10",
        ])
        .await;
    assert_eq!(run.json()["loaded"], 99);
    let lines: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let committed: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "batch committed")
        .collect();
    assert!(committed.len() >= 10, "debug lines present: {}", run.stderr);
    assert!(
        committed
            .iter()
            .all(|l| l["level"] == "DEBUG" && l["received"].is_u64())
    );
    let kek = std::fs::read(&s.kek.path).unwrap();
    let secrets = [
        hex::encode(&kek),
        base64::engine::general_purpose::STANDARD.encode(&kek),
    ];
    for value in pii_values().iter().chain(&secrets) {
        assert!(!run.stderr.contains(value.as_str()), "{value} in the log");
    }
}
