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
    /// Keys the lookup hashes of email and phone (`crate::privacy`); `connect` makes one.
    #[serde(default)]
    pub lookup_key: Option<SecretString>,
    /// Writes stages to the Conversions API dataset (docs/stages.md); `connect --dataset`
    /// stores it.
    #[serde(default)]
    pub conversions_token: Option<SecretString>,
    /// Keys a CRM's `POST /stages` must carry in `X-Leadpipe-Key`; two at once while one is
    /// rotated.
    #[serde(default)]
    pub stage_keys: Vec<SecretString>,
    /// Each destination's credentials by its name (docs/destinations.md): `token`,
    /// `client_id` + `client_secret`, `webhook_url` or `key`, by kind.
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationSecret>,
    /// The destinations file's text (TOML), for the stack's destinations function: kept in
    /// the secret beside the credentials so no template parameter holds either.
    #[serde(default)]
    pub destinations_file: Option<String>,
}

/// One destination's credentials; `Debug` shows none.
#[derive(Clone, Default, serde::Deserialize)]
pub struct DestinationSecret {
    /// HubSpot's Service Key or private app token; Pipedrive's API token.
    #[serde(default)]
    pub token: Option<SecretString>,
    /// Salesforce's External Client App consumer key.
    #[serde(default)]
    pub client_id: Option<SecretString>,
    /// Its consumer secret.
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    /// Slack's incoming webhook URL (the URL is the credential).
    #[serde(default)]
    pub webhook_url: Option<SecretString>,
    /// The webhook destination's signing key.
    #[serde(default)]
    pub key: Option<SecretString>,
}

impl std::fmt::Debug for DestinationSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<SecretString>| v.is_some();
        f.debug_struct("DestinationSecret")
            .field("token", &set(&self.token))
            .field("client_id", &set(&self.client_id))
            .field("client_secret", &set(&self.client_secret))
            .field("webhook_url", &set(&self.webhook_url))
            .field("key", &set(&self.key))
            .finish()
    }
}

impl DestinationSecret {
    /// The credential named `key` (`token`, `client_id`, ...), when it is set and not
    /// empty.
    pub fn get(&self, key: &str) -> Option<&SecretString> {
        use secrecy::ExposeSecret;
        match key {
            "token" => self.token.as_ref(),
            "client_id" => self.client_id.as_ref(),
            "client_secret" => self.client_secret.as_ref(),
            "webhook_url" => self.webhook_url.as_ref(),
            "key" => self.key.as_ref(),
            _ => None,
        }
        .filter(|s| !s.expose_secret().is_empty())
    }
}

/// Why the secrets could not be read. Never carries a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The secret is not JSON of the expected shape.
    #[error("the secret is not JSON of the expected shape ({0})")]
    Shape(crate::json_error::JsonError),
    /// A value this binary needs is absent.
    #[error("the secret has no {0}")]
    Missing(&'static str),
    /// The secret could not be read from where it lives.
    #[error("the secret could not be fetched: {0}")]
    Fetch(String),
}

impl AppSecrets {
    /// Parses the Secrets Manager JSON. Empty values count as absent: the template creates
    /// the secret with `"app_secret": ""`, and a webhook checking signatures with an empty
    /// key would accept posts anyone can sign, so an empty app secret is refused outright.
    pub fn from_json(json: &str) -> Result<Self, SecretsError> {
        use secrecy::ExposeSecret;
        let mut secrets: Self =
            serde_json::from_str(json).map_err(|e| SecretsError::Shape(e.into()))?;
        if secrets.app_secret.expose_secret().is_empty() {
            return Err(SecretsError::Missing(
                "app_secret (it is empty: set it, e.g. with `leadpipe connect`)",
            ));
        }
        let present =
            |v: &Option<SecretString>| v.as_ref().is_some_and(|s| !s.expose_secret().is_empty());
        if !present(&secrets.verify_token) {
            secrets.verify_token = None;
        }
        if !present(&secrets.access_token) {
            secrets.access_token = None;
        }
        if !present(&secrets.lookup_key) {
            secrets.lookup_key = None;
        }
        if !present(&secrets.conversions_token) {
            secrets.conversions_token = None;
        }
        secrets
            .stage_keys
            .retain(|key| !key.expose_secret().is_empty());
        secrets
            .page_tokens
            .retain(|_, token| !token.expose_secret().is_empty());
        Ok(secrets)
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
    fn empty_values_are_absent_and_an_empty_app_secret_is_refused() {
        // The secret as the template creates it, before anyone set it.
        let err = AppSecrets::from_json(
            r#"{"app_secret":"","access_token":"","page_tokens":{},"verify_token":"generated"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("app_secret"), "{err}");
        let secrets = AppSecrets::from_json(
            r#"{"app_secret":"s","access_token":"","verify_token":"","page_tokens":{"1":"","2":"t"}}"#,
        )
        .unwrap();
        assert!(secrets.access_token.is_none() && secrets.verify_token.is_none());
        assert_eq!(secrets.page_tokens.len(), 1);
        assert!(secrets.token_for_page("1").is_none());
    }

    #[test]
    fn shape_errors_do_not_echo_the_secret() {
        let err = AppSecrets::from_json(r#"{"app_secret": 12345678}"#).unwrap_err();
        assert!(!err.to_string().contains("12345678"), "{err}");
        let err = AppSecrets::from_json(r#"{"verify_token":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("expected shape"), "{err}");
    }
}
