//! The claim, proved on the deployed shape: the three compiled function binaries under
//! Lambda Runtime APIs, wired as the SAM template wires them (a webhook posting to SQS, an
//! event-source-mapping loop with ReportBatchItemFailures, a visibility timeout and a
//! maxReceiveCount redrive into the DLQ, a schedule tick for backfill), against moto and the
//! sandbox Graph, with faults: dropped, duplicated and reordered webhooks, transient Graph
//! errors, a rate-limit burst, an expired-token page, and a window in which DynamoDB is
//! unreachable. No readable lead may be lost or doubled; the DLQ may hold only what the
//! sandbox made permanently unreadable, each with its reason; and no log line may carry a
//! lead's contents or a secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe_e2e::start;

use aws_sdk_sqs::types::QueueAttributeName;
use leadpipe_lambda_harness::events::{HttpEvent, HttpFront, scheduled_event, sqs_event_from};
use leadpipe_lambda_harness::{moto_endpoint, unique_name};
use leadpipe_sandbox::sender::post_body;
use leadpipe_sandbox::{Dataset, DatasetSpec, Faults, Sandbox};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const APP_SECRET: &str = "e2e-app-secret-5b7f1c";
const VERIFY_TOKEN: &str = "e2e-verify-token-93ad";
const WAIT: Duration = Duration::from_secs(60);
const LEADS: usize = 2000;
/// Ingest instances polling the queue at once, as Lambda scales an SQS mapping out.
const INGEST_CONCURRENCY: usize = 3;
/// The drain fails only when nothing was handled for this long: a slow, busy machine that is
/// still making progress must not fail. It is longer than any delay ingest puts on a
/// rate-limited message (the sandbox asks for seconds).
const STALL: Duration = Duration::from_secs(120);

fn http_post(body: &[u8], signature: Option<&str>) -> serde_json::Value {
    let headers: Vec<(&str, &str)> = signature
        .map(|s| vec![("x-hub-signature-256", s)])
        .unwrap_or_default();
    HttpEvent {
        front: HttpFront::FunctionUrl,
        method: "POST",
        query: &[],
        headers: &headers,
        body,
        base64: true,
    }
    .to_json()
}

async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> (i64, i64) {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let get = |n: QueueAttributeName| {
        attrs
            .attributes()
            .and_then(|a| a.get(&n))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto: run scripts/test"]
async fn no_lead_is_lost_or_doubled_on_the_aws_path() {
    let started = Instant::now();
    let moto = moto_endpoint().expect("moto");
    let config = leadpipe_aws::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let ddb = aws_sdk_dynamodb::Client::new(&config);

    // Where the time goes, printed at the end (BENCHMARKS.md, the test command).
    let mut phases: Vec<(&str, f64)> = Vec::new();
    let mut phase = Instant::now();
    // ---- the world ----------------------------------------------------------------------
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut data = Dataset::generate(&DatasetSpec {
        pages: 4,
        forms_per_page: 2,
        leads: LEADS,
        newest: now - 120,
        seed: 99,
        ..DatasetSpec::default()
    });
    let expired_page = data.pages[3].0.clone();
    // Three leads Graph serves in a shape the parser refuses: ingest and backfill must
    // dead-letter them with class `unreadable` (and their id), never skip them silently.
    let mut unreadable_ids: BTreeSet<String> = BTreeSet::new();
    for lead in data
        .leads
        .iter_mut()
        .filter(|l| l.page_id != expired_page)
        .step_by(397)
        .take(3)
    {
        lead.json["created_time"] = serde_json::json!(["not", "a", "time"]);
        unreadable_ids.insert(lead.id.clone());
    }
    let sandbox = Sandbox::start(
        data.clone(),
        Faults {
            transient_rate: 0.05,
            expired_token_pages: vec![expired_page.clone()],
            regain_minutes: 0.05,
            ..Faults::default()
        },
    )
    .await
    .unwrap();

    let dlq_url = sqs
        .create_queue()
        .queue_name(unique_name("e2e-dlq"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap();
    let queue_url = sqs
        .create_queue()
        .queue_name(unique_name("e2e-queue"))
        .attributes(QueueAttributeName::VisibilityTimeout, "2")
        .attributes(
            QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 10}).to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let leads_table = unique_name("e2e-leads");
    let state_table = unique_name("e2e-state");
    leadpipe_aws::dynamo::create_leads_table(&ddb, &leads_table)
        .await
        .unwrap();
    leadpipe_aws::dynamo::create_state_table(&ddb, &state_table)
        .await
        .unwrap();
    let page_tokens: serde_json::Map<String, serde_json::Value> =
        leadpipe_sandbox::server::tokens(&data)
            .into_iter()
            .map(|(p, t)| (p, serde_json::json!(t)))
            .collect();
    let secret = serde_json::json!({"app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN, "page_tokens": page_tokens});
    let secret_arn = aws_sdk_secretsmanager::Client::new(&config)
        .create_secret()
        .name(unique_name("e2e-secret"))
        .secret_string(secret.to_string())
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    // A TCP proxy in front of moto for DynamoDB only; while down, connections are refused.
    let proxy =
        leadpipe_lambda_harness::TcpProxy::start(moto.trim_start_matches("http://").to_owned())
            .await
            .unwrap();
    let dynamodb_down = proxy.state.clone();
    let dynamodb_proxy = proxy.url.clone();
    // One recording proxy per function (and per function for DynamoDB, in front of the fault
    // proxy): what each binary calls is what its IAM role must allow (infra/tests).
    let record = |upstream: String| async move {
        leadpipe_lambda_harness::TcpProxy::start(upstream.trim_start_matches("http://").to_owned())
            .await
            .unwrap()
    };
    let webhook_calls = record(moto.clone()).await;
    let ingest_calls = record(moto.clone()).await;
    let ingest_ddb_calls = record(dynamodb_proxy.clone()).await;
    let backfill_calls = record(moto.clone()).await;
    let backfill_ddb_calls = record(dynamodb_proxy.clone()).await;

    // ---- the three functions, as the template wires them -----------------------------------
    let mut env = leadpipe_lambda_harness::aws_env();
    env.extend(
        [
            ("SECRET_ARN", secret_arn.clone()),
            ("QUEUE_URL", queue_url.clone()),
            ("DLQ_URL", dlq_url.clone()),
            ("LEADS_TABLE", leads_table.clone()),
            ("STATE_TABLE", state_table.clone()),
            ("GRAPH_API_BASE", sandbox.base_url()),
            ("BACKFILL_PAGE_SIZE", "100".to_owned()),
            ("BACKFILL_DEADLINE_MARGIN_SECONDS", "2".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let env_with = |endpoints: &[(&str, &str)]| {
        let mut env = env.clone();
        env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
        env.extend(
            endpoints
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env
    };
    let webhook = start(
        "leadpipe-webhook",
        &env_with(&[("AWS_ENDPOINT_URL", &webhook_calls.url)]),
    )
    .await;
    let ingest_env = env_with(&[
        ("AWS_ENDPOINT_URL", &ingest_calls.url),
        ("AWS_ENDPOINT_URL_DYNAMODB", &ingest_ddb_calls.url),
    ]);
    let mut ingests = Vec::new();
    for _ in 0..INGEST_CONCURRENCY {
        ingests.push(Arc::new(start("leadpipe-ingest", &ingest_env).await));
    }
    let backfill = start(
        "leadpipe-backfill",
        &env_with(&[
            ("AWS_ENDPOINT_URL", &backfill_calls.url),
            ("AWS_ENDPOINT_URL_DYNAMODB", &backfill_ddb_calls.url),
        ]),
    )
    .await;

    // ---- security: every bypass attempt refused, nothing queued ----------------------------
    let body = post_body(&[&data.leads[0]], now);
    let good = leadpipe_core::signature::sign(APP_SECRET.as_bytes(), body.as_bytes()).unwrap();
    let other = leadpipe_core::signature::sign(b"someone-elses-secret", body.as_bytes()).unwrap();
    let altered_byte = format!(
        "{}{}",
        &good[..20],
        if &good[20..21] == "a" { "b" } else { "a" }
    ) + &good[21..];
    let tampered = body.replace(&data.leads[0].id, &data.leads[1].id);
    let attempts: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        ("no header", body.clone().into_bytes(), None),
        (
            "sha1 only",
            body.clone().into_bytes(),
            Some(format!("sha1={}", &good[7..47])),
        ),
        (
            "wrong length",
            body.clone().into_bytes(),
            Some(good[..good.len() - 4].to_owned()),
        ),
        (
            "altered byte",
            body.clone().into_bytes(),
            Some(altered_byte),
        ),
        (
            "altered body, old signature",
            tampered.into_bytes(),
            Some(good.clone()),
        ),
        ("another secret", body.clone().into_bytes(), Some(other)),
    ];
    for (what, bytes, signature) in &attempts {
        let answer = webhook
            .api
            .invoke(&http_post(bytes, signature.as_deref()), WAIT, WAIT)
            .await
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(answer["statusCode"], 403, "{what}: {answer}");
    }
    assert_eq!(
        queue_depth(&sqs, &queue_url).await,
        (0, 0),
        "a refused post queued something"
    );

    // ---- the event source mapping: batches of 10, partial failures, deletes ---------------
    // One poller per ingest instance; `handled` counts finished invocations, which is what
    // the drain below watches for progress.
    let stop_esm = Arc::new(AtomicBool::new(false));
    let invocations = Arc::new(AtomicUsize::new(0));
    let mut pollers = Vec::new();
    for ingest in &ingests {
        let (sqs, queue_url, ingest, stop, invocations) = (
            sqs.clone(),
            queue_url.clone(),
            ingest.clone(),
            stop_esm.clone(),
            invocations.clone(),
        );
        pollers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let got = sqs
                    .receive_message()
                    .queue_url(&queue_url)
                    .max_number_of_messages(10)
                    // Longer than an invocation on a busy machine, so a batch still being
                    // handled is not handed to a second instance and its receives are not
                    // spent towards maxReceiveCount; failed items come back after it.
                    .visibility_timeout(10)
                    .send()
                    .await
                    .unwrap();
                let records: Vec<(String, String, String)> = got
                    .messages()
                    .iter()
                    .map(|m| {
                        (
                            m.message_id().unwrap().to_owned(),
                            m.receipt_handle().unwrap().to_owned(),
                            m.body().unwrap().to_owned(),
                        )
                    })
                    .collect();
                if records.is_empty() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                let answer = ingest
                    .api
                    .invoke(&sqs_event_from(&records), Duration::from_secs(60), WAIT)
                    .await
                    .unwrap()
                    .json()
                    .unwrap();
                let failed: BTreeSet<String> = answer["batchItemFailures"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
                    .collect();
                for (id, handle, _) in records.iter().filter(|(id, _, _)| !failed.contains(id)) {
                    let _ = (
                        id,
                        sqs.delete_message()
                            .queue_url(&queue_url)
                            .receipt_handle(handle)
                            .send()
                            .await,
                    );
                }
                invocations.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }

    phases.push(("set-up", phase.elapsed().as_secs_f64()));
    phase = Instant::now();
    // ---- Meta delivers: 10% dropped, 10% duplicated, reordered; faults along the way ------
    let mut rng = fastrand::Rng::with_seed(2026);
    let mut order: Vec<&leadpipe_sandbox::SandboxLead> = data.leads.iter().collect();
    rng.shuffle(&mut order);
    let (mut dropped, mut duplicated, mut posts) = (BTreeSet::new(), 0usize, 0usize);
    let chunks: Vec<_> = order.chunks(3).collect();
    for (n, chunk) in chunks.iter().enumerate() {
        // A rate-limit burst through the second quarter; DynamoDB unreachable for a while in the third.
        if n == chunks.len() / 4 {
            sandbox.set_faults(Faults {
                transient_rate: 0.05,
                rate_limited_rate: 0.3,
                expired_token_pages: vec![expired_page.clone()],
                regain_minutes: 0.05,
                ..Faults::default()
            });
        }
        if n == chunks.len() / 2 {
            sandbox.set_faults(Faults {
                transient_rate: 0.05,
                expired_token_pages: vec![expired_page.clone()],
                regain_minutes: 0.05,
                ..Faults::default()
            });
            dynamodb_down.down.store(true, Ordering::SeqCst);
            let state = dynamodb_down.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                state.down.store(false, Ordering::SeqCst);
            });
        }
        let kept: Vec<&leadpipe_sandbox::SandboxLead> = chunk
            .iter()
            .copied()
            .filter(|l| {
                let drop = rng.f64() < 0.1;
                if drop {
                    dropped.insert(l.id.clone());
                }
                !drop
            })
            .collect();
        if kept.is_empty() {
            continue;
        }
        let body = post_body(&kept, now);
        let signature =
            leadpipe_core::signature::sign(APP_SECRET.as_bytes(), body.as_bytes()).unwrap();
        let times = if rng.f64() < 0.1 { 2 } else { 1 };
        duplicated += times - 1;
        for _ in 0..times {
            posts += 1;
            let answer = webhook
                .api
                .invoke(&http_post(body.as_bytes(), Some(&signature)), WAIT, WAIT)
                .await
                .unwrap()
                .json()
                .unwrap();
            assert_eq!(answer["statusCode"], 200, "{answer}");
        }
    }
    dynamodb_down.down.store(false, Ordering::SeqCst);

    phases.push(("posts", phase.elapsed().as_secs_f64()));
    phase = Instant::now();
    // ---- drain, then the schedule tick --------------------------------------------------------
    let mut last_progress = Instant::now();
    let mut last_seen = (
        invocations.load(Ordering::SeqCst),
        queue_depth(&sqs, &queue_url).await,
    );
    loop {
        let depth = queue_depth(&sqs, &queue_url).await;
        if depth == (0, 0) {
            break;
        }
        let seen = (invocations.load(Ordering::SeqCst), depth);
        if seen != last_seen {
            last_seen = seen;
            last_progress = Instant::now();
        }
        assert!(
            last_progress.elapsed() < STALL,
            "the queue stopped draining: {} visible, {} in flight, no ingest invocation finished in {} s",
            depth.0,
            depth.1,
            STALL.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop_esm.store(true, Ordering::SeqCst);
    for poller in pollers {
        poller.await.unwrap();
    }
    let summary = backfill
        .api
        .invoke(
            &scheduled_event(),
            Duration::from_secs(600),
            Duration::from_secs(300),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    let skipped = summary["pages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["page_id"] == expired_page.as_str())
        .unwrap()
        .clone();
    assert_eq!(skipped["status"], "skipped", "{summary}");
    // A transient fault can stop a form mid-run; the next tick resumes it, as the schedule would.
    let mut ticks = 1;
    let mut all_summaries = vec![summary];
    while all_summaries.last().unwrap()["pages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["status"] == "partial" || p["status"] == "rate_limited")
        && ticks < 5
    {
        all_summaries.push(
            backfill
                .api
                .invoke(
                    &scheduled_event(),
                    Duration::from_secs(600),
                    Duration::from_secs(300),
                )
                .await
                .unwrap()
                .json()
                .unwrap(),
        );
        ticks += 1;
    }

    phases.push(("drain and backfill", phase.elapsed().as_secs_f64()));
    phase = Instant::now();
    // ---- what is stored ------------------------------------------------------------------------
    let mut items: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut scanned = 0usize;
    let mut start_key = None;
    loop {
        let page = ddb
            .scan()
            .table_name(&leads_table)
            .set_exclusive_start_key(start_key)
            .send()
            .await
            .unwrap();
        for item in page.items() {
            scanned += 1;
            let raw: serde_json::Value = serde_json::from_str(item["raw"].as_s().unwrap()).unwrap();
            let source = item["source"].as_s().unwrap().clone();
            items.insert(
                item["lead_id"].as_s().unwrap().clone(),
                serde_json::json!({"raw": raw, "source": source}),
            );
        }
        start_key = page.last_evaluated_key().cloned();
        if start_key.is_none() {
            break;
        }
    }
    let readable: BTreeMap<&str, &leadpipe_sandbox::SandboxLead> = data
        .leads
        .iter()
        .filter(|l| l.page_id != expired_page && !unreadable_ids.contains(&l.id))
        .map(|l| (l.id.as_str(), l))
        .collect();
    assert_eq!(scanned, items.len(), "an item stored twice");
    let stored_ids: BTreeSet<&str> = items.keys().map(String::as_str).collect();
    let readable_ids: BTreeSet<&str> = readable.keys().copied().collect();
    let missing: Vec<&&str> = readable_ids.difference(&stored_ids).collect();
    let extra: Vec<&&str> = stored_ids.difference(&readable_ids).collect();
    assert!(
        missing.is_empty(),
        "{} readable leads missing, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    assert!(extra.is_empty(), "unreadable leads stored: {extra:?}");
    for (id, lead) in &readable {
        assert_eq!(
            items[*id]["raw"], lead.json,
            "lead {id} differs from the sandbox"
        );
    }

    // ---- the DLQ holds only the expired page's leads, each with its reason ---------------------
    let dead: Vec<(String, String, String, String)> =
        leadpipe_lambda_harness::dead_letters(&sqs, &dlq_url)
            .await
            .unwrap()
            .into_iter()
            .map(|(body, class, reason)| {
                let event: serde_json::Value = serde_json::from_str(&body).unwrap();
                (
                    event["page_id"].as_str().unwrap_or_default().to_owned(),
                    event["leadgen_id"].as_str().unwrap_or_default().to_owned(),
                    class,
                    reason,
                )
            })
            .collect();
    let mut unreadable_dead: BTreeSet<String> = BTreeSet::new();
    let mut token_dead = 0;
    for (page, lead_id, class, reason) in &dead {
        if unreadable_ids.contains(lead_id) {
            assert_eq!(class, "unreadable", "{lead_id}: {reason}");
            unreadable_dead.insert(lead_id.clone());
            continue;
        }
        assert_eq!(
            page, &expired_page,
            "only the expired page's and the unreadable leads are dead letters: {lead_id} {class} {reason}"
        );
        assert_eq!(class, "token", "{reason}");
        assert!(reason.contains("190/463"), "{reason}");
        token_dead += 1;
    }
    assert!(
        token_dead > 0,
        "the expired page's webhook leads must be dead-lettered"
    );
    assert_eq!(
        unreadable_dead, unreadable_ids,
        "every unreadable lead is in the DLQ with its id, to redrive after a fix"
    );

    phases.push(("checks", phase.elapsed().as_secs_f64()));
    phase = Instant::now();
    // ---- leads out: the table's stream through deliver to the bus, one event per lead -----------
    // As the template wires it: a bus, a rule on `source` and `detail-type` with an SQS queue
    // as its target (standing in for an API destination or a person's own rule), and the
    // deliver binary handed the stream's records the way Lambda's stream poller does.
    let eventbridge = aws_sdk_eventbridge::Client::new(&config);
    let bus = unique_name("e2e-bus");
    eventbridge
        .create_event_bus()
        .name(&bus)
        .send()
        .await
        .unwrap();
    let target_url = sqs
        .create_queue()
        .queue_name(unique_name("e2e-lead-events"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let target_arn = sqs
        .get_queue_attributes()
        .queue_url(&target_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap();
    let rule = unique_name("e2e-rule");
    eventbridge
        .put_rule()
        .name(&rule)
        .event_bus_name(&bus)
        .event_pattern(
            serde_json::json!({"source": ["leadpipe"], "detail-type": ["Lead Received"]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    eventbridge
        .put_targets()
        .rule(&rule)
        .event_bus_name(&bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("leads")
                .arn(&target_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let deliver_calls = record(moto.clone()).await;
    let deliver = start(
        "leadpipe-deliver",
        &env_with(&[
            ("AWS_ENDPOINT_URL", &deliver_calls.url),
            ("EVENT_BUS_NAME", &bus),
        ]),
    )
    .await;
    let streams = aws_sdk_dynamodbstreams::Client::new(&config);
    let stream_arn = ddb
        .describe_table()
        .table_name(&leads_table)
        .send()
        .await
        .unwrap()
        .table
        .unwrap()
        .latest_stream_arn
        .unwrap();
    let shards = streams
        .describe_stream()
        .stream_arn(&stream_arn)
        .send()
        .await
        .unwrap()
        .stream_description
        .unwrap()
        .shards
        .unwrap_or_default();
    // moto's SendMessage slows as a queue fills: the rule's target queue is drained while
    // deliver runs, and what was drained is checked after.
    let draining = Arc::new(AtomicBool::new(true));
    let drainer = {
        let (sqs, target_url, draining) = (sqs.clone(), target_url.clone(), draining.clone());
        tokio::spawn(async move {
            let mut bodies = Vec::new();
            // SQS delivers at least once: a message received again (same message id, e.g.
            // after moto under load let its visibility lapse) is one event, counted once.
            // Two events deliver published are two messages and are still caught below.
            let mut seen_ids = std::collections::HashSet::new();
            let (mut empty_receives, mut stopping) = (0, false);
            loop {
                if !stopping && !draining.load(Ordering::SeqCst) {
                    // From here on, three empty answers in a row end it.
                    stopping = true;
                    empty_receives = 0;
                }
                if stopping && empty_receives >= 3 {
                    return bodies;
                }
                let got = sqs
                    .receive_message()
                    .queue_url(&target_url)
                    .max_number_of_messages(10)
                    .visibility_timeout(300)
                    .send()
                    .await
                    .unwrap();
                if got.messages().is_empty() {
                    empty_receives += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                empty_receives = 0;
                for message in got.messages() {
                    if seen_ids.insert(message.message_id().unwrap().to_owned()) {
                        bodies.push(message.body().unwrap().to_owned());
                    }
                    sqs.delete_message()
                        .queue_url(&target_url)
                        .receipt_handle(message.receipt_handle().unwrap())
                        .send()
                        .await
                        .unwrap();
                }
            }
        })
    };
    let (mut stream_records, mut deliver_invocations) = (0usize, 0usize);
    for shard in shards {
        let mut iterator = streams
            .get_shard_iterator()
            .stream_arn(&stream_arn)
            .shard_id(shard.shard_id().unwrap())
            .shard_iterator_type(aws_sdk_dynamodbstreams::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator;
        while let Some(current) = iterator {
            let got = streams
                .get_records()
                .shard_iterator(current)
                .limit(100)
                .send()
                .await
                .unwrap();
            let mut batch: Vec<aws_sdk_dynamodbstreams::types::Record> = got.records().to_vec();
            if batch.is_empty() {
                break;
            }
            stream_records += batch.len();
            // Lambda retries from the reported record, as many times as it takes here.
            for _ in 0..10 {
                let answer = deliver
                    .api
                    .invoke(
                        &leadpipe_lambda_harness::events::dynamodb_stream_event(
                            &batch,
                            &stream_arn,
                        ),
                        Duration::from_secs(60),
                        WAIT,
                    )
                    .await
                    .unwrap()
                    .json()
                    .unwrap();
                deliver_invocations += 1;
                let Some(from) = answer["batchItemFailures"]
                    .as_array()
                    .and_then(|f| f.first())
                    .and_then(|f| f["itemIdentifier"].as_str())
                else {
                    break;
                };
                let at = batch
                    .iter()
                    .position(|r| r.dynamodb().and_then(|d| d.sequence_number()) == Some(from))
                    .unwrap();
                batch.drain(..at);
            }
            iterator = got.next_shard_iterator;
        }
    }
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../../schemas/lead-received.v1.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    draining.store(false, Ordering::SeqCst);
    let bodies = drainer.await.unwrap();
    let mut events_per_lead: BTreeMap<String, usize> = BTreeMap::new();
    for body in &bodies {
        let envelope: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(envelope["source"], "leadpipe", "{envelope}");
        assert_eq!(envelope["detail-type"], "Lead Received", "{envelope}");
        let detail = &envelope["detail"];
        let errors: Vec<String> = validator
            .iter_errors(detail)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "not lead event v1: {errors:?}");
        let lead_id = detail["lead_id"].as_str().unwrap().to_owned();
        // Readable parts as the sandbox's forms say (two locales, phones written many ways).
        if data.lead(&lead_id).is_some()
            && let Err(why) = data.check_readable(detail)
        {
            panic!("{why}");
        }
        let item = &items[&lead_id];
        assert_eq!(detail["source"], item["source"], "{lead_id}");
        *events_per_lead.entry(lead_id).or_default() += 1;
    }
    let event_ids: BTreeSet<&str> = events_per_lead.keys().map(String::as_str).collect();
    assert_eq!(
        event_ids, stored_ids,
        "one event per stored lead, none for anything else"
    );
    // The catalog: backfill lists each page's forms; ingest reads a form by id only when the
    // state table does not hold it yet, once per warm container.
    println!(
        "e2e: forms read by id from Graph: {} ({} forms)",
        sandbox.form_reads(),
        data.forms.len()
    );
    let doubled: Vec<(&String, &usize)> = events_per_lead.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "events published twice: {doubled:?}");
    println!(
        "e2e: leads out: {stream_records} stream records, {deliver_invocations} deliver invocations, {} Lead Received events, one per stored lead",
        events_per_lead.len()
    );

    phases.push(("leads out", phase.elapsed().as_secs_f64()));
    // ---- what each function called, for infra/tests' least-privilege proof ---------------------
    let mut observed = serde_json::Map::new();
    for (name, proxies) in [
        ("webhook", vec![&webhook_calls]),
        ("ingest", vec![&ingest_calls, &ingest_ddb_calls]),
        ("backfill", vec![&backfill_calls, &backfill_ddb_calls]),
        ("deliver", vec![&deliver_calls]),
    ] {
        let calls: BTreeSet<String> = proxies.iter().flat_map(|p| p.state.aws_calls()).collect();
        observed.insert(name.to_owned(), serde_json::json!(calls));
    }
    println!(
        "e2e: AWS calls per function: {}",
        serde_json::Value::Object(observed.clone())
    );
    if let Ok(path) = std::env::var("LEADPIPE_OBSERVED_ACTIONS") {
        std::fs::write(&path, serde_json::Value::Object(observed).to_string()).unwrap();
    }

    // ---- no lead contents and no secret in any log line ----------------------------------------
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut forbidden: Vec<String> = vec![APP_SECRET.into(), VERIFY_TOKEN.into()];
    forbidden.extend(
        leadpipe_sandbox::server::tokens(&data)
            .into_iter()
            .map(|(_, t)| t),
    );
    for lead in &data.leads {
        for field in lead.json["field_data"].as_array().unwrap() {
            if ["email", "full_name", "phone_number"].contains(&field["name"].as_str().unwrap()) {
                forbidden.extend(
                    field["values"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_owned()),
                );
            }
        }
    }
    let forbidden: BTreeSet<String> = forbidden.into_iter().collect();
    let mut lines = 0;
    let mut processes = vec![
        ("webhook", &webhook.process),
        ("backfill", &backfill.process),
        ("deliver", &deliver.process),
    ];
    processes.extend(ingests.iter().map(|i| ("ingest", &i.process)));
    // Log bytes per stored lead, by function and by kind (EMF metric lines or log lines):
    // CloudWatch Logs ingestion is billed by the byte (BENCHMARKS.md, cost per million).
    let mut log_bytes: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (name, function) in processes {
        for line in function.logs() {
            lines += 1;
            let kind = if line.contains("\"_aws\"") {
                "emf"
            } else {
                "log"
            };
            *log_bytes.entry((name, kind)).or_default() += line.len() + 1;
            for value in &forbidden {
                assert!(
                    !line.contains(value.as_str()),
                    "{name} logged a secret or lead value: {line}"
                );
            }
        }
    }

    println!(
        "e2e: phases: {}",
        phases
            .iter()
            .map(|(name, secs)| format!("{name} {secs:.1} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "e2e: log bytes per stored lead at info: {}",
        log_bytes
            .iter()
            .map(|((name, kind), bytes)| format!(
                "{name} {kind} {:.0}",
                *bytes as f64 / items.len() as f64
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let recovered = items.values().filter(|i| i["source"] == "backfill").count();
    println!(
        "e2e: {LEADS} leads; {posts} posts ({duplicated} duplicated), {} dropped; {} stored once each ({} by webhook, {recovered} recovered by backfill in {ticks} tick(s)); {} in the DLQ ({token_dead} expired-token page, {} unreadable leads); {} ingest invocations on {INGEST_CONCURRENCY} instances; {lines} log lines checked; {:.1} s",
        dropped.len(),
        items.len(),
        items.len() - recovered,
        dead.len(),
        unreadable_ids.len(),
        invocations.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64()
    );
}
