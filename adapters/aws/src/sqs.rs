//! The SQS adapter of [`EventQueue`]: SendMessageBatch in chunks of ten (SQS's limit),
//! resending the entries SQS reports as failed, and failing when any event is left over.

use crate::describe_sdk_error;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use leadpipe_core::event::LeadEvent;
use leadpipe_core::ports::{Cause, EventQueue, QueueError};
use std::time::Duration;

/// SQS takes at most ten entries per SendMessageBatch.
pub const SQS_BATCH_LIMIT: usize = 10;
/// How often entries that SQS reported failed are sent again (the SDK already retries
/// whole calls that fail in transit).
const ENTRY_ATTEMPTS: u32 = 3;
const ENTRY_RETRY_BASE: Duration = Duration::from_millis(50);
/// SendMessageBatch calls in flight at once for one post: a 10,000-change post must not
/// open a thousand connections at once.
pub const MAX_CONCURRENT_SENDS: usize = 8;

/// Sends lead events to one SQS queue.
#[derive(Debug, Clone)]
pub struct SqsEventQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsEventQueue {
    /// A queue at `queue_url` with a client built from `config`.
    pub fn new(config: &aws_config::SdkConfig, queue_url: impl Into<String>) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(config),
            queue_url: queue_url.into(),
        }
    }

    /// A queue at `queue_url` with this client.
    pub fn from_client(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }

    /// Sends one chunk (at most ten bodies), resending entries SQS reports failed.
    async fn send_chunk(&self, chunk: &[String]) -> Result<(), QueueError> {
        let mut pending: Vec<(usize, String)> = chunk.iter().cloned().enumerate().collect();
        let mut last_reason = String::new();
        for attempt in 0..ENTRY_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(ENTRY_RETRY_BASE * 2u32.pow(attempt - 1)).await;
            }
            let mut request = self.client.send_message_batch().queue_url(&self.queue_url);
            for (index, body) in &pending {
                let entry = SendMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .message_body(body)
                    .build()
                    .map_err(|e| QueueError::Rejected {
                        failed: pending.len(),
                        total: chunk.len(),
                        reason: format!("batch entry could not be built: {e}"),
                    })?;
                request = request.entries(entry);
            }
            let output = request.send().await.map_err(|e| {
                QueueError::Unavailable(Cause::described(describe_sdk_error(&e), e))
            })?;
            let failed = output.failed();
            if failed.is_empty() {
                return Ok(());
            }
            // A sender fault (a malformed entry) will fail again however often it is sent.
            if let Some(fault) = failed.iter().find(|f| f.sender_fault()) {
                return Err(QueueError::Rejected {
                    failed: failed.len(),
                    total: chunk.len(),
                    reason: format!(
                        "{}: {}",
                        fault.code(),
                        fault.message().unwrap_or("no message")
                    ),
                });
            }
            last_reason = failed
                .first()
                .map(|f| format!("{}: {}", f.code(), f.message().unwrap_or("no message")))
                .unwrap_or_default();
            tracing::warn!(
                failed = failed.len(),
                attempt = attempt + 1,
                reason = %last_reason,
                "SQS reported failed batch entries; resending them"
            );
            let failed_ids: Vec<&str> = failed.iter().map(|f| f.id()).collect();
            pending.retain(|(index, _)| failed_ids.contains(&index.to_string().as_str()));
        }
        Err(QueueError::Rejected {
            failed: pending.len(),
            total: chunk.len(),
            reason: last_reason,
        })
    }
}

impl SqsEventQueue {
    /// Sends every body, chunks concurrently, at most MAX_CONCURRENT_SENDS at a time: a
    /// 100-change post costs about two round trips, not ten, and a huge one stays bounded.
    async fn send_all(&self, bodies: &[String]) -> Result<(), QueueError> {
        let permits = tokio::sync::Semaphore::new(MAX_CONCURRENT_SENDS);
        let results = futures::future::join_all(bodies.chunks(SQS_BATCH_LIMIT).map(|chunk| {
            let permits = &permits;
            async move {
                // The semaphore is never closed, so a permit always comes.
                let _permit = permits.acquire().await.ok();
                self.send_chunk(chunk).await
            }
        }))
        .await;
        let mut failed = 0;
        let mut first_error = None;
        for (result, chunk) in results.into_iter().zip(bodies.chunks(SQS_BATCH_LIMIT)) {
            if let Err(err) = result {
                failed += match &err {
                    QueueError::Rejected { failed, .. } => *failed,
                    QueueError::Unavailable(_) => chunk.len(),
                };
                first_error.get_or_insert(err);
            }
        }
        match first_error {
            None => Ok(()),
            Some(QueueError::Unavailable(reason)) if failed == bodies.len() => {
                Err(QueueError::Unavailable(reason))
            }
            Some(QueueError::Unavailable(cause)) => Err(QueueError::Rejected {
                failed,
                total: bodies.len(),
                reason: cause.to_string(),
            }),
            Some(QueueError::Rejected { reason, .. }) => Err(QueueError::Rejected {
                failed,
                total: bodies.len(),
                reason,
            }),
        }
    }
}

impl EventQueue for SqsEventQueue {
    async fn enqueue(&self, events: &[LeadEvent]) -> Result<(), QueueError> {
        let mut bodies = Vec::with_capacity(events.len());
        for event in events {
            bodies.push(event.to_message_body().map_err(|e| QueueError::Rejected {
                failed: events.len(),
                total: events.len(),
                reason: format!("event could not be serialized: {e}"),
            })?);
        }
        self.send_all(&bodies).await
    }
}

/// The stack's stage queue (`STAGES_QUEUE_URL`): `POST /stages` and deliver's initial
/// stages, one message per stage (core's `StageChange` JSON).
impl leadpipe_core::stages::StageQueue for SqsEventQueue {
    async fn queue_stages(
        &self,
        stages: &[leadpipe_core::stages::StageChange],
    ) -> Result<(), QueueError> {
        let bodies: Vec<String> = stages.iter().map(|s| s.to_json()).collect();
        self.send_all(&bodies).await
    }
}

/// The ingest side's queue operations: parking rate-limited messages and dead-lettering
/// permanent failures with their reason.
#[derive(Debug, Clone)]
pub struct SqsQueueControl {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    dead_letter_url: String,
}

/// Message attribute names on dead-lettered messages.
pub const REASON_CLASS_ATTRIBUTE: &str = "leadpipe_reason_class";
/// The reason of a dead letter, in words (tokens redacted, no lead values).
pub const REASON_ATTRIBUTE: &str = "leadpipe_reason";
/// SQS caps a message attribute value at the message size; a reason is one line.
const MAX_REASON_LEN: usize = 1000;

impl SqsQueueControl {
    /// Queue control for `queue_url` (delays) and `dead_letter_url` (dead letters).
    pub fn new(
        client: aws_sdk_sqs::Client,
        queue_url: impl Into<String>,
        dead_letter_url: impl Into<String>,
    ) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
            dead_letter_url: dead_letter_url.into(),
        }
    }

    /// For a caller that only dead-letters (backfill): it never delays a message, so the
    /// dead-letter queue stands in for the queue.
    pub fn dead_letters_only(
        client: aws_sdk_sqs::Client,
        dead_letter_url: impl Into<String>,
    ) -> Self {
        let url = dead_letter_url.into();
        Self::new(client, url.clone(), url)
    }
}

fn string_attribute(value: &str) -> Result<aws_sdk_sqs::types::MessageAttributeValue, QueueError> {
    aws_sdk_sqs::types::MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| QueueError::Rejected {
            failed: 1,
            total: 1,
            reason: format!("attribute could not be built: {e}"),
        })
}

impl leadpipe_core::ports::QueueControl for SqsQueueControl {
    async fn dead_letter(
        &self,
        body: &str,
        reason: &leadpipe_core::ports::DeadLetterReason,
    ) -> Result<(), QueueError> {
        let detail: String = reason.detail.chars().take(MAX_REASON_LEN).collect();
        self.client
            .send_message()
            .queue_url(&self.dead_letter_url)
            .message_body(body)
            .message_attributes(
                REASON_CLASS_ATTRIBUTE,
                string_attribute(reason.class.as_str())?,
            )
            .message_attributes(REASON_ATTRIBUTE, string_attribute(&detail)?)
            .send()
            .await
            .map_err(|e| QueueError::Unavailable(Cause::described(describe_sdk_error(&e), e)))?;
        Ok(())
    }

    async fn delay(&self, receipt_handle: &str, delay: Duration) -> Result<(), QueueError> {
        let seconds = i32::try_from(delay.as_secs())
            .unwrap_or(i32::MAX)
            .min(43_200);
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await
            .map_err(|e| QueueError::Unavailable(Cause::described(describe_sdk_error(&e), e)))?;
        Ok(())
    }
}
