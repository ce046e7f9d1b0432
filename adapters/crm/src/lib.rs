//! leadpipe's destinations over HTTPS (docs/destinations.md): each service as core's
//! [`Destination`] port, built from a destination's settings and its credentials. The
//! facts each adapter follows (paths, auth, limits, how a repeat stays one record) are in
//! `../shared/reference/crm-apis.md` and docs/destinations.md. An adapter never fails
//! whole: a lead it could not try is `Retry`; what a service says is kept for the reason
//! (core scrubs the lead's values out of it); no credential reaches a message.

#![warn(missing_docs)]

mod http;
pub mod hubspot;
pub mod pipedrive;
pub mod salesforce;
pub mod slack;
pub mod webhook;

use leadpipe_core::destinations::{
    Destination, DestinationConfig, DestinationKind, MappedLead, Outcome,
};
use leadpipe_core::secrets::DestinationSecret;

/// Why a destination cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The secret lacks a credential the kind needs.
    #[error("destination {name}: the secret has no destinations.{name}.{key}")]
    Credential {
        /// The destination.
        name: String,
        /// The missing key.
        key: &'static str,
    },
    /// A setting is unusable (a URL).
    #[error("destination {name}: {what}")]
    Setting {
        /// The destination.
        name: String,
        /// What is wrong.
        what: String,
    },
}

/// Any one of the services, built from its settings.
pub enum AnyDestination {
    /// HubSpot.
    Hubspot(hubspot::HubSpot),
    /// Salesforce.
    Salesforce(salesforce::Salesforce),
    /// Pipedrive.
    Pipedrive(pipedrive::Pipedrive),
    /// Slack.
    Slack(slack::Slack),
    /// A signed POST to the business's own receiver.
    Webhook(webhook::Webhook),
}

impl AnyDestination {
    /// The destination `config` names, with its credentials from `secret`.
    pub fn build(
        config: &DestinationConfig,
        secret: Option<&DestinationSecret>,
    ) -> Result<Self, BuildError> {
        let name = config.name.to_string();
        let credential = |key: &'static str| {
            secret
                .and_then(|s| s.get(key))
                .cloned()
                .ok_or(BuildError::Credential {
                    name: name.clone(),
                    key,
                })
        };
        let url = |text: &str| {
            url::Url::parse(text).map_err(|e| BuildError::Setting {
                name: name.clone(),
                what: format!("{text:?} is not a URL: {e}"),
            })
        };
        let http = http::client();
        Ok(match config.kind {
            DestinationKind::Hubspot => Self::Hubspot(hubspot::HubSpot {
                http,
                base: url(config.base_url.as_deref().unwrap_or(hubspot::BASE))?,
                token: credential("token")?,
            }),
            DestinationKind::Salesforce => Self::Salesforce(salesforce::Salesforce::new(
                http,
                url(config
                    .login_url
                    .as_deref()
                    .or(config.base_url.as_deref())
                    .unwrap_or_default())?,
                credential("client_id")?,
                credential("client_secret")?,
                config.external_id_field.clone(),
                config.api_version.clone(),
            )),
            DestinationKind::Pipedrive => Self::Pipedrive(pipedrive::Pipedrive {
                http,
                base: url(config.base_url.as_deref().unwrap_or_default())?,
                token: credential("token")?,
                lead_id_field: config.lead_id_field.clone().unwrap_or_default(),
            }),
            DestinationKind::Slack => {
                let url = credential("webhook_url")?;
                // The URL is a credential: said to be wrong, never shown.
                let safe = {
                    use secrecy::ExposeSecret;
                    url::Url::parse(url.expose_secret()).is_ok_and(|u| http::is_safe(&u))
                };
                if !safe {
                    return Err(BuildError::Setting {
                        name,
                        what: "destinations.<name>.webhook_url is not an https URL".into(),
                    });
                }
                Self::Slack(slack::Slack {
                    http,
                    url,
                    include_answers: config.include_answers,
                })
            }
            DestinationKind::Webhook => Self::Webhook(webhook::Webhook {
                http,
                url: url(config.url.as_deref().unwrap_or_default())?,
                key: credential("key")?,
            }),
        })
    }
}

impl Destination for AnyDestination {
    async fn deliver(&self, leads: &[MappedLead]) -> Vec<Outcome> {
        match self {
            Self::Hubspot(d) => d.deliver(leads).await,
            Self::Salesforce(d) => d.deliver(leads).await,
            Self::Pipedrive(d) => d.deliver(leads).await,
            Self::Slack(d) => d.deliver(leads).await,
            Self::Webhook(d) => d.deliver(leads).await,
        }
    }

    async fn check(&self) -> Result<String, String> {
        match self {
            Self::Hubspot(d) => d.check().await,
            Self::Salesforce(d) => d.check().await,
            Self::Pipedrive(d) => d.check().await,
            Self::Slack(d) => d.check().await,
            Self::Webhook(d) => d.check().await,
        }
    }
}
