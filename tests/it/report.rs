//! `etl report duplicates`: token groups shared by several users, from the real table.

use crate::support::{Etl, Setup};

async fn groups(etl: &Etl, args: &[&str]) -> Vec<serde_json::Value> {
    let mut full = vec!["report", "duplicates", "--format", "json"];
    full.extend_from_slice(args);
    etl.run(&full).await.json_lines()
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_groups_count_users_and_logins_by_token_only() {
    let s = Setup::new().await;
    // One device shared by three users (four logins), one IP shared by two users; the rest unique.
    let mut lines = vec![
        r#"{"user_id":"u1","device_id":"dev-shared-7","ip":"198.51.100.9"}"#.to_owned(),
        r#"{"user_id":"u2","device_id":"dev-shared-7","ip":"198.51.100.9"}"#.to_owned(),
        r#"{"user_id":"u3","device_id":"dev-shared-7","ip":"203.0.113.1"}"#.to_owned(),
        r#"{"user_id":"u3","device_id":"dev-shared-7","ip":"203.0.113.2"}"#.to_owned(),
    ];
    lines.extend(
        (0..20).map(|i| format!(r#"{{"user_id":"x{i}","device_id":"own-{i}","ip":"10.1.1.{i}"}}"#)),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("logins.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    s.etl
        .run(&["run", "--input", file.to_str().unwrap()])
        .await
        .assert_success();

    let devices = groups(&s.etl, &[]).await;
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(
        (devices[0]["users"].as_i64(), devices[0]["logins"].as_i64()),
        (Some(3), Some(4))
    );
    let token: String = sqlx::query_scalar(
        "SELECT DISTINCT masked_device_id FROM user_logins WHERE user_id = 'u1'",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(
        devices[0]["token"], token,
        "the group is named by its token"
    );

    let ips = groups(&s.etl, &["--by", "ip"]).await;
    assert_eq!(ips.len(), 1, "{ips:?}");
    assert_eq!(
        (ips[0]["users"].as_i64(), ips[0]["logins"].as_i64()),
        (Some(2), Some(2))
    );
    assert!(
        groups(&s.etl, &["--by", "ip", "--min-users", "3"])
            .await
            .is_empty()
    );
    // A token only one user has is never a duplicate: the command refuses to ask (and
    // shared_tokens() clamps min_users to 2 for any other caller, see vault_rules.rs).
    for args in [["--min-users", "1"], ["--limit", "1001"]] {
        let refused = s
            .etl
            .run(&[&["report", "duplicates"][..], &args[..]].concat())
            .await;
        assert_eq!(refused.code, 64, "{args:?}: {}", refused.stderr);
    }

    let table = s.etl.run(&["report", "duplicates", "--by", "device"]).await;
    let table = &table.assert_success().stdout;
    assert!(table.starts_with("token"), "{table}");
    let csv = s
        .etl
        .run(&["report", "duplicates", "--format", "csv"])
        .await;
    assert_eq!(
        csv.assert_success().stdout,
        format!("token,users,logins\n{token},3,4\n")
    );
    for output in [table, &csv.stdout] {
        assert!(!output.contains("dev-shared-7") && !output.contains("198.51.100.9"));
    }
}
