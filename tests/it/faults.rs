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
    let mut blocker = s.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE user_logins IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
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
