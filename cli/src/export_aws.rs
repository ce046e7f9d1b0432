//! `leadpipe export --leads-table/--stack`: the deployed table's leads in the local export's
//! formats. A form is read with a `by_form` query; everything else with a parallel scan of
//! four segments. Two passes: the first reads only `fields` (a CSV's columns), the second
//! streams the leads through a small channel, so memory stays flat however many there are.

use crate::CliError;
use crate::export::{Format, RowWriter};
use aws_sdk_dynamodb::types::AttributeValue;
use leadpipe_local::{LeadFilter, LeadRow, OPTIONAL_COLUMNS};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;

type Item = HashMap<String, AttributeValue>;

const SEGMENTS: i32 = 4;

/// Exports the table's leads `filter` selects; returns how many.
pub async fn export<W: Write>(
    config: &aws_config::SdkConfig,
    table: &str,
    filter: &LeadFilter,
    format: Format,
    out: W,
    progress: &indicatif::ProgressBar,
) -> Result<usize, CliError> {
    let client = aws_sdk_dynamodb::Client::new(config);
    let mut names = BTreeSet::new();
    if format == Format::Csv {
        read(&client, table, filter, Some("#f"), |item| {
            if let Some(AttributeValue::M(fields)) = item.get("fields") {
                names.extend(fields.keys().cloned());
            }
            Ok(())
        })
        .await?;
    }
    let mut writer = RowWriter::new(format, names, out)?;
    let mut written = 0;
    read(&client, table, filter, None, |item| {
        let row = row_from_item(&item).ok_or_else(|| {
            CliError::Failed("an item of the table is not a lead as leadpipe writes it".into())
        })?;
        writer.write(&row)?;
        written += 1;
        progress.inc(1);
        Ok(())
    })
    .await?;
    writer.finish()?;
    Ok(written)
}

/// Every item `filter` selects, handed to `each` as the pages arrive.
async fn read(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    filter: &LeadFilter,
    projection: Option<&str>,
    mut each: impl FnMut(Item) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<Item>, CliError>>(4);
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
                failure = Some(e);
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

fn failed<E: std::fmt::Display>(what: &str, e: E) -> CliError {
    CliError::Unreachable(format!("{what}: {e}"))
}

async fn query_form(
    client: aws_sdk_dynamodb::Client,
    table: String,
    form: String,
    filter: LeadFilter,
    projection: Option<String>,
    tx: tokio::sync::mpsc::Sender<Result<Vec<Item>, CliError>>,
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
                let _ = tx
                    .send(Err(failed(
                        "the by_form query",
                        crate::operate::aws_message(&e),
                    )))
                    .await;
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
    tx: tokio::sync::mpsc::Sender<Result<Vec<Item>, CliError>>,
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
                let _ = tx
                    .send(Err(failed("the scan", crate::operate::aws_message(&e))))
                    .await;
                return;
            }
        };
        start = page.last_evaluated_key().cloned();
        if tx.send(Ok(page.items.unwrap_or_default())).await.is_err() || start.is_none() {
            return;
        }
    }
}

/// A leads-table item as the export's row (the local file's shape).
pub fn row_from_item(item: &Item) -> Option<LeadRow> {
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
        optional: OPTIONAL_COLUMNS
            .iter()
            .filter_map(|name| s(name).map(|v| (*name, v)))
            .collect(),
        is_organic: matches!(item.get("is_organic"), Some(AttributeValue::Bool(true))),
        fields,
        custom_disclaimer_responses: serde_json::Value::Array(disclaimers),
        raw: s("raw").unwrap_or_default(),
        source: s("source")?,
        ingested_at: s("ingested_at")?,
    })
}
