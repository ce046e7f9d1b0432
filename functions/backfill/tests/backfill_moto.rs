//! Backfill with its real adapters (moto's DynamoDB) against an HTTP Graph stand-in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use leadpipe_aws::sqs::SqsQueueControl;
use leadpipe_aws::{DynamoCheckpointStore, DynamoLeadStore};
use leadpipe_backfill::BackfillApp;
use leadpipe_core::backfill::{
    BackfillPlan, BackfillPorts, BackfillSettings, Deadline, run_backfill,
};
use leadpipe_core::secrets::AppSecrets;
use leadpipe_graph::{GraphClient, GraphConfig};
use leadpipe_graph_source::GraphBackfillSource;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

type App =
    BackfillApp<GraphBackfillSource, DynamoLeadStore, DynamoCheckpointStore, SqsQueueControl>;

struct Never;
impl Deadline for Never {
    fn near(&self) -> bool {
        false
    }
}

/// Lets `n` Graph pages start, then says the deadline is near.
struct AfterPages(AtomicUsize);
impl Deadline for AfterPages {
    fn near(&self) -> bool {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
    }
}

fn settings(overlap: u64) -> BackfillSettings {
    BackfillSettings {
        overlap: Duration::from_secs(overlap),
        slice: Duration::from_secs(7 * 86_400),
        page_size: 3,
        lookback: Duration::from_secs(90 * 86_400),
    }
}

fn source(graph: &wiremock::MockServer) -> GraphBackfillSource {
    let secrets = AppSecrets {
        app_secret: SecretString::from(APP_SECRET),
        verify_token: None,
        lookup_key: None,
        conversions_token: None,
        stage_keys: Vec::new(),
        destinations: Default::default(),
        destinations_file: None,
        access_token: None,
        page_tokens: BTreeMap::from([
            (PAGE_A.to_owned(), SecretString::from(TOKEN_A)),
            (PAGE_B.to_owned(), SecretString::from(TOKEN_B)),
        ]),
    };
    let client = GraphClient::new(GraphConfig {
        base_url: graph.uri(),
        app_secret: Some(SecretString::from(APP_SECRET)),
        ..GraphConfig::default()
    })
    .unwrap();
    GraphBackfillSource::new(client, secrets)
}

fn app(moto: &Moto, graph: &wiremock::MockServer, overlap: u64) -> App {
    app_with(moto, graph, settings(overlap))
}

fn app_with(moto: &Moto, graph: &wiremock::MockServer, settings: BackfillSettings) -> App {
    BackfillApp::new(
        source(graph),
        DynamoLeadStore::from_client(moto.ddb.clone(), &moto.leads_table),
        DynamoCheckpointStore::from_client(moto.ddb.clone(), &moto.state_table),
        moto.dead_letter_queue(),
        vec![PAGE_A.to_owned(), PAGE_B.to_owned()],
        settings,
        Duration::from_secs(1),
    )
}

fn scheduled() -> serde_json::Value {
    leadpipe_lambda_harness::events::scheduled_event()
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn three_forms_on_two_pages_with_paged_leads_all_land() {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let data = Arc::new(Mutex::new(three_forms(now)));
    let graph = graph_stand_in(data.clone()).await;
    let moto = Moto::new("bf").await;
    let app = app(&moto, &graph, 600);

    let summary = app.run(&scheduled(), &Never).await.unwrap();
    assert_eq!(
        (summary.leads_read, summary.new, summary.already_present),
        (24, 24, 0)
    );
    assert!(!summary.stopped_by_deadline);
    let items = moto.items().await;
    assert_eq!(items.len(), 24);
    let one = &items["9502004"];
    assert_eq!(one["source"].as_s().unwrap(), "backfill");
    assert_eq!(one["page_id"].as_s().unwrap(), PAGE_A);
    assert_eq!(one["form_id"].as_s().unwrap(), "502");
    assert_eq!(
        one["fields"].as_m().unwrap()["phone_number"],
        aws_sdk_dynamodb::types::AttributeValue::L(vec![
            aws_sdk_dynamodb::types::AttributeValue::S("+15550100".into())
        ])
    );
    for form in ["501", "502", "503"] {
        let checkpoint = moto.checkpoint(&format!("form#{form}")).await.unwrap();
        assert!((now..now + 60).contains(&checkpoint), "{checkpoint}");
    }
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["pages"][0]["nodes"][1]["id"], "502");
    assert_eq!(json["pages"][0]["nodes"][1]["leads_read"], 12);
    assert_eq!(
        json["pages"][0]["nodes"][1]["checkpoint_before"],
        serde_json::Value::Null
    );

    // The next run reads only the overlap, and finds nothing new.
    let again = app.run(&scheduled(), &Never).await.unwrap();
    assert_eq!(again.new, 0);
    assert_eq!(
        again.leads_read, 0,
        "every lead is older than checkpoint - overlap"
    );
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn a_run_cut_by_its_deadline_and_the_next_together_store_every_lead_once() {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let data = Arc::new(Mutex::new(three_forms(now)));
    let graph = graph_stand_in(data.clone()).await;
    let moto = Moto::new("bf").await;
    // One slice per form, so the Graph pages are easy to count.
    let app = app_with(
        &moto,
        &graph,
        BackfillSettings {
            slice: Duration::from_secs(60 * 86_400),
            ..settings(600)
        },
    );

    // Six checks pass: the page's, form 501's three pages (it completes), and two of form
    // 502's four pages; then the deadline is near.
    let first = app
        .run(&scheduled(), &AfterPages(AtomicUsize::new(6)))
        .await
        .unwrap();
    assert!(first.stopped_by_deadline);
    let json = serde_json::to_value(&first).unwrap();
    assert_eq!(json["pages"][0]["status"], "stopped");
    assert_eq!(json["pages"][0]["nodes"][0]["status"], "done");
    assert_eq!(json["pages"][0]["nodes"][1]["status"], "stopped");
    assert!(moto.checkpoint("form#501").await.is_some());
    assert!(
        moto.checkpoint("form#502").await.is_none(),
        "an unfinished slice moves no checkpoint"
    );
    let stored_first = moto.items().await.len();
    assert!(stored_first > 7 && stored_first < 24, "{stored_first}");

    let second = app.run(&scheduled(), &Never).await.unwrap();
    assert!(!second.stopped_by_deadline);
    assert_eq!(moto.items().await.len(), 24);
    assert_eq!(first.new + second.new, 24, "every lead stored exactly once");
    // Form 501 was not read again from its start.
    let f501 = &serde_json::to_value(&second).unwrap()["pages"][0]["nodes"][0];
    assert_eq!(f501["leads_read"], 0);
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn a_lead_in_the_checkpoint_second_is_not_lost() {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let data = Arc::new(Mutex::new(three_forms(now)));
    let graph = graph_stand_in(data.clone()).await;
    let moto = Moto::new("bf").await;
    let source = source(&graph);
    let store = DynamoLeadStore::from_client(moto.ddb.clone(), &moto.leads_table);
    let checkpoints = DynamoCheckpointStore::from_client(moto.ddb.clone(), &moto.state_table);
    let dead_letters = moto.dead_letter_queue();
    let forms = leadpipe_core::forms::FormCatalog::new(
        source.clone(),
        leadpipe_aws::DynamoFormStore::from_client(moto.ddb.clone(), &moto.state_table),
    );
    let ports = BackfillPorts {
        source: &source,
        tokens: &leadpipe_core::tokens::NoRefresh,
        forms: &forms,
        store: &store,
        checkpoints: &checkpoints,
        dead_letters: &dead_letters,
    };
    let plan = BackfillPlan::scheduled(&[PAGE_B.to_owned()]);
    let run_at = OffsetDateTime::from_unix_timestamp(now).unwrap();

    // No overlap at all: the boundary itself must hold.
    let first = run_backfill(&ports, &Never, &plan, &settings(0), run_at).await;
    assert_eq!(first.new, 5);
    assert_eq!(moto.checkpoint("form#503").await, Some(now));
    // The run kept the page's forms in the state table, beside (not as) checkpoints.
    use leadpipe_core::forms::FormStore;
    let kept = leadpipe_aws::DynamoFormStore::from_client(moto.ddb.clone(), &moto.state_table)
        .load_form("503")
        .await
        .unwrap();
    assert_eq!(kept.map(|f| f.id).as_deref(), Some("503"));
    assert_eq!(forms.graph_reads(), 0, "the listing had every form");

    // A lead created in the checkpoint's own second becomes visible after the run.
    data.lock().unwrap().leads.push(FakeLead {
        id: "9503999".into(),
        created: now,
        form: "503".into(),
        ad: None,
    });
    let later = OffsetDateTime::from_unix_timestamp(now + 120).unwrap();
    let second = run_backfill(&ports, &Never, &plan, &settings(0), later).await;
    assert_eq!(second.new, 1);
    assert!(moto.items().await.contains_key("9503999"));
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn a_denied_page_is_skipped_with_its_diagnosis_and_the_other_runs() {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut dataset = three_forms(now);
    dataset.denied_pages.push(PAGE_A.into());
    let data = Arc::new(Mutex::new(dataset));
    let graph = graph_stand_in(data.clone()).await;
    let moto = Moto::new("bf").await;

    let summary = app(&moto, &graph, 600)
        .run(&scheduled(), &Never)
        .await
        .unwrap();
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["pages"][0]["page_id"], PAGE_A);
    assert_eq!(json["pages"][0]["status"], "skipped");
    let reason = json["pages"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("not assigned to this Page in Leads Access Manager"),
        "{reason}"
    );
    assert!(reason.contains("to fix: Assign the user"), "{reason}");
    assert_eq!(json["pages"][1]["status"], "done");
    assert_eq!(summary.new, 5);
    assert_eq!(moto.items().await.len(), 5);
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn a_from_to_window_rereads_only_that_window_and_ads_read_the_same_way() {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let data = Arc::new(Mutex::new(three_forms(now)));
    let graph = graph_stand_in(data.clone()).await;
    let moto = Moto::new("bf").await;
    let app = app(&moto, &graph, 600);

    // Form 502's leads are at now-1h .. now-12h; ask for [now-5h, now-2h): 3 leads.
    let window = serde_json::json!({"pages": [PAGE_A], "forms": ["502"], "from": now - 5 * 3600, "to": now - 2 * 3600});
    let summary = app.run(&window, &Never).await.unwrap();
    assert_eq!((summary.leads_read, summary.new), (3, 3));
    assert!(
        moto.checkpoint("form#502").await.is_none(),
        "a window moves no checkpoint"
    );

    // RFC 3339 works too, and a dry run writes nothing.
    let from = time::OffsetDateTime::from_unix_timestamp(now - 13 * 3600)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let dry =
        serde_json::json!({"pages": [PAGE_A], "forms": ["502"], "from": from, "dry_run": true});
    let summary = app.run(&dry, &Never).await.unwrap();
    assert_eq!((summary.leads_read, summary.new), (12, 0));
    assert_eq!(moto.items().await.len(), 3);

    // By ad: form 503's ad has the leads with i % 3 != 0 (i = 1, 2, 4).
    let by_ad = serde_json::json!({"pages": [PAGE_B], "ads": ["ad503"]});
    let summary = app.run(&by_ad, &Never).await.unwrap();
    assert_eq!(summary.new, 3);
    assert!(moto.checkpoint("ad#ad503").await.is_some());

    // Nonsense is refused with a clear error.
    let err = app
        .run(&serde_json::json!({"pagez": ["1"]}), &Never)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pagez"), "{err}");
}
