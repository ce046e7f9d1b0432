//! The Graph read ports over the Graph API client: ingest's [`LeadFetcher`] (the batch API,
//! 50 leads a call) and backfill's [`BackfillSource`](leadpipe_core::ports::BackfillSource)
//! (access checks, forms, time-filtered lead pages), each page read with its own token
//! from the secrets. Graph's wire types (batch items, `paging.next`) stop here: the core
//! sees leads, pages of leads and an opaque cursor.

#![warn(missing_docs)]
// GraphError is large but only built after a network round trip (see leadpipe-graph).
#![allow(clippy::result_large_err)]

use leadpipe_core::ports::LeadFetcher;
use leadpipe_core::ports::{FetchedLead, LeadPage, PageCursor, TimeWindow};
use leadpipe_core::secrets::AppSecrets;
use leadpipe_core::settings::{Env, SettingsError};
use leadpipe_core::tokens::TokenBook;
use leadpipe_graph::{
    BatchItem, ErrorClass, GraphClient, GraphConfig, GraphError, Lead, LeadQuery, Page,
    TimeOperator,
};

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
    secrets: TokenBook,
}

impl GraphLeadFetcher {
    /// A fetcher reading with `client`, each page with its token from `secrets`.
    pub fn new(client: GraphClient, secrets: AppSecrets) -> Self {
        Self::with_book(client, TokenBook::new(secrets))
    }

    /// A fetcher taking each page's token from `book` at every read, so a secret read again
    /// (`leadpipe_core::tokens`) is used at once.
    pub fn with_book(client: GraphClient, book: TokenBook) -> Self {
        Self {
            client,
            secrets: book,
        }
    }

    /// The tokens it reads with.
    pub fn book(&self) -> &TokenBook {
        &self.secrets
    }

    /// The client it reads with.
    pub fn client(&self) -> &GraphClient {
        &self.client
    }
}

impl LeadFetcher for GraphLeadFetcher {
    async fn fetch(
        &self,
        page_id: &str,
        lead_ids: &[String],
    ) -> Result<Vec<FetchedLead>, GraphError> {
        let token = token_of(&self.secrets, page_id)?;
        let items: Vec<BatchItem> = self.client.leads(&token, lead_ids).await?;
        Ok(items
            .into_iter()
            .map(|item| FetchedLead {
                lead_id: item.lead_id,
                result: item.result,
            })
            .collect())
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

/// [`BackfillSource`](leadpipe_core::ports::BackfillSource) over the Graph client.
#[derive(Debug, Clone)]
pub struct GraphBackfillSource {
    client: GraphClient,
    secrets: TokenBook,
}

impl GraphBackfillSource {
    /// A source reading with `client`, each page with its token from `secrets`.
    pub fn new(client: GraphClient, secrets: AppSecrets) -> Self {
        Self::with_book(client, TokenBook::new(secrets))
    }

    /// A source taking each page's token from `book` at every read.
    pub fn with_book(client: GraphClient, book: TokenBook) -> Self {
        Self {
            client,
            secrets: book,
        }
    }

    /// The tokens it reads with.
    pub fn book(&self) -> &TokenBook {
        &self.secrets
    }

    fn token(&self, page_id: &str) -> Result<secrecy::SecretString, GraphError> {
        token_of(&self.secrets, page_id)
    }
}

/// The page's token as the book holds it now.
fn token_of(book: &TokenBook, page_id: &str) -> Result<secrecy::SecretString, GraphError> {
    book.current()
        .token_for_page(page_id)
        .cloned()
        .ok_or_else(|| missing_page_token(page_id))
}

/// The forms catalog's Graph read: `GET /{form-id}` with the page's token.
impl leadpipe_core::forms::FormReader for GraphLeadFetcher {
    async fn read_form(
        &self,
        page_id: &str,
        form_id: &str,
    ) -> Result<leadpipe_graph::LeadgenForm, GraphError> {
        let token = token_of(&self.secrets, page_id)?;
        self.client.form(&token, form_id).await
    }
}

impl leadpipe_core::forms::FormReader for GraphBackfillSource {
    async fn read_form(
        &self,
        page_id: &str,
        form_id: &str,
    ) -> Result<leadpipe_graph::LeadgenForm, GraphError> {
        let token = self.token(page_id)?;
        self.client.form(&token, form_id).await
    }
}

impl leadpipe_core::ports::BackfillSource for GraphBackfillSource {
    async fn token_info(&self, page_id: &str) -> Result<leadpipe_graph::TokenInfo, GraphError> {
        let token = self.token(page_id)?;
        // The page token checks itself: debug_token accepts any token of the app.
        self.client.debug_token(&token, &token).await
    }

    async fn lead_access(
        &self,
        page_id: &str,
    ) -> Result<leadpipe_graph::HasLeadAccess, GraphError> {
        let token = self.token(page_id)?;
        // has_lead_access asks about a user; the token's own user is the one that matters.
        let info = self.client.debug_token(&token, &token).await?;
        let user_id = info.user_id.clone().unwrap_or_default();
        self.client
            .has_lead_access(&token, page_id, &user_id, info.app_id.as_deref())
            .await
    }

    async fn forms(&self, page_id: &str) -> Result<Vec<leadpipe_graph::LeadgenForm>, GraphError> {
        use futures::TryStreamExt;
        let token = self.token(page_id)?;
        let pages: Vec<_> = self
            .client
            .leadgen_forms(&token, page_id)
            .try_collect()
            .await?;
        Ok(pages.into_iter().flat_map(|p| p.items).collect())
    }

    async fn lead_page(
        &self,
        page_id: &str,
        node_id: &str,
        window: &TimeWindow,
    ) -> Result<LeadPage, GraphError> {
        // `[start, end)`: a lead on a slice boundary is read by exactly one slice.
        let query = LeadQuery::default()
            .with_time(TimeOperator::GreaterThanOrEqual, window.start)
            .with_time(TimeOperator::LessThan, window.end)
            .with_limit(window.page_size);
        let page = self
            .client
            .lead_page(&self.token(page_id)?, node_id, &query)
            .await?;
        Ok(lead_page(page))
    }

    async fn lead_page_after(
        &self,
        page_id: &str,
        next: &PageCursor,
    ) -> Result<LeadPage, GraphError> {
        let next = self.client.next_page_from(next.as_str())?;
        let page = self
            .client
            .lead_page_after(&self.token(page_id)?, &next)
            .await?;
        Ok(lead_page(page))
    }
}

/// Graph's page as the core's: the leads, the unreadable items, and the next page's address
/// as an opaque cursor.
fn lead_page(page: Page<Lead>) -> LeadPage {
    LeadPage {
        next: page
            .next_page()
            .map(|n| PageCursor::new(n.as_str().to_owned())),
        leads: page.items,
        unreadable: page.unreadable,
    }
}

/// The Conversions API port over the Graph client: one request per call, with the secret's
/// `conversions_token` as the book holds it at the call (locally, `serve` replaces the
/// book when it reads the secret file again; the stages Lambda reads it at start).
#[derive(Debug, Clone)]
pub struct GraphConversions {
    client: GraphClient,
    book: TokenBook,
    dataset_id: String,
    test_event_code: Option<String>,
}

impl GraphConversions {
    /// Sends to `dataset_id`. The client must be built without `appsecret_proof`: the token
    /// is the dataset's, not this app's ([`conversions_client`]).
    pub fn new(
        client: GraphClient,
        book: TokenBook,
        dataset_id: String,
        test_event_code: Option<String>,
    ) -> Self {
        Self {
            client,
            book,
            dataset_id,
            test_event_code,
        }
    }
}

/// A Graph client for the Conversions API from the Graph settings: the same host and
/// version, no `appsecret_proof` (a dataset token from Events Manager belongs to no app of
/// ours, and a proof keyed with our app secret would be refused).
pub fn conversions_client(config: &GraphConfig) -> Result<GraphClient, GraphError> {
    GraphClient::new(GraphConfig {
        app_secret: None,
        ..config.clone()
    })
}

impl leadpipe_core::stages::ConversionsApi for GraphConversions {
    async fn send(
        &self,
        events: &[leadpipe_core::stages::ConversionEvent],
    ) -> Result<u64, GraphError> {
        let secrets = self.book.current();
        let Some(token) = secrets.conversions_token.as_ref() else {
            return Err(GraphError::local(
                format!("POST /{}/events", self.dataset_id),
                ErrorClass::Token,
                "the secret has no conversions_token",
            ));
        };
        let data = serde_json::to_string(events).map_err(|_| {
            GraphError::local(
                "encode events".into(),
                ErrorClass::BadRequest,
                "events could not be encoded",
            )
        })?;
        self.client
            .send_events(
                token,
                &self.dataset_id,
                data,
                self.test_event_code.as_deref(),
            )
            .await
    }
}
