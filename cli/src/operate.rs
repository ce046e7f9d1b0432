//! The operator's commands that work the same on the local file and on the deployed stack
//! (docs/operate.md): `forget` (erasure: GDPR, LGPD, CCPA) and `redrive`. Output is ids and
//! counts only; `--json` for scripts.

use crate::CliError;
use leadpipe_aws::operate as aws_ops;
use leadpipe_core::dead_letter::DeadLetterClass;
use leadpipe_core::privacy::LeadPolicy;
use leadpipe_local::LocalDb;
use secrecy::SecretString;
use std::path::PathBuf;

/// Where the command acts: the local file, or the stack's resources.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// The local SQLite file.
    #[arg(long, conflicts_with_all = ["stack", "leads_table", "queue_url", "dlq_url", "state_table"])]
    pub db: Option<PathBuf>,
    /// The deployed stack: its outputs name the table and queues (CloudFormation DescribeStacks).
    #[arg(long)]
    pub stack: Option<String>,
    /// The leads table (instead of, or over, --stack's).
    #[arg(long)]
    pub leads_table: Option<String>,
    /// The lead events queue.
    #[arg(long)]
    pub queue_url: Option<String>,
    /// The dead-letter queue.
    #[arg(long)]
    pub dlq_url: Option<String>,
    /// The state table (checkpoints).
    #[arg(long)]
    pub state_table: Option<String>,
}

/// The stack's resources a command can use.
pub use leadpipe_aws::stack::StackNames as AwsNames;

/// Where a command acts, resolved.
pub enum Target {
    /// The SQLite file.
    Local(PathBuf),
    /// The stack, with the SDK's configuration.
    Aws(Box<aws_config::SdkConfig>, AwsNames),
}

impl TargetArgs {
    /// Reads `--stack`'s outputs (explicit names win) or takes `--db`.
    pub async fn resolve(&self) -> Result<Target, CliError> {
        if let Some(db) = &self.db {
            if !db.exists() {
                return Err(CliError::Settings(format!(
                    "{} does not exist",
                    db.display()
                )));
            }
            return Ok(Target::Local(db.clone()));
        }
        // Said before any AWS lookup: without a target there is nothing to ask AWS.
        if self.stack.is_none()
            && [
                &self.leads_table,
                &self.queue_url,
                &self.dlq_url,
                &self.state_table,
            ]
            .iter()
            .all(|n| n.is_none())
        {
            return Err(CliError::Settings(
                "say where: --db PATH for the local file, or --stack NAME (or --leads-table, --queue-url, --dlq-url, --state-table) for the deployed stack".into(),
            ));
        }
        let config = leadpipe_aws::sdk_config().await;
        let names = AwsNames {
            leads_table: self.leads_table.clone(),
            queue_url: self.queue_url.clone(),
            dlq_url: self.dlq_url.clone(),
            state_table: self.state_table.clone(),
            secret_arn: None,
            stages_queue_url: None,
            stages_dlq_url: None,
            destinations_queue_url: None,
            destinations_dlq_url: None,
        }
        .over_stack(&config, self.stack.as_deref())
        .await
        .map_err(|e| CliError::Unreachable(e.to_string()))?;
        Ok(Target::Aws(Box::new(config), names))
    }
}

fn need<'a>(name: &'a Option<String>, what: &str, flag: &str) -> Result<&'a str, CliError> {
    name.as_deref()
        .ok_or_else(|| CliError::Settings(format!("{what} is not known: give {flag} or --stack")))
}

// ---- forget ------------------------------------------------------------------------------

/// Arguments of `leadpipe forget`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["lead", "email", "phone"])))]
pub struct ForgetArgs {
    /// Where.
    #[command(flatten)]
    pub target: TargetArgs,
    /// The lead's id.
    #[arg(long)]
    pub lead: Option<String>,
    /// Every lead whose first email is this (as normalised: trimmed, lower case).
    #[arg(long)]
    pub email: Option<String>,
    /// Every lead whose first phone number is this, however written: `+1 (555) 123-4567`,
    /// or `555-123-4567` read in the country of each form the catalog knows.
    #[arg(long)]
    pub phone: Option<String>,
    /// Also read a --phone written without + as a number of this country (ISO 3166 code,
    /// e.g. US; repeatable).
    #[arg(long, requires = "phone", value_name = "CC")]
    pub country: Vec<String>,
    /// Where the lookup key is.
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Say what would be erased; erase nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Where the secret holding `lookup_key` is.
#[derive(Debug, Clone, clap::Args)]
pub struct SecretArgs {
    /// The secret holding lookup_key (a file; else --secret-arn, the stack's, or LOOKUP_KEY).
    #[arg(long, env = "LEADPIPE_SECRET_FILE", hide_env_values = true)]
    pub secret_file: Option<PathBuf>,
    /// The secret holding lookup_key, in Secrets Manager.
    #[arg(long)]
    pub secret_arn: Option<String>,
}

/// The lookup key, from the secret (file, ARN, the stack's) or `LOOKUP_KEY`.
async fn lookup_policy(
    args: &SecretArgs,
    names: Option<&AwsNames>,
) -> Result<LeadPolicy, CliError> {
    let key: Option<SecretString> = if let Some(path) = &args.secret_file {
        crate::load_secrets(Some(path))?.lookup_key
    } else if let Some(arn) = args
        .secret_arn
        .clone()
        .or_else(|| names.and_then(|n| n.secret_arn.clone()))
    {
        let config = leadpipe_aws::sdk_config().await;
        let source = leadpipe_core::settings::SecretSource::SecretsManager { arn };
        leadpipe_aws::load_secrets(&config, &source)
            .await?
            .lookup_key
    } else {
        leadpipe_core::settings::Env::process()
            .optional("LOOKUP_KEY")
            .map(SecretString::from)
    };
    if key.is_none() {
        return Err(CliError::Settings(
            "no lookup_key: --email and --phone need the secret's lookup_key (give --secret-file, --secret-arn or --stack; `leadpipe connect` adds one). Leads stored without one can be forgotten by --lead only".into(),
        ));
    }
    Ok(LeadPolicy::new(key, 0))
}

/// Erases the person's leads everywhere leadpipe keeps them: core's
/// `leadpipe_core::erasure::forget` over the local file or the stack.
pub async fn forget(args: ForgetArgs) -> Result<(), CliError> {
    use leadpipe_core::erasure::{self, ForgetError, Who};
    let target = args.target.resolve().await?;
    let names = match &target {
        Target::Aws(_, names) => Some(names.clone()),
        Target::Local(_) => None,
    };
    let who = match (&args.lead, &args.email, &args.phone) {
        (Some(id), _, _) => Who::Lead(id.clone()),
        (None, Some(email), _) => Who::Email(email.clone()),
        (None, None, Some(phone)) => Who::Phone {
            number: phone.clone(),
            countries: args.country.clone(),
        },
        (None, None, None) => {
            return Err(CliError::Settings("give --lead, --email or --phone".into()));
        }
    };
    let policy = match who {
        // Checked first, so a bad id is said before any secret is read.
        Who::Lead(ref id) if !erasure::is_lead_id(id) => {
            return Err(CliError::Settings(ForgetError::NotALeadId.to_string()));
        }
        Who::Lead(_) => LeadPolicy::default(),
        _ => lookup_policy(&args.secret, names.as_ref()).await?,
    };
    let asked = |e: ForgetError| match e {
        ForgetError::Store(e) => CliError::Store(e),
        other => CliError::Settings(other.to_string()),
    };
    let (report, fix) = match target {
        Target::Local(path) => {
            let db = open_local(&path, args.dry_run)?;
            (
                erasure::forget(&db, &policy, &who, args.dry_run)
                    .await
                    .map_err(asked)?,
                "with the same --db and secret",
            )
        }
        Target::Aws(config, names) => {
            let table = need(&names.leads_table, "the leads table", "--leads-table")?;
            let stack = aws_ops::StackEraser {
                ddb: leadpipe_aws::DynamoClient::new(&config),
                sqs: leadpipe_aws::SqsClient::new(&config),
                table: table.to_owned(),
                dlq_url: names.dlq_url.clone(),
                destinations_dlq_url: names.destinations_dlq_url.clone(),
                state_table: names.state_table.clone(),
            };
            (
                erasure::forget(&stack, &policy, &who, args.dry_run)
                    .await
                    .map_err(asked)?,
                "with the same target",
            )
        }
    };
    // The erasure record: ids and counts, never the address or number asked for.
    tracing::warn!(
        target: "leadpipe::erasure",
        dry_run = report.dry_run,
        found_by = report.found_by.as_str(),
        lead_ids = ?report.lead_ids,
        leads = report.leads,
        outbox = report.outbox,
        dead_letters = report.dead_letters,
        queued = report.queued,
        stages = report.stages,
        "erasure"
    );
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        let verb = if args.dry_run {
            "would forget"
        } else {
            "forgot"
        };
        println!(
            "{verb} {} lead(s) found by {}: {}",
            report.leads,
            report.found_by.as_str(),
            if report.lead_ids.is_empty() {
                "none".to_owned()
            } else {
                report.lead_ids.join(", ")
            }
        );
        println!(
            "  leads {}, forwarding outbox {}, dead letters {}, queued messages {}, stages {}",
            report.leads, report.outbox, report.dead_letters, report.queued, report.stages
        );
        match (report.found_by, report.unsearchable) {
            (erasure::FoundBy::LeadId, _) | (_, Some(0)) => {}
            (_, Some(n)) => println!(
                "  warning: {n} stored lead(s) have no lookup key and cannot be found this way: run `leadpipe lookup-keys` {fix}, then forget again"
            ),
            (_, None) => println!(
                "  note: leads stored before the secret had a lookup_key cannot be found this way: `leadpipe lookup-keys --dry-run` {fix} counts them (a scan)"
            ),
        }
    }
    if report.may_be_incomplete() {
        return Err(CliError::Failed(
            "some leads could not be searched: the erasure may be incomplete (see above)".into(),
        ));
    }
    Ok(())
}

/// The local file for a command that changes it, or only reads it on a dry run; refused,
/// untouched, when it is not leadpipe's.
fn open_local(path: &std::path::Path, dry_run: bool) -> Result<LocalDb, CliError> {
    Ok(if dry_run {
        LocalDb::open_existing_read_only(path)?
    } else {
        LocalDb::open_existing(path)?
    })
}

// ---- redrive -----------------------------------------------------------------------------

/// A dead-letter class as a flag's value: clap offers core's one list
/// (`DeadLetterClass::ALL`), the list `status` prints from, so the two cannot drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassArg(pub DeadLetterClass);

static CLASS_ARGS: std::sync::LazyLock<Vec<ClassArg>> =
    std::sync::LazyLock::new(|| DeadLetterClass::ALL.map(ClassArg).to_vec());

impl clap::ValueEnum for ClassArg {
    fn value_variants<'a>() -> &'a [Self] {
        &CLASS_ARGS
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.0.as_str()))
    }
}

/// Arguments of `leadpipe redrive`.
#[derive(Debug, clap::Args)]
pub struct RedriveArgs {
    /// Where.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Only dead letters of this class (every class `status` prints).
    #[arg(long, value_enum)]
    pub reason_class: Option<ClassArg>,
    /// Count what would move; move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The dead letters of a target, for core's `redrive`.
pub enum Piles {
    /// The SQLite file.
    Local(LocalDb),
    /// The stack's DLQs.
    Stack(leadpipe_aws::operate::StackDeadLetters),
}

impl leadpipe_core::redrive::DeadLetterPiles for Piles {
    async fn move_back(
        &self,
        pile: leadpipe_core::redrive::Pile,
        pick: &leadpipe_core::redrive::Pick<'_>,
        dry_run: bool,
    ) -> Result<leadpipe_core::redrive::Moved, leadpipe_core::ports::Cause> {
        match self {
            Piles::Local(db) => db.move_back(pile, pick, dry_run).await,
            Piles::Stack(stack) => stack.move_back(pile, pick, dry_run).await,
        }
    }
}

impl Piles {
    /// The target's piles; on the stack its lead queue and DLQ must be known, the stage
    /// queue's pair is used when the stack has one.
    pub fn of(target: Target, dry_run: bool) -> Result<Self, CliError> {
        Ok(match target {
            Target::Local(path) => Piles::Local(open_local(&path, dry_run)?),
            Target::Aws(config, names) => {
                let dlq = need(&names.dlq_url, "the dead-letter queue", "--dlq-url")?;
                let queue = need(&names.queue_url, "the lead events queue", "--queue-url")?;
                Piles::Stack(leadpipe_aws::operate::StackDeadLetters {
                    sqs: leadpipe_aws::SqsClient::new(&config),
                    leads: Some((dlq.to_owned(), queue.to_owned())),
                    stages: names
                        .stages_dlq_url
                        .clone()
                        .zip(names.stages_queue_url.clone()),
                    destinations: names
                        .destinations_dlq_url
                        .clone()
                        .zip(names.destinations_queue_url.clone()),
                })
            }
        })
    }
}

/// `redrive`'s failure as the CLI's: a pile that could not be reached, with what moved.
pub fn redrive_failed(err: leadpipe_core::redrive::RedriveError) -> CliError {
    let done = &err.done;
    CliError::Unreachable(format!(
        "{err}; moved before it: {} lead, {} forwarding, {} stage dead letter(s)",
        done.leads.moved, done.forwards.moved, done.stages.moved
    ))
}

/// Moves dead letters back to the queue (and forwarding's back to the outbox, the stages'
/// to the stage queue): core's `redrive`, rendered.
pub async fn redrive(args: RedriveArgs) -> Result<(), CliError> {
    let piles = Piles::of(args.target.resolve().await?, args.dry_run)?;
    let pick = leadpipe_core::redrive::Pick::of(args.reason_class.map(|c| c.0));
    let report = leadpipe_core::redrive::redrive(&piles, pick, args.dry_run)
        .await
        .map_err(redrive_failed)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        let verb = if args.dry_run { "would move" } else { "moved" };
        println!(
            "{verb} {} dead letter(s) back to the queue; {} left in the DLQ",
            report.leads.moved,
            report.left()
        );
        if report.forwards.moved > 0 {
            println!(
                "{verb} {} forwarding dead letter(s) back to the outbox",
                report.forwards.moved
            );
        }
        if report.stages.moved > 0 {
            println!(
                "{verb} {} refused stage(s) back to the stage queue",
                report.stages.moved
            );
        }
        if report.destinations.moved > 0 {
            println!(
                "{verb} {} destination dead letter(s) back to their destinations",
                report.destinations.moved
            );
        }
    }
    if report.failed() > 0 {
        return Err(CliError::Failed(format!(
            "{} dead letter(s) could not be sent back; they are still in the DLQ: run redrive again",
            report.failed()
        )));
    }
    Ok(())
}

// ---- lookup-keys -------------------------------------------------------------------------

/// Arguments of `leadpipe lookup-keys`.
#[derive(Debug, clap::Args)]
pub struct LookupKeysArgs {
    /// Where.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Where the lookup key is.
    #[command(flatten)]
    pub secret: SecretArgs,
    /// On the stack: go on after this lead id (the last one an interrupted run named).
    #[arg(long)]
    pub after: Option<String>,
    /// Count the leads without a key; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Adds lookup keys to leads stored before the secret had a `lookup_key`, so `forget
/// --email/--phone` finds them. Resumable: it sets only missing keys.
pub async fn lookup_keys(args: LookupKeysArgs) -> Result<(), CliError> {
    let target = args.target.resolve().await?;
    let names = match &target {
        Target::Aws(_, names) => Some(names.clone()),
        Target::Local(_) => None,
    };
    let policy = lookup_policy(&args.secret, names.as_ref()).await?;
    let (keyed, scanned) = match target {
        Target::Local(path) => {
            let db = open_local(&path, args.dry_run)?;
            let keyed = if args.dry_run {
                db.unkeyed_leads()? as usize
            } else {
                db.add_lookup_keys(&policy, 500)?
            };
            (keyed, None)
        }
        Target::Aws(config, names) => {
            let table = need(&names.leads_table, "the leads table", "--leads-table")?;
            let ddb = leadpipe_aws::DynamoClient::new(&config);
            match aws_ops::add_lookup_keys(
                &ddb,
                table,
                &policy,
                args.after.as_deref(),
                args.dry_run,
            )
            .await
            {
                Ok(done) => (done.keyed, Some(done.scanned)),
                Err((err, done)) => {
                    return Err(CliError::Unreachable(format!(
                        "{err}; {} lead(s) keyed so far{}",
                        done.keyed,
                        done.last
                            .map(|id| format!(": run again with --after {id} to go on"))
                            .unwrap_or_default()
                    )));
                }
            }
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({"dry_run": args.dry_run, "keyed": keyed, "scanned": scanned})
        );
    } else {
        let verb = if args.dry_run { "would add" } else { "added" };
        println!("{verb} lookup keys to {keyed} lead(s)");
    }
    Ok(())
}
