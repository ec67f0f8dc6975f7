//! `etl run` without --drain polls until SIGTERM, then finishes its batches and exits 0.

use std::time::Duration;

use crate::support::{Setup, queue_depth, sample_bodies, send};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_polling_commits_and_prints_the_summary() {
    let s = Setup::new().await;
    let child = s.etl.spawn(&["run", "--wait-time-secs", "20"]);

    send(&s.queue, &sample_bodies()).await;
    // Wait until everything is loaded (the process keeps long-polling afterwards).
    for _ in 0..100 {
        let stored =
            s.db.count(
                "SELECT (SELECT count(*) FROM user_logins) + (SELECT count(*) FROM etl.quarantine)",
            )
            .await;
        if stored == 100 && queue_depth(&s.queue).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = std::time::Instant::now();
    let out = crate::support::sigterm(child).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a pending long poll does not delay shutdown"
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (summary["loaded"].as_u64(), summary["quarantined"].as_u64()),
        (Some(99), Some(1))
    );
    assert_eq!(queue_depth(&s.queue).await, 0);
}
