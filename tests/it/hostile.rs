//! The hostile corpus (tests/fixtures/hostile.json, plus a 256 KiB body) through SQS: every
//! message ends loaded or quarantined with the documented reason (and, for a loaded one, with
//! the masked columns its case says are NULL), the process never panics, and no body reaches the
//! log.

use std::collections::HashMap;

use crate::support::{ROOT, Setup, queue_depth, sqs};

#[derive(serde::Deserialize)]
struct Case {
    kind: String,
    body: String,
    expect: String,
    reason: Option<String>,
    /// For a loaded case: masked columns that must be NULL (a blank value is a missing value:
    /// no token, and nothing sealed for it in the vault).
    #[serde(default)]
    null: Vec<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn every_hostile_message_is_loaded_or_quarantined_with_its_reason() {
    let s = Setup::new().await;
    let text =
        std::fs::read_to_string(std::path::Path::new(ROOT).join("tests/fixtures/hostile.json"))
            .unwrap();
    let mut cases: Vec<Case> = serde_json::from_str(&text).unwrap();
    cases.push(Case {
        kind: "256 KiB body".into(),
        body: format!(
            r#"{{"user_id":"h-big","pad":"{}"}}"#,
            "p".repeat(256 * 1024 - 40)
        ),
        expect: "quarantined".into(),
        reason: Some("body is 262".into()),
        null: Vec::new(),
    });
    assert!(cases.len() >= 40, "{} kinds", cases.len());

    let client = sqs().await;
    let mut by_id: HashMap<String, &Case> = HashMap::new();
    for case in &cases {
        let sent = client
            .send_message()
            .queue_url(&*s.queue)
            .message_body(&case.body)
            .send()
            .await;
        let id = sent
            .unwrap_or_else(|e| panic!("{}: {e:?}", case.kind))
            .message_id
            .unwrap();
        by_id.insert(id, case);
    }
    let run = s
        .etl
        .clone()
        .with("RUST_LOG", "debug")
        .run(&["run", "--drain", "--wait-time-secs", "2"])
        .await;
    let summary = run.json();
    assert_eq!(
        summary["received"].as_u64(),
        Some(cases.len() as u64),
        "{summary}"
    );
    assert_eq!(queue_depth(&s.queue).await, 0);
    assert!(!run.stderr.contains("panicked"));

    let loaded: Vec<String> = sqlx::query_scalar("SELECT message_id FROM user_logins")
        .fetch_all(&s.db.pool)
        .await
        .unwrap();
    let quarantined: HashMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT message_id, reason FROM etl.quarantine")
            .fetch_all(&s.db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(
        loaded.len() + quarantined.len(),
        cases.len(),
        "nothing lost, nothing doubled"
    );
    for (id, case) in &by_id {
        match case.expect.as_str() {
            "loaded" => {
                assert!(loaded.contains(id), "{} should load", case.kind);
                for column in &case.null {
                    let sealed = match column.as_str() {
                        "masked_ip" => "ip_sealed",
                        "masked_device_id" => "device_id_sealed",
                        other => panic!("{}: unknown column {other}", case.kind),
                    };
                    let (masked_null, sealed_null): (bool, bool) =
                        sqlx::query_as(sqlx::AssertSqlSafe(format!(
                            "SELECT u.{column} IS NULL, v.{sealed} IS NULL
                             FROM user_logins u JOIN vault.login_pii v USING (message_id)
                             WHERE u.message_id = $1"
                        )))
                        .bind(id)
                        .fetch_one(&s.db.pool)
                        .await
                        .unwrap();
                    assert!(
                        masked_null && sealed_null,
                        "{}: {column} should be NULL with nothing sealed",
                        case.kind
                    );
                }
            }
            _ => {
                let reason = quarantined
                    .get(id)
                    .unwrap_or_else(|| panic!("{} should be quarantined", case.kind));
                let expected = case.reason.as_deref().unwrap();
                assert!(
                    reason.starts_with(expected),
                    "{}: {reason:?} does not start with {expected:?}",
                    case.kind
                );
            }
        }
    }
    for marker in ["192.0.2", "dev-h", "h-sql", "DROP TABLE", "📱", "pppppppp"] {
        assert!(!run.stderr.contains(marker), "{marker} reached the log");
    }
    // Leading zeros, padding, IPv6 spellings and IPv4-mapped forms of one address: one token.
    let tokens: i64 =
        s.db.count(
            "SELECT count(DISTINCT masked_ip) FROM user_logins
             WHERE user_id IN ('h-user', 'h-i1', 'h-i2', 'h-i5', 'h-bom', 'h-x')",
        )
        .await;
    assert_eq!(tokens, 1);
    assert_eq!(
        s.db.count(
            "SELECT count(DISTINCT masked_ip) FROM user_logins WHERE user_id IN ('h-i3', 'h-i4')"
        )
        .await,
        1
    );
}
