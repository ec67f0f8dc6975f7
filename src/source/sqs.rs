//! The SQS queue: long-poll receive, batch delete after commit, and batch send (for `etl seed`).
//!
//! Every call is bounded by a timeout of its own ([`CALL_TIMEOUT`], plus the long-poll wait for a
//! receive) instead of the SDK's stalled-stream protection. SQS requests and answers are a few
//! KiB, so a throughput floor adds nothing a deadline does not, and it costs a timer that wakes
//! each call in flight every 100 ms: most of this client's CPU while moto is slow, and every
//! long poll woke 200 times for nothing. A call that times out is an SDK `TimeoutError`, which
//! `describe` classifies as unreachable: the flow retries it like any outage (`--max-outage-secs`).

use std::time::Duration;

use aws_sdk_sqs::config::StalledStreamProtectionConfig;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
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

/// How long one SQS call may take, connection included, before it fails as unreachable (and is
/// retried). A receive gets its long-poll wait on top, so a 20 s poll is never cut short.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long opening a connection may take (the SDK's default).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(3_100);

/// The timeouts of a call that may wait `wait` for its answer. Connect timeout always the same:
/// the HTTP client keeps one connection pool per connect timeout.
fn call_timeouts(call: Duration, wait: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(call + wait)
        .operation_timeout(call + wait)
        .build()
}

/// An SQS client configuration with this module's bounds in place of stalled-stream protection.
pub fn bounded(builder: aws_sdk_sqs::config::Builder, call: Duration) -> aws_sdk_sqs::Config {
    builder
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
        .timeout_config(call_timeouts(call, Duration::ZERO))
        .build()
}

/// One queue and a client for it.
#[derive(Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    visibility_secs: Option<i32>,
    /// [`CALL_TIMEOUT`], shorter in tests.
    call_timeout: Duration,
}

impl SqsQueue {
    /// A client for the queue at `url`, configured by the SDK's standard chain, each call
    /// bounded by [`CALL_TIMEOUT`] (plus the wait of a long poll).
    pub async fn new(url: String) -> SqsQueue {
        let sdk = crate::aws::sdk_config().await;
        let config = bounded(aws_sdk_sqs::config::Builder::from(sdk), CALL_TIMEOUT);
        SqsQueue::with_client(aws_sdk_sqs::Client::from_conf(config), url)
    }

    /// Receives with this visibility timeout (instead of the queue's default), which the
    /// heartbeat then renews.
    pub fn with_visibility(mut self, secs: i32) -> SqsQueue {
        self.visibility_secs = Some(secs);
        self
    }

    /// A queue reached through a client the caller configured (see [`bounded`]).
    pub fn with_client(client: aws_sdk_sqs::Client, url: String) -> SqsQueue {
        let call_timeout = client
            .config()
            .timeout_config()
            .and_then(TimeoutConfig::operation_attempt_timeout)
            .unwrap_or(CALL_TIMEOUT);
        SqsQueue {
            client,
            url,
            visibility_secs: None,
            call_timeout,
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
            .customize()
            .config_override(
                aws_sdk_sqs::config::Builder::default().timeout_config(call_timeouts(
                    self.call_timeout,
                    Duration::from_secs(wait_secs.max(0) as u64),
                )),
            )
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use aws_sdk_sqs::config::retry::RetryConfig;
    use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A queue on a local server, with calls bounded by `call`.
    fn queue_at(address: std::net::SocketAddr, call: Duration) -> SqsQueue {
        let builder = aws_sdk_sqs::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(format!("http://{address}"))
            .retry_config(RetryConfig::disabled());
        let client = aws_sdk_sqs::Client::from_conf(bounded(builder, call));
        SqsQueue::with_client(client, format!("http://{address}/123456789012/q"))
    }

    /// A server that accepts connections, reads each request and answers `{}` after `delay`;
    /// `None`: never answers.
    async fn server(delay: Option<Duration>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                tokio::spawn(answer(socket, delay));
            }
        });
        address
    }

    async fn answer(mut socket: TcpStream, delay: Option<Duration>) {
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let n = socket.read(&mut buffer).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            request.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&request);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if request.len() >= end + 4 + length {
                    break;
                }
            }
        }
        let Some(delay) = delay else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::time::sleep(delay).await;
        let body = "{}";
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = socket.write_all(response.as_bytes()).await;
        std::future::pending::<()>().await;
    }

    fn is_unreachable<T>(result: &Result<T, SourceError>) -> bool {
        matches!(
            result,
            Err(SourceError::Unavailable {
                fault: Fault::Unreachable,
                ..
            })
        )
    }

    #[tokio::test]
    async fn a_silent_sqs_fails_each_call_after_its_bound_instead_of_hanging() {
        let queue = queue_at(server(None).await, Duration::from_millis(500));
        let started = Instant::now();
        let received = queue.receive(1).await;
        let waited = started.elapsed();
        assert!(is_unreachable(&received), "{:?}", received.as_ref().err());
        assert!(
            waited >= Duration::from_millis(1_400) && waited < Duration::from_secs(4),
            "the long-poll wait (1 s) plus the call timeout (0.5 s): {waited:?}"
        );
        let started = Instant::now();
        let deleted = queue.delete_batch(&[("m", "h")]).await;
        let waited = started.elapsed();
        assert!(is_unreachable(&deleted), "{:?}", deleted.as_ref().err());
        assert!(
            waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
            "the call timeout alone: {waited:?}"
        );
    }

    #[tokio::test]
    async fn a_long_poll_is_not_cut_short_by_the_call_timeout() {
        // The answer comes after 1.5 s: within a 2 s poll's bound (2 s + 1 s), beyond a
        // delete's (1 s).
        let queue = queue_at(
            server(Some(Duration::from_millis(1_500))).await,
            Duration::from_secs(1),
        );
        let received = queue.receive(2).await;
        assert!(
            received.as_ref().is_ok_and(Vec::is_empty),
            "{:?}",
            received.as_ref().err()
        );
        let deleted = queue.delete_batch(&[("m", "h")]).await;
        assert!(is_unreachable(&deleted), "{:?}", deleted.as_ref().err());
    }

    #[test]
    fn stalled_stream_protection_is_off_and_calls_are_bounded() {
        let builder = aws_sdk_sqs::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"));
        let config = bounded(builder, CALL_TIMEOUT);
        assert!(!config.stalled_stream_protection().unwrap().is_enabled());
        let timeouts = config.timeout_config().unwrap();
        assert_eq!(timeouts.operation_attempt_timeout(), Some(CALL_TIMEOUT));
        assert_eq!(timeouts.connect_timeout(), Some(CONNECT_TIMEOUT));
    }
}
