//! What the operator's commands do on the deployed stack (docs/operate.md): find a person's
//! leads through the lookup indexes, erase leads and the dead letters naming them, and move
//! dead letters back to the queue without ever deleting one before its copy is sent.

use crate::describe_sdk_error;
use aws_sdk_dynamodb::types::AttributeValue;
use leadpipe_core::ports::{Cause, QueueError, StoreError};
use std::collections::BTreeSet;

/// A lookup index of the leads table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupIndex {
    /// `by_email_key` on `email_key`.
    Email,
    /// `by_phone_key` on `phone_key`.
    Phone,
}

impl LookupIndex {
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Self::Email => ("by_email_key", "email_key"),
            Self::Phone => ("by_phone_key", "phone_key"),
        }
    }
}

fn unavailable<E, R>(err: aws_sdk_dynamodb::error::SdkError<E, R>) -> StoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    StoreError::Unavailable(Cause::described(describe_sdk_error(&err), err))
}

/// The lead ids with this lookup key: a `Query` on the index, never a scan.
pub async fn leads_by_lookup(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    index: LookupIndex,
    key: &str,
) -> Result<Vec<String>, StoreError> {
    let (index_name, attribute) = index.names();
    let mut ids = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .query()
            .table_name(table)
            .index_name(index_name)
            .key_condition_expression("#k = :k")
            .expression_attribute_names("#k", attribute)
            .expression_attribute_values(":k", AttributeValue::S(key.to_owned()))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(unavailable)?;
        for item in page.items() {
            if let Some(AttributeValue::S(id)) = item.get("lead_id") {
                ids.push(id.clone());
            }
        }
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            break;
        }
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// The attribute that marks an erasure record in the leads table (docs/operate.md,
/// "Erasure"): the item keeps the lead's id and when it was erased, nothing else.
pub const ERASED_AT: &str = "erased_at";

/// Whether the lead is in the table (an erasure record is no lead).
pub async fn lead_exists(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    lead_id: &str,
) -> Result<bool, StoreError> {
    let out = client
        .get_item()
        .table_name(table)
        .key("lead_id", AttributeValue::S(lead_id.to_owned()))
        .projection_expression("lead_id, erased_at")
        .consistent_read(true)
        .send()
        .await
        .map_err(unavailable)?;
    Ok(out.item.is_some_and(|item| !item.contains_key(ERASED_AT)))
}

/// Erases the lead: its item is replaced by an erasure record (`lead_id`, `erased_at`), so
/// the ingest and backfill writes, conditional on the id being absent, never store it again,
/// whichever of them runs before or after. True when a lead was there.
pub async fn erase_lead(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    lead_id: &str,
) -> Result<bool, StoreError> {
    let out = client
        .put_item()
        .table_name(table)
        .item("lead_id", AttributeValue::S(lead_id.to_owned()))
        .item(
            ERASED_AT,
            AttributeValue::S(crate::dynamo::contract_time(time::OffsetDateTime::now_utc())),
        )
        .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
        .send()
        .await
        .map_err(unavailable)?;
    Ok(out
        .attributes
        .is_some_and(|old| !old.contains_key(ERASED_AT)))
}

/// The `leadgen_id` a queue-shaped body names, if it is one.
pub fn body_lead_id(body: &str) -> Option<String> {
    // A lead queue message (`leadgen_id`), a lead event as a rule delivers it
    // (`detail.lead_id`), or a destination's letter (`event.lead_id`).
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    [
        &value["leadgen_id"],
        &value["detail"]["lead_id"],
        &value["event"]["lead_id"],
    ]
    .into_iter()
    .find_map(|v| v.as_str().map(str::to_owned))
}

/// A message taken off a queue for a while.
#[derive(Debug, Clone)]
pub struct TakenMessage {
    /// Its body.
    pub body: String,
    /// To delete it or give it back.
    pub receipt_handle: String,
    /// Its `leadpipe_reason_class` attribute.
    pub reason_class: Option<String>,
    /// Its `leadpipe_reason` attribute.
    pub reason: Option<String>,
}

/// Every message on the queue, each hidden for `hide_seconds` (give back with
/// [`give_back`]). A queue in use keeps changing; this is what one pass saw.
pub async fn take_all(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    hide_seconds: i32,
) -> Result<Vec<TakenMessage>, QueueError> {
    let mut taken = Vec::new();
    let mut empty = 0;
    // SQS answers from a sample of its servers: an empty answer is not proof of an empty
    // queue, so it takes three in a row.
    while empty < 3 {
        let got = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(hide_seconds)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| QueueError::Unavailable(Cause::described(describe_sdk_error(&e), e)))?;
        if got.messages().is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        for m in got.messages() {
            let attribute = |name: &str| {
                m.message_attributes()
                    .and_then(|a| a.get(name))
                    .and_then(|v| v.string_value())
                    .map(str::to_owned)
            };
            taken.push(TakenMessage {
                body: m.body().unwrap_or_default().to_owned(),
                receipt_handle: m.receipt_handle().unwrap_or_default().to_owned(),
                reason_class: attribute("leadpipe_reason_class"),
                reason: attribute("leadpipe_reason"),
            });
        }
    }
    Ok(taken)
}

/// Makes taken messages visible again at once.
pub async fn give_back(sqs: &aws_sdk_sqs::Client, queue_url: &str, messages: &[TakenMessage]) {
    for m in messages {
        if let Err(e) = sqs
            .change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(&m.receipt_handle)
            .visibility_timeout(0)
            .send()
            .await
        {
            // It becomes visible when its hiding ends anyway.
            tracing::warn!(error = %describe_sdk_error(&e), "a message could not be given back at once");
        }
    }
}

/// Deletes a taken message.
pub async fn delete_taken(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    message: &TakenMessage,
) -> Result<(), QueueError> {
    sqs.delete_message()
        .queue_url(queue_url)
        .receipt_handle(&message.receipt_handle)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| QueueError::Unavailable(Cause::described(describe_sdk_error(&e), e)))
}

/// Deletes the DLQ's messages naming one of `lead_ids` (all of them when `delete` is false:
/// only counted) and gives the others back. Returns how many named one.
pub async fn erase_dead_letters_naming(
    sqs: &aws_sdk_sqs::Client,
    dlq_url: &str,
    lead_ids: &BTreeSet<String>,
    delete: bool,
) -> Result<usize, QueueError> {
    let taken = take_all(sqs, dlq_url, 120).await?;
    let (naming, others): (Vec<TakenMessage>, Vec<TakenMessage>) = taken
        .into_iter()
        .partition(|m| body_lead_id(&m.body).is_some_and(|id| lead_ids.contains(&id)));
    give_back(sqs, dlq_url, &others).await;
    if delete {
        for m in &naming {
            delete_taken(sqs, dlq_url, m).await?;
        }
    } else {
        give_back(sqs, dlq_url, &naming).await;
    }
    Ok(naming.len())
}

/// The stack's dead letters for core's `redrive`: the lead DLQ back to the lead queue, the
/// stages' DLQ back to the stage queue (each as `(dlq url, queue url)`, absent when the
/// stack has none); the stack keeps no forwarding pile (EventBridge retries for it).
#[derive(Debug, Clone)]
pub struct StackDeadLetters {
    /// The SQS client.
    pub sqs: aws_sdk_sqs::Client,
    /// `(DeadLetterQueueUrl, QueueUrl)`.
    pub leads: Option<(String, String)>,
    /// `(StagesDeadLetterQueueUrl, StagesQueueUrl)`.
    pub stages: Option<(String, String)>,
    /// `(DestinationsDeadLetterQueueUrl, DestinationsQueueUrl)`: a refused lead's letter
    /// goes back to the destination that refused it alone.
    pub destinations: Option<(String, String)>,
}

impl leadpipe_core::redrive::DeadLetterPiles for StackDeadLetters {
    async fn move_back(
        &self,
        pile: leadpipe_core::redrive::Pile,
        pick: &leadpipe_core::redrive::Pick<'_>,
        dry_run: bool,
    ) -> Result<leadpipe_core::redrive::Moved, Cause> {
        use leadpipe_core::redrive::Pile;
        let urls = match pile {
            Pile::Leads => &self.leads,
            Pile::Stages => &self.stages,
            Pile::Destinations => &self.destinations,
            // Forwarding is serve's outbox; on the stack EventBridge retries its targets.
            Pile::Forwards => &None,
        };
        match urls {
            Some((dlq, queue)) => redrive_picked(&self.sqs, dlq, queue, pick, dry_run)
                .await
                .map_err(Cause::from_error),
            None => Ok(Default::default()),
        }
    }
}

/// Moves the DLQ's messages `pick` picks back to the queue, each deleted only after its
/// copy was sent; `dry_run` only counts. A message without our class attribute is one SQS
/// moved after `maxReceiveCount` (`exhausted`).
async fn redrive_picked(
    sqs: &aws_sdk_sqs::Client,
    dlq_url: &str,
    queue_url: &str,
    pick: &leadpipe_core::redrive::Pick<'_>,
    dry_run: bool,
) -> Result<leadpipe_core::redrive::Moved, QueueError> {
    use leadpipe_core::dead_letter::DeadLetterClass;
    let taken = take_all(sqs, dlq_url, 300).await?;
    let mut result = leadpipe_core::redrive::Moved::default();
    let mut keep = Vec::new();
    for m in taken {
        let class = match m.reason_class.as_deref() {
            None => Some(DeadLetterClass::Exhausted),
            Some(name) => DeadLetterClass::parse(name),
        };
        let wanted = pick.picks(class, &m.body);
        if !wanted || dry_run {
            if wanted {
                result.moved += 1;
            } else {
                result.left += 1;
            }
            keep.push(m);
            continue;
        }
        match sqs
            .send_message()
            .queue_url(queue_url)
            .message_body(&m.body)
            .send()
            .await
        {
            Ok(_) => {
                // Sent: now, and only now, it may leave the DLQ. If this delete fails the
                // message is in both places; ingest's first write wins, so nothing doubles.
                delete_taken(sqs, dlq_url, &m).await?;
                result.moved += 1;
            }
            Err(e) => {
                tracing::warn!(error = %describe_sdk_error(&e), "a dead letter could not be sent back; it stays in the DLQ");
                result.failed += 1;
                result.left += 1;
                keep.push(m);
            }
        }
    }
    give_back(sqs, dlq_url, &keep).await;
    Ok(result)
}

/// What [`add_lookup_keys`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Keyed {
    /// Leads read.
    pub scanned: usize,
    /// Leads that had an email or phone without its key (and got it, unless a dry run).
    pub keyed: usize,
    /// The last lead id read: `--after` this resumes an interrupted run.
    pub last: Option<String>,
}

/// Adds `policy`'s lookup keys to the leads stored without them (a scan of the table, page
/// by page from `after`): each update sets only a missing key, on a lead that is not an
/// erasure record, so runs can overlap, stop and go on. `dry_run` counts only.
pub async fn add_lookup_keys(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    policy: &leadpipe_core::privacy::LeadPolicy,
    after: Option<&str>,
    dry_run: bool,
) -> Result<Keyed, (StoreError, Keyed)> {
    let mut done = Keyed::default();
    let mut start = after.map(|id| {
        std::collections::HashMap::from([("lead_id".to_owned(), AttributeValue::S(id.to_owned()))])
    });
    let first = |item: &std::collections::HashMap<String, AttributeValue>, name: &str| match item
        .get("fields")
    {
        Some(AttributeValue::M(fields)) => match fields.get(name) {
            Some(AttributeValue::L(values)) => match values.first() {
                Some(AttributeValue::S(v)) => Some(v.clone()),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    loop {
        let page = match client
            .scan()
            .table_name(table)
            .projection_expression("lead_id, #f, contact, email_key, phone_key, erased_at")
            .expression_attribute_names("#f", "fields")
            .set_exclusive_start_key(start.take())
            .send()
            .await
        {
            Ok(page) => page,
            Err(e) => return Err((unavailable(e), done)),
        };
        for item in page.items() {
            done.scanned += 1;
            let Some(AttributeValue::S(id)) = item.get("lead_id") else {
                continue;
            };
            if item.contains_key(ERASED_AT) {
                done.last = Some(id.clone());
                continue;
            }
            let email = first(item, leadpipe_core::privacy::EMAIL_FIELD)
                .filter(|_| !item.contains_key("email_key"));
            // The contact's E.164 phone when the lead has one (the key ingest writes now).
            let e164 = match item.get("contact") {
                Some(AttributeValue::M(contact)) => match contact.get("phone") {
                    Some(AttributeValue::S(phone)) => Some(phone.clone()),
                    _ => None,
                },
                _ => None,
            };
            let phone = e164
                .or_else(|| first(item, leadpipe_core::privacy::PHONE_FIELD))
                .filter(|_| !item.contains_key("phone_key"));
            let keys = policy.keys_of(email.as_deref(), phone.as_deref());
            if keys.email_key.is_none() && keys.phone_key.is_none() {
                done.last = Some(id.clone());
                continue;
            }
            done.keyed += 1;
            if dry_run {
                done.last = Some(id.clone());
                continue;
            }
            let mut sets = Vec::new();
            let mut update = client
                .update_item()
                .table_name(table)
                .key("lead_id", AttributeValue::S(id.clone()))
                .condition_expression(
                    "attribute_exists(lead_id) AND attribute_not_exists(erased_at)",
                );
            if let Some(k) = keys.email_key {
                sets.push("email_key = if_not_exists(email_key, :e)");
                update = update.expression_attribute_values(":e", AttributeValue::S(k));
            }
            if let Some(k) = keys.phone_key {
                sets.push("phone_key = if_not_exists(phone_key, :p)");
                update = update.expression_attribute_values(":p", AttributeValue::S(k));
            }
            match update
                .update_expression(format!("SET {}", sets.join(", ")))
                .send()
                .await
            {
                Ok(_) => done.last = Some(id.clone()),
                // Erased (or deleted) meanwhile: nothing to key.
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                {
                    done.keyed -= 1;
                    done.last = Some(id.clone());
                }
                // `last` is still the lead before this one: `--after` it retries this one.
                Err(e) => return Err((unavailable(e), done)),
            }
        }
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            return Ok(done);
        }
    }
}

/// The stack's side of an erasure (core's [`leadpipe_core::erasure::Eraser`]): the leads
/// table through its lookup indexes, each lead replaced by its erasure record, and the DLQ's
/// messages naming the leads.
#[derive(Debug, Clone)]
pub struct StackEraser {
    /// DynamoDB.
    pub ddb: aws_sdk_dynamodb::Client,
    /// SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// The leads table.
    pub table: String,
    /// The DLQ, when known.
    pub dlq_url: Option<String>,
    /// The destinations' DLQ (refused leads' events), when known.
    pub destinations_dlq_url: Option<String>,
    /// The state table (the forms catalog's countries), when known.
    pub state_table: Option<String>,
}

impl leadpipe_core::erasure::Eraser for StackEraser {
    async fn form_locales(&self) -> Result<Vec<String>, StoreError> {
        let Some(table) = &self.state_table else {
            return Ok(Vec::new());
        };
        Ok(crate::dynamo::catalog(&self.ddb, table)
            .await?
            .into_iter()
            .filter_map(|f| f.locale)
            .collect())
    }

    async fn find(
        &self,
        by: leadpipe_core::erasure::FoundBy,
        keys: &[String],
    ) -> Result<Vec<String>, StoreError> {
        use leadpipe_core::erasure::FoundBy;
        let index = match by {
            FoundBy::EmailKey => LookupIndex::Email,
            FoundBy::PhoneKey => LookupIndex::Phone,
            FoundBy::LeadId => return Ok(keys.to_vec()),
        };
        let mut ids = Vec::new();
        for key in keys {
            ids.extend(leads_by_lookup(&self.ddb, &self.table, index, key).await?);
        }
        Ok(ids)
    }

    async fn erase(
        &self,
        lead_ids: &[String],
        dry_run: bool,
    ) -> Result<leadpipe_core::erasure::Erased, StoreError> {
        let mut erased = leadpipe_core::erasure::Erased::default();
        for id in lead_ids {
            let present = if dry_run {
                lead_exists(&self.ddb, &self.table, id).await?
            } else {
                erase_lead(&self.ddb, &self.table, id).await?
            };
            erased.leads += usize::from(present);
        }
        let set: BTreeSet<String> = lead_ids.iter().cloned().collect();
        for dlq in [&self.dlq_url, &self.destinations_dlq_url]
            .into_iter()
            .flatten()
        {
            erased.dead_letters += erase_dead_letters_naming(&self.sqs, dlq, &set, !dry_run)
                .await
                .map_err(|e| StoreError::Unavailable(Cause::from_error(e)))?;
        }
        Ok(erased)
    }

    async fn unsearchable(
        &self,
        _by: leadpipe_core::erasure::FoundBy,
    ) -> Result<Option<u64>, StoreError> {
        // Counting would take a scan: `lookup-keys --dry-run` does it on request.
        Ok(None)
    }
}
