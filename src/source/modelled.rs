//! A queue with SQS's shape, in memory: up to ten messages per receive, batch delete, a fixed
//! latency per call, heartbeats that can be counted. The flow's tests and the benchmarks run
//! `etl run`'s own stages on it; `etl` itself never uses it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;

use super::{Heartbeat, Queue, Received, SourceError};

/// An in-memory queue; clones share it.
#[derive(Clone)]
pub struct ModelledQueue {
    pending: Arc<Mutex<VecDeque<Received>>>,
    deleted: Arc<Mutex<Vec<(String, String)>>>,
    /// Heartbeats not yet dropped.
    heartbeats: Arc<AtomicUsize>,
    latency: Duration,
}

impl ModelledQueue {
    /// A queue holding `bodies` as messages `modelled-<i>` with receipt handles `handle-<i>`.
    pub fn new(bodies: Vec<String>, latency: Duration) -> ModelledQueue {
        let now = Utc::now();
        let messages = bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Received {
                message_id: format!("modelled-{i}"),
                receipt_handle: Some(format!("handle-{i}")),
                sent_at: now,
                body: body.into(),
            })
            .collect();
        ModelledQueue::from_messages(messages, latency)
    }

    /// A queue that delivers exactly these messages, in order (redeliveries included).
    pub fn from_messages(messages: Vec<Received>, latency: Duration) -> ModelledQueue {
        ModelledQueue {
            pending: Arc::new(Mutex::new(messages.into())),
            deleted: Arc::default(),
            heartbeats: Arc::default(),
            latency,
        }
    }

    /// Every delete the queue was asked for, as (message id, receipt handle), in order.
    pub fn deleted(&self) -> Vec<(String, String)> {
        self.deleted.lock().expect("queue lock poisoned").clone()
    }

    /// Messages not received yet.
    pub fn pending(&self) -> usize {
        self.pending.lock().expect("queue lock poisoned").len()
    }

    /// Heartbeats still keeping messages invisible.
    pub fn live_heartbeats(&self) -> usize {
        self.heartbeats.load(Ordering::SeqCst)
    }
}

impl Queue for ModelledQueue {
    async fn check(&self) -> Result<(), SourceError> {
        Ok(())
    }

    async fn receive(&self, wait_secs: i32) -> Result<Vec<Received>, SourceError> {
        tokio::time::sleep(self.latency).await;
        let batch: Vec<Received> = {
            let mut pending = self.pending.lock().expect("queue lock poisoned");
            let n = pending.len().min(super::sqs::MAX_BATCH);
            pending.drain(..n).collect()
        };
        if batch.is_empty() {
            // A long poll on an empty queue waits its full time.
            tokio::time::sleep(Duration::from_secs(wait_secs.max(0) as u64)).await;
        }
        Ok(batch)
    }

    async fn delete_batch(&self, receipts: &[(&str, &str)]) -> Result<usize, SourceError> {
        tokio::time::sleep(self.latency).await;
        let mut deleted = self.deleted.lock().expect("queue lock poisoned");
        deleted.extend(
            receipts
                .iter()
                .map(|(id, handle)| (id.to_string(), handle.to_string())),
        );
        Ok(receipts.len())
    }

    fn keep_invisible(&self, _: Vec<String>) -> Option<Heartbeat> {
        self.heartbeats.fetch_add(1, Ordering::SeqCst);
        let alive = Alive(self.heartbeats.clone());
        Some(Heartbeat(tokio::spawn(async move {
            let _alive = alive;
            std::future::pending::<()>().await;
        })))
    }
}

/// Counts a heartbeat down when its task ends.
struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
