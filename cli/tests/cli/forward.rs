//! `serve --forward-to`: every stored lead reaches the receiver as lead event v1, signed,
//! with its `Idempotency-Key`, across a SIGKILL and a receiver failing 30% of calls; a
//! receiver answering 400 makes a dead letter that `status` shows, without the lead's values.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use leadpipe_sandbox::sender::post_body;
use leadpipe_sandbox::{Dataset, DatasetSpec, Faults, Sandbox};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::BINARY;
const SECRET: &str = "forward-test-app-secret";
const FORWARD_KEY: &str = "forward-key-0123456789abcdef";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 503 for 30% of calls.
    Flaky,
    /// 400 for every call, echoing the body.
    Refuse,
}

#[derive(Default)]
struct Seen {
    /// Idempotency-Key to how many times it arrived.
    keys: BTreeMap<String, usize>,
    /// Each lead's event, as last received.
    events: BTreeMap<String, serde_json::Value>,
    calls: usize,
    problems: Vec<String>,
}

type ReceiverState = (
    Arc<Mutex<Seen>>,
    Arc<jsonschema::Validator>,
    Arc<Mutex<fastrand::Rng>>,
);

struct Receiver {
    url: String,
    seen: Arc<Mutex<Seen>>,
}

async fn receiver(mode: Mode) -> Receiver {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/lead-received.v1.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let validator = Arc::new(jsonschema::validator_for(&schema).unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(30)));
    let state = (seen.clone(), validator, rng);
    let app = axum::Router::new()
        .route(
            "/leads",
            axum::routing::post(
                move |State((seen, validator, rng)): State<ReceiverState>,
                      headers: HeaderMap,
                      body: Bytes| async move {
                    let mut seen = seen.lock().unwrap();
                    seen.calls += 1;
                    if mode == Mode::Refuse {
                        let echo = format!("refused: {}", String::from_utf8_lossy(&body));
                        return (StatusCode::BAD_REQUEST, echo);
                    }
                    if rng.lock().unwrap().f64() < 0.3 {
                        return (StatusCode::SERVICE_UNAVAILABLE, "try later".to_owned());
                    }
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let expected =
                        leadpipe_core::signature::sign(FORWARD_KEY.as_bytes(), &body).unwrap();
                    if header("x-leadpipe-signature-256") != expected {
                        seen.problems.push("bad signature".into());
                    }
                    if header("content-type") != "application/json" {
                        seen.problems.push("content type".into());
                    }
                    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    if !validator.is_valid(&event) {
                        seen.problems.push(format!("not the schema: {event}"));
                    }
                    let key = header("idempotency-key");
                    if event["lead_id"] != key.as_str() {
                        seen.problems.push("key is not the lead id".into());
                    }
                    seen.events.insert(key.clone(), event);
                    *seen.keys.entry(key).or_default() += 1;
                    (StatusCode::ACCEPTED, String::new())
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/leads", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Receiver { url, seen }
}

use crate::support::{free_port, wait_on_progress};

struct Setup {
    dir: PathBuf,
    db: PathBuf,
    secret_file: PathBuf,
    key_file: PathBuf,
}

fn setup(name: &str, data: &Dataset) -> Setup {
    let dir = std::env::temp_dir().join(format!("leadpipe-forward-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tokens: serde_json::Map<String, serde_json::Value> = leadpipe_sandbox::server::tokens(data)
        .into_iter()
        .map(|(p, t)| (p, serde_json::json!(t)))
        .collect();
    let secret_file = dir.join("secret.json");
    leadpipe::write_private(
        &secret_file,
        serde_json::json!({"app_secret": SECRET, "verify_token": "vt", "page_tokens": tokens})
            .to_string(),
    )
    .unwrap();
    let key_file = dir.join("forward.key");
    leadpipe::write_private(&key_file, format!("{FORWARD_KEY}\n")).unwrap();
    Setup {
        db: dir.join("serve.db"),
        dir,
        secret_file,
        key_file,
    }
}

async fn serve(setup: &Setup, port: u16, graph: &str, forward_to: &str) -> tokio::process::Child {
    let child = tokio::process::Command::new(BINARY)
        .args([
            "serve",
            "--backfill-every",
            "0",
            "--workers",
            "2",
            "--visibility-seconds",
            "2",
        ])
        .args(["--forward-to", forward_to, "--forward-first-retry-ms", "50"])
        .arg("--forward-secret-file")
        .arg(&setup.key_file)
        .env("LEADPIPE_DB", &setup.db)
        .env("LEADPIPE_SECRET_FILE", &setup.secret_file)
        .env("LEADPIPE_LISTEN", format!("127.0.0.1:{port}"))
        .env("GRAPH_API_BASE", graph)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if reqwest::get(format!("http://127.0.0.1:{port}/health"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("serve did not come up");
}

async fn post_leads(port: u16, leads: &[leadpipe_sandbox::SandboxLead], now: i64) {
    let client = reqwest::Client::new();
    for lead in leads {
        let body = post_body(&[lead], now);
        let signature = leadpipe_core::signature::sign(SECRET.as_bytes(), body.as_bytes()).unwrap();
        let response = client
            .post(format!("http://127.0.0.1:{port}/webhook"))
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lead_is_forwarded_across_a_sigkill_and_a_flaky_receiver() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let data = Dataset::generate(&DatasetSpec {
        leads: 200,
        newest: now - 60,
        ..DatasetSpec::default()
    });
    let sandbox = Sandbox::start(data.clone(), Faults::default())
        .await
        .unwrap();
    let receiver = receiver(Mode::Flaky).await;
    let setup = setup("kill", &data);
    let port = free_port();
    let mut first = serve(&setup, port, &sandbox.base_url(), &receiver.url).await;
    post_leads(port, &data.leads, now).await;
    // Kill it mid-forwarding: some delivered, not all.
    let seen = receiver.seen.clone();
    wait_on_progress(|| {
        let n = seen.lock().unwrap().keys.len();
        (n >= data.leads.len() / 4, n)
    })
    .await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let before = receiver.seen.lock().unwrap().keys.len();
    assert!(before < data.leads.len(), "the kill came mid-forwarding");

    let port = free_port();
    let _second = serve(&setup, port, &sandbox.base_url(), &receiver.url).await;
    wait_on_progress(|| {
        let n = seen.lock().unwrap().keys.len();
        (n == data.leads.len(), n)
    })
    .await;
    let seen = receiver.seen.lock().unwrap();
    assert!(
        seen.problems.is_empty(),
        "{:?}",
        &seen.problems[..seen.problems.len().min(3)]
    );
    let expected: BTreeSet<&str> = data.leads.iter().map(|l| l.id.as_str()).collect();
    let got: BTreeSet<&str> = seen.keys.keys().map(String::as_str).collect();
    assert_eq!(
        got, expected,
        "each lead at least once, after de-duplication exactly once"
    );
    // Readable: the form's name, answers by label, the normalised contact, as the sandbox's
    // forms (two locales, phones written many ways) say they must be.
    for event in seen.events.values() {
        if let Err(why) = data.check_readable(event) {
            panic!("{why}");
        }
    }
    // One Graph read per form: the two ingest workers share it, and the second process
    // finds the forms in the file's catalog.
    assert!(
        sandbox.form_reads() <= data.forms.len() as u64,
        "{} form reads for {} forms",
        sandbox.form_reads(),
        data.forms.len()
    );
    let failed = seen.calls - seen.keys.values().sum::<usize>();
    assert!(
        failed > 0,
        "the receiver failed some calls, and they were retried"
    );
    eprintln!(
        "forward: {} leads, {} calls ({failed} failed and retried), {} delivered twice (the kill)",
        expected.len(),
        seen.calls,
        seen.keys.values().filter(|n| **n > 1).count()
    );
    let _ = std::fs::remove_dir_all(&setup.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_receiver_makes_a_dead_letter_that_status_shows_without_lead_values() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let data = Dataset::generate(&DatasetSpec {
        leads: 3,
        newest: now - 60,
        ..DatasetSpec::default()
    });
    let sandbox = Sandbox::start(data.clone(), Faults::default())
        .await
        .unwrap();
    let receiver = receiver(Mode::Refuse).await;
    let setup = setup("refuse", &data);
    let port = free_port();
    let mut server = serve(&setup, port, &sandbox.base_url(), &receiver.url).await;
    post_leads(port, &data.leads, now).await;
    let db = leadpipe_local::LocalDb::open_read_only(&setup.db).unwrap();
    wait_on_progress(|| {
        let summary = db.outbox_summary().unwrap();
        (summary.dead == 3, summary.dead as usize)
    })
    .await;
    let _ = server.kill().await;
    assert_eq!(
        receiver.seen.lock().unwrap().calls,
        3,
        "a 400 is not retried"
    );
    let out = tokio::process::Command::new(BINARY)
        .args(["status", "--db"])
        .arg(&setup.db)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{text}");
    // The status and a hash of the answer, never the answer (it echoed the lead).
    assert!(
        text.contains("3 dead: newest reason HTTP 400, body "),
        "{text}"
    );
    assert!(!text.contains("refused: {"), "{text}");
    assert!(text.contains("could not be forwarded"), "{text}");
    assert!(text.contains("--reason-class refused"), "{text}");
    for lead in &data.leads {
        for field in lead.json["field_data"].as_array().unwrap() {
            for value in field["values"].as_array().unwrap() {
                let value = value.as_str().unwrap();
                // Short answers ("car", "2015") could be part of any text; names, emails,
                // phones and free text cannot.
                if value.len() < 6 {
                    continue;
                }
                assert!(!text.contains(value), "{value} is printed:\n{text}");
            }
        }
    }
    // Forwarding's dead letters are replayed by redrive, by class (the class status names).
    let out = tokio::process::Command::new(BINARY)
        .args(["redrive", "--reason-class", "refused", "--db"])
        .arg(&setup.db)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("moved 3 forwarding dead letter(s) back to the outbox"),
        "{said}"
    );
    let summary = db.outbox_summary().unwrap();
    assert_eq!((summary.pending, summary.dead), (3, 0));
    let _ = std::fs::remove_dir_all(&setup.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_connect_adds_while_serve_runs_is_read_without_a_dead_letter() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let data = Dataset::generate(&DatasetSpec {
        leads: 8,
        newest: now - 60,
        ..DatasetSpec::default()
    });
    let sandbox = Sandbox::start(data.clone(), Faults::default())
        .await
        .unwrap();
    let receiver = receiver(Mode::Flaky).await;
    let setup = setup("heal", &data);
    // serve starts knowing the first page only.
    let (first_page, first_token) = data.pages[0].clone();
    let secret = |pages: &[(String, String)]| {
        let tokens: serde_json::Map<String, serde_json::Value> = pages
            .iter()
            .map(|(p, t)| (p.clone(), serde_json::json!(t)))
            .collect();
        serde_json::json!({"app_secret": SECRET, "verify_token": "vt", "page_tokens": tokens})
            .to_string()
    };
    leadpipe::write_private(
        &setup.secret_file,
        secret(&[(first_page.clone(), first_token)]),
    )
    .unwrap();
    let port = free_port();
    let mut server = serve(&setup, port, &sandbox.base_url(), &receiver.url).await;
    let (known, added): (Vec<_>, Vec<_>) = data
        .leads
        .iter()
        .cloned()
        .partition(|l| l.page_id == first_page);
    post_leads(port, &known, now).await;
    let db = leadpipe_local::LocalDb::open_read_only(&setup.db).unwrap();
    wait_on_progress(|| {
        let n = db.leads().unwrap().len();
        (n == known.len(), n)
    })
    .await;

    // `connect` adds the second page to the secret file while serve runs.
    leadpipe::write_private(&setup.secret_file, secret(&data.pages)).unwrap();
    post_leads(port, &added, now).await;
    wait_on_progress(|| {
        let n = db.leads().unwrap().len();
        (n == data.leads.len(), n)
    })
    .await;
    assert!(
        db.dead_letters().unwrap().is_empty(),
        "the new page's first lead waited for no one"
    );
    let _ = server.kill().await;
    let _ = std::fs::remove_dir_all(&setup.dir);
}
