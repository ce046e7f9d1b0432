use super::*;
use crate::memory::{MemoryConversions, MemoryStageLeads, MemoryStageLedger};
use serde_json::json;
use std::sync::atomic::Ordering;

const NOW: i64 = 1_796_200_000;

fn stage(lead: &str, name: &str, at: i64) -> StageChange {
    StageChange::new(
        lead.into(),
        StageName::parse(name).unwrap(),
        at,
        None,
        None,
        NOW,
    )
    .unwrap()
}

fn world(leads: &[(&str, i64)]) -> (MemoryStageLeads, MemoryStageLedger, MemoryConversions) {
    let store = MemoryStageLeads::default();
    for (id, created) in leads {
        store.insert(
            id,
            StageLead {
                created_time: *created,
                email: Some(" Ana@Example.COM ".into()),
                phone: Some("+15551234567".into()),
            },
        );
    }
    let api = MemoryConversions::default();
    api.now.store(NOW, Ordering::Relaxed);
    (store, MemoryStageLedger::default(), api)
}

#[test]
fn a_stage_is_read_as_a_crm_sends_it_and_refused_with_a_reason_that_quotes_nothing() {
    let ok = StageChange::from_json(
        &json!({"lead_id": "1234567890123456", "stage": " Qualified ", "stage_time": "2026-12-01T10:00:00Z", "value": 120.5, "currency": "eur"}),
        NOW,
    )
    .unwrap();
    assert_eq!(ok.stage.as_str(), "Qualified");
    assert_eq!(ok.stage_time, 1_796_119_200);
    assert_eq!(ok.currency.as_deref(), Some("EUR"));
    let numeric = StageChange::from_json(
        &json!({"lead_id": 1234567890123456_u64, "stage": "Lead", "stage_time": 1_796_119_200}),
        NOW,
    )
    .unwrap();
    assert_eq!(numeric.lead_id, "1234567890123456");
    let cases = [
        (json!([]), StageInputError::NotAnObject),
        (
            json!({"stage": "x", "stage_time": 1}),
            StageInputError::LeadId,
        ),
        (
            json!({"lead_id": "../etc", "stage": "x", "stage_time": 1}),
            StageInputError::LeadId,
        ),
        (
            json!({"lead_id": "1", "stage": "", "stage_time": 1}),
            StageInputError::Stage,
        ),
        (
            json!({"lead_id": "1", "stage": "x".repeat(101), "stage_time": 1}),
            StageInputError::Stage,
        ),
        (
            json!({"lead_id": "1", "stage": "a\u{7}b", "stage_time": 1}),
            StageInputError::Stage,
        ),
        (
            json!({"lead_id": "1", "stage": "Won", "stage_time": "yesterday"}),
            StageInputError::StageTime,
        ),
        (
            json!({"lead_id": "1", "stage": "Won", "stage_time": NOW + 3_600}),
            StageInputError::Future,
        ),
        (
            json!({"lead_id": "1", "stage": "Won", "stage_time": NOW, "value": "12"}),
            StageInputError::Value,
        ),
        (
            json!({"lead_id": "1", "stage": "Won", "stage_time": NOW, "value": 12}),
            StageInputError::Currency,
        ),
        (
            json!({"lead_id": "1", "stage": "Won", "stage_time": NOW, "value": 1, "currency": "EURO"}),
            StageInputError::Currency,
        ),
    ];
    for (item, want) in cases {
        let got = StageChange::from_json(&item, NOW).unwrap_err();
        assert_eq!(got, want, "{item}");
        assert!(!got.to_string().contains("Won"), "{got}");
    }
    // Exactly 100 characters is a name.
    assert!(StageName::parse(&"é".repeat(100)).is_ok());
}

#[test]
fn a_body_of_many_stages_keeps_the_good_ones_and_says_why_per_bad_one() {
    let body = json!({"stages": [
        {"lead_id": "111", "stage": "Qualified", "stage_time": NOW - 60},
        {"lead_id": "111", "stage": "", "stage_time": NOW - 60},
        {"lead_id": "222", "stage": "Won", "stage_time": NOW - 60},
    ]});
    let read = read_stages_body(body.to_string().as_bytes(), NOW).unwrap();
    assert_eq!(read.stages.len(), 2);
    assert_eq!(read.refused, vec![(1, StageInputError::Stage)]);
    let one = read_stages_body(
        br#"{"lead_id":"1","stage":"Lead","stage_time":1796199000}"#,
        NOW,
    )
    .unwrap();
    assert_eq!(one.stages.len(), 1);
    assert_eq!(
        read_stages_body(b"[1]", NOW).unwrap_err(),
        StagesBodyError::Shape
    );
    assert_eq!(
        read_stages_body(br#"{"stages":3}"#, NOW).unwrap_err(),
        StagesBodyError::Shape
    );
    let many = json!({"stages": vec![json!({}); 1_001]});
    assert_eq!(
        read_stages_body(many.to_string().as_bytes(), NOW).unwrap_err(),
        StagesBodyError::TooMany
    );
}

#[test]
fn either_of_two_keys_opens_the_door_and_nothing_else_does() {
    let keys = vec![
        secrecy::SecretString::from("old-key-0123"),
        secrecy::SecretString::from("new-key-4567"),
    ];
    assert!(key_matches("old-key-0123", &keys));
    assert!(key_matches("new-key-4567", &keys));
    assert!(!key_matches("new-key-456", &keys));
    assert!(!key_matches("", &keys));
    assert!(!key_matches("", &[secrecy::SecretString::from("")]));
}

#[test]
fn the_event_is_metas_shape_with_the_contact_hashed_and_the_lead_id_plain() {
    let lead = StageLead {
        created_time: NOW - 100,
        email: Some(" Ana@Example.COM".into()),
        phone: Some("+1 (650) 555-1212".into()),
    };
    let mut s = stage("1234567890123456", "Qualified", NOW - 50);
    s.value = Some(99.0);
    s.currency = Some("USD".into());
    let event = serde_json::to_value(ConversionEvent::of(&s, &lead, "In-house CRM")).unwrap();
    assert_eq!(event["event_name"], "Qualified");
    assert_eq!(event["event_time"], NOW - 50);
    assert_eq!(event["action_source"], "system_generated");
    assert_eq!(event["user_data"]["lead_id"], "1234567890123456");
    assert_eq!(
        event["user_data"]["em"][0],
        hex::encode(Sha256::digest(b"ana@example.com"))
    );
    assert_eq!(
        event["user_data"]["ph"][0],
        hex::encode(Sha256::digest(b"16505551212"))
    );
    assert_eq!(event["custom_data"]["event_source"], "crm");
    assert_eq!(event["custom_data"]["lead_event_source"], "In-house CRM");
    assert_eq!(event["custom_data"]["currency"], "USD");
    assert_eq!(event["event_id"], s.event_id());
    // Stable per (lead, stage), different across stages and leads.
    assert_eq!(
        s.event_id(),
        stage("1234567890123456", "Qualified", NOW).event_id()
    );
    assert_ne!(
        s.event_id(),
        stage("1234567890123456", "Won", NOW).event_id()
    );
    assert_ne!(
        s.event_id(),
        stage("1234567890123457", "Qualified", NOW).event_id()
    );
    // No contact: no em, no ph keys at all.
    let bare = serde_json::to_value(ConversionEvent::of(&s, &StageLead::default(), "x")).unwrap();
    assert!(bare["user_data"].get("em").is_none() && bare["user_data"].get("ph").is_none());
}

#[tokio::test]
async fn each_refusal_has_its_class_and_is_never_sent() {
    let (leads, ledger, api) = world(&[("111", NOW - 86_400)]);
    let stages = [
        stage("999", "Qualified", NOW - 60),
        stage("111", "Qualified", NOW - 2 * 86_400),
        stage("111", "Won", NOW - MAX_AGE_SECONDS + 60),
        stage("111", "Contacted", NOW - 60),
    ];
    // An expired stage only arises when it waited: give it a lead old enough.
    leads.insert(
        "111",
        StageLead {
            created_time: NOW - 30 * 86_400,
            ..Default::default()
        },
    );
    let mut stages = stages.to_vec();
    stages[1] = stage("111", "Qualified", NOW - 31 * 86_400 + 1);
    let (outcomes, report) = send_stages(
        &leads,
        &ledger,
        &api,
        &StageSettings::default(),
        &stages,
        NOW,
    )
    .await;
    let classes: Vec<Option<DeadLetterClass>> = outcomes
        .iter()
        .map(|o| match o {
            StageOutcome::Refused(r) => Some(r.class),
            _ => None,
        })
        .collect();
    assert_eq!(
        classes,
        vec![
            Some(DeadLetterClass::UnknownLead),
            Some(DeadLetterClass::BeforeLead),
            Some(DeadLetterClass::Expired),
            None
        ]
    );
    assert_eq!(outcomes[3], StageOutcome::Sent);
    assert_eq!(api.taken().len(), 1);
    assert_eq!(report.refused_total(), 3);
    assert_eq!(report.sent, 1);
    for outcome in &outcomes {
        if let StageOutcome::Refused(r) = outcome {
            assert!(
                !r.reason.contains("Qualified") && !r.reason.contains("Won"),
                "{}",
                r.reason
            );
        }
    }
}

#[tokio::test]
async fn one_event_meta_refuses_never_takes_the_others_down() {
    let ids: Vec<String> = (0..250).map(|i| format!("{}", 1_000_000 + i)).collect();
    let leads_at: Vec<(&str, i64)> = ids.iter().map(|id| (id.as_str(), NOW - 3_600)).collect();
    let (leads, ledger, api) = world(&leads_at);
    api.unknown_to_meta.lock().unwrap().insert(ids[137].clone());
    let stages: Vec<StageChange> = ids
        .iter()
        .map(|id| stage(id, "Qualified", NOW - 60))
        .collect();
    let (outcomes, report) = send_stages(
        &leads,
        &ledger,
        &api,
        &StageSettings::default(),
        &stages,
        NOW,
    )
    .await;
    assert_eq!(report.sent, 249);
    assert_eq!(report.refused.get(&DeadLetterClass::BadRequest), Some(&1));
    assert!(matches!(&outcomes[137], StageOutcome::Refused(r) if r.reason.contains("alone")));
    let taken = api.taken();
    assert_eq!(taken.len(), 249);
    assert!(taken.iter().all(|e| e.user_data.lead_id != ids[137]));
    // 3 requests of 100, and the refused one's halves down to the one event: 2·log2(100).
    assert!(report.requests <= 3 + 2 * 7, "{} requests", report.requests);
    assert_eq!(ledger.len(), 249);
}

#[tokio::test]
async fn the_same_stage_of_the_same_lead_is_one_event() {
    let (leads, ledger, api) = world(&[("111", NOW - 3_600)]);
    let twice = [
        stage("111", "Qualified", NOW - 60),
        stage("111", "Qualified", NOW - 30),
    ];
    let (outcomes, _) = send_stages(
        &leads,
        &ledger,
        &api,
        &StageSettings::default(),
        &twice,
        NOW,
    )
    .await;
    assert_eq!(
        outcomes,
        vec![StageOutcome::Sent, StageOutcome::AlreadySent]
    );
    let (again, report) = send_stages(
        &leads,
        &ledger,
        &api,
        &StageSettings::default(),
        &twice[..1],
        NOW,
    )
    .await;
    assert_eq!(again, vec![StageOutcome::AlreadySent]);
    assert_eq!(report.requests, 0);
    assert_eq!(api.taken().len(), 1);
}

#[tokio::test]
async fn transient_answers_keep_the_stage_and_token_answers_say_what_to_run() {
    use leadpipe_graph::{ErrorClass, GraphError};
    let (leads, ledger, api) = world(&[("111", NOW - 3_600)]);
    let failing = |class, code| GraphError {
        code: Some(code),
        ..GraphError::local("POST".into(), class, "refused")
    };
    api.fail_next
        .lock()
        .unwrap()
        .push(failing(ErrorClass::Transient, 2));
    let one = [stage("111", "Qualified", NOW - 60)];
    let (outcomes, _) =
        send_stages(&leads, &ledger, &api, &StageSettings::default(), &one, NOW).await;
    assert!(
        matches!(&outcomes[0], StageOutcome::Retry { .. }),
        "{outcomes:?}"
    );
    assert!(ledger.is_empty());
    api.fail_next
        .lock()
        .unwrap()
        .push(failing(ErrorClass::Token, 190));
    let (outcomes, _) =
        send_stages(&leads, &ledger, &api, &StageSettings::default(), &one, NOW).await;
    let StageOutcome::Refused(refusal) = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert_eq!(refusal.class, DeadLetterClass::Token);
    assert!(
        refusal.reason.contains("leadpipe connect --dataset"),
        "{}",
        refusal.reason
    );
    // And once Meta answers, it goes.
    let (outcomes, _) =
        send_stages(&leads, &ledger, &api, &StageSettings::default(), &one, NOW).await;
    assert_eq!(outcomes, vec![StageOutcome::Sent]);
}

#[test]
fn the_initial_stage_is_at_the_leads_creation() {
    let name = StageName::parse("Lead").unwrap();
    let initial = StageChange::initial("111", &name, NOW - 5);
    assert_eq!(initial.stage_time, NOW - 5);
    assert_eq!(
        check(
            &initial,
            Some(&StageLead {
                created_time: NOW - 5,
                ..Default::default()
            }),
            NOW
        ),
        Ok(())
    );
    let back: StageChange = serde_json::from_str(&initial.to_json()).unwrap();
    assert_eq!(back, initial);
    assert!(
        serde_json::from_str::<StageChange>(r#"{"lead_id":"1","stage":"","stage_time":1}"#)
            .is_err()
    );
}

#[tokio::test]
async fn a_queue_batch_sends_the_good_dead_letters_the_refused_and_keeps_the_unsent() {
    use crate::memory::MemoryQueueControl;
    let (leads, ledger, api) = world(&[("111", NOW - 3_600), ("222", NOW - 3_600)]);
    let queue = MemoryQueueControl::default();
    let bus = json!({"version": "0", "id": "e1", "detail-type": STAGE_DETAIL_TYPE, "source": "crm.hubspot",
        "detail": {"lead_id": "111", "stage": "Qualified", "stage_time": (NOW - 60).to_string()}})
    .to_string();
    let plain = stage("222", "Won", NOW - 60).to_json();
    let unknown = stage("333", "Won", NOW - 60).to_json();
    let messages = [
        StageMessage {
            message_id: "m1",
            body: &bus,
        },
        StageMessage {
            message_id: "m2",
            body: &plain,
        },
        StageMessage {
            message_id: "m3",
            body: "not json",
        },
        StageMessage {
            message_id: "m4",
            body: &unknown,
        },
    ];
    let report = stage_batch(
        &leads,
        &ledger,
        &api,
        &queue,
        &StageSettings::default(),
        &messages,
        NOW,
    )
    .await;
    assert_eq!(report.stages.sent, 2);
    assert_eq!(report.malformed, 1);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let letters = queue.dead_letters.lock().unwrap().clone();
    let classes: Vec<DeadLetterClass> = letters.iter().map(|(_, r)| r.class).collect();
    assert_eq!(
        classes,
        vec![DeadLetterClass::Malformed, DeadLetterClass::UnknownLead]
    );
    assert_eq!(report.metrics(), [("StagesSent", 2), ("StagesRefused", 2)]);
    // Meta down: the stage stays on the queue for SQS to deliver again.
    api.fail_next
        .lock()
        .unwrap()
        .push(leadpipe_graph::GraphError::local(
            "POST".into(),
            leadpipe_graph::ErrorClass::Transient,
            "down",
        ));
    let later = stage("222", "Converted", NOW - 60).to_json();
    let report = stage_batch(
        &leads,
        &ledger,
        &api,
        &queue,
        &StageSettings::default(),
        &[StageMessage {
            message_id: "m5",
            body: &later,
        }],
        NOW,
    )
    .await;
    assert_eq!(report.failed, vec!["m5".to_owned()]);
}

#[derive(Default)]
struct Queued(
    std::sync::Mutex<Vec<StageChange>>,
    std::sync::atomic::AtomicBool,
);

impl StageQueue for Queued {
    async fn queue_stages(&self, stages: &[StageChange]) -> Result<(), crate::ports::QueueError> {
        if self.1.load(Ordering::Relaxed) {
            return Err(crate::ports::QueueError::Unavailable("down".into()));
        }
        self.0.lock().unwrap().extend(stages.iter().cloned());
        Ok(())
    }
}

#[tokio::test]
async fn post_stages_answers_as_the_contract_says() {
    let keys = vec![secrecy::SecretString::from("k1-0123456789")];
    let queue = Queued::default();
    let good = json!({"lead_id": "111", "stage": "Won", "stage_time": NOW - 5}).to_string();
    let a = accept_stages(Some(&queue), &keys, None, good.as_bytes(), NOW).await;
    assert_eq!(a.status, 401);
    let a = accept_stages(
        Some(&queue),
        &[],
        Some("k1-0123456789"),
        good.as_bytes(),
        NOW,
    )
    .await;
    assert_eq!(a.status, 503);
    let a = accept_stages(
        None::<&Queued>,
        &keys,
        Some("k1-0123456789"),
        good.as_bytes(),
        NOW,
    )
    .await;
    assert_eq!(a.status, 503);
    let a = accept_stages(
        Some(&queue),
        &keys,
        Some("k1-0123456789"),
        good.as_bytes(),
        NOW,
    )
    .await;
    assert_eq!((a.status, a.body["accepted"].as_u64()), (202, Some(1)));
    let big = vec![b' '; MAX_BODY_BYTES + 1];
    assert_eq!(
        accept_stages(Some(&queue), &keys, Some("k1-0123456789"), &big, NOW)
            .await
            .status,
        413
    );
    let mixed =
        json!({"stages": [{"lead_id": "1", "stage": "x", "stage_time": NOW}, {"lead_id": "1"}]})
            .to_string();
    let a = accept_stages(
        Some(&queue),
        &keys,
        Some("k1-0123456789"),
        mixed.as_bytes(),
        NOW,
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["accepted"], 1);
    assert_eq!(a.body["refused"][0]["index"], 1);
    assert_eq!(queue.0.lock().unwrap().len(), 2);
    queue.1.store(true, Ordering::Relaxed);
    let a = accept_stages(
        Some(&queue),
        &keys,
        Some("k1-0123456789"),
        good.as_bytes(),
        NOW,
    )
    .await;
    assert_eq!(a.status, 503, "nothing queued: the CRM must send again");
}

#[tokio::test]
async fn copies_in_one_batch_are_one_event_and_a_corrected_copy_is_the_one_sent() {
    let (leads, ledger, api) = world(&[("111", NOW - 3_600), ("222", NOW - 3_600)]);
    let stages = [
        // The CRM's first try is before the lead; its correction comes in the same batch.
        stage("111", "Won", NOW - 7_200),
        stage("111", "Won", NOW - 60),
        stage("222", "Won", NOW - 60),
        stage("222", "Won", NOW - 50),
    ];
    let (outcomes, report) = send_stages(
        &leads,
        &ledger,
        &api,
        &StageSettings::default(),
        &stages,
        NOW,
    )
    .await;
    assert_eq!(
        outcomes,
        vec![
            StageOutcome::AlreadySent,
            StageOutcome::Sent,
            StageOutcome::Sent,
            StageOutcome::AlreadySent
        ]
    );
    assert_eq!(api.taken().len(), 2);
    assert_eq!(api.taken()[0].event_time, NOW - 60, "the corrected time");
    assert_eq!(report.refused_total(), 0);
}

#[tokio::test]
async fn a_missing_dataset_refuses_the_request_whole_without_splitting_it() {
    use leadpipe_graph::{ErrorClass, GraphError};
    let ids: Vec<String> = (0..64).map(|i| format!("{}", 5_000 + i)).collect();
    let at: Vec<(&str, i64)> = ids.iter().map(|id| (id.as_str(), NOW - 3_600)).collect();
    let (leads, ledger, api) = world(&at);
    api.fail_next.lock().unwrap().push(GraphError {
        code: Some(100),
        subcode: Some(33),
        ..GraphError::local("POST".into(), ErrorClass::NotFound, "no dataset")
    });
    let stages: Vec<StageChange> = ids.iter().map(|id| stage(id, "Won", NOW - 60)).collect();
    let (outcomes, report) = send_stages(
        &leads,
        &ledger,
        &api,
        &StageSettings::default(),
        &stages,
        NOW,
    )
    .await;
    assert_eq!(report.requests, 1, "one request, not 2N-1");
    assert!(outcomes.iter().all(|o| matches!(o, StageOutcome::Refused(r) if r.class == DeadLetterClass::NotFound && r.reason.contains("CONVERSIONS_DATASET_ID"))));
}

#[tokio::test]
async fn meta_down_leaves_the_rest_of_the_batch_unsent_for_later() {
    use leadpipe_graph::{ErrorClass, GraphError};
    let ids: Vec<String> = (0..250).map(|i| format!("{}", 7_000 + i)).collect();
    let at: Vec<(&str, i64)> = ids.iter().map(|id| (id.as_str(), NOW - 3_600)).collect();
    let (leads, ledger, api) = world(&at);
    api.fail_next.lock().unwrap().push(GraphError::local(
        "POST".into(),
        ErrorClass::Transient,
        "down",
    ));
    let stages: Vec<StageChange> = ids.iter().map(|id| stage(id, "Won", NOW - 60)).collect();
    let (outcomes, report) = send_stages(
        &leads,
        &ledger,
        &api,
        &StageSettings::default(),
        &stages,
        NOW,
    )
    .await;
    assert_eq!(report.requests, 1);
    assert_eq!(report.retried, 250);
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, StageOutcome::Retry { .. }))
    );
}

#[test]
fn a_lead_too_old_gets_no_initial_stage() {
    assert!(initial_stage_in_time(NOW - 86_400, NOW));
    assert!(!initial_stage_in_time(NOW - MAX_AGE_SECONDS, NOW));
}
