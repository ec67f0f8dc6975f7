//! Shared AWS SDK plumbing for the SQS and KMS clients: one configuration chain, one way to
//! describe and classify a failed call.

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

use crate::error::classify::{Fault, classify};

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

/// Classifies an SDK error ([`crate::error::classify::classify`]), with a one-line detail.
pub fn describe<E>(error: &SdkError<E, HttpResponse>) -> CallFailure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    // The chain of causes, each by its Display: the SDK's own context adds a Debug dump of
    // every layer, which tells an operator nothing more.
    let context = || {
        let mut parts = vec![error.to_string()];
        let mut cause = std::error::Error::source(error);
        while let Some(e) = cause {
            let text = e.to_string();
            if !parts.iter().any(|p| p.contains(&text)) {
                parts.push(text);
            }
            cause = e.source();
        }
        one_line(&parts.join(": "))
    };
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
}
