//! One moto world for the functions' tests: a lead queue (1 s visibility) with its DLQ, a
//! leads table and a state table, each named uniquely so tests share one moto server, and
//! the reads the tests make of them.

// Test support: a failed call to moto is the test's failure, said where it happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

/// The resources a function under test is pointed at.
pub struct Moto {
    /// SQS on moto.
    pub sqs: aws_sdk_sqs::Client,
    /// DynamoDB on moto.
    pub ddb: aws_sdk_dynamodb::Client,
    /// The lead events queue.
    pub queue_url: String,
    /// Its dead-letter queue.
    pub dlq_url: String,
    /// The leads table.
    pub leads_table: String,
    /// The state table (checkpoints, the forms catalog, token health).
    pub state_table: String,
}

impl Moto {
    /// Creates the queues and tables, named after `prefix`.
    pub async fn new(prefix: &str) -> Self {
        crate::moto_endpoint().expect("moto: run scripts/test, or set AWS_ENDPOINT_URL");
        let config = leadpipe_aws::sdk_config().await;
        let sqs = aws_sdk_sqs::Client::new(&config);
        let ddb = aws_sdk_dynamodb::Client::new(&config);
        let queue = |name: String, visibility: Option<&'static str>| {
            let sqs = sqs.clone();
            async move {
                let mut create = sqs.create_queue().queue_name(name);
                if let Some(seconds) = visibility {
                    create = create.attributes(
                        aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                        seconds,
                    );
                }
                create.send().await.unwrap().queue_url.unwrap()
            }
        };
        let queue_url = queue(crate::unique_name(prefix), Some("1")).await;
        let dlq_url = queue(crate::unique_name(&format!("{prefix}-dlq")), None).await;
        let leads_table = crate::unique_name(&format!("{prefix}-leads"));
        leadpipe_aws::dynamo::create_leads_table(&ddb, &leads_table)
            .await
            .unwrap();
        let state_table = crate::unique_name(&format!("{prefix}-state"));
        leadpipe_aws::dynamo::create_state_table(&ddb, &state_table)
            .await
            .unwrap();
        Self {
            sqs,
            ddb,
            queue_url,
            dlq_url,
            leads_table,
            state_table,
        }
    }

    /// Sends the bodies and receives them back as the event source mapping would:
    /// `(message id, receipt handle, body)`.
    pub async fn deliver(&self, bodies: &[String]) -> Vec<(String, String, String)> {
        for body in bodies {
            self.sqs
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(body)
                .send()
                .await
                .unwrap();
        }
        let mut received = Vec::new();
        while received.len() < bodies.len() {
            let out = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .visibility_timeout(1)
                .send()
                .await
                .unwrap();
            for m in out.messages() {
                received.push((
                    m.message_id().unwrap_or_default().to_owned(),
                    m.receipt_handle().unwrap_or_default().to_owned(),
                    m.body().unwrap_or_default().to_owned(),
                ));
            }
        }
        received
    }

    /// Every item of the leads table, by lead id, page after page.
    pub async fn items(&self) -> HashMap<String, HashMap<String, AttributeValue>> {
        let mut out = HashMap::new();
        let mut start = None;
        loop {
            let page = self
                .ddb
                .scan()
                .table_name(&self.leads_table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .unwrap();
            for item in page.items() {
                if let Some(AttributeValue::S(id)) = item.get("lead_id") {
                    out.insert(id.clone(), item.clone());
                }
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return out;
            }
        }
    }

    /// Every dead-lettered message: `(body, reason class, reason)` (each read once).
    pub async fn dead_letters(&self) -> Vec<(String, String, String)> {
        crate::dead_letters(&self.sqs, &self.dlq_url).await.unwrap()
    }

    /// The DLQ as a dead-letter port (backfill writes there).
    pub fn dead_letter_queue(&self) -> leadpipe_aws::sqs::SqsQueueControl {
        leadpipe_aws::sqs::SqsQueueControl::dead_letters_only(self.sqs.clone(), &self.dlq_url)
    }

    /// The checkpoint saved under `key`, when there is one.
    pub async fn checkpoint(&self, key: &str) -> Option<i64> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.state_table)
            .key("pk", AttributeValue::S(key.into()))
            .send()
            .await
            .unwrap();
        match out.item().and_then(|i| i.get("checkpoint")) {
            Some(AttributeValue::N(n)) => n.parse().ok(),
            _ => None,
        }
    }
}
