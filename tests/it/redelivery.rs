//! At-least-once delivery: a message committed but not deleted comes back and adds nothing.

use std::collections::HashSet;
use std::sync::Arc;

use piivault::commands::Context;
use piivault::config::{DatabaseUrl, Settings};
use piivault::pipeline::Pipeline;
use piivault::source::Queue;
use piivault::source::sqs::SqsQueue;

use crate::support::{Setup, queue_depth, sample_bodies, send, sqs};

#[tokio::test(flavor = "multi_thread")]
async fn redelivered_messages_are_counted_as_duplicates_not_loaded_twice() {
    let s = Setup::with_visibility(2).await;
    let bodies: Vec<String> = sample_bodies().into_iter().take(30).collect();
    send(&s.queue, &bodies).await;

    // A consumer that commits and then dies before deleting: store every batch, delete nothing.
    let ctx = Context {
        settings: Settings {
            database_url: Some(DatabaseUrl::new(s.db.url.clone())),
            kek: Some(s.kek.uri()),
            ..Settings::default()
        },
        stop: Default::default(),
    };
    let pool = ctx.pool(2).await.unwrap();
    let pipeline = Arc::new(
        Pipeline::load(pool.clone(), ctx.kek().await.unwrap())
            .await
            .unwrap(),
    );
    let queue = SqsQueue::with_client(sqs().await, s.queue.0.clone());
    let mut seen = HashSet::new();
    let consume = async {
        while seen.len() < bodies.len() {
            let batch = queue.receive(1).await.unwrap();
            pipeline.store(&batch).await.unwrap();
            seen.extend(batch.into_iter().map(|m| m.message_id));
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), consume)
        .await
        .expect("every message received once");
    let stored = s
        .db
        .count("SELECT (SELECT count(*) FROM user_logins) + (SELECT count(*) FROM etl.quarantine)")
        .await;
    assert_eq!(stored, 30);

    // The visibility timeout expires; the real consumer gets every message again.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let summary = s.drain().await;
    let n = |k: &str| summary[k].as_u64().unwrap();
    assert_eq!((n("loaded"), n("quarantined")), (0, 0), "{summary}");
    assert!(n("received") >= 30, "every message came back: {summary}");
    assert_eq!(
        n("duplicates"),
        n("received"),
        "every delivery was a duplicate: {summary}"
    );
    assert!(n("deleted") >= 30, "{summary}");
    assert_eq!(queue_depth(&s.queue).await, 0);
    let after = s
        .db
        .count("SELECT (SELECT count(*) FROM user_logins) + (SELECT count(*) FROM etl.quarantine)")
        .await;
    assert_eq!(after, 30);
    assert_eq!(
        s.db.count("SELECT count(*) FROM vault.login_pii").await,
        s.db.count("SELECT count(*) FROM user_logins").await
    );
    pool.close().await;
}
