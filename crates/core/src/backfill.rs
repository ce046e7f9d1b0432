//! The backfill use case: read every form's (or ad's) leads since its checkpoint and store
//! the ones webhooks missed.
//!
//! Time is read in slices `[start, end)` (`time_created >= start AND < end`). A slice's
//! leads are written page by page; only when a whole slice is written does the checkpoint
//! move to its end. So a run cut short (deadline, rate limit, failure) loses at most the
//! slice it was in, which the next run reads again; nothing before the checkpoint is ever
//! unread, and the next run starts at `checkpoint - overlap` with `>=`, so a lead created
//! in the checkpoint's own second, or one Meta makes visible late, is still read.

use crate::event::LeadEvent;
use crate::ports::TimeWindow;
use crate::ports::{
    BackfillSource, CheckpointStore, DeadLetterClass, DeadLetterReason, LeadSourceKind, LeadStore,
    PutOutcome, QueueControl, RunFacts, StoredLead,
};
use leadpipe_graph::{ErrorClass, GraphError, LeadgenForm};
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
    pub at: Instant,
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
        let seconds = |name: &'static str, default: Duration| match env.optional(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s > 0 || name == "BACKFILL_OVERLAP_SECONDS")
                .map(Duration::from_secs)
                .ok_or(SettingsError::Invalid {
                    name,
                    why: "it must be a whole number of seconds".into(),
                }),
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
            overlap: seconds("BACKFILL_OVERLAP_SECONDS", defaults.overlap)?,
            slice: seconds("BACKFILL_SLICE_SECONDS", defaults.slice)?,
            page_size,
            lookback: seconds("BACKFILL_LOOKBACK_SECONDS", defaults.lookback)?,
        })
    }
}

/// A time given as unix seconds or RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TimeArg {
    Unix(i64),
    Text(String),
}

/// Lead Ads began in 2015: no lead is older than this (2015-01-01T00:00:00Z).
pub const EARLIEST_LEAD: i64 = 1_420_070_400;

impl TimeArg {
    /// The time as unix seconds, between [`EARLIEST_LEAD`] and a day after `now`: a time
    /// outside that is a mistake, and far outside it would overflow the slice arithmetic.
    fn unix_within(&self, name: &'static str, now: i64) -> Result<i64, RequestError> {
        let at = self.unix(name)?;
        let latest = now.saturating_add(86_400);
        if (EARLIEST_LEAD..=latest).contains(&at) {
            Ok(at)
        } else {
            Err(RequestError(format!(
                "{name} must be between 2015-01-01T00:00:00Z ({EARLIEST_LEAD}) and a day from now ({latest}), as unix seconds or RFC 3339"
            )))
        }
    }

    fn unix(&self, name: &'static str) -> Result<i64, RequestError> {
        match self {
            TimeArg::Unix(s) => Ok(*s),
            TimeArg::Text(t) => t
                .parse::<i64>()
                .ok()
                .or_else(|| {
                    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                        .map(|d| d.unix_timestamp())
                })
                .ok_or(RequestError(format!(
                    "{name} is neither unix seconds nor RFC 3339"
                ))),
        }
    }
}

/// An ad to read, with the page whose token reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AdTarget {
    Id(String),
    WithPage { ad_id: String, page_id: String },
}

/// An on-demand run's payload: `{"pages","forms","ads","from","to","dry_run"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    #[serde(default)]
    pub pages: Vec<String>,
    #[serde(default)]
    pub forms: Vec<String>,
    #[serde(default)]
    pub ads: Vec<AdTarget>,
    #[serde(default)]
    pub from: Option<TimeArg>,
    #[serde(default)]
    pub to: Option<TimeArg>,
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
    pub pages: Vec<String>,
    /// Only these forms, when given.
    pub forms: Option<BTreeSet<String>>,
    /// `(page_id, ad_id)` pairs to read by ad.
    pub ads: Vec<(String, String)>,
    /// An explicit window `[from, to)`; checkpoints are neither read nor moved.
    pub window: Option<(i64, Option<i64>)>,
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
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
        format!("{}#{id}", self.as_str())
    }
}

/// A lead backfill read but could not store: recorded in the summary, logged at WARN and,
/// when it has an id, dead-lettered with its class so `redrive` can replay it after a fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProblemLead {
    /// The lead's id, when Graph's item had a readable one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lead_id: Option<String>,
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
    pub kind: NodeKind,
    pub id: String,
    pub leads_read: u64,
    pub new: u64,
    pub already_present: u64,
    pub unreadable: u64,
    /// Leads too large for the store even without `raw`.
    pub too_large: u64,
    /// Each unreadable or too-large lead.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problem_leads: Vec<ProblemLead>,
    pub checkpoint_before: Option<i64>,
    pub checkpoint_after: Option<i64>,
    pub status: NodeStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The class of the Graph error that stopped this node, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph_error: Option<&'static str>,
}

/// One page's part of the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PageSummary {
    pub page_id: String,
    pub status: PageStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub nodes: Vec<NodeSummary>,
}

impl BackfillSummary {
    /// The run's counts, for the edge to turn into metrics (with `graph_errors` by class).
    pub fn metrics(&self) -> [(&'static str, u64); 3] {
        [
            ("LeadsRecovered", self.new),
            ("LeadsRead", self.leads_read),
            ("DuplicatesSkipped", self.already_present),
        ]
    }
}

/// The run's JSON summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BackfillSummary {
    pub dry_run: bool,
    pub stopped_by_deadline: bool,
    pub leads_read: u64,
    pub new: u64,
    pub already_present: u64,
    /// Graph failures that stopped a page or a form, by class.
    pub graph_errors: std::collections::BTreeMap<String, u64>,
    pub pages: Vec<PageSummary>,
}

enum NodeEnd {
    Done,
    Deadline,
    PageStop(PageStatus, String),
    NodeStop(NodeStatus, String),
}

/// The ports a backfill run uses.
#[derive(Debug, Clone, Copy)]
pub struct BackfillPorts<'a, S, L, C, Q> {
    /// Graph, per page.
    pub source: &'a S,
    /// The leads table.
    pub store: &'a L,
    /// The state table.
    pub checkpoints: &'a C,
    /// Where unreadable and too-large leads go, queue-shaped, for a later redrive.
    pub dead_letters: &'a Q,
}

/// Runs the plan. Never fails as a whole; what could not be done is in the summary.
pub async fn run_backfill<S, L, C, Q, D>(
    ports: &BackfillPorts<'_, S, L, C, Q>,
    deadline: &D,
    plan: &BackfillPlan,
    settings: &BackfillSettings,
    now: OffsetDateTime,
) -> BackfillSummary
where
    S: BackfillSource,
    L: LeadStore,
    C: CheckpointStore,
    Q: QueueControl,
    D: Deadline,
{
    let mut summary = BackfillSummary {
        dry_run: plan.dry_run,
        ..BackfillSummary::default()
    };
    for page_id in plan.page_ids() {
        let span = tracing::info_span!("backfill_page", page_id);
        let _entered = span.enter();
        let page = backfill_page(ports, deadline, plan, settings, now, page_id, &mut summary).await;
        summary.pages.push(page);
    }
    tracing::info!(
        leads_read = summary.leads_read,
        new = summary.new,
        already_present = summary.already_present,
        pages = summary.pages.len(),
        stopped_by_deadline = summary.stopped_by_deadline,
        dry_run = summary.dry_run,
        "backfill run"
    );
    summary
}

/// One form or ad to read, with the form's creation (where its first run starts).
type Target = (NodeKind, String, Option<i64>);

/// One page: its lead access, its targets, each target read in turn.
async fn backfill_page<S, L, C, Q, D>(
    ports: &BackfillPorts<'_, S, L, C, Q>,
    deadline: &D,
    plan: &BackfillPlan,
    settings: &BackfillSettings,
    now: OffsetDateTime,
    page_id: &str,
    summary: &mut BackfillSummary,
) -> PageSummary
where
    S: BackfillSource,
    L: LeadStore,
    C: CheckpointStore,
    Q: QueueControl,
    D: Deadline,
{
    let mut page = PageSummary {
        page_id: page_id.to_owned(),
        ..PageSummary::default()
    };
    if deadline.near() {
        page.status = PageStatus::Stopped;
        page.reason = Some("the run's deadline came first; the next run covers it".into());
        summary.stopped_by_deadline = true;
        return page;
    }
    let targets = match page_targets(ports.source, plan, page_id).await {
        Ok(Ok(targets)) => targets,
        Ok(Err(denied)) => {
            tracing::warn!(diagnosis = %denied, "page skipped: no lead access");
            page.status = PageStatus::Skipped;
            page.reason = Some(format!("no lead access: {denied}"));
            return page;
        }
        Err((err, doing)) => {
            *summary
                .graph_errors
                .entry(err.class().as_str().to_owned())
                .or_insert(0) += 1;
            let (status, reason) = page_error(&err, doing);
            page.status = status;
            page.reason = Some(reason);
            return page;
        }
    };
    for (index, (kind, node_id, created)) in targets.iter().enumerate() {
        let mut node = NodeSummary {
            kind: *kind,
            id: node_id.clone(),
            ..NodeSummary::default()
        };
        let run = NodeRun {
            plan,
            settings,
            now,
            page_id,
            created: *created,
        };
        let end = read_node(ports, deadline, &run, &mut node).await;
        summary.leads_read += node.leads_read;
        summary.new += node.new;
        summary.already_present += node.already_present;
        match end {
            NodeEnd::Done => page.nodes.push(node),
            NodeEnd::NodeStop(status, reason) => {
                node.status = status;
                node.reason = Some(reason);
                page.status = PageStatus::Partial;
                page.nodes.push(node);
            }
            NodeEnd::Deadline => {
                node.status = NodeStatus::Stopped;
                node.reason =
                    Some("the run's deadline came first; the next run resumes here".into());
                page.nodes.push(node);
                page.status = PageStatus::Stopped;
                summary.stopped_by_deadline = true;
                page.nodes.extend(
                    targets[index + 1..]
                        .iter()
                        .map(|(kind, id, _)| NodeSummary {
                            kind: *kind,
                            id: id.clone(),
                            status: NodeStatus::Stopped,
                            reason: Some("not reached before the deadline".into()),
                            ..NodeSummary::default()
                        }),
                );
                break;
            }
            NodeEnd::PageStop(status, reason) => {
                node.status = NodeStatus::Stopped;
                node.reason = Some(reason.clone());
                page.nodes.push(node);
                page.status = status;
                page.reason = Some(reason);
                break;
            }
        }
    }
    page
}

/// What to read on a page: its forms (when the plan covers the page; only the planned forms
/// when it names some) and the planned ads, after checking the token may read the page's
/// leads. `Ok(Err(diagnosis))` when access is denied, in Meta's words; `Err` with what was
/// being done when Graph failed.
async fn page_targets<S: BackfillSource>(
    source: &S,
    plan: &BackfillPlan,
    page_id: &str,
) -> Result<Result<Vec<Target>, String>, (GraphError, &'static str)> {
    let access = source
        .lead_access(page_id)
        .await
        .map_err(|e| (e, "checking lead access"))?;
    if !access.can_access_lead {
        return Ok(Err(access.diagnosis()));
    }
    let mut targets: Vec<Target> = Vec::new();
    if plan.pages.iter().any(|p| p == page_id) {
        let forms = source
            .forms(page_id)
            .await
            .map_err(|e| (e, "listing forms"))?;
        targets.extend(
            forms
                .into_iter()
                .filter(|f| plan.forms.as_ref().is_none_or(|only| only.contains(&f.id)))
                .map(|f: LeadgenForm| {
                    let created = f.created_time.map(|t| t.unix_timestamp());
                    (NodeKind::Form, f.id, created)
                }),
        );
    }
    targets.extend(
        plan.ads
            .iter()
            .filter(|(p, _)| p == page_id)
            .map(|(_, ad)| (NodeKind::Ad, ad.clone(), None)),
    );
    Ok(Ok(targets))
}

/// How a page-level Graph failure is reported.
fn page_error(err: &GraphError, doing: &str) -> (PageStatus, String) {
    match err.class() {
        ErrorClass::Token => {
            tracing::error!(error = %err, "ACCESS TOKEN REFUSED: page skipped until a new token is put in the secret");
            (
                PageStatus::Skipped,
                format!("token refused while {doing}: {err}"),
            )
        }
        ErrorClass::RateLimited => {
            tracing::warn!(error = %err, "rate limited; page left for the next run");
            (
                PageStatus::RateLimited,
                format!("rate limited while {doing}; the next run resumes: {err}"),
            )
        }
        _ => {
            tracing::warn!(error = %err, class = %err.class(), "page skipped");
            (
                PageStatus::Skipped,
                format!("{} while {doing}: {err}", err.class()),
            )
        }
    }
}

/// What one node's read needs besides the ports.
struct NodeRun<'a> {
    plan: &'a BackfillPlan,
    settings: &'a BackfillSettings,
    now: OffsetDateTime,
    page_id: &'a str,
    /// The form's creation time, where the first run of a new form starts.
    created: Option<i64>,
}

async fn read_node<S, L, C, Q, D>(
    ports: &BackfillPorts<'_, S, L, C, Q>,
    deadline: &D,
    run: &NodeRun<'_>,
    node: &mut NodeSummary,
) -> NodeEnd
where
    S: BackfillSource,
    L: LeadStore,
    C: CheckpointStore,
    Q: QueueControl,
    D: Deadline,
{
    let BackfillPorts {
        source,
        store,
        checkpoints,
        ..
    } = *ports;
    let NodeRun {
        plan,
        settings,
        now,
        page_id,
        created,
    } = *run;
    let key = node.kind.checkpoint_key(&node.id);
    let now_unix = now.unix_timestamp();
    let (start, end, moves_checkpoint) = match plan.window {
        Some((from, to)) => (from, to.unwrap_or(now_unix), false),
        None => {
            let checkpoint = match checkpoints.checkpoint(&key).await {
                Ok(c) => c,
                Err(err) => {
                    return NodeEnd::NodeStop(
                        NodeStatus::Failed,
                        format!("checkpoint unreadable: {err}"),
                    );
                }
            };
            node.checkpoint_before = checkpoint;
            let start = match checkpoint {
                Some(c) => c - settings.overlap.as_secs() as i64,
                None => {
                    let floor = now_unix - settings.lookback.as_secs() as i64;
                    created.map_or(floor, |c| c.max(floor))
                }
            };
            (start, now_unix, !plan.dry_run)
        }
    };
    node.checkpoint_after = node.checkpoint_before;
    let slice = (settings.slice.as_secs() as i64).max(1);
    let mut slice_start = start;
    while slice_start < end {
        let slice_end = (slice_start + slice).min(end);
        let window = TimeWindow {
            start: slice_start,
            end: slice_end,
            page_size: settings.page_size,
        };
        let mut slice_facts = RunFacts::default();
        let mut next = None;
        loop {
            if deadline.near() {
                return NodeEnd::Deadline;
            }
            let page = match &next {
                None => source.lead_page(page_id, &node.id, &window).await,
                Some(after) => source.lead_page_after(page_id, after).await,
            };
            let page = match page {
                Ok(page) => page,
                Err(err) => {
                    return match err.class() {
                        ErrorClass::RateLimited | ErrorClass::Token => {
                            let (status, reason) = page_error(&err, "reading leads");
                            NodeEnd::PageStop(status, reason)
                        }
                        class => {
                            tracing::warn!(node = %key, error = %err, "leads could not be read");
                            NodeEnd::NodeStop(
                                if class == ErrorClass::Transient {
                                    NodeStatus::Failed
                                } else {
                                    NodeStatus::Skipped
                                },
                                format!("{class} while reading leads: {err}"),
                            )
                        }
                    };
                }
            };
            node.unreadable += page.unreadable.len() as u64;
            node.leads_read += page.leads.len() as u64;
            slice_facts.leads_read += page.leads.len() as u64;
            for err in &page.unreadable {
                let problem = ProblemLead {
                    lead_id: err.id.clone(),
                    class: DeadLetterClass::Unreadable,
                    detail: err.to_string(),
                };
                if let Err(stop) = record_problem(ports, run, node, problem).await {
                    return stop;
                }
            }
            if !plan.dry_run && !page.leads.is_empty() {
                let ingested_at = OffsetDateTime::now_utc();
                let leads: Vec<StoredLead> = page
                    .leads
                    .iter()
                    .map(|lead| StoredLead {
                        // An ad lead with no form keeps no form_id (never ""): by_form
                        // refuses empty keys.
                        form_id: lead
                            .form_id
                            .clone()
                            .or_else(|| (node.kind == NodeKind::Form).then(|| node.id.clone())),
                        lead: lead.clone(),
                        page_id: page_id.to_owned(),
                        source: LeadSourceKind::Backfill,
                        ingested_at,
                    })
                    .collect();
                match store.put_leads(&leads).await {
                    Ok(outcomes) => {
                        let (mut new, mut present) = (0u64, 0u64);
                        for (stored, outcome) in leads.iter().zip(&outcomes) {
                            match outcome {
                                PutOutcome::Inserted => new += 1,
                                PutOutcome::AlreadyPresent => present += 1,
                                PutOutcome::TooLarge { bytes } => {
                                    let problem = ProblemLead {
                                        lead_id: Some(stored.lead.id.clone()),
                                        class: DeadLetterClass::TooLarge,
                                        detail: format!(
                                            "the lead needs {bytes} bytes as a DynamoDB item even without raw, over the 400 KB limit"
                                        ),
                                    };
                                    if let Err(stop) =
                                        record_problem(ports, run, node, problem).await
                                    {
                                        return stop;
                                    }
                                }
                            }
                        }
                        node.new += new;
                        node.already_present += present;
                        slice_facts.new += new;
                        slice_facts.already_present += present;
                        if new > 0 {
                            tracing::info!(node = %key, recovered = new, "backfill recovered leads");
                        }
                    }
                    Err(err) => {
                        return NodeEnd::NodeStop(NodeStatus::Failed, format!("lead store: {err}"));
                    }
                }
            }
            match page.next {
                Some(after) => next = Some(after),
                None => break,
            }
        }
        if moves_checkpoint {
            if let Err(err) = checkpoints
                .save_checkpoint(&key, slice_end, &slice_facts)
                .await
            {
                return NodeEnd::NodeStop(
                    NodeStatus::Failed,
                    format!("checkpoint not saved: {err}"),
                );
            }
            node.checkpoint_after = Some(slice_end);
        }
        slice_start = slice_end;
    }
    NodeEnd::Done
}

/// Records a lead that could not be stored: in the node's summary, at WARN, and (unless a
/// dry run, and when it has an id) as a queue-shaped dead letter with its class, so it is
/// replayed by a redrive once fixed. If that send fails the node stops before its
/// checkpoint moves, so the next run reads the lead again: nothing is skipped unrecorded.
async fn record_problem<S, L, C, Q>(
    ports: &BackfillPorts<'_, S, L, C, Q>,
    run: &NodeRun<'_>,
    node: &mut NodeSummary,
    problem: ProblemLead,
) -> Result<(), NodeEnd>
where
    Q: QueueControl,
{
    tracing::warn!(
        node = %node.kind.checkpoint_key(&node.id),
        lead_id = problem.lead_id.as_deref(),
        class = %problem.class,
        detail = %problem.detail,
        "a lead could not be stored; recorded for a redrive"
    );
    if problem.class == DeadLetterClass::TooLarge {
        node.too_large += 1;
    }
    if let (false, Some(lead_id)) = (run.plan.dry_run, &problem.lead_id) {
        let event = LeadEvent {
            leadgen_id: lead_id.clone(),
            page_id: run.page_id.to_owned(),
            form_id: (node.kind == NodeKind::Form).then(|| node.id.clone()),
            ad_id: (node.kind == NodeKind::Ad).then(|| node.id.clone()),
            adgroup_id: None,
            created_time: None,
            received_at: run.now,
        };
        let sent = match event.to_message_body() {
            Ok(body) => ports
                .dead_letters
                .dead_letter(
                    &body,
                    &DeadLetterReason {
                        class: problem.class,
                        detail: problem.detail.clone(),
                    },
                )
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(err) = sent {
            return Err(NodeEnd::NodeStop(
                NodeStatus::Failed,
                format!(
                    "a {} lead could not be dead-lettered ({err}); the next run reads it again",
                    problem.class
                ),
            ));
        }
    }
    node.problem_leads.push(problem);
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Every end of a backfill run against in-memory ports: no AWS, no HTTP.
    use super::*;
    use crate::memory::{
        MemoryBackfillSource, MemoryCheckpoints, MemoryLeadStore, MemoryQueueControl,
    };
    use leadpipe_graph::{HasLeadAccess, Lead};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-30 05:00:00 UTC);
    const DAY: i64 = 86_400;

    struct Never;
    impl Deadline for Never {
        fn near(&self) -> bool {
            false
        }
    }

    /// Lets `n` checks pass, then says the deadline is near.
    struct After(AtomicUsize);
    impl Deadline for After {
        fn near(&self) -> bool {
            self.0
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        }
    }

    fn lead(id: &str, at: i64, form: Option<&str>) -> Lead {
        let created = OffsetDateTime::from_unix_timestamp(at).unwrap();
        let form = form
            .map(|f| format!(r#","form_id":"{f}""#))
            .unwrap_or_default();
        Lead::from_json(&format!(
            r#"{{"id":"{id}","created_time":"{}"{form}}}"#,
            created
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        ))
        .unwrap()
    }

    fn access(ok: bool) -> HasLeadAccess {
        serde_json::from_value(serde_json::json!({
            "can_access_lead": ok,
            "failure_reason": (!ok).then_some("The app is not allowed by Leads Access Manager"),
            "failure_resolution": (!ok).then_some("Ask a page admin to allow it in Leads Access Manager")
        }))
        .unwrap()
    }

    fn form(id: &str) -> leadpipe_graph::LeadgenForm {
        serde_json::from_value(serde_json::json!({"id": id, "status": "ACTIVE",
            "created_time": "2026-10-01T00:00:00+0000"}))
        .unwrap()
    }

    fn unreadable(id: &str) -> leadpipe_graph::ParseError {
        Lead::from_json(r#"{"id": 5, "created_time": [}"#)
            .unwrap_err()
            .with_id_from(&format!(r#"{{"id":"{id}","created_time":[]}}"#))
    }

    struct World {
        source: MemoryBackfillSource,
        store: MemoryLeadStore,
        checkpoints: MemoryCheckpoints,
        dlq: MemoryQueueControl,
    }

    impl World {
        /// Page 1 with forms 10 and 11, three leads each over the last few days.
        fn new() -> Self {
            let mut source = MemoryBackfillSource::default();
            source
                .pages
                .insert("1".into(), (Ok(access(true)), vec![form("10"), form("11")]));
            let now = NOW.unix_timestamp();
            for f in ["10", "11"] {
                source.leads.insert(
                    f.into(),
                    (1..=3)
                        .map(|i| lead(&format!("{f}{i}"), now - i * DAY, Some(f)))
                        .collect(),
                );
            }
            Self {
                source,
                store: MemoryLeadStore::new(),
                checkpoints: MemoryCheckpoints::default(),
                dlq: MemoryQueueControl::default(),
            }
        }

        async fn run<D: Deadline>(&self, plan: &BackfillPlan, deadline: &D) -> BackfillSummary {
            let ports = BackfillPorts {
                source: &self.source,
                store: &self.store,
                checkpoints: &self.checkpoints,
                dead_letters: &self.dlq,
            };
            let settings = BackfillSettings {
                slice: Duration::from_secs(2 * DAY as u64),
                ..BackfillSettings::default()
            };
            run_backfill(&ports, deadline, plan, &settings, NOW).await
        }

        async fn scheduled(&self) -> BackfillSummary {
            self.run(&BackfillPlan::scheduled(&["1".to_owned()]), &Never)
                .await
        }
    }

    #[tokio::test]
    async fn a_full_run_stores_every_lead_and_moves_each_checkpoint_to_now() {
        let world = World::new();
        let summary = world.scheduled().await;
        assert_eq!((summary.leads_read, summary.new), (6, 6));
        assert_eq!(summary.pages[0].status, PageStatus::Done);
        for f in ["10", "11"] {
            assert_eq!(
                world.checkpoints.get(&format!("form#{f}")),
                Some(NOW.unix_timestamp())
            );
        }
        let again = world.scheduled().await;
        assert_eq!(again.new, 0, "a second run finds nothing new");
    }

    #[tokio::test]
    async fn unreadable_leads_are_recorded_logged_and_dead_lettered() {
        // Hardening item 4: they were counted and skipped forever.
        let mut world = World::new();
        let at = NOW.unix_timestamp() - DAY;
        world.source.unreadable.insert(
            "10".into(),
            vec![(at, unreadable("1099")), (at, unreadable(""))],
        );
        let summary = world.scheduled().await;
        let node = &summary.pages[0].nodes[0];
        assert_eq!(node.unreadable, 2);
        assert_eq!(node.problem_leads.len(), 2);
        assert_eq!(node.problem_leads[0].lead_id.as_deref(), Some("1099"));
        assert_eq!(node.problem_leads[0].class, DeadLetterClass::Unreadable);
        assert_eq!(node.problem_leads[1].lead_id, None);
        let dead = world.dlq.dead_letters.lock().unwrap().clone();
        assert_eq!(dead.len(), 1, "only the one with an id can be replayed");
        let event = LeadEvent::from_message_body(&dead[0].0).unwrap();
        assert_eq!(
            (
                event.leadgen_id.as_str(),
                event.page_id.as_str(),
                event.form_id.as_deref()
            ),
            ("1099", "1", Some("10"))
        );
        assert_eq!(dead[0].1.class, DeadLetterClass::Unreadable);
        assert_eq!(world.store.len(), 6, "the readable ones are stored");
        assert_eq!(
            world.checkpoints.get("form#10"),
            Some(NOW.unix_timestamp()),
            "recorded, so the run moves on"
        );
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(
            json["pages"][0]["nodes"][0]["problem_leads"][0]["class"],
            "unreadable"
        );
    }

    #[tokio::test]
    async fn when_the_dead_letter_cannot_be_sent_the_checkpoint_stays() {
        let mut world = World::new();
        world.source.unreadable.insert(
            "10".into(),
            vec![(NOW.unix_timestamp() - DAY, unreadable("1099"))],
        );
        *world.dlq.failing.lock().unwrap() = true;
        let summary = world.scheduled().await;
        let node = &summary.pages[0].nodes[0];
        assert_eq!(node.status, NodeStatus::Failed);
        let checkpoint = world.checkpoints.get("form#10").unwrap_or(0);
        assert!(
            checkpoint < NOW.unix_timestamp() - DAY,
            "the slice holding the lead is read again next run"
        );
        *world.dlq.failing.lock().unwrap() = false;
        world.scheduled().await;
        assert_eq!(world.dlq.dead_letters.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_lead_too_large_to_store_is_recorded_and_the_run_moves_on() {
        // Hardening item 3: backfill stopped at that slice forever.
        let world = World::new();
        world.store.set_too_large(&["102"]);
        let summary = world.scheduled().await;
        let node = &summary.pages[0].nodes[0];
        assert_eq!((node.new, node.too_large), (2, 1));
        assert_eq!(node.problem_leads[0].class, DeadLetterClass::TooLarge);
        assert_eq!(node.status, NodeStatus::Done);
        assert_eq!(world.checkpoints.get("form#10"), Some(NOW.unix_timestamp()));
        assert_eq!(
            world.dlq.dead_letters.lock().unwrap()[0].1.class,
            DeadLetterClass::TooLarge
        );
    }

    #[tokio::test]
    async fn an_ad_lead_without_a_form_is_stored_without_form_id() {
        let mut world = World::new();
        world.source.leads.insert(
            "500".into(),
            vec![lead("5001", NOW.unix_timestamp() - 60, None)],
        );
        let plan = BackfillPlan::from_request(
            BackfillRequest {
                ads: vec![AdTarget::Id("500".into())],
                pages: vec!["1".into()],
                ..BackfillRequest::default()
            },
            &["1".to_owned()],
            NOW,
        )
        .unwrap();
        let summary = world.run(&plan, &Never).await;
        assert_eq!(summary.new, 1, "{summary:?}");
        assert_eq!(world.store.get("5001").unwrap().form_id, None);
        assert_eq!(world.checkpoints.get("ad#500"), Some(NOW.unix_timestamp()));
    }

    #[tokio::test]
    async fn the_deadline_stops_the_run_and_the_next_one_resumes() {
        let world = World::new();
        let summary = world
            .run(
                &BackfillPlan::scheduled(&["1".to_owned()]),
                &After(AtomicUsize::new(3)),
            )
            .await;
        assert!(summary.stopped_by_deadline);
        assert_eq!(summary.pages[0].status, PageStatus::Stopped);
        assert!(world.store.len() < 6);
        let resumed = world.scheduled().await;
        assert_eq!(world.store.len(), 6);
        assert!(!resumed.stopped_by_deadline);
    }

    #[tokio::test]
    async fn rate_limit_token_and_denied_pages_end_as_the_table_says() {
        let mut world = World::new();
        world
            .source
            .pages
            .insert("2".into(), (Ok(access(false)), vec![form("20")]));
        world.source.pages.insert(
            "3".into(),
            (
                Err(GraphError::local("GET /3".into(), ErrorClass::Token, "190")),
                vec![],
            ),
        );
        world
            .source
            .pages
            .insert("4".into(), (Ok(access(true)), vec![form("40")]));
        world.source.lead_errors.insert(
            "40".into(),
            GraphError::local("GET /40/leads".into(), ErrorClass::RateLimited, "4"),
        );
        let pages: Vec<String> = ["1", "2", "3", "4"].map(String::from).to_vec();
        let summary = world.run(&BackfillPlan::scheduled(&pages), &Never).await;
        let status: Vec<(&str, PageStatus)> = summary
            .pages
            .iter()
            .map(|p| (p.page_id.as_str(), p.status))
            .collect();
        assert_eq!(
            status,
            [
                ("1", PageStatus::Done),
                ("2", PageStatus::Skipped),
                ("3", PageStatus::Skipped),
                ("4", PageStatus::RateLimited)
            ]
        );
        assert!(
            summary.pages[1]
                .reason
                .as_deref()
                .unwrap()
                .contains("Leads Access Manager")
        );
        assert_eq!(summary.graph_errors.get("token"), Some(&1));
        assert_eq!(
            world.store.len(),
            6,
            "page 1 is not held back by the others"
        );
        assert_eq!(world.checkpoints.get("form#40"), None);
    }

    #[tokio::test]
    async fn a_checkpoint_never_moves_back_and_a_window_moves_none() {
        let world = World::new();
        world.scheduled().await;
        let plan = BackfillPlan::from_request(
            BackfillRequest {
                from: Some(TimeArg::Unix(NOW.unix_timestamp() - 10 * DAY)),
                to: Some(TimeArg::Unix(NOW.unix_timestamp() - 2 * DAY)),
                ..BackfillRequest::default()
            },
            &["1".to_owned()],
            NOW,
        )
        .unwrap();
        let summary = world.run(&plan, &Never).await;
        assert_eq!(summary.leads_read, 2, "the window reads only its leads");
        assert_eq!(world.checkpoints.get("form#10"), Some(NOW.unix_timestamp()));
    }

    #[tokio::test]
    async fn slices_are_half_open_so_a_boundary_lead_is_read_once() {
        let mut world = World::new();
        // A lead exactly on a slice boundary (slices of two days from the start).
        let boundary = NOW.unix_timestamp() - 2 * DAY;
        world
            .source
            .leads
            .insert("11".into(), vec![lead("boundary", boundary, Some("11"))]);
        let plan = BackfillPlan::from_request(
            BackfillRequest {
                forms: vec!["11".into()],
                from: Some(TimeArg::Unix(boundary - 2 * DAY)),
                to: Some(TimeArg::Unix(boundary + 2 * DAY)),
                ..BackfillRequest::default()
            },
            &["1".to_owned()],
            NOW,
        )
        .unwrap();
        let summary = world.run(&plan, &Never).await;
        assert_eq!(summary.leads_read, 1, "{summary:?}");
    }

    #[test]
    fn a_window_outside_2015_to_tomorrow_is_refused_clearly() {
        // Hardening item 15: --from 9223372036854775000 wrapped in release builds.
        let plan = |from: TimeArg, to: Option<TimeArg>| {
            BackfillPlan::from_request(
                BackfillRequest {
                    from: Some(from),
                    to,
                    ..BackfillRequest::default()
                },
                &["1".to_owned()],
                NOW,
            )
        };
        for from in [
            TimeArg::Unix(9_223_372_036_854_775_000),
            TimeArg::Unix(i64::MIN),
            TimeArg::Unix(-1),
            TimeArg::Unix(1_000_000_000),
            TimeArg::Text("9223372036854775000".into()),
            TimeArg::Text("2014-12-31T23:59:59Z".into()),
            TimeArg::Unix(NOW.unix_timestamp() + 2 * DAY),
        ] {
            let err = plan(from.clone(), None).unwrap_err().to_string();
            assert!(
                err.contains("from must be between 2015-01-01"),
                "{from:?}: {err}"
            );
        }
        let err = plan(TimeArg::Unix(EARLIEST_LEAD), Some(TimeArg::Unix(i64::MAX)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("to must be between"), "{err}");
        assert!(plan(TimeArg::Unix(EARLIEST_LEAD), None).is_ok());
        assert!(
            plan(
                TimeArg::Text("2026-11-01T00:00:00Z".into()),
                Some(TimeArg::Unix(NOW.unix_timestamp() + DAY))
            )
            .is_ok()
        );
    }
}
