//! The DynamoDB lead store against moto's server: the item-size rule and optional form_id.
//! Run by scripts/test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_sdk_dynamodb::types::AttributeValue;
use leadpipe_aws::dynamo::{
    DynamoLeadStore, MAX_ITEM_BYTES, create_leads_table, item_size, lead_item,
};
use leadpipe_core::ports::{LeadSourceKind, LeadStore, PutOutcome, StoredLead};
use leadpipe_graph::Lead;
use leadpipe_lambda_harness::{moto_endpoint, unique_name};
use std::collections::HashMap;
use time::macros::datetime;

async fn table() -> (aws_sdk_dynamodb::Client, String) {
    moto_endpoint().expect("moto");
    let config = leadpipe_aws::sdk_config().await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let name = unique_name("leads-size");
    create_leads_table(&client, &name).await.unwrap();
    (client, name)
}

/// A lead whose one answer is `answer_bytes` long (so `raw` holds it a second time).
fn stored(id: &str, answer_bytes: usize, form: Option<&str>) -> StoredLead {
    let form_json = form
        .map(|f| format!(r#","form_id":"{f}""#))
        .unwrap_or_default();
    let raw = format!(
        r#"{{"id":"{id}","created_time":"2026-11-30T04:00:00+0000"{form_json},"ad_id":"600","field_data":[{{"name":"notes","values":["{}"]}}]}}"#,
        "x".repeat(answer_bytes)
    );
    StoredLead {
        lead: Lead::from_json(&raw).unwrap(),
        page_id: "77".into(),
        form_id: form.map(str::to_owned),
        source: LeadSourceKind::Webhook,
        ingested_at: datetime!(2026-11-30 05:00:00 UTC),
        readable: Default::default(),
    }
}

async fn get(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    id: &str,
) -> Option<HashMap<String, AttributeValue>> {
    client
        .get_item()
        .table_name(table)
        .key("lead_id", AttributeValue::S(id.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item()
        .cloned()
}

#[test]
fn the_size_estimate_counts_names_values_and_nesting() {
    let small = stored("1", 10, Some("9"));
    let item = lead_item(&small);
    let size = item_size(&item);
    let raw_len = small.lead.raw.len();
    assert!(size > raw_len + "raw".len(), "{size}");
    assert!(size < raw_len * 3, "{size}");
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn an_item_over_400_kb_is_stored_without_raw_and_one_that_still_does_not_fit_is_too_large() {
    let (client, name) = table().await;
    let store = DynamoLeadStore::from_client(client.clone(), &name);
    // ~250 KB of answer: with raw it is ~500 KB, without it fits.
    let big = stored("101", 250 * 1024, Some("9"));
    assert!(item_size(&lead_item(&big)) > MAX_ITEM_BYTES);
    // ~450 KB of answer: too large even without raw.
    let huge = stored("102", 450 * 1024, Some("9"));
    let small = stored("103", 10, Some("9"));
    let outcomes = store.put_leads(&[big, huge, small]).await.unwrap();
    assert_eq!(outcomes[0], PutOutcome::Inserted);
    assert!(
        matches!(outcomes[1], PutOutcome::TooLarge { bytes } if bytes > MAX_ITEM_BYTES),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2], PutOutcome::Inserted);

    let item = get(&client, &name, "101").await.unwrap();
    assert!(!item.contains_key("raw"));
    assert_eq!(item["raw_omitted"], AttributeValue::Bool(true));
    assert_eq!(
        item["fields"].as_m().unwrap()["notes"].as_l().unwrap()[0]
            .as_s()
            .unwrap()
            .len(),
        250 * 1024
    );
    assert!(get(&client, &name, "102").await.is_none());
    let item = get(&client, &name, "103").await.unwrap();
    assert!(item.contains_key("raw") && !item.contains_key("raw_omitted"));
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn an_ad_lead_without_a_form_is_stored_without_form_id() {
    let (client, name) = table().await;
    let store = DynamoLeadStore::from_client(client.clone(), &name);
    let outcomes = store
        .put_leads(&[stored("201", 10, None), stored("202", 10, Some(""))])
        .await
        .unwrap();
    assert_eq!(outcomes, [PutOutcome::Inserted, PutOutcome::Inserted]);
    for id in ["201", "202"] {
        let item = get(&client, &name, id).await.unwrap();
        assert!(!item.contains_key("form_id"), "never \"\": {item:?}");
    }
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn the_dynamodb_stores_keep_the_contract() {
    let (client, name) = table().await;
    let store = DynamoLeadStore::from_client(client.clone(), &name);
    leadpipe_core::contract::first_write_wins(&store, "d", async |id: &str| {
        let item = get(&client, &name, id).await?;
        let at = time::OffsetDateTime::parse(
            item["ingested_at"].as_s().ok()?,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?;
        Some((item["source"].as_s().ok()?.clone(), at.unix_timestamp()))
    })
    .await
    .unwrap();
    let state = unique_name("state-contract");
    leadpipe_aws::dynamo::create_state_table(&client, &state)
        .await
        .unwrap();
    let checkpoints = leadpipe_aws::DynamoCheckpointStore::from_client(client.clone(), &state);
    leadpipe_core::contract::checkpoint_never_moves_back(&checkpoints, "form#1")
        .await
        .unwrap();
}
