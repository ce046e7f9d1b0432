use super::*;
use crate::contract::sample_lead_event;
use crate::memory::{MemoryDeliveries, ScriptedDestination};

const FILE: &str = r#"
[[destination]]
name = "sales"
kind = "hubspot"
forms = ["55"]
[destination.map]
fb_lead_id = "lead_id"
services = "answers.which_services"
lead_source = "'Facebook Lead Ads'"

[[destination]]
name = "team-chat"
kind = "slack"
"#;

fn config(kind: DestinationKind) -> DestinationConfig {
    let text = format!(
        "[[destination]]\nname = \"d\"\nkind = \"{}\"\nbase_url = \"https://x.test\"\nlogin_url = \"https://acme.my.salesforce.com\"\nlead_id_field = \"abc\"\nurl = \"https://hook.test\"\n",
        kind.as_str()
    );
    parse_file(&text).unwrap().remove(0)
}

#[test]
fn a_file_reads_with_its_kinds_defaults_under_its_own_map() {
    let all = parse_file(FILE).unwrap();
    assert_eq!(all.len(), 2);
    let sales = &all[0];
    assert_eq!(sales.name.as_str(), "sales");
    assert_eq!(sales.kind, DestinationKind::Hubspot);
    let lead = sample_lead_event("4444", "55", "jane@example.org");
    let props = sales.map.apply(&lead);
    let get = |k: &str| props.iter().find(|(t, _)| t == k).map(|(_, v)| v.as_str());
    // The kind's defaults, then the file's own.
    assert_eq!(get("email"), Some("jane@example.org"));
    assert_eq!(get("firstname"), Some("Jane"));
    assert_eq!(get("fb_lead_id"), Some("4444"));
    assert_eq!(get("services"), Some("Solar panels, Battery"));
    assert_eq!(get("lead_source"), Some("Facebook Lead Ads"));
    assert_eq!(get("city"), None, "a part the lead lacks is left out");
    assert!(sales.wants(&lead));
    assert!(!sales.wants(&sample_lead_event("1", "99", "a@b.test")));
    assert!(all[1].wants(&lead), "no forms: every lead");
}

#[test]
fn a_wrong_file_is_refused_with_what_and_where() {
    let cases = [
        (
            "[[destination]]\nname = \"Sales\"\nkind = \"hubspot\"\n",
            "is not 1 to 64",
        ),
        (
            "[[destination]]\nname = \"a\"\nkind = \"zoho\"\n",
            "not valid",
        ),
        (
            "[[destination]]\nname = \"a\"\nkind = \"hubspot\"\n[[destination]]\nname = \"a\"\nkind = \"slack\"\n",
            "two destinations are named a",
        ),
        (
            "[[destination]]\nname = \"a\"\nkind = \"hubspot\"\n[destination.map]\nx = \"contact.shoe_size\"\n",
            "is not a source",
        ),
        (
            "[[destination]]\nname = \"a\"\nkind = \"hubspot\"\ntoken = \"pat-123\"\n",
            "not valid",
        ),
        (
            "[[destination]]\nname = \"sf\"\nkind = \"salesforce\"\n",
            "My Domain",
        ),
        (
            "[[destination]]\nname = \"pd\"\nkind = \"pipedrive\"\nbase_url = \"https://acme.pipedrive.com\"\n",
            "lead_id_field",
        ),
        (
            "[[destination]]\nname = \"w\"\nkind = \"webhook\"\n",
            "needs url",
        ),
        (
            "[[destination]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"ftp://x\"\n",
            "http(s)",
        ),
        (
            "[[destination]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://crm.example.com/in\"\n",
            "use https",
        ),
    ];
    for (text, want) in cases {
        let err = parse_file(text).unwrap_err().to_string();
        assert!(err.contains(want), "{text}: {err}");
    }
    // A credential in the file is refused (unknown key), and never echoed as a value.
    let err = parse_file(cases[4].0).unwrap_err().to_string();
    assert!(!err.contains("pat-123"), "{err}");
}

#[test]
fn every_source_reads_and_a_reason_keeps_no_lead_value() {
    let lead = sample_lead_event("4444", "55", "jane@example.org");
    for (text, want) in [
        ("lead_id", Some("4444")),
        ("form_id", Some("55")),
        ("form_name", Some("Solar quote")),
        ("page_id", Some("77")),
        ("created_time", Some("2026-12-01T09:00:00Z")),
        ("campaign_name", Some("Winter solar")),
        ("ad_name", Some("Roof A")),
        ("platform", Some("ig")),
        ("contact.phone", Some("+351912345678")),
        ("answers.which_services", Some("Solar panels, Battery")),
        ("fields.which_services", Some("solar, battery")),
        ("fields.nothing", None),
        ("'x y'", Some("x y")),
    ] {
        assert_eq!(
            Source::parse(text).unwrap().value(&lead).as_deref(),
            want,
            "{text}"
        );
    }
    let map = DestinationKind::Hubspot.default_map();
    let reason = "Property values were not valid: {\"email\":\"JANE@EXAMPLE.ORG\" Jane Doe +351912345678 Battery}";
    let kept = scrub(reason, &map.private_values(&lead));
    for private in [
        "jane@example.org",
        "JANE@EXAMPLE.ORG",
        "Jane Doe",
        "+351912345678",
        "Battery",
    ] {
        assert!(!kept.contains(private), "{kept}");
    }
    assert!(kept.starts_with("Property values were not valid"), "{kept}");
    assert!(scrub(&"x".repeat(1000), &[]).chars().count() <= 301);
}

fn leads(n: usize) -> Vec<crate::lead_received::LeadReceived> {
    (0..n)
        .map(|i| sample_lead_event(&format!("{}", 100 + i), "55", &format!("p{i}@example.org")))
        .collect()
}

#[tokio::test]
async fn delivered_leads_leave_and_a_batch_follows_the_kind() {
    let ledger = MemoryDeliveries::default();
    let config = config(DestinationKind::Hubspot);
    ledger.queue(&config.name, &leads(150), 0);
    let destination = ScriptedDestination::default();
    let report = forward_round(
        &ledger,
        &config,
        &destination,
        &ForwardLimits::default(),
        1_000,
    )
    .await
    .unwrap();
    assert_eq!(report.delivered, 100, "one round takes per_round leads");
    assert_eq!(
        destination.calls(),
        vec![100],
        "HubSpot's batch of 100 in one call"
    );
    let report = forward_round(
        &ledger,
        &config,
        &destination,
        &ForwardLimits::default(),
        2_000,
    )
    .await
    .unwrap();
    assert_eq!(report.delivered, 50);
    assert_eq!(ledger.delivered(&config.name).len(), 150);
    let again = forward_round(
        &ledger,
        &config,
        &destination,
        &ForwardLimits::default(),
        3_000,
    )
    .await
    .unwrap();
    assert_eq!(again, RoundReport::default(), "nothing is sent twice");

    let slack = self::config(DestinationKind::Slack);
    ledger.queue(&slack.name, &leads(3), 0);
    let destination = ScriptedDestination::default();
    forward_round(
        &ledger,
        &slack,
        &destination,
        &ForwardLimits::default(),
        1_000,
    )
    .await
    .unwrap();
    assert_eq!(destination.calls(), vec![1, 1, 1], "one message a call");
}

#[tokio::test]
async fn a_services_wait_holds_the_destination_without_a_try_and_failures_back_off_then_give_up() {
    let ledger = MemoryDeliveries::default();
    let config = config(DestinationKind::Slack);
    ledger.queue(&config.name, &leads(2), 0);
    let limits = ForwardLimits {
        max_attempts: 3,
        ..ForwardLimits::default()
    };
    let destination = ScriptedDestination::answering(vec![
        Outcome::Retry {
            after: Some(Duration::from_secs(30)),
            reason: "429 Too Many Requests".into(),
        },
        Outcome::Retry {
            after: None,
            reason: "503".into(),
        },
        Outcome::Delivered(None),
        Outcome::Retry {
            after: None,
            reason: "503".into(),
        },
        Outcome::Retry {
            after: None,
            reason: "503".into(),
        },
    ]);
    let mut now = 1_000;
    let report = forward_round(&ledger, &config, &destination, &limits, now)
        .await
        .unwrap();
    // Slack asked to wait: the whole destination waits, the other lead is not called.
    assert!(report.paused);
    assert_eq!(destination.calls(), vec![1]);
    assert_eq!(
        ledger.pending(&config.name, "100"),
        Some((0, now + 30_000)),
        "no try spent"
    );
    assert_eq!(ledger.pending(&config.name, "101"), Some((0, now + 30_000)));
    now += 30_000;
    forward_round(&ledger, &config, &destination, &limits, now)
        .await
        .unwrap();
    let (attempts, at) = ledger.pending(&config.name, "100").unwrap();
    assert_eq!((attempts, at), (1, now + 2_000), "a failure backs off 2 s");
    assert_eq!(ledger.delivered(&config.name), vec!["101".to_owned()]);
    now = at;
    forward_round(&ledger, &config, &destination, &limits, now)
        .await
        .unwrap();
    let (attempts, at) = ledger.pending(&config.name, "100").unwrap();
    assert_eq!((attempts, at), (2, now + 4_000), "the backoff doubles");
    now = at;
    let report = forward_round(&ledger, &config, &destination, &limits, now)
        .await
        .unwrap();
    assert_eq!(report.dead, 1);
    let (class, reason) = ledger.dead(&config.name, "100").unwrap();
    assert_eq!(class, DeadLetterClass::Exhausted);
    assert!(reason.contains("3 tries"), "{reason}");
}

#[tokio::test]
async fn a_refused_credential_dead_letters_one_lead_as_token_and_pauses_the_rest() {
    let ledger = MemoryDeliveries::default();
    let config = config(DestinationKind::Pipedrive);
    ledger.queue(&config.name, &leads(4), 0);
    let destination = ScriptedDestination::answering(vec![Outcome::Denied {
        class: DeadLetterClass::Token,
        reason: "HTTP 401: unauthorized access".into(),
    }]);
    let report = forward_round(
        &ledger,
        &config,
        &destination,
        &ForwardLimits::default(),
        1_000,
    )
    .await
    .unwrap();
    assert!(report.paused);
    assert_eq!((report.dead, destination.calls()), (1, vec![1]));
    assert_eq!(
        ledger.dead(&config.name, "100").unwrap().0,
        DeadLetterClass::Token
    );
    let held = 1_000 + DENIED_PAUSE.as_millis() as i64;
    for id in ["101", "102", "103"] {
        assert_eq!(ledger.pending(&config.name, id), Some((0, held)), "{id}");
    }
}

#[tokio::test]
async fn a_spent_budget_pauses_the_destination_without_spending_tries() {
    let ledger = MemoryDeliveries::default();
    let config = config(DestinationKind::Pipedrive);
    ledger.queue(&config.name, &leads(5), 0);
    let destination = ScriptedDestination::answering(vec![
        Outcome::Delivered(Some("L1".into())),
        Outcome::Pause {
            for_: Duration::from_secs(3_600),
            reason: "daily budget spent".into(),
        },
    ]);
    let report = forward_round(
        &ledger,
        &config,
        &destination,
        &ForwardLimits::default(),
        1_000,
    )
    .await
    .unwrap();
    assert!(report.paused);
    assert_eq!(report.delivered, 1);
    assert_eq!(destination.calls(), vec![1, 1], "nothing after the pause");
    for id in ["101", "102", "103", "104"] {
        assert_eq!(
            ledger.pending(&config.name, id),
            Some((0, 1_000 + 3_600_000)),
            "{id}"
        );
    }
    // While paused, a round calls nothing.
    let report = forward_round(
        &ledger,
        &config,
        &destination,
        &ForwardLimits::default(),
        2_000,
    )
    .await
    .unwrap();
    assert!(report.paused);
    assert_eq!(destination.calls().len(), 2);
}

#[tokio::test]
async fn a_refusal_is_a_dead_letter_for_that_lead_only_with_no_lead_value() {
    let ledger = MemoryDeliveries::default();
    let config = config(DestinationKind::Hubspot);
    ledger.queue(&config.name, &leads(3), 0);
    let destination = ScriptedDestination::answering(vec![
        Outcome::Delivered(None),
        Outcome::Refused {
            reason: "INVALID_EMAIL: p1@example.org is not valid".into(),
        },
        Outcome::Delivered(None),
    ]);
    let report = forward_round(
        &ledger,
        &config,
        &destination,
        &ForwardLimits::default(),
        1_000,
    )
    .await
    .unwrap();
    assert_eq!((report.delivered, report.dead), (2, 1));
    let (class, reason) = ledger.dead(&config.name, "101").unwrap();
    assert_eq!(class, DeadLetterClass::Refused);
    assert_eq!(reason, "INVALID_EMAIL: … is not valid");
    // Replay (`forward`, `redrive`): queued again, it goes through once fixed.
    ledger.queue(&config.name, &leads(3)[1..2], 5_000);
    let destination = ScriptedDestination::default();
    forward_round(
        &ledger,
        &config,
        &destination,
        &ForwardLimits::default(),
        6_000,
    )
    .await
    .unwrap();
    assert_eq!(ledger.delivered(&config.name).len(), 3);
}

#[tokio::test]
async fn on_a_queue_each_destination_gets_a_lead_once_and_a_refusal_is_dead_lettered_for_it_alone()
{
    use crate::memory::{MemoryMarks, MemoryQueueControl};
    let configs = parse_file(
        "[[destination]]\nname = \"hub\"\nkind = \"hubspot\"\n[[destination]]\nname = \"chat\"\nkind = \"slack\"\n",
    )
    .unwrap();
    let marks = MemoryMarks::default();
    let queue = MemoryQueueControl::default();
    let lead = sample_lead_event("4444", "55", "jane@example.org");
    let envelope =
        serde_json::json!({"detail-type": "Lead Received", "source": "leadpipe", "detail": lead})
            .to_string();
    let messages = [
        QueueMessage {
            message_id: "m1",
            body: &envelope,
        },
        QueueMessage {
            message_id: "m2",
            body: "not json",
        },
    ];
    // HubSpot refuses, Slack asks to retry: the message comes back; hub is not tried again.
    let destinations = vec![
        (
            configs[0].clone(),
            ScriptedDestination::answering(vec![Outcome::Refused {
                reason: "INVALID_EMAIL jane@example.org".into(),
            }]),
        ),
        (
            configs[1].clone(),
            ScriptedDestination::answering(vec![Outcome::Retry {
                after: None,
                reason: "429".into(),
            }]),
        ),
    ];
    let report = deliver_queue_batch(&marks, &destinations, &queue, &messages, None).await;
    assert_eq!(
        (report.refused, report.malformed, report.failed.clone()),
        (1, 1, vec!["m1".to_owned()])
    );
    let letters = queue.dead_letters.lock().unwrap().clone();
    assert_eq!(letters.len(), 2);
    let (body, reason) = &letters
        .iter()
        .find(|(_, r)| r.class == DeadLetterClass::Refused)
        .unwrap();
    assert_eq!(reason.detail, "destination hub: INVALID_EMAIL …");
    // SQS brings m1 back: Slack delivers, HubSpot is skipped (its refusal waits in the DLQ).
    let report = deliver_queue_batch(&marks, &destinations, &queue, &messages[..1], None).await;
    assert_eq!(
        (report.delivered, report.already, report.failed.len()),
        (1, 1, 0)
    );
    assert_eq!(destinations[0].1.calls(), vec![1]);
    // Redriven, the letter goes to HubSpot alone; then it is delivered, and never again.
    let report = deliver_queue_batch(
        &marks,
        &destinations,
        &queue,
        &[QueueMessage {
            message_id: "m3",
            body,
        }],
        None,
    )
    .await;
    assert_eq!((report.delivered, report.failed.len()), (1, 0));
    assert_eq!(marks.get("hub", "4444"), Some(Mark::Delivered));
    let report = deliver_queue_batch(&marks, &destinations, &queue, &messages[..1], None).await;
    assert_eq!((report.delivered, report.already), (0, 2));
    assert_eq!(destinations[1].1.calls(), vec![1, 1]);
}
