//! `leadpipe serve` at its edges, as the real binary: idle and slow clients do not keep
//! Meta's posts out, a repeated `hub.verify_token` is read as the Lambda reads it, `/health`
//! says the store's real state, and a database that cannot be written stops it at start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::BINARY;
const APP_SECRET: &str = "edges-app-secret";
const VERIFY: &str = "edges-verify-token";

struct Served {
    _child: tokio::process::Child,
    port: u16,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("leadpipe-edges-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

use crate::support::free_port;

fn command(dir: &std::path::Path, port: u16, extra: &[&str]) -> tokio::process::Command {
    let secret = dir.join("secret.json");
    leadpipe::write_private(
        &secret,
        format!(
            r#"{{"app_secret":"{APP_SECRET}","verify_token":"{VERIFY}","access_token":"EAAx"}}"#
        ),
    )
    .unwrap();
    let mut command = tokio::process::Command::new(BINARY);
    command
        .args(["serve", "--backfill-every", "0", "--workers", "1"])
        .args(extra)
        .arg("--db")
        .arg(dir.join("leads.db"))
        .arg("--secret-file")
        .arg(&secret)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("GRAPH_API_BASE", "http://127.0.0.1:9")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn serve(name: &str, extra: &[&str]) -> Served {
    let dir = temp_dir(name);
    let port = free_port();
    let child = command(&dir.0, port, extra).spawn().unwrap();
    // Waits on progress: the first answer from /health.
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/health")).await {
            assert!(r.status().is_success(), "{:?}", r.text().await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Served {
        _child: child,
        port,
        _dir: dir,
    }
}

fn signed_post() -> (String, String) {
    let body = r#"{"object":"page","entry":[{"id":"77","time":1764470000,"changes":[{"field":"leadgen","value":{"leadgen_id":"4242","page_id":"77","form_id":"9","created_time":1764470000}}]}]}"#.to_owned();
    let signature = leadpipe_core::signature::sign(APP_SECRET.as_bytes(), body.as_bytes()).unwrap();
    (body, signature)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_do_not_keep_a_signed_post_out() {
    let served = serve(
        "slow",
        &[
            "--max-connections",
            "8",
            "--header-timeout-seconds",
            "2",
            "--body-timeout-seconds",
            "2",
        ],
    )
    .await;
    let address = format!("127.0.0.1:{}", served.port);
    // More idle and slow-header clients than the server has connection slots.
    let mut idle = Vec::new();
    for i in 0..24 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        if i % 2 == 0 {
            stream
                .write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        idle.push(stream);
    }
    // One that sends its headers but never its whole body.
    let mut slow_body = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow_body
        .write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"obj")
        .await
        .unwrap();

    let (body, signature) = signed_post();
    let answer = reqwest::Client::new()
        .post(format!("http://{address}/webhook"))
        .header("x-hub-signature-256", signature)
        .body(body)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "Meta's post got through");

    // The server closed the idle and slow ones itself (read sees the end, not a hang).
    for stream in &mut idle {
        let mut buf = [0u8; 512];
        let read = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "an idle connection was never closed"
        );
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), slow_body.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_verify_token_is_read_as_the_lambda_reads_it_first_wins() {
    let served = serve("verify", &[]).await;
    let get = |query: String| async move {
        let r = reqwest::get(format!("http://127.0.0.1:{}/webhook?{query}", served.port))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let wrong_first = format!(
        "hub.mode=subscribe&hub.verify_token=nope&hub.verify_token={VERIFY}&hub.challenge=77"
    );
    assert_eq!(get(wrong_first).await.0, 403);
    let right_first = format!(
        "hub.mode=subscribe&hub.verify_token={VERIFY}&hub.verify_token=nope&hub.challenge=77"
    );
    assert_eq!(get(right_first).await, (200, "77".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_store() {
    let served = serve("health", &[]).await;
    let health: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{}/health", served.port))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["store"], "writable");
}

/// Makes `path` unwritable even for root (immutable), or by mode for anyone else. False when
/// neither works here.
fn make_unwritable(path: &std::path::Path) -> bool {
    let immutable = std::process::Command::new("chattr")
        .arg("+i")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    if !immutable {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444));
    }
    std::fs::OpenOptions::new().append(true).open(path).is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_be_written_stops_serve_at_start() {
    let dir = temp_dir("readonly");
    let db = dir.0.join("leads.db");
    leadpipe_local::LocalDb::open(&db).unwrap();
    let unwritable = make_unwritable(&db);
    let port = free_port();
    let run = command(&dir.0, port, &[]).output();
    let out = tokio::time::timeout(Duration::from_secs(60), run).await;
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&db)
        .status();
    if !unwritable {
        eprintln!("skipped: this machine cannot make a file unwritable for this user");
        return;
    }
    let out = out
        .expect("serve refused to start rather than running")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not writable"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_database_refuses_to_start_and_names_the_first() {
    let served = serve("twice", &[]).await;
    let pid = served._child.id().unwrap();
    let second = command(&served._dir.0, free_port(), &[]).output();
    let out = tokio::time::timeout(Duration::from_secs(60), second)
        .await
        .expect("the second serve refused to start rather than running")
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("another leadpipe serve (process {pid})")),
        "{stderr}"
    );
    // The first one still answers.
    let health = reqwest::get(format!("http://127.0.0.1:{}/health", served.port))
        .await
        .unwrap();
    assert!(health.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risky_forwarding_settings_are_refused_before_anything_starts() {
    let dir = temp_dir("risky");
    let key = dir.0.join("forward.key");
    leadpipe::write_private(&key, "é".repeat(9)).unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--forward-to",
                "http://crm.example/in",
                "--forward-secret-file",
                key.to_str().unwrap(),
            ],
            "--allow-http",
        ),
        (
            &[
                "--forward-to",
                "https://crm.example/in",
                "--forward-secret-file",
                key.to_str().unwrap(),
            ],
            "shorter than 16 characters",
        ),
        (
            &[
                "--forward-to",
                "https://crm.example/in",
                "--forward-secret-file",
                "/dev/zero",
            ],
            "not a regular file",
        ),
        (
            &[
                "--forward-to",
                "https://crm.example/in",
                "--forward-secret-file",
                "/etc",
            ],
            "cannot be read",
        ),
    ];
    for (extra, says) in cases {
        let run = command(&dir.0, free_port(), extra).output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("refused at once")
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_zero_workers_and_a_secret_others_can_read() {
    let dir = temp_dir("refusals");
    let out = tokio::process::Command::new(BINARY)
        .args(["serve", "--workers", "0"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1..=64"), "{stderr}");
    // A secret file anyone can read is refused, with the fix, as ssh refuses a key.
    let mut shared = command(&dir.0, free_port(), &[]);
    let secret = dir.0.join("secret.json");
    let out = {
        use std::os::unix::fs::PermissionsExt;
        // `command` wrote the file 0600; open it up before the run.
        let child = shared.stdout(Stdio::piped());
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        child.output().await.unwrap()
    };
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("can be read by others (mode 644)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("chmod 600 {}", secret.display())),
        "{stderr}"
    );
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let analyze = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output();
    if !analyze.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: systemd-analyze is not installed here");
        return;
    }
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/local/leadpipe.service"),
    )
    .unwrap();
    // The unit as installed, with ExecStart at the binary built here.
    let dir = temp_dir("unit");
    let path = dir.0.join("leadpipe.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/leadpipe", BINARY)).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("leadpipe.service"))
        .collect();
    assert!(about_unit.is_empty(), "{said}");
}
