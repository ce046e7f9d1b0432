//! Destinations on the AWS path (docs/destinations.md): `Lead Received` events on the
//! stack's bus reach the destinations queue through a rule as the template wires it, and
//! the compiled destinations function, under a Lambda Runtime API, delivers each lead to
//! the four stand-ins once; a lead HubSpot refuses waits in the DLQ for HubSpot alone with
//! HubSpot's words and none of the lead's, and goes through once redriven; an event the
//! bus delivers again makes no second record anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe_core::contract::sample_lead_event;
use leadpipe_e2e::aws::Aws;
use leadpipe_e2e::start;
use leadpipe_lambda_harness::dead_letters;
use leadpipe_sandbox::crm::{self, CrmStandIn};
use std::time::{Duration, Instant};

const APP_SECRET: &str = "destinations-e2e-app-secret";

async fn drain(aws: &Aws, queue: &str, function: &leadpipe_e2e::Function, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut empty = 0;
    while Instant::now() < deadline {
        if aws.pump_once(queue, function, 5).await == 0 {
            empty += 1;
            if empty >= 3 && done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        empty = 0;
    }
    panic!("the destinations queue did not drain in 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto: run scripts/test"]
async fn each_lead_reaches_each_destination_once_from_the_bus_and_a_refusal_waits_alone() {
    let aws = Aws::new().await;
    let stand_in = CrmStandIn::start().await.unwrap();
    let (_, state_table) = aws.tables("dest").await;
    let queue = aws.queue("dest", &[]).await;
    let dlq = aws.queue("dest-dlq", &[]).await;
    let bus = aws
        .bus_to_queue(
            "dest",
            serde_json::json!({"source": ["leadpipe"], "detail-type": ["Lead Received"]}),
            &queue,
        )
        .await;
    let base = stand_in.base_url();
    let file = format!(
        "[[destination]]\nname = \"hub\"\nkind = \"hubspot\"\nbase_url = \"{base}\"\n\
         [[destination]]\nname = \"sf\"\nkind = \"salesforce\"\nlogin_url = \"{base}\"\n\
         [[destination]]\nname = \"pd\"\nkind = \"pipedrive\"\nbase_url = \"{base}\"\nlead_id_field = \"{}\"\n\
         [[destination]]\nname = \"chat\"\nkind = \"slack\"\n",
        crm::PIPEDRIVE_FIELD
    );
    let secret_arn = aws
        .secret(
            "dest-secret",
            &serde_json::json!({"app_secret": APP_SECRET, "destinations_file": file,
                "destinations": {
                    "hub": {"token": crm::HUBSPOT_TOKEN},
                    "sf": {"client_id": crm::SALESFORCE_CLIENT_ID, "client_secret": crm::SALESFORCE_CLIENT_SECRET},
                    "pd": {"token": crm::PIPEDRIVE_TOKEN},
                    "chat": {"webhook_url": stand_in.slack_url()}}}),
        )
        .await;
    let calls = aws.recorder(&aws.endpoint).await;
    let mut env = leadpipe_lambda_harness::aws_env();
    env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
    env.extend(
        [
            ("AWS_ENDPOINT_URL", calls.url.clone()),
            ("SECRET_ARN", secret_arn),
            ("STATE_TABLE", state_table),
            ("DLQ_URL", dlq.clone()),
            ("RUST_LOG", "info".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let function = start("leadpipe-destinations", &env).await;

    // Six leads on the bus, as deliver publishes them; HubSpot refuses one email.
    let leads: Vec<_> = (0..6)
        .map(|i| sample_lead_event(&format!("77000{i}"), "55", &format!("p{i}@example.org")))
        .collect();
    stand_in.with(|s| s.hubspot_refused.push("p2@example.org".into()));
    let eventbridge = aws_sdk_eventbridge::Client::new(&aws.config);
    let put = |events: Vec<leadpipe_core::lead_received::LeadReceived>| {
        let (eventbridge, bus) = (eventbridge.clone(), bus.clone());
        async move {
            let entries: Vec<_> = events
                .iter()
                .map(|e| {
                    aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                        .event_bus_name(&bus)
                        .source("leadpipe")
                        .detail_type("Lead Received")
                        .detail(e.to_json())
                        .build()
                })
                .collect();
            let out = eventbridge
                .put_events()
                .set_entries(Some(entries))
                .send()
                .await
                .unwrap();
            assert_eq!(out.failed_entry_count(), 0);
        }
    };
    put(leads.clone()).await;
    let all = |s: &crm::CrmState| {
        s.hubspot.len() == 5
            && s.salesforce.len() == 6
            && s.pipedrive_leads.len() == 6
            && s.slack.len() == 6
    };
    drain(&aws, &queue, &function, || stand_in.with(|s| all(s))).await;

    // The refused one waits for HubSpot alone, with HubSpot's words and none of the lead's.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let letters = dead_letters(&aws.sqs, &dlq).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (body, class, reason) = &letters[0];
    assert_eq!(class, "refused");
    assert!(
        reason.starts_with("destination hub: HTTP 400: Property values were not valid"),
        "{reason}"
    );
    assert!(!reason.contains("p2@example.org"), "{reason}");
    let letter: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(letter["destination"], "hub");

    // The bus delivers an event again (at least once): nothing is recorded twice.
    put(leads[..2].to_vec()).await;
    drain(&aws, &queue, &function, || true).await;
    stand_in.with(|s| {
        assert!(all(s), "no second record: {} slack", s.slack.len());
    });

    // Fixed at HubSpot and redriven: HubSpot alone takes it.
    stand_in.with(|s| s.hubspot_refused.clear());
    aws.sqs
        .send_message()
        .queue_url(&queue)
        .message_body(body)
        .send()
        .await
        .unwrap();
    drain(&aws, &queue, &function, || {
        stand_in.with(|s| s.hubspot.len() == 6)
    })
    .await;
    stand_in.with(|s| {
        assert_eq!(
            (s.hubspot.len(), s.salesforce.len(), s.slack.len()),
            (6, 6, 6)
        );
    });
    for line in function.process.logs() {
        for private in [
            crm::HUBSPOT_TOKEN,
            crm::PIPEDRIVE_TOKEN,
            crm::SALESFORCE_CLIENT_SECRET,
            crm::SLACK_PATH,
            "p2@example.org",
        ] {
            assert!(
                !line.contains(private),
                "a log line holds a secret or a lead value: {line}"
            );
        }
    }
    if let Ok(path) = std::env::var("LEADPIPE_OBSERVED_ACTIONS") {
        let observed = serde_json::json!({"destinations": calls.state.aws_calls()});
        println!("destinations e2e: AWS calls: {observed}");
        std::fs::write(format!("{path}.destinations.json"), observed.to_string()).unwrap();
    }
}
