//! `leadpipe status`: what the pipeline holds, for a person (lines and a verdict) or a
//! script (`--json`), the same value for the local file (`--db`, opened read-only) and for
//! the stack (`--stack` or the resources' names): core's `leadpipe_core::status`. Ids and
//! counts only, no lead value; exit 1 when a person must act.

use crate::CliError;
use crate::render::{duration_ms, line};
use leadpipe_core::status::{Need, PipelineStatus, pipeline_status};
use leadpipe_local::LocalDb;
use std::fmt::Write as _;
use std::path::PathBuf;

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
    let now = time::OffsetDateTime::now_utc();
    let names = leadpipe_aws::stack::StackNames {
        leads_table: args.leads_table.clone(),
        queue_url: args.queue_url.clone(),
        dlq_url: args.dlq_url.clone(),
        state_table: args.state_table.clone(),
        secret_arn: None,
        stages_queue_url: None,
        stages_dlq_url: None,
        destinations_queue_url: None,
        destinations_dlq_url: None,
    };
    let (status, fix) = if args.stack.is_some() || !names.is_empty() {
        let config = leadpipe_aws::sdk_config().await;
        let names = names
            .over_stack(&config, args.stack.as_deref())
            .await
            .map_err(|e| CliError::Unreachable(e.to_string()))?;
        let source = leadpipe_aws::status::StackStatus::new(&config, &names);
        let target = match &args.stack {
            Some(stack) => format!("--stack {stack}"),
            None => "with the same names".to_owned(),
        };
        (
            pipeline_status(&source, "stack", now)
                .await
                .map_err(|e| CliError::Unreachable(e.to_string()))?,
            target,
        )
    } else {
        if !args.db.exists() {
            return Err(CliError::Settings(format!(
                "{} does not exist",
                args.db.display()
            )));
        }
        let db = LocalDb::open_read_only(&args.db)?;
        (
            pipeline_status(&db, "local", now).await?,
            format!("--db {}", args.db.display()),
        )
    };
    let shown = if args.json {
        format!("{}\n", serde_json::to_string(&status).unwrap_or_default())
    } else {
        text(&status, &fix)
    };
    crate::render::print(&shown)?;
    if status.needs_a_person.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "{} thing(s) need a person (see above)",
            status.needs_a_person.len()
        )))
    }
}

/// What a person must do about `need`, on the target `fix` names.
fn advice(need: Need, status: &PipelineStatus, fix: &str) -> String {
    match need {
        Need::DeadLetters => {
            let total: u64 = status.dead_letters.iter().flatten().map(|g| g.count).sum();
            format!(
                "{total} dead letter(s): read their reasons, fix the cause, then `leadpipe redrive {fix}` (or --reason-class CLASS)"
            )
        }
        Need::QueueStuck => format!(
            "the oldest queued message waits {}: is `serve` running, and can it read Graph?",
            status
                .queue
                .as_ref()
                .and_then(|q| q.oldest_age_seconds)
                .map(|s| duration_ms(s * 1000))
                .unwrap_or_default()
        ),
        Need::ForwardingDead => format!(
            "{} lead event(s) could not be forwarded: read the reason, fix the receiver, then `leadpipe redrive {fix} --reason-class refused` (or exhausted)",
            status
                .forwarding
                .as_ref()
                .map(|f| f.dead)
                .unwrap_or_default()
        ),
        Need::ForwardingStuck => format!(
            "the oldest lead event waits {} to be forwarded: is the receiver up?",
            status
                .forwarding
                .as_ref()
                .and_then(|f| f.oldest_pending_age_seconds)
                .map(|s| duration_ms(s * 1000))
                .unwrap_or_default()
        ),
        Need::PageTokens => {
            let pages: Vec<&str> = status
                .page_tokens
                .iter()
                .flatten()
                .filter(|t| t.health.state.needs_a_person())
                .map(|t| t.health.page_id.as_str())
                .collect();
            format!(
                "the token of page(s) {} needs a new one or access (page tokens, above): run `leadpipe connect --app-id <APP_ID> --page <PAGE_ID> {fix}` with a new token",
                pages.join(", ")
            )
        }
        Need::StagesRefused => {
            let total: u64 = status
                .stages
                .iter()
                .flat_map(|s| &s.refused)
                .map(|g| g.count)
                .sum();
            format!(
                "{total} stage(s) were refused and never sent to Meta: read their reasons (stages, above), fix the cause, then `leadpipe redrive {fix} --reason-class CLASS`"
            )
        }
        Need::DestinationsDead => {
            let total: u64 = status.destinations.iter().flatten().map(|d| d.dead).sum();
            format!(
                "{total} lead(s) did not reach a destination: read the reason (destinations, above), fix it (a key, a mapping, a field), then `leadpipe redrive {fix} --reason-class refused` (or exhausted), or `leadpipe forward --destination NAME --since 7d`"
            )
        }
        Need::DestinationsStuck => "a destination's oldest lead has waited over 15 minutes: is serve running with --destinations, and does the service answer? (`leadpipe destinations check FILE --live`)".to_owned(),
    }
}

/// The status for a person: one part a few lines, text from outside escaped.
fn text(status: &PipelineStatus, fix: &str) -> String {
    let mut t = String::new();
    if let Some(q) = &status.queue {
        let _ = write!(
            t,
            "queue          {} waiting, {} in flight, {} delayed",
            q.waiting, q.in_flight, q.delayed
        );
        match q.oldest_age_seconds {
            Some(age) => {
                let _ = writeln!(t, "; the oldest waits {}", duration_ms(age * 1000));
            }
            None if status.target == "stack" => {
                let _ = writeln!(
                    t,
                    "\n               (the oldest's age: the OldestLeadEvent alarm)"
                );
            }
            None => t.push('\n'),
        }
    }
    if let Some(groups) = &status.dead_letters {
        let total: u64 = groups.iter().map(|g| g.count).sum();
        let _ = writeln!(t, "dead letters   {total}");
        for g in groups {
            let _ = writeln!(t, "  {:<12} {:>6}", line(&g.reason_class), g.count);
            let _ = writeln!(
                t,
                "  {:<12} newest{}: {}",
                "",
                g.newest_at
                    .as_deref()
                    .map(|at| format!(" {at}"))
                    .unwrap_or_default(),
                line(&g.newest_reason)
            );
        }
    }
    if let Some(checkpoints) = &status.checkpoints {
        let _ = writeln!(t, "checkpoints    {}", checkpoints.len());
        for c in checkpoints {
            let _ = writeln!(t, "  {:<28} read to {}", c.key.to_string(), c.read_to);
            if let Some(name) = &c.name {
                let _ = writeln!(t, "  {:<28} \"{}\"", "", line(&clip(name, 46)));
            }
            let _ = writeln!(
                t,
                "  {:<28} last run {}: read {}, new {}, already there {}",
                "", c.updated_at, c.last_run.leads_read, c.last_run.new, c.last_run.already_present
            );
        }
    }
    if let Some(forms) = &status.leads_per_form {
        let _ = writeln!(t, "created, per form       24 h      7 d");
        for f in forms {
            let id = f
                .form_id
                .as_deref()
                .map(line)
                .unwrap_or_else(|| "(no form)".into());
            let _ = writeln!(t, "  {id:<20} {:>6} {:>8}", f.last_24h, f.last_7d);
            if let Some(name) = &f.name {
                let _ = writeln!(t, "    {}", line(&clip(name, 60)));
            }
        }
    }
    if let Some(f) = status
        .forwarding
        .as_ref()
        .filter(|f| f.pending + f.dead > 0)
    {
        let _ = writeln!(
            t,
            "forwarding     {} pending{}, {} dead{}",
            f.pending,
            f.oldest_pending_age_seconds
                .map(|age| format!(" (the oldest waits {})", duration_ms(age * 1000)))
                .unwrap_or_default(),
            f.dead,
            f.newest_dead_reason
                .as_deref()
                .map(|r| format!(": newest reason {}", line(r)))
                .unwrap_or_default()
        );
    }
    if let Some(tokens) = status.page_tokens.as_ref().filter(|t| !t.is_empty()) {
        let _ = writeln!(t, "page tokens    (as the last backfill run found them)");
        for token in tokens {
            let h = &token.health;
            let expiry = h
                .expires_at
                .and_then(|at| time::OffsetDateTime::from_unix_timestamp(at).ok())
                .map(|at| format!(", expires {}", leadpipe_core::record::contract_time(at)))
                .unwrap_or_default();
            let _ = writeln!(
                t,
                "  {:<20} {}{expiry} (checked {})",
                line(&h.page_id),
                h.state.as_str(),
                h.checked_at
            );
            if let Some(reason) = &h.reason {
                let _ = writeln!(t, "  {:<20} {}", "", line(&clip(reason, 56)));
            }
        }
    }
    if let Some(stages) = status
        .stages
        .as_ref()
        .filter(|s| s.queued + s.sent > 0 || !s.refused.is_empty())
    {
        let refused: u64 = stages.refused.iter().map(|g| g.count).sum();
        let _ = writeln!(
            t,
            "stages         {} queued, {} sent to Meta, {refused} refused",
            stages.queued, stages.sent
        );
        for g in &stages.refused {
            let _ = writeln!(t, "  {:<12} {:>6}", line(&g.reason_class), g.count);
            let _ = writeln!(
                t,
                "  {:<12} newest: {}",
                "",
                line(&clip(&g.newest_reason, 60))
            );
        }
    }
    for d in status.destinations.iter().flatten() {
        let _ = writeln!(
            t,
            "destination    {:<14} {} pending, {} delivered, {} dead{}",
            line(&clip(&d.name, 14)),
            d.pending,
            d.delivered,
            d.dead,
            d.paused_until
                .as_ref()
                .map(|u| format!(", paused until {u}"))
                .unwrap_or_default()
        );
        if let (Some(class), Some(reason)) = (&d.newest_dead_class, &d.newest_dead_reason) {
            let _ = writeln!(
                t,
                "  {:<12} newest: {}",
                line(class),
                line(&clip(reason, 60))
            );
        }
    }
    if status.needs_a_person.is_empty() {
        let _ = writeln!(t, "verdict: ok");
    }
    for need in &status.needs_a_person {
        let _ = writeln!(t, "needs a person: {}", line(&advice(*need, status, fix)));
    }
    t
}

/// `text` cut to `max` characters with an ellipsis: a table line stays within 80 columns.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}
