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
use crate::ports::{
    BackfillSource, CheckpointStore, DeadLetterClass, DeadLetterReason, LeadSourceKind, LeadStore,
    PutOutcome, QueueControl, RunFacts, StoredLead,
};
use leadpipe_graph::{ErrorClass, GraphError, LeadQuery, LeadgenForm, TimeOperator};
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

/// A time given as unix seconds or RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TimeArg {
    Unix(i64),
    Text(String),
}

impl TimeArg {
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
    ) -> Result<Self, RequestError> {
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
        let from = request.from.as_ref().map(|f| f.unix("from")).transpose()?;
        let to = request.to.as_ref().map(|t| t.unix("to")).transpose()?;
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
    /// `done`, `stopped` (deadline), `skipped`, `failed`.
    pub status: &'static str,
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
    /// `done`, `skipped` (access, token), `rate_limited`, `stopped` (deadline), `partial`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub nodes: Vec<NodeSummary>,
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
    PageStop(&'static str, String),
    NodeStop(&'static str, String),
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
    let source = ports.source;
    let mut summary = BackfillSummary {
        dry_run: plan.dry_run,
        ..BackfillSummary::default()
    };
    let mut ad_pages: Vec<&str> = plan.ads.iter().map(|(p, _)| p.as_str()).collect();
    ad_pages.dedup();
    let mut page_ids: Vec<&str> = plan.pages.iter().map(String::as_str).collect();
    for page in ad_pages {
        if !page_ids.contains(&page) {
            page_ids.push(page);
        }
    }
    for page_id in page_ids {
        let span = tracing::info_span!("backfill_page", page_id);
        let _entered = span.enter();
        let mut page = PageSummary {
            page_id: page_id.to_owned(),
            status: "done",
            ..PageSummary::default()
        };
        if deadline.near() {
            page.status = "stopped";
            page.reason = Some("the run's deadline came first; the next run covers it".into());
            summary.stopped_by_deadline = true;
            summary.pages.push(page);
            continue;
        }
        match source.lead_access(page_id).await {
            Ok(access) if access.can_access_lead => {}
            Ok(access) => {
                let diagnosis = access.diagnosis();
                tracing::warn!(diagnosis = %diagnosis, "page skipped: no lead access");
                page.status = "skipped";
                page.reason = Some(format!("no lead access: {diagnosis}"));
                summary.pages.push(page);
                continue;
            }
            Err(err) => {
                *summary
                    .graph_errors
                    .entry(err.class().as_str().to_owned())
                    .or_insert(0) += 1;
                let (status, reason) = page_error(&err, "checking lead access");
                page.status = status;
                page.reason = Some(reason);
                summary.pages.push(page);
                continue;
            }
        }
        let mut targets: Vec<(NodeKind, String, Option<i64>)> = Vec::new();
        if plan.pages.iter().any(|p| p == page_id) {
            match source.forms(page_id).await {
                Ok(forms) => targets.extend(
                    forms
                        .into_iter()
                        .filter(|f| plan.forms.as_ref().is_none_or(|only| only.contains(&f.id)))
                        .map(|f: LeadgenForm| {
                            (
                                NodeKind::Form,
                                f.id,
                                f.created_time.map(|t| t.unix_timestamp()),
                            )
                        }),
                ),
                Err(err) => {
                    *summary
                        .graph_errors
                        .entry(err.class().as_str().to_owned())
                        .or_insert(0) += 1;
                    let (status, reason) = page_error(&err, "listing forms");
                    page.status = status;
                    page.reason = Some(reason);
                    summary.pages.push(page);
                    continue;
                }
            }
        }
        targets.extend(
            plan.ads
                .iter()
                .filter(|(p, _)| p == page_id)
                .map(|(_, ad)| (NodeKind::Ad, ad.clone(), None)),
        );
        for (index, (kind, node_id, created)) in targets.iter().enumerate() {
            let mut node = NodeSummary {
                kind: *kind,
                id: node_id.clone(),
                status: "done",
                ..NodeSummary::default()
            };
            let end = read_node(
                ports,
                deadline,
                &NodeRun {
                    plan,
                    settings,
                    now,
                    page_id,
                    created: *created,
                },
                &mut node,
            )
            .await;
            summary.leads_read += node.leads_read;
            summary.new += node.new;
            summary.already_present += node.already_present;
            match end {
                NodeEnd::Done => page.nodes.push(node),
                NodeEnd::NodeStop(status, reason) => {
                    node.status = status;
                    node.reason = Some(reason);
                    page.status = "partial";
                    page.nodes.push(node);
                }
                NodeEnd::Deadline => {
                    node.status = "stopped";
                    node.reason =
                        Some("the run's deadline came first; the next run resumes here".into());
                    page.nodes.push(node);
                    page.status = "stopped";
                    summary.stopped_by_deadline = true;
                    for (kind, id, _) in &targets[index + 1..] {
                        page.nodes.push(NodeSummary {
                            kind: *kind,
                            id: id.clone(),
                            status: "stopped",
                            reason: Some("not reached before the deadline".into()),
                            ..NodeSummary::default()
                        });
                    }
                    break;
                }
                NodeEnd::PageStop(status, reason) => {
                    node.status = "stopped";
                    node.reason = Some(reason.clone());
                    page.nodes.push(node);
                    page.status = status;
                    page.reason = Some(reason);
                    break;
                }
            }
        }
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
    crate::metrics::emit(&[
        ("LeadsRecovered", summary.new),
        ("LeadsRead", summary.leads_read),
        ("DuplicatesSkipped", summary.already_present),
    ]);
    crate::metrics::emit_graph_errors(summary.graph_errors.iter().map(|(k, v)| (k.as_str(), *v)));
    summary
}

/// How a page-level Graph failure is reported.
fn page_error(err: &GraphError, doing: &str) -> (&'static str, String) {
    match err.class() {
        ErrorClass::Token => {
            tracing::error!(error = %err, "ACCESS TOKEN REFUSED: page skipped until a new token is put in the secret");
            ("skipped", format!("token refused while {doing}: {err}"))
        }
        ErrorClass::RateLimited => {
            tracing::warn!(error = %err, "rate limited; page left for the next run");
            (
                "rate_limited",
                format!("rate limited while {doing}; the next run resumes: {err}"),
            )
        }
        _ => {
            tracing::warn!(error = %err, class = %err.class(), "page skipped");
            ("skipped", format!("{} while {doing}: {err}", err.class()))
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
                    return NodeEnd::NodeStop("failed", format!("checkpoint unreadable: {err}"));
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
        let query = LeadQuery::default()
            .with_time(TimeOperator::GreaterThanOrEqual, slice_start)
            .with_time(TimeOperator::LessThan, slice_end)
            .with_limit(settings.page_size);
        let mut slice_facts = RunFacts::default();
        let mut next = None;
        loop {
            if deadline.near() {
                return NodeEnd::Deadline;
            }
            let page = match &next {
                None => source.lead_page(page_id, &node.id, &query).await,
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
                                    "failed"
                                } else {
                                    "skipped"
                                },
                                format!("{class} while reading leads: {err}"),
                            )
                        }
                    };
                }
            };
            node.unreadable += page.unreadable.len() as u64;
            node.leads_read += page.items.len() as u64;
            slice_facts.leads_read += page.items.len() as u64;
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
            if !plan.dry_run && !page.items.is_empty() {
                let ingested_at = OffsetDateTime::now_utc();
                let leads: Vec<StoredLead> = page
                    .items
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
                    Err(err) => return NodeEnd::NodeStop("failed", format!("lead store: {err}")),
                }
            }
            match page.next_page() {
                Some(after) => next = Some(after),
                None => break,
            }
        }
        if moves_checkpoint {
            if let Err(err) = checkpoints
                .save_checkpoint(&key, slice_end, &slice_facts)
                .await
            {
                return NodeEnd::NodeStop("failed", format!("checkpoint not saved: {err}"));
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
                "failed",
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
