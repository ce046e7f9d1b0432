//! A backfill run, along its steps: the run ([`run_backfill`]), one page (its lead access and
//! its targets), one form or ad (its window in slices), one page of leads (stored, its
//! unreadable and too-large leads recorded and dead-lettered).

use super::{
    BackfillPlan, BackfillSettings, BackfillSummary, Deadline, NodeKind, NodeStatus, NodeSummary,
    PageStatus, PageSummary, ProblemLead,
};
use crate::event::LeadEvent;
use crate::forms::{Form, FormLookup, FormRef, NoForms};
use crate::ports::{
    BackfillSource, CheckpointStore, DeadLetterClass, DeadLetterReason, LeadPage, LeadSourceKind,
    LeadStore, PutOutcome, QueueControl, RunFacts, StoredLead, TimeWindow,
};
use crate::readable::Readable;
use crate::tokens::{NoRefresh, TokenRefresh, TokenState};
use leadpipe_graph::{ErrorClass, GraphError, LeadgenForm};
use time::OffsetDateTime;

enum NodeEnd {
    Done,
    Deadline,
    PageStop(PageStatus, String),
    NodeStop(NodeStatus, String),
}

/// The ports a backfill run uses.
#[derive(Debug, Clone, Copy)]
pub struct BackfillPorts<'a, S, L, C, Q, K = NoForms, T = NoRefresh> {
    /// Graph, per page.
    pub source: &'a S,
    /// Reads the secret again when a page's token is refused (`crate::tokens`).
    pub tokens: &'a T,
    /// The forms catalog: refreshed from each page's forms, and what the leads are read
    /// against.
    pub forms: &'a K,
    /// The leads table.
    pub store: &'a L,
    /// The state table.
    pub checkpoints: &'a C,
    /// Where unreadable and too-large leads go, queue-shaped, for a later redrive.
    pub dead_letters: &'a Q,
}

/// Runs the plan. Never fails as a whole; what could not be done is in the summary.
pub async fn run_backfill<S, L, C, Q, D, K, T>(
    ports: &BackfillPorts<'_, S, L, C, Q, K, T>,
    deadline: &D,
    plan: &BackfillPlan,
    settings: &BackfillSettings,
    now: OffsetDateTime,
) -> BackfillSummary
where
    K: FormLookup,
    T: TokenRefresh,
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
    // An `unchecked` page (Graph could not say) keeps the verdict it had: an outage must not
    // clear a dead token's alert in `status`.
    let verdicts: Vec<_> = summary
        .page_tokens
        .iter()
        .filter(|t| t.state != TokenState::Unchecked)
        .cloned()
        .collect();
    if !plan.dry_run
        && !verdicts.is_empty()
        && let Err(err) = ports.checkpoints.save_token_health(&verdicts).await
    {
        tracing::warn!(error = %err, "the page tokens' health could not be kept for status");
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
async fn backfill_page<S, L, C, Q, D, K, T>(
    ports: &BackfillPorts<'_, S, L, C, Q, K, T>,
    deadline: &D,
    plan: &BackfillPlan,
    settings: &BackfillSettings,
    now: OffsetDateTime,
    page_id: &str,
    summary: &mut BackfillSummary,
) -> PageSummary
where
    K: FormLookup,
    T: TokenRefresh,
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
    let seen = ports.tokens.generation();
    let mut listed = page_targets(ports.source, plan, page_id).await;
    // A token or permission refusal: read the secret again (at most once a minute) and, when
    // it was, try the page once more with what it now holds.
    if let Err((err, _)) = &listed
        && matches!(err.class(), ErrorClass::Token | ErrorClass::Permission)
        && ports.tokens.refresh(seen).await
    {
        listed = page_targets(ports.source, plan, page_id).await;
    }
    // The token's health, from Meta's own check and what the page's access said.
    let info = ports.source.token_info(page_id).await;
    let mut health = crate::tokens::judge_token(page_id, info.as_ref(), None, now);
    if let Ok(Err(denied)) = &listed
        && matches!(health.state, TokenState::Valid | TokenState::ExpiringSoon)
    {
        health.state = TokenState::NoLeadAccess;
        health.reason = Some(denied.clone());
    }
    if health.state.needs_a_person() {
        tracing::warn!(
            page_id,
            state = health.state.as_str(),
            reason = health.reason.as_deref().unwrap_or(""),
            "the page's token needs a person: {}",
            health.state.fix()
        );
    }
    summary.page_tokens.push(health);
    let targets = match listed {
        Ok(Ok((targets, forms))) => {
            // Each run's listing is the catalog's current version of the page's forms.
            if !plan.dry_run {
                ports.forms.refresh(forms).await;
            }
            targets
        }
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
/// leads; with every form listed, for the catalog. `Ok(Err(diagnosis))` when access is
/// denied, in Meta's words; `Err` with what was being done when Graph failed.
async fn page_targets<S: BackfillSource>(
    source: &S,
    plan: &BackfillPlan,
    page_id: &str,
) -> Result<Result<(Vec<Target>, Vec<Form>), String>, (GraphError, &'static str)> {
    let access = source
        .lead_access(page_id)
        .await
        .map_err(|e| (e, "checking lead access"))?;
    if !access.can_access_lead {
        return Ok(Err(access.diagnosis()));
    }
    let mut targets: Vec<Target> = Vec::new();
    let mut catalog = Vec::new();
    if plan.pages.iter().any(|p| p == page_id) {
        let forms = source
            .forms(page_id)
            .await
            .map_err(|e| (e, "listing forms"))?;
        let fetched_at = time::OffsetDateTime::now_utc().unix_timestamp();
        catalog = forms
            .iter()
            .map(|f| Form::from_graph(f, Some(page_id), fetched_at))
            .collect();
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
    Ok(Ok((targets, catalog)))
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

async fn read_node<S, L, C, Q, D, K, T>(
    ports: &BackfillPorts<'_, S, L, C, Q, K, T>,
    deadline: &D,
    run: &NodeRun<'_>,
    node: &mut NodeSummary,
) -> NodeEnd
where
    K: FormLookup,
    T: TokenRefresh,
    S: BackfillSource,
    L: LeadStore,
    C: CheckpointStore,
    Q: QueueControl,
    D: Deadline,
{
    let BackfillPorts {
        source,
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
        let mut next: Option<crate::ports::PageCursor> = None;
        let mut seen = std::collections::HashSet::new();
        loop {
            if deadline.near() {
                return NodeEnd::Deadline;
            }
            // Graph's `paging.next` pointing back at a page already read would read it
            // forever: the node fails (its checkpoint stays) and the next run starts over.
            if let Some(after) = &next
                && !seen.insert(after.clone())
            {
                tracing::warn!(node = %key, "paging.next repeats a page already read");
                return NodeEnd::NodeStop(
                    NodeStatus::Failed,
                    "Graph's paging.next repeated a page already read; reading stopped".into(),
                );
            }
            if seen.len() > MAX_PAGES_PER_SLICE {
                return NodeEnd::NodeStop(
                    NodeStatus::Failed,
                    format!(
                        "more than {MAX_PAGES_PER_SLICE} pages in one time slice; reading stopped"
                    ),
                );
            }
            let page = match &next {
                None => source.lead_page(page_id, &node.id, &window).await,
                Some(after) => source.lead_page_after(page_id, after).await,
            };
            let page = match page {
                Ok(page) => page,
                Err(err) => return read_failure(&key, &err),
            };
            if let Err(stop) = store_page(ports, run, node, &page, &mut slice_facts).await {
                return stop;
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

/// The most pages one time slice is read in (a slice holds a day of leads at most by
/// default: 100,000 pages of up to 100 leads is far more than any form gets).
const MAX_PAGES_PER_SLICE: usize = 100_000;

/// How a failed read of a node's leads ends it: a rate limit or a refused token stops the
/// whole page; a transient failure fails the node (the next run reads it again); anything
/// else skips it.
fn read_failure(key: &str, err: &GraphError) -> NodeEnd {
    match err.class() {
        ErrorClass::RateLimited | ErrorClass::Token => {
            let (status, reason) = page_error(err, "reading leads");
            NodeEnd::PageStop(status, reason)
        }
        class => {
            tracing::warn!(node = %key, error = %err, "leads could not be read");
            let status = if class == ErrorClass::Transient {
                NodeStatus::Failed
            } else {
                NodeStatus::Skipped
            };
            NodeEnd::NodeStop(status, format!("{class} while reading leads: {err}"))
        }
    }
}

/// One page of a node's leads: the unreadable items recorded, the leads written (unless a
/// dry run), what the store did counted, a lead too large for it recorded. `Err` when the
/// node must stop here, before its checkpoint moves.
async fn store_page<S, L, C, Q, K, T>(
    ports: &BackfillPorts<'_, S, L, C, Q, K, T>,
    run: &NodeRun<'_>,
    node: &mut NodeSummary,
    page: &LeadPage,
    slice_facts: &mut RunFacts,
) -> Result<(), NodeEnd>
where
    K: FormLookup,
    T: TokenRefresh,
    L: LeadStore,
    Q: QueueControl,
{
    node.unreadable += page.unreadable.len() as u64;
    node.leads_read += page.leads.len() as u64;
    slice_facts.leads_read += page.leads.len() as u64;
    for err in &page.unreadable {
        let problem = ProblemLead {
            lead_id: err.id.clone(),
            class: DeadLetterClass::Unreadable,
            detail: err.to_string(),
        };
        record_problem(ports, run, node, problem).await?;
    }
    if run.plan.dry_run || page.leads.is_empty() {
        return Ok(());
    }
    let ingested_at = OffsetDateTime::now_utc();
    let mut leads: Vec<StoredLead> = page
        .leads
        .iter()
        .map(|lead| StoredLead {
            // An ad lead with no form keeps no form_id (never ""): by_form refuses empty keys.
            form_id: lead
                .form_id
                .clone()
                .or_else(|| (node.kind == NodeKind::Form).then(|| node.id.clone())),
            lead: lead.clone(),
            page_id: run.page_id.to_owned(),
            source: LeadSourceKind::Backfill,
            ingested_at,
            readable: Readable::default(),
        })
        .collect();
    let wanted: Vec<FormRef> = leads
        .iter()
        .filter_map(|l| {
            l.form_id.as_ref().map(|form_id| FormRef {
                page_id: l.page_id.clone(),
                form_id: form_id.clone(),
            })
        })
        .collect();
    let known = ports.forms.forms(&wanted).await;
    for lead in &mut leads {
        let form = lead.form_id.as_ref().and_then(|f| known.get(f));
        lead.readable = Readable::of(&lead.lead.field_data, form.map(|f| &**f));
    }
    let outcomes = ports
        .store
        .put_leads(&leads)
        .await
        .map_err(|err| NodeEnd::NodeStop(NodeStatus::Failed, format!("lead store: {err}")))?;
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
                record_problem(ports, run, node, problem).await?;
            }
        }
    }
    node.new += new;
    node.already_present += present;
    slice_facts.new += new;
    slice_facts.already_present += present;
    if new > 0 {
        tracing::info!(node = %node.kind.checkpoint_key(&node.id), recovered = new, "backfill recovered leads");
    }
    Ok(())
}

/// Records a lead that could not be stored: in the node's summary, at WARN, and (unless a
/// dry run, and when it has an id) as a queue-shaped dead letter with its class, so it is
/// replayed by a redrive once fixed. If that send fails the node stops before its
/// checkpoint moves, so the next run reads the lead again: nothing is skipped unrecorded.
async fn record_problem<S, L, C, Q, K, T>(
    ports: &BackfillPorts<'_, S, L, C, Q, K, T>,
    run: &NodeRun<'_>,
    node: &mut NodeSummary,
    problem: ProblemLead,
) -> Result<(), NodeEnd>
where
    K: FormLookup,
    T: TokenRefresh,
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
