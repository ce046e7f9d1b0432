//! The AWS path's proof (`tests/aws_path.rs`), phase by phase: the three compiled
//! function binaries under Lambda Runtime APIs, wired as the SAM template wires them (a
//! webhook posting to SQS, an event-source-mapping loop with ReportBatchItemFailures, a
//! visibility timeout and a maxReceiveCount redrive into the DLQ, a schedule tick for
//! backfill, deliver on the table's stream), against moto and the sandbox Graph, with
//! faults: dropped, duplicated and reordered webhooks, transient Graph errors, a rate-limit
//! burst, an expired-token page, and a window in which DynamoDB is unreachable.

use crate::aws::{Aws, Drainer, Mapping, WAIT};
use crate::{Function, start};
use aws_sdk_sqs::types::QueueAttributeName;
use leadpipe_lambda_harness::TcpProxy;
use leadpipe_lambda_harness::events::{HttpEvent, HttpFront, scheduled_event};
use leadpipe_sandbox::sender::post_body;
use leadpipe_sandbox::{Dataset, DatasetSpec, Faults, Sandbox};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const APP_SECRET: &str = "e2e-app-secret-5b7f1c";
const VERIFY_TOKEN: &str = "e2e-verify-token-93ad";
/// Leads in the sandbox's world.
pub const LEADS: usize = 2000;
/// Ingest instances polling the queue at once, as Lambda scales an SQS mapping out.
pub const INGEST_CONCURRENCY: usize = 3;
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

/// Faults with the expired-token page, and transient errors, always on.
fn faults(expired_page: &str, rate_limited_rate: f64) -> Faults {
    Faults {
        transient_rate: 0.05,
        rate_limited_rate,
        expired_token_pages: vec![expired_page.to_owned()],
        regain_minutes: 0.05,
        ..Faults::default()
    }
}

/// How each function is started: the template's environment, and a recording proxy per
/// function (what it calls is what its IAM role must allow, infra/tests).
struct Wiring {
    aws: Aws,
    env: Vec<(String, String)>,
    /// In front of moto for DynamoDB only; while down, connections are refused.
    dynamodb: TcpProxy,
    /// What each function called, by function.
    calls: Vec<(&'static str, TcpProxy)>,
}

impl Wiring {
    /// The environment of a function recorded as `name`: AWS through its own recording
    /// proxy, and DynamoDB through another in front of the fault proxy when `faulty_ddb`.
    async fn env(&mut self, name: &'static str, faulty_ddb: bool) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
        let calls = self.aws.recorder(&self.aws.endpoint).await;
        env.push(("AWS_ENDPOINT_URL".into(), calls.url.clone()));
        self.calls.push((name, calls));
        if faulty_ddb {
            let ddb_calls = self.aws.recorder(&self.dynamodb.url).await;
            env.push(("AWS_ENDPOINT_URL_DYNAMODB".into(), ddb_calls.url.clone()));
            self.calls.push((name, ddb_calls));
        }
        env
    }

    async fn start(&mut self, binary: &str, name: &'static str, faulty_ddb: bool) -> Function {
        let env = self.env(name, faulty_ddb).await;
        start(binary, &env).await
    }
}

/// The world of the proof, and what each phase found.
pub struct World {
    started: Instant,
    phase: Instant,
    phases: Vec<(&'static str, f64)>,
    aws: Aws,
    now: i64,
    data: Dataset,
    /// The page whose token Meta refuses (190/463) on every call.
    expired_page: String,
    /// Leads Graph serves in a shape the parser refuses.
    unreadable_ids: BTreeSet<String>,
    sandbox: Sandbox,
    queue_url: String,
    dlq_url: String,
    leads_table: String,
    wiring: Wiring,
    webhook: Function,
    ingests: Vec<Arc<Function>>,
    backfill: Function,
    deliver: Option<Function>,
    posts: usize,
    duplicated: usize,
    dropped: BTreeSet<String>,
    invocations: usize,
    ticks: usize,
    /// lead id → `{raw, source}` as stored.
    items: BTreeMap<String, serde_json::Value>,
    dead_letters: usize,
    token_dead: usize,
    log_lines: usize,
    log_bytes: BTreeMap<(&'static str, &'static str), usize>,
}

impl World {
    /// The sandbox's world, the queues, tables and secret on moto, and the three functions
    /// as the template wires them, each behind a recording proxy.
    pub async fn build() -> Self {
        let started = Instant::now();
        let aws = Aws::new().await;
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
        let mut unreadable_ids = BTreeSet::new();
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
        let sandbox = Sandbox::start(data.clone(), faults(&expired_page, 0.0))
            .await
            .unwrap();

        let dlq_url = aws.queue("e2e-dlq", &[]).await;
        let dlq_arn = aws.queue_arn(&dlq_url).await;
        let queue_url = aws
            .queue(
                "e2e-queue",
                &[
                    (QueueAttributeName::VisibilityTimeout, "2".to_owned()),
                    (
                        QueueAttributeName::RedrivePolicy,
                        serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 10})
                            .to_string(),
                    ),
                ],
            )
            .await;
        let (leads_table, state_table) = aws.tables("e2e").await;
        let page_tokens: serde_json::Map<String, serde_json::Value> =
            leadpipe_sandbox::server::tokens(&data)
                .into_iter()
                .map(|(p, t)| (p, serde_json::json!(t)))
                .collect();
        let secret_arn = aws
            .secret(
                "e2e-secret",
                &serde_json::json!({"app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN, "page_tokens": page_tokens}),
            )
            .await;
        let dynamodb = aws.recorder(&aws.endpoint).await;
        let mut env = leadpipe_lambda_harness::aws_env();
        env.extend(
            [
                ("SECRET_ARN", secret_arn),
                ("QUEUE_URL", queue_url.clone()),
                ("DLQ_URL", dlq_url.clone()),
                ("LEADS_TABLE", leads_table.clone()),
                ("STATE_TABLE", state_table),
                ("GRAPH_API_BASE", sandbox.base_url()),
                ("BACKFILL_PAGE_SIZE", "100".to_owned()),
                ("BACKFILL_DEADLINE_MARGIN_SECONDS", "2".to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let mut wiring = Wiring {
            aws: aws.clone(),
            env,
            dynamodb,
            calls: Vec::new(),
        };
        let webhook = wiring.start("leadpipe-webhook", "webhook", false).await;
        let ingest = wiring.env("ingest", true).await;
        let mut ingests = Vec::new();
        for _ in 0..INGEST_CONCURRENCY {
            ingests.push(Arc::new(start("leadpipe-ingest", &ingest).await));
        }
        let backfill = wiring.start("leadpipe-backfill", "backfill", true).await;
        Self {
            started,
            phase: Instant::now(),
            phases: Vec::new(),
            aws,
            now,
            data,
            expired_page,
            unreadable_ids,
            sandbox,
            queue_url,
            dlq_url,
            leads_table,
            wiring,
            webhook,
            ingests,
            backfill,
            deliver: None,
            posts: 0,
            duplicated: 0,
            dropped: BTreeSet::new(),
            invocations: 0,
            ticks: 0,
            items: BTreeMap::new(),
            dead_letters: 0,
            token_dead: 0,
            log_lines: 0,
            log_bytes: BTreeMap::new(),
        }
    }

    /// Ends a phase of the timing printed at the end (BENCHMARKS.md, the test command).
    pub fn phase(&mut self, name: &'static str) {
        self.phases.push((name, self.phase.elapsed().as_secs_f64()));
        self.phase = Instant::now();
    }

    /// Security: every bypass attempt is refused and nothing is queued.
    pub async fn refuses_every_bypass(&self) {
        let data = &self.data;
        let body = post_body(&[&data.leads[0]], self.now);
        let good = leadpipe_core::signature::sign(APP_SECRET.as_bytes(), body.as_bytes()).unwrap();
        let other =
            leadpipe_core::signature::sign(b"someone-elses-secret", body.as_bytes()).unwrap();
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
            let answer = self
                .webhook
                .api
                .invoke(&http_post(bytes, signature.as_deref()), WAIT, WAIT)
                .await
                .unwrap()
                .json()
                .unwrap();
            assert_eq!(answer["statusCode"], 403, "{what}: {answer}");
        }
        assert_eq!(
            self.aws.queue_depth(&self.queue_url).await,
            (0, 0),
            "a refused post queued something"
        );
    }

    /// The event source mapping: one poller per ingest instance, batches of 10, partial
    /// failures, deletes.
    pub fn mapping(&self) -> Mapping {
        Mapping::start(&self.aws, &self.queue_url, &self.ingests, 10)
    }

    /// Meta delivers every lead: 10% dropped, 10% duplicated, reordered; a rate-limit burst
    /// through the second quarter, DynamoDB unreachable for a while in the third.
    pub async fn meta_delivers(&mut self) {
        let mut rng = fastrand::Rng::with_seed(2026);
        let mut order: Vec<&leadpipe_sandbox::SandboxLead> = self.data.leads.iter().collect();
        rng.shuffle(&mut order);
        let chunks: Vec<_> = order.chunks(3).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            if n == chunks.len() / 4 {
                self.sandbox.set_faults(faults(&self.expired_page, 0.3));
            }
            if n == chunks.len() / 2 {
                self.sandbox.set_faults(faults(&self.expired_page, 0.0));
                self.wiring
                    .dynamodb
                    .state
                    .down
                    .store(true, Ordering::SeqCst);
                let state = self.wiring.dynamodb.state.clone();
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
                        self.dropped.insert(l.id.clone());
                    }
                    !drop
                })
                .collect();
            if kept.is_empty() {
                continue;
            }
            let body = post_body(&kept, self.now);
            let signature =
                leadpipe_core::signature::sign(APP_SECRET.as_bytes(), body.as_bytes()).unwrap();
            let times = if rng.f64() < 0.1 { 2 } else { 1 };
            self.duplicated += times - 1;
            for _ in 0..times {
                self.posts += 1;
                let answer = self
                    .webhook
                    .api
                    .invoke(&http_post(body.as_bytes(), Some(&signature)), WAIT, WAIT)
                    .await
                    .unwrap()
                    .json()
                    .unwrap();
                assert_eq!(answer["statusCode"], 200, "{answer}");
            }
        }
        self.wiring
            .dynamodb
            .state
            .down
            .store(false, Ordering::SeqCst);
    }

    /// Waits for the queue to drain, then stops the mapping.
    pub async fn drain(&mut self, mapping: Mapping) {
        mapping.drain(&self.aws, &self.queue_url, STALL).await;
        self.invocations = mapping.invocations();
        mapping.stop().await;
    }

    /// The schedule's tick: the expired page is skipped; a transient fault can stop a form
    /// mid-run, and the next tick resumes it, as the schedule would (up to five ticks).
    pub async fn backfill_ticks(&mut self) {
        let tick = async || {
            self.backfill
                .api
                .invoke(
                    &scheduled_event(),
                    Duration::from_secs(600),
                    Duration::from_secs(300),
                )
                .await
                .unwrap()
                .json()
                .unwrap()
        };
        let mut summary = tick().await;
        let skipped = summary["pages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["page_id"] == self.expired_page.as_str())
            .unwrap()
            .clone();
        assert_eq!(skipped["status"], "skipped", "{summary}");
        let mut ticks = 1;
        while summary["pages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["status"] == "partial" || p["status"] == "rate_limited")
            && ticks < 5
        {
            summary = tick().await;
            ticks += 1;
        }
        self.ticks = ticks;
    }

    /// Every readable lead stored once, exactly as the sandbox serves it; no unreadable
    /// lead and none of the expired page's.
    pub async fn check_stored(&mut self) {
        let scanned = self.aws.scan(&self.leads_table).await;
        for item in &scanned {
            let raw: serde_json::Value = serde_json::from_str(item["raw"].as_s().unwrap()).unwrap();
            let source = item["source"].as_s().unwrap().clone();
            self.items.insert(
                item["lead_id"].as_s().unwrap().clone(),
                serde_json::json!({"raw": raw, "source": source}),
            );
        }
        assert_eq!(scanned.len(), self.items.len(), "an item stored twice");
        let readable: BTreeMap<&str, &leadpipe_sandbox::SandboxLead> = self
            .data
            .leads
            .iter()
            .filter(|l| l.page_id != self.expired_page && !self.unreadable_ids.contains(&l.id))
            .map(|l| (l.id.as_str(), l))
            .collect();
        let stored_ids: BTreeSet<&str> = self.items.keys().map(String::as_str).collect();
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
                self.items[*id]["raw"], lead.json,
                "lead {id} differs from the sandbox"
            );
        }
    }

    /// The DLQ holds only the expired page's leads (`token`, 190/463) and the unreadable
    /// ones (`unreadable`, each with its id, to redrive after a fix).
    pub async fn check_dead_letters(&mut self) {
        let dead = leadpipe_lambda_harness::dead_letters(&self.aws.sqs, &self.dlq_url)
            .await
            .unwrap();
        let mut unreadable_dead = BTreeSet::new();
        for (body, class, reason) in &dead {
            let event: serde_json::Value = serde_json::from_str(body).unwrap();
            let page = event["page_id"].as_str().unwrap_or_default();
            let lead_id = event["leadgen_id"].as_str().unwrap_or_default().to_owned();
            if self.unreadable_ids.contains(&lead_id) {
                assert_eq!(class, "unreadable", "{lead_id}: {reason}");
                unreadable_dead.insert(lead_id);
                continue;
            }
            assert_eq!(
                page, self.expired_page,
                "only the expired page's and the unreadable leads are dead letters: {lead_id} {class} {reason}"
            );
            assert_eq!(class, "token", "{reason}");
            assert!(reason.contains("190/463"), "{reason}");
            self.token_dead += 1;
        }
        assert!(
            self.token_dead > 0,
            "the expired page's webhook leads must be dead-lettered"
        );
        assert_eq!(
            unreadable_dead, self.unreadable_ids,
            "every unreadable lead is in the DLQ with its id, to redrive after a fix"
        );
        self.dead_letters = dead.len();
    }

    /// Leads out: the table's stream through deliver to a bus whose rule targets a queue
    /// (standing in for an API destination or a person's own rule), one `Lead Received`
    /// event per stored lead, each lead event v1 with the readable parts the sandbox's
    /// forms say.
    pub async fn leads_out(&mut self) {
        let target_url = self.aws.queue("e2e-lead-events", &[]).await;
        let bus = self
            .aws
            .bus_to_queue(
                "e2e",
                serde_json::json!({"source": ["leadpipe"], "detail-type": ["Lead Received"]}),
                &target_url,
            )
            .await;
        let mut env = self.wiring.env("deliver", false).await;
        env.push(("EVENT_BUS_NAME".into(), bus));
        let deliver = start("leadpipe-deliver", &env).await;
        let drainer = Drainer::start(&self.aws, &target_url);
        let streamed = self
            .aws
            .stream_through(&self.leads_table, &deliver, 100)
            .await;
        let bodies = drainer.finish().await;
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../schemas/lead-received.v1.json")).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
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
            if self.data.lead(&lead_id).is_some()
                && let Err(why) = self.data.check_readable(detail)
            {
                panic!("{why}");
            }
            assert_eq!(
                detail["source"], self.items[&lead_id]["source"],
                "{lead_id}"
            );
            *events_per_lead.entry(lead_id).or_default() += 1;
        }
        let event_ids: BTreeSet<&str> = events_per_lead.keys().map(String::as_str).collect();
        let stored_ids: BTreeSet<&str> = self.items.keys().map(String::as_str).collect();
        assert_eq!(
            event_ids, stored_ids,
            "one event per stored lead, none for anything else"
        );
        // The catalog: backfill lists each page's forms; ingest reads a form by id only
        // when the state table does not hold it yet, once per warm container.
        println!(
            "e2e: forms read by id from Graph: {} ({} forms)",
            self.sandbox.form_reads(),
            self.data.forms.len()
        );
        let doubled: Vec<(&String, &usize)> =
            events_per_lead.iter().filter(|(_, n)| **n > 1).collect();
        assert!(doubled.is_empty(), "events published twice: {doubled:?}");
        println!(
            "e2e: leads out: {} stream records, {} deliver invocations, {} Lead Received events, one per stored lead",
            streamed.records,
            streamed.invocations,
            events_per_lead.len()
        );
        self.deliver = Some(deliver);
    }

    /// What each function called, printed and written for infra/tests' least-privilege
    /// proof (`LEADPIPE_OBSERVED_ACTIONS`).
    pub fn record_calls(&self) {
        let mut observed: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (name, proxy) in &self.wiring.calls {
            observed
                .entry(name)
                .or_default()
                .extend(proxy.state.aws_calls());
        }
        let observed = serde_json::json!(observed);
        println!("e2e: AWS calls per function: {observed}");
        if let Ok(path) = std::env::var("LEADPIPE_OBSERVED_ACTIONS") {
            std::fs::write(&path, observed.to_string()).unwrap();
        }
    }

    /// No lead contents and no secret in any log line; log bytes per function and kind.
    pub async fn check_logs(&mut self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut forbidden: Vec<String> = vec![APP_SECRET.into(), VERIFY_TOKEN.into()];
        forbidden.extend(
            leadpipe_sandbox::server::tokens(&self.data)
                .into_iter()
                .map(|(_, t)| t),
        );
        for lead in &self.data.leads {
            for field in lead.json["field_data"].as_array().unwrap() {
                if ["email", "full_name", "phone_number"].contains(&field["name"].as_str().unwrap())
                {
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
        let mut processes = vec![("webhook", &self.webhook), ("backfill", &self.backfill)];
        processes.extend(self.deliver.iter().map(|d| ("deliver", d)));
        processes.extend(self.ingests.iter().map(|i| ("ingest", i.as_ref())));
        // CloudWatch Logs ingestion is billed by the byte (BENCHMARKS.md, cost per million).
        for (name, function) in processes {
            for line in function.process.logs() {
                self.log_lines += 1;
                let kind = if line.contains("\"_aws\"") {
                    "emf"
                } else {
                    "log"
                };
                *self.log_bytes.entry((name, kind)).or_default() += line.len() + 1;
                for value in &forbidden {
                    assert!(
                        !line.contains(value.as_str()),
                        "{name} logged a secret or lead value: {line}"
                    );
                }
            }
        }
    }

    /// The figures: phases, log bytes per stored lead, and what happened to the leads.
    pub fn report(&self) {
        println!(
            "e2e: phases: {}",
            self.phases
                .iter()
                .map(|(name, secs)| format!("{name} {secs:.1} s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "e2e: log bytes per stored lead at info: {}",
            self.log_bytes
                .iter()
                .map(|((name, kind), bytes)| format!(
                    "{name} {kind} {:.0}",
                    *bytes as f64 / self.items.len() as f64
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let recovered = self
            .items
            .values()
            .filter(|i| i["source"] == "backfill")
            .count();
        println!(
            "e2e: {LEADS} leads; {} posts ({} duplicated), {} dropped; {} stored once each ({} by webhook, {recovered} recovered by backfill in {} tick(s)); {} in the DLQ ({} expired-token page, {} unreadable leads); {} ingest invocations on {INGEST_CONCURRENCY} instances; {} log lines checked; {:.1} s",
            self.posts,
            self.duplicated,
            self.dropped.len(),
            self.items.len(),
            self.items.len() - recovered,
            self.ticks,
            self.dead_letters,
            self.token_dead,
            self.unreadable_ids.len(),
            self.invocations,
            self.log_lines,
            self.started.elapsed().as_secs_f64()
        );
    }
}
