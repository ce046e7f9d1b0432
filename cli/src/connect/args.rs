//! `leadpipe connect`'s flags.

use std::path::PathBuf;

/// Arguments of `leadpipe connect`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("secret").required(true).args(["secret_file", "secret_arn"])))]
pub struct ConnectArgs {
    /// The Meta app's id.
    #[arg(long, required_unless_present = "dataset")]
    pub app_id: Option<String>,
    /// Only the Conversions API dataset (docs/stages.md): check that the token in
    /// LEADPIPE_CONVERSIONS_TOKEN writes to it (its name is read) and store the token.
    #[arg(long, conflicts_with_all = ["pages", "test_lead", "callback_url"])]
    pub dataset: Option<String>,
    /// The local secret file to merge into (created 0600 when absent).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// The stack's Secrets Manager secret to merge into (`PutSecretValue`).
    #[arg(long)]
    pub secret_arn: Option<String>,
    /// Only these pages (repeat for several; default: every page the token's user manages).
    #[arg(long = "page")]
    pub pages: Vec<String>,
    /// Subscribe the app's webhook to this URL (Meta calls it at once with a challenge).
    #[arg(long)]
    pub callback_url: Option<String>,
    /// Create a test lead on an active form, wait until it is stored, then delete it at Meta.
    #[arg(long)]
    pub test_lead: bool,
    /// The local SQLite file `serve` stores leads in: where --test-lead waits for its lead,
    /// and where the fixed pages' `token` and `permission` dead letters are brought back.
    #[arg(long, conflicts_with_all = ["leads_table", "stack"])]
    pub db: Option<PathBuf>,
    /// The deployed stack: the fixed pages' `token` and `permission` dead letters in its DLQ
    /// are sent back to its queue.
    #[arg(long)]
    pub stack: Option<String>,
    /// With --test-lead: the stack's DynamoDB leads table.
    #[arg(long, requires = "test_lead")]
    pub leads_table: Option<String>,
    /// With --test-lead: how long to wait for it to be stored.
    #[arg(long, default_value_t = 120)]
    pub wait_seconds: u64,
    /// A file holding the person's token (else LEADPIPE_USER_TOKEN; never a flag value,
    /// which would stay in the shell's history).
    #[arg(long)]
    pub user_token_file: Option<PathBuf>,
    /// Do every read, print what would be written or subscribed, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}
