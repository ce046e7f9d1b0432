//! The AWS side of the end-to-end tests, on moto: queues, tables, the secret, a bus with a
//! rule to a queue, a table's stream read as Lambda's poller reads it, a function fed from
//! a queue as its event source mapping feeds it, and a drainer of a rule's target queue.

use crate::Function;
use aws_sdk_sqs::types::QueueAttributeName;
use leadpipe_lambda_harness::events::{dynamodb_stream_event, sqs_event_from};
use leadpipe_lambda_harness::{TcpProxy, moto_endpoint, unique_name};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// How long one invocation may take.
pub const WAIT: Duration = Duration::from_secs(60);

/// The SDK's clients on moto.
#[derive(Clone)]
pub struct Aws {
    /// moto's endpoint, `http://host:port`.
    pub endpoint: String,
    /// The SDK's configuration (moto's endpoint, test credentials).
    pub config: aws_config::SdkConfig,
    /// SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// DynamoDB.
    pub ddb: aws_sdk_dynamodb::Client,
}

impl Aws {
    /// The clients, on the moto scripts/test started.
    pub async fn new() -> Self {
        let endpoint = moto_endpoint().expect("moto: run scripts/test");
        let config = leadpipe_aws::sdk_config().await;
        Self {
            endpoint,
            sqs: aws_sdk_sqs::Client::new(&config),
            ddb: aws_sdk_dynamodb::Client::new(&config),
            config,
        }
    }

    /// A new queue named after `prefix`, with these attributes.
    pub async fn queue(&self, prefix: &str, attributes: &[(QueueAttributeName, String)]) -> String {
        let mut create = self.sqs.create_queue().queue_name(unique_name(prefix));
        for (name, value) in attributes {
            create = create.attributes(name.clone(), value);
        }
        create.send().await.unwrap().queue_url.unwrap()
    }

    /// A queue's ARN.
    pub async fn queue_arn(&self, url: &str) -> String {
        self.sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .unwrap()
    }

    /// `(visible, in flight)` messages of a queue.
    pub async fn queue_depth(&self, url: &str) -> (i64, i64) {
        let attrs = self
            .sqs
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

    /// The leads table and the state table, named after `prefix`.
    pub async fn tables(&self, prefix: &str) -> (String, String) {
        let leads = unique_name(&format!("{prefix}-leads"));
        let state = unique_name(&format!("{prefix}-state"));
        leadpipe_aws::dynamo::create_leads_table(&self.ddb, &leads)
            .await
            .unwrap();
        leadpipe_aws::dynamo::create_state_table(&self.ddb, &state)
            .await
            .unwrap();
        (leads, state)
    }

    /// The stack's secret holding `value`; its ARN.
    pub async fn secret(&self, prefix: &str, value: &serde_json::Value) -> String {
        aws_sdk_secretsmanager::Client::new(&self.config)
            .create_secret()
            .name(unique_name(prefix))
            .secret_string(value.to_string())
            .send()
            .await
            .unwrap()
            .arn
            .unwrap()
    }

    /// A recording proxy in front of `upstream` (moto, or another proxy): what a function
    /// calls through it is what its IAM role must allow (infra/tests).
    pub async fn recorder(&self, upstream: &str) -> TcpProxy {
        TcpProxy::start(upstream.trim_start_matches("http://").to_owned())
            .await
            .unwrap()
    }

    /// A bus and a rule on it with `pattern`, targeting the queue `target_url`, as the
    /// template wires such a rule; the bus's name.
    pub async fn bus_to_queue(
        &self,
        prefix: &str,
        pattern: serde_json::Value,
        target_url: &str,
    ) -> String {
        let eventbridge = aws_sdk_eventbridge::Client::new(&self.config);
        let bus = unique_name(&format!("{prefix}-bus"));
        eventbridge
            .create_event_bus()
            .name(&bus)
            .send()
            .await
            .unwrap();
        let rule = unique_name(&format!("{prefix}-rule"));
        eventbridge
            .put_rule()
            .name(&rule)
            .event_bus_name(&bus)
            .event_pattern(pattern.to_string())
            .send()
            .await
            .unwrap();
        eventbridge
            .put_targets()
            .rule(&rule)
            .event_bus_name(&bus)
            .targets(
                aws_sdk_eventbridge::types::Target::builder()
                    .id("target")
                    .arn(self.queue_arn(target_url).await)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        bus
    }

    /// Every item of a table, page after page.
    pub async fn scan(
        &self,
        table: &str,
    ) -> Vec<HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .ddb
                .scan()
                .table_name(table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .unwrap();
            items.extend(page.items().iter().cloned());
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return items;
            }
        }
    }

    /// Hands the table's stream, every shard from its start, to `deliver` as Lambda's
    /// stream poller does: batches of `limit`, each retried from the record it reports
    /// failed (up to 10 times).
    pub async fn stream_through(&self, table: &str, deliver: &Function, limit: i32) -> Streamed {
        let streams = aws_sdk_dynamodbstreams::Client::new(&self.config);
        let stream_arn = self
            .ddb
            .describe_table()
            .table_name(table)
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
        let mut streamed = Streamed::default();
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
                    .limit(limit)
                    .send()
                    .await
                    .unwrap();
                let mut batch = got.records().to_vec();
                if batch.is_empty() {
                    break;
                }
                streamed.records += batch.len();
                for _ in 0..10 {
                    let answer = deliver
                        .api
                        .invoke(
                            &dynamodb_stream_event(&batch, &stream_arn),
                            Duration::from_secs(60),
                            WAIT,
                        )
                        .await
                        .unwrap()
                        .json()
                        .unwrap();
                    streamed.invocations += 1;
                    let Some(from) = answer["batchItemFailures"]
                        .as_array()
                        .and_then(|f| f.first())
                        .and_then(|f| f["itemIdentifier"].as_str())
                    else {
                        break;
                    };
                    streamed.retried += 1;
                    let at = batch
                        .iter()
                        .position(|r| r.dynamodb().and_then(|d| d.sequence_number()) == Some(from))
                        .unwrap();
                    batch.drain(..at);
                }
                iterator = got.next_shard_iterator;
            }
        }
        streamed
    }

    /// One receive of up to 10 messages from `queue_url`, handed to `function` as an SQS
    /// event; the ones it did not report failed are deleted, as the event source mapping
    /// with ReportBatchItemFailures does. `visibility` holds the batch while it is handled.
    /// Returns how many messages were received (0: the queue looked empty).
    pub async fn pump_once(&self, queue_url: &str, function: &Function, visibility: i32) -> usize {
        let got = self
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(visibility)
            .send()
            .await
            .unwrap();
        let records: Vec<(String, String, String)> = got
            .messages()
            .iter()
            .map(|m| {
                (
                    m.message_id().unwrap_or_default().to_owned(),
                    m.receipt_handle().unwrap_or_default().to_owned(),
                    m.body().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        if records.is_empty() {
            return 0;
        }
        let answer = function
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
            .map(|f| f["itemIdentifier"].as_str().unwrap_or_default().to_owned())
            .collect();
        for (id, handle, _) in records.iter().filter(|(id, _, _)| !failed.contains(id)) {
            // A delete that fails leaves the message to come back: at least once.
            let _ = (
                id,
                self.sqs
                    .delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await,
            );
        }
        records.len()
    }
}

/// What [`Aws::stream_through`] handed to deliver.
#[derive(Debug, Default, Clone, Copy)]
pub struct Streamed {
    /// Stream records read.
    pub records: usize,
    /// deliver invocations.
    pub invocations: usize,
    /// Invocations that reported a failed record (and were retried from it).
    pub retried: usize,
}

/// An event source mapping: one poller per function instance, feeding `queue_url` to it
/// until stopped; counts finished invocations (what a drain watches for progress).
pub struct Mapping {
    stop: Arc<AtomicBool>,
    invocations: Arc<AtomicUsize>,
    pollers: Vec<tokio::task::JoinHandle<()>>,
}

impl Mapping {
    /// Starts a poller per function. The batch visibility is longer than an invocation on
    /// a busy machine, so a batch still being handled is not handed to a second instance
    /// and its receives are not spent towards maxReceiveCount.
    pub fn start(aws: &Aws, queue_url: &str, functions: &[Arc<Function>], visibility: i32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let invocations = Arc::new(AtomicUsize::new(0));
        let pollers = functions
            .iter()
            .map(|function| {
                let (aws, queue_url, function, stop, invocations) = (
                    aws.clone(),
                    queue_url.to_owned(),
                    function.clone(),
                    stop.clone(),
                    invocations.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        if aws.pump_once(&queue_url, &function, visibility).await == 0 {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        invocations.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Self {
            stop,
            invocations,
            pollers,
        }
    }

    /// Invocations finished so far.
    pub fn invocations(&self) -> usize {
        self.invocations.load(Ordering::SeqCst)
    }

    /// Waits until `queue_url` is empty. Fails only when nothing moved for `stall`: no
    /// invocation finished and the depth did not change (a slow machine still making
    /// progress passes).
    pub async fn drain(&self, aws: &Aws, queue_url: &str, stall: Duration) {
        let mut last_progress = tokio::time::Instant::now();
        let mut last_seen = (self.invocations(), aws.queue_depth(queue_url).await);
        loop {
            let depth = aws.queue_depth(queue_url).await;
            if depth == (0, 0) {
                return;
            }
            let seen = (self.invocations(), depth);
            if seen != last_seen {
                last_seen = seen;
                last_progress = tokio::time::Instant::now();
            }
            assert!(
                last_progress.elapsed() < stall,
                "the queue stopped draining: {} visible, {} in flight, no invocation finished in {} s",
                depth.0,
                depth.1,
                stall.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops the pollers after their current batch.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for poller in self.pollers {
            poller.await.unwrap();
        }
    }
}

/// Receives and deletes what a rule's target queue gets while the code under test runs
/// (moto's SendMessage slows as a queue fills), and hands the bodies over at the end.
pub struct Drainer {
    draining: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Drainer {
    /// Starts draining `url`.
    pub fn start(aws: &Aws, url: &str) -> Self {
        let draining = Arc::new(AtomicBool::new(true));
        let (sqs, url, flag) = (aws.sqs.clone(), url.to_owned(), draining.clone());
        let task = tokio::spawn(async move {
            let mut bodies = Vec::new();
            // SQS delivers at least once: a message received again (same message id, e.g.
            // after moto under load let its visibility lapse) is one event, counted once.
            // Two events published are two messages and are still counted twice.
            let mut seen_ids = HashSet::new();
            let (mut empty_receives, mut stopping) = (0, false);
            loop {
                if !stopping && !flag.load(Ordering::SeqCst) {
                    // From here on, three empty answers in a row end it.
                    stopping = true;
                    empty_receives = 0;
                }
                if stopping && empty_receives >= 3 {
                    return bodies;
                }
                let got = sqs
                    .receive_message()
                    .queue_url(&url)
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
                    if seen_ids.insert(message.message_id().unwrap_or_default().to_owned()) {
                        bodies.push(message.body().unwrap_or_default().to_owned());
                    }
                    sqs.delete_message()
                        .queue_url(&url)
                        .receipt_handle(message.receipt_handle().unwrap_or_default())
                        .send()
                        .await
                        .unwrap();
                }
            }
        });
        Self { draining, task }
    }

    /// Every body received, once the queue stayed empty for three receives.
    pub async fn finish(self) -> Vec<String> {
        self.draining.store(false, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}
