//! `leadpipe serve` killed with SIGKILL mid-run, and restarted on the same file, loses none
//! of the leads it answered 200 for.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe_sandbox::sender::post_body;
use leadpipe_sandbox::{Dataset, DatasetSpec, Faults, Sandbox};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::BINARY;
const SECRET: &str = "kill-test-app-secret";

use crate::support::free_port;

fn serve(
    db: &std::path::Path,
    secret_file: &std::path::Path,
    port: u16,
    graph: &str,
) -> tokio::process::Child {
    tokio::process::Command::new(BINARY)
        .args([
            "serve",
            "--backfill-every",
            "0",
            "--visibility-seconds",
            "1",
            "--workers",
            "2",
        ])
        .env("LEADPIPE_DB", db)
        .env("LEADPIPE_SECRET_FILE", secret_file)
        .env("LEADPIPE_LISTEN", format!("127.0.0.1:{port}"))
        .env("GRAPH_API_BASE", graph)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn wait_healthy(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if reqwest::get(format!("http://127.0.0.1:{port}/health"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("serve did not come up");
}

/// A sandbox Graph of `leads` leads with `faults`, and a scratch directory holding the
/// database's path and a secret with the sandbox's page tokens.
struct World {
    data: Dataset,
    sandbox: Sandbox,
    dir: std::path::PathBuf,
    db: std::path::PathBuf,
    secret_file: std::path::PathBuf,
}

async fn world(name: &str, leads: usize, faults: Faults) -> World {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let data = Dataset::generate(&DatasetSpec {
        leads,
        newest: now - 60,
        ..DatasetSpec::default()
    });
    let sandbox = Sandbox::start(data.clone(), faults).await.unwrap();
    let dir = crate::support::scratch("serve", name);
    let tokens: serde_json::Map<String, serde_json::Value> =
        leadpipe_sandbox::server::tokens(&data)
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
    World {
        data,
        sandbox,
        db: dir.join("serve.db"),
        dir,
        secret_file,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_loses_nothing_that_was_answered() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // A slow Graph: the queue is still full when the process dies.
    let World {
        data,
        sandbox,
        dir: _dir,
        db,
        secret_file,
    } = world(
        "kill",
        200,
        Faults {
            latency: Duration::from_millis(300),
            ..Faults::default()
        },
    )
    .await;

    let port = free_port();
    let mut first = serve(&db, &secret_file, port, &sandbox.base_url());
    wait_healthy(port).await;
    let client = reqwest::Client::new();
    let mut answered = Vec::new();
    for lead in &data.leads {
        let body = post_body(&[lead], now);
        let signature = leadpipe_core::signature::sign(SECRET.as_bytes(), body.as_bytes()).unwrap();
        let response = client
            .post(format!("http://127.0.0.1:{port}/webhook"))
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        if response.status().is_success() {
            answered.push(lead.id.clone());
        }
    }
    assert_eq!(answered.len(), data.leads.len());
    // SIGKILL: no shutdown code runs.
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let local = leadpipe_local::LocalDb::open(&db).unwrap();
    let stored_before = local.lead_count().unwrap();
    assert!(
        stored_before < answered.len() as i64,
        "the kill came mid-run ({stored_before} stored)"
    );

    // Restart on the same file with a fast Graph; nothing may be missing.
    sandbox.set_faults(Faults::default());
    let port = free_port();
    let _second = serve(&db, &secret_file, port, &sandbox.base_url());
    wait_healthy(port).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while local.lead_count().unwrap() < answered.len() as i64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored: std::collections::BTreeSet<String> = local
        .leads()
        .unwrap()
        .into_iter()
        .map(|r| r.lead_id)
        .collect();
    let missing: Vec<&String> = answered.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} answered leads missing",
        missing.len()
    );
    assert_eq!(stored.len(), answered.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_posts_in_flight_answers_them_stores_them_and_exits_zero() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let World {
        data,
        sandbox,
        dir,
        db,
        secret_file,
    } = world(
        "term",
        120,
        Faults {
            latency: Duration::from_millis(200),
            ..Faults::default()
        },
    )
    .await;
    let port = free_port();
    let child = tokio::process::Command::new(BINARY)
        .args(["serve", "--backfill-every", "0", "--workers", "2"])
        .env("LEADPIPE_DB", &db)
        .env("LEADPIPE_SECRET_FILE", &secret_file)
        .env("LEADPIPE_LISTEN", format!("127.0.0.1:{port}"))
        .env("GRAPH_API_BASE", sandbox.base_url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    wait_healthy(port).await;
    // Posts from many clients at once; SIGTERM once the first are answered.
    let client = reqwest::Client::new();
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut posts = Vec::new();
    for lead in data.leads.clone() {
        let (client, answered) = (client.clone(), answered.clone());
        posts.push(tokio::spawn(async move {
            let body = post_body(&[&lead], now);
            let signature =
                leadpipe_core::signature::sign(SECRET.as_bytes(), body.as_bytes()).unwrap();
            let sent = client
                .post(format!("http://127.0.0.1:{port}/webhook"))
                .header("x-hub-signature-256", signature)
                .body(body)
                .send()
                .await;
            if sent.is_ok_and(|r| r.status().is_success()) {
                answered.lock().unwrap().push(lead.id.clone());
            }
        }));
    }
    while answered.lock().unwrap().len() < 10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    for post in posts {
        post.await.unwrap();
    }
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("serve stopped after SIGTERM")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("leadpipe serving: webhook at"), "{stdout}");
    assert!(stdout.contains("leadpipe stopping (SIGTERM)"), "{stdout}");
    assert!(stdout.contains("leadpipe stopped"), "{stdout}");
    // Every post answered 200 is durable: a restart brings each of its leads home.
    let answered = answered.lock().unwrap().clone();
    sandbox.set_faults(Faults::default());
    let port = free_port();
    let _second = serve(&db, &secret_file, port, &sandbox.base_url());
    wait_healthy(port).await;
    let local = leadpipe_local::LocalDb::open_read_only(&db).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored: std::collections::BTreeSet<String> = local
            .leads()
            .unwrap()
            .into_iter()
            .map(|r| r.lead_id)
            .collect();
        let missing = answered.iter().filter(|id| !stored.contains(*id)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} answered leads missing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_outage_longer_than_the_receive_limit_is_brought_home_by_its_class() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // Graph down: every read fails, transiently, for longer than the queue's receives last.
    let World {
        data,
        sandbox,
        dir,
        db,
        secret_file,
    } = world(
        "outage",
        6,
        Faults {
            transient_rate: 1.0,
            ..Faults::default()
        },
    )
    .await;
    let port = free_port();
    let _serve = serve(&db, &secret_file, port, &sandbox.base_url());
    wait_healthy(port).await;
    let client = reqwest::Client::new();
    for lead in &data.leads {
        let body = post_body(&[lead], now);
        let signature = leadpipe_core::signature::sign(SECRET.as_bytes(), body.as_bytes()).unwrap();
        let answer = client
            .post(format!("http://127.0.0.1:{port}/webhook"))
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success());
    }
    // Progress, not a clock: wait until every message used up its receives.
    let status = || {
        let out = std::process::Command::new(BINARY)
            .args(["status", "--json", "--db"])
            .arg(&db)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let class = loop {
        let report = status();
        let groups = report["dead_letters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let total: u64 = groups.iter().map(|g| g["count"].as_u64().unwrap()).sum();
        if total == data.leads.len() as u64 {
            assert_eq!(groups.len(), 1, "{report}");
            break groups[0]["reason_class"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "not dead-lettered: {report}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(class, "exhausted");
    // Every class status can print is one redrive takes.
    for name in leadpipe_core::ports::DeadLetterClass::ALL.map(|c| c.as_str()) {
        let out = std::process::Command::new(BINARY)
            .args(["redrive", "--dry-run", "--reason-class", name, "--db"])
            .arg(&db)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Graph is back; the class status named brings every lead home.
    sandbox.set_faults(Faults::default());
    let out = std::process::Command::new(BINARY)
        .args(["redrive", "--reason-class", &class, "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("moved {} dead letter(s)", data.leads.len())),
        "{said}"
    );
    let local = leadpipe_local::LocalDb::open_read_only(&db).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while local.lead_count().unwrap() < data.leads.len() as i64 {
        assert!(
            Instant::now() < deadline,
            "the redriven leads were not stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status()["verdict"], "ok");
    let _ = std::fs::remove_dir_all(&dir);
}
