//! leadpipe's domain, free of AWS and of Lambda.
//!
//! * [`webhook`]: Meta's `leadgen` webhook payload, tolerant of ids sent as strings or numbers.
//! * [`signature`]: the `X-Hub-Signature-256` check over the raw body, in constant time.
//! * [`event`]: the [`LeadEvent`](event::LeadEvent) queue message, exactly as docs/architecture.md's contract.
//! * [`ports`]: the narrow traits the adapters implement (queue, lead store, Graph reads, checkpoints).
//! * [`accept`]: the webhook use case: verify, parse, queue, and say what to answer Meta.
//! * [`ingest`]: queued lead events to stored leads, message by message.
//! * [`backfill`]: forms' and ads' leads since their checkpoints, in resumable time slices.
//! * [`lead_received`]: lead event v1 and the deliver use case (one event per first write).
//! * [`memory`]: in-memory fakes of every port, for the use cases' own tests.
//!
//! The use cases return reports ([`ingest::IngestReport`], [`backfill::BackfillSummary`],
//! [`accept::WebhookResponse`]) with their counts; the edges turn those into metrics. No
//! adapter is a dependency here: no HTTP client, AWS SDK, SQLite or log subscriber
//! (docs/architecture.md, "Layers").
//! * [`forms`] and [`readable`]: the forms catalog, and a lead read by its questions' labels
//!   with a normalised [`contact`].
//! * [`tokens`]: the page tokens a process holds, and the re-read before a token failure
//!   dead-letters a page's leads.
//! * [`privacy`]: lookup keys (HMAC of email and phone) and retention, for `forget` and TTL.
//! * [`stages`]: lead stages back to Meta through the Conversions API, checked and sent once.
//! * [`destinations`]: CRMs and chats a lead goes to: the file, the mapping, the forwarder.
//! * [`secrets`] and [`settings`]: the typed settings every binary reads once at start.

#![warn(missing_docs)]
// GraphError is large but only built after a network round trip (see leadpipe-graph).
#![allow(clippy::result_large_err)]

pub mod accept;
pub mod backfill;
pub mod contact;
pub mod contract;
pub mod dead_letter;
pub mod destinations;
pub mod erasure;
pub mod event;
pub mod export;
pub mod failure;
pub mod forms;
pub mod ids;
pub mod ingest;
pub mod json_error;
pub mod lead_received;
pub mod lead_row;
pub mod memory;
pub mod ports;
pub mod privacy;
pub mod readable;
pub mod record;
pub mod redrive;
pub mod secrets;
pub mod settings;
pub mod signature;
pub mod stages;
pub mod status;
pub mod tokens;
pub mod webhook;
pub mod when;
