//! The backfill use case: read every form's (or ad's) leads since its checkpoint and store
//! the ones webhooks missed.
//!
//! Time is read in slices `[start, end)` (`time_created >= start AND < end`). A slice's
//! leads are written page by page; only when a whole slice is written does the checkpoint
//! move to its end. So a run cut short (deadline, rate limit, failure) loses at most the
//! slice it was in, which the next run reads again; nothing before the checkpoint is ever
//! unread, and the next run starts at `checkpoint - overlap` with `>=`, so a lead created
//! in the checkpoint's own second, or one Meta makes visible late, is still read.

mod run;
#[cfg(test)]
mod tests;

pub use run::{BackfillPorts, run_backfill};

use crate::ports::DeadLetterClass;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Tells the run when to stop starting new work.
pub trait Deadline: Send + Sync {
    /// True when no further Graph page should be started.
    fn near(&self) -> bool;
}

/// Stops `margin` before an instant: the Lambda deadline from the invocation context.
#[derive(Debug, Clone, Copy)]
pub struct InstantDeadline {
    /// The invocation's deadline.
    pub at: Instant,
    /// Stop starting Graph pages this long before it.
    pub margin: Duration,
}

impl Deadline for InstantDeadline {
    fn near(&self) -> bool {
        Instant::now() + self.margin >= self.at
    }
}

/// How backfill reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackfillSettings {
    /// Re-read this much before the checkpoint (late-visible leads, same-second leads).
    pub overlap: Duration,
    /// The width of a time slice; the most a cut-short run re-reads.
    pub slice: Duration,
    /// Leads per Graph page.
    pub page_size: u32,
    /// Where a form without a checkpoint starts: its creation, but no further back than
    /// this (Meta keeps leads for 90 days).
    pub lookback: Duration,
}

impl Default for BackfillSettings {
    fn default() -> Self {
        Self {
            overlap: Duration::from_secs(15 * 60),
            slice: Duration::from_secs(7 * 24 * 3600),
            page_size: 500,
            lookback: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

impl BackfillSettings {
    /// The `BACKFILL_*` settings (README, "Settings"), each defaulting as [`Default`] says:
    /// `BACKFILL_OVERLAP_SECONDS`, `BACKFILL_SLICE_SECONDS`, `BACKFILL_PAGE_SIZE` (1 to
    /// 1000), `BACKFILL_LOOKBACK_SECONDS`. Read by the Lambda and by the local binary alike.
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &crate::settings::Env<F>,
    ) -> Result<Self, crate::settings::SettingsError> {
        use crate::settings::SettingsError;
        let defaults = Self::default();
        // A slice or a lookback of zero would read nothing; an overlap of zero is allowed.
        let positive = |name: &'static str, default: Duration| {
            env.seconds(name, default).and_then(|d| match d.is_zero() {
                false => Ok(d),
                true => Err(SettingsError::Invalid {
                    name,
                    why: "it must be a whole number of seconds".into(),
                }),
            })
        };
        let page_size = match env.optional("BACKFILL_PAGE_SIZE") {
            None => defaults.page_size,
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or(SettingsError::Invalid {
                    name: "BACKFILL_PAGE_SIZE",
                    why: "it must be a number from 1 to 1000".into(),
                })?,
        };
        Ok(Self {
            overlap: env.seconds("BACKFILL_OVERLAP_SECONDS", defaults.overlap)?,
            slice: positive("BACKFILL_SLICE_SECONDS", defaults.slice)?,
            page_size,
            lookback: positive("BACKFILL_LOOKBACK_SECONDS", defaults.lookback)?,
        })
    }
}

/// A time given as unix seconds, or as text [`crate::when::parse_time`] reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TimeArg {
    /// Unix seconds.
    Unix(i64),
    /// Unix seconds as text, RFC 3339, a date or a span back from now.
    Text(String),
}

/// Lead Ads began in 2015: no lead is older than this (2015-01-01T00:00:00Z).
pub const EARLIEST_LEAD: i64 = 1_420_070_400;

impl TimeArg {
    /// The time as unix seconds, between [`EARLIEST_LEAD`] and a day after `now`: a time
    /// outside that is a mistake, and far outside it would overflow the slice arithmetic.
    fn unix_within(&self, name: &'static str, now: i64) -> Result<i64, RequestError> {
        let at = self.unix(name, now)?;
        let latest = now.saturating_add(86_400);
        if (EARLIEST_LEAD..=latest).contains(&at) {
            Ok(at)
        } else {
            Err(RequestError(format!(
                "{name} must be between 2015-01-01T00:00:00Z ({EARLIEST_LEAD}) and a day from now ({latest})"
            )))
        }
    }

    fn unix(&self, name: &'static str, now: i64) -> Result<i64, RequestError> {
        match self {
            TimeArg::Unix(s) => Ok(*s),
            TimeArg::Text(t) => crate::when::parse_time(t, now).ok_or(RequestError(format!(
                "{name} is not a time: give {}",
                crate::when::ACCEPTED
            ))),
        }
    }
}

/// An ad to read, with the page whose token reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AdTarget {
    /// An ad id; the request must name exactly one page, whose token reads it.
    Id(String),
    /// An ad id with the page whose token reads it.
    WithPage {
        /// The ad.
        ad_id: String,
        /// The page whose token reads it.
        page_id: String,
    },
}

/// An on-demand run's payload: `{"pages","forms","ads","from","to","dry_run"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// Pages to read (default: every configured page).
    #[serde(default)]
    pub pages: Vec<String>,
    /// Only these forms.
    #[serde(default)]
    pub forms: Vec<String>,
    /// Ads to read by ad.
    #[serde(default)]
    pub ads: Vec<AdTarget>,
    /// Start of a one-off window (moves no checkpoint).
    #[serde(default)]
    pub from: Option<TimeArg>,
    /// End of the window (exclusive); default now.
    #[serde(default)]
    pub to: Option<TimeArg>,
    /// Read and count, store nothing, move no checkpoint.
    #[serde(default)]
    pub dry_run: bool,
}

/// A payload that cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backfill request: {0}")]
pub struct RequestError(pub String);

/// What one run does, resolved from a request (or a schedule) and the configured pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillPlan {
    /// Pages whose forms are read.
    pub pages: Vec<String>,
    /// Only these forms, when given.
    pub forms: Option<BTreeSet<String>>,
    /// `(page_id, ad_id)` pairs to read by ad.
    pub ads: Vec<(String, String)>,
    /// An explicit window `[from, to)`; checkpoints are neither read nor moved.
    pub window: Option<(i64, Option<i64>)>,
    /// Read and count, store nothing, move no checkpoint.
    pub dry_run: bool,
}

impl BackfillPlan {
    /// The pages the run visits: the planned ones, then those only the planned ads name.
    pub fn page_ids(&self) -> Vec<&str> {
        let mut pages: Vec<&str> = self.pages.iter().map(String::as_str).collect();
        for (page, _) in &self.ads {
            if !pages.contains(&page.as_str()) {
                pages.push(page);
            }
        }
        pages
    }

    /// The scheduled run: every configured page, every form, from the checkpoints.
    pub fn scheduled(configured_pages: &[String]) -> Self {
        Self {
            pages: configured_pages.to_vec(),
            forms: None,
            ads: Vec::new(),
            window: None,
            dry_run: false,
        }
    }

    /// An on-demand run. Pages default to the configured ones; ads given as bare ids need
    /// exactly one page to take the token from.
    pub fn from_request(
        request: BackfillRequest,
        configured_pages: &[String],
        now: OffsetDateTime,
    ) -> Result<Self, RequestError> {
        let now = now.unix_timestamp();
        let pages = if request.pages.is_empty() {
            configured_pages.to_vec()
        } else {
            request.pages.clone()
        };
        let mut ads = Vec::new();
        for ad in request.ads {
            match ad {
                AdTarget::WithPage { ad_id, page_id } => ads.push((page_id, ad_id)),
                AdTarget::Id(ad_id) => match pages.as_slice() {
                    [page] => ads.push((page.clone(), ad_id)),
                    _ => {
                        return Err(RequestError(format!(
                            "ad {ad_id} needs its page: give {{\"ad_id\",\"page_id\"}} or exactly one page in \"pages\""
                        )));
                    }
                },
            }
        }
        let from = request
            .from
            .as_ref()
            .map(|f| f.unix_within("from", now))
            .transpose()?;
        let to = request
            .to
            .as_ref()
            .map(|t| t.unix_within("to", now))
            .transpose()?;
        let window = match (from, to) {
            (Some(from), to) => Some((from, to)),
            (None, Some(_)) => return Err(RequestError("\"to\" needs a \"from\"".into())),
            (None, None) => None,
        };
        if let Some((from, Some(to))) = window
            && to <= from
        {
            return Err(RequestError("\"to\" must be after \"from\"".into()));
        }
        let forms = (!request.forms.is_empty()).then(|| request.forms.into_iter().collect());
        Ok(Self {
            // Ads alone means only those ads: no page's forms are listed.
            pages: if !ads.is_empty() && forms.is_none() {
                Vec::new()
            } else {
                pages
            },
            forms,
            ads,
            window,
            dry_run: request.dry_run,
        })
    }
}

/// What backfill reads a node's leads from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A lead form (`GET /{form-id}/leads`).
    #[default]
    Form,
    /// An ad (`GET /{ad-id}/leads`).
    Ad,
}

impl NodeKind {
    /// `form` or `ad`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Form => "form",
            Self::Ad => "ad",
        }
    }

    /// The state table's key for this node's checkpoint: `form#<id>` or `ad#<id>`.
    pub fn checkpoint_key(self, id: &str) -> String {
        CheckpointKey::new(self, id).to_string()
    }
}

/// A checkpoint's key in the state table, `form#<id>` or `ad#<id>`: read back with
/// [`parse`](Self::parse), the inverse of [`NodeKind::checkpoint_key`]. Other items share
/// the table (`formdef#`, `token#`, `stage#`); they are no checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckpointKey {
    /// A form's or an ad's.
    pub kind: NodeKind,
    /// Its Graph id.
    pub id: String,
}

impl CheckpointKey {
    /// The key of `kind`'s node `id`.
    pub fn new(kind: NodeKind, id: &str) -> Self {
        Self {
            kind,
            id: id.to_owned(),
        }
    }

    /// `form#<id>` or `ad#<id>` with a Graph id (digits); `None` for any other key.
    pub fn parse(key: &str) -> Option<Self> {
        let (kind, id) = key.split_once('#')?;
        let kind = match kind {
            "form" => NodeKind::Form,
            "ad" => NodeKind::Ad,
            _ => return None,
        };
        (!id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_digit()))
            .then(|| Self::new(kind, id))
    }

    /// The form's id, for a form's checkpoint.
    pub fn form_id(&self) -> Option<&str> {
        (self.kind == NodeKind::Form).then_some(self.id.as_str())
    }
}

impl std::fmt::Display for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.kind.as_str(), self.id)
    }
}

/// Written as the key itself (`status --json`'s `checkpoints[].key`).
impl Serialize for CheckpointKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A lead backfill read but could not store: recorded in the summary, logged at WARN and,
/// when it has an id, dead-lettered with its class so `redrive` can replay it after a fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProblemLead {
    /// The lead's id, when Graph's item had a readable one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lead_id: Option<String>,
    /// Why it could not be stored.
    pub class: DeadLetterClass,
    /// What was wrong (a parse error's place, a size): never the lead's values.
    pub detail: String,
}

/// How a form's or ad's read ended (the summary's `status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Read to the end of its window; its checkpoint is at the end.
    #[default]
    Done,
    /// The deadline, a rate limit or a refused token stopped it; the next run resumes.
    Stopped,
    /// Graph refused it for good (permission, gone); nothing to resume.
    Skipped,
    /// A transient failure or the store stopped it; the next run reads it again.
    Failed,
}

/// How a page ended (the summary's `status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PageStatus {
    /// Every form and ad read.
    #[default]
    Done,
    /// Not read: no lead access, a refused token, or Graph refused it.
    Skipped,
    /// Rate limited; the next run resumes.
    RateLimited,
    /// The run's deadline came first; the next run resumes.
    Stopped,
    /// Some forms or ads failed; the others were read.
    Partial,
}

/// One form's or ad's part of the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeSummary {
    /// A form or an ad.
    pub kind: NodeKind,
    /// Its Graph id.
    pub id: String,
    /// Leads Graph returned.
    pub leads_read: u64,
    /// Leads this run stored first.
    pub new: u64,
    /// Leads that were stored already.
    pub already_present: u64,
    /// Items Graph returned that do not parse.
    pub unreadable: u64,
    /// Leads too large for the store even without `raw`.
    pub too_large: u64,
    /// Each unreadable or too-large lead.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problem_leads: Vec<ProblemLead>,
    /// The checkpoint the run started from.
    pub checkpoint_before: Option<i64>,
    /// The checkpoint after the run (moved only past written slices).
    pub checkpoint_after: Option<i64>,
    /// How the read ended.
    pub status: NodeStatus,
    /// Why, when it did not end `done`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The class of the Graph error that stopped this node, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph_error: Option<&'static str>,
}

/// One page's part of the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PageSummary {
    /// The page's Graph id.
    pub page_id: String,
    /// How the page ended.
    pub status: PageStatus,
    /// Why, when it did not end `done`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Each form and ad of the page.
    pub nodes: Vec<NodeSummary>,
}

impl BackfillSummary {
    /// The run's counts, for the edge to turn into metrics (with `graph_errors` by class).
    pub fn metrics(&self) -> [(&'static str, u64); 5] {
        use crate::tokens::TokenState;
        let count = |pick: fn(TokenState) -> bool| {
            self.page_tokens.iter().filter(|t| pick(t.state)).count() as u64
        };
        [
            ("LeadsRecovered", self.new),
            ("LeadsRead", self.leads_read),
            ("DuplicatesSkipped", self.already_present),
            // Pages whose leads are refused now (an invalid token, or no lead access).
            (
                "PageTokensInvalid",
                count(|s| matches!(s, TokenState::Invalid | TokenState::NoLeadAccess)),
            ),
            (
                "PageTokensExpiringSoon",
                count(|s| s == TokenState::ExpiringSoon),
            ),
        ]
    }
}

/// The run's JSON summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BackfillSummary {
    /// A dry run stored nothing.
    pub dry_run: bool,
    /// The deadline came before the end; the next run resumes.
    pub stopped_by_deadline: bool,
    /// Leads Graph returned, in all.
    pub leads_read: u64,
    /// Leads stored first by this run.
    pub new: u64,
    /// Leads that were stored already.
    pub already_present: u64,
    /// Graph failures that stopped a page or a form, by class.
    pub graph_errors: std::collections::BTreeMap<String, u64>,
    /// Each page.
    pub pages: Vec<PageSummary>,
    /// Each page's token, as this run found it (`crate::tokens`).
    pub page_tokens: Vec<crate::tokens::PageTokenHealth>,
}
