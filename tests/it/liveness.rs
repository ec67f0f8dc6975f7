//! `etl run` never hangs: a write stage that dies for good ends the process with its exit code
//! (with `--drain` and without), a stuck one ends the process with 75 after the stall timeout
//! (`/healthz` answers 503 from then on: unit-tested in `serve`),
//! and in both cases nothing uncommitted is deleted and a later drain loads every message once.

use std::time::{Duration, Instant};

use crate::support::{Setup, free_port, http_get, queue_depth, send};

/// Deeper than every channel and batch of the run, so receivers are blocked on a full channel
/// when the write stage dies.
const MESSAGES: usize = 2_000;

/// The run's shutdown timeout in these tests: the bound on ending after a fatal error.
const SHUTDOWN_SECS: u64 = 5;

fn bodies(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!(r#"{{"user_id":"live-{i}","ip":"10.7.{}.{}","device_id":"dev-live-{i}","locale":"FR"}}"#, i / 250, i % 250))
        .collect()
}

async fn loaded(s: &Setup) -> i64 {
    s.db.count("SELECT count(*) FROM user_logins").await
}

/// Waits for the child to exit on its own within `bound`; returns (exit code, stderr, waited).
async fn exits_within(child: tokio::process::Child, bound: Duration) -> (i32, String, Duration) {
    let started = Instant::now();
    let out = tokio::time::timeout(bound, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("etl did not exit within {bound:?}"))
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// The failed runs' visibility timeout: their messages reappear this long after their
/// heartbeats stopped.
const VISIBILITY_SECS: u64 = 5;

/// After the repair, a drain loads what the failed run left: every message exactly once.
async fn a_later_drain_loads_the_rest_once(s: &Setup, loaded_before: i64, total: i64) {
    // The failed run's heartbeats stopped: its messages reappear within the visibility timeout.
    tokio::time::sleep(Duration::from_secs(VISIBILITY_SECS + 1)).await;
    let summary = s.drain().await;
    assert_eq!(
        summary["loaded"].as_i64().unwrap() + loaded_before,
        total,
        "{summary}"
    );
    assert_eq!(loaded(s).await, total);
    let distinct =
        s.db.count("SELECT count(DISTINCT message_id) FROM user_logins")
            .await;
    assert_eq!(distinct, total);
    assert_eq!(s.db.count("SELECT count(*) FROM etl.quarantine").await, 0);
    assert_eq!(queue_depth(&s.queue).await, 0);
}

async fn a_write_stage_that_dies_for_good_ends_the_run(drain: bool) {
    let s = Setup::with_visibility(5).await;
    let (_writer, writer_url) = s.login("piivault_etl").await;
    send(&s.queue, &bodies(MESSAGES)).await;
    let etl = s.etl.clone().with("DATABASE_URL", &writer_url);
    let (shutdown, visibility) = (SHUTDOWN_SECS.to_string(), VISIBILITY_SECS.to_string());
    // Without --drain the log is JSON: the error path must keep one object per line.
    let mut args = if drain {
        vec![]
    } else {
        vec!["--log-format", "json"]
    };
    args.extend([
        "run",
        "--visibility-timeout-secs",
        &visibility,
        "--wait-time-secs",
        "1",
        "--batch-size",
        "50",
        "--linger-ms",
        "20",
        "--writers",
        "2",
        "--shutdown-timeout-secs",
        &shutdown,
    ]);
    if drain {
        args.push("--drain");
    }
    let child = etl.spawn(&args);
    let started_loading = s
        .wait_for(
            "SELECT count(*) FROM user_logins",
            100,
            Duration::from_secs(60),
        )
        .await;
    assert!(started_loading >= 100, "the run loads before the failure");
    // For good: the writers' role loses INSERT on the analysts' table mid-run.
    sqlx::query("REVOKE INSERT ON etl.logins FROM piivault_etl")
        .execute(&s.db.pool)
        .await
        .unwrap();
    let revoked = Instant::now();
    let (code, stderr, _) = exits_within(child, Duration::from_secs(60)).await;
    let took = revoked.elapsed();
    assert_eq!(code, 77, "permission denied ends the run with 77: {stderr}");
    assert!(
        took < Duration::from_secs(SHUTDOWN_SECS + 5),
        "exited {took:?} after the failure; the bound is the shutdown timeout"
    );
    assert!(
        stderr.contains("a stage failed; stopping the run") && stderr.contains("permission denied"),
        "{stderr}"
    );
    if !drain {
        for line in stderr.lines() {
            let event: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
            assert!(event.is_object(), "{line}");
        }
        assert!(
            stderr.contains(r#""exit_code":77"#),
            "the fatal error is a JSON line with its exit code: {stderr}"
        );
    }
    // Nothing uncommitted was deleted: every message not in the table is still on the queue.
    let committed = loaded(&s).await;
    assert!(committed < MESSAGES as i64, "the failure came mid-run");
    let left = queue_depth(&s.queue).await;
    assert!(
        left >= MESSAGES as i64 - committed,
        "{left} left on the queue, {committed} committed of {MESSAGES}"
    );
    sqlx::query("GRANT INSERT ON etl.logins TO piivault_etl")
        .execute(&s.db.pool)
        .await
        .unwrap();
    a_later_drain_loads_the_rest_once(&s, committed, MESSAGES as i64).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_stage_that_dies_for_good_ends_a_drain_with_its_exit_code() {
    a_write_stage_that_dies_for_good_ends_the_run(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_stage_that_dies_for_good_ends_a_run_without_drain() {
    a_write_stage_that_dies_for_good_ends_the_run(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_write_ends_the_run_with_75_after_the_stall_timeout() {
    let s = Setup::with_visibility(5).await;
    send(&s.queue, &bodies(200)).await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // The lock is taken first: the very first batch waits on it, with no statement timeout.
    let lock = s.db.block_user_logins().await;
    let (shutdown, visibility) = (SHUTDOWN_SECS.to_string(), VISIBILITY_SECS.to_string());
    let child = s.etl.spawn(&[
        "run",
        "--visibility-timeout-secs",
        &visibility,
        "--wait-time-secs",
        "1",
        "--stall-timeout-secs",
        "4",
        "--shutdown-timeout-secs",
        &shutdown,
        "--metrics-addr",
        &addr,
    ]);
    let mut health = (0, String::new());
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            health = tokio::task::spawn_blocking(move || http_get(port, "/healthz"))
                .await
                .unwrap();
            break;
        }
    }
    assert_eq!(
        health.0, 200,
        "healthy while the stall is young: {}",
        health.1
    );
    let (code, stderr, waited) = exits_within(child, Duration::from_secs(30)).await;
    assert!(
        waited < Duration::from_secs(4 + SHUTDOWN_SECS + 2),
        "{waited:?}"
    );
    assert_eq!(code, 75, "a stall ends the run with 75: {stderr}");
    assert!(stderr.contains("--stall-timeout-secs"), "{stderr}");
    lock.rollback().await.unwrap();
    assert_eq!(loaded(&s).await, 0);
    a_later_drain_loads_the_rest_once(&s, 0, 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_whose_write_stage_dies_ends_at_once_and_loads_fully_after_the_repair() {
    let s = Setup::new().await;
    let (_writer, writer_url) = s.login("piivault_etl").await;
    // Far more than the channel holds: the reader is blocked on a full channel when the
    // writers die, and must still stop.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backfill.jsonl");
    std::fs::write(&file, bodies(20_000).join("\n")).unwrap();
    let file = file.to_str().unwrap();
    sqlx::query("REVOKE INSERT ON etl.logins FROM piivault_etl")
        .execute(&s.db.pool)
        .await
        .unwrap();
    let etl = s.etl.clone().with("DATABASE_URL", &writer_url);
    let child = etl.spawn(&["run", "--input", file, "--shutdown-timeout-secs", "5"]);
    let (code, stderr, _) = exits_within(child, Duration::from_secs(30)).await;
    assert_eq!(code, 77, "{stderr}");
    assert_eq!(loaded(&s).await, 0);
    sqlx::query("GRANT INSERT ON etl.logins TO piivault_etl")
        .execute(&s.db.pool)
        .await
        .unwrap();
    let summary = etl.run(&["run", "--input", file]).await.json();
    assert_eq!(summary["loaded"], 20_000, "{summary}");
    assert_eq!(loaded(&s).await, 20_000);
}

/// An SQS endpoint that takes connections and never answers (a hung proxy or load balancer)
/// ends the run with 69 after the call timeout (`source::sqs::CALL_TIMEOUT`, 10 s; the wait of a
/// long poll on top) and `--max-outage-secs`, instead of hanging: no message is in hand, so the
/// stall watchdog cannot see this one. Each SQS call carries that bound since the SDK's
/// stalled-stream protection is off.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_sqs_endpoint_ends_the_run_with_69_instead_of_hanging() {
    let s = Setup::new().await;
    // The kernel completes the connections (listen backlog); nothing ever reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let child = s.etl.clone().with("AWS_ENDPOINT_URL", &endpoint).spawn(&[
        "run",
        "--drain",
        "--wait-time-secs",
        "1",
        "--max-outage-secs",
        "0",
    ]);
    let (code, stderr, waited) = exits_within(child, Duration::from_secs(60)).await;
    assert_eq!(code, 69, "unreachable: {stderr}");
    assert!(stderr.contains("timeout"), "{stderr}");
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(25),
        "the call timeout, not a hang: {waited:?}"
    );
    drop(silent);
}
