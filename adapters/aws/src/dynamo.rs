//! The DynamoDB lead store, exactly as the leads-table contract (docs/architecture.md).
//!
//! Writes are conditional puts (`attribute_not_exists(lead_id)`): the first ingest's item,
//! with its `source` and `ingested_at`, is the one that stays. BatchWriteItem cannot carry
//! a condition, so the puts of a batch run concurrently instead.

use crate::describe_sdk_error;
use aws_sdk_dynamodb::types::AttributeValue;
use leadpipe_core::lead_row::LeadRow;
use leadpipe_core::ports::{Cause, LeadStore, PutOutcome, StoreError, StoredLead};
use leadpipe_core::privacy::{LeadPolicy, PrivacyAttributes};
use std::collections::{BTreeMap, HashMap};
use time::OffsetDateTime;

/// Puts in flight at once per `put_leads` call.
const CONCURRENT_PUTS: usize = 16;

/// The leads table.
#[derive(Debug, Clone)]
pub struct DynamoLeadStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    policy: LeadPolicy,
}

impl DynamoLeadStore {
    /// A store on `table` with a client built from `config`.
    pub fn new(config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self::from_client(aws_sdk_dynamodb::Client::new(config), table)
    }

    /// A store on `table` with this client.
    pub fn from_client(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            policy: LeadPolicy::default(),
        }
    }

    /// The same store, writing `policy`'s lookup keys and expiry with each lead.
    pub fn with_policy(mut self, policy: LeadPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// When the lead was stored (`ingested_at`), or `None` when it is not in the table.
    /// A strongly consistent read: a command waiting for a lead sees it as soon as it is in.
    pub async fn ingested_at(&self, lead_id: &str) -> Result<Option<String>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("lead_id", AttributeValue::S(lead_id.to_owned()))
            .projection_expression("ingested_at")
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(Cause::described(describe_sdk_error(&e), e)))?;
        Ok(output.item.map(|item| match item.get("ingested_at") {
            Some(AttributeValue::S(at)) => at.clone(),
            _ => String::new(),
        }))
    }

    async fn put_one(&self, lead: &StoredLead) -> Result<PutOutcome, StoreError> {
        let item = match fitting_item(lead, &self.policy.attributes(lead)) {
            Ok(item) => item,
            Err(bytes) => return Ok(PutOutcome::TooLarge { bytes }),
        };
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(lead_id)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(PutOutcome::Inserted),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(PutOutcome::AlreadyPresent)
            }
            Err(err) => {
                let described = describe_sdk_error(&err);
                Err(match err.as_service_error() {
                    Some(_) => StoreError::Rejected(Cause::described(described, err)),
                    None => StoreError::Unavailable(Cause::described(described, err)),
                })
            }
        }
    }
}

impl LeadStore for DynamoLeadStore {
    async fn put_leads(&self, leads: &[StoredLead]) -> Result<Vec<PutOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(leads.len());
        for chunk in leads.chunks(CONCURRENT_PUTS) {
            let puts: Vec<_> = chunk.iter().map(|lead| self.put_one(lead)).collect();
            for result in futures::future::join_all(puts).await {
                outcomes.push(result?);
            }
        }
        Ok(outcomes)
    }
}

pub use leadpipe_core::record::contract_time;

use leadpipe_core::readable::{Answer, Contact, Readable};

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// The item for one lead: core's projection ([`StoredLead::record`]) encoded as DynamoDB
/// attributes (docs/architecture.md, "Leads table").
pub fn lead_item(stored: &StoredLead) -> HashMap<String, AttributeValue> {
    let record = stored.record();
    let mut item = HashMap::new();
    item.insert("lead_id".to_owned(), s(record.lead_id));
    item.insert("created_time".to_owned(), s(record.created_time));
    item.insert("page_id".to_owned(), s(record.page_id));
    // Left out when absent, never "": the by_form index refuses empty keys.
    if let Some(form_id) = record.form_id {
        item.insert("form_id".to_owned(), s(form_id));
    }
    for (name, value) in record.optional {
        item.insert(name.to_owned(), s(value));
    }
    item.insert(
        "is_organic".to_owned(),
        AttributeValue::Bool(record.is_organic),
    );
    item.insert(
        "fields".to_owned(),
        AttributeValue::M(
            record
                .fields
                .into_iter()
                .map(|(name, values)| {
                    (
                        name.to_owned(),
                        AttributeValue::L(values.into_iter().map(s).collect()),
                    )
                })
                .collect(),
        ),
    );
    item.insert(
        "custom_disclaimer_responses".to_owned(),
        AttributeValue::L(
            record
                .disclaimers
                .into_iter()
                .map(|(key, checked)| {
                    AttributeValue::M(HashMap::from([
                        ("checkbox_key".to_owned(), s(key)),
                        ("is_checked".to_owned(), AttributeValue::Bool(checked)),
                    ]))
                })
                .collect(),
        ),
    );
    item.insert("raw".to_owned(), s(record.raw));
    item.insert("source".to_owned(), s(record.source));
    item.insert("ingested_at".to_owned(), s(record.ingested_at));
    let readable = record.readable;
    if let Some(name) = &readable.form_name {
        item.insert("form_name".to_owned(), s(name));
    }
    if !readable.answers.is_empty() {
        let answers = readable
            .answers
            .iter()
            .map(|a| {
                AttributeValue::M(HashMap::from([
                    ("key".to_owned(), s(&a.key)),
                    ("label".to_owned(), s(&a.label)),
                    (
                        "values".to_owned(),
                        AttributeValue::L(a.values.iter().map(s).collect()),
                    ),
                ]))
            })
            .collect();
        item.insert("answers".to_owned(), AttributeValue::L(answers));
    }
    if !readable.contact.is_empty() {
        let parts = readable
            .contact
            .parts()
            .map(|(name, value)| (name.to_owned(), s(value)))
            .collect();
        item.insert("contact".to_owned(), AttributeValue::M(parts));
    }
    item
}

/// DynamoDB's largest item: 400 KB, names and values together.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// The item for `stored` (with its lookup keys and expiry) as it can be written: whole; or, when that would pass
/// [`MAX_ITEM_BYTES`], without `raw` and with `raw_omitted: true` (every other attribute,
/// the answers included, is still there); or, still too large, also without the labelled
/// `answers` (`answers_omitted: true`; `fields` keep every value). `Err` with the size without `raw` when even that
/// does not fit: a permanent `too_large` failure of this lead alone.
pub fn fitting_item(
    stored: &StoredLead,
    privacy: &PrivacyAttributes,
) -> Result<HashMap<String, AttributeValue>, usize> {
    let mut item = lead_item(stored);
    // Sparse: only leads with an email (phone) have the key, so only they are in its index.
    if let Some(key) = &privacy.email_key {
        item.insert("email_key".to_owned(), s(key.as_str()));
    }
    if let Some(key) = &privacy.phone_key {
        item.insert("phone_key".to_owned(), s(key.as_str()));
    }
    if let Some(at) = privacy.expires_at {
        item.insert("expires_at".to_owned(), AttributeValue::N(at.to_string()));
    }
    if item_size(&item) <= MAX_ITEM_BYTES {
        return Ok(item);
    }
    item.remove("raw");
    item.insert("raw_omitted".to_owned(), AttributeValue::Bool(true));
    if item_size(&item) <= MAX_ITEM_BYTES {
        return Ok(item);
    }
    // `answers` repeat `fields` with labels: the lead keeps its values without them.
    if item.remove("answers").is_some() {
        item.insert("answers_omitted".to_owned(), AttributeValue::Bool(true));
    }
    match item_size(&item) {
        size if size <= MAX_ITEM_BYTES => Ok(item),
        size => Err(size),
    }
}

/// An item's size as DynamoDB counts it (attribute names plus values; lists and maps add
/// 3 bytes and 1 per element), erring high for numbers (21 bytes each, their most).
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(_) => 21,
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Ss(v) => v.iter().map(String::len).sum(),
        AttributeValue::Ns(v) => 21 * v.len(),
        AttributeValue::Bs(v) => v.iter().map(|b| b.as_ref().len()).sum(),
        AttributeValue::L(v) => 3 + v.iter().map(|e| 1 + value_size(e)).sum::<usize>(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, e)| k.len() + 1 + value_size(e))
                .sum::<usize>()
        }
        // A kind this SDK version does not know: count it as the largest scalar.
        _ => 21,
    }
}

/// Creates a leads table with the contract's keys (docs/architecture.md), the `by_form`,
/// `by_email_key` and `by_phone_key` GSIs, TTL on `expires_at` and a NEW_IMAGE stream
/// (on-demand billing). For
/// tests and local runs against moto; in AWS the SAM template owns the table.
pub async fn create_leads_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<(), StoreError> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
        Projection, ProjectionType, ScalarAttributeType, StreamSpecification, StreamViewType,
    };
    let build = |e: aws_sdk_dynamodb::error::BuildError| StoreError::Rejected(Cause::from_error(e));
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(build)
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(build)
    };
    // Sparse and KEYS_ONLY: only leads with an email (phone) are in them, and `forget` needs
    // nothing but the lead ids.
    let lookup_index = |name: &str, attribute: &str| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(attribute, KeyType::Hash)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::KeysOnly)
                    .build(),
            )
            .build()
            .map_err(build)
    };
    let by_email_key = lookup_index("by_email_key", "email_key")?;
    let by_phone_key = lookup_index("by_phone_key", "phone_key")?;
    let by_form = GlobalSecondaryIndex::builder()
        .index_name("by_form")
        .key_schema(key("form_id", KeyType::Hash)?)
        .key_schema(key("created_time", KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .map_err(build)?;
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("lead_id")?)
        .attribute_definitions(attribute("form_id")?)
        .attribute_definitions(attribute("created_time")?)
        .attribute_definitions(attribute("email_key")?)
        .attribute_definitions(attribute("phone_key")?)
        .key_schema(key("lead_id", KeyType::Hash)?)
        .global_secondary_indexes(by_form)
        .global_secondary_indexes(by_email_key)
        .global_secondary_indexes(by_phone_key)
        // As the template: deliver reads first writes from the stream.
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewImage)
                .build()
                .map_err(build)?,
        )
        .send()
        .await
        .map_err(|e| StoreError::Rejected(Cause::described(describe_sdk_error(&e), e)))?;
    // As the template: retention deletes a lead once its `expires_at` has passed.
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                .attribute_name("expires_at")
                .enabled(true)
                .build()
                .map_err(build)?,
        )
        .send()
        .await
        .map_err(|e| StoreError::Rejected(Cause::described(describe_sdk_error(&e), e)))?;
    Ok(())
}

/// The state table: `pk` (S) `form#<id>` / `ad#<id>` holds `checkpoint` (N, unix seconds)
/// and the facts of the run that last moved it.
#[derive(Debug, Clone)]
pub struct DynamoCheckpointStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoCheckpointStore {
    /// A checkpoint store on `table` with a client built from `config`.
    pub fn new(config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self::from_client(aws_sdk_dynamodb::Client::new(config), table)
    }

    /// A checkpoint store on `table` with this client.
    pub fn from_client(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

/// The forms catalog in the state table (core's `forms::FormStore`): `pk` `formdef#<id>`
/// holds `form` (S, core's `forms::Form` as JSON), `name`, `page_id` and `fetched_at` (N).
/// Apart from the checkpoints' `form#<id>`, so `status` and the checkpoint code never meet
/// a catalog item.
#[derive(Debug, Clone)]
pub struct DynamoFormStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

/// The catalog item's key prefix.
pub const FORM_ITEM_PREFIX: &str = "formdef#";

impl DynamoFormStore {
    /// The catalog on the state table `table`.
    pub fn from_client(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

impl leadpipe_core::forms::FormStore for DynamoFormStore {
    async fn load_form(
        &self,
        form_id: &str,
    ) -> Result<Option<leadpipe_core::forms::Form>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("{FORM_ITEM_PREFIX}{form_id}")))
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        // An item this code cannot read counts as absent: Graph is asked and it is replaced.
        Ok(out
            .item()
            .and_then(|item| item.get("form"))
            .and_then(|v| v.as_s().ok())
            .and_then(|json| serde_json::from_str(json).ok()))
    }

    async fn save_forms(&self, forms: &[leadpipe_core::forms::Form]) -> Result<(), StoreError> {
        // A run lists a page's few forms: one put each keeps every failure its own.
        for form in forms {
            let json = serde_json::to_string(form).unwrap_or_default();
            let mut put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(format!("{FORM_ITEM_PREFIX}{}", form.id)))
                .item("form", s(json))
                .item("fetched_at", AttributeValue::N(form.fetched_at.to_string()));
            if let Some(name) = &form.name {
                put = put.item("name", s(name));
            }
            if let Some(page) = &form.page_id {
                put = put.item("page_id", s(page));
            }
            put.send().await.map_err(|e| store_error(&e))?;
        }
        Ok(())
    }
}

/// The forms catalog of the state table (`formdef#<id>` items, [`DynamoFormStore`]): the
/// labels `export --labels` heads columns with.
pub async fn catalog(
    client: &aws_sdk_dynamodb::Client,
    state_table: &str,
) -> Result<Vec<leadpipe_core::forms::Form>, StoreError> {
    state_items(client, state_table, FORM_ITEM_PREFIX, "form").await
}

/// Each page token's health the last backfill run kept in the state table (`status`).
pub async fn token_health(
    client: &aws_sdk_dynamodb::Client,
    state_table: &str,
) -> Result<Vec<leadpipe_core::tokens::PageTokenHealth>, StoreError> {
    let mut all: Vec<leadpipe_core::tokens::PageTokenHealth> =
        state_items(client, state_table, TOKEN_ITEM_PREFIX, "health").await?;
    all.sort_by(|a, b| a.page_id.cmp(&b.page_id));
    Ok(all)
}

/// The JSON values of `attribute` in the state table's items keyed `prefix…`: a small
/// table, one scan with its pages followed. An item this code cannot read is left out.
async fn state_items<T: serde::de::DeserializeOwned>(
    client: &aws_sdk_dynamodb::Client,
    state_table: &str,
    prefix: &str,
    attribute: &str,
) -> Result<Vec<T>, StoreError> {
    let mut all = Vec::new();
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    loop {
        let out = client
            .scan()
            .table_name(state_table)
            .filter_expression("begins_with(pk, :p)")
            .expression_attribute_values(":p", AttributeValue::S(prefix.to_owned()))
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| {
                StoreError::Unavailable(Cause::from(format!(
                    "the state table: {}",
                    describe_sdk_error(&e)
                )))
            })?;
        all.extend(
            out.items()
                .iter()
                .filter_map(|item| match item.get(attribute) {
                    Some(AttributeValue::S(json)) => serde_json::from_str(json).ok(),
                    _ => None,
                }),
        );
        match out.last_evaluated_key() {
            Some(key) if !key.is_empty() => start = Some(key.clone()),
            _ => return Ok(all),
        }
    }
}

pub(crate) fn store_error<E, R>(err: &aws_sdk_dynamodb::error::SdkError<E, R>) -> StoreError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let described = describe_sdk_error(err);
    match err {
        aws_sdk_dynamodb::error::SdkError::ServiceError(_) => {
            StoreError::Rejected(described.into())
        }
        _ => StoreError::Unavailable(described.into()),
    }
}

/// The token health item's key prefix in the state table: `token#<page id>` holds `health`
/// (S, core's `tokens::PageTokenHealth` as JSON), `state` and `checked_at`.
pub const TOKEN_ITEM_PREFIX: &str = "token#";

impl leadpipe_core::ports::CheckpointStore for DynamoCheckpointStore {
    async fn save_token_health(
        &self,
        health: &[leadpipe_core::tokens::PageTokenHealth],
    ) -> Result<(), StoreError> {
        for page in health {
            self.client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(format!("{TOKEN_ITEM_PREFIX}{}", page.page_id)))
                .item("health", s(serde_json::to_string(page).unwrap_or_default()))
                .item("state", s(page.state.as_str()))
                .item("checked_at", s(page.checked_at.as_str()))
                .send()
                .await
                .map_err(|e| store_error(&e))?;
        }
        Ok(())
    }

    async fn checkpoint(&self, key: &str) -> Result<Option<i64>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        Ok(out
            .item()
            .and_then(|item| item.get("checkpoint"))
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok()))
    }

    async fn save_checkpoint(
        &self,
        key: &str,
        checkpoint: i64,
        facts: &leadpipe_core::ports::RunFacts,
    ) -> Result<(), StoreError> {
        let n = |v: i64| AttributeValue::N(v.to_string());
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(key))
            .item("checkpoint", n(checkpoint))
            .item("updated_at", s(contract_time(OffsetDateTime::now_utc())))
            .item("last_run_leads_read", n(facts.leads_read as i64))
            .item("last_run_new", n(facts.new as i64))
            .item("last_run_already_present", n(facts.already_present as i64))
            // Two overlapping runs must not move a checkpoint back.
            .condition_expression("attribute_not_exists(pk) OR checkpoint <= :new")
            .expression_attribute_values(":new", n(checkpoint))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(err) => Err(store_error(&err)),
        }
    }
}

/// Creates a state table keyed by `pk` (S). For tests and local runs against moto.
pub async fn create_state_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<(), StoreError> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let build = |e: aws_sdk_dynamodb::error::BuildError| StoreError::Rejected(Cause::from_error(e));
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .map_err(build)?,
        )
        .send()
        .await
        .map_err(|e| StoreError::Rejected(Cause::described(describe_sdk_error(&e), e)))?;
    Ok(())
}
/// A leads-table item read back as a row (the inverse of [`lead_item`]); `None` for an
/// item that is not a lead as leadpipe writes it (an erasure record among them).
pub fn row_from_item(item: &HashMap<String, AttributeValue>) -> Option<LeadRow> {
    let s = |name: &str| match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    };
    let fields = match item.get("fields") {
        Some(AttributeValue::M(map)) => map
            .iter()
            .map(|(name, values)| {
                let values = match values {
                    AttributeValue::L(list) => list
                        .iter()
                        .filter_map(|v| match v {
                            AttributeValue::S(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                (name.clone(), values)
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    let disclaimers: Vec<serde_json::Value> = match item.get("custom_disclaimer_responses") {
        Some(AttributeValue::L(list)) => list
            .iter()
            .filter_map(|v| match v {
                AttributeValue::M(m) => Some(serde_json::json!({
                    "checkbox_key": match m.get("checkbox_key") { Some(AttributeValue::S(k)) => k.clone(), _ => String::new() },
                    "is_checked": matches!(m.get("is_checked"), Some(AttributeValue::Bool(true))),
                })),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(LeadRow {
        lead_id: s("lead_id")?,
        created_time: s("created_time")?,
        page_id: s("page_id")?,
        form_id: s("form_id"),
        optional: leadpipe_core::record::OPTIONAL_ATTRIBUTES
            .iter()
            .filter_map(|name| s(name).map(|v| (*name, v)))
            .collect(),
        is_organic: matches!(item.get("is_organic"), Some(AttributeValue::Bool(true))),
        fields,
        custom_disclaimer_responses: serde_json::Value::Array(disclaimers),
        raw: s("raw").unwrap_or_default(),
        source: leadpipe_core::ports::LeadSourceKind::parse(&s("source")?)?,
        ingested_at: s("ingested_at")?,
        readable: readable_from_item(item),
    })
}

/// The readable parts [`lead_item`] wrote (`form_name`, `answers`, `contact`); empty for a
/// lead stored before they existed.
pub fn readable_from_item(item: &HashMap<String, AttributeValue>) -> Readable {
    let text = |v: &AttributeValue| match v {
        AttributeValue::S(s) => Some(s.clone()),
        _ => None,
    };
    let answers = match item.get("answers") {
        Some(AttributeValue::L(list)) => list
            .iter()
            .filter_map(|a| match a {
                AttributeValue::M(m) => Some(Answer {
                    key: m.get("key").and_then(text)?,
                    label: m.get("label").and_then(text)?,
                    values: match m.get("values") {
                        Some(AttributeValue::L(values)) => values.iter().filter_map(text).collect(),
                        _ => Vec::new(),
                    },
                }),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let contact = match item.get("contact") {
        Some(AttributeValue::M(parts)) => {
            let parts: serde_json::Map<String, serde_json::Value> = parts
                .iter()
                .filter_map(|(k, v)| text(v).map(|t| (k.clone(), serde_json::Value::String(t))))
                .collect();
            serde_json::from_value(serde_json::Value::Object(parts)).unwrap_or_default()
        }
        _ => Contact::default(),
    };
    Readable {
        form_name: item.get("form_name").and_then(text),
        answers,
        contact,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use leadpipe_core::ports::LeadSourceKind;

    #[test]
    fn a_lead_too_large_with_its_answers_is_kept_without_them() {
        let long = "x".repeat(210_000);
        let lead = leadpipe_graph::Lead::from_json(&format!(
            r#"{{"id":"42","created_time":"2026-11-30T04:00:00+0000","field_data":[{{"name":"notes","values":["{long}"]}}]}}"#
        ))
        .unwrap();
        let stored = StoredLead {
            readable: Readable::of(&lead.field_data, None),
            lead,
            page_id: "7".into(),
            form_id: None,
            source: LeadSourceKind::Webhook,
            ingested_at: time::OffsetDateTime::now_utc(),
        };
        let item = fitting_item(&stored, &PrivacyAttributes::default()).unwrap();
        assert!(!item.contains_key("raw") && !item.contains_key("answers"));
        assert_eq!(item["answers_omitted"], AttributeValue::Bool(true));
        assert!(item_size(&item) <= MAX_ITEM_BYTES);
        let row = row_from_item(&item).unwrap();
        assert_eq!(row.fields["notes"][0].len(), 210_000, "every value kept");
    }

    #[test]
    fn an_item_reads_back_as_the_lead_it_encodes() {
        let lead = leadpipe_graph::Lead::from_json(
            r#"{"id":"41","created_time":"2026-11-30T04:00:00+0000","form_id":"5","ad_id":"6","ad_name":"Spring",
                "field_data":[{"name":"email","values":["a@b.c"]},{"name":"services","values":["x","y"]},
                              {"name":"phone_number","values":["+1 (212) 555-0123"]}],
                "custom_disclaimer_responses":[{"checkbox_key":"terms","is_checked":"1"}],"is_organic":false,"platform":"ig"}"#,
        )
        .unwrap();
        let form: leadpipe_core::forms::Form = serde_json::from_value(serde_json::json!({
            "id": "5", "name": "Spring offer", "locale": "en_US", "fetched_at": 0,
            "questions": [{"key": "services", "label": "Services", "type": "CUSTOM",
                           "options": [{"key": "x", "value": "X-ray"}]}]
        }))
        .unwrap();
        let stored = StoredLead {
            readable: Readable::of(&lead.field_data, Some(&form)),
            lead,
            page_id: "7".into(),
            form_id: Some("5".into()),
            source: LeadSourceKind::Backfill,
            ingested_at: time::OffsetDateTime::now_utc(),
        };
        let record = stored.record();
        let row = row_from_item(&lead_item(&stored)).unwrap();
        assert_eq!(row.lead_id, record.lead_id);
        assert_eq!(row.created_time, record.created_time);
        assert_eq!(row.page_id, record.page_id);
        assert_eq!(row.form_id.as_deref(), record.form_id);
        assert_eq!(row.source.as_str(), record.source);
        assert_eq!(row.ingested_at, record.ingested_at);
        assert_eq!(row.raw, record.raw);
        let optional: BTreeMap<&str, String> = record
            .optional
            .iter()
            .map(|(k, v)| (*k, (*v).to_owned()))
            .collect();
        assert_eq!(row.optional, optional);
        assert_eq!(row.fields["services"], ["x", "y"]);
        assert_eq!(
            row.readable, stored.readable,
            "the readable parts round-trip"
        );
        assert_eq!(row.readable.answers[0].values, ["X-ray", "y"]);
        assert_eq!(row.readable.contact.phone.as_deref(), Some("+12125550123"));
        assert_eq!(
            row.custom_disclaimer_responses,
            serde_json::json!([{"checkbox_key": "terms", "is_checked": true}])
        );
        // An erasure record is no lead.
        let record = HashMap::from([
            ("lead_id".to_owned(), AttributeValue::S("41".into())),
            (
                "erased_at".to_owned(),
                AttributeValue::S("2026-12-01T00:00:00Z".into()),
            ),
        ]);
        assert_eq!(row_from_item(&record), None);
    }
}
