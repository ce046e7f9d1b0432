//! `leadpipe doctor` against the sandbox Graph: a healthy page passes, an expired token and
//! a denied page are named with what to do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe_sandbox::{Dataset, DatasetSpec, Faults, Sandbox};

use crate::support::BINARY;

async fn doctor(sandbox: &Sandbox, data: &Dataset, name: &str) -> (bool, String) {
    let (code, text) = doctor_code(sandbox, data, name).await;
    (code == Some(0), text)
}

async fn doctor_code(sandbox: &Sandbox, data: &Dataset, name: &str) -> (Option<i32>, String) {
    let tokens: serde_json::Map<String, serde_json::Value> = leadpipe_sandbox::server::tokens(data)
        .into_iter()
        .map(|(p, t)| (p, serde_json::json!(t)))
        .collect();
    let file = std::env::temp_dir().join(format!(
        "leadpipe-doctor-{name}-{}.json",
        std::process::id()
    ));
    leadpipe::write_private(
        &file,
        serde_json::json!({"app_secret": "s", "page_tokens": tokens}).to_string(),
    )
    .unwrap();
    let out = tokio::process::Command::new(BINARY)
        .arg("doctor")
        .env("LEADPIPE_SECRET_FILE", &file)
        .env("GRAPH_API_BASE", sandbox.base_url())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test]
async fn doctor_gives_a_verdict_and_what_to_do() {
    let data = Dataset::generate(&DatasetSpec {
        pages: 2,
        leads: 4,
        ..DatasetSpec::default()
    });
    let healthy = Sandbox::start(data.clone(), Faults::default())
        .await
        .unwrap();
    let (ok, text) = doctor(&healthy, &data, "ok").await;
    assert!(ok, "{text}");
    assert!(text.contains("verdict: ready"), "{text}");
    assert!(
        !text.contains("sandbox-page-token"),
        "no token is printed: {text}"
    );

    let (expired, denied) = (data.pages[0].0.clone(), data.pages[1].0.clone());
    let sick = Sandbox::start(
        data.clone(),
        Faults {
            expired_token_pages: vec![expired],
            denied_pages: vec![denied],
            ..Faults::default()
        },
    )
    .await
    .unwrap();
    let (ok, text) = doctor(&sick, &data, "sick").await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("token is not valid") || text.contains("token check failed"),
        "{text}"
    );
    assert!(text.contains("Leads Access Manager"), "{text}");
    assert!(text.contains("problem(s) above"), "{text}");
}

#[tokio::test]
async fn doctor_names_a_page_without_the_apps_subscription_and_changes_nothing() {
    let data = Dataset::generate(&DatasetSpec {
        pages: 1,
        leads: 2,
        ..DatasetSpec::default()
    });
    let sandbox = Sandbox::start(data.clone(), Faults::default())
        .await
        .unwrap();
    sandbox.set_accounts(leadpipe_sandbox::Accounts {
        subscribed_pages: Some(Default::default()),
        ..leadpipe_sandbox::Accounts::default()
    });
    let (ok, text) = doctor(&sandbox, &data, "unsubscribed").await;
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "✘ the app does not get this page's leadgen webhooks: run `leadpipe connect`"
        ),
        "{text}"
    );
    assert!(sandbox.subscribed_pages().is_empty(), "doctor only reads");
}

#[tokio::test]
async fn a_read_that_failed_is_a_check_not_made_never_a_finding() {
    let data = Dataset::generate(&DatasetSpec {
        pages: 1,
        leads: 2,
        ..DatasetSpec::default()
    });
    let page = data.pages[0].0.clone();
    let sandbox = Sandbox::start(
        data.clone(),
        Faults {
            unreadable_subscriptions: vec![page],
            ..Faults::default()
        },
    )
    .await
    .unwrap();
    let (code, text) = doctor_code(&sandbox, &data, "unreadable").await;
    // Not "does not get the webhooks": Graph never said so.
    assert!(!text.contains("does not get"), "{text}");
    assert!(
        text.contains("? could not check: whether the app gets this page's leadgen webhooks"),
        "{text}"
    );
    assert!(text.contains("check(s) could not be made"), "{text}");
    assert!(!text.contains("verdict: ready"), "{text}");
    assert_eq!(
        code,
        Some(2),
        "an error, not a verdict about the setup: {text}"
    );
}

#[tokio::test]
async fn one_backfill_run_puts_a_dead_page_token_in_status_with_its_fix() {
    let data = Dataset::generate(&DatasetSpec {
        pages: 3,
        leads: 4,
        ..DatasetSpec::default()
    });
    let (dead, fine) = (data.pages[0].0.clone(), data.pages[1].0.clone());
    let sandbox = Sandbox::start(
        data.clone(),
        Faults {
            expired_token_pages: vec![dead.clone()],
            ..Faults::default()
        },
    )
    .await
    .unwrap();
    // A third page's token, derived from a person's 60-day token, ends in two days.
    let (dying, _) = data.pages[2].clone();
    sandbox.set_page_token_expiry(
        &dying,
        time::OffsetDateTime::now_utc().unix_timestamp() + 2 * 86_400,
    );
    let dir = crate::support::scratch("doctor", "tokens");
    let secret = dir.join("secret.json");
    let tokens: serde_json::Map<String, serde_json::Value> =
        leadpipe_sandbox::server::tokens(&data)
            .into_iter()
            .map(|(p, t)| (p, serde_json::json!(t)))
            .collect();
    leadpipe::write_private(
        &secret,
        serde_json::json!({"app_secret": "s", "page_tokens": tokens}).to_string(),
    )
    .unwrap();
    let db = dir.join("leads.db");
    let run = |args: &'static [&'static str]| {
        tokio::process::Command::new(BINARY)
            .args(args)
            .arg("--db")
            .arg(&db)
            .env("LEADPIPE_SECRET_FILE", &secret)
            .env("GRAPH_API_BASE", sandbox.base_url())
            .output()
    };
    let backfill = run(&["backfill"]).await.unwrap();
    assert!(
        !backfill.status.success(),
        "a page was skipped: a person must act"
    );
    let status = run(&["status", "--json"]).await.unwrap();
    assert_eq!(status.status.code(), Some(1), "needs a person");
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let tokens = json["page_tokens"].as_array().unwrap();
    let state = |page: &str| {
        tokens
            .iter()
            .find(|t| t["page_id"] == page)
            .map(|t| t["state"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(state(&dead).as_deref(), Some("invalid"), "{json}");
    assert_eq!(state(&fine).as_deref(), Some("valid"), "{json}");
    assert_eq!(state(&dying).as_deref(), Some("expiring_soon"), "{json}");
    assert!(
        json["needs_a_person"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "page_tokens")
    );
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        !text.contains("sandbox-page-token"),
        "no token is printed: {text}"
    );
}
