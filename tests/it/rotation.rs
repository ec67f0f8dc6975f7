//! Key rotation end to end: rotate, load more, reencrypt, retokenize, verify, retire, rewrap —
//! with reveal and duplicate groups checked after every step, under a file KEK and a KMS KEK.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine;

use crate::support::{Etl, Run, Setup, TestDb, TestKek, kms_kek, reveal_user, sample_path};

/// Logins that form duplicate groups: a device shared by d1/d2, an IP by d2/d3 (two spellings).
const SHARED: [&str; 3] = [
    r#"{"user_id":"d1","ip":"10.0.0.1","device_id":"dev-shared-1","locale":null}"#,
    r#"{"user_id":"d2","ip":"10.0.0.9","device_id":"dev-shared-1"}"#,
    r#"{"user_id":"d3","ip":"010.000.000.009","device_id":"dev-d3"}"#,
];
/// Loaded after the rotation: joins the old groups from a new row.
const LATER: [&str; 2] = [
    r#"{"user_id":"d4","ip":"10.0.0.1","device_id":"dev-shared-1"}"#,
    r#"{"user_id":"d5","ip":"2001:db8::5","device_id":"dev-d5"}"#,
];

fn write(dir: &std::path::Path, name: &str, lines: &[&str]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

/// User sets of every duplicate group, by device and by IP (independent of token values).
async fn groups(db: &TestDb) -> BTreeSet<(String, Vec<String>)> {
    let rows: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT 'device', array_agg(DISTINCT user_id ORDER BY user_id) FROM user_logins GROUP BY masked_device_id
           HAVING count(DISTINCT user_id) > 1
         UNION ALL
         SELECT 'ip', array_agg(DISTINCT user_id ORDER BY user_id) FROM user_logins GROUP BY masked_ip
           HAVING count(DISTINCT user_id) > 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// (ip, device_id) revealed for each user.
async fn reveal_all(
    etl: &Etl,
    users: &[&str],
    log: &mut String,
) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    for user in users {
        let run = etl.run(&reveal_user(user, "rotation test")).await;
        log.push_str(&run.stderr);
        run.assert_success();
        let mut records: Vec<(String, String)> = run
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| {
                (
                    v["ip"].as_str().unwrap().to_owned(),
                    v["device_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        records.sort();
        out.insert(user.to_string(), records);
    }
    out
}

async fn step(etl: &Etl, args: &[&str], log: &mut String) -> serde_json::Value {
    let run = etl.run(args).await;
    log.push_str(&run.stderr);
    run.json()
}

async fn full_cycle(s: &Setup, etl: &Etl) {
    let dir = tempfile::tempdir().unwrap();
    let debug = etl.clone().with("RUST_LOG", "debug");
    let mut log = String::new();
    step(
        &debug,
        &["run", "--input", sample_path().to_str().unwrap()],
        &mut log,
    )
    .await;
    step(
        &debug,
        &[
            "run",
            "--input",
            &write(dir.path(), "shared.jsonl", &SHARED),
        ],
        &mut log,
    )
    .await;
    let users = ["424cdd21-063a-43a7-b91b-7ca1a833afae", "d1", "d2", "d3"];
    let originals = reveal_all(&debug, &users, &mut log).await;
    assert_eq!(
        originals["d3"],
        vec![("010.000.000.009".to_owned(), "dev-d3".to_owned())]
    );
    let expected_groups: BTreeSet<(String, Vec<String>)> = [
        ("device".into(), vec!["d1".into(), "d2".into()]),
        ("ip".into(), vec!["d2".into(), "d3".into()]),
    ]
    .into();
    assert_eq!(groups(&s.db).await, expected_groups);

    let seal = step(&debug, &["keys", "rotate", "--purpose", "seal"], &mut log).await;
    assert_eq!(
        (seal["version"].as_i64(), seal["state"].as_str()),
        (Some(2), Some("active"))
    );
    let token = step(&debug, &["keys", "rotate", "--purpose", "token"], &mut log).await;
    assert_eq!(
        (token["version"].as_i64(), token["state"].as_str()),
        (Some(2), Some("pending"))
    );
    assert_eq!(reveal_all(&debug, &users, &mut log).await, originals);
    assert_eq!(
        groups(&s.db).await,
        expected_groups,
        "a pending token key changes nothing for analysts"
    );
    let in_use = etl
        .run(&["keys", "retire", "--purpose", "seal", "--version", "1"])
        .await;
    assert_eq!(in_use.code, 73, "{}", in_use.stderr);
    assert!(
        in_use
            .stderr
            .contains("seal key v1 still protects 103 row(s)"),
        "{}",
        in_use.stderr
    );
    let active = etl
        .run(&["keys", "retire", "--purpose", "token", "--version", "1"])
        .await;
    assert!(
        active.code == 73 && active.stderr.contains("is active"),
        "{}",
        active.stderr
    );
    let pending = etl
        .run(&["keys", "retire", "--purpose", "token", "--version", "2"])
        .await;
    assert!(
        pending.code == 73 && pending.stderr.contains("is pending"),
        "{}",
        pending.stderr
    );

    // New rows: sealed with v2 at once, tokens still v1 for analysts (so they join the old
    // groups), and v2 tokens already in the pending key's slot.
    step(
        &debug,
        &["run", "--input", &write(dir.path(), "later.jsonl", &LATER)],
        &mut log,
    )
    .await;
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.login_pii WHERE key_version = 2")
            .await,
        2
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM user_logins WHERE token_version = 1")
            .await,
        104
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM etl.logins WHERE token_version_b = 2")
            .await,
        2
    );
    let mut later_groups = BTreeSet::new();
    later_groups.insert((
        "device".to_owned(),
        vec!["d1".into(), "d2".into(), "d4".into()],
    ));
    later_groups.insert(("ip".to_owned(), vec!["d1".into(), "d4".into()]));
    later_groups.insert(("ip".to_owned(), vec!["d2".into(), "d3".into()]));
    assert_eq!(groups(&s.db).await, later_groups);
    let mut all_users = users.to_vec();
    all_users.extend(["d4", "d5"]);
    let all_originals = reveal_all(&debug, &all_users, &mut log).await;
    assert_eq!(
        all_originals["d4"],
        vec![("10.0.0.1".to_owned(), "dev-shared-1".to_owned())]
    );

    let re = step(
        &debug,
        &["keys", "reencrypt", "--batch-size", "7"],
        &mut log,
    )
    .await;
    assert_eq!(
        (
            re["vault"].as_u64(),
            re["quarantine"].as_u64(),
            re["failed"].as_u64()
        ),
        (Some(102), Some(1), Some(0))
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.login_pii WHERE key_version <> 2")
            .await,
        0
    );
    assert_eq!(
        reveal_all(&debug, &all_users, &mut log).await,
        all_originals
    );
    assert_eq!(groups(&s.db).await, later_groups);

    let tokens_before: Vec<String> =
        sqlx::query_scalar("SELECT masked_ip FROM user_logins WHERE user_id = 'd1'")
            .fetch_all(&s.db.pool)
            .await
            .unwrap();
    let rt = step(
        &debug,
        &["keys", "retokenize", "--batch-size", "9"],
        &mut log,
    )
    .await;
    assert_eq!(
        (rt["retokenized"].as_u64(), rt["token_version"].as_i64()),
        (Some(102), Some(2)),
        "the two rows loaded while v2 was pending needed no filling"
    );
    assert_eq!(
        s.db.count(
            "SELECT count(*) FROM user_logins WHERE token_version = 2 AND masked_ip LIKE 'v2:%'"
        )
        .await,
        104
    );
    // Side by side: the old version waits, hidden from analysts, in its slot until retired.
    assert_eq!(
        s.db.count(
            "SELECT count(*) FROM etl.logins WHERE token_version_a = 1 AND token_version_b = 2"
        )
        .await,
        104
    );
    let tokens_after: Vec<String> =
        sqlx::query_scalar("SELECT masked_ip FROM user_logins WHERE user_id = 'd1'")
            .fetch_all(&s.db.pool)
            .await
            .unwrap();
    assert_ne!(tokens_before, tokens_after);
    assert_eq!(
        groups(&s.db).await,
        later_groups,
        "same groups under the new token key"
    );
    let verified = step(&debug, &["keys", "verify"], &mut log).await;
    assert_eq!(
        (
            verified["vault_rows"].as_u64(),
            verified["tokens_checked"].as_u64()
        ),
        (Some(104), Some(104))
    );

    // Retire: refused for the active versions, allowed for the old ones, idempotent.
    let refused = etl
        .run(&["keys", "retire", "--purpose", "seal", "--version", "2"])
        .await;
    assert_eq!(refused.code, 73, "{}", refused.stderr);
    assert!(refused.stderr.contains("is active"));
    for purpose in ["seal", "token"] {
        let out = step(
            &debug,
            &["keys", "retire", "--purpose", purpose, "--version", "1"],
            &mut log,
        )
        .await;
        assert_eq!(out["already"], false);
    }
    assert_eq!(
        step(
            &debug,
            &["keys", "retire", "--purpose", "seal", "--version", "1"],
            &mut log
        )
        .await["already"],
        true
    );
    assert_eq!(s.db.count("SELECT count(*) FROM vault.data_keys WHERE state = 'retired' AND wrapped IS NULL AND version = 1").await, 2);
    assert_eq!(
        s.db.count("SELECT count(*) FROM etl.logins WHERE ip_token_a IS NOT NULL OR device_token_a IS NOT NULL OR token_version_a IS NOT NULL")
            .await,
        0,
        "retiring the token key cleared its tokens from the hidden slot"
    );
    step(&debug, &["keys", "verify"], &mut log).await;
    assert_eq!(
        reveal_all(&debug, &all_users, &mut log).await,
        all_originals
    );
    assert_eq!(groups(&s.db).await, later_groups);
    // New loads use the new keys.
    step(
        &debug,
        &[
            "run",
            "--input",
            &write(
                dir.path(),
                "last.jsonl",
                &[r#"{"user_id":"d6","device_id":"dev-shared-1"}"#],
            ),
        ],
        &mut log,
    )
    .await;
    let d6: (i32, i32) = sqlx::query_as(
        "SELECT u.token_version, p.key_version FROM user_logins u JOIN vault.login_pii p USING (message_id) WHERE u.user_id = 'd6'",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(d6, (2, 2));
    assert!(groups(&s.db).await.contains(&(
        "device".to_owned(),
        vec!["d1".into(), "d2".into(), "d4".into(), "d6".into()]
    )));

    assert_no_secrets(s, &log, &all_originals).await;
}

/// The debug logs of the whole cycle hold no plaintext, token, or wrapped key.
async fn assert_no_secrets(
    s: &Setup,
    log: &str,
    originals: &BTreeMap<String, Vec<(String, String)>>,
) {
    assert!(
        log.contains("DEBUG") || log.contains("INFO"),
        "logs were captured"
    );
    for (ip, device) in originals.values().flatten() {
        assert!(
            !log.contains(ip.as_str()) && !log.contains(device.as_str()),
            "{ip}/{device} logged"
        );
    }
    let tokens: Vec<String> =
        sqlx::query_scalar("SELECT masked_ip FROM user_logins WHERE masked_ip IS NOT NULL")
            .fetch_all(&s.db.pool)
            .await
            .unwrap();
    for token in tokens {
        assert!(!log.contains(&token[3..]), "a token was logged");
    }
    let device_tokens: Vec<String> = sqlx::query_scalar(
        "SELECT masked_device_id FROM user_logins WHERE masked_device_id IS NOT NULL",
    )
    .fetch_all(&s.db.pool)
    .await
    .unwrap();
    for token in device_tokens {
        assert!(!log.contains(&token[3..]), "a device token was logged");
    }
    // Under a file KEK the test can unwrap the data keys itself: their bytes appear nowhere.
    if let Some(path) = s
        .etl
        .vars
        .iter()
        .find(|(k, _)| k == "PIIVAULT_KEK")
        .and_then(|(_, v)| v.strip_prefix("file:"))
    {
        let kek = piivault::kek::Kek::open(&piivault::kek::KekUri::File(path.into()))
            .await
            .unwrap();
        let rows = piivault::store::keys::list(&s.db.pool).await.unwrap();
        assert!(rows.iter().any(|r| r.wrapped.is_some()));
        for row in &rows {
            let Some(key) = piivault::keystore::unwrap_row(&kek, row).await.unwrap() else {
                continue; // retired
            };
            let plain = key.plain;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&plain[..]);
            let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&plain[..]);
            assert!(
                !log.contains(&hex::encode(&plain[..12])),
                "key bytes (hex) logged"
            );
            assert!(
                !log.contains(&b64[..16]) && !log.contains(&b64url[..16]),
                "key bytes (base64) logged"
            );
            assert!(
                !log.contains(&format!("{:?}", &plain[..6])),
                "key bytes (debug) logged"
            );
        }
    }
    let wrapped: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT wrapped FROM vault.data_keys WHERE wrapped IS NOT NULL")
            .fetch_all(&s.db.pool)
            .await
            .unwrap();
    for bytes in wrapped {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert!(
            !log.contains(&hex::encode(&bytes[..12])) && !log.contains(&b64[..16]),
            "wrapped key logged"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn full_rotation_cycle_under_a_file_kek() {
    let s = Setup::new().await;
    full_cycle(&s, &s.etl).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn full_rotation_cycle_under_a_kms_kek() {
    let s = Setup::builder().kek(&kms_kek().await).build().await;
    full_cycle(&s, &s.etl).await;
}

/// Every data row, as text: equal before and after a rewrap.
async fn data_fingerprint(db: &TestDb) -> String {
    sqlx::query_scalar(
        "SELECT md5(coalesce((SELECT string_agg(t::text, '|' ORDER BY message_id) FROM user_logins t), '')
                 || coalesce((SELECT string_agg(t::text, '|' ORDER BY message_id) FROM vault.login_pii t), '')
                 || coalesce((SELECT string_agg(t::text, '|' ORDER BY message_id) FROM etl.quarantine t), ''))",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn rewrap_file_to_kms_to_kms_to_file_leaves_data_rows_identical() {
    let s = Setup::with_sample().await;
    let user = "424cdd21-063a-43a7-b91b-7ca1a833afae";
    let before = data_fingerprint(&s.db).await;
    let (kms1, kms2) = (kms_kek().await, kms_kek().await);
    let back_home = TestKek::new();
    let file = back_home.uri();
    let mut current = s.etl.clone();
    for next in [&kms1, &kms2, &file] {
        let out = current
            .run(&["keys", "rewrap", "--to-kek", next])
            .await
            .json();
        assert_eq!(out["rewrapped"], 2);
        let old = current.clone();
        current = s.etl.clone().with("PIIVAULT_KEK", next);
        assert_eq!(data_fingerprint(&s.db).await, before, "data rows untouched");
        let uris: Vec<String> = sqlx::query_scalar("SELECT DISTINCT kek_uri FROM vault.data_keys")
            .fetch_all(&s.db.pool)
            .await
            .unwrap();
        assert_eq!(uris, vec![next.clone()]);
        let reveal = current.run(&reveal_user(user, "after rewrap")).await;
        reveal.assert_success();
        assert!(reveal.stdout.contains("199.172.111.135"));
        let stale = old.run(&reveal_user(user, "old kek check")).await;
        assert_ne!(stale.code, 0, "the previous KEK no longer unwraps the keys");
        assert_eq!(stale.stdout, "");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reencrypt_killed_midway_completes_on_rerun() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    s.etl
        .run(&[
            "seed",
            "--count",
            "4000",
            "--seed",
            "5",
            "--output",
            file.to_str().unwrap(),
        ])
        .await
        .json();
    s.etl
        .run(&["run", "--input", file.to_str().unwrap()])
        .await
        .json();
    let total = s.db.count("SELECT count(*) FROM vault.login_pii").await;
    assert_eq!(total, 4000);
    s.etl
        .run(&["keys", "rotate", "--purpose", "seal"])
        .await
        .json();

    let mut child = s.etl.spawn(&["keys", "reencrypt", "--batch-size", "20"]);
    let moved = loop {
        let moved =
            s.db.count("SELECT count(*) FROM vault.login_pii WHERE key_version = 2")
                .await;
        if moved >= 200 {
            break moved;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    s.db.wait_for_etl_sessions_to_end().await;
    let after_kill =
        s.db.count("SELECT count(*) FROM vault.login_pii WHERE key_version = 2")
            .await;
    assert!(
        after_kill >= moved && after_kill < total,
        "killed midway: {after_kill} of {total}"
    );

    let rerun: Run = s
        .etl
        .run(&["keys", "reencrypt", "--batch-size", "500"])
        .await;
    let out = rerun.json();
    assert_eq!(
        out["vault"].as_i64(),
        Some(total - after_kill),
        "only the rest, nothing twice"
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.login_pii").await,
        total
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.login_pii WHERE key_version = 2")
            .await,
        total
    );
    s.etl.run(&["keys", "verify"]).await.json();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_presented_with_the_wrong_context_is_refused_and_nothing_is_written() {
    for kms in [false, true] {
        let s = if kms {
            Setup::builder().kek(&kms_kek().await).build().await
        } else {
            Setup::new().await
        };
        // Present the token key's wrapped bytes as the seal key: right KEK, wrong context.
        sqlx::query(
            "UPDATE vault.data_keys SET wrapped = (SELECT wrapped FROM vault.data_keys WHERE purpose = 'token')
             WHERE purpose = 'seal'",
        )
        .execute(&s.db.pool)
        .await
        .unwrap();
        let run = s
            .etl
            .run(&["run", "--input", sample_path().to_str().unwrap()])
            .await;
        assert_eq!(run.code, 78, "{}", run.stderr);
        assert!(
            run.stderr.contains("cannot unwrap the seal key v1"),
            "{}",
            run.stderr
        );
        assert_eq!(s.db.count("SELECT count(*) FROM user_logins").await, 0);
        assert_eq!(s.db.count("SELECT count(*) FROM vault.login_pii").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_consumer_follows_rotations_without_restart() {
    let s = Setup::new().await;
    let child = s
        .etl
        .spawn(&["run", "--wait-time-secs", "1", "--concurrency", "2"]);
    let bodies = |prefix: &str| -> Vec<String> {
        (0..20)
            .map(|i| {
                format!(
                    r#"{{"user_id":"{prefix}{i}","ip":"10.1.1.{i}","device_id":"dev-shared-9"}}"#
                )
            })
            .collect()
    };
    let wait_for = |n: i64| {
        let db = &s.db;
        async move {
            for _ in 0..150 {
                if db.count("SELECT count(*) FROM user_logins").await == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("never reached {n} rows");
        }
    };
    crate::support::send(&s.queue, &bodies("a")).await;
    wait_for(20).await;

    s.etl
        .run(&["keys", "rotate", "--purpose", "seal"])
        .await
        .json();
    crate::support::send(&s.queue, &bodies("b")).await;
    wait_for(40).await;
    assert_eq!(
        s.db.count(
            "SELECT count(*) FROM vault.login_pii WHERE user_id LIKE 'b%' AND key_version = 2"
        )
        .await,
        20,
        "the running process picked up the new seal key"
    );

    s.etl
        .run(&["keys", "rotate", "--purpose", "token"])
        .await
        .json();
    s.etl.run(&["keys", "retokenize"]).await.json();
    crate::support::send(&s.queue, &bodies("c")).await;
    wait_for(60).await;
    assert_eq!(
        s.db.count("SELECT count(*) FROM user_logins WHERE token_version = 2")
            .await,
        60
    );
    assert_eq!(
        s.db.count("SELECT count(DISTINCT masked_device_id) FROM user_logins")
            .await,
        1,
        "one device, one token across old and new rows"
    );
    s.etl.run(&["keys", "reencrypt"]).await.json();
    for purpose in ["seal", "token"] {
        s.etl
            .run(&["keys", "retire", "--purpose", purpose, "--version", "1"])
            .await
            .json();
    }
    s.etl.run(&["keys", "verify"]).await.json();

    let out = crate::support::sigterm(child).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(summary["loaded"], 60);
    let stderr = out.stderr;
    assert!(stderr.contains("reloaded the keyring"), "{stderr}");
}

/// Runs scripts/rotate-keys.sh with the test's environment.
async fn runbook(s: &Setup) -> Run {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(std::path::Path::new(crate::support::ROOT).join("scripts/rotate-keys.sh"));
    cmd.envs(s.etl.vars.iter().map(|(k, v)| (k, v)))
        .envs(crate::support::stack_env());
    cmd.env("ETL", env!("CARGO_BIN_EXE_etl"))
        .env_remove("RUST_LOG");
    cmd.output().await.unwrap().into()
}

async fn versions(db: &TestDb) -> Vec<(String, i32, String)> {
    sqlx::query_as("SELECT purpose, version, state FROM vault.data_keys ORDER BY purpose, version")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runbook_rotates_and_a_rerun_after_a_failure_finishes_without_rotating_again() {
    let s = Setup::with_sample().await;
    let user = "424cdd21-063a-43a7-b91b-7ca1a833afae";

    // As if a first run had died between its two rotations: only the seal key was rotated.
    s.etl
        .run(&["keys", "rotate", "--purpose", "seal"])
        .await
        .json();
    let first = runbook(&s).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(
        first
            .stderr
            .contains("seal: a rotation is in progress; finishing it"),
        "{}",
        first.stderr
    );
    let state = |p: &str, v: i32, st: &str| (p.to_owned(), v, st.to_owned());
    assert_eq!(
        versions(&s.db).await,
        [
            state("seal", 1, "retired"),
            state("seal", 2, "active"),
            state("token", 1, "retired"),
            state("token", 2, "active")
        ]
    );

    // Break one sealed value: the second rotation fails at reencrypt, non-zero, keys not retired.
    let victim: String =
        sqlx::query_scalar("SELECT message_id FROM vault.login_pii WHERE user_id = $1")
            .bind(user)
            .fetch_one(&s.db.pool)
            .await
            .unwrap();
    let good: Vec<u8> =
        sqlx::query_scalar("SELECT ip_sealed FROM vault.login_pii WHERE message_id = $1")
            .bind(&victim)
            .fetch_one(&s.db.pool)
            .await
            .unwrap();
    let set_ip = |bytes: Vec<u8>| {
        let (pool, id) = (s.db.pool.clone(), victim.clone());
        async move {
            sqlx::query("UPDATE vault.login_pii SET ip_sealed = $2 WHERE message_id = $1")
                .bind(id)
                .bind(bytes)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    let mut broken = good.clone();
    *broken.last_mut().unwrap() ^= 1;
    set_ip(broken).await;
    let failed = runbook(&s).await;
    assert_ne!(failed.code, 0);
    assert!(
        failed.stderr.contains("integrity error") && failed.stderr.contains(&victim),
        "{}",
        failed.stderr
    );
    assert!(
        versions(&s.db)
            .await
            .contains(&state("seal", 2, "previous"))
    );

    // Repair, re-run: finishes the same rotation (v3), does not start a v4.
    set_ip(good).await;
    let rerun = runbook(&s).await;
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    assert!(
        rerun.stderr.contains("seal: a rotation is in progress"),
        "{}",
        rerun.stderr
    );
    assert!(
        rerun.stderr.contains("token: a rotation is in progress"),
        "{}",
        rerun.stderr
    );
    assert_eq!(
        versions(&s.db).await,
        [
            state("seal", 1, "retired"),
            state("seal", 2, "retired"),
            state("seal", 3, "active"),
            state("token", 1, "retired"),
            state("token", 2, "retired"),
            state("token", 3, "active")
        ]
    );
    let reveal = s.etl.run(&reveal_user(user, "after runbook")).await;
    reveal.assert_success();
    assert!(
        reveal.stdout.contains("199.172.111.135") && reveal.stdout.contains("\"key_version\":3")
    );
}

/// Rows carrying the pending key (v2) in its slot (b: the first key took a).
const FILLED: &str = "SELECT count(*) FROM etl.logins WHERE token_version_b = 2";

#[tokio::test(flavor = "multi_thread")]
async fn retokenize_killed_while_filling_leaves_analysts_untouched_and_resumes() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    s.etl
        .run(&[
            "seed",
            "--count",
            "3000",
            "--seed",
            "6",
            "--output",
            file.to_str().unwrap(),
        ])
        .await
        .json();
    s.etl
        .run(&["run", "--input", file.to_str().unwrap()])
        .await
        .json();
    let before = groups(&s.db).await;
    assert!(
        !before.is_empty(),
        "the synthetic data has duplicate groups"
    );
    s.etl
        .run(&["keys", "rotate", "--purpose", "token"])
        .await
        .json();

    let mut child = s.etl.spawn(&["keys", "retokenize", "--batch-size", "20"]);
    loop {
        if s.db.count(FILLED).await >= 200 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    s.db.wait_for_etl_sessions_to_end().await;
    let filled = s.db.count(FILLED).await;
    let total = s.db.count("SELECT count(*) FROM user_logins").await;
    assert!(filled < total, "killed while filling: {filled} of {total}");
    assert_eq!(
        s.db.count("SELECT count(*) FROM user_logins WHERE token_version = 1")
            .await,
        total
    );
    assert_eq!(
        groups(&s.db).await,
        before,
        "analysts see the old, complete token version meanwhile"
    );

    let out = s.etl.run(&["keys", "retokenize"]).await.json();
    assert_eq!(
        out["retokenized"].as_i64(),
        Some(total - filled),
        "resumed: only the rows not filled yet, none twice"
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM user_logins WHERE token_version = 2")
            .await,
        total
    );
    assert_eq!(groups(&s.db).await, before, "same groups under the new key");
    s.etl.run(&["keys", "verify"]).await.json();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runbook_runs_while_a_consumer_keeps_loading() {
    let s = Setup::with_sample().await;
    let consumer = s
        .etl
        .spawn(&["run", "--wait-time-secs", "1", "--concurrency", "3"]);
    const MESSAGES: usize = 1200;
    let queue = s.queue.0.clone();
    let producer = tokio::spawn(async move {
        for chunk in 0..MESSAGES / 10 {
            let bodies: Vec<String> = (0..10)
                .map(|i| {
                    let n = chunk * 10 + i;
                    format!(
                        r#"{{"user_id":"live-{n}","ip":"10.9.{}.{}","device_id":"dev-pool-{}"}}"#,
                        n / 250,
                        n % 250,
                        n % 5
                    )
                })
                .collect();
            crate::support::send(&queue, &bodies).await;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rotated = runbook(&s).await;
    assert_eq!(
        rotated.code, 0,
        "the runbook succeeds under load: {}",
        rotated.stderr
    );
    producer.await.unwrap();
    let expected = 99 + MESSAGES as i64;
    for _ in 0..300 {
        if s.db.count("SELECT count(*) FROM user_logins").await == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = crate::support::sigterm(consumer).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    assert_eq!(
        s.db.count("SELECT count(*) FROM user_logins").await,
        expected,
        "nothing lost"
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM user_logins WHERE token_version = 2")
            .await,
        expected
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.login_pii WHERE key_version = 2")
            .await,
        expected
    );
    assert_eq!(
        s.db.count(
            "SELECT count(DISTINCT masked_device_id) FROM user_logins WHERE user_id LIKE 'live-%'"
        )
        .await,
        5,
        "five shared devices, one token each: no mixed versions"
    );
    assert_eq!(
        versions(&s.db)
            .await
            .iter()
            .filter(|(_, _, st)| st == "retired")
            .count(),
        2
    );
    s.etl.run(&["keys", "verify"]).await.json();
}
