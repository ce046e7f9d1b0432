//! The app's secrets, as stored in Secrets Manager (`SECRET_ARN`) or, locally, in env vars.
//!
//! Every value is a [`SecretString`], whose `Debug` prints `[REDACTED]`, so a secret cannot
//! reach a log line by accident.

use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `{"app_secret","verify_token","access_token","page_tokens":{"<page_id>":"<token>"}}`.
///
/// Unknown keys are ignored so that an operator may keep notes in the same secret.
#[derive(Debug, Clone, Deserialize)]
pub struct AppSecrets {
    /// Signs webhook posts and keys `appsecret_proof`.
    pub app_secret: SecretString,
    /// The webhook verification token (the webhook function needs it).
    #[serde(default)]
    pub verify_token: Option<SecretString>,
    /// The token for pages without one of their own.
    #[serde(default)]
    pub access_token: Option<SecretString>,
    /// Each page's own token.
    #[serde(default)]
    pub page_tokens: BTreeMap<String, SecretString>,
}

/// Why the secrets could not be read. Never carries a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The secret is not JSON of the expected shape.
    #[error("the secret is not JSON of the expected shape ({0})")]
    Shape(crate::webhook::JsonError),
    /// A value this binary needs is absent.
    #[error("the secret has no {0}")]
    Missing(&'static str),
    /// The secret could not be read from where it lives.
    #[error("the secret could not be fetched: {0}")]
    Fetch(String),
}

impl AppSecrets {
    /// Parses the Secrets Manager JSON.
    pub fn from_json(json: &str) -> Result<Self, SecretsError> {
        serde_json::from_str(json).map_err(|e| SecretsError::Shape(e.into()))
    }

    /// The verify token, or an error naming what the secret lacks.
    pub fn require_verify_token(&self) -> Result<&SecretString, SecretsError> {
        self.verify_token
            .as_ref()
            .ok_or(SecretsError::Missing("verify_token"))
    }
}

impl AppSecrets {
    /// The token to read a page's leads with: the page's own token when the secret has one,
    /// else the general `access_token`.
    pub fn token_for_page(&self, page_id: &str) -> Option<&SecretString> {
        self.page_tokens.get(page_id).or(self.access_token.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn parses_the_contract_and_redacts_debug() {
        let secrets = AppSecrets::from_json(
            r#"{"app_secret":"s3cr3t-app","verify_token":"vt-123","access_token":"EAAtoken",
               "page_tokens":{"111":"EAApage"},"note":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(secrets.app_secret.expose_secret(), "s3cr3t-app");
        assert_eq!(
            secrets.require_verify_token().unwrap().expose_secret(),
            "vt-123"
        );
        assert_eq!(secrets.page_tokens["111"].expose_secret(), "EAApage");
        let debug = format!("{secrets:?}");
        for value in ["s3cr3t-app", "vt-123", "EAAtoken", "EAApage"] {
            assert!(!debug.contains(value), "{debug}");
        }
    }

    #[test]
    fn shape_errors_do_not_echo_the_secret() {
        let err = AppSecrets::from_json(r#"{"app_secret": 12345678}"#).unwrap_err();
        assert!(!err.to_string().contains("12345678"), "{err}");
        let err = AppSecrets::from_json(r#"{"verify_token":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("expected shape"), "{err}");
    }
}
