//! Delivery under faults: slow batches keep their messages, poison rows do not block a batch,
//! quarantined messages can be replayed, and two consumers share one queue.

use std::time::Duration;

use crate::support::{Setup, queue_depth, send};

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
    s.db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_row_is_quarantined_alone_and_replays_once_the_rule_changes() {
    let s = Setup::new().await;
    // A deployment whose locale column is narrower than piivault validates for.
    sqlx::query("ALTER TABLE user_logins ALTER COLUMN locale TYPE varchar(2)")
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
    list.ok();
    let entries: Vec<serde_json::Value> = list
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0]["reason"],
        "the database refused the row (SQLSTATE 22001: a value is too long for its column)"
    );
    assert!(
        !list.stdout.contains("poison") && !list.stdout.contains("FRA"),
        "no body in the list"
    );

    // Still refused: kept. After the column is widened: loaded, exactly once.
    let kept = s.etl.run(&["quarantine", "replay", "--all"]).await.json();
    assert_eq!(
        (kept["loaded"].as_u64(), kept["kept"].as_u64()),
        (Some(0), Some(1))
    );
    sqlx::query("ALTER TABLE user_logins ALTER COLUMN locale TYPE varchar(32)")
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
    let reveal = s
        .etl
        .run(&["reveal", "--user-id", "poison", "--reason", "replay check"])
        .await;
    reveal.ok();
    assert!(reveal.stdout.contains("10.4.4.4"));
    s.db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_on_one_queue_load_each_message_exactly_once() {
    let s = Setup::new().await;
    const N: usize = 3000;
    let all = bodies("two", N);
    send(&s.queue, &all).await;
    let args = [
        "run",
        "--drain",
        "--wait-time-secs",
        "2",
        "--concurrency",
        "4",
    ];
    let (a, b) = (s.etl.spawn(&args), s.etl.spawn(&args));
    let (a, b) = (
        a.wait_with_output().await.unwrap(),
        b.wait_with_output().await.unwrap(),
    );
    let summary = |out: &std::process::Output| -> serde_json::Value {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (a, b) = (summary(&a), summary(&b));
    assert!(
        a["loaded"].as_u64().unwrap() > 0 && b["loaded"].as_u64().unwrap() > 0,
        "both worked: {a} {b}"
    );
    assert_eq!(
        a["loaded"].as_u64().unwrap() + b["loaded"].as_u64().unwrap(),
        N as u64
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM user_logins").await,
        N as i64
    );
    assert_eq!(
        s.db.count("SELECT count(DISTINCT message_id) FROM user_logins")
            .await,
        N as i64
    );
    assert_eq!(queue_depth(&s.queue).await, 0);
    s.db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_and_doubles_nothing() {
    use rand::{RngExt, SeedableRng};
    let s = Setup::with_visibility(2).await;
    const N: usize = 3000;
    let mut all = bodies("k", N);
    all.extend((0..30).map(|i| format!(r#"{{"user_id":{i}}}"#))); // some quarantine traffic too
    send(&s.queue, &all).await;
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
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        child.start_kill().unwrap(); // SIGKILL: no shutdown path runs
        child.wait().await.unwrap();
    }
    let before_final = s.db.count("SELECT count(*) FROM user_logins").await;
    assert!(
        before_final > 0 && before_final < N as i64,
        "the kills interrupted real work: {before_final}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await; // in-flight messages become visible again
    s.drain().await;
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
    s.db.drop_db().await;
}

/// The issue's outage length.
const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn a_30_second_postgres_outage_is_waited_out_and_nothing_is_lost() {
    use crate::support::{Etl, TempCluster, TestKek, queue};
    let cluster = TempCluster::start();
    let (kek, queue_url) = (TestKek::new(), queue(10).await);
    let etl = Etl::new(&cluster.url(), &queue_url, &kek.uri());
    etl.run(&["migrate"]).await.ok();
    etl.run(&["keys", "init"]).await.ok();
    send(&queue_url, &bodies("before", 400)).await;
    let consumer = etl.spawn(&[
        "run",
        "--wait-time-secs",
        "1",
        "--concurrency",
        "2",
        "--visibility-timeout-secs",
        "5",
    ]);
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
    while count(cluster.url()).await < 50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.stop();
    send(&queue_url, &bodies("during", 200)).await;
    tokio::time::sleep(OUTAGE).await;
    cluster.start_again();
    let mut loaded = -1;
    for _ in 0..600 {
        loaded = count(cluster.url()).await;
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
    let pool = sqlx::PgPool::connect(&cluster.url()).await.unwrap();
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT message_id) FROM user_logins")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(distinct, 600);
    assert_eq!(queue_depth(&queue_url).await, 0);
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
    s.db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_batch_does_not_hold_shutdown_past_the_timeout_and_is_redelivered() {
    let s = Setup::new().await;
    send(&s.queue, &bodies("stuck", 10)).await;
    let blocker = s.db.block_user_logins().await;
    let child = s.etl.spawn(&[
        "run",
        "--wait-time-secs",
        "1",
        "--visibility-timeout-secs",
        "4",
        "--shutdown-timeout-secs",
        "2",
    ]);
    tokio::time::sleep(Duration::from_millis(1500)).await; // the batch is received and blocked
    let started = std::time::Instant::now();
    let out = crate::support::sigterm(child).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded shutdown"
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("shutdown timeout"), "{}", out.stderr);
    blocker.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await; // visibility expires: redelivered
    let summary = s.drain().await;
    assert_eq!(
        summary["loaded"], 10,
        "nothing was deleted without its rows: {summary}"
    );
    s.db.drop_db().await;
}
