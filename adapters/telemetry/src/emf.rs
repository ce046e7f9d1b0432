//! CloudWatch embedded metric format (EMF): one JSON line on stdout per flush, which
//! CloudWatch Logs turns into metrics without an agent or an API call.
//!
//! Namespace `leadpipe`; dimension `Function` (the Lambda function's name, `local` off
//! Lambda); Graph errors also carry `ErrorClass`.

use serde_json::{Map, Value, json};
use std::io::Write;

/// The namespace the dashboard and alarms read.
pub const NAMESPACE: &str = "leadpipe";

fn function_name() -> String {
    std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "local".to_owned())
}

/// The EMF line for `counts` under `dimensions` (name, value pairs), or `None` when every
/// count is zero (nothing worth a line).
pub fn emf_line(
    dimensions: &[(&str, &str)],
    counts: &[(&str, u64)],
    timestamp_ms: i64,
) -> Option<String> {
    if counts.iter().all(|(_, n)| *n == 0) {
        return None;
    }
    let metrics: Vec<Value> = counts
        .iter()
        .map(|(name, _)| json!({"Name": name, "Unit": "Count"}))
        .collect();
    let mut root = envelope(dimensions, metrics, timestamp_ms);
    for (name, n) in counts {
        root.insert((*name).to_owned(), json!(n));
    }
    Some(Value::Object(root).to_string())
}

/// An EMF line's `_aws` block declaring `metrics` under `dimensions`, and the dimensions'
/// values; the caller adds the metrics' values.
fn envelope(
    dimensions: &[(&str, &str)],
    metrics: Vec<Value>,
    timestamp_ms: i64,
) -> Map<String, Value> {
    let mut root = Map::new();
    let dimension_names: Vec<&str> = dimensions.iter().map(|(k, _)| *k).collect();
    root.insert(
        "_aws".into(),
        json!({"Timestamp": timestamp_ms, "CloudWatchMetrics": [{
            "Namespace": NAMESPACE, "Dimensions": [dimension_names], "Metrics": metrics}]}),
    );
    for (k, v) in dimensions {
        root.insert((*k).to_owned(), json!(v));
    }
    root
}

/// EMF takes at most 100 values of one metric in a line.
const MAX_VALUES: usize = 100;

/// The EMF lines for `values` (milliseconds) of metric `name` under `dimensions`: CloudWatch
/// keeps every value, so p50 and p99 are true percentiles of them. `None` lines are skipped.
pub fn emf_value_lines(
    dimensions: &[(&str, &str)],
    name: &str,
    values: &[u64],
    timestamp_ms: i64,
) -> Vec<String> {
    values
        .chunks(MAX_VALUES)
        .map(|chunk| {
            let metric = json!({"Name": name, "Unit": "Milliseconds"});
            let mut root = envelope(dimensions, vec![metric], timestamp_ms);
            root.insert(name.to_owned(), json!(chunk));
            Value::Object(root).to_string()
        })
        .collect()
}

/// Writes speed to lead: `LeadLatency` (ms) with dimension `Since` = `created` (Meta's
/// `created_time`) and `received` (the webhook's receipt), one value per new lead.
pub fn emit_latencies(since_created_ms: &[u64], since_received_ms: &[u64]) {
    let function = function_name();
    for (since, values) in [
        ("created", since_created_ms),
        ("received", since_received_ms),
    ] {
        for line in emf_value_lines(
            &[("Function", &function), ("Since", since)],
            "LeadLatency",
            values,
            now_ms(),
        ) {
            write(Some(line));
        }
    }
}

/// Writes the counts for this function as one EMF line.
pub fn emit(counts: &[(&str, u64)]) {
    let function = function_name();
    write(emf_line(&[("Function", &function)], counts, now_ms()));
}

/// Writes one EMF line per Graph error class with its count.
pub fn emit_graph_errors<'a>(by_class: impl IntoIterator<Item = (&'a str, u64)>) {
    let function = function_name();
    for (class, n) in by_class {
        write(emf_line(
            &[("Function", &function), ("ErrorClass", class)],
            &[("GraphErrors", n)],
            now_ms(),
        ));
    }
}

/// Writes one EMF line per refused stage class with its count (`StagesRefused` by
/// `ReasonClass`; the total is in [`emit`]'s line, without the class).
pub fn emit_refused_stages<'a>(by_class: impl IntoIterator<Item = (&'a str, u64)>) {
    let function = function_name();
    for (class, n) in by_class {
        write(emf_line(
            &[("Function", &function), ("ReasonClass", class)],
            &[("StagesRefused", n)],
            now_ms(),
        ));
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// EMF lines mean something only to CloudWatch: they are written on Lambda (or when
/// `LEADPIPE_EMF=1`), not in local runs and tests.
fn enabled() -> bool {
    std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some()
        || std::env::var("LEADPIPE_EMF").as_deref() == Ok("1")
}

fn write(line: Option<String>) {
    if !enabled() {
        return;
    }
    if let Some(line) = line {
        let mut out = std::io::stdout().lock();
        // A metric that cannot be written is not worth failing a request for.
        let _ = writeln!(out, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_cloudwatch_reads_as_metrics() {
        let line = emf_line(
            &[("Function", "ingest")],
            &[("LeadsStored", 7), ("DuplicatesSkipped", 0)],
            1_700_000_000_000,
        )
        .unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], "leadpipe");
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Function"]])
        );
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0],
            json!({"Name": "LeadsStored", "Unit": "Count"})
        );
        assert_eq!(v["Function"], "ingest");
        assert_eq!(v["LeadsStored"], 7);
        assert_eq!(v["_aws"]["Timestamp"], 1_700_000_000_000i64);
        assert!(emf_line(&[("Function", "x")], &[("A", 0)], 0).is_none());
    }

    #[test]
    fn latencies_are_values_cloudwatch_takes_percentiles_of() {
        let values: Vec<u64> = (0..150).collect();
        let lines = emf_value_lines(
            &[("Function", "ingest"), ("Since", "received")],
            "LeadLatency",
            &values,
            1_700_000_000_000,
        );
        assert_eq!(lines.len(), 2, "at most 100 values a line");
        let v: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0],
            json!({"Name": "LeadLatency", "Unit": "Milliseconds"})
        );
        assert_eq!(v["Since"], "received");
        assert_eq!(v["LeadLatency"].as_array().unwrap().len(), 100);
        assert!(emf_value_lines(&[], "LeadLatency", &[], 0).is_empty());
    }
}
