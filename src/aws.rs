//! Shared AWS SDK plumbing for the SQS and KMS clients: one configuration chain, one way to
//! describe a failed call.

use aws_config::BehaviorVersion;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

/// Loads the SDK configuration from the standard chain (`AWS_ENDPOINT_URL`, `AWS_REGION`,
/// credentials, profiles). Memoised per process: SQS and KMS share it.
pub async fn sdk_config() -> &'static aws_config::SdkConfig {
    static CONFIG: tokio::sync::OnceCell<aws_config::SdkConfig> =
        tokio::sync::OnceCell::const_new();
    CONFIG
        .get_or_init(|| aws_config::defaults(BehaviorVersion::latest()).load())
        .await
}

/// A failed AWS call, reduced to what the user can act on. Never carries request payloads.
#[derive(Debug, Clone)]
pub struct CallFailure {
    /// True when the service could not be reached (connection refused, timeout, DNS).
    pub unreachable: bool,
    /// The service's error code (`AccessDeniedException`, …), if it answered.
    pub code: Option<String>,
    /// Short description: error code and message, or the transport failure.
    pub detail: String,
}

/// Classifies an SDK error as unreachable or refused, with a one-line detail.
pub fn describe<E, R>(error: &SdkError<E, R>) -> CallFailure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => CallFailure {
            unreachable: true,
            code: None,
            detail: one_line(&aws_sdk_sqs::error::DisplayErrorContext(error).to_string()),
        },
        SdkError::ServiceError(service) => {
            let err = service.err();
            let code = err.code().map(str::to_owned);
            let detail = match (err.code(), err.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_owned(),
                _ => one_line(&aws_sdk_sqs::error::DisplayErrorContext(error).to_string()),
            };
            CallFailure {
                unreachable: false,
                code,
                detail,
            }
        }
        other => CallFailure {
            unreachable: false,
            code: None,
            detail: one_line(&aws_sdk_sqs::error::DisplayErrorContext(other).to_string()),
        },
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
