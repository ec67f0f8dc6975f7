//! Where messages come from: an SQS queue ([`sqs`]) or a file for backfills ([`file`]); an
//! in-memory model of SQS ([`modelled`]) for the flow's tests and the benchmarks.

pub mod file;
pub mod modelled;
pub mod sqs;

use std::future::Future;

use std::borrow::Cow;

use chrono::{DateTime, Utc};

use crate::error::classify::Fault;
use crate::event::Rejection;

/// A queue `etl run` consumes: SQS ([`sqs::SqsQueue`]), or in tests and benchmarks a model of it
/// ([`modelled::ModelledQueue`]).
pub trait Queue: Clone + Send + Sync + 'static {
    /// Checks that the queue exists and may be read (a missing queue is a configuration error).
    fn check(&self) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// One receive of up to ten messages, waiting up to `wait_secs` for the first.
    fn receive(
        &self,
        wait_secs: i32,
    ) -> impl Future<Output = Result<Vec<Received>, SourceError>> + Send;

    /// Deletes committed messages, given as (message id, receipt handle), at most ten; returns
    /// how many the queue confirmed.
    fn delete_batch(
        &self,
        receipts: &[(&str, &str)],
    ) -> impl Future<Output = Result<usize, SourceError>> + Send;

    /// Keeps received messages invisible until the returned guard is dropped.
    fn keep_invisible(&self, receipt_handles: Vec<String>) -> Option<Heartbeat>;
}

/// Keeps a batch's messages invisible while it is processed; stops when dropped.
pub struct Heartbeat(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One message as received, before decoding. The body may hold PII: never log it.
pub struct Received {
    /// SQS `MessageId`, or an id derived from the file's content; the idempotency key.
    pub message_id: String,
    /// SQS receipt handle for the delete; `None` for file input.
    pub receipt_handle: Option<String>,
    /// When the producer sent it (SQS `SentTimestamp`); `create_date` is its UTC date.
    pub sent_at: DateTime<Utc>,
    /// The raw body.
    pub body: Body,
}

/// A message body as received. SQS bodies are always text; a backfill line may not be.
pub enum Body {
    /// Text, to be decoded.
    Text(String),
    /// Bytes that cannot be a body (invalid UTF-8, a line over the size limit): quarantined as
    /// they are, with the rejection as the reason.
    Unreadable {
        /// What is sealed: the bytes, or for an oversized line the first ones.
        bytes: Vec<u8>,
        /// Why it was not decoded; free of PII.
        rejection: Rejection,
    },
}

impl Body {
    /// Raw bytes as stored for a replay: text when they are UTF-8, unreadable otherwise.
    pub fn from_bytes(bytes: Vec<u8>) -> Body {
        match String::from_utf8(bytes) {
            Ok(text) => Body::Text(text),
            Err(e) => Body::Unreadable {
                bytes: e.into_bytes(),
                rejection: Rejection::NotUtf8,
            },
        }
    }

    /// The bytes to seal.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Text(text) => text.as_bytes(),
            Body::Unreadable { bytes, .. } => bytes,
        }
    }

    /// The body as text, invalid UTF-8 replaced, for the lenient user-id scan.
    pub fn text_lossy(&self) -> Cow<'_, str> {
        match self {
            Body::Text(text) => Cow::Borrowed(text),
            Body::Unreadable { bytes, .. } => String::from_utf8_lossy(bytes),
        }
    }
}

impl From<String> for Body {
    fn from(text: String) -> Body {
        Body::Text(text)
    }
}

impl From<&str> for Body {
    fn from(text: &str) -> Body {
        Body::Text(text.to_owned())
    }
}

/// Failures receiving, deleting or reading input. Never carries message bodies.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// SQS could not be reached, throttled the call or failed on its side: a failure that may
    /// pass, which a running `etl run` waits out.
    #[error(
        "SQS {} ({operation} on {queue}): {detail}.\n{}",
        fault.what(),
        sqs_advice(*fault)
    )]
    Unavailable {
        operation: &'static str,
        queue: String,
        /// Unreachable, throttled or a server error (never [`Fault::Refused`]).
        fault: Fault,
        detail: String,
    },
    /// The queue does not exist.
    #[error(
        "the SQS queue {queue} does not exist ({detail}).\nCheck SQS_QUEUE_URL (and AWS_REGION)."
    )]
    NoQueue { queue: String, detail: String },
    /// SQS refused the call.
    #[error(
        "SQS refused {operation} on {queue}: {detail}.\nCheck that this identity may call sqs:{operation} on the queue."
    )]
    Refused {
        operation: &'static str,
        queue: String,
        detail: String,
    },
    /// The input file cannot be read.
    #[error(
        "cannot read the input file {path}: {source}.\nCheck the path, its permissions and (when gzipped) that the file is whole; a rerun loads only what is not loaded yet."
    )]
    FileRead {
        path: String,
        source: std::io::Error,
    },
    /// The input file is neither a JSON array nor JSON lines.
    #[error(
        "the input file {path} is not a JSON array of message bodies ({detail}).\nGive a JSON array, or one JSON body per line."
    )]
    FileFormat { path: String, detail: String },
}

/// What to do about an SQS failure that may pass.
fn sqs_advice(fault: Fault) -> &'static str {
    match fault {
        Fault::Throttled => {
            "Lower --concurrency or the number of consumers, or ask AWS for a higher quota; retry later."
        }
        Fault::ServerError => {
            "The fault is on SQS's side (see the AWS Health Dashboard); retry later."
        }
        Fault::Unreachable | Fault::Refused => {
            "Check SQS_QUEUE_URL, AWS_ENDPOINT_URL / AWS_REGION and the network, then retry."
        }
    }
}
