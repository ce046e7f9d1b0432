//! Stages back to Meta with `serve` (docs/stages.md): each new lead's initial stage, CRM
//! stages through `POST /stages` and `leadpipe stages import`, a `kill -9` while they are
//! being sent; the sandbox's dataset, with Meta's rules, receives exactly one event per
//! (lead, stage), none before its lead, none older than 7 days, and no good one is lost to
//! a refused one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support::{BINARY, free_port, wait_on_progress};
use leadpipe_sandbox::sender::post_body;
use leadpipe_sandbox::{Dataset, DatasetSpec, Faults, Sandbox, conversions};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

const SECRET: &str = "stages-test-app-secret";
const OLD_KEY: &str = "stage-key-old-0123456789";
const NEW_KEY: &str = "stage-key-new-9876543210";

fn serve(
    db: &std::path::Path,
    secret: &std::path::Path,
    port: u16,
    graph: &str,
) -> tokio::process::Child {
    tokio::process::Command::new(BINARY)
        .args(["serve", "--backfill-every", "0", "--workers", "2"])
        .env("LEADPIPE_DB", db)
        .env("LEADPIPE_SECRET_FILE", secret)
        .env("LEADPIPE_LISTEN", format!("127.0.0.1:{port}"))
        .env("GRAPH_API_BASE", graph)
        .env("CONVERSIONS_DATASET_ID", conversions::DATASET_ID)
        .env("CONVERSIONS_TEST_EVENT_CODE", "TEST4242")
        .env("LEAD_EVENT_SOURCE", "Test CRM")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn healthy(port: u16) {
    wait_on_progress(|| {
        let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        (up, usize::from(up))
    })
    .await;
}

fn events_by_key(sandbox: &Sandbox) -> BTreeMap<(String, String), Vec<serde_json::Value>> {
    let mut by: BTreeMap<(String, String), Vec<serde_json::Value>> = BTreeMap::new();
    for event in sandbox.conversion_events() {
        let key = (
            event["user_data"]["lead_id"].as_str().unwrap().to_owned(),
            event["event_name"].as_str().unwrap().to_owned(),
        );
        by.entry(key).or_default().push(event);
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_reaches_meta_once_across_a_sigkill_and_the_refused_ones_alone_wait() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let data = Dataset::generate(&DatasetSpec {
        leads: 40,
        newest: now - 120,
        ..DatasetSpec::default()
    });
    let sandbox = Sandbox::start(data.clone(), Faults::default())
        .await
        .unwrap();
    let dir = crate::support::scratch("stages", "kill");
    let tokens: serde_json::Map<String, serde_json::Value> =
        leadpipe_sandbox::server::tokens(&data)
            .into_iter()
            .map(|(p, t)| (p, serde_json::json!(t)))
            .collect();
    let secret = dir.join("secret.json");
    leadpipe::write_private(
        &secret,
        serde_json::json!({"app_secret": SECRET, "verify_token": "vt", "page_tokens": tokens,
            "conversions_token": conversions::TOKEN, "stage_keys": [OLD_KEY, NEW_KEY]})
        .to_string(),
    )
    .unwrap();
    let db_path = dir.join("serve.db");
    let port = free_port();
    let mut first = serve(&db_path, &secret, port, &sandbox.base_url());
    healthy(port).await;
    let client = reqwest::Client::new();
    let body = post_body(&data.leads.iter().collect::<Vec<_>>(), now);
    let signature = leadpipe_core::signature::sign(SECRET.as_bytes(), body.as_bytes()).unwrap();
    let answer = client
        .post(format!("http://127.0.0.1:{port}/webhook"))
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());

    // Each new lead's initial stage goes out by itself, at the lead's creation time.
    wait_on_progress(|| {
        let n = sandbox.conversion_events().len();
        (n == data.leads.len(), n)
    })
    .await;
    for event in sandbox.conversion_events() {
        let lead = data
            .lead(event["user_data"]["lead_id"].as_str().unwrap())
            .unwrap();
        assert_eq!(event["event_name"], "Lead");
        assert_eq!(event["event_time"], lead.created_time);
        assert_eq!(event["test_event_code"], "TEST4242");
        assert_eq!(event["custom_data"]["lead_event_source"], "Test CRM");
        assert_eq!(event["user_data"]["em"][0].as_str().unwrap().len(), 64);
    }

    // The door: no key, a wrong key: 401, nothing queued.
    let stages_url = format!("http://127.0.0.1:{port}/stages");
    let one =
        serde_json::json!({"lead_id": data.leads[0].id, "stage": "Qualified", "stage_time": now});
    for key in [None, Some("not-a-key")] {
        let mut request = client.post(&stages_url).json(&one);
        if let Some(key) = key {
            request = request.header("x-leadpipe-key", key);
        }
        assert_eq!(request.send().await.unwrap().status(), 401);
    }

    // Meta will refuse any request holding lead 5: it alone must wait.
    sandbox.refuse_lead_in_events(&data.leads[5].id);
    let mut items: Vec<serde_json::Value> = data.leads[..20]
        .iter()
        .map(|l| serde_json::json!({"lead_id": l.id, "stage": "Qualified", "stage_time": now - 30, "value": 10, "currency": "usd"}))
        .collect();
    items.push(serde_json::json!({"lead_id": data.leads[1].id, "stage": "Won", "stage_time": data.leads[1].created_time - 100}));
    items.push(serde_json::json!({"lead_id": "999999999999999", "stage": "Qualified", "stage_time": now - 30}));
    items.push(
        serde_json::json!({"lead_id": data.leads[2].id, "stage": "", "stage_time": now - 30}),
    );
    let answer = client
        .post(&stages_url)
        .header("x-leadpipe-key", OLD_KEY)
        .json(&serde_json::json!({"stages": items}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400, "one item is refused at the door");
    let said: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(said["accepted"], 22);
    assert_eq!(said["refused"][0]["index"], 22);
    assert!(
        said["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("stage")
    );

    // More stages by file, and a kill -9 while they are being sent: Meta is slow, so some
    // are in flight when the process dies.
    let csv = dir.join("converted.csv");
    let mut text = String::from("lead_id,stage,stage_time\n");
    for lead in &data.leads[20..] {
        text.push_str(&format!("{},Converted,{}\n", lead.id, now - 10));
    }
    text.push_str("12x,Converted,yesterday\n");
    std::fs::write(&csv, text).unwrap();
    sandbox.set_faults(Faults {
        latency: Duration::from_millis(150),
        ..Faults::default()
    });
    let import = tokio::process::Command::new(BINARY)
        .args([
            "stages",
            "import",
            csv.to_str().unwrap(),
            "--db",
            db_path.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&import.stdout);
    assert_eq!(
        import.status.code(),
        Some(1),
        "a refused row is a person's to fix: {said}"
    );
    assert!(said.contains("row 22: refused: stage_time"), "{said}");
    assert!(said.contains("queued 20"), "{said}");
    // The key rotated in: the new one works too.
    let again = client
        .post(&stages_url)
        .header("x-leadpipe-key", NEW_KEY)
        .json(&one)
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        202,
        "the same stage again is accepted (and is one event)"
    );
    let before_kill = sandbox.conversion_events().len();
    first.start_kill().unwrap();
    first.wait().await.unwrap();

    let port = free_port();
    sandbox.set_faults(Faults::default());
    sandbox.fail_conversions(2);
    let _second = serve(&db_path, &secret, port, &sandbox.base_url());
    healthy(port).await;
    let expected: BTreeSet<(String, String)> = data
        .leads
        .iter()
        .map(|l| (l.id.clone(), "Lead".to_owned()))
        .chain(
            data.leads[..20]
                .iter()
                .filter(|l| l.id != data.leads[5].id)
                .map(|l| (l.id.clone(), "Qualified".to_owned())),
        )
        .chain(
            data.leads[20..]
                .iter()
                .map(|l| (l.id.clone(), "Converted".to_owned())),
        )
        .collect();
    let db = leadpipe_local::LocalDb::open_read_only(&db_path).unwrap();
    wait_on_progress(|| {
        let got = events_by_key(&sandbox).len();
        let queued = db.stage_counts().unwrap().queued;
        (got == expected.len() && queued == 0, got)
    })
    .await;
    let got = events_by_key(&sandbox);
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(
        got.values().all(|events| events.len() == 1),
        "one event per (lead, stage)"
    );
    assert!(
        sandbox.conversion_events_dropped().is_empty(),
        "none before its lead"
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        sandbox
            .conversion_events()
            .iter()
            .all(|e| now - e["event_time"].as_i64().unwrap() < 7 * 86_400)
    );
    assert!(
        before_kill < sandbox.conversion_events().len(),
        "the kill came mid-run"
    );

    // What was refused waits with its class; status says so, and exits 1.
    let status = tokio::process::Command::new(BINARY)
        .args(["status", "--json", "--db", db_path.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert_eq!(status.status.code(), Some(1));
    let said: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let refused: BTreeMap<String, u64> = said["stages"]["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["reason_class"].as_str().unwrap().to_owned(),
                g["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        BTreeMap::from([
            ("bad_request".to_owned(), 1),
            ("before_lead".to_owned(), 1),
            ("unknown_lead".to_owned(), 1)
        ])
    );
    assert_eq!(said["stages"]["sent"], expected.len());
    assert!(
        said["needs_a_person"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "stages_refused")
    );
    let text = String::from_utf8_lossy(&status.stdout);
    for private in ["Qualified", "Converted", conversions::TOKEN, OLD_KEY] {
        assert!(!text.contains(private), "status never prints {private}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_dataset_checks_the_token_stores_it_and_makes_a_stage_key_printing_neither() {
    let data = Dataset::generate(&DatasetSpec {
        leads: 1,
        ..DatasetSpec::default()
    });
    let sandbox = Sandbox::start(data, Faults::default()).await.unwrap();
    let dir = crate::support::scratch("stages", "connect");
    let secret = dir.join("secret.json");
    leadpipe::write_private(
        &secret,
        serde_json::json!({"app_secret": SECRET}).to_string(),
    )
    .unwrap();
    let run = |token: &str, dry: bool| {
        let mut command = tokio::process::Command::new(BINARY);
        command
            .args([
                "connect",
                "--dataset",
                conversions::DATASET_ID,
                "--secret-file",
                secret.to_str().unwrap(),
            ])
            .env("GRAPH_API_BASE", sandbox.base_url())
            .env("LEADPIPE_CONVERSIONS_TOKEN", token);
        if dry {
            command.arg("--dry-run");
        }
        command.output()
    };
    let wrong = run("EAAnot-the-dataset-token-000", false).await.unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    let dry = run(conversions::TOKEN, true).await.unwrap();
    let said = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(dry.status.code(), Some(0), "{said}");
    assert!(
        said.contains("Sandbox CRM dataset") && said.contains("would store"),
        "{said}"
    );
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&secret).unwrap()).unwrap();
    assert!(
        stored.get("conversions_token").is_none(),
        "a dry run writes nothing"
    );
    let real = run(conversions::TOKEN, false).await.unwrap();
    let said = String::from_utf8_lossy(&real.stdout).into_owned();
    assert_eq!(real.status.code(), Some(0), "{said}");
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&secret).unwrap()).unwrap();
    assert_eq!(stored["conversions_token"], conversions::TOKEN);
    assert_eq!(
        stored["app_secret"], SECRET,
        "the rest of the secret is kept"
    );
    let key = stored["stage_keys"][0].as_str().unwrap().to_owned();
    assert!(key.len() >= 32);
    for private in [conversions::TOKEN, key.as_str()] {
        assert!(!said.contains(private), "connect never prints {private}");
    }
}
