//! Delivery under faults: slow batches keep their messages, poison rows do not block a batch,
//! quarantined messages can be replayed, and two consumers share one queue.

use std::time::Duration;

use crate::support::{Setup, produce, queue_depth, reveal_user, send, sigterm};

fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!(r#"{{"user_id":"{prefix}-{i}","ip":"10.3.{}.{}","device_id":"dev-{prefix}-{i}","locale":"FR"}}"#, i / 250, i % 250))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_batch_keeps_its_messages_invisible_until_committed() {
    let s = Setup::new().await;
    send(&s.queue, &bodies("slow", 20)).await;
    // Hold the analysts' table for 6 s: every batch waits far past its 2 s visibility timeout.
    let blocker = s.db.block_user_logins().await;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(6)).await;
        blocker.commit().await.unwrap();
    });
    let first = s.etl.spawn(&[
        "run",
        "--drain",
        "--wait-time-secs",
        "1",
        "--concurrency",
        "2",
        "--visibility-timeout-secs",
        "2",
    ]);
    // Past the visibility timeout, another consumer polls: the heartbeat must have hidden the
    // messages from it.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let second = s
        .etl
        .run(&["run", "--drain", "--wait-time-secs", "1"])
        .await
        .json();
    release.await.unwrap();
    let first = first.wait_with_output().await.unwrap();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(
        second["received"], 0,
        "no redelivery while the batches were in progress: {second}"
    );
    assert_eq!(
        (first["received"].as_u64(), first["loaded"].as_u64()),
        (Some(20), Some(20)),
        "{first}"
    );
    assert_eq!(queue_depth(&s.queue).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_row_is_quarantined_alone_and_replays_once_the_rule_changes() {
    let s = Setup::new().await;
    // A deployment with a rule on locale stricter than piivault validates for.
    sqlx::query("ALTER TABLE etl.logins ADD CONSTRAINT pv_test_short_locale CHECK (char_length(locale) <= 2)")
        .execute(&s.db.pool)
        .await
        .unwrap();
    let mut batch = bodies("p", 9);
    batch.push(
        r#"{"user_id":"poison","ip":"10.4.4.4","device_id":"dev-poison","locale":"FRA"}"#.into(),
    );
    send(&s.queue, &batch).await;
    let run = s
        .etl
        .run(&["run", "--drain", "--wait-time-secs", "1"])
        .await;
    let summary = run.json();
    assert_eq!(
        (summary["loaded"].as_u64(), summary["quarantined"].as_u64()),
        (Some(9), Some(1)),
        "{summary}"
    );
    assert_eq!(queue_depth(&s.queue).await, 0);
    assert!(!run.stderr.contains("FRA") && !run.stderr.contains("10.4.4.4"));

    let list = s.etl.run(&["quarantine", "list", "--format", "json"]).await;
    list.assert_success();
    let entries: Vec<serde_json::Value> = list
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0]["reason"],
        "the database refused the row (SQLSTATE 23514: a check constraint failed)"
    );
    assert!(
        !list.stdout.contains("poison") && !list.stdout.contains("FRA"),
        "no body in the list"
    );

    // Still refused: kept. After the rule is dropped: loaded, exactly once.
    let kept = s.etl.run(&["quarantine", "replay", "--all"]).await.json();
    assert_eq!(
        (kept["loaded"].as_u64(), kept["kept"].as_u64()),
        (Some(0), Some(1))
    );
    sqlx::query("ALTER TABLE etl.logins DROP CONSTRAINT pv_test_short_locale")
        .execute(&s.db.pool)
        .await
        .unwrap();
    let id = entries[0]["message_id"].as_str().unwrap();
    let replayed = s
        .etl
        .run(&["quarantine", "replay", "--id", id])
        .await
        .json();
    assert_eq!(
        (replayed["loaded"].as_u64(), replayed["kept"].as_u64()),
        (Some(1), Some(0))
    );
    let again = s.etl.run(&["quarantine", "replay", "--all"]).await.json();
    assert_eq!(again["loaded"], 0);
    assert_eq!(
        s.db.count("SELECT count(*) FROM user_logins WHERE user_id = 'poison' AND locale = 'FRA'")
            .await,
        1
    );
    assert_eq!(s.db.count("SELECT count(*) FROM etl.quarantine").await, 0);
    let reveal = s.etl.run(&reveal_user("poison", "replay check")).await;
    reveal.assert_success();
    assert!(reveal.stdout.contains("10.4.4.4"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_on_one_queue_load_each_message_exactly_once() {
    let s = Setup::new().await;
    const N: i64 = 10_000; // the issue's size
    let producer = produce(&s.queue, bodies("two", N as usize), 3000);
    let args = ["run", "--wait-time-secs", "2", "--concurrency", "4"];
    let (a, b) = (s.etl.spawn(&args), s.etl.spawn(&args));
    producer.await.unwrap();
    let loaded = s
        .wait_for(
            "SELECT count(*) FROM user_logins",
            N,
            Duration::from_secs(300),
        )
        .await;
    let (a, b) = (sigterm(a).await, sigterm(b).await);
    assert_eq!(loaded, N, "every message loaded");
    let (a, b) = (a.assert_success().json(), b.assert_success().json());
    assert!(
        a["loaded"].as_u64().unwrap() > 0 && b["loaded"].as_u64().unwrap() > 0,
        "both worked: {a} {b}"
    );
    assert_eq!(
        a["loaded"].as_u64().unwrap() + b["loaded"].as_u64().unwrap(),
        N as u64,
        "no message loaded by both: {a} {b}"
    );
    assert_eq!(
        s.db.count("SELECT count(DISTINCT message_id) FROM user_logins")
            .await,
        N
    );
    assert_eq!(s.db.count("SELECT count(*) FROM vault.login_pii").await, N);
    assert_eq!(queue_depth(&s.queue).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_and_doubles_nothing() {
    use rand::{RngExt, SeedableRng};
    let s = Setup::with_visibility(2).await;
    const N: usize = 20_000; // the issue's size
    let mut all = bodies("k", N);
    all.extend((0..30).map(|i| format!(r#"{{"user_id":{i}}}"#))); // some quarantine traffic too
    let producer = produce(&s.queue, all, 3000);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for _ in 0..5 {
        let mut child = s.etl.spawn(&[
            "run",
            "--wait-time-secs",
            "1",
            "--concurrency",
            "4",
            "--visibility-timeout-secs",
            "2",
        ]);
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..6000))).await;
        child.start_kill().unwrap(); // SIGKILL: no shutdown path runs
        child.wait().await.unwrap();
    }
    let before_final = s.db.count("SELECT count(*) FROM user_logins").await;
    assert!(
        before_final > 0 && before_final < N as i64,
        "the kills interrupted real work: {before_final}"
    );
    // A last consumer runs until everything sent is stored (the producer paces on its drain).
    let last = s
        .etl
        .spawn(&["run", "--wait-time-secs", "1", "--concurrency", "4"]);
    producer.await.unwrap();
    let stored =
        "SELECT (SELECT count(*) FROM user_logins) + (SELECT count(*) FROM etl.quarantine)";
    s.wait_for(stored, N as i64 + 30, Duration::from_secs(300))
        .await;
    sigterm(last).await.assert_success();
    let rows = s.db.count("SELECT count(*) FROM user_logins").await;
    let quarantined = s.db.count("SELECT count(*) FROM etl.quarantine").await;
    assert_eq!(
        (rows, quarantined),
        (N as i64, 30),
        "every message exactly once"
    );
    assert_eq!(
        s.db.count("SELECT count(DISTINCT message_id) FROM user_logins")
            .await,
        N as i64
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.login_pii").await,
        N as i64
    );
    assert_eq!(queue_depth(&s.queue).await, 0);
}

/// Sends `n` messages and starts a consumer that waits out outages.
async fn start_consuming(s: &crate::support::Setup, n: usize) -> tokio::process::Child {
    send(&s.queue, &bodies("before", n)).await;
    s.etl.spawn(&[
        "run",
        "--wait-time-secs",
        "1",
        "--concurrency",
        "2",
        "--visibility-timeout-secs",
        "5",
    ])
}

/// The issue's outage length.
const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn a_30_second_postgres_outage_is_waited_out_and_nothing_is_lost() {
    use crate::support::{Setup, TempCluster};
    let cluster = TempCluster::start();
    let s = Setup::builder()
        .cluster(&cluster)
        .visibility(10)
        .build()
        .await;
    let (queue_url, db_url) = (&*s.queue, s.db.url.clone());
    let consumer = start_consuming(&s, 400).await;
    let count = |url: String| async move {
        match sqlx::PgPool::connect(&url).await {
            Ok(pool) => {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM user_logins")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(-1);
                pool.close().await;
                n
            }
            Err(_) => -1,
        }
    };
    while count(db_url.clone()).await < 50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.stop();
    send(queue_url, &bodies("during", 200)).await;
    tokio::time::sleep(OUTAGE).await;
    cluster.start_again();
    let mut loaded = -1;
    for _ in 0..600 {
        loaded = count(db_url.clone()).await;
        if loaded == 600 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = crate::support::sigterm(consumer).await;
    assert_eq!(
        out.code, 0,
        "the process survived the outage: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unreachable"),
        "it noticed the outage: {}",
        out.stderr
    );
    assert_eq!(loaded, 600, "every message loaded after the outage");
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT message_id) FROM user_logins")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(distinct, 600);
    assert_eq!(queue_depth(queue_url).await, 0);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_drain_commits_what_it_has_and_a_later_drain_loads_the_rest() {
    let s = Setup::new().await;
    const N: i64 = 1500;
    send(&s.queue, &bodies("t", N as usize)).await;
    let child = s.etl.spawn(&[
        "run",
        "--drain",
        "--wait-time-secs",
        "1",
        "--concurrency",
        "4",
        "--visibility-timeout-secs",
        "2",
    ]);
    while s.db.count("SELECT count(*) FROM user_logins").await < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = crate::support::sigterm(child).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).expect("the summary line");
    let loaded = summary["loaded"].as_i64().unwrap();
    assert!(loaded > 0 && loaded < N, "stopped mid-drain: {summary}");
    assert_eq!(
        s.db.count("SELECT count(*) FROM user_logins").await,
        loaded,
        "everything counted is committed"
    );
    s.drain().await;
    assert_eq!(
        s.db.count("SELECT count(DISTINCT message_id) FROM user_logins")
            .await,
        N
    );
    assert_eq!(queue_depth(&s.queue).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emulator_restart_is_waited_out_and_the_recreated_queue_is_consumed() {
    use crate::support::{Setup, TempEmulator, create_queue};
    let mut emulator = TempEmulator::start();
    let s = Setup::builder()
        .emulator(&emulator)
        .visibility(5)
        .build()
        .await;
    let (db, queue_url) = (&s.db, &*s.queue);
    let mut consumer = start_consuming(&s, 300).await;
    let log = crate::support::StderrLog::take(&mut consumer);
    let loaded = |want: i64| {
        let db = &db;
        async move {
            let sql = "SELECT count(*) FROM user_logins";
            db.wait_for(sql, want, Duration::from_secs(120)).await == want
        }
    };
    assert!(loaded(300).await, "the first 300 loaded before the restart");
    // Down for a while (connection refused), then back empty: the queue itself is missing until
    // it is recreated, as after a real emulator restart.
    emulator.stop();
    assert!(
        log.wait_for("unreachable", Duration::from_secs(30)).await,
        "it noticed the outage: {}",
        log.text()
    );
    emulator.start_again();
    // The queue is recreated only once a receive has met it missing (backoff decides when).
    assert!(
        log.wait_for("does not exist", Duration::from_secs(30))
            .await,
        "it noticed the missing queue: {}",
        log.text()
    );
    let name = queue_url.rsplit('/').next().unwrap();
    let recreated = create_queue(&emulator.sqs().await, name, 5).await;
    assert_eq!(recreated, queue_url);
    send(queue_url, &bodies("after", 300)).await;
    let all_loaded = loaded(600).await;
    let out = crate::support::sigterm(consumer).await;
    assert_eq!(
        out.code,
        0,
        "the process survived the restart: {}",
        log.text()
    );
    assert!(
        all_loaded,
        "messages sent after the restart were loaded: {}",
        log.text()
    );
    assert_eq!(
        db.count("SELECT count(DISTINCT message_id) FROM user_logins")
            .await,
        600
    );
    assert_eq!(queue_depth(queue_url).await, 0);
}
