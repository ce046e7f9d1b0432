//! `leadpipe status` on the deployed stack: core's [`StatusSource`] over the queue's
//! attributes, the DLQ (read with a short visibility and given back at once), the state
//! table's checkpoints and `by_form` counts (`Select=COUNT`, per form with a checkpoint).

use crate::describe_sdk_error;
use crate::operate::{give_back, take_all};
use aws_sdk_dynamodb::types::{AttributeValue, Select};
use aws_sdk_sqs::types::QueueAttributeName;
use leadpipe_core::ports::{Cause, DeadLetterClass, StoreError};
use leadpipe_core::status::{
    CheckpointFacts, DeadLetterGroup, FormLeads, ForwardingFacts, LastRun, QueueFacts, StatusSource,
};
use std::collections::BTreeMap;

/// The stack's resources `status` reads; a part whose resource is not named is `None`.
#[derive(Debug, Clone)]
pub struct StackStatus {
    /// SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// DynamoDB.
    pub ddb: aws_sdk_dynamodb::Client,
    /// `LeadEventsQueueUrl`.
    pub queue_url: Option<String>,
    /// `DeadLetterQueueUrl`.
    pub dlq_url: Option<String>,
    /// `StateTableName`.
    pub state_table: Option<String>,
    /// `LeadsTableName`.
    pub leads_table: Option<String>,
    /// `StagesQueueUrl`.
    pub stages_queue_url: Option<String>,
    /// `StagesDeadLetterQueueUrl`.
    pub stages_dlq_url: Option<String>,
}

impl StackStatus {
    /// The stack's resources with clients built from `config`.
    pub fn new(config: &aws_config::SdkConfig, names: &crate::stack::StackNames) -> Self {
        Self {
            sqs: aws_sdk_sqs::Client::new(config),
            ddb: aws_sdk_dynamodb::Client::new(config),
            queue_url: names.queue_url.clone(),
            dlq_url: names.dlq_url.clone(),
            state_table: names.state_table.clone(),
            leads_table: names.leads_table.clone(),
            stages_queue_url: names.stages_queue_url.clone(),
            stages_dlq_url: names.stages_dlq_url.clone(),
        }
    }

    /// A queue's approximate depth from its attributes (the oldest's age is the alarm's).
    async fn queue_depth(&self, url: &str, what: &str) -> Result<QueueFacts, StoreError> {
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| failed(what, e))?;
        let get = |n: QueueAttributeName| -> u64 {
            attrs
                .attributes()
                .and_then(|a| a.get(&n))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(QueueFacts {
            waiting: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
            oldest_age_seconds: None,
        })
    }

    /// A DLQ's messages by class (read with a short visibility, given back at once); one
    /// SQS moved after `maxReceiveCount` (no attribute of ours) is `exhausted`.
    async fn dlq_groups(&self, dlq: &str) -> Result<Vec<DeadLetterGroup>, StoreError> {
        let taken = take_all(&self.sqs, dlq, 30)
            .await
            .map_err(|e| StoreError::Unavailable(Cause::from_error(e)))?;
        give_back(&self.sqs, dlq, &taken).await;
        let mut groups: BTreeMap<String, DeadLetterGroup> = BTreeMap::new();
        for m in &taken {
            let class = m
                .reason_class
                .clone()
                .unwrap_or_else(|| DeadLetterClass::Exhausted.as_str().to_owned());
            let group = groups.entry(class.clone()).or_insert(DeadLetterGroup {
                reason_class: class,
                count: 0,
                newest_reason: String::new(),
                newest_at: None,
            });
            group.count += 1;
            group.newest_reason = m.reason.clone().unwrap_or_else(|| {
                "moved to the DLQ by SQS after maxReceiveCount receives".to_owned()
            });
        }
        Ok(groups.into_values().collect())
    }
}

fn failed<E, R>(what: &str, e: aws_sdk_sqs::error::SdkError<E, R>) -> StoreError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    StoreError::Unavailable(Cause::described(
        format!("{what}: {}", describe_sdk_error(&e)),
        e,
    ))
}

impl StatusSource for StackStatus {
    async fn queue(&self) -> Result<Option<QueueFacts>, StoreError> {
        let Some(url) = &self.queue_url else {
            return Ok(None);
        };
        self.queue_depth(url, "the queue").await.map(Some)
    }

    async fn dead_letters(&self) -> Result<Option<Vec<DeadLetterGroup>>, StoreError> {
        let Some(dlq) = &self.dlq_url else {
            return Ok(None);
        };
        self.dlq_groups(dlq).await.map(Some)
    }

    async fn stages(&self) -> Result<Option<leadpipe_core::status::StageFacts>, StoreError> {
        let (Some(queue), Some(dlq)) = (&self.stages_queue_url, &self.stages_dlq_url) else {
            return Ok(None);
        };
        let depth = self.queue_depth(queue, "the stage queue").await?;
        let queued = depth.waiting + depth.in_flight;
        // The ledger's `stage#` items, counted (a `Select=COUNT` scan of the state table).
        let mut sent = 0u64;
        if let Some(table) = &self.state_table {
            let mut start = None;
            loop {
                let page = self
                    .ddb
                    .scan()
                    .table_name(table)
                    .select(Select::Count)
                    .filter_expression("begins_with(pk, :p)")
                    .expression_attribute_values(
                        ":p",
                        AttributeValue::S(crate::stages::STAGE_ITEM_PREFIX.to_owned()),
                    )
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| {
                        StoreError::Unavailable(Cause::described(
                            format!("the state table: {}", describe_sdk_error(&e)),
                            e,
                        ))
                    })?;
                sent += page.count().max(0) as u64;
                start = page.last_evaluated_key().cloned();
                if start.is_none() {
                    break;
                }
            }
        }
        Ok(Some(leadpipe_core::status::StageFacts {
            queued,
            sent,
            refused: self.dlq_groups(dlq).await?,
        }))
    }

    async fn checkpoints(&self) -> Result<Option<Vec<CheckpointFacts>>, StoreError> {
        let Some(table) = &self.state_table else {
            return Ok(None);
        };
        let mut checkpoints = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .ddb
                .scan()
                .table_name(table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| {
                    StoreError::Unavailable(Cause::described(
                        format!("the state table: {}", describe_sdk_error(&e)),
                        e,
                    ))
                })?;
            for item in page.items() {
                let s = |k: &str| match item.get(k) {
                    Some(AttributeValue::S(v)) => v.clone(),
                    _ => String::new(),
                };
                let n = |k: &str| -> i64 {
                    match item.get(k) {
                        Some(AttributeValue::N(v)) => v.parse().unwrap_or(0),
                        _ => 0,
                    }
                };
                let Some(key) = leadpipe_core::backfill::CheckpointKey::parse(&s("pk")) else {
                    continue;
                };
                checkpoints.push(CheckpointFacts {
                    key,
                    read_to: time::OffsetDateTime::from_unix_timestamp(n("checkpoint"))
                        .map(leadpipe_core::record::contract_time)
                        .unwrap_or_default(),
                    updated_at: s("updated_at"),
                    last_run: LastRun {
                        leads_read: n("last_run_leads_read").max(0) as u64,
                        new: n("last_run_new").max(0) as u64,
                        already_present: n("last_run_already_present").max(0) as u64,
                    },
                    name: None,
                });
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        Ok(Some(checkpoints))
    }

    async fn leads_per_form(
        &self,
        day: &str,
        week: &str,
        forms: &[String],
    ) -> Result<Option<Vec<FormLeads>>, StoreError> {
        let Some(table) = &self.leads_table else {
            return Ok(None);
        };
        let mut all = Vec::new();
        for form in forms {
            let mut counts = [0u64; 2];
            for (i, since) in [day, week].into_iter().enumerate() {
                let mut start = None;
                loop {
                    let page = self
                        .ddb
                        .query()
                        .table_name(table)
                        .index_name("by_form")
                        .key_condition_expression("form_id = :f AND created_time >= :s")
                        .expression_attribute_values(":f", AttributeValue::S(form.clone()))
                        .expression_attribute_values(":s", AttributeValue::S(since.to_owned()))
                        .select(Select::Count)
                        .set_exclusive_start_key(start)
                        .send()
                        .await
                        .map_err(|e| {
                            StoreError::Unavailable(Cause::described(
                                format!("the leads table: {}", describe_sdk_error(&e)),
                                e,
                            ))
                        })?;
                    counts[i] += page.count().max(0) as u64;
                    start = page.last_evaluated_key().cloned();
                    if start.is_none() {
                        break;
                    }
                }
            }
            if counts[1] > 0 {
                all.push(FormLeads {
                    form_id: Some(form.clone()),
                    name: None,
                    last_24h: counts[0],
                    last_7d: counts[1],
                });
            }
        }
        Ok(Some(all))
    }

    async fn page_tokens(
        &self,
    ) -> Result<Option<Vec<leadpipe_core::tokens::PageTokenHealth>>, StoreError> {
        let Some(table) = &self.state_table else {
            return Ok(None);
        };
        crate::dynamo::token_health(&self.ddb, table)
            .await
            .map(Some)
    }

    async fn form_names(&self) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        let Some(table) = &self.state_table else {
            return Ok(Default::default());
        };
        Ok(crate::dynamo::catalog(&self.ddb, table)
            .await?
            .into_iter()
            .filter_map(|f| f.name.map(|n| (f.id, n)))
            .collect())
    }

    async fn forwarding(&self) -> Result<Option<ForwardingFacts>, StoreError> {
        // On the stack, deliver's state is in its alarms and its failure queue.
        Ok(None)
    }
}
