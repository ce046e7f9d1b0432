//! Destinations with `serve` (docs/destinations.md): HubSpot, Salesforce, Pipedrive and Slack
//! stand-ins (crates/sandbox/src/crm.rs) take every lead the webhook stores, across a `kill
//! -9` mid-forwarding; a lead HubSpot refuses waits as a dead letter with HubSpot's words
//! and none of the lead's, and goes through after `redrive`; `forward` sends stored leads
//! again without a second record; `destinations check` says what is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support::{BINARY, free_port, scratch, wait_on_progress};
use leadpipe_sandbox::crm::{self, CrmStandIn};
use leadpipe_sandbox::sender::post_body;
use leadpipe_sandbox::{Dataset, DatasetSpec, Faults, Sandbox};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;

const SECRET: &str = "destinations-test-app-secret";
/// The webhook destination's signing key.
const OWN_KEY: &str = "own-receiver-signing-key-0123";

/// What the business's own receiver got: `(Idempotency-Key, signature good)` per POST.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, bool)>>>;

/// A receiver of the business's own for the webhook kind: checks each POST's signature.
async fn own_receiver() -> (String, Received) {
    let got: Received = Default::default();
    let record = got.clone();
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method, headers: axum::http::HeaderMap, body: String| {
            let record = record.clone();
            async move {
                if method != axum::http::Method::POST {
                    return axum::http::StatusCode::METHOD_NOT_ALLOWED;
                }
                let h = |k: &str| {
                    headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let signed = leadpipe_core::signature::verify_signature(
                    OWN_KEY.as_bytes(),
                    h("x-leadpipe-signature-256").as_deref(),
                    body.as_bytes(),
                )
                .is_ok();
                record
                    .lock()
                    .unwrap()
                    .push((h("idempotency-key").unwrap_or_default(), signed));
                axum::http::StatusCode::OK
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/leads"), got)
}

struct World {
    dir: PathBuf,
    data: Dataset,
    sandbox: Sandbox,
    crm: CrmStandIn,
    own: Received,
    secret: PathBuf,
    file: PathBuf,
    db: PathBuf,
}

async fn world(name: &str) -> World {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let data = Dataset::generate(&DatasetSpec {
        leads: 24,
        newest: now - 120,
        ..DatasetSpec::default()
    });
    let sandbox = Sandbox::start(data.clone(), Faults::default())
        .await
        .unwrap();
    let crm = CrmStandIn::start().await.unwrap();
    let (own_url, own) = own_receiver().await;
    let dir = scratch("destinations", name);
    let tokens: serde_json::Map<String, serde_json::Value> =
        leadpipe_sandbox::server::tokens(&data)
            .into_iter()
            .map(|(p, t)| (p, serde_json::json!(t)))
            .collect();
    let secret = dir.join("secret.json");
    leadpipe::write_private(
        &secret,
        serde_json::json!({"app_secret": SECRET, "verify_token": "vt", "page_tokens": tokens,
            "destinations": {
                "hub": {"token": crm::HUBSPOT_TOKEN},
                "sf": {"client_id": crm::SALESFORCE_CLIENT_ID, "client_secret": crm::SALESFORCE_CLIENT_SECRET},
                "pd": {"token": crm::PIPEDRIVE_TOKEN},
                "chat": {"webhook_url": crm.slack_url()},
                "own": {"key": OWN_KEY}
            }})
        .to_string(),
    )
    .unwrap();
    let base = crm.base_url();
    let file = dir.join("destinations.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[destination]]
name = "hub"
kind = "hubspot"
base_url = "{base}"
[destination.map]
fb_lead_id = "lead_id"
lead_source = "'Facebook Lead Ads'"

[[destination]]
name = "sf"
kind = "salesforce"
login_url = "{base}"

[[destination]]
name = "pd"
kind = "pipedrive"
base_url = "{base}"
lead_id_field = "{field}"

[[destination]]
name = "chat"
kind = "slack"

[[destination]]
name = "own"
kind = "webhook"
url = "{own_url}"
"#,
            field = crm::PIPEDRIVE_FIELD
        ),
    )
    .unwrap();
    World {
        db: dir.join("serve.db"),
        dir,
        data,
        sandbox,
        crm,
        own,
        secret,
        file,
    }
}

fn serve(w: &World, port: u16) -> tokio::process::Child {
    tokio::process::Command::new(BINARY)
        .args([
            "serve",
            "--backfill-every",
            "0",
            "--workers",
            "2",
            "--destination-lease-seconds",
            "2",
            "--destinations",
        ])
        .arg(&w.file)
        .env("LEADPIPE_DB", &w.db)
        .env("LEADPIPE_SECRET_FILE", &w.secret)
        .env("LEADPIPE_LISTEN", format!("127.0.0.1:{port}"))
        .env("GRAPH_API_BASE", w.sandbox.base_url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn run(args: &[&str], w: &World) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(BINARY)
        .args(args)
        .env("LEADPIPE_SECRET_FILE", &w.secret)
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_check_says_what_is_missing_and_live_calls_each_service() {
    let w = world("check").await;
    let (code, text) = run(&["destinations", "check", path(&w.file), "--live"], &w).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("5 destination(s) ready"), "{text}");
    assert!(
        w.own.lock().unwrap().is_empty(),
        "a check posts nothing to the receiver"
    );
    assert!(text.contains("the Slack webhook is live"), "{text}");
    assert!(w.crm.with(|s| s.slack.is_empty()), "a check posts nothing");
    for secret in [
        crm::HUBSPOT_TOKEN,
        crm::PIPEDRIVE_TOKEN,
        crm::SALESFORCE_CLIENT_SECRET,
        crm::SLACK_PATH,
    ] {
        assert!(!text.contains(secret), "{text}");
    }
    // A secret without them: each destination names what it lacks; exit 1.
    let bare = w.dir.join("bare.json");
    leadpipe::write_private(&bare, serde_json::json!({"app_secret": "s"}).to_string()).unwrap();
    let out = tokio::process::Command::new(BINARY)
        .args([
            "destinations",
            "check",
            path(&w.file),
            "--secret-file",
            path(&bare),
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("the secret has no destinations.hub.token"),
        "{text}"
    );
    assert!(
        text.contains("destinations.sf.client_id, destinations.sf.client_secret"),
        "{text}"
    );
    // A wrong file is an error (exit 2) saying where.
    let wrong = w.dir.join("wrong.toml");
    std::fs::write(&wrong, "[[destination]]\nname = \"x\"\nkind = \"zoho\"\n").unwrap();
    let (code, text) = run(&["destinations", "check", path(&wrong)], &w).await;
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("wrong.toml"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lead_reaches_every_destination_across_a_kill_and_a_refusal_goes_through_after_redrive()
 {
    let w = world("serve").await;
    let n = w.data.leads.len();
    let refused_email = w.data.leads[0].json["field_data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "email")
        .and_then(|f| f["values"][0].as_str())
        .unwrap()
        .to_lowercase();
    w.crm
        .with(|s| s.hubspot_refused.push(refused_email.clone()));
    // Slack's burst limit at the start: waited out, not a dead letter.
    w.crm.with(|s| s.slack_limited = 2);
    let port = free_port();
    let mut first = serve(&w, port);
    wait_on_progress(|| {
        let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        (up, usize::from(up))
    })
    .await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = post_body(&w.data.leads.iter().collect::<Vec<_>>(), now);
    let signature = leadpipe_core::signature::sign(SECRET.as_bytes(), body.as_bytes()).unwrap();
    let answer = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhook"))
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());
    // Killed while the destinations are being fed.
    wait_on_progress(|| {
        let sf = w.crm.with(|s| s.salesforce.len());
        (sf >= 3, sf)
    })
    .await;
    first.start_kill().unwrap();
    let _ = first.wait().await;
    let mut second = serve(&w, port);
    let done = |s: &crm::CrmState| {
        s.hubspot.len() == n - 1
            && s.salesforce.len() == n
            && s.pipedrive_leads.len() >= n
            && s.slack.len() >= n
    };
    let own = |w: &World| {
        w.own
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<BTreeSet<String>>()
    };
    wait_on_progress(|| {
        let own = own(&w).len();
        w.crm.with(|s| {
            (
                done(s) && own == n,
                s.hubspot.len()
                    + s.salesforce.len()
                    + s.pipedrive_leads.len()
                    + s.slack.len()
                    + own,
            )
        })
    })
    .await;
    let ids: BTreeSet<String> = w.data.leads.iter().map(|l| l.id.clone()).collect();
    // The business's own receiver: every lead, signed, its id as the Idempotency-Key.
    assert_eq!(own(&w), ids);
    assert!(
        w.own.lock().unwrap().iter().all(|(_, signed)| *signed),
        "every POST signed"
    );
    w.crm.with(|s| {
        // Idempotent services: one record per lead whatever the kill repeated.
        assert_eq!(s.salesforce.keys().cloned().collect::<BTreeSet<_>>(), ids);
        let pd: Vec<&String> = s.pipedrive_leads.iter().map(|(_, _, _, id)| id).collect();
        assert_eq!(pd.len(), n, "one Pipedrive lead each: {pd:?}");
        assert_eq!(pd.into_iter().cloned().collect::<BTreeSet<_>>(), ids);
        assert!(!s.hubspot.contains_key(&refused_email));
        // Slack has no idempotency key: every lead is posted, a kill may repeat one.
        for id in &ids {
            assert!(s.slack.iter().any(|m| m.contains(id.as_str())), "{id}");
        }
        for m in &s.slack {
            assert!(!m.contains("@example.com"), "no contact in the chat: {m}");
        }
    });

    // status: the refusal with HubSpot's words, none of the lead's.
    let db = path(&w.db);
    let (code, text) = run(&["status", "--json", "--db", db], &w).await;
    assert_eq!(code, Some(1), "{text}");
    let json: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let hub = json["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "hub")
        .unwrap()
        .clone();
    assert_eq!(
        (hub["delivered"].as_u64(), hub["dead"].as_u64()),
        (Some(n as u64 - 1), Some(1))
    );
    let reason = hub["newest_dead_reason"].as_str().unwrap();
    assert!(
        reason.contains("Property values were not valid"),
        "{reason}"
    );
    assert!(!reason.contains(&refused_email), "{reason}");
    assert!(
        json["needs_a_person"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "destinations_dead")
    );

    // Fixed at HubSpot: redrive brings it back and serve delivers it.
    w.crm.with(|s| s.hubspot_refused.clear());
    let (code, text) = run(
        &["redrive", "--reason-class", "refused", "--json", "--db", db],
        &w,
    )
    .await;
    assert_eq!(code, Some(0), "{text}");
    let moved: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(moved["destinations"], 1, "{moved}");
    wait_on_progress(|| {
        let hub = w.crm.with(|s| s.hubspot.len());
        (hub == n, hub)
    })
    .await;

    // forward: every stored lead again; upserts keep one record each.
    let (code, text) = run(
        &[
            "forward",
            "--db",
            db,
            "--destinations",
            path(&w.file),
            "--destination",
            "sf",
            "--since",
            "7d",
        ],
        &w,
    )
    .await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("queued {n} lead(s) for sf")),
        "{text}"
    );
    assert_eq!(w.crm.with(|s| s.salesforce.len()), n);
    let (code, text) = run(
        &[
            "forward",
            "--db",
            db,
            "--destinations",
            path(&w.file),
            "--destination",
            "sf",
            "--lead",
            "999999",
            "--dry-run",
        ],
        &w,
    )
    .await;
    assert_eq!(code, Some(1), "{text}");
    second.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_a_destinations_file_against_the_stand_ins() {
    let dir = scratch("destinations", "demo");
    let file = dir.join("destinations.toml");
    // A file as a person writes it for the real services: the demo keeps its mappings and
    // points each at its stand-in with the stand-in's credentials.
    std::fs::write(
        &file,
        "[[destination]]\nname = \"sales\"\nkind = \"hubspot\"\n[destination.map]\nservices = \"answers.which_services\"\n\
         [[destination]]\nname = \"sf\"\nkind = \"salesforce\"\nlogin_url = \"https://acme.my.salesforce.com\"\n\
         [[destination]]\nname = \"pd\"\nkind = \"pipedrive\"\nbase_url = \"https://acme.pipedrive.com\"\nlead_id_field = \"abc\"\n\
         [[destination]]\nname = \"chat\"\nkind = \"slack\"\n\
         [[destination]]\nname = \"own\"\nkind = \"webhook\"\nurl = \"https://crm.example.com/in\"\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(BINARY)
        .args(["demo", "--leads", "60", "--quiet", "--destinations"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "to sales (hubspot)",
        "to sf (salesforce)",
        "to pd (pipedrive)",
        "to chat (slack)",
        "to own (webhook)",
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(row))
            .unwrap_or_else(|| panic!("{row}: {text}"));
        assert!(line.contains("60 delivered, 0 refused"), "{line}");
    }
}
