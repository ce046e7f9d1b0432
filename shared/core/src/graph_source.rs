//! [`LeadFetcher`] over the Graph client, choosing each page's token from the secrets.

use crate::ports::LeadFetcher;
use crate::secrets::AppSecrets;
use crate::settings::{Env, SettingsError};
use leadpipe_graph::{BatchItem, ErrorClass, GraphClient, GraphConfig, GraphError};

/// The error for a page the secret holds no token for: a token problem, fixed in the secret.
fn missing_page_token(page_id: &str) -> GraphError {
    GraphError::local(
        format!("read page {page_id}"),
        ErrorClass::Token,
        "the secret has no page_tokens entry for this page and no access_token",
    )
}

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
            .ok_or_else(|| missing_page_token(page_id))?;
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

/// [`BackfillSource`](crate::ports::BackfillSource) over the Graph client.
#[derive(Debug, Clone)]
pub struct GraphBackfillSource {
    client: GraphClient,
    secrets: AppSecrets,
}

impl GraphBackfillSource {
    pub fn new(client: GraphClient, secrets: AppSecrets) -> Self {
        Self { client, secrets }
    }

    fn token(&self, page_id: &str) -> Result<&secrecy::SecretString, GraphError> {
        self.secrets
            .token_for_page(page_id)
            .ok_or_else(|| missing_page_token(page_id))
    }
}

impl crate::ports::BackfillSource for GraphBackfillSource {
    async fn lead_access(
        &self,
        page_id: &str,
    ) -> Result<leadpipe_graph::HasLeadAccess, GraphError> {
        let token = self.token(page_id)?;
        // has_lead_access asks about a user; the token's own user is the one that matters.
        let info = self.client.debug_token(token, token).await?;
        let user_id = info.user_id.clone().unwrap_or_default();
        self.client
            .has_lead_access(token, page_id, &user_id, info.app_id.as_deref())
            .await
    }

    async fn forms(&self, page_id: &str) -> Result<Vec<leadpipe_graph::LeadgenForm>, GraphError> {
        use futures::TryStreamExt;
        let token = self.token(page_id)?;
        let pages: Vec<_> = self
            .client
            .leadgen_forms(token, page_id)
            .try_collect()
            .await?;
        Ok(pages.into_iter().flat_map(|p| p.items).collect())
    }

    async fn lead_page(
        &self,
        page_id: &str,
        node_id: &str,
        query: &leadpipe_graph::LeadQuery,
    ) -> Result<leadpipe_graph::Page<leadpipe_graph::Lead>, GraphError> {
        self.client
            .lead_page(self.token(page_id)?, node_id, query)
            .await
    }

    async fn lead_page_after(
        &self,
        page_id: &str,
        next: &leadpipe_graph::NextPage,
    ) -> Result<leadpipe_graph::Page<leadpipe_graph::Lead>, GraphError> {
        self.client
            .lead_page_after(self.token(page_id)?, next)
            .await
    }
}
