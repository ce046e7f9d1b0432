//! leadpipe's Graph API client for Lead Ads. No AWS in it.
//!
//! Two layers: the Graph vocabulary ([`models`], [`error`], [`usage`]: leads, forms, access,
//! one classified error type) always, and the HTTP client behind the `client` feature (on by
//! default). leadpipe-core takes the vocabulary alone, so no HTTP stack reaches the core.
//!
//! Every call sends `appsecret_proof` when an app secret is configured, retries transient
//! failures with bounded exponential backoff and jitter (honouring Meta's usage headers),
//! and fails with one [`GraphError`] whose [`ErrorClass`] says what to do next. Access tokens
//! never appear in an error's text or `Debug`, nor in a log line.
//!
//! ```no_run
//! use futures::TryStreamExt;
//! use leadpipe_graph::{GraphClient, GraphConfig, LeadQuery, TimeOperator};
//! use secrecy::SecretString;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = GraphClient::new(GraphConfig {
//!     app_secret: Some(SecretString::from("app secret")),
//!     ..GraphConfig::default()
//! })?;
//! let token = SecretString::from("page access token");
//!
//! // One lead, then a form's leads created after a checkpoint, page by page.
//! let lead = client.lead(&token, "1234567890").await?;
//! println!("lead {} has {} answers", lead.id, lead.field_data.len());
//! let query = LeadQuery::default().with_time(TimeOperator::GreaterThan, 1_764_000_000);
//! let mut pages = std::pin::pin!(client.form_leads(&token, "555", &query));
//! while let Some(page) = pages.try_next().await? {
//!     println!("{} leads", page.items.len());
//! }
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
// GraphError is large (Meta's fields plus usage headers) but only ever built after a network
// round trip; boxing it would cost every caller a Deref to save bytes on a slow path.
#![allow(clippy::result_large_err)]

#[cfg(feature = "client")]
mod client;
pub mod error;
pub mod models;
pub mod usage;

#[cfg(feature = "client")]
pub use client::{
    BatchItem, Business, BusinessEdge, BusinessPage, DEFAULT_API_VERSION, DEFAULT_BASE_URL,
    DEFAULT_LEAD_FIELDS, ExchangedToken, GraphClient, GraphConfig, LeadQuery, MAX_ANSWER_BYTES,
    MAX_ERROR_BYTES, MAX_PAGES, NextPage, Page, PageAccount, RetryPolicy, TimeFilter, TimeOperator,
    appsecret_proof,
};
pub use error::{ErrorClass, GraphError};
pub use models::{
    DisclaimerResponse, FieldData, HasLeadAccess, Lead, LeadgenForm, ParseError, SubscribedApp,
    TokenInfo, TokenProblem, how_to_grant,
};
pub use usage::Usage;
