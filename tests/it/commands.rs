//! `etl seed` into a queue and `etl keys status`, through the binary.

use crate::support::{Setup, queue_depth};

#[tokio::test(flavor = "multi_thread")]
async fn seed_sends_the_requested_mix_and_it_loads() {
    let s = Setup::new().await;
    let seeded = s
        .etl
        .run(&[
            "seed",
            "--count",
            "200",
            "--malformed-ratio",
            "0.05",
            "--seed",
            "3",
        ])
        .await
        .json();
    assert_eq!(
        (seeded["sent"].as_u64(), seeded["malformed"].as_u64()),
        (Some(200), Some(10))
    );
    assert_eq!(queue_depth(&s.queue).await, 200);
    let summary = s.drain().await;
    assert_eq!(
        (summary["loaded"].as_u64(), summary["quarantined"].as_u64()),
        (Some(190), Some(10))
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.login_pii").await,
        190
    );
    // Synthetic devices are shared across users, so the duplicate query finds groups.
    let shared = s
        .db
        .count("SELECT count(*) FROM (SELECT 1 FROM user_logins GROUP BY masked_device_id HAVING count(DISTINCT user_id) > 1) g")
        .await;
    assert!(shared >= 1, "{shared} shared devices");
    assert!(
        s.db.count("SELECT count(*) FROM user_logins WHERE locale IS NULL")
            .await
            > 20
    );

    // The same seed writes the same bodies.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    for path in [&a, &b] {
        let out = s
            .etl
            .run(&[
                "seed",
                "--count",
                "50",
                "--seed",
                "9",
                "--output",
                path.to_str().unwrap(),
            ])
            .await
            .json();
        assert_eq!(out["written"], 50);
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_status_lists_versions_never_key_material() {
    let s = Setup::new().await;
    let table = s.etl.run(&["keys", "status"]).await;
    table.assert_success();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", table.stdout);
    assert!(
        lines[1].starts_with("seal ") && lines[1].contains(" 1 ") && lines[1].contains("active")
    );
    assert!(lines[2].starts_with("token ") && lines[2].contains(&s.kek.uri()));
    let json = s.etl.run(&["keys", "status", "--format", "json"]).await;
    json.assert_success();
    let rows: Vec<serde_json::Value> = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["purpose"], "seal");
    // PIIVAULT_DEPLOYMENT unset: the keys are bound to the database's name.
    assert_eq!(rows[0]["deployment"], s.db.name.as_str());
    assert!(lines[0].contains(" deployment ") && lines[1].contains(&s.db.name));
    let fields: Vec<&String> = rows[0].as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        [
            "created_at",
            "deployment",
            "kek",
            "purpose",
            "retired_at",
            "state",
            "version"
        ]
    );
    // No wrapped (let alone unwrapped) key bytes in any encoding.
    let wrapped: Vec<Vec<u8>> = sqlx::query_scalar("SELECT wrapped FROM vault.data_keys")
        .fetch_all(&s.db.pool)
        .await
        .unwrap();
    for bytes in wrapped {
        let hex = hex::encode(&bytes[..8]);
        assert!(!table.stdout.contains(&hex) && !json.stdout.contains(&hex));
    }
}

/// The verbs a command's own `--help` lists (the `Commands:` section), `help` excepted.
fn verbs(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|v| *v != "help")
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_top_level_help_names_every_keys_verb() {
    let etl = crate::support::Etl::default();
    let top = etl.run(&["--help"]).await;
    let keys = etl.run(&["keys", "--help"]).await;
    let line = top
        .assert_success()
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("keys "))
        .unwrap_or_else(|| panic!("no keys line in {}", top.stdout))
        .to_owned();
    let verbs = verbs(&keys.assert_success().stdout);
    assert_eq!(verbs.len(), 8, "{verbs:?}");
    for verb in &verbs {
        assert!(line.contains(verb.as_str()), "{verb} missing from {line:?}");
    }
}
