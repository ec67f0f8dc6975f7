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

fn logins_file(dir: &tempfile::TempDir, name: &str, lines: &[String]) -> String {
    let file = dir.path().join(name);
    std::fs::write(&file, lines.join("\n")).unwrap();
    file.to_str().unwrap().to_owned()
}

fn sharing(users: std::ops::Range<u32>, device: &str) -> Vec<String> {
    users
        .map(|i| format!(r#"{{"user_id":"s{i}","device_id":"{device}","ip":"10.9.0.{i}"}}"#))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_summary_is_reused_until_too_old_and_never_outlives_a_token_switch() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let first = logins_file(&dir, "first.jsonl", &sharing(0..2, "dev-summary-1"));
    s.etl
        .run(&["run", "--input", &first])
        .await
        .assert_success();

    // The first report builds the summary: one group of two users.
    let devices = groups(&s.etl, &[]).await;
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0]["users"], 2);
    let built_at: String =
        sqlx::query_scalar("SELECT refreshed_at::text FROM etl.shared_tokens_state")
            .fetch_one(&s.db.pool)
            .await
            .unwrap();

    // A third user arrives: within --max-age-secs the report answers from the summary as it
    // was (and says when it was counted); --max-age-secs 0 counts again.
    let more = logins_file(&dir, "more.jsonl", &sharing(2..3, "dev-summary-1"));
    s.etl.run(&["run", "--input", &more]).await.assert_success();
    let cached = s
        .etl
        .run(&["report", "duplicates", "--format", "json"])
        .await;
    assert_eq!(cached.json_lines()[0]["users"], 2);
    assert!(
        cached
            .stderr
            .contains("duplicate groups as of the summary's last build"),
        "{}",
        cached.stderr
    );
    assert_eq!(
        s.db.count(&format!(
            "SELECT count(*) FROM etl.shared_tokens_state WHERE refreshed_at::text = '{built_at}'"
        ))
        .await,
        1,
        "not rebuilt"
    );
    assert_eq!(
        groups(&s.etl, &["--max-age-secs", "0"]).await[0]["users"],
        3
    );

    // `etl report refresh` rebuilds and says what it built.
    let refreshed = s.etl.run(&["report", "refresh"]).await.json_lines();
    assert_eq!(refreshed[0]["groups"], 1, "{refreshed:?}");
    assert_eq!(refreshed[0]["token_version"], 1);

    // After a token switch the summary holds tokens analysts no longer see: it serves nothing,
    // and the next report rebuilds it with the new tokens.
    s.etl
        .run(&["keys", "rotate", "--purpose", "token"])
        .await
        .assert_success();
    s.etl.run(&["keys", "retokenize"]).await.assert_success();
    assert_eq!(
        s.db.count("SELECT count(*) FROM shared_tokens_summary('device', 2, 10)")
            .await,
        0,
        "tokens of the old version"
    );
    let after = groups(&s.etl, &[]).await;
    let token: String = sqlx::query_scalar(
        "SELECT DISTINCT masked_device_id FROM user_logins WHERE user_id = 's0'",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    assert!(token.starts_with("v2:"), "{token}");
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(
        (after[0]["token"].as_str(), after[0]["users"].as_i64()),
        (Some(token.as_str()), Some(3))
    );
}
