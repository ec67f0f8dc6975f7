//! Shared AWS SDK plumbing for the SQS and KMS clients: one configuration chain, one way to
//! describe and classify a failed call.

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

/// Loads the SDK configuration from the standard chain (`AWS_ENDPOINT_URL`, `AWS_REGION`,
/// credentials, profiles). Memoised per process: SQS and KMS share it.
///
/// The SDK's own retries are off: `etl run` retries every transient failure itself
/// ([`crate::pipeline::retry`]), and a second layer underneath would multiply attempts and hide
/// throttling from it. One-shot commands (`seed`, `reveal`, `keys`) fail at the first throttled
/// call instead, with exit 69.
pub async fn sdk_config() -> &'static aws_config::SdkConfig {
    static CONFIG: tokio::sync::OnceCell<aws_config::SdkConfig> =
        tokio::sync::OnceCell::const_new();
    CONFIG
        .get_or_init(|| {
            aws_config::defaults(BehaviorVersion::latest())
                .retry_config(RetryConfig::disabled())
                .load()
        })
        .await
}

/// Why an AWS call failed, as far as waiting can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No answer: connection refused, timeout, DNS.
    Unreachable,
    /// The service throttled the call (a request rate or in-flight limit).
    Throttled,
    /// The service failed on its side (HTTP 5xx, an internal error, a dependency timeout).
    ServerError,
    /// Any other answer: this call is refused (permission, missing resource, bad input).
    Refused,
}

impl Fault {
    /// True when the same call may succeed later unchanged.
    pub fn is_transient(self) -> bool {
        !matches!(self, Fault::Refused)
    }

    /// What happened, after the service's name ("SQS is unreachable").
    pub fn what(self) -> &'static str {
        match self {
            Fault::Unreachable => "is unreachable",
            Fault::Throttled => "is throttling requests",
            Fault::ServerError => "failed on its side",
            Fault::Refused => "refused the call",
        }
    }
}

/// Error codes the services use for throttling: the SDK's own list
/// (`aws_runtime::retries::classifiers::THROTTLING_ERRORS`), plus SQS's `OverLimit` (too many
/// messages in flight) and `KMS.ThrottlingException` (an encrypted queue's KMS key throttled).
const THROTTLED: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
    "OverLimit",
    "KMS.ThrottlingException",
];

/// Error codes of failures on the service's side that say "retry": generic AWS ones, and KMS's
/// (`KeyUnavailableException`: "the key is not available; you can retry").
const SERVER_ERRORS: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "KMSInternalException",
    "DependencyTimeoutException",
    "KeyUnavailableException",
];

/// Classifies an answer by its error code and HTTP status; the code decides when it is known.
pub fn classify(code: Option<&str>, status: Option<u16>) -> Fault {
    match (code, status) {
        (Some(code), _) if THROTTLED.contains(&code) => Fault::Throttled,
        (Some(code), _) if SERVER_ERRORS.contains(&code) => Fault::ServerError,
        (_, Some(429)) => Fault::Throttled,
        (_, Some(500..=599)) => Fault::ServerError,
        _ => Fault::Refused,
    }
}

/// A failed AWS call, reduced to what the user can act on. Never carries request payloads.
#[derive(Debug, Clone)]
pub struct CallFailure {
    /// Why it failed.
    pub fault: Fault,
    /// The service's error code (`AccessDeniedException`, …), if it answered.
    pub code: Option<String>,
    /// Short description: error code and message (and HTTP status), or the transport failure.
    pub detail: String,
}

/// Classifies an SDK error ([`classify`]), with a one-line detail.
pub fn describe<E>(error: &SdkError<E, HttpResponse>) -> CallFailure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let context = || one_line(&aws_sdk_sqs::error::DisplayErrorContext(error).to_string());
    match error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => CallFailure {
            fault: Fault::Unreachable,
            code: None,
            detail: context(),
        },
        SdkError::ServiceError(service) => {
            let err = service.err();
            let status = service.raw().status().as_u16();
            let code = err.code().map(str::to_owned);
            let detail = match (err.code(), err.message()) {
                (Some(code), Some(message)) => format!("{code}: {message} (HTTP {status})"),
                (Some(code), None) => format!("{code} (HTTP {status})"),
                _ => format!("{} (HTTP {status})", context()),
            };
            CallFailure {
                fault: classify(code.as_deref(), Some(status)),
                code,
                detail,
            }
        }
        // An answer the SDK could not parse (a proxy's error page): its status still tells.
        SdkError::ResponseError(response) => {
            let status = response.raw().status().as_u16();
            CallFailure {
                fault: classify(None, Some(status)),
                code: None,
                detail: format!("{} (HTTP {status})", context()),
            }
        }
        other => CallFailure {
            fault: Fault::Refused,
            code: None,
            detail: one_line(&aws_sdk_sqs::error::DisplayErrorContext(other).to_string()),
        },
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sdk_makes_one_attempt_per_call() {
        let retry = sdk_config().await.retry_config().expect("set");
        assert_eq!(retry.max_attempts(), 1, "our retry layer is the only one");
    }

    #[test]
    fn sqs_throttling_codes_are_throttled() {
        for code in [
            "RequestThrottled",
            "ThrottlingException",
            "OverLimit",
            "KMS.ThrottlingException",
        ] {
            assert_eq!(classify(Some(code), Some(400)), Fault::Throttled, "{code}");
        }
    }

    #[test]
    fn kms_throttling_and_internal_codes_are_transient() {
        assert_eq!(
            classify(Some("ThrottlingException"), Some(400)),
            Fault::Throttled
        );
        assert_eq!(
            classify(Some("LimitExceededException"), Some(400)),
            Fault::Throttled
        );
        for code in [
            "KMSInternalException",
            "DependencyTimeoutException",
            "KeyUnavailableException",
        ] {
            assert_eq!(
                classify(Some(code), Some(500)),
                Fault::ServerError,
                "{code}"
            );
        }
    }

    #[test]
    fn any_5xx_is_a_server_error_and_429_is_throttling() {
        assert_eq!(
            classify(Some("InternalError"), Some(500)),
            Fault::ServerError
        );
        assert_eq!(
            classify(Some("ServiceUnavailable"), Some(503)),
            Fault::ServerError
        );
        for status in [500, 502, 503, 504, 599] {
            assert_eq!(classify(None, Some(status)), Fault::ServerError, "{status}");
            assert_eq!(
                classify(Some("SomethingNew"), Some(status)),
                Fault::ServerError,
                "{status}"
            );
        }
        assert_eq!(classify(None, Some(429)), Fault::Throttled);
    }

    #[test]
    fn refusals_are_not_transient() {
        for code in [
            "AccessDeniedException",
            "AWS.SimpleQueueService.NonExistentQueue",
            "QueueDoesNotExist",
            "DisabledException",
            "NotFoundException",
            "KMSInvalidStateException",
            "InvalidCiphertextException",
        ] {
            let fault = classify(Some(code), Some(400));
            assert_eq!(fault, Fault::Refused, "{code}");
            assert!(!fault.is_transient());
        }
        assert!(!classify(None, Some(403)).is_transient());
        assert!(!classify(None, None).is_transient());
        assert!(Fault::Unreachable.is_transient());
    }
}
