//! `leadpipe status --db PATH`: what the local pipeline holds, for a person (a table and a
//! verdict) or a script (`--json`): the queue's depth and its oldest message's age, dead
//! letters by reason class with the newest reason, each form's checkpoint and last run, and
//! leads stored in the last 24 hours and 7 days per form, and the forwarding outbox. Ids and counts only: no lead value.
//! It opens the file read-only and exits non-zero when something needs a person. The
//! deployed stack's side (`--stack` or the resources' names) is `crate::status_aws`.

use crate::CliError;
use leadpipe_local::LocalDb;
use std::path::PathBuf;
use std::time::Duration;
use time::OffsetDateTime;

/// A queued message older than this means ingest is not keeping up or is failing.
const STUCK_AFTER: Duration = Duration::from_secs(15 * 60);

/// Arguments of `leadpipe status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The SQLite file to read (opened read-only).
    #[arg(
        long,
        env = "LEADPIPE_DB",
        hide_env_values = true,
        default_value = "leadpipe.db"
    )]
    pub db: PathBuf,
    /// The deployed stack instead (its outputs name the queues and tables).
    #[arg(long)]
    pub stack: Option<String>,
    /// The lead events queue (instead of, or over, --stack's).
    #[arg(long)]
    pub queue_url: Option<String>,
    /// The dead-letter queue.
    #[arg(long)]
    pub dlq_url: Option<String>,
    /// The leads table.
    #[arg(long)]
    pub leads_table: Option<String>,
    /// The state table (checkpoints).
    #[arg(long)]
    pub state_table: Option<String>,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Prints the status; fails (after printing) when something needs a person.
pub async fn run(args: StatusArgs) -> Result<(), CliError> {
    if args.stack.is_some()
        || args.queue_url.is_some()
        || args.dlq_url.is_some()
        || args.leads_table.is_some()
        || args.state_table.is_some()
    {
        return crate::status_aws::run(&args).await;
    }
    local(args)
}

fn local(args: StatusArgs) -> Result<(), CliError> {
    if !args.db.exists() {
        return Err(CliError::Settings(format!(
            "{} does not exist",
            args.db.display()
        )));
    }
    let db = LocalDb::open_read_only(&args.db)?;
    let now = OffsetDateTime::now_utc();
    let (queued, oldest_ms) = db.queue_stats()?;
    let oldest_age_s = oldest_ms.map(|at| {
        let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
        (now_ms - at).max(0) / 1000
    });
    let dead = db.dead_letter_summary()?;
    let checkpoints = db.checkpoints()?;
    let since = |back: Duration| leadpipe_core::record::contract_time(now - back);
    let day = db.leads_stored_since(&since(Duration::from_secs(86_400)))?;
    let week = db.leads_stored_since(&since(Duration::from_secs(7 * 86_400)))?;

    let mut needs = Vec::new();
    let dead_total: i64 = dead.iter().map(|(_, n, _, _)| n).sum();
    if dead_total > 0 {
        needs.push(format!(
            "{dead_total} dead letter(s): read their reasons, fix the cause, then `leadpipe redrive --db {}` (or --reason-class CLASS)",
            args.db.display()
        ));
    }
    if oldest_age_s.is_some_and(|age| age > STUCK_AFTER.as_secs() as i64) {
        needs.push(format!(
            "the oldest queued message waits for {} s: is `serve` running, and can it read Graph?",
            oldest_age_s.unwrap_or_default()
        ));
    }

    // A file from before forwarding existed has no outbox table: nothing to show then.
    let outbox = db.outbox_summary().ok();
    let outbox_oldest_s = outbox.as_ref().and_then(|o| o.oldest_pending_ms).map(|at| {
        let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
        (now_ms - at).max(0) / 1000
    });
    if let Some(o) = &outbox {
        if o.dead > 0 {
            needs.push(format!(
                "{} lead event(s) could not be forwarded: read the reason, fix the receiver, then `leadpipe redrive --db {} --reason-class refused` (or exhausted)",
                o.dead,
                args.db.display()
            ));
        }
        if outbox_oldest_s.is_some_and(|age| age > STUCK_AFTER.as_secs() as i64) {
            needs.push(format!(
                "the oldest lead event waits {} s to be forwarded: is the receiver up?",
                outbox_oldest_s.unwrap_or_default()
            ));
        }
    }

    if args.json {
        let per_form = |rows: &[(Option<String>, i64)]| {
            rows.iter()
                .map(|(form, n)| serde_json::json!({"form_id": form, "leads": n}))
                .collect::<Vec<_>>()
        };
        let report = serde_json::json!({
            "queue": {"depth": queued, "oldest_age_seconds": oldest_age_s},
            "dead_letters": dead.iter().map(|(class, n, reason, at)| serde_json::json!(
                {"reason_class": class, "count": n, "newest_reason": reason, "newest_at": at})).collect::<Vec<_>>(),
            "checkpoints": checkpoints.iter().map(|(key, cp, at, read, new, present)| serde_json::json!(
                {"key": key, "checkpoint": cp, "updated_at": at, "last_run": {"leads_read": read, "new": new, "already_present": present}})).collect::<Vec<_>>(),
            "stored_last_24h": per_form(&day),
            "stored_last_7d": per_form(&week),
            "forwarding": outbox.as_ref().map(|o| serde_json::json!({"pending": o.pending,
                "oldest_pending_age_seconds": outbox_oldest_s, "dead": o.dead, "newest_dead_reason": o.newest_dead_reason})),
            "needs_a_person": needs,
        });
        println!("{report}");
    } else {
        println!(
            "queue          {queued} message(s){}",
            oldest_age_s
                .map(|age| format!(
                    ", the oldest waits {}",
                    crate::render::duration_ms(age.max(0) as u64 * 1000)
                ))
                .unwrap_or_default()
        );
        println!("dead letters   {dead_total}");
        for (class, n, reason, at) in &dead {
            let (class, reason) = (crate::render::line(class), crate::render::line(reason));
            println!("  {class:<12} {n:>6}  newest {at}: {reason}");
        }
        println!("checkpoints    {}", checkpoints.len());
        for (key, cp, at, read, new, present) in &checkpoints {
            println!(
                "  {key:<28} read to {}\n  {:<28} last run {at}: read {read}, new {new}, already there {present}",
                crate::render::unix_time(*cp),
                ""
            );
        }
        println!("stored, per form       24 h      7 d");
        for (form, week_n) in &week {
            let day_n = day
                .iter()
                .find(|(f, _)| f == form)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            let name = form.as_deref().unwrap_or("(no form)");
            println!("  {name:<20} {day_n:>6} {week_n:>8}");
        }
        if let Some(o) = outbox.as_ref().filter(|o| o.pending + o.dead > 0) {
            println!(
                "forwarding     {} pending{}, {} dead{}",
                o.pending,
                outbox_oldest_s
                    .map(|age| format!(
                        " (the oldest waits {})",
                        crate::render::duration_ms(age.max(0) as u64 * 1000)
                    ))
                    .unwrap_or_default(),
                o.dead,
                o.newest_dead_reason
                    .as_deref()
                    .map(|r| format!(": newest reason {}", crate::render::line(r)))
                    .unwrap_or_default()
            );
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
