//! A stand-in for the Graph endpoints leadpipe uses, over generated data, for tests and
//! the demo; and a sender that delivers signed webhook posts as Meta does (with the
//! duplicates, reordering and drops Meta is known for).
//!
//! Endpoints (any version prefix): `GET /{lead}`, `POST /` (batch), `GET /{form|ad}/leads`
//! (`filtering` on time_created, `limit`, `after` cursors, `paging.next`), `GET
//! /{page}/leadgen_forms`, `GET /{page}?fields=has_lead_access...`, `GET /debug_token`,
//! `GET|POST /{page}/subscribed_apps`, `GET|POST /{form}/test_leads`, `DELETE /{test lead}`,
//! `GET /oauth/access_token` (token exchange), `GET /me/accounts`, `POST /{app}/subscriptions`
//! (with the challenge to the callback, and a signed webhook for each test lead after),
//! `POST /{dataset}/events` and `GET /{dataset}` (the Conversions API, [`conversions`]).
//! [`crm`]: stand-ins of HubSpot, Salesforce, Pipedrive and Slack for the destinations.

#![warn(missing_docs)]
pub mod accounts;
pub mod conversions;
pub mod crm;
pub mod data;
pub mod sender;
pub mod server;

pub use accounts::{Accounts, SandboxBusiness, TokenKind, UserToken};
pub use data::{Dataset, DatasetSpec, SandboxLead};
pub use sender::{SendReport, WebhookSender};
pub use server::{Faults, Sandbox};
