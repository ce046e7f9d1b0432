//! Destinations on AWS (docs/destinations.md): what each destination did with each lead,
//! in the state table's `delivery#<destination>#<lead id>` items, so a message SQS delivers
//! again sends nothing twice (Slack and Pipedrive have no idempotency of their own).

use crate::dynamo::{s, store_error};
use aws_sdk_dynamodb::types::AttributeValue;
use leadpipe_core::destinations::{DeliveryMarks, DestinationName, Mark};
use leadpipe_core::ports::StoreError;

/// The mark item's key prefix in the state table.
pub const DELIVERY_ITEM_PREFIX: &str = "delivery#";

/// The state table, as the destinations function reads and writes its marks.
#[derive(Debug, Clone)]
pub struct DynamoMarks {
    client: aws_sdk_dynamodb::Client,
    state_table: String,
}

impl DynamoMarks {
    /// Over `state_table`.
    pub fn new(client: aws_sdk_dynamodb::Client, state_table: impl Into<String>) -> Self {
        Self {
            client,
            state_table: state_table.into(),
        }
    }

    fn key(destination: &DestinationName, lead_id: &str) -> AttributeValue {
        s(format!("{DELIVERY_ITEM_PREFIX}{destination}#{lead_id}"))
    }
}

impl DeliveryMarks for DynamoMarks {
    async fn mark(
        &self,
        destination: &DestinationName,
        lead_id: &str,
    ) -> Result<Option<Mark>, StoreError> {
        let got = self
            .client
            .get_item()
            .table_name(&self.state_table)
            .key("pk", Self::key(destination, lead_id))
            // A mark written a moment ago by another container is seen.
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        Ok(match got.item().and_then(|i| i.get("mark")) {
            Some(AttributeValue::S(m)) if m == "delivered" => Some(Mark::Delivered),
            Some(AttributeValue::S(m)) if m == "refused" => Some(Mark::Refused),
            _ => None,
        })
    }

    async fn set_mark(
        &self,
        destination: &DestinationName,
        lead_id: &str,
        mark: Mark,
        record: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.state_table)
            .item("pk", Self::key(destination, lead_id))
            .item(
                "mark",
                s(match mark {
                    Mark::Delivered => "delivered",
                    Mark::Refused => "refused",
                }),
            )
            .item(
                "updated_at",
                s(leadpipe_core::record::contract_time(
                    time::OffsetDateTime::now_utc(),
                )),
            );
        if let Some(record) = record {
            put = put.item("record_id", s(record));
        }
        put.send().await.map(|_| ()).map_err(|e| store_error(&e))
    }
}
