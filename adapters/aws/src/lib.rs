//! AWS adapters of leadpipe's ports. They hold no business rules: they move values between
//! the core's types and AWS's wire calls, and report failures as the core's error types.
//!
//! Endpoints, region and credentials come from the SDK's standard settings
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, ...), which is also how tests point them at moto.

#![warn(missing_docs)]
pub mod destinations;
pub mod dynamo;
pub mod events;
#[cfg(feature = "operator")]
pub mod export;
pub mod operate;
pub mod secrets;
pub mod sqs;
#[cfg(feature = "operator")]
pub mod stack;
pub mod stages;
#[cfg(feature = "operator")]
pub mod status;

/// The SDK clients the operator's commands hand to this crate's functions, so the `leadpipe`
/// binary names no SDK crate of its own.
pub use aws_sdk_dynamodb::Client as DynamoClient;
pub use aws_sdk_secretsmanager::Client as SecretsClient;
pub use aws_sdk_sqs::Client as SqsClient;
pub use destinations::DynamoMarks;
pub use dynamo::{DynamoCheckpointStore, DynamoFormStore, DynamoLeadStore};
pub use events::EventBridgePublisher;
pub use secrets::{SecretReloader, load_secrets};
pub use sqs::{SqsEventQueue, SqsQueueControl};
pub use stages::DynamoStages;

/// The SDK configuration from the environment, loaded once per process.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// A short, value-free description of an SDK error: its code and message from AWS, or
/// the kind of dispatch failure. Request contents never appear in these.
pub(crate) fn describe_sdk_error<E, R>(err: &aws_sdk_sqs::error::SdkError<E, R>) -> String
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_sqs::error::SdkError;
    // Missing credentials surface as a failure to send, deep in the cause chain: name them,
    // since the fix (AWS_PROFILE, or the key variables) is the person's.
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        if c.to_string().to_lowercase().contains("credential") {
            return "AWS credentials are missing or cannot be used (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and AWS_REGION)".to_owned();
        }
        cause = c.source();
    }
    match err {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            format!(
                "{}: {}",
                inner.code().unwrap_or("ServiceError"),
                inner.message().unwrap_or("no message")
            )
        }
        SdkError::TimeoutError(_) => "timed out".to_owned(),
        SdkError::DispatchFailure(failure) => {
            if failure.is_io() {
                "connection failed (a network problem?)".to_owned()
            } else if failure.is_timeout() {
                "connection timed out".to_owned()
            } else {
                "dispatch failed".to_owned()
            }
        }
        SdkError::ResponseError(_) => "unreadable response".to_owned(),
        SdkError::ConstructionFailure(_) => "request could not be built".to_owned(),
        _ => "unknown SDK error".to_owned(),
    }
}
