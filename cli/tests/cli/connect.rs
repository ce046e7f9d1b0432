//! `leadpipe connect`, the real binary against the sandbox Graph: from a short-lived token to
//! subscribed pages, a merged 0600 secret and a test lead seen in `serve`'s SQLite file;
//! `--dry-run` changes nothing; each failure is named in Meta's words; no token is printed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe_sandbox::accounts::DEFAULT_USER_TOKEN;
use leadpipe_sandbox::server::demo_app_secret;
use leadpipe_sandbox::{Accounts, Dataset, DatasetSpec, Faults, Sandbox, TokenKind, UserToken};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::BINARY;

fn world() -> Dataset {
    Dataset::generate(&DatasetSpec {
        pages: 2,
        forms_per_page: 2,
        leads: 8,
        ..DatasetSpec::default()
    })
}

/// A sandbox whose pages have no app subscribed yet, as before a first connect.
async fn sandbox_with(data: &Dataset, faults: Faults, users: Vec<UserToken>) -> Sandbox {
    let sandbox = Sandbox::start(data.clone(), faults).await.unwrap();
    sandbox.set_accounts(Accounts {
        users,
        subscribed_pages: Some(BTreeSet::new()),
        ..Accounts::default()
    });
    sandbox
}

fn scratch(name: &str) -> PathBuf {
    crate::support::scratch("connect", name)
}

struct Run {
    ok: bool,
    code: Option<i32>,
    text: String,
}

async fn connect(sandbox: &Sandbox, user_token: &str, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(BINARY)
        .arg("connect")
        .args(["--app-id", leadpipe_sandbox::accounts::APP_ID])
        .args(args)
        .env("LEADPIPE_USER_TOKEN", user_token)
        .env("GRAPH_API_BASE", sandbox.base_url())
        .env_remove("APP_SECRET")
        .output()
        .await
        .unwrap();
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// No token or secret in what a person sees.
fn assert_no_secrets(text: &str, data: &Dataset, extra: &[&str]) {
    let mut secrets: Vec<String> = data.pages.iter().map(|(_, t)| t.clone()).collect();
    secrets.extend(
        [
            DEFAULT_USER_TOKEN,
            "sandbox-long-lived-1",
            "sandbox-long-lived-2",
            demo_app_secret(),
        ]
        .map(str::to_owned),
    );
    secrets.extend(extra.iter().map(|s| (*s).to_owned()));
    for secret in secrets {
        assert!(!text.contains(&secret), "{secret} is printed:\n{text}");
    }
}

async fn serve(db: &Path, secret: &Path, graph: &str) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(BINARY)
        .args(["serve", "--backfill-every", "0", "--workers", "2"])
        .env("LEADPIPE_DB", db)
        .env("LEADPIPE_SECRET_FILE", secret)
        .env("LEADPIPE_LISTEN", format!("127.0.0.1:{port}"))
        .env("GRAPH_API_BASE", graph)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if reqwest::get(format!("{base}/health"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return (child, format!("{base}/webhook"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("serve did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_subscribes_writes_the_secret_and_sees_a_test_lead_stored() {
    let data = world();
    let sandbox = sandbox_with(
        &data,
        Faults::default(),
        vec![UserToken::new(DEFAULT_USER_TOKEN, TokenKind::ShortLived)],
    )
    .await;
    let dir = scratch("happy");
    let secret_file = dir.join("secret.json");
    // What a person starts with: the app secret, a page from another token, a note.
    std::fs::write(
        &secret_file,
        serde_json::json!({"app_secret": demo_app_secret(), "page_tokens": {"777": "an-older-page-token-kept"}, "note": "mine"})
            .to_string(),
    )
    .unwrap();

    // First run: no callback yet (serve needs the verify token connect writes).
    let first = connect(
        &sandbox,
        DEFAULT_USER_TOKEN,
        &["--secret-file", secret_file.to_str().unwrap()],
    )
    .await;
    assert!(first.ok, "{}", first.text);
    assert!(
        first.text.contains("exchanged the short-lived token"),
        "{}",
        first.text
    );
    assert!(
        first.text.contains("verdict: ready: 2 page(s)"),
        "{}",
        first.text
    );
    let pages: Vec<String> = data.pages.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(sandbox.subscribed_pages(), pages);
    let secret = read_json(&secret_file);
    assert_eq!(secret["note"], "mine", "unknown keys are kept");
    assert_eq!(secret["app_secret"], demo_app_secret());
    assert_eq!(secret["page_tokens"]["777"], "an-older-page-token-kept");
    for (page, token) in &data.pages {
        assert_eq!(secret["page_tokens"][page], token.as_str());
    }
    assert_eq!(
        secret["access_token"], "sandbox-long-lived-1",
        "the long-lived token, not the short one"
    );
    let verify = secret["verify_token"].as_str().unwrap().to_owned();
    let lookup = secret["lookup_key"].as_str().unwrap().to_owned();
    assert!(verify.len() >= 32 && lookup.len() == 64, "{secret}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert_no_secrets(&first.text, &data, &[&verify, &lookup]);

    // Second run: the callback at a running serve, and a test lead.
    let db = dir.join("leads.db");
    let (mut server, callback) = serve(&db, &secret_file, &sandbox.base_url()).await;
    let second = connect(
        &sandbox,
        DEFAULT_USER_TOKEN,
        &[
            "--secret-file",
            secret_file.to_str().unwrap(),
            "--callback-url",
            &callback,
            "--test-lead",
            "--db",
            db.to_str().unwrap(),
            "--wait-seconds",
            "60",
        ],
    )
    .await;
    let _ = server.kill().await;
    assert!(second.ok, "{}", second.text);
    assert_eq!(sandbox.app_callback().as_deref(), Some(callback.as_str()));
    assert!(
        second.text.contains("answered Meta's challenge"),
        "{}",
        second.text
    );
    assert!(second.text.contains("verify_token kept"), "{}", second.text);
    let line = second
        .text
        .lines()
        .find(|l| l.contains("stored: in the store") && l.contains("s after it was created"))
        .unwrap_or_else(|| panic!("{}", second.text));
    let lead_id = line.split_whitespace().nth(3).unwrap().to_owned();
    let stored = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT source FROM leads WHERE lead_id = ?1",
            [&lead_id],
            |r| r.get::<_, String>(0),
        )
        .unwrap();
    assert_eq!(
        stored, "webhook",
        "it came through Meta's webhook, not a backfill"
    );
    assert!(
        sandbox.test_leads().is_empty(),
        "the test lead is deleted at Meta"
    );
    assert_eq!(read_json(&secret_file)["verify_token"], verify.as_str());
    assert_no_secrets(&second.text, &data, &[&verify, &lookup]);
}

#[tokio::test]
async fn dry_run_reads_everything_and_changes_nothing() {
    let data = world();
    let sandbox = sandbox_with(
        &data,
        Faults::default(),
        vec![UserToken::new(DEFAULT_USER_TOKEN, TokenKind::ShortLived)],
    )
    .await;
    let dir = scratch("dry");
    let secret_file = dir.join("secret.json");
    let before = serde_json::json!({"app_secret": demo_app_secret()}).to_string();
    std::fs::write(&secret_file, &before).unwrap();
    let leads_before = sandbox.dataset().leads.len();
    let run = connect(
        &sandbox,
        DEFAULT_USER_TOKEN,
        &[
            "--secret-file",
            secret_file.to_str().unwrap(),
            "--callback-url",
            "http://127.0.0.1:9/webhook",
            "--test-lead",
            "--db",
            dir.join("none.db").to_str().unwrap(),
            "--dry-run",
        ],
    )
    .await;
    assert!(run.ok, "{}", run.text);
    assert!(run.text.contains("would exchange"), "{}", run.text);
    assert!(run.text.contains("would write the secret"), "{}", run.text);
    assert!(run.text.contains("would subscribe app"), "{}", run.text);
    assert_eq!(std::fs::read_to_string(&secret_file).unwrap(), before);
    assert!(sandbox.subscribed_pages().is_empty());
    assert_eq!(sandbox.app_callback(), None);
    assert!(sandbox.test_leads().is_empty());
    assert_eq!(sandbox.dataset().leads.len(), leads_before);
    assert!(!dir.join("none.db").exists());
    assert_no_secrets(&run.text, &data, &[]);
}

#[tokio::test]
async fn an_expired_token_is_named_in_metas_words() {
    let data = world();
    let sandbox = sandbox_with(
        &data,
        Faults::default(),
        vec![UserToken::new("an-expired-user-token", TokenKind::Expired)],
    )
    .await;
    let dir = scratch("expired");
    let secret_file = dir.join("secret.json");
    std::fs::write(
        &secret_file,
        serde_json::json!({"app_secret": demo_app_secret()}).to_string(),
    )
    .unwrap();
    let run = connect(
        &sandbox,
        "an-expired-user-token",
        &["--secret-file", secret_file.to_str().unwrap()],
    )
    .await;
    assert!(!run.ok, "{}", run.text);
    assert!(
        run.text.contains("✘ the token is not valid"),
        "{}",
        run.text
    );
    assert!(run.text.contains("Session has expired"), "{}", run.text);
    assert!(run.text.contains("code 190/463"), "{}", run.text);
    assert!(sandbox.subscribed_pages().is_empty());
    assert_no_secrets(&run.text, &data, &["an-expired-user-token"]);
}

#[tokio::test]
async fn missing_scopes_denied_access_a_failed_challenge_and_an_old_test_lead() {
    let data = world();
    let denied = data.pages[1].0.clone();
    let system_user = UserToken::new("a-system-user-token-0001", TokenKind::SystemUser)
        .without(&["leads_retrieval"]);
    let sandbox = sandbox_with(
        &data,
        Faults {
            denied_pages: vec![denied.clone()],
            ..Faults::default()
        },
        vec![system_user],
    )
    .await;
    // A test lead left over from an earlier try on the first page's first form.
    let form = data
        .forms
        .iter()
        .find(|(p, _, _)| p == &data.pages[0].0)
        .unwrap()
        .1
        .clone();
    let client = leadpipe_graph::GraphClient::new(leadpipe_graph::GraphConfig {
        base_url: sandbox.base_url(),
        ..leadpipe_graph::GraphConfig::default()
    })
    .unwrap();
    let page_token = secrecy::SecretString::from(data.pages[0].1.clone());
    let old = client
        .create_test_lead(&page_token, &form, None)
        .await
        .unwrap();

    let dir = scratch("sick");
    let secret_file = dir.join("secret.json");
    std::fs::write(
        &secret_file,
        serde_json::json!({"app_secret": demo_app_secret(), "verify_token": "vt-from-before-0123456789"}).to_string(),
    )
    .unwrap();
    // The sandbox's own address answers the challenge with a Graph error, not the challenge.
    let run = connect(
        &sandbox,
        "a-system-user-token-0001",
        &[
            "--secret-file",
            secret_file.to_str().unwrap(),
            "--callback-url",
            &format!("{}/not-a-webhook", sandbox.base_url()),
            "--test-lead",
            "--db",
            dir.join("leads.db").to_str().unwrap(),
            "--wait-seconds",
            "1",
        ],
    )
    .await;
    assert!(!run.ok, "{}", run.text);
    assert!(
        run.text.contains("kept the token"),
        "a system user's token is not exchanged: {}",
        run.text
    );
    assert!(
        run.text.contains("✘ the token lacks leads_retrieval"),
        "{}",
        run.text
    );
    assert!(
        run.text.contains(
            "✘ no lead access: The user is not assigned to this Page in Leads Access Manager"
        ),
        "{}",
        run.text
    );
    assert!(
        run.text.contains("Meta says: Assign the user"),
        "{}",
        run.text
    );
    assert!(
        run.text.contains("(#2200) callback verification failed"),
        "{}",
        run.text
    );
    assert!(
        run.text
            .contains(&format!("deleted the form's earlier test lead {old}")),
        "{}",
        run.text
    );
    // Nothing answers the webhook, so the new test lead is not stored; it is deleted anyway.
    assert!(
        run.text.contains("was not stored within 1 s"),
        "{}",
        run.text
    );
    assert!(sandbox.test_leads().is_empty());
    let table_row = run
        .text
        .lines()
        .find(|l| l.contains(&denied) && l.contains("NO"))
        .unwrap_or_else(|| panic!("{}", run.text));
    assert!(
        table_row.contains("yes"),
        "subscribed but not readable: {table_row}"
    );
    assert!(run.text.contains("need a person's action"), "{}", run.text);
    let secret = read_json(&secret_file);
    assert_eq!(secret["verify_token"], "vt-from-before-0123456789");
    assert_eq!(secret["access_token"], "a-system-user-token-0001");
    assert_no_secrets(
        &run.text,
        &data,
        &["a-system-user-token-0001", "vt-from-before-0123456789"],
    );
}

fn token_for(token: &str, pages: Vec<String>) -> UserToken {
    UserToken {
        pages: Some(pages),
        ..UserToken::new(token, TokenKind::ShortLived)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_sees_no_page_is_a_problem_not_ready() {
    let data = world();
    let sandbox = sandbox_with(
        &data,
        Faults::default(),
        vec![token_for("token-without-pages", Vec::new())],
    )
    .await;
    let dir = scratch("no-pages");
    let secret_file = dir.join("secret.json");
    std::fs::write(
        &secret_file,
        serde_json::json!({"app_secret": demo_app_secret()}).to_string(),
    )
    .unwrap();
    let run = connect(
        &sandbox,
        "token-without-pages",
        &["--secret-file", secret_file.to_str().unwrap()],
    )
    .await;
    assert!(!run.ok, "{}", run.text);
    assert_eq!(run.code, Some(1), "a person must act: {}", run.text);
    assert!(run.text.contains("the token sees no page"), "{}", run.text);
    assert!(run.text.contains("business_management"), "{}", run.text);
    assert!(!run.text.contains("verdict: ready"), "{}", run.text);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connects_at_once_both_keep_their_pages() {
    let data = world();
    let pages: Vec<String> = data.pages.iter().map(|(p, _)| p.clone()).collect();
    let sandbox = sandbox_with(
        &data,
        Faults::default(),
        vec![
            token_for("token-page-one", vec![pages[0].clone()]),
            token_for("token-page-two", vec![pages[1].clone()]),
        ],
    )
    .await;
    let dir = scratch("concurrent");
    let real = dir.join("real-secret.json");
    std::fs::write(
        &real,
        serde_json::json!({"app_secret": demo_app_secret()}).to_string(),
    )
    .unwrap();
    // The secret file is a link, as a mounted secret often is: it stays one.
    let link = dir.join("secret.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let args = ["--secret-file", link.to_str().unwrap()];
    let (one, two) = tokio::join!(
        connect(&sandbox, "token-page-one", &args),
        connect(&sandbox, "token-page-two", &args)
    );
    assert!(one.ok, "{}", one.text);
    assert!(two.ok, "{}", two.text);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "written through the link, not over it"
    );
    let secret = read_json(&real);
    for (page, token) in &data.pages {
        assert_eq!(
            secret["page_tokens"][page],
            token.as_str(),
            "no connect lost the other's page: {secret}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn connect_brings_back_only_the_fixed_pages_token_and_permission_dead_letters() {
    use leadpipe_core::ports::{DeadLetterClass, DeadLetterReason, QueueControl};
    let data = world();
    let sandbox = sandbox_with(
        &data,
        Faults::default(),
        vec![UserToken::new(DEFAULT_USER_TOKEN, TokenKind::ShortLived)],
    )
    .await;
    let dir = scratch("heal");
    let secret_file = dir.join("secret.json");
    std::fs::write(
        &secret_file,
        serde_json::json!({"app_secret": demo_app_secret()}).to_string(),
    )
    .unwrap();
    let db_path = dir.join("serve.db");
    let (fixed, other) = (data.pages[0].0.clone(), data.pages[1].0.clone());
    {
        let db = leadpipe_local::LocalDb::open(&db_path).unwrap();
        let control = leadpipe_local::LocalQueueControl {
            db,
            max_delay: Duration::from_secs(60),
        };
        let body = |page: &str, lead: &str| {
            format!(
                r#"{{"leadgen_id":"{lead}","page_id":"{page}","received_at":"2026-12-01T00:00:00Z"}}"#
            )
        };
        for (page, lead, class) in [
            (&fixed, "11", DeadLetterClass::Token),
            (&fixed, "12", DeadLetterClass::Permission),
            (&fixed, "13", DeadLetterClass::NotFound),
            (&other, "21", DeadLetterClass::Token),
        ] {
            let reason = DeadLetterReason {
                class,
                detail: "as Meta said".into(),
            };
            control
                .dead_letter(&body(page, lead), &reason)
                .await
                .unwrap();
        }
    }
    let args = |dry: bool| {
        let mut args = vec![
            "--secret-file".to_owned(),
            secret_file.to_str().unwrap().to_owned(),
            "--page".to_owned(),
            fixed.clone(),
            "--db".to_owned(),
            db_path.to_str().unwrap().to_owned(),
        ];
        if dry {
            args.push("--dry-run".into());
        }
        args
    };
    let dry = args(true);
    let dry: Vec<&str> = dry.iter().map(String::as_str).collect();
    let run = connect(&sandbox, DEFAULT_USER_TOKEN, &dry).await;
    assert!(
        run.text.contains("would bring back 2 lead(s)"),
        "{}",
        run.text
    );
    let db = leadpipe_local::LocalDb::open_read_only(&db_path).unwrap();
    assert_eq!(
        db.dead_letters().unwrap().len(),
        4,
        "a dry run moves nothing"
    );

    let real = args(false);
    let real: Vec<&str> = real.iter().map(String::as_str).collect();
    let run = connect(&sandbox, DEFAULT_USER_TOKEN, &real).await;
    assert!(run.text.contains("brought back 2 lead(s)"), "{}", run.text);
    let left: Vec<(String, String)> = db
        .dead_letters()
        .unwrap()
        .into_iter()
        .map(|d| (d.body, d.reason_class))
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter().any(|(b, c)| b.contains(&other) && c == "token"),
        "another page's stays"
    );
    assert!(
        left.iter()
            .any(|(b, c)| b.contains(&fixed) && c == "not_found"),
        "another class stays"
    );
    assert_no_secrets(&run.text, &data, &[]);
}

/// Posts each lead's webhook to `webhook`, signed as Meta signs it.
async fn post_leads(webhook: &str, leads: &[leadpipe_sandbox::SandboxLead]) {
    let client = reqwest::Client::new();
    for lead in leads {
        let body = leadpipe_sandbox::sender::post_body(
            &[lead],
            time::OffsetDateTime::now_utc().unix_timestamp(),
        );
        let signature =
            leadpipe_core::signature::sign(demo_app_secret().as_bytes(), body.as_bytes()).unwrap();
        let response = client
            .post(webhook)
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_invalidated_while_leads_arrive_is_healed_by_connect_and_no_lead_is_lost() {
    let data = Dataset::generate(&DatasetSpec {
        pages: 2,
        forms_per_page: 1,
        leads: 24,
        ..DatasetSpec::default()
    });
    let sandbox = sandbox_with(
        &data,
        Faults::default(),
        vec![UserToken::new(DEFAULT_USER_TOKEN, TokenKind::ShortLived)],
    )
    .await;
    let dir = scratch("rotate");
    let secret_file = dir.join("secret.json");
    std::fs::write(
        &secret_file,
        serde_json::json!({"app_secret": demo_app_secret()}).to_string(),
    )
    .unwrap();
    let secret_arg = ["--secret-file", secret_file.to_str().unwrap()];
    let first = connect(&sandbox, DEFAULT_USER_TOKEN, &secret_arg).await;
    assert!(first.text.contains("wrote the secret"), "{}", first.text);
    let db_path = dir.join("serve.db");
    let (mut server, webhook) = serve(&db_path, &secret_file, &sandbox.base_url()).await;
    let db = leadpipe_local::LocalDb::open_read_only(&db_path).unwrap();
    let (before, after) = data.leads.split_at(data.leads.len() / 2);
    post_leads(&webhook, before).await;
    crate::support::wait_on_progress(|| {
        let n = db.leads().unwrap().len();
        (n == before.len(), n)
    })
    .await;

    // The second page's session is invalidated (190/467, as when its person logs out
    // everywhere; a password change is 460): Meta refuses its token from now on.
    let page = data.pages[1].0.clone();
    assert!(sandbox.invalidate_page_token(&page, 467).is_some());
    post_leads(&webhook, after).await;
    let waiting = after.iter().filter(|l| l.page_id == page).count();
    crate::support::wait_on_progress(|| {
        let stored = db.leads().unwrap().len();
        let dead = db.dead_letters().unwrap().len();
        (
            stored == data.leads.len() - waiting && dead == waiting,
            stored + dead,
        )
    })
    .await;
    assert!(
        db.dead_letters()
            .unwrap()
            .iter()
            .all(|d| d.reason_class == "token"),
        "the page's leads wait as token dead letters; the other page's are stored"
    );

    // A new token through connect: written, and what waited comes home. The running serve
    // reads the rewritten file at once, without a restart.
    let db_arg = db_path.to_str().unwrap();
    let args = [
        "--secret-file",
        secret_file.to_str().unwrap(),
        "--page",
        page.as_str(),
        "--db",
        db_arg,
    ];
    let healed = connect(&sandbox, DEFAULT_USER_TOKEN, &args).await;
    assert!(
        healed
            .text
            .contains(&format!("brought back {waiting} lead(s)")),
        "{}",
        healed.text
    );
    crate::support::wait_on_progress(|| {
        let n = db.leads().unwrap().len();
        (n == data.leads.len(), n)
    })
    .await;
    assert!(db.dead_letters().unwrap().is_empty());
    let ids: BTreeSet<String> = db.leads().unwrap().into_iter().map(|r| r.lead_id).collect();
    assert_eq!(ids.len(), data.leads.len(), "each lead once");
    assert_no_secrets(&healed.text, &data, &[]);
    let _ = server.kill().await;
}

#[tokio::test]
async fn pages_held_in_a_business_are_found_and_say_which_way() {
    let data = world();
    let (own, owned_by_business) = (data.pages[0].0.clone(), data.pages[1].0.clone());
    let mut person = token_for(DEFAULT_USER_TOKEN, vec![own.clone()]);
    person.scopes.push("business_management".into());
    let sandbox = Sandbox::start(data.clone(), Faults::default())
        .await
        .unwrap();
    sandbox.set_accounts(Accounts {
        users: vec![person],
        subscribed_pages: Some(BTreeSet::new()),
        businesses: vec![leadpipe_sandbox::SandboxBusiness {
            id: "3000000000001".into(),
            name: "Acme Agency".into(),
            owned_pages: vec![owned_by_business.clone()],
            client_pages: vec![own.clone()],
        }],
        ..Accounts::default()
    });
    let dir = scratch("business");
    let secret_file = dir.join("secret.json");
    std::fs::write(
        &secret_file,
        serde_json::json!({"app_secret": demo_app_secret()}).to_string(),
    )
    .unwrap();
    let run = connect(
        &sandbox,
        DEFAULT_USER_TOKEN,
        &["--secret-file", secret_file.to_str().unwrap()],
    )
    .await;
    assert!(run.text.contains("1 business(es) seen"), "{}", run.text);
    assert!(
        run.text
            .contains("found through business Acme Agency (owned page)"),
        "{}",
        run.text
    );
    assert!(
        run.text.contains("found through the person's own pages"),
        "{}",
        run.text
    );
    let secret = read_json(&secret_file);
    for page in [&own, &owned_by_business] {
        assert!(secret["page_tokens"][page].is_string(), "{page}: {secret}");
    }
    assert_no_secrets(&run.text, &data, &[]);

    // Without business_management the business's page is not listed, and connect says why.
    sandbox.set_accounts(Accounts {
        users: vec![token_for(DEFAULT_USER_TOKEN, vec![own.clone()])],
        subscribed_pages: Some(BTreeSet::new()),
        businesses: vec![leadpipe_sandbox::SandboxBusiness {
            id: "3000000000001".into(),
            name: "Acme Agency".into(),
            owned_pages: vec![owned_by_business.clone()],
            client_pages: Vec::new(),
        }],
        ..Accounts::default()
    });
    let other = dir.join("other.json");
    std::fs::write(
        &other,
        serde_json::json!({"app_secret": demo_app_secret()}).to_string(),
    )
    .unwrap();
    let run = connect(
        &sandbox,
        DEFAULT_USER_TOKEN,
        &["--secret-file", other.to_str().unwrap(), "--dry-run"],
    )
    .await;
    assert!(
        run.text.contains("the token lacks business_management"),
        "{}",
        run.text
    );
}
