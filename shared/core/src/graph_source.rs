//! [`LeadFetcher`] over the Graph client, choosing each page's token from the secrets.

use crate::ports::LeadFetcher;
use crate::secrets::AppSecrets;
use crate::settings::{Env, SettingsError};
use leadpipe_graph::{BatchItem, ErrorClass, GraphClient, GraphConfig, GraphError};

/// Reads leads through Graph's batch API with the page's token.
#[derive(Debug, Clone)]
pub struct GraphLeadFetcher {
    client: GraphClient,
    secrets: AppSecrets,
}

impl GraphLeadFetcher {
    pub fn new(client: GraphClient, secrets: AppSecrets) -> Self {
        Self { client, secrets }
    }

    pub fn client(&self) -> &GraphClient {
        &self.client
    }
}

impl LeadFetcher for GraphLeadFetcher {
    async fn fetch(
        &self,
        page_id: &str,
        lead_ids: &[String],
    ) -> Result<Vec<BatchItem>, GraphError> {
        let token = self
            .secrets
            .token_for_page(page_id)
            .ok_or_else(|| GraphError {
                operation: format!("read leads of page {page_id}"),
                class: ErrorClass::Token,
                status: None,
                code: None,
                subcode: None,
                error_type: None,
                message: "the secret has no page_tokens entry for this page and no access_token"
                    .into(),
                fbtrace_id: None,
                is_transient: false,
                usage: Default::default(),
            })?;
        self.client.leads(token, lead_ids).await
    }
}

/// The Graph client's settings from the environment: `GRAPH_API_BASE`, `GRAPH_API_VERSION`
/// (defaults: Meta's host, the current version), with `appsecret_proof` from the secret.
pub fn graph_config<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    secrets: &AppSecrets,
) -> Result<GraphConfig, SettingsError> {
    let mut config = GraphConfig {
        app_secret: Some(secrets.app_secret.clone()),
        ..GraphConfig::default()
    };
    if let Some(base) = env.optional("GRAPH_API_BASE") {
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(SettingsError::Invalid {
                name: "GRAPH_API_BASE",
                why: "it must be an http(s) URL".into(),
            });
        }
        config.base_url = base;
    }
    if let Some(version) = env.optional("GRAPH_API_VERSION") {
        let well_formed = version.strip_prefix('v').is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit() || c == '.')
        });
        if !well_formed {
            return Err(SettingsError::Invalid {
                name: "GRAPH_API_VERSION",
                why: "it must look like v26.0".into(),
            });
        }
        config.api_version = version;
    }
    Ok(config)
}
