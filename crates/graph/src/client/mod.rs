//! The HTTP client: configuration, the request plumbing (tokens, `appsecret_proof`, retries,
//! usage headers, error classes) and, one concern a file, what is called through it:
//! [`batch`] (leads by id), [`paging`] (forms' and ads' leads, forms), [`query`] (what to ask
//! of a form's or ad's leads), [`endpoints`] (access checks, tokens, subscriptions, test
//! leads).

mod batch;
mod connect;
mod conversions;
mod endpoints;
mod paging;
mod query;

pub use batch::BatchItem;
pub use connect::{Business, BusinessEdge, BusinessPage, ExchangedToken, PageAccount};
pub use paging::{MAX_PAGES, NextPage, Page};
pub use query::{LeadQuery, TimeFilter, TimeOperator};

use crate::error::{ErrorClass, GraphError};
use crate::models::ParseError;
use crate::usage::Usage;
use backon::{BackoffBuilder, ExponentialBuilder};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
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

    /// `appsecret_proof` for `token`, when an app secret is configured.
    fn proof(&self, token: &str) -> Option<String> {
        self.app_secret
            .as_ref()
            .map(|app_secret| appsecret_proof(app_secret.expose_secret(), token))
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
        let success = (200..300).contains(&status);
        let limit = if success {
            MAX_ANSWER_BYTES
        } else {
            MAX_ERROR_BYTES
        };
        let body = read_bounded(response, limit).await.map_err(|e| match e {
            Bounded::Transport(e) => transport_failure(operation, &e),
            Bounded::TooLarge => GraphError::local(
                operation.to_owned(),
                if success {
                    ErrorClass::Unreadable
                } else {
                    ErrorClass::classify(Some(status), None, None, false)
                },
                format!("HTTP {status}: the answer is larger than {limit} bytes; it was not read"),
            ),
        })?;
        if success {
            return Ok((body, usage));
        }
        let mut secrets = vec![secret];
        secrets.extend(proof.as_deref());
        secrets.extend(self.app_secret.as_ref().map(|s| s.expose_secret()));
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

/// The most of a successful answer that is read: a batch of 50 leads, or a page of 100
/// accounts or forms, is far less; anything larger is refused, never held.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;
/// The most of an error answer that is read (Meta's error JSON is a few hundred bytes).
pub const MAX_ERROR_BYTES: usize = 64 << 10;

enum Bounded {
    Transport(reqwest::Error),
    TooLarge,
}

/// The body as text, chunk by chunk, refused as soon as it passes `limit` bytes.
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<String, Bounded> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Bounded::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Bounded::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(Bounded::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn with_query(mut url: Url, params: &[(String, String)]) -> Url {
    if !params.is_empty() {
        url.query_pairs_mut()
            .extend_pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    url
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
