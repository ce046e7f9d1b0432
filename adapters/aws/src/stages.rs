//! Stages on AWS (docs/stages.md): the leads they need from the leads table, and the
//! ledger of stages sent in the state table (`stage#<event id>` items), both read in
//! batches of 100 keys.

use crate::dynamo::{readable_from_item, s, store_error};
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, PutRequest, WriteRequest};
use leadpipe_core::ports::StoreError;
use leadpipe_core::stages::{StageChange, StageLead, StageLeads, StageLedger};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The ledger item's key prefix in the state table.
pub const STAGE_ITEM_PREFIX: &str = "stage#";
/// Keys per `BatchGetItem` (DynamoDB's limit).
const GET_BATCH: usize = 100;
/// Items per `BatchWriteItem` (DynamoDB's limit).
const WRITE_BATCH: usize = 25;
/// Rounds for keys DynamoDB left unprocessed (throttling) before the call counts as failed.
const ROUNDS: usize = 5;

/// The leads table and the state table, as stages read and write them.
#[derive(Debug, Clone)]
pub struct DynamoStages {
    client: aws_sdk_dynamodb::Client,
    leads_table: String,
    state_table: String,
}

impl DynamoStages {
    /// Over `leads_table` and `state_table`.
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        leads_table: impl Into<String>,
        state_table: impl Into<String>,
    ) -> Self {
        Self {
            client,
            leads_table: leads_table.into(),
            state_table: state_table.into(),
        }
    }

    /// Every item of `table` under `keys` (attribute `key_name`), unprocessed keys asked
    /// again.
    async fn batch_get(
        &self,
        table: &str,
        key_name: &str,
        keys: Vec<String>,
        projection: &str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut keys = keys;
        // BatchGetItem refuses a key given twice.
        keys.sort();
        keys.dedup();
        let mut items = Vec::new();
        for chunk in keys.chunks(GET_BATCH) {
            // Strongly consistent: a lead written a moment ago (its initial stage) is found,
            // never refused `unknown_lead` by a stale read.
            let mut wanted = KeysAndAttributes::builder()
                .projection_expression(projection)
                .consistent_read(true);
            for key in chunk {
                wanted = wanted.keys(HashMap::from([(key_name.to_owned(), s(key))]));
            }
            let mut request = HashMap::from([(
                table.to_owned(),
                wanted.build().map_err(|e| {
                    StoreError::Rejected(leadpipe_core::ports::Cause::described(
                        "BatchGetItem could not be built",
                        e,
                    ))
                })?,
            )]);
            for round in 0.. {
                let out = self
                    .client
                    .batch_get_item()
                    .set_request_items(Some(request))
                    .send()
                    .await
                    .map_err(|e| store_error(&e))?;
                if let Some(found) = out.responses().and_then(|r| r.get(table)) {
                    items.extend(found.iter().cloned());
                }
                match out.unprocessed_keys().filter(|u| !u.is_empty()) {
                    Some(left) if round + 1 < ROUNDS => {
                        tokio::time::sleep(std::time::Duration::from_millis(50 << round)).await;
                        request = left.clone();
                    }
                    Some(_) => {
                        return Err(StoreError::Unavailable(
                            "DynamoDB left keys unprocessed (throttled)".into(),
                        ));
                    }
                    None => break,
                }
            }
        }
        Ok(items)
    }
}

impl StageLeads for DynamoStages {
    async fn stage_leads(
        &self,
        lead_ids: &[String],
    ) -> Result<BTreeMap<String, StageLead>, StoreError> {
        let items = self
            .batch_get(
                &self.leads_table,
                "lead_id",
                lead_ids.to_vec(),
                "lead_id, created_time, contact",
            )
            .await?;
        let mut leads = BTreeMap::new();
        for item in items {
            let (Some(AttributeValue::S(id)), Some(AttributeValue::S(created))) =
                (item.get("lead_id"), item.get("created_time"))
            else {
                continue;
            };
            let Ok(created) = time::OffsetDateTime::parse(
                created,
                &time::format_description::well_known::Rfc3339,
            ) else {
                continue;
            };
            let contact = readable_from_item(&item).contact;
            leads.insert(
                id.clone(),
                StageLead {
                    created_time: created.unix_timestamp(),
                    email: contact.email,
                    phone: contact.phone,
                },
            );
        }
        Ok(leads)
    }
}

impl StageLedger for DynamoStages {
    async fn already_sent(&self, event_ids: &[String]) -> Result<HashSet<String>, StoreError> {
        let keys = event_ids
            .iter()
            .map(|id| format!("{STAGE_ITEM_PREFIX}{id}"))
            .collect();
        let items = self.batch_get(&self.state_table, "pk", keys, "pk").await?;
        Ok(items
            .iter()
            .filter_map(|item| match item.get("pk") {
                Some(AttributeValue::S(pk)) => {
                    pk.strip_prefix(STAGE_ITEM_PREFIX).map(str::to_owned)
                }
                _ => None,
            })
            .collect())
    }

    async fn record_sent(&self, sent: &[StageChange], at: i64) -> Result<(), StoreError> {
        // The lead id and when, never the stage's name or value.
        let mut writes: Vec<WriteRequest> = Vec::with_capacity(sent.len());
        for stage in sent {
            let put = PutRequest::builder()
                .item("pk", s(format!("{STAGE_ITEM_PREFIX}{}", stage.event_id())))
                .item("lead_id", s(&stage.lead_id))
                .item("sent_at", AttributeValue::N(at.to_string()))
                .build()
                .map_err(|e| {
                    StoreError::Rejected(leadpipe_core::ports::Cause::described(
                        "BatchWriteItem could not be built",
                        e,
                    ))
                })?;
            writes.push(WriteRequest::builder().put_request(put).build());
        }
        for chunk in writes.chunks(WRITE_BATCH) {
            let mut request = HashMap::from([(self.state_table.clone(), chunk.to_vec())]);
            for round in 0.. {
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(request))
                    .send()
                    .await
                    .map_err(|e| store_error(&e))?;
                match out.unprocessed_items().filter(|u| !u.is_empty()) {
                    Some(left) if round + 1 < ROUNDS => {
                        tokio::time::sleep(std::time::Duration::from_millis(50 << round)).await;
                        request = left.clone();
                    }
                    Some(_) => {
                        return Err(StoreError::Unavailable(
                            "DynamoDB left writes unprocessed (throttled)".into(),
                        ));
                    }
                    None => break,
                }
            }
        }
        Ok(())
    }
}
