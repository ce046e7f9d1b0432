//! The HTTP client: URLs, tokens, retries, paging, batches.

use crate::error::{ErrorClass, GraphError};
use crate::models::{
    FORM_FIELDS, FieldData, HasLeadAccess, Lead, LeadgenForm, ParseError, SubscribedApp, TokenInfo,
};
use crate::usage::Usage;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::Stream;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use url::Url;

/// Meta's Graph host.
pub const DEFAULT_BASE_URL: &str = "https://graph.facebook.com";
/// The current Graph API version (docs/graph-api.md, "Versions": v26.0, July 2026).
pub const DEFAULT_API_VERSION: &str = "v26.0";
/// Every lead field Meta documents (docs/graph-api.md, "Reading a lead").
pub const DEFAULT_LEAD_FIELDS: &str = "id,created_time,ad_id,ad_name,adset_id,adset_name,campaign_id,campaign_name,form_id,field_data,custom_disclaimer_responses,is_organic,platform,partner_name,retailer_item_id,home_listing,vehicle,post";
/// The batch API takes at most 50 requests per call.
const BATCH_LIMIT: usize = 50;

/// Bounded exponential backoff with jitter for transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 disables retrying.
    pub max_retries: usize,
    /// The first wait.
    pub min_delay: Duration,
    /// The longest wait between attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

/// The client's settings.
#[derive(Debug, Clone)]
pub struct GraphConfig {
    /// `https://graph.facebook.com`, or a stand-in's address in tests.
    pub base_url: String,
    /// e.g. `v26.0`.
    pub api_version: String,
    /// When set, every call carries `appsecret_proof`.
    pub app_secret: Option<SecretString>,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request.
    pub request_timeout: Duration,
    /// Retries for transient failures.
    pub retry: RetryPolicy,
    /// The `fields` asked for on leads.
    pub lead_fields: String,
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_version: DEFAULT_API_VERSION.to_owned(),
            app_secret: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            lead_fields: DEFAULT_LEAD_FIELDS.to_owned(),
        }
    }
}

/// The operators `filtering` takes on `time_created`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeOperator {
    /// `LESS_THAN`.
    LessThan,
    /// `GREATER_THAN`.
    GreaterThan,
    /// `GREATER_THAN_OR_EQUAL`.
    GreaterThanOrEqual,
}

impl TimeOperator {
    fn as_str(self) -> &'static str {
        match self {
            Self::LessThan => "LESS_THAN",
            Self::GreaterThan => "GREATER_THAN",
            Self::GreaterThanOrEqual => "GREATER_THAN_OR_EQUAL",
        }
    }
}

/// One `filtering` clause on `time_created` (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeFilter {
    /// How `time_created` is compared.
    pub operator: TimeOperator,
    /// Unix seconds.
    pub value: i64,
}

/// What to ask of a form's or an ad's leads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeadQuery {
    /// Combined with AND, as Graph does.
    pub filters: Vec<TimeFilter>,
    /// Page size; Graph's default when `None`.
    pub limit: Option<u32>,
}

impl LeadQuery {
    /// Adds a `time_created` clause.
    pub fn with_time(mut self, operator: TimeOperator, value: i64) -> Self {
        self.filters.push(TimeFilter { operator, value });
        self
    }

    /// Sets the page size.
    pub fn with_limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    fn filtering(&self) -> Option<String> {
        if self.filters.is_empty() {
            return None;
        }
        let clauses: Vec<serde_json::Value> = self
            .filters
            .iter()
            .map(|f| serde_json::json!({"field": "time_created", "operator": f.operator.as_str(), "value": f.value}))
            .collect();
        Some(serde_json::Value::Array(clauses).to_string())
    }
}

/// One page of a paged edge.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items of this page that could be read.
    pub items: Vec<T>,
    /// Items whose JSON could not be read (their place is logged, their content is not).
    pub unreadable: Vec<ParseError>,
    /// `paging.cursors.after`, for the record; cursors are not for long-term storage.
    pub after: Option<String>,
    /// Whether Graph said there is a next page (`paging.next` present).
    pub has_next: bool,
    next: Option<Url>,
}

impl<T> Page<T> {
    /// A last page (no next), e.g. from a stand-in of Graph in tests of the use cases.
    pub fn last(items: Vec<T>, unreadable: Vec<ParseError>) -> Self {
        Self {
            items,
            unreadable,
            after: None,
            has_next: false,
            next: None,
        }
    }

    /// Where the next page is, when there is one; hold it to read on later in the same run.
    pub fn next_page(&self) -> Option<NextPage> {
        self.next.clone().map(NextPage)
    }
}

/// The address of the next page of a paged edge (already stripped of any token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextPage(Url);

/// One lead's outcome within a batch read.
#[derive(Debug)]
pub struct BatchItem {
    /// The lead asked for.
    pub lead_id: String,
    /// The lead, or why it could not be read.
    pub result: Result<Lead, GraphError>,
}

/// `appsecret_proof`: hex HMAC-SHA256 of the access token, keyed with the app secret.
pub fn appsecret_proof(app_secret: &str, access_token: &str) -> String {
    match <Hmac<Sha256> as KeyInit>::new_from_slice(app_secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(access_token.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        }
        // HMAC accepts keys of every length; an empty proof would be refused by Meta.
        Err(_) => String::new(),
    }
}

/// A Graph API client; cheap to clone, built once per process.
#[derive(Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    base: Url,
    version: String,
    app_secret: Option<SecretString>,
    retry: RetryPolicy,
    lead_fields: String,
    last_usage: Arc<Mutex<Usage>>,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("base", &self.base.as_str())
            .field("version", &self.version)
            .field("appsecret_proof", &self.app_secret.is_some())
            .finish_non_exhaustive()
    }
}

enum Payload {
    Query(Vec<(String, String)>),
    Form(Vec<(String, String)>),
}

impl GraphClient {
    /// Builds the client; fails only on an unusable base URL or TLS setup.
    pub fn new(config: GraphConfig) -> Result<Self, GraphError> {
        let base = Url::parse(&config.base_url).map_err(|e| {
            GraphError::local(
                "configure".into(),
                ErrorClass::BadRequest,
                format!("GRAPH_API_BASE is not a URL: {e}"),
            )
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("leadpipe/", env!("CARGO_PKG_VERSION")))
            // A redirect would re-send the token and appsecret_proof to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|_| {
                GraphError::local(
                    "configure".into(),
                    ErrorClass::BadRequest,
                    "HTTP client could not be built",
                )
            })?;
        Ok(Self {
            http,
            base,
            version: config.api_version,
            app_secret: config.app_secret,
            retry: config.retry,
            lead_fields: config.lead_fields,
            last_usage: Arc::new(Mutex::new(Usage::default())),
        })
    }

    /// The usage headers of the most recent response.
    pub fn last_usage(&self) -> Usage {
        self.last_usage
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default()
    }

    // ---- calls --------------------------------------------------------------------------

    /// `GET /{lead-id}` with every lead field.
    pub async fn lead(&self, token: &SecretString, lead_id: &str) -> Result<Lead, GraphError> {
        let operation = format!("GET /{lead_id}");
        let url = self.node_url(&[lead_id], &operation)?;
        let body = self
            .execute(
                &operation,
                Method::GET,
                url,
                Payload::Query(vec![("fields".into(), self.lead_fields.clone())]),
                token,
                &[],
            )
            .await?;
        Lead::from_json(&body).map_err(|e| parse_failure(operation, e))
    }

    /// Many leads in as few round trips as the batch API allows (50 per call), with a result
    /// per lead: one gone or forbidden lead does not fail the others. Items that fail
    /// transiently inside a successful batch are sent again under the retry policy.
    pub async fn leads(
        &self,
        token: &SecretString,
        lead_ids: &[String],
    ) -> Result<Vec<BatchItem>, GraphError> {
        let mut out = Vec::with_capacity(lead_ids.len());
        for chunk in lead_ids.chunks(BATCH_LIMIT) {
            out.extend(self.lead_batch(token, chunk).await?);
        }
        Ok(out)
    }

    async fn lead_batch(
        &self,
        token: &SecretString,
        ids: &[String],
    ) -> Result<Vec<BatchItem>, GraphError> {
        let mut done: Vec<BatchItem> = Vec::with_capacity(ids.len());
        let mut pending: Vec<String> = ids.to_vec();
        let mut delays = self.backoff();
        loop {
            let results = self.lead_batch_once(token, &pending).await?;
            let mut again = Vec::new();
            for item in results {
                match &item.result {
                    Err(e) if e.class == ErrorClass::Transient => again.push(item),
                    _ => done.push(item),
                }
            }
            if again.is_empty() {
                break;
            }
            match delays.next() {
                Some(delay) => {
                    tracing::warn!(
                        failed = again.len(),
                        delay_ms = delay.as_millis() as u64,
                        "transient failures inside a Graph batch; sending those again"
                    );
                    tokio::time::sleep(delay).await;
                    pending = again.into_iter().map(|i| i.lead_id).collect();
                }
                None => {
                    done.extend(again);
                    break;
                }
            }
        }
        // Keep the caller's order.
        done.sort_by_key(|item| {
            ids.iter()
                .position(|id| *id == item.lead_id)
                .unwrap_or(usize::MAX)
        });
        Ok(done)
    }

    async fn lead_batch_once(
        &self,
        token: &SecretString,
        ids: &[String],
    ) -> Result<Vec<BatchItem>, GraphError> {
        // An id that is not a Graph id fails alone; the others are still read.
        let (ids, malformed): (Vec<&String>, Vec<&String>) =
            ids.iter().partition(|id| check_id(id, "batch").is_ok());
        let mut out: Vec<BatchItem> = malformed
            .into_iter()
            .map(|id| BatchItem {
                lead_id: id.clone(),
                result: Err(GraphError::local(
                    format!("GET /{id} (in batch)"),
                    ErrorClass::BadRequest,
                    "the lead id is not a Graph id (letters, digits and _ only)",
                )),
            })
            .collect();
        if ids.is_empty() {
            return Ok(out);
        }
        let operation = format!("POST / (batch of {})", ids.len());
        let requests: Vec<serde_json::Value> = ids
            .iter()
            .map(|id| serde_json::json!({"method": "GET", "relative_url": format!("{id}?fields={}", self.lead_fields)}))
            .collect();
        let url = self.node_url(&[], &operation)?;
        let form = vec![
            (
                "batch".to_owned(),
                serde_json::Value::Array(requests).to_string(),
            ),
            ("include_headers".to_owned(), "false".to_owned()),
        ];
        let (body, usage) = self
            .execute_with_usage(
                &operation,
                Method::POST,
                url,
                Payload::Form(form),
                token,
                &[],
            )
            .await?;
        #[derive(Deserialize)]
        struct Item {
            code: u16,
            #[serde(default)]
            body: Option<String>,
        }
        let items: Vec<Option<Item>> = serde_json::from_str(&body)
            .map_err(|e| parse_failure(operation.clone(), ParseError::new("batch response", &e)))?;
        let secret = token.expose_secret();
        let proof = self.proof(secret);
        let secrets: Vec<&str> = std::iter::once(secret).chain(proof.as_deref()).collect();
        out.extend(ids.iter().enumerate().map(|(i, id)| {
            let item_op = format!("GET /{id} (in batch)");
            let result = match items.get(i) {
                Some(Some(item)) if (200..300).contains(&item.code) => {
                    Lead::from_json(item.body.as_deref().unwrap_or_default())
                        .map_err(|e| parse_failure(item_op, e))
                }
                // Items carry no headers (include_headers=false): the batch
                // answer's usage headers are what says how long to wait.
                Some(Some(item)) => Err(GraphError::from_response(
                    item_op,
                    item.code,
                    item.body.as_deref().unwrap_or_default(),
                    usage.clone(),
                    &secrets,
                )),
                // Meta answers null for a request it did not get to in time.
                _ => Err(GraphError::local(
                    item_op,
                    ErrorClass::Transient,
                    "no answer for this item in the batch",
                )),
            };
            BatchItem {
                lead_id: (*id).clone(),
                result,
            }
        }));
        Ok(out)
    }

    /// `appsecret_proof` for `token`, when an app secret is configured.
    fn proof(&self, token: &str) -> Option<String> {
        self.app_secret
            .as_ref()
            .map(|app_secret| appsecret_proof(app_secret.expose_secret(), token))
    }

    /// `GET /{form-id}/leads`, page after page until `paging.next` is absent.
    pub fn form_leads<'a>(
        &'a self,
        token: &'a SecretString,
        form_id: &str,
        query: &LeadQuery,
    ) -> impl Stream<Item = Result<Page<Lead>, GraphError>> + Send + 'a {
        self.lead_pages(token, form_id, query)
    }

    /// `GET /{ad-id}/leads`, page after page until `paging.next` is absent.
    pub fn ad_leads<'a>(
        &'a self,
        token: &'a SecretString,
        ad_id: &str,
        query: &LeadQuery,
    ) -> impl Stream<Item = Result<Page<Lead>, GraphError>> + Send + 'a {
        self.lead_pages(token, ad_id, query)
    }

    fn lead_pages<'a>(
        &'a self,
        token: &'a SecretString,
        node_id: &str,
        query: &LeadQuery,
    ) -> impl Stream<Item = Result<Page<Lead>, GraphError>> + Send + 'a {
        let operation = format!("GET /{node_id}/leads");
        let first = self.first_leads_url(node_id, query, &operation);
        self.pages(token, operation, first, Lead::from_json)
    }

    fn first_leads_url(
        &self,
        node_id: &str,
        query: &LeadQuery,
        operation: &str,
    ) -> Result<Url, GraphError> {
        let mut params = vec![("fields".to_owned(), self.lead_fields.clone())];
        if let Some(filtering) = query.filtering() {
            params.push(("filtering".to_owned(), filtering));
        }
        if let Some(limit) = query.limit {
            params.push(("limit".to_owned(), limit.to_string()));
        }
        self.node_url(&[node_id, "leads"], operation)
            .map(|url| with_query(url, &params))
    }

    /// The first page of `GET /{form-or-ad-id}/leads`; follow it with
    /// [`GraphClient::lead_page_after`] while [`Page::next_page`] is `Some`.
    pub async fn lead_page(
        &self,
        token: &SecretString,
        node_id: &str,
        query: &LeadQuery,
    ) -> Result<Page<Lead>, GraphError> {
        let operation = format!("GET /{node_id}/leads");
        let url = self.first_leads_url(node_id, query, &operation)?;
        self.fetch_page(token, operation, url, Lead::from_json)
            .await
    }

    /// The page of leads at `next`.
    pub async fn lead_page_after(
        &self,
        token: &SecretString,
        next: &NextPage,
    ) -> Result<Page<Lead>, GraphError> {
        self.fetch_page(
            token,
            format!("GET {} (next page)", next.0.path()),
            next.0.clone(),
            Lead::from_json,
        )
        .await
    }

    /// `GET /{page-id}/leadgen_forms`, every page.
    pub fn leadgen_forms<'a>(
        &'a self,
        token: &'a SecretString,
        page_id: &str,
    ) -> impl Stream<Item = Result<Page<LeadgenForm>, GraphError>> + Send + 'a {
        let operation = format!("GET /{page_id}/leadgen_forms");
        let params = vec![("fields".to_owned(), FORM_FIELDS.to_owned())];
        let first = self
            .node_url(&[page_id, "leadgen_forms"], &operation)
            .map(|url| with_query(url, &params));
        self.pages(token, operation, first, |json| {
            let mut form: LeadgenForm =
                serde_json::from_str(json).map_err(|e| ParseError::new("leadgen form", &e))?;
            form.raw = json.to_owned();
            Ok(form)
        })
    }

    /// Fetches one page: the first, or the one after `page` when it has a next.
    pub async fn next_page<T>(
        &self,
        token: &SecretString,
        page: &Page<T>,
        parse: fn(&str) -> Result<T, ParseError>,
    ) -> Option<Result<Page<T>, GraphError>> {
        let next = page.next.clone()?;
        Some(
            self.fetch_page(token, "GET next page".into(), next, parse)
                .await,
        )
    }

    fn pages<'a, T: Send + 'a>(
        &'a self,
        token: &'a SecretString,
        operation: String,
        first: Result<Url, GraphError>,
        parse: fn(&str) -> Result<T, ParseError>,
    ) -> impl Stream<Item = Result<Page<T>, GraphError>> + Send + 'a {
        futures::stream::try_unfold(Some(first), move |state| {
            let operation = operation.clone();
            async move {
                let Some(url) = state else {
                    return Ok(None);
                };
                let page = self.fetch_page(token, operation, url?, parse).await?;
                let next = page.next.clone().map(Ok);
                Ok(Some((page, next)))
            }
        })
    }

    async fn fetch_page<T>(
        &self,
        token: &SecretString,
        operation: String,
        url: Url,
        parse: fn(&str) -> Result<T, ParseError>,
    ) -> Result<Page<T>, GraphError> {
        let url_for_next = url.clone();
        let body = self
            .execute(
                &operation,
                Method::GET,
                url,
                Payload::Query(Vec::new()),
                token,
                &[],
            )
            .await?;
        #[derive(Deserialize)]
        struct Wire<'b> {
            #[serde(borrow, default)]
            data: Vec<&'b RawValue>,
            #[serde(default)]
            paging: Option<Paging>,
        }
        #[derive(Deserialize)]
        struct Paging {
            #[serde(default)]
            next: Option<String>,
            #[serde(default)]
            cursors: Option<Cursors>,
        }
        #[derive(Deserialize)]
        struct Cursors {
            #[serde(default)]
            after: Option<String>,
        }
        let wire: Wire<'_> = serde_json::from_str(&body)
            .map_err(|e| parse_failure(operation.clone(), ParseError::new("page", &e)))?;
        let mut items = Vec::with_capacity(wire.data.len());
        let mut unreadable = Vec::new();
        for raw in wire.data {
            match parse(raw.get()) {
                Ok(item) => items.push(item),
                Err(err) => {
                    let err = err.with_id_from(raw.get());
                    tracing::warn!(operation = %operation, error = %err, "skipping an unreadable item of a page");
                    unreadable.push(err);
                }
            }
        }
        let paging = wire.paging;
        let next = match paging.as_ref().and_then(|p| p.next.as_deref()) {
            Some(next) => Some(next_page_url(next, &url_for_next, &operation)?),
            None => None,
        };
        Ok(Page {
            items,
            unreadable,
            after: paging.and_then(|p| p.cursors).and_then(|c| c.after),
            has_next: next.is_some(),
            next,
        })
    }

    /// `GET /{page-id}?fields=has_lead_access.user_id(U).app_id(A)`.
    pub async fn has_lead_access(
        &self,
        token: &SecretString,
        page_id: &str,
        user_id: &str,
        app_id: Option<&str>,
    ) -> Result<HasLeadAccess, GraphError> {
        let operation = format!("GET /{page_id}?fields=has_lead_access");
        check_id(user_id, &operation)?;
        let mut field = format!("has_lead_access.user_id({user_id})");
        if let Some(app_id) = app_id {
            check_id(app_id, &operation)?;
            field.push_str(&format!(".app_id({app_id})"));
        }
        let url = self.node_url(&[page_id], &operation)?;
        let body = self
            .execute(
                &operation,
                Method::GET,
                url,
                Payload::Query(vec![("fields".into(), field)]),
                token,
                &[],
            )
            .await?;
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Access {
            List { data: Vec<HasLeadAccess> },
            One(HasLeadAccess),
        }
        #[derive(Deserialize)]
        struct Wire {
            has_lead_access: Access,
        }
        let wire: Wire = serde_json::from_str(&body).map_err(|e| {
            parse_failure(operation.clone(), ParseError::new("has_lead_access", &e))
        })?;
        match wire.has_lead_access {
            Access::One(access) => Ok(access),
            Access::List { data } => data.into_iter().next().ok_or_else(|| {
                GraphError::local(
                    operation,
                    ErrorClass::BadRequest,
                    "has_lead_access came back empty",
                )
            }),
        }
    }

    /// `GET /debug_token?input_token=...`, asked with `app_token` (`app_id|app_secret` or
    /// any token of the app).
    pub async fn debug_token(
        &self,
        app_token: &SecretString,
        input_token: &SecretString,
    ) -> Result<TokenInfo, GraphError> {
        let operation = "GET /debug_token".to_owned();
        let url = self.node_url(&["debug_token"], &operation)?;
        let params = vec![(
            "input_token".to_owned(),
            input_token.expose_secret().to_owned(),
        )];
        let body = self
            .execute(
                &operation,
                Method::GET,
                url,
                Payload::Query(params),
                app_token,
                &[input_token.expose_secret()],
            )
            .await?;
        #[derive(Deserialize)]
        struct Wire {
            data: TokenInfo,
        }
        serde_json::from_str::<Wire>(&body)
            .map(|w| w.data)
            .map_err(|e| parse_failure(operation, ParseError::new("debug_token", &e)))
    }

    /// `POST /{form-id}/test_leads`: creates a test lead (optionally with answers) and
    /// returns its id.
    pub async fn create_test_lead(
        &self,
        page_token: &SecretString,
        form_id: &str,
        field_data: Option<&[FieldData]>,
    ) -> Result<String, GraphError> {
        let operation = format!("POST /{form_id}/test_leads");
        let url = self.node_url(&[form_id, "test_leads"], &operation)?;
        let mut form = Vec::new();
        if let Some(fields) = field_data {
            let json = serde_json::to_string(fields).map_err(|_| {
                GraphError::local(
                    operation.clone(),
                    ErrorClass::BadRequest,
                    "field_data could not be encoded",
                )
            })?;
            form.push(("field_data".to_owned(), json));
        }
        let body = self
            .execute(
                &operation,
                Method::POST,
                url,
                Payload::Form(form),
                page_token,
                &[],
            )
            .await?;
        #[derive(Deserialize)]
        struct Created {
            #[serde(deserialize_with = "crate::client::string_or_number")]
            id: String,
        }
        serde_json::from_str::<Created>(&body)
            .map(|c| c.id)
            .map_err(|e| parse_failure(operation, ParseError::new("created test lead", &e)))
    }

    /// `POST /{app-id}/subscriptions`: subscribes the app to pages' `leadgen` webhooks.
    pub async fn subscribe_app(
        &self,
        app_token: &SecretString,
        app_id: &str,
        callback_url: &str,
        verify_token: &SecretString,
    ) -> Result<(), GraphError> {
        let operation = format!("POST /{app_id}/subscriptions");
        let url = self.node_url(&[app_id, "subscriptions"], &operation)?;
        let form = vec![
            ("object".to_owned(), "page".to_owned()),
            ("fields".to_owned(), "leadgen".to_owned()),
            ("callback_url".to_owned(), callback_url.to_owned()),
            (
                "verify_token".to_owned(),
                verify_token.expose_secret().to_owned(),
            ),
            ("include_values".to_owned(), "true".to_owned()),
        ];
        let body = self
            .execute(
                &operation,
                Method::POST,
                url,
                Payload::Form(form),
                app_token,
                &[verify_token.expose_secret()],
            )
            .await?;
        expect_success(operation, &body)
    }

    /// `POST /{page-id}/subscribed_apps?subscribed_fields=leadgen` with the page's token.
    pub async fn subscribe_page(
        &self,
        page_token: &SecretString,
        page_id: &str,
    ) -> Result<(), GraphError> {
        let operation = format!("POST /{page_id}/subscribed_apps");
        let url = self.node_url(&[page_id, "subscribed_apps"], &operation)?;
        let form = vec![("subscribed_fields".to_owned(), "leadgen".to_owned())];
        let body = self
            .execute(
                &operation,
                Method::POST,
                url,
                Payload::Form(form),
                page_token,
                &[],
            )
            .await?;
        expect_success(operation, &body)
    }

    /// `GET /{page-id}/subscribed_apps`: which apps get this page's webhooks, for which fields.
    pub async fn page_subscriptions(
        &self,
        page_token: &SecretString,
        page_id: &str,
    ) -> Result<Vec<SubscribedApp>, GraphError> {
        let operation = format!("GET /{page_id}/subscribed_apps");
        let url = self.node_url(&[page_id, "subscribed_apps"], &operation)?;
        let body = self
            .execute(
                &operation,
                Method::GET,
                url,
                Payload::Query(Vec::new()),
                page_token,
                &[],
            )
            .await?;
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            data: Vec<SubscribedApp>,
        }
        serde_json::from_str::<Wire>(&body)
            .map(|w| w.data)
            .map_err(|e| parse_failure(operation, ParseError::new("subscribed_apps", &e)))
    }

    // ---- plumbing -----------------------------------------------------------------------

    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.retry.min_delay)
            .with_max_delay(self.retry.max_delay)
            .with_max_times(self.retry.max_retries)
            .with_jitter()
            .build()
    }

    /// `{base}/{version}/{segments...}`, refusing ids that are not plain Graph ids so a
    /// hostile id cannot walk the path.
    fn node_url(&self, segments: &[&str], operation: &str) -> Result<Url, GraphError> {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().map_err(|_| {
                GraphError::local(
                    operation.to_owned(),
                    ErrorClass::BadRequest,
                    "base URL cannot take a path",
                )
            })?;
            path.pop_if_empty().push(&self.version);
            for segment in segments {
                check_id(segment, operation)?;
                path.push(segment);
            }
            if segments.is_empty() {
                path.push("");
            }
        }
        Ok(url)
    }

    /// Sends a call under the retry policy: transient failures are retried after the
    /// larger of the backoff delay and what the usage headers ask, unless the usage headers
    /// ask for longer than the policy's longest delay (then the caller should reschedule).
    async fn execute(
        &self,
        operation: &str,
        method: Method,
        url: Url,
        payload: Payload,
        token: &SecretString,
        other_secrets: &[&str],
    ) -> Result<String, GraphError> {
        self.execute_with_usage(operation, method, url, payload, token, other_secrets)
            .await
            .map(|(body, _)| body)
    }

    /// Like `execute`, also returning the usage headers of the answer.
    async fn execute_with_usage(
        &self,
        operation: &str,
        method: Method,
        url: Url,
        payload: Payload,
        token: &SecretString,
        other_secrets: &[&str],
    ) -> Result<(String, Usage), GraphError> {
        let mut delays = self.backoff();
        let mut attempt = 1u32;
        loop {
            let result = self
                .execute_once(
                    operation,
                    method.clone(),
                    url.clone(),
                    &payload,
                    token,
                    other_secrets,
                )
                .await;
            let err = match result {
                Ok(answer) => return Ok(answer),
                Err(err) => err,
            };
            if err.class != ErrorClass::Transient {
                return Err(err);
            }
            let asked = err.usage.suggested_wait();
            if asked > self.retry.max_delay {
                return Err(err);
            }
            let Some(delay) = delays.next() else {
                return Err(err);
            };
            let delay = delay.max(asked);
            tracing::warn!(operation, attempt, class = %err.class, code = ?err.code, delay_ms = delay.as_millis() as u64, "transient Graph failure; retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn execute_once(
        &self,
        operation: &str,
        method: Method,
        url: Url,
        payload: &Payload,
        token: &SecretString,
        other_secrets: &[&str],
    ) -> Result<(String, Usage), GraphError> {
        let secret = token.expose_secret();
        let proof = self.proof(secret);
        let mut auth = vec![("access_token".to_owned(), secret.to_owned())];
        if let Some(proof) = &proof {
            auth.push(("appsecret_proof".to_owned(), proof.clone()));
        }
        let request = match payload {
            Payload::Query(params) => self.http.request(method, url).query(params).query(&auth),
            Payload::Form(fields) => {
                let mut all = fields.clone();
                all.extend(auth);
                self.http.request(method, url).form(&all)
            }
        };
        let response = request
            .send()
            .await
            .map_err(|e| transport_failure(operation, &e))?;
        let status = response.status().as_u16();
        let usage = Usage::from_headers(response.headers());
        if !usage.is_empty()
            && let Ok(mut last) = self.last_usage.lock()
        {
            *last = usage.clone();
        }
        let body = response
            .text()
            .await
            .map_err(|e| transport_failure(operation, &e))?;
        if (200..300).contains(&status) {
            return Ok((body, usage));
        }
        let mut secrets = vec![secret];
        secrets.extend(proof.as_deref());
        secrets.extend_from_slice(other_secrets);
        Err(GraphError::from_response(
            operation.to_owned(),
            status,
            &body,
            usage,
            &secrets,
        ))
    }
}

fn with_query(mut url: Url, params: &[(String, String)]) -> Url {
    if !params.is_empty() {
        url.query_pairs_mut()
            .extend_pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    url
}

/// The page after `current`, from Meta's `paging.next`: only the same edge of the same node
/// (`[base path]/<version>/<id>/<edge>`) is followed, on our own base (its path prefix kept),
/// with the cursors and filters Meta put in its query but without the token it echoes. Any
/// other place is a Graph error: the token goes only where the client was configured to
/// send it.
fn next_page_url(next: &str, current: &Url, operation: &str) -> Result<Url, GraphError> {
    let refuse = |why: &str| GraphError::local(operation.to_owned(), ErrorClass::BadRequest, why);
    let parsed = Url::parse(next).map_err(|_| refuse("paging.next is not a URL"))?;
    let segments = |url: &Url| -> Vec<String> {
        url.path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let (want, got) = (segments(current), segments(&parsed));
    let shape_ok = want.len() >= 3 && got.len() >= 3 && {
        let (want_prefix, want_tail) = want.split_at(want.len() - 2);
        let (got_head, got_tail) = got.split_at(got.len() - 2);
        let (got_version, got_prefix) = got_head.split_last().unzip();
        let base_prefix = &want_prefix[..want_prefix.len() - 1];
        got_tail == want_tail
            && got_version.is_some_and(|v| is_version(v))
            && got_prefix.is_some_and(|p| p.is_empty() || p == base_prefix)
    };
    if !shape_ok {
        return Err(refuse(
            "paging.next points somewhere other than the next page of this edge",
        ));
    }
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != "access_token" && k != "appsecret_proof")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut url = current.clone();
    url.set_query(None);
    Ok(with_query(url, &kept))
}

/// `v26.0`, `v9`: the version segment of a Graph path.
fn is_version(segment: &str) -> bool {
    segment.strip_prefix('v').is_some_and(|rest| {
        !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit() || c == '.')
    })
}

fn check_id(id: &str, operation: &str) -> Result<(), GraphError> {
    if !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        Ok(())
    } else {
        Err(GraphError::local(
            operation.to_owned(),
            ErrorClass::BadRequest,
            "an id is not a Graph id (letters, digits and _ only)",
        ))
    }
}

fn parse_failure(operation: String, err: ParseError) -> GraphError {
    let class = if err.is_truncation() {
        ErrorClass::Transient
    } else {
        ErrorClass::Unreadable
    };
    GraphError::local(operation, class, err.to_string())
}

/// Never carries reqwest's own text: it can include the URL, and the URL holds the token.
fn transport_failure(operation: &str, err: &reqwest::Error) -> GraphError {
    let message = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else if err.is_body() || err.is_decode() {
        "the response body could not be read"
    } else {
        "the request failed in transit"
    };
    GraphError::local(operation.to_owned(), ErrorClass::Transient, message)
}

fn expect_success(operation: String, body: &str) -> Result<(), GraphError> {
    #[derive(Deserialize)]
    struct Wire {
        #[serde(default)]
        success: bool,
    }
    match serde_json::from_str::<Wire>(body) {
        Ok(Wire { success: true }) => Ok(()),
        _ => Err(GraphError::local(
            operation,
            ErrorClass::BadRequest,
            "Graph did not answer success: true",
        )),
    }
}

pub(crate) fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Number(u64),
    }
    Ok(match Repr::deserialize(d)? {
        Repr::Text(t) => t,
        Repr::Number(n) => n.to_string(),
    })
}
