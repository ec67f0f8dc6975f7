//! The SQS queue: long-poll receive, batch delete after commit, and batch send (for `etl seed`).

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use chrono::{DateTime, TimeZone, Utc};

use super::{Received, SourceError};
use crate::aws::{CallFailure, describe};

/// Most messages one receive, delete or send call carries (an SQS limit).
pub const MAX_BATCH: usize = 10;

/// One queue and a client for it.
#[derive(Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    /// A client for the queue at `url`, configured by the SDK's standard chain.
    pub async fn new(url: String) -> SqsQueue {
        let client = aws_sdk_sqs::Client::new(crate::aws::sdk_config().await);
        SqsQueue { client, url }
    }

    /// A queue reached through a client the caller configured.
    pub fn with_client(client: aws_sdk_sqs::Client, url: String) -> SqsQueue {
        SqsQueue { client, url }
    }

    /// The queue URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One long poll: up to [`MAX_BATCH`] messages, waiting up to `wait_secs` for the first.
    pub async fn receive(&self, wait_secs: i32) -> Result<Vec<Received>, SourceError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(MAX_BATCH as i32)
            .wait_time_seconds(wait_secs)
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
                    body: m.body.unwrap_or_default(),
                })
            })
            .collect())
    }

    /// Deletes received messages (at most [`MAX_BATCH`] handles); returns how many SQS confirmed.
    /// Entries SQS refuses are logged by message id and left to reappear.
    pub async fn delete_batch(&self, receipts: &[(&str, &str)]) -> Result<usize, SourceError> {
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
        match failure.code.as_deref() {
            _ if failure.unreachable => SourceError::Unavailable {
                operation,
                queue,
                detail,
            },
            Some(code)
                if code.contains("NonExistentQueue") || code.contains("QueueDoesNotExist") =>
            {
                SourceError::NoQueue { queue, detail }
            }
            _ => SourceError::Refused {
                operation,
                queue,
                detail,
            },
        }
    }
}

fn millis(text: &str) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(text.parse().ok()?).single()
}
