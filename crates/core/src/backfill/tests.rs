//! Every end of a backfill run against in-memory ports: no AWS, no HTTP.
use super::*;
use crate::event::LeadEvent;
use crate::forms::FormCatalog;
use crate::memory::{
    MemoryBackfillSource, MemoryCheckpoints, MemoryFormReader, MemoryFormStore, MemoryLeadStore,
    MemoryQueueControl,
};
use crate::ports::{BackfillSource, DeadLetterClass};
use leadpipe_graph::{ErrorClass, GraphError};
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
        "name": format!("Form {id}"), "locale": "en_US",
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
    /// Graph knows no form by id: whatever the run's leads are read against, it listed.
    forms: FormCatalog<MemoryFormReader, MemoryFormStore>,
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
            forms: FormCatalog::new(MemoryFormReader::with_forms([]), MemoryFormStore::default()),
            store: MemoryLeadStore::new(),
            checkpoints: MemoryCheckpoints::default(),
            dlq: MemoryQueueControl::default(),
        }
    }

    async fn run<D: Deadline>(&self, plan: &BackfillPlan, deadline: &D) -> BackfillSummary {
        let ports = BackfillPorts {
            source: &self.source,
            tokens: &crate::tokens::NoRefresh,
            forms: &self.forms,
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
async fn a_next_page_that_points_back_stops_that_node_and_the_run_goes_on() {
    let mut world = World::new();
    world.source.looping.insert("10".into());
    let summary = world.scheduled().await;
    let nodes = &summary.pages[0].nodes;
    let looped = nodes.iter().find(|n| n.id == "10").unwrap();
    assert_eq!(looped.status, NodeStatus::Failed);
    assert!(
        looped
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("repeated"),
        "{looped:?}"
    );
    assert_eq!(
        world.checkpoints.get("form#10"),
        None,
        "its checkpoint stays"
    );
    assert_eq!(
        world
            .source
            .pages_after
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the repeated page is noticed at once"
    );
    let other = nodes.iter().find(|n| n.id == "11").unwrap();
    assert_eq!(other.status, NodeStatus::Done);
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

#[tokio::test]
async fn each_run_refreshes_the_catalog_once_and_reads_its_leads_against_it() {
    let world = World::new();
    let summary = world
        .run(&BackfillPlan::scheduled(&["1".to_owned()]), &Never)
        .await;
    assert_eq!(summary.new, 6);
    assert_eq!(world.forms.store().len(), 2, "both forms kept");
    assert_eq!(
        world.forms.graph_reads(),
        0,
        "no form read by id: the listing had them"
    );
    let stored = world.store.get("101").unwrap();
    assert_eq!(stored.readable.form_name.as_deref(), Some("Form 10"));
    // A dry run writes nothing, the catalog included.
    let dry = World::new();
    let mut plan = BackfillPlan::scheduled(&["1".to_owned()]);
    plan.dry_run = true;
    dry.run(&plan, &Never).await;
    assert!(dry.forms.store().is_empty());
}

/// Graph refusing the page's token until the secret has been read again.
struct Healing {
    inner: MemoryBackfillSource,
    healed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl BackfillSource for Healing {
    async fn token_info(&self, page_id: &str) -> Result<leadpipe_graph::TokenInfo, GraphError> {
        self.inner.token_info(page_id).await
    }
    async fn lead_access(&self, page_id: &str) -> Result<HasLeadAccess, GraphError> {
        if !self.healed.load(Ordering::SeqCst) {
            return Err(GraphError::local(
                "GET /debug_token".into(),
                ErrorClass::Token,
                "Error validating access token: Session has expired",
            ));
        }
        self.inner.lead_access(page_id).await
    }
    async fn forms(&self, page_id: &str) -> Result<Vec<leadpipe_graph::LeadgenForm>, GraphError> {
        self.inner.forms(page_id).await
    }
    async fn lead_page(
        &self,
        page_id: &str,
        node_id: &str,
        window: &crate::ports::TimeWindow,
    ) -> Result<crate::ports::LeadPage, GraphError> {
        self.inner.lead_page(page_id, node_id, window).await
    }
    async fn lead_page_after(
        &self,
        page_id: &str,
        next: &crate::ports::PageCursor,
    ) -> Result<crate::ports::LeadPage, GraphError> {
        self.inner.lead_page_after(page_id, next).await
    }
}

/// A re-read that finds the fixed token (or, when `fixed` is false, the same dead one).
struct Reread {
    healed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    fixed: bool,
    reads: AtomicUsize,
}

impl crate::tokens::TokenRefresh for Reread {
    fn generation(&self) -> u64 {
        0
    }
    async fn refresh(&self, _seen: u64) -> bool {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.fixed {
            self.healed.store(true, Ordering::SeqCst);
        }
        true
    }
}

#[tokio::test]
async fn a_refused_page_token_is_read_again_and_the_page_backfilled() {
    for fixed in [true, false] {
        let World {
            source,
            forms,
            store,
            checkpoints,
            dlq,
        } = World::new();
        let healed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let source = Healing {
            inner: source,
            healed: healed.clone(),
        };
        let tokens = Reread {
            healed,
            fixed,
            reads: AtomicUsize::new(0),
        };
        let ports = BackfillPorts {
            source: &source,
            tokens: &tokens,
            forms: &forms,
            store: &store,
            checkpoints: &checkpoints,
            dead_letters: &dlq,
        };
        let settings = BackfillSettings {
            slice: Duration::from_secs(2 * DAY as u64),
            ..BackfillSettings::default()
        };
        let summary = run_backfill(
            &ports,
            &Never,
            &BackfillPlan::scheduled(&["1".to_owned()]),
            &settings,
            NOW,
        )
        .await;
        assert_eq!(
            tokens.reads.load(Ordering::SeqCst),
            1,
            "one re-read for the page"
        );
        if fixed {
            assert_eq!(summary.new, 6, "the page is read with the new token");
        } else {
            assert_eq!(summary.new, 0);
            assert_ne!(
                summary.pages[0].status,
                PageStatus::Done,
                "still refused: reported"
            );
        }
    }
}

#[tokio::test]
async fn each_run_judges_every_page_token_and_counts_the_ones_a_person_must_fix() {
    let mut world = World::new();
    world
        .source
        .pages
        .insert("2".into(), (Ok(access(false)), vec![]));
    world
        .source
        .pages
        .insert("3".into(), (Ok(access(true)), vec![]));
    world.source.token_infos.insert(
        "3".into(),
        Ok(serde_json::from_value(serde_json::json!({
            "is_valid": true, "expires_at": NOW.unix_timestamp() + 2 * DAY}))
        .unwrap()),
    );
    let plan = BackfillPlan::scheduled(&["1".to_owned(), "2".to_owned(), "3".to_owned()]);
    let summary = world.run(&plan, &Never).await;
    let states: Vec<(&str, crate::tokens::TokenState)> = summary
        .page_tokens
        .iter()
        .map(|t| (t.page_id.as_str(), t.state))
        .collect();
    use crate::tokens::TokenState as S;
    assert_eq!(
        states,
        [
            ("1", S::Valid),
            ("2", S::NoLeadAccess),
            ("3", S::ExpiringSoon)
        ]
    );
    let metrics: std::collections::BTreeMap<&str, u64> = summary.metrics().into_iter().collect();
    assert_eq!(metrics["PageTokensInvalid"], 1);
    assert_eq!(metrics["PageTokensExpiringSoon"], 1);
    assert!(
        summary.page_tokens[1]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("Leads Access Manager")),
        "Meta's reason, never the token"
    );
}

#[test]
fn a_checkpoint_key_reads_back_what_its_node_kind_wrote_and_nothing_else() {
    use super::{CheckpointKey, NodeKind};
    for kind in [NodeKind::Form, NodeKind::Ad] {
        let key = kind.checkpoint_key("123");
        assert_eq!(
            CheckpointKey::parse(&key),
            Some(CheckpointKey::new(kind, "123"))
        );
        assert_eq!(CheckpointKey::new(kind, "123").to_string(), key);
    }
    assert_eq!(
        CheckpointKey::parse("form#9").and_then(|k| k.form_id().map(str::to_owned)),
        Some("9".to_owned())
    );
    assert_eq!(CheckpointKey::parse("ad#9").unwrap().form_id(), None);
    for other in [
        "formdef#9",
        "token#1",
        "stage#lp-1",
        "form#",
        "form#9x",
        "ad",
        "#9",
        "form#9#1",
    ] {
        assert_eq!(CheckpointKey::parse(other), None, "{other}");
    }
    assert_eq!(
        serde_json::to_value(CheckpointKey::new(NodeKind::Ad, "7")).unwrap(),
        serde_json::json!("ad#7")
    );
}
