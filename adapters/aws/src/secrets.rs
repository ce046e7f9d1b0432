//! Loading [`AppSecrets`] from Secrets Manager, once per container.

use crate::describe_sdk_error;
use leadpipe_core::secrets::{AppSecrets, SecretsError};
use leadpipe_core::settings::SecretSource;

/// Resolves a [`SecretSource`]: fetches the secret by ARN, or returns the inline values.
///
/// Call it once at start and keep the result: a Lambda container then reads the secret
/// once for its whole life, and a rotation is picked up by new containers.
pub async fn load_secrets(
    config: &aws_config::SdkConfig,
    source: &SecretSource,
) -> Result<AppSecrets, SecretsError> {
    match source {
        SecretSource::Inline(secrets) => Ok(secrets.clone()),
        SecretSource::SecretsManager { arn } => {
            let client = aws_sdk_secretsmanager::Client::new(config);
            let output = client
                .get_secret_value()
                .secret_id(arn)
                .send()
                .await
                .map_err(|e| SecretsError::Fetch(describe_sdk_error(&e)))?;
            let json = output.secret_string().ok_or(SecretsError::Missing(
                "SecretString (binary secrets are not supported)",
            ))?;
            AppSecrets::from_json(json)
        }
    }
}

/// The secret's JSON as it is stored, for a command that rewrites it (`leadpipe connect`):
/// keys this binary does not know are kept by the caller. `Ok(None)` when it has no
/// string value yet.
pub async fn read_secret_string(
    client: &aws_sdk_secretsmanager::Client,
    arn: &str,
) -> Result<Option<String>, SecretsError> {
    match client.get_secret_value().secret_id(arn).send().await {
        Ok(output) => Ok(output.secret_string().map(str::to_owned)),
        Err(e) => Err(SecretsError::Fetch(describe_sdk_error(&e))),
    }
}

/// The secret's current version id (`DescribeSecret`: the version staged `AWSCURRENT`), to
/// tell whether someone wrote it between a read and a write.
pub async fn current_version(
    client: &aws_sdk_secretsmanager::Client,
    arn: &str,
) -> Result<Option<String>, SecretsError> {
    let output = client
        .describe_secret()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| SecretsError::Fetch(describe_sdk_error(&e)))?;
    Ok(output.version_ids_to_stages().and_then(|versions| {
        versions
            .iter()
            .find(|(_, stages)| stages.iter().any(|s| s == "AWSCURRENT"))
            .map(|(id, _)| id.clone())
    }))
}

/// Writes a new version of the secret (`PutSecretValue`); the functions' next cold start
/// reads it.
pub async fn put_secret_string(
    client: &aws_sdk_secretsmanager::Client,
    arn: &str,
    json: &str,
) -> Result<(), SecretsError> {
    client
        .put_secret_value()
        .secret_id(arn)
        .secret_string(json)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| SecretsError::Fetch(describe_sdk_error(&e)))
}

/// The secret read again where it lives, for core's token re-read
/// (`leadpipe_core::tokens`): Secrets Manager's current version, or the inline stand-ins as
/// they were.
#[derive(Debug)]
pub struct SecretReloader {
    client: aws_sdk_secretsmanager::Client,
    source: SecretSource,
    /// Ask Secrets Manager whether the current version changed (`DescribeSecret`) when the
    /// minute between reads has not passed, so a token `connect` just wrote is used at once.
    watch_version: bool,
    seen_version: std::sync::Mutex<Option<String>>,
}

impl SecretReloader {
    /// Reads `source` with clients from `config`, at most once a minute (core's rule).
    pub fn new(config: &aws_config::SdkConfig, source: SecretSource) -> Self {
        Self {
            client: aws_sdk_secretsmanager::Client::new(config),
            source,
            watch_version: false,
            seen_version: std::sync::Mutex::new(None),
        }
    }

    /// The same, also reading at once when the secret's current version is new (one
    /// `DescribeSecret` per refused batch within the minute).
    pub fn watching_versions(config: &aws_config::SdkConfig, source: SecretSource) -> Self {
        Self {
            watch_version: true,
            ..Self::new(config, source)
        }
    }
}

impl leadpipe_core::tokens::SecretsLoader for SecretReloader {
    async fn load(&self) -> Result<AppSecrets, SecretsError> {
        match &self.source {
            SecretSource::Inline(secrets) => Ok(secrets.clone()),
            SecretSource::SecretsManager { arn } => {
                let output = self
                    .client
                    .get_secret_value()
                    .secret_id(arn)
                    .send()
                    .await
                    .map_err(|e| SecretsError::Fetch(describe_sdk_error(&e)))?;
                let json = output.secret_string().ok_or(SecretsError::Missing(
                    "SecretString (binary secrets are not supported)",
                ))?;
                let secrets = AppSecrets::from_json(json)?;
                if let Ok(mut seen) = self.seen_version.lock() {
                    *seen = output.version_id().map(str::to_owned);
                }
                Ok(secrets)
            }
        }
    }

    async fn changed(&self) -> bool {
        let SecretSource::SecretsManager { arn } = &self.source else {
            return false;
        };
        if !self.watch_version {
            return false;
        }
        let seen = self.seen_version.lock().ok().and_then(|s| s.clone());
        match current_version(&self.client, arn).await {
            Ok(Some(now)) => seen.is_none_or(|seen| seen != now),
            _ => false,
        }
    }
}
