//! The SQS queue: long-poll receive, batch delete after commit, and batch send (for `etl seed`).

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use chrono::{DateTime, TimeZone, Utc};

use super::{Heartbeat, Queue, Received, SourceError};
use crate::aws::{CallFailure, describe};
use crate::error::classify::Fault;

/// Most messages one receive, delete or send call carries (an SQS limit).
pub const MAX_BATCH: usize = 10;

/// One queue and a client for it.
#[derive(Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    visibility_secs: Option<i32>,
}

impl SqsQueue {
    /// A client for the queue at `url`, configured by the SDK's standard chain.
    pub async fn new(url: String) -> SqsQueue {
        let client = aws_sdk_sqs::Client::new(crate::aws::sdk_config().await);
        SqsQueue {
            client,
            url,
            visibility_secs: None,
        }
    }

    /// Receives with this visibility timeout (instead of the queue's default), which the
    /// heartbeat then renews.
    pub fn with_visibility(mut self, secs: i32) -> SqsQueue {
        self.visibility_secs = Some(secs);
        self
    }

    /// A queue reached through a client the caller configured.
    pub fn with_client(client: aws_sdk_sqs::Client, url: String) -> SqsQueue {
        SqsQueue {
            client,
            url,
            visibility_secs: None,
        }
    }

    /// The queue URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn extend_visibility(&self, receipt_handles: &[String], secs: i32) {
        let entries = receipt_handles
            .iter()
            .enumerate()
            .map(|(i, handle)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .visibility_timeout(secs)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let result = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await;
        match result {
            Ok(output) => tracing::debug!(
                extended = output.successful().len(),
                failed = output.failed().len(),
                "visibility heartbeat"
            ),
            // The batch goes on; at worst its messages reappear and are absorbed as duplicates.
            Err(e) => tracing::warn!(detail = describe(&e).detail, "visibility heartbeat failed"),
        }
    }

    /// Sends up to [`MAX_BATCH`] bodies in one call; returns how many SQS accepted.
    pub async fn send_batch(&self, bodies: &[String]) -> Result<usize, SourceError> {
        let entries = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .build()
                    .expect("id and body are set")
            })
            .collect();
        let output = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| self.error("SendMessageBatch", describe(&e)))?;
        for failed in output.failed() {
            tracing::warn!(
                entry = failed.id(),
                code = failed.code(),
                "SQS refused a message"
            );
        }
        Ok(output.successful().len())
    }

    fn error(&self, operation: &'static str, failure: CallFailure) -> SourceError {
        let queue = self.url.clone();
        let detail = failure.detail;
        match (failure.fault, failure.code.as_deref()) {
            (Fault::Refused, Some(code))
                if code.contains("NonExistentQueue") || code.contains("QueueDoesNotExist") =>
            {
                SourceError::NoQueue { queue, detail }
            }
            (Fault::Refused, _) => SourceError::Refused {
                operation,
                queue,
                detail,
            },
            (fault, _) => SourceError::Unavailable {
                operation,
                queue,
                fault,
                detail,
            },
        }
    }
}

impl SqsQueue {
    /// The queue's approximate depth: (visible, in flight, delayed) messages, for the metrics.
    pub async fn depth(&self) -> Result<(i64, i64, i64), SourceError> {
        use aws_sdk_sqs::types::QueueAttributeName as Name;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(Name::ApproximateNumberOfMessages)
            .attribute_names(Name::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(Name::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| self.error("GetQueueAttributes", describe(&e)))?;
        let attributes = out.attributes.unwrap_or_default();
        let count = |name: Name| {
            attributes
                .get(&name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok((
            count(Name::ApproximateNumberOfMessages),
            count(Name::ApproximateNumberOfMessagesNotVisible),
            count(Name::ApproximateNumberOfMessagesDelayed),
        ))
    }
}

impl Queue for SqsQueue {
    /// Checks that the queue exists and may be read, so a wrong `SQS_QUEUE_URL` fails at start
    /// rather than being waited out as an outage.
    async fn check(&self) -> Result<(), SourceError> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .map_err(|e| self.error("GetQueueAttributes", describe(&e)))?;
        Ok(())
    }

    /// One long poll: up to [`MAX_BATCH`] messages, waiting up to `wait_secs` for the first.
    async fn receive(&self, wait_secs: i32) -> Result<Vec<Received>, SourceError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(MAX_BATCH as i32)
            .wait_time_seconds(wait_secs)
            .set_visibility_timeout(self.visibility_secs)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| self.error("ReceiveMessage", describe(&e)))?;
        let now = Utc::now();
        Ok(output
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let sent_at = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|ms| millis(ms))
                    .unwrap_or(now);
                Some(Received {
                    message_id: m.message_id?,
                    receipt_handle: Some(m.receipt_handle?),
                    sent_at,
                    body: m.body.unwrap_or_default().into(),
                })
            })
            .collect())
    }

    /// Deletes received messages (at most [`MAX_BATCH`] handles); returns how many SQS confirmed.
    /// Entries SQS refuses are logged by message id and left to reappear.
    async fn delete_batch(&self, receipts: &[(&str, &str)]) -> Result<usize, SourceError> {
        if receipts.is_empty() {
            return Ok(0);
        }
        let entries = receipts
            .iter()
            .enumerate()
            .map(|(i, (_, handle))| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(*handle)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let output = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| self.error("DeleteMessageBatch", describe(&e)))?;
        for failed in output.failed() {
            let message_id = failed
                .id()
                .parse::<usize>()
                .ok()
                .and_then(|i| receipts.get(i));
            tracing::warn!(
                message_id = message_id.map(|r| r.0),
                code = failed.code(),
                "SQS did not delete a committed message; it will be redelivered and counted as a duplicate"
            );
        }
        Ok(output.successful().len())
    }

    /// Renews the visibility of received messages every half timeout until the returned
    /// [`Heartbeat`] is dropped, so a slow batch is not redelivered to another consumer.
    /// Without a configured visibility timeout it does nothing.
    fn keep_invisible(&self, receipt_handles: Vec<String>) -> Option<Heartbeat> {
        let secs = self.visibility_secs.filter(|s| *s > 0)?;
        let queue = self.clone();
        Some(Heartbeat(tokio::spawn(async move {
            let period = std::time::Duration::from_millis(secs as u64 * 500);
            loop {
                tokio::time::sleep(period).await;
                queue.extend_visibility(&receipt_handles, secs).await;
            }
        })))
    }
}

fn millis(text: &str) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(text.parse().ok()?).single()
}
