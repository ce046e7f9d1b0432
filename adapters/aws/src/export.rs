//! The leads table read back for `leadpipe export --stack`: a form by its `by_form` query,
//! everything else by a parallel scan of four segments, pages through a small channel so
//! memory stays flat; each item decoded by [`crate::dynamo::row_from_item`], the inverse of
//! the encoder. Erasure records are never returned.

use crate::describe_sdk_error;
use aws_sdk_dynamodb::types::AttributeValue;
use leadpipe_core::lead_row::{LeadFilter, LeadRow};
use leadpipe_core::ports::{Cause, StoreError};
use std::collections::{BTreeSet, HashMap};

type Item = HashMap<String, AttributeValue>;

const SEGMENTS: i32 = 4;

/// The form field names of the leads `filter` selects (a CSV's columns): a pass that reads
/// only `fields`.
pub async fn field_names(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    filter: &LeadFilter,
) -> Result<BTreeSet<String>, StoreError> {
    let mut names = BTreeSet::new();
    read(client, table, filter, Some("#f"), |item| {
        if let Some(AttributeValue::M(fields)) = item.get("fields") {
            names.extend(fields.keys().cloned());
        }
        Ok::<_, StoreError>(())
    })
    .await?;
    Ok(names)
}

pub use crate::dynamo::catalog;

/// Hands every lead `filter` selects to `each`, as the pages arrive; returns how many. An
/// item that is not a lead as leadpipe writes it is an error naming the lead, never its
/// content.
pub async fn each_lead<E: From<StoreError>>(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    filter: &LeadFilter,
    mut each: impl FnMut(LeadRow) -> Result<(), E>,
) -> Result<usize, E> {
    let mut seen = 0;
    read(client, table, filter, None, |item| {
        let row = crate::dynamo::row_from_item(&item).ok_or_else(|| {
            let id = match item.get("lead_id") {
                Some(AttributeValue::S(id)) => id.clone(),
                _ => "(no id)".to_owned(),
            };
            E::from(StoreError::Rejected(Cause::from_error(NotALead(id))))
        })?;
        seen += 1;
        each(row)
    })
    .await?;
    Ok(seen)
}

/// An item of the leads table that is not a lead as leadpipe writes it.
#[derive(Debug, thiserror::Error)]
#[error("the item of lead {0} is not a lead as leadpipe writes it")]
struct NotALead(String);

/// Every item `filter` selects, handed to `each` as the pages arrive.
async fn read<E: From<StoreError>>(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    filter: &LeadFilter,
    projection: Option<&str>,
    mut each: impl FnMut(Item) -> Result<(), E>,
) -> Result<(), E> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<Item>, StoreError>>(4);
    let mut tasks = Vec::new();
    if let Some(form) = &filter.form_id {
        tasks.push(tokio::spawn(query_form(
            client.clone(),
            table.to_owned(),
            form.clone(),
            filter.clone(),
            projection.map(str::to_owned),
            tx.clone(),
        )));
    } else {
        for segment in 0..SEGMENTS {
            tasks.push(tokio::spawn(scan_segment(
                client.clone(),
                table.to_owned(),
                segment,
                filter.clone(),
                projection.map(str::to_owned),
                tx.clone(),
            )));
        }
    }
    drop(tx);
    let mut failure = None;
    while let Some(page) = rx.recv().await {
        match page {
            Ok(items) => {
                for item in items {
                    each(item)?;
                }
            }
            Err(e) => {
                failure = Some(E::from(e));
                break;
            }
        }
    }
    for task in tasks {
        task.abort();
    }
    failure.map_or(Ok(()), Err)
}

fn time_condition(filter: &LeadFilter) -> (Option<String>, HashMap<String, AttributeValue>) {
    let mut values = HashMap::new();
    let mut parts = Vec::new();
    if let Some(since) = &filter.since {
        values.insert(":since".to_owned(), AttributeValue::S(since.clone()));
        parts.push("created_time >= :since");
    }
    if let Some(until) = &filter.until {
        values.insert(":until".to_owned(), AttributeValue::S(until.clone()));
        parts.push("created_time < :until");
    }
    ((!parts.is_empty()).then(|| parts.join(" AND ")), values)
}

/// `fields` is a reserved word in DynamoDB expressions: it goes by a name placeholder.
fn fields_name() -> HashMap<String, String> {
    HashMap::from([("#f".to_owned(), "fields".to_owned())])
}

fn failed<E, R>(what: &str, e: aws_sdk_dynamodb::error::SdkError<E, R>) -> StoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    StoreError::Unavailable(Cause::described(
        format!("{what}: {}", describe_sdk_error(&e)),
        e,
    ))
}

async fn query_form(
    client: aws_sdk_dynamodb::Client,
    table: String,
    form: String,
    filter: LeadFilter,
    projection: Option<String>,
    tx: tokio::sync::mpsc::Sender<Result<Vec<Item>, StoreError>>,
) {
    // A key condition takes one comparison on the sort key: `since` goes there (or `until`
    // when it is alone), and `until` beside `since` becomes a filter.
    let (_, mut values) = time_condition(&filter);
    values.insert(":form".to_owned(), AttributeValue::S(form));
    let (condition, post_filter) = match (&filter.since, &filter.until) {
        (Some(_), Some(_)) => (
            "form_id = :form AND created_time >= :since".to_owned(),
            Some("created_time < :until".to_owned()),
        ),
        (Some(_), None) => (
            "form_id = :form AND created_time >= :since".to_owned(),
            None,
        ),
        (None, Some(_)) => ("form_id = :form AND created_time < :until".to_owned(), None),
        (None, None) => ("form_id = :form".to_owned(), None),
    };
    let mut start = None;
    loop {
        let page = client
            .query()
            .table_name(&table)
            .index_name("by_form")
            .key_condition_expression(&condition)
            .set_filter_expression(post_filter.clone())
            .set_expression_attribute_values(Some(values.clone()))
            .set_projection_expression(projection.clone())
            .set_expression_attribute_names(projection.as_ref().map(|_| fields_name()))
            .set_exclusive_start_key(start)
            .send()
            .await;
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                let _ = tx.send(Err(failed("the by_form query", e))).await;
                return;
            }
        };
        start = page.last_evaluated_key().cloned();
        if tx.send(Ok(page.items.unwrap_or_default())).await.is_err() || start.is_none() {
            return;
        }
    }
}

async fn scan_segment(
    client: aws_sdk_dynamodb::Client,
    table: String,
    segment: i32,
    filter: LeadFilter,
    projection: Option<String>,
    tx: tokio::sync::mpsc::Sender<Result<Vec<Item>, StoreError>>,
) {
    let (condition, values) = time_condition(&filter);
    // Erasure records (an erased lead's id and time, nothing else) are no leads.
    let condition = Some(match condition {
        Some(c) => format!("({c}) AND attribute_not_exists(erased_at)"),
        None => "attribute_not_exists(erased_at)".to_owned(),
    });
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(&table)
            .segment(segment)
            .total_segments(SEGMENTS)
            .set_filter_expression(condition.clone())
            .set_expression_attribute_values((!values.is_empty()).then(|| values.clone()))
            .set_projection_expression(projection.clone())
            .set_expression_attribute_names(projection.as_ref().map(|_| fields_name()))
            .set_exclusive_start_key(start)
            .send()
            .await;
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                let _ = tx.send(Err(failed("the scan", e))).await;
                return;
            }
        };
        start = page.last_evaluated_key().cloned();
        if tx.send(Ok(page.items.unwrap_or_default())).await.is_err() || start.is_none() {
            return;
        }
    }
}

/// The stack's leads table (and its state table's forms catalog) as core's export reads
/// them.
#[derive(Debug, Clone)]
pub struct StackLeads {
    /// The DynamoDB client.
    pub client: aws_sdk_dynamodb::Client,
    /// The leads table.
    pub table: String,
    /// The state table, for the columns by label; without it they are headed by key.
    pub state_table: Option<String>,
}

impl leadpipe_core::export::LeadScan for StackLeads {
    async fn field_names(&self, filter: &LeadFilter) -> Result<BTreeSet<String>, StoreError> {
        field_names(&self.client, &self.table, filter).await
    }

    async fn catalog(&self) -> Result<Vec<leadpipe_core::forms::Form>, StoreError> {
        match &self.state_table {
            Some(state) => catalog(&self.client, state).await,
            None => Ok(Vec::new()),
        }
    }

    async fn each_lead<E: From<StoreError> + Send>(
        &self,
        filter: &LeadFilter,
        each: impl FnMut(LeadRow) -> Result<(), E> + Send,
    ) -> Result<usize, E> {
        each_lead(&self.client, &self.table, filter, each).await
    }
}
