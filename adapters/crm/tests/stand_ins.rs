//! Each adapter against its stand-in over HTTP (crates/sandbox/src/crm.rs): the request
//! shapes the service documents, its auth, a rate limit honoured, a refusal kept with the
//! service's words, a repeat making no second record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe_core::contract::sample_lead_event;
use leadpipe_core::destinations::{
    Destination, DestinationConfig, MappedLead, Outcome, parse_file,
};
use leadpipe_core::secrets::DestinationSecret;
use leadpipe_crm::AnyDestination;
use leadpipe_sandbox::crm::{self, CrmStandIn};
use std::time::Duration;

fn config(stand_in: &CrmStandIn, kind: &str, extra: &str) -> DestinationConfig {
    let base = stand_in.base_url();
    let text = format!(
        "[[destination]]\nname = \"d\"\nkind = \"{kind}\"\nbase_url = \"{base}\"\n{extra}\n"
    );
    parse_file(&text).unwrap().remove(0)
}

fn secret(pairs: &[(&str, &str)]) -> DestinationSecret {
    let json: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
        .collect();
    serde_json::from_value(serde_json::Value::Object(json)).unwrap()
}

fn mapped(config: &DestinationConfig, id: &str, email: &str) -> MappedLead {
    let lead = sample_lead_event(id, "55", email);
    MappedLead {
        properties: config.map.apply(&lead),
        lead,
    }
}

#[tokio::test]
async fn hubspot_upserts_by_email_in_batches_and_splits_around_a_refused_email() {
    let stand_in = CrmStandIn::start().await.unwrap();
    let config = config(
        &stand_in,
        "hubspot",
        "[destination.map]\nfb_lead_id = \"lead_id\"",
    );
    let wrong = AnyDestination::build(&config, Some(&secret(&[("token", "nope")]))).unwrap();
    assert!(wrong.check().await.unwrap_err().contains("HTTP 401"));
    let hubspot =
        AnyDestination::build(&config, Some(&secret(&[("token", crm::HUBSPOT_TOKEN)]))).unwrap();
    assert!(hubspot.check().await.is_ok());

    let leads: Vec<MappedLead> = (0..5)
        .map(|i| mapped(&config, &format!("44{i}"), &format!("p{i}@example.org")))
        .collect();
    stand_in.with(|s| s.hubspot_refused.push("p3@example.org".into()));
    let outcomes = hubspot.deliver(&leads).await;
    for (i, outcome) in outcomes.iter().enumerate() {
        match (i, outcome) {
            (3, Outcome::Refused { reason }) => {
                assert!(
                    reason.starts_with("HTTP 400: Property values were not valid"),
                    "{reason}"
                )
            }
            (3, other) => panic!("lead 3 must be refused: {other:?}"),
            (_, Outcome::Delivered(Some(_))) => {}
            (_, other) => panic!("lead {i}: {other:?}"),
        }
    }
    // The batch went as one, then halves around the refused one.
    let calls = stand_in.with(|s| s.hubspot_calls.clone());
    assert_eq!(calls[0], 5, "{calls:?}");
    assert_eq!(stand_in.with(|s| s.hubspot.len()), 4);
    assert_eq!(
        stand_in.with(|s| s.hubspot["p0@example.org"].1["fb_lead_id"].clone()),
        "440"
    );
    // A repeat is the same contact.
    let again = hubspot.deliver(&leads[..1]).await;
    assert!(matches!(&again[0], Outcome::Delivered(Some(_))));
    assert_eq!(stand_in.with(|s| s.hubspot.len()), 4);

    // The ten-second window is waited out; a spent day pauses.
    stand_in.with(|s| s.hubspot_limited = vec!["TEN_SECONDLY_ROLLING", "DAILY"]);
    match &hubspot.deliver(&leads[..1]).await[0] {
        Outcome::Retry { after, .. } => assert_eq!(*after, Some(Duration::from_secs(10))),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        &hubspot.deliver(&leads[..1]).await[0],
        Outcome::Pause { .. }
    ));
    // A lead without an email cannot be upserted: refused with what to do, nothing sent.
    let mut no_email = leads[0].clone();
    no_email.properties.retain(|(k, _)| k != "email");
    match &hubspot.deliver(&[no_email]).await[0] {
        Outcome::Refused { reason } => assert!(reason.contains("map `email`"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn hubspot_keeps_each_refusal_to_its_own_lead_and_a_shared_cause_costs_three_calls() {
    let stand_in = CrmStandIn::start().await.unwrap();
    let config = config(&stand_in, "hubspot", "");
    let hubspot =
        AnyDestination::build(&config, Some(&secret(&[("token", crm::HUBSPOT_TOKEN)]))).unwrap();
    let leads: Vec<MappedLead> = (0..4)
        .map(|i| mapped(&config, &format!("55{i}"), &format!("q{i}@example.org")))
        .collect();
    // A 207: the others taken; the refused one sent alone, its reason its own alone.
    stand_in.with(|s| {
        s.hubspot_partial = true;
        s.hubspot_refused = vec!["q1@example.org".into(), "q2@example.org".into()];
    });
    let out = hubspot.deliver(&leads).await;
    assert!(
        matches!(out[0], Outcome::Delivered(Some(_)))
            && matches!(out[3], Outcome::Delivered(Some(_))),
        "{out:?}"
    );
    for (i, other) in [(1, "q2@example.org"), (2, "q1@example.org")] {
        match &out[i] {
            Outcome::Refused { reason } => assert!(!reason.contains(other), "lead {i}: {reason}"),
            o => panic!("lead {i}: {o:?}"),
        }
    }
    // A cause every lead shares: refused together after one split, not lead by lead.
    stand_in.with(|s| {
        s.hubspot_calls.clear();
        s.hubspot_refuse_all = Some("Property \"fb_lead_id\" does not exist".into());
    });
    let out = hubspot.deliver(&leads).await;
    assert!(
        out.iter()
            .all(|o| matches!(o, Outcome::Refused { reason } if reason.contains("does not exist"))),
        "{out:?}"
    );
    assert_eq!(stand_in.with(|s| s.hubspot_calls.len()), 3);
    // A refused token: a token dead letter that pauses the destination, not `refused`.
    let wrong = AnyDestination::build(&config, Some(&secret(&[("token", "revoked")]))).unwrap();
    assert!(matches!(
        &wrong.deliver(&leads[..1]).await[0],
        Outcome::Denied {
            class: leadpipe_core::dead_letter::DeadLetterClass::Token,
            ..
        }
    ));
}

#[tokio::test]
async fn salesforce_upserts_on_the_external_id_and_renews_an_expired_session_once() {
    let stand_in = CrmStandIn::start().await.unwrap();
    let login = format!("login_url = \"{}\"", stand_in.base_url());
    let config = config(&stand_in, "salesforce", &login);
    let bad = AnyDestination::build(
        &config,
        Some(&secret(&[("client_id", "x"), ("client_secret", "y")])),
    )
    .unwrap();
    assert!(bad.check().await.unwrap_err().contains("invalid_client"));
    let sf = AnyDestination::build(
        &config,
        Some(&secret(&[
            ("client_id", crm::SALESFORCE_CLIENT_ID),
            ("client_secret", crm::SALESFORCE_CLIENT_SECRET),
        ])),
    )
    .unwrap();
    assert!(sf.check().await.is_ok());
    let lead = mapped(&config, "4444", "jane@example.org");
    let first = sf.deliver(std::slice::from_ref(&lead)).await;
    let Outcome::Delivered(Some(id)) = &first[0] else {
        panic!("{first:?}")
    };
    let stored = stand_in.with(|s| s.salesforce["4444"].1.clone());
    assert_eq!(stored["LastName"], "Doe");
    assert_eq!(stored["Company"], "[not provided]");
    // The session ends: one new token, the same record.
    stand_in.expire_salesforce_sessions();
    let again = sf.deliver(std::slice::from_ref(&lead)).await;
    assert_eq!(again[0], Outcome::Delivered(Some(id.clone())));
    assert_eq!(stand_in.with(|s| s.salesforce.len()), 1);
    // REQUEST_LIMIT_EXCEEDED (a 403, no 429) pauses the destination.
    stand_in.with(|s| s.salesforce_limited = 1);
    assert!(matches!(
        &sf.deliver(std::slice::from_ref(&lead)).await[0],
        Outcome::Pause { .. }
    ));
    // A new session refused too: a token problem, not one more retry.
    stand_in.with(|s| s.salesforce_expired_below = u32::MAX);
    assert!(matches!(
        &sf.deliver(&[lead]).await[0],
        Outcome::Denied {
            class: leadpipe_core::dead_letter::DeadLetterClass::Token,
            ..
        }
    ));
}

#[tokio::test]
async fn pipedrive_finds_the_lead_it_made_and_reuses_the_person() {
    let stand_in = CrmStandIn::start().await.unwrap();
    let field = format!("lead_id_field = \"{}\"", crm::PIPEDRIVE_FIELD);
    let config = config(&stand_in, "pipedrive", &field);
    let pd =
        AnyDestination::build(&config, Some(&secret(&[("token", crm::PIPEDRIVE_TOKEN)]))).unwrap();
    assert!(pd.check().await.is_ok());
    let wrong = AnyDestination::build(&config, Some(&secret(&[("token", "nope")]))).unwrap();
    assert!(wrong.check().await.unwrap_err().contains("unauthorized"));
    let one = mapped(&config, "4444", "jane@example.org");
    let two = mapped(&config, "4445", "jane@example.org");
    let out = pd.deliver(&[one.clone(), two]).await;
    assert!(
        out.iter().all(|o| matches!(o, Outcome::Delivered(Some(_)))),
        "{out:?}"
    );
    // Two leads of one person: one person, two leads, each with its Meta id.
    assert_eq!(stand_in.with(|s| s.pipedrive_persons.len()), 1);
    assert_eq!(stand_in.with(|s| s.pipedrive_leads.len()), 2);
    // A repeat finds its lead by the field instead of making another.
    let again = pd.deliver(std::slice::from_ref(&one)).await;
    assert_eq!(again[0], out[0]);
    assert_eq!(stand_in.with(|s| s.pipedrive_leads.len()), 2);
    // The day's budget spent: the destination pauses until the reset.
    stand_in.with(|s| s.pipedrive_budget_spent = true);
    match &pd.deliver(&[one]).await[0] {
        Outcome::Pause { for_, .. } => assert_eq!(*for_, Duration::from_secs(3600)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn slack_posts_a_short_message_honours_retry_after_and_keeps_answers_out() {
    let stand_in = CrmStandIn::start().await.unwrap();
    let config = config(&stand_in, "slack", "");
    let slack = AnyDestination::build(
        &config,
        Some(&secret(&[("webhook_url", &stand_in.slack_url())])),
    )
    .unwrap();
    assert!(slack.check().await.is_ok(), "no_text proves the URL");
    assert!(
        stand_in.with(|s| s.slack.is_empty()),
        "a check posts nothing"
    );
    let lead = mapped(&config, "4444", "jane@example.org");
    assert_eq!(
        slack.deliver(std::slice::from_ref(&lead)).await[0],
        Outcome::Delivered(None)
    );
    let message = stand_in.with(|s| s.slack[0].clone());
    assert!(
        message.contains("Solar quote") && message.contains("Winter solar"),
        "{message}"
    );
    for private in ["jane@example.org", "Jane", "Solar panels", "+351"] {
        assert!(!message.contains(private), "{message}");
    }
    stand_in.with(|s| s.slack_limited = 1);
    match &slack.deliver(std::slice::from_ref(&lead)).await[0] {
        Outcome::Retry { after, .. } => assert_eq!(*after, Some(Duration::from_secs(1))),
        other => panic!("{other:?}"),
    }
    // With include_answers, the answers by label.
    let with = config_with_answers(&stand_in);
    let slack = AnyDestination::build(
        &with,
        Some(&secret(&[("webhook_url", &stand_in.slack_url())])),
    )
    .unwrap();
    slack.deliver(&[lead]).await;
    let message = stand_in.with(|s| s.slack.last().cloned().unwrap());
    assert!(
        message.contains("Which services?: Solar panels, Battery"),
        "{message}"
    );
    // A revoked URL: the check says Slack's words; no URL in them.
    let gone = AnyDestination::build(
        &config,
        Some(&secret(&[(
            "webhook_url",
            &format!("{}/services/T/B/revoked", stand_in.base_url()),
        )])),
    )
    .unwrap();
    let err = gone.check().await.unwrap_err();
    assert!(
        err.contains("HTTP 404") && !err.contains("revoked"),
        "{err}"
    );
}

fn config_with_answers(stand_in: &CrmStandIn) -> DestinationConfig {
    config(stand_in, "slack", "include_answers = true")
}

#[tokio::test]
async fn the_webhook_kind_posts_the_signed_event_and_keeps_no_answer() {
    use std::sync::{Arc, Mutex};
    // A receiver that records what it got, refuses the second post and takes the rest.
    let got: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let record = got.clone();
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method, headers: axum::http::HeaderMap, body: String| {
            let record = record.clone();
            async move {
                if method != axum::http::Method::POST {
                    return (axum::http::StatusCode::METHOD_NOT_ALLOWED, String::new());
                }
                let h = |k: &str| {
                    headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let mut all = record.lock().unwrap();
                all.push((
                    h("idempotency-key"),
                    h("x-leadpipe-signature-256"),
                    body.clone(),
                ));
                if all.len() == 2 {
                    (axum::http::StatusCode::UNPROCESSABLE_ENTITY, body)
                } else {
                    (axum::http::StatusCode::OK, String::new())
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let text = format!(
        "[[destination]]\nname = \"own\"\nkind = \"webhook\"\nurl = \"http://{address}/leads\"\n"
    );
    let config = parse_file(&text).unwrap().remove(0);
    let key = "a-signing-key-of-enough-length";
    let hook = AnyDestination::build(&config, Some(&secret(&[("key", key)]))).unwrap();
    assert!(hook.check().await.unwrap().contains("nothing was posted"));
    let leads = [
        mapped(&config, "1", "a@example.org"),
        mapped(&config, "2", "b@example.org"),
    ];
    let out = hook.deliver(&leads).await;
    assert_eq!(out[0], Outcome::Delivered(None));
    match &out[1] {
        Outcome::Refused { reason } => {
            assert!(reason.starts_with("HTTP 422: an answer of"), "{reason}");
            assert!(!reason.contains("b@example.org"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let got = got.lock().unwrap().clone();
    let (idempotency, signature, body) = &got[0];
    assert_eq!(idempotency, "1");
    assert!(
        leadpipe_core::signature::verify_signature(
            key.as_bytes(),
            Some(signature),
            body.as_bytes()
        )
        .is_ok()
    );
    let event: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(event["lead_id"], "1");
}
