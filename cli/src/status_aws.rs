//! `leadpipe status --stack NAME` (or the resources' names): the deployed pipeline's state
//! as the local `status` shows it (docs/operate.md). Queue depth and in-flight messages from
//! SQS; dead letters by reason class, read with a short visibility and given back at once;
//! checkpoints and last runs from the state table; leads created in the last 24 hours and 7
//! days per form, counted on the `by_form` index with `Select=COUNT`. Ids and counts only.

use crate::CliError;
use crate::operate::AwsNames;
use crate::status::StatusArgs;
use aws_sdk_dynamodb::types::{AttributeValue, Select};
use aws_sdk_sqs::types::QueueAttributeName;
use std::collections::BTreeMap;
use std::time::Duration;

fn aws_error<E>(what: &str, e: &E) -> CliError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error,
{
    CliError::Unreachable(format!("{what}: {}", crate::operate::aws_message(e)))
}

/// One form's checkpoint and last run.
#[derive(Debug, serde::Serialize)]
struct Checkpoint {
    key: String,
    checkpoint: i64,
    updated_at: String,
    last_run_leads_read: i64,
    last_run_new: i64,
}

/// Prints the stack's status; fails (after printing) when something needs a person.
pub async fn run(args: &StatusArgs) -> Result<(), CliError> {
    let config = leadpipe_aws::sdk_config().await;
    let names = AwsNames::resolve(
        &config,
        args.stack.as_deref(),
        AwsNames {
            leads_table: args.leads_table.clone(),
            queue_url: args.queue_url.clone(),
            dlq_url: args.dlq_url.clone(),
            state_table: args.state_table.clone(),
            secret_arn: None,
        },
    )
    .await?;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let mut needs = Vec::new();

    let queue = match &names.queue_url {
        Some(url) => {
            let attrs = sqs
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                .send()
                .await
                .map_err(|e| aws_error("the queue", &e))?;
            let get = |n: QueueAttributeName| -> i64 {
                attrs
                    .attributes()
                    .and_then(|a| a.get(&n))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            Some((
                get(QueueAttributeName::ApproximateNumberOfMessages),
                get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
                get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
            ))
        }
        None => None,
    };

    // class -> (count, newest reason)
    let mut dead: BTreeMap<String, (usize, String)> = BTreeMap::new();
    if let Some(dlq) = &names.dlq_url {
        let taken = leadpipe_aws::operate::take_all(&sqs, dlq, 30).await?;
        leadpipe_aws::operate::give_back(&sqs, dlq, &taken).await;
        for m in &taken {
            let entry = dead
                .entry(m.reason_class.clone().unwrap_or_else(|| {
                    // No attribute of ours: SQS moved it after maxReceiveCount.
                    leadpipe_core::ports::DeadLetterClass::Exhausted
                        .as_str()
                        .into()
                }))
                .or_default();
            entry.0 += 1;
            entry.1 = m.reason.clone().unwrap_or_default();
        }
        let total: usize = dead.values().map(|(n, _)| n).sum();
        if total > 0 {
            needs.push(format!(
                "{total} dead letter(s): read their reasons, fix the cause, then `leadpipe redrive`"
            ));
        }
    }

    let mut checkpoints = Vec::new();
    if let Some(table) = &names.state_table {
        let mut start = None;
        loop {
            let page = ddb
                .scan()
                .table_name(table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| aws_error("the state table", &e))?;
            for item in page.items() {
                let s = |k: &str| match item.get(k) {
                    Some(AttributeValue::S(v)) => v.clone(),
                    _ => String::new(),
                };
                let n = |k: &str| match item.get(k) {
                    Some(AttributeValue::N(v)) => v.parse().unwrap_or(0),
                    _ => 0,
                };
                checkpoints.push(Checkpoint {
                    key: s("pk"),
                    checkpoint: n("checkpoint"),
                    updated_at: s("updated_at"),
                    last_run_leads_read: n("last_run_leads_read"),
                    last_run_new: n("last_run_new"),
                });
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        checkpoints.sort_by(|a, b| a.key.cmp(&b.key));
    }

    // form -> (24 h, 7 d)
    let mut per_form: BTreeMap<String, (i32, i32)> = BTreeMap::new();
    if let Some(table) = &names.leads_table {
        let now = time::OffsetDateTime::now_utc();
        for cp in checkpoints.iter().filter(|c| c.key.starts_with("form#")) {
            let form = cp.key.trim_start_matches("form#").to_owned();
            let mut counts = [0i32; 2];
            for (i, back) in [Duration::from_secs(86_400), Duration::from_secs(7 * 86_400)]
                .into_iter()
                .enumerate()
            {
                let since = leadpipe_core::record::contract_time(now - back);
                let mut start = None;
                loop {
                    let page = ddb
                        .query()
                        .table_name(table)
                        .index_name("by_form")
                        .key_condition_expression("form_id = :f AND created_time >= :s")
                        .expression_attribute_values(":f", AttributeValue::S(form.clone()))
                        .expression_attribute_values(":s", AttributeValue::S(since.clone()))
                        .select(Select::Count)
                        .set_exclusive_start_key(start)
                        .send()
                        .await
                        .map_err(|e| aws_error("the leads table", &e))?;
                    counts[i] += page.count();
                    start = page.last_evaluated_key().cloned();
                    if start.is_none() {
                        break;
                    }
                }
            }
            per_form.insert(form, (counts[0], counts[1]));
        }
    }

    if args.json {
        let report = serde_json::json!({
            "queue": queue.map(|(visible, in_flight, delayed)| serde_json::json!(
                {"depth": visible, "in_flight": in_flight, "delayed": delayed})),
            "dead_letters": dead.iter().map(|(class, (n, reason))| serde_json::json!(
                {"reason_class": class, "count": n, "newest_reason": reason})).collect::<Vec<_>>(),
            "checkpoints": checkpoints,
            "created_per_form": per_form.iter().map(|(form, (day, week))| serde_json::json!(
                {"form_id": form, "last_24h": day, "last_7d": week})).collect::<Vec<_>>(),
            "needs_a_person": needs,
        });
        println!("{report}");
    } else {
        if let Some((visible, in_flight, delayed)) = queue {
            println!(
                "queue          {visible} waiting, {in_flight} in flight, {delayed} delayed (the oldest's age: the OldestLeadEvent alarm)"
            );
        }
        if names.dlq_url.is_some() {
            println!(
                "dead letters   {}",
                dead.values().map(|(n, _)| n).sum::<usize>()
            );
            for (class, (n, reason)) in &dead {
                let (class, reason) = (crate::render::line(class), crate::render::line(reason));
                println!("  {class:<12} {n:>6}  newest: {reason}");
            }
        }
        if names.state_table.is_some() {
            println!("checkpoints    {}", checkpoints.len());
            for c in &checkpoints {
                println!(
                    "  {:<28} read to {}\n  {:<28} last run {}: read {}, new {}",
                    c.key,
                    crate::render::unix_time(c.checkpoint),
                    "",
                    c.updated_at,
                    c.last_run_leads_read,
                    c.last_run_new
                );
            }
        }
        if !per_form.is_empty() {
            println!("created, per form       24 h      7 d");
            for (form, (day, week)) in &per_form {
                println!("  {form:<20} {day:>6} {week:>8}");
            }
        }
        match needs.as_slice() {
            [] => println!("verdict: ok"),
            _ => {
                for need in &needs {
                    println!("needs a person: {}", crate::render::line(need));
                }
            }
        }
    }
    if needs.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "verdict: {} thing(s) need a person",
            needs.len()
        )))
    }
}
