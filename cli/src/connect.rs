//! `leadpipe connect`: from a person's token to subscribed pages, a written secret and a test
//! lead seen arriving (docs/connect.md). Each step prints a line with ✔ or ✘ and, for ✘,
//! what to do, in Meta's own words where Meta gave them. No token is printed: a token is
//! shown by its last four characters only, where a person needs to tell two apart.

use crate::CliError;
use futures::TryStreamExt;
use leadpipe_core::secrets::AppSecrets;
use leadpipe_core::settings::Env;
use leadpipe_graph::{GraphClient, GraphError, PageAccount, TokenInfo, how_to_grant};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Every item of a paged edge, page after page.
trait AllItems<T> {
    async fn all_items(self) -> Result<Vec<T>, GraphError>;
}

impl<T, S> AllItems<T> for S
where
    S: futures::Stream<Item = Result<leadpipe_graph::Page<T>, GraphError>>,
{
    async fn all_items(self) -> Result<Vec<T>, GraphError> {
        let mut all = Vec::new();
        let mut pages = std::pin::pin!(self);
        while let Some(page) = pages.try_next().await? {
            all.extend(page.items);
        }
        Ok(all)
    }
}

/// A user token expiring sooner than this is exchanged for a long-lived one.
const EXCHANGE_BELOW: Duration = Duration::from_secs(7 * 86_400);

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

/// One step's line. Its text may carry what Graph said (page names, Meta's messages): it
/// is shown with control characters escaped, so it cannot forge or hide a line.
pub(crate) fn ok(text: impl std::fmt::Display) {
    println!("✔ {}", shown(text));
}
pub(crate) fn fail(text: impl std::fmt::Display) {
    println!("✘ {}", shown(text));
}
fn note(text: impl std::fmt::Display) {
    println!("  {}", shown(text));
}
fn shown(text: impl std::fmt::Display) -> String {
    crate::render::outside_text(&text.to_string(), 2000)
}

/// The last four characters of a token, for telling tokens apart.
pub fn tail(token: &SecretString) -> String {
    let text = token.expose_secret();
    let chars: Vec<char> = text.chars().collect();
    if chars.len() < 12 {
        return "…".to_owned();
    }
    format!("…{}", chars[chars.len() - 4..].iter().collect::<String>())
}

pub(crate) fn when(unix: Option<i64>) -> String {
    match unix {
        None | Some(0) => "never expires".to_owned(),
        Some(at) => match OffsetDateTime::from_unix_timestamp(at) {
            Ok(t) => format!("expires {}", leadpipe_core::record::contract_time(t)),
            Err(_) => format!("expires at unix {at}"),
        },
    }
}

/// Where the secret lives.
enum SecretPlace {
    File(PathBuf),
    SecretsManager {
        client: leadpipe_aws::SecretsClient,
        arn: String,
    },
}

impl SecretPlace {
    async fn from_args(args: &ConnectArgs) -> Result<Self, CliError> {
        match (&args.secret_file, &args.secret_arn) {
            (Some(path), _) => Ok(Self::File(path.clone())),
            (None, Some(arn)) => {
                let config = leadpipe_aws::sdk_config().await;
                Ok(Self::SecretsManager {
                    client: leadpipe_aws::SecretsClient::new(&config),
                    arn: arn.clone(),
                })
            }
            (None, None) => Err(CliError::Settings(
                "give --secret-file PATH or --secret-arn ARN".into(),
            )),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::SecretsManager { arn, .. } => arn.clone(),
        }
    }

    /// The secret's JSON object as stored (unknown keys kept), or empty when there is none.
    async fn read(&self) -> Result<Map<String, Value>, CliError> {
        let text = match self {
            Self::File(path) => match crate::read_small_file(path, crate::MAX_SECRET_FILE_BYTES) {
                Ok(text) => Some(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(CliError::Settings(format!(
                        "the secret file {} cannot be read: {e}",
                        path.display()
                    )));
                }
            },
            Self::SecretsManager { client, arn } => {
                leadpipe_aws::secrets::read_secret_string(client, arn).await?
            }
        };
        match text.as_deref().map(str::trim) {
            None | Some("") => Ok(Map::new()),
            // serde's message may quote the text: name the place only.
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => Ok(map),
                _ => Err(CliError::Settings(format!(
                    "the secret at {} is not a JSON object",
                    self.describe()
                ))),
            },
        }
    }

    /// Reads the secret as it is now, applies `merge`, writes the result, with no other
    /// writer in between: a file under an exclusive lock (a `.NAME.lock` beside it, held
    /// from the read to the rename), Secrets Manager by its version (read and merged again
    /// while the version changed under the merge; this narrows the race, it cannot close
    /// it: Secrets Manager has no conditional write).
    async fn update<T>(
        &self,
        mut merge: impl FnMut(&mut Map<String, Value>) -> Result<T, CliError>,
    ) -> Result<T, CliError> {
        match self {
            Self::File(path) => {
                let target = through_link(path);
                let _lock = lock_beside(&target).map_err(|e| {
                    CliError::Settings(format!(
                        "the secret file {} cannot be locked: {e}",
                        path.display()
                    ))
                })?;
                let mut secret = self.read().await?;
                let merged = merge(&mut secret)?;
                crate::write_private(&target, &encode(&secret)?).map_err(|e| {
                    CliError::Settings(format!(
                        "the secret file {} cannot be written: {e}",
                        path.display()
                    ))
                })?;
                Ok(merged)
            }
            Self::SecretsManager { client, arn } => {
                for _ in 0..5 {
                    let before = leadpipe_aws::secrets::current_version(client, arn).await?;
                    let mut secret = self.read().await?;
                    let merged = merge(&mut secret)?;
                    if leadpipe_aws::secrets::current_version(client, arn).await? != before {
                        continue;
                    }
                    leadpipe_aws::secrets::put_secret_string(client, arn, &encode(&secret)?)
                        .await?;
                    return Ok(merged);
                }
                Err(CliError::Failed(format!(
                    "the secret {arn} kept changing while connect merged into it (another connect?): run connect again"
                )))
            }
        }
    }
}

fn encode(secret: &Map<String, Value>) -> Result<String, CliError> {
    serde_json::to_string_pretty(secret)
        .map_err(|e| CliError::Settings(format!("the secret could not be encoded: {e}")))
}

/// Where a write to `path` lands: through a symbolic link to the file it names (so a
/// secret file that is a link, as a mounted secret often is, stays a link and its target
/// is updated), else `path` itself.
fn through_link(path: &Path) -> std::path::PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

/// An exclusive lock on `.NAME.lock` beside `path`, held while the returned file lives.
fn lock_beside(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "secret".into());
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(format!(".{name}.lock")))?;
    lock.lock()?;
    Ok(lock)
}

/// `bytes` random bytes from the operating system, hex-encoded.
fn random_hex(bytes: usize) -> Result<String, CliError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)
        .map_err(|e| CliError::Settings(format!("no randomness from the system: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn string_of(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The person's token: `--user-token-file` or `LEADPIPE_USER_TOKEN`.
fn user_token(args: &ConnectArgs) -> Result<SecretString, CliError> {
    if let Some(path) = &args.user_token_file {
        let text = crate::read_small_file(path, 64 * 1024).map_err(|e| {
            CliError::Settings(format!(
                "the token file {} cannot be read: {e}",
                path.display()
            ))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(CliError::Settings(format!(
                "the token file {} is empty",
                path.display()
            )));
        }
        return Ok(SecretString::from(token.to_owned()));
    }
    Env::process()
        .optional("LEADPIPE_USER_TOKEN")
        .map(|t| SecretString::from(t.trim().to_owned()))
        .ok_or_else(|| {
            CliError::Settings(
                "no token: set LEADPIPE_USER_TOKEN or give --user-token-file PATH (a user token from Graph API Explorer or your login flow, or a system user's token)".into(),
            )
        })
}

/// What connect (or doctor) found and did for one page; the final table's row.
#[derive(Debug, Default)]
pub(crate) struct PageRow {
    pub id: String,
    pub name: String,
    pub subscribed: Option<bool>,
    pub lead_access: Option<bool>,
    pub forms: usize,
    pub active_forms: Vec<String>,
    pub leads: i64,
    pub token_expiry: String,
    pub token: Option<SecretString>,
    /// Which way the page was found (the person's own pages, or a business's).
    pub found: String,
}

impl PageRow {
    pub(crate) fn ready(&self) -> bool {
        self.subscribed == Some(true) && self.lead_access == Some(true)
    }
}

fn yes_no(value: Option<bool>, dry_run: bool) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) if dry_run => "not yet",
        Some(false) => "NO",
        None => "unknown",
    }
}

/// Runs every step, prints the table and the verdict; fails when a page needs a person.
pub async fn run(args: ConnectArgs) -> Result<(), CliError> {
    if let Some(dataset) = &args.dataset {
        return connect_dataset(&args, dataset).await;
    }
    let app_id = args.app_id.clone().unwrap_or_default();
    let place = SecretPlace::from_args(&args).await?;
    let mut secret = place.read().await?;
    let app_secret = match string_of(&secret, "app_secret") {
        Some(s) => SecretString::from(s),
        None => Env::process()
            .optional("APP_SECRET")
            .map(SecretString::from)
            .ok_or_else(|| {
                CliError::Settings(format!(
                    "no app secret: put app_secret in {} or set APP_SECRET (App settings > Basic in Meta's dashboard)",
                    place.describe()
                ))
            })?,
    };
    let person = user_token(&args)?;
    let env = Env::process();
    let placeholder = AppSecrets {
        app_secret: app_secret.clone(),
        verify_token: None,
        lookup_key: None,
        conversions_token: None,
        stage_keys: Vec::new(),
        access_token: None,
        page_tokens: Default::default(),
    };
    let client = GraphClient::new(leadpipe_graph_source::graph_config(&env, &placeholder)?)?;
    let app_token = SecretString::from(format!("{}|{}", app_id, app_secret.expose_secret()));
    if args.dry_run {
        println!("dry run: reading only; nothing is written, subscribed or created");
    }
    let mut problems = 0usize;

    // 1. The token.
    let info = match client.debug_token(&app_token, &person).await {
        Ok(info) => info,
        Err(e) => {
            fail(format!("the token could not be checked: {e}"));
            if e.status.is_none() {
                // No answer at all: a network problem, not a wrong app id.
                note(
                    "Graph could not be reached: check this machine's network and proxy (and GRAPH_API_BASE if set), then run connect again",
                );
            } else {
                note(
                    "check --app-id and the app secret (App settings > Basic), then run connect again",
                );
            }
            return Err(CliError::Failed(
                "verdict: the token could not be checked".into(),
            ));
        }
    };
    if !check_token(&info, Some(&app_id)) {
        return Err(CliError::Failed(
            "verdict: a new token is needed (see above)".into(),
        ));
    }
    let missing = info.missing_scopes();
    problems += report_scopes(&info);

    // 2. A long-lived token.
    let (long_lived, long_expiry) =
        match long_lived(&client, &args, &app_secret, &person, &info).await {
            Ok(pair) => pair,
            Err(e) => {
                fail(format!("the token could not be exchanged: {e}"));
                return Err(CliError::Failed(
                    "verdict: the token could not be made long-lived".into(),
                ));
            }
        };

    // 3. Pages.
    let accounts: Vec<PageAccount> = match client.my_accounts(&long_lived).all_items().await {
        Ok(accounts) => accounts,
        Err(e) => {
            fail(format!("the token's pages could not be listed: {e}"));
            if missing.contains(&"pages_show_list") {
                note("grant pages_show_list and issue a new token");
            }
            return Err(CliError::Failed(
                "verdict: no page could be read (see above)".into(),
            ));
        }
    };
    // An id goes into the secret's keys and into Graph paths: only a Graph id is taken.
    let (accounts, odd): (Vec<PageAccount>, Vec<PageAccount>) = accounts
        .into_iter()
        .partition(|a| a.id.bytes().all(|b| b.is_ascii_digit()) && (1..=32).contains(&a.id.len()));
    for account in &odd {
        problems += 1;
        fail(format!(
            "Graph listed a page whose id is not a Graph id ({}); it is left out",
            account.id
        ));
    }
    // 3b. Pages a person or system user reaches through a Business Manager.
    let mut found: std::collections::BTreeMap<String, String> = accounts
        .iter()
        .map(|a| {
            (
                a.id.clone(),
                "the person's own pages (/me/accounts)".to_owned(),
            )
        })
        .collect();
    let mut accounts = accounts;
    problems += business_accounts(
        &client,
        &long_lived,
        &info,
        &args.pages,
        &mut accounts,
        &mut found,
    )
    .await;
    ok(format!(
        "the token's user manages {} page(s)",
        accounts.len()
    ));
    if accounts.is_empty() {
        // Zero pages is never "ready": nothing would ever arrive.
        fail("the token sees no page: nothing can be connected");
        note(
            "the token's person needs a role on the page (Page settings > Page access: Facebook access with full control, or task access to leads), and the token must be issued with that page selected",
        );
        note(
            "pages held in a Business Manager are listed only to a person or system user with access there (Business settings > Accounts > Pages) and a token with business_management",
        );
        return Err(CliError::Failed(
            "verdict: the token sees no page (see above)".into(),
        ));
    }
    let mut rows = Vec::new();
    for wanted in &args.pages {
        if !accounts.iter().any(|a| &a.id == wanted) {
            problems += 1;
            fail(format!(
                "page {wanted} is not among them: the token's user needs a role on it (Page settings > Page access) and the token must include it"
            ));
        }
    }
    for account in accounts
        .into_iter()
        .filter(|a| args.pages.is_empty() || args.pages.contains(&a.id))
    {
        let expiry = match client.debug_token(&app_token, &account.access_token).await {
            Ok(page_info) if page_info.is_valid => when(page_info.expires_at),
            Ok(_) => "not valid".to_owned(),
            Err(_) => "unknown".to_owned(),
        };
        rows.push(PageRow {
            name: account.name.clone().unwrap_or_default(),
            id: account.id.clone(),
            token_expiry: expiry,
            token: Some(account.access_token.clone()),
            found: found.get(&account.id).cloned().unwrap_or_default(),
            ..PageRow::default()
        });
    }

    // 4. Per page: subscription, lead access, forms.
    for row in &mut rows {
        println!(
            "page {} ({})",
            crate::render::line(&row.id),
            crate::render::line(&row.name)
        );
        let Some(token) = row.token.clone() else {
            continue;
        };
        note(format!(
            "page token {} ({}), found through {}",
            tail(&token),
            row.token_expiry,
            row.found
        ));
        let subscribe = if args.dry_run {
            Subscribe::WouldInDryRun
        } else {
            Subscribe::Yes
        };
        page_steps(&client, subscribe, Some(&app_id), &info, &token, row).await;
        // A dry run subscribes nothing: only what a person must fix counts there.
        let needs_person = if args.dry_run {
            row.lead_access != Some(true)
        } else {
            !row.ready()
        };
        if needs_person {
            problems += 1;
        }
    }

    // 6. The secret, written before the app's subscription: Meta's challenge comes at once,
    // and the webhook answers it with the verify token it reads from here.
    let merged = if args.dry_run {
        merge_secret(&mut secret, &rows, &long_lived, &app_secret)
    } else {
        // Merged again into the secret as it is now, under a lock: another `connect` that
        // wrote meanwhile keeps its pages and tokens.
        place
            .update(|secret| merge_secret(secret, &rows, &long_lived, &app_secret))
            .await
    };
    let verify_token = match merged {
        Ok(merge) => {
            let line = format!(
                "{}: page_tokens for {} page(s) ({} new, {} kept from before), access_token {} ({long_expiry}), verify_token {}, lookup_key {}",
                place.describe(),
                rows.len(),
                merge.new_pages,
                merge.kept_pages,
                tail(&long_lived),
                if merge.verify_generated {
                    "generated"
                } else {
                    "kept"
                },
                if merge.lookup_generated {
                    "generated"
                } else {
                    "kept"
                },
            );
            if args.dry_run {
                ok(format!("would write the secret {line}"));
            } else {
                ok(format!("wrote the secret {line}"));
                if let SecretPlace::File(_) = place {
                    note("the file is readable by you only (0600)");
                } else {
                    note(
                        "warm functions read it at their next refused read (a new version is seen at once); new ones at start",
                    );
                }
            }
            merge.verify_token
        }
        Err(e) => return Err(e),
    };

    // 5. The app's webhook subscription.
    if let Some(callback) = &args.callback_url {
        if args.dry_run {
            ok(format!(
                "would subscribe app {} to pages' leadgen at {callback}",
                app_id
            ));
        } else {
            match client
                .subscribe_app(&app_token, &app_id, callback, &verify_token)
                .await
            {
                Ok(()) => ok(format!(
                    "app {} subscribed to pages' leadgen at {callback}: it answered Meta's challenge",
                    app_id
                )),
                Err(e) => {
                    problems += 1;
                    fail(format!("the app's webhook subscription failed: {e}"));
                    note(
                        "Meta calls the URL with a GET at once: is it reachable from the internet, serving leadpipe's webhook, with the verify_token just written?",
                    );
                }
            }
        }
    }

    // 7. Heal: what waited for these pages' token or access goes back to the queue.
    let fixed: std::collections::BTreeSet<String> = rows
        .iter()
        .filter(|r| r.lead_access == Some(true))
        .map(|r| r.id.clone())
        .collect();
    if !fixed.is_empty() && !heal(&args, &fixed).await {
        problems += 1;
    }

    // 8. A test lead.
    if args.test_lead {
        if args.dry_run {
            ok("would create a test lead and wait for it");
        } else if !test_lead(&client, &args, &rows).await {
            problems += 1;
        }
    }

    print_table(&rows, args.dry_run);
    if problems == 0 {
        println!(
            "verdict: {} {} page(s) subscribed and readable",
            if args.dry_run {
                "dry run ok:"
            } else {
                "ready:"
            },
            rows.iter().filter(|r| r.ready()).count()
        );
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "verdict: {problems} thing(s) need a person's action (✘ above); fix them and run connect again"
        )))
    }
}

/// Step 3b: the pages of every business the token can see (`owned_pages`, `client_pages`),
/// added to `accounts` when the person's own list lacks them, each with the way it was
/// found. A token without `business_management` is told what it misses; a business page
/// without a token for this person is a problem to fix in Business settings. Returns the
/// problems.
async fn business_accounts(
    client: &GraphClient,
    token: &SecretString,
    info: &TokenInfo,
    wanted: &[String],
    accounts: &mut Vec<PageAccount>,
    found: &mut std::collections::BTreeMap<String, String>,
) -> usize {
    use futures::TryStreamExt;
    use leadpipe_graph::BusinessEdge;
    let businesses: Vec<leadpipe_graph::Business> = match client
        .my_businesses(token)
        .try_collect::<Vec<_>>()
        .await
    {
        Ok(pages) => pages.into_iter().flat_map(|p| p.items).collect(),
        Err(e) => {
            if !info.scopes.iter().any(|s| s == "business_management") {
                note(
                    "pages held in a Business Manager are not listed: the token lacks business_management (grant it and issue a new token to connect them)",
                );
            } else {
                note(format!("the token's businesses could not be listed: {e}"));
            }
            return 0;
        }
    };
    let mut problems = 0;
    for business in &businesses {
        let name = business.name.clone().unwrap_or_else(|| business.id.clone());
        for edge in [BusinessEdge::Owned, BusinessEdge::Client] {
            let pages: Vec<leadpipe_graph::BusinessPage> = match client
                .business_pages(token, &business.id, edge)
                .try_collect::<Vec<_>>()
                .await
            {
                Ok(pages) => pages.into_iter().flat_map(|p| p.items).collect(),
                Err(e) => {
                    note(format!(
                        "business {name}'s {} could not be listed: {e}",
                        edge.as_str()
                    ));
                    continue;
                }
            };
            let how = match edge {
                BusinessEdge::Owned => "owned",
                BusinessEdge::Client => "a client's",
            };
            for page in pages {
                let valid_id = page.id.bytes().all(|b| b.is_ascii_digit())
                    && (1..=32).contains(&page.id.len());
                if !valid_id || found.contains_key(&page.id) {
                    continue;
                }
                let Some(page_token) = page.access_token else {
                    let line = format!(
                        "page {} ({how} page of business {name}) gives this token no page token: give the person or system user a task on it (Business settings > Accounts > Pages)",
                        page.id
                    );
                    // A page not asked for (`--page`) is worth a word, not a failed verdict.
                    if wanted.is_empty() || wanted.contains(&page.id) {
                        problems += 1;
                        fail(line);
                    } else {
                        note(line);
                    }
                    continue;
                };
                found.insert(page.id.clone(), format!("business {name} ({how} page)"));
                accounts.push(PageAccount {
                    id: page.id,
                    name: page.name,
                    access_token: page_token,
                    tasks: Vec::new(),
                });
            }
        }
    }
    if !businesses.is_empty() {
        ok(format!(
            "{} business(es) seen through business_management",
            businesses.len()
        ));
    }
    problems
}

/// Step 7: the `token` and `permission` dead letters of the pages just fixed go back to the
/// pipeline's queue (core's rule, `leadpipe_core::tokens::healed_by_connect`), locally with
/// `--db` and on the stack with `--stack`; a dry run counts them. False when it failed.
async fn heal(args: &ConnectArgs, fixed: &std::collections::BTreeSet<String>) -> bool {
    use crate::operate::{Piles, Target};
    let target = if let Some(path) = &args.db {
        if !path.exists() {
            note(format!(
                "{} does not exist yet: no dead letter to bring back",
                path.display()
            ));
            return true;
        }
        Target::Local(path.clone())
    } else if let Some(stack) = &args.stack {
        let config = leadpipe_aws::sdk_config().await;
        match crate::operate::AwsNames::default()
            .over_stack(&config, Some(stack))
            .await
        {
            Ok(names) => Target::Aws(Box::new(config), names),
            Err(e) => {
                fail(format!("the stack's queues could not be found: {e}"));
                return false;
            }
        }
    } else {
        note(
            "leads that waited as token or permission dead letters come back with `leadpipe redrive --reason-class token` (or give connect --db/--stack to do it)",
        );
        return true;
    };
    let piles = match Piles::of(target, args.dry_run) {
        Ok(piles) => piles,
        Err(e) => {
            fail(format!("the dead letters could not be reached: {e}"));
            return false;
        }
    };
    let pick = leadpipe_core::redrive::Pick::HealedPages(fixed);
    match leadpipe_core::redrive::redrive(&piles, pick, args.dry_run).await {
        Ok(report) if args.dry_run => ok(format!(
            "would bring back {} lead(s) of these pages that waited as token or permission dead letters",
            report.leads.moved
        )),
        Ok(report) => ok(format!(
            "brought back {} lead(s) of these pages that waited as token or permission dead letters; other pages' and classes' stay",
            report.leads.moved
        )),
        Err(e) => {
            fail(format!("the dead letters could not be brought back: {e}"));
            return false;
        }
    }
    true
}

/// Step 1's verdict: true when the token can be used at all (and, given `app_id`, is that
/// app's).
pub(crate) fn check_token(info: &TokenInfo, app_id: Option<&str>) -> bool {
    if !info.is_valid {
        let why = info
            .error
            .as_ref()
            .map(|e| {
                format!(
                    "{} (code {}{})",
                    e.message.as_deref().unwrap_or("Meta gave no reason"),
                    e.code.unwrap_or_default(),
                    e.subcode.map(|s| format!("/{s}")).unwrap_or_default()
                )
            })
            .unwrap_or_else(|| "Meta gave no reason".into());
        fail(format!("the token is not valid: {why}"));
        note(
            "issue a new one (Graph API Explorer, your login flow, or a system user in Business Settings) and run connect again",
        );
        return false;
    }
    if let (Some(owner), Some(app_id)) = (info.app_id.as_deref(), app_id)
        && owner != app_id
    {
        fail(format!(
            "the token belongs to app {owner}, not {app_id}: issue it for this app"
        ));
        return false;
    }
    ok(format!(
        "token valid: {} of user {}, {}, {} scope(s)",
        info.token_type.as_deref().unwrap_or("unknown type"),
        info.user_id.as_deref().unwrap_or("unknown"),
        when(info.expires_at),
        info.scopes.len()
    ));
    true
}

/// The scopes the token lacks, each with how to get it; returns the required ones missing.
pub(crate) fn report_scopes(info: &TokenInfo) -> usize {
    let missing = info.missing_scopes();
    for scope in &missing {
        fail(format!("the token lacks {scope}: {}", how_to_grant(scope)));
    }
    for (scope, gives) in info.missing_optional_scopes() {
        note(format!(
            "! the token lacks {scope} (optional: {gives}); {}",
            how_to_grant(scope)
        ));
    }
    missing.len()
}

/// Step 2: a short-lived user token is exchanged; a long-lived or system user's is kept.
async fn long_lived(
    client: &GraphClient,
    args: &ConnectArgs,
    app_secret: &SecretString,
    person: &SecretString,
    info: &TokenInfo,
) -> Result<(SecretString, String), GraphError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let expires_at = info.expires_at.unwrap_or_default();
    let is_user = info.token_type.as_deref() == Some("USER");
    let short = is_user && expires_at > 0 && expires_at - now < EXCHANGE_BELOW.as_secs() as i64;
    if !short {
        ok(format!(
            "kept the token {} as it is ({})",
            tail(person),
            when(info.expires_at)
        ));
        return Ok((person.clone(), when(info.expires_at)));
    }
    if args.dry_run {
        ok(format!(
            "would exchange the short-lived token {} ({}) for a long-lived one",
            tail(person),
            when(info.expires_at)
        ));
        return Ok((person.clone(), when(info.expires_at)));
    }
    let exchanged = client
        .exchange_token(
            args.app_id.as_deref().unwrap_or_default(),
            app_secret,
            person,
        )
        .await?;
    let expiry = when(exchanged.expires_in.map(|s| now + s));
    ok(format!(
        "exchanged the short-lived token {} ({}) for a long-lived one {} ({expiry})",
        tail(person),
        when(info.expires_at),
        tail(&exchanged.access_token)
    ));
    Ok((exchanged.access_token, expiry))
}

/// What step 4 does about a page the app is not subscribed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subscribe {
    /// Subscribe it (connect).
    Yes,
    /// Say it would (connect --dry-run).
    WouldInDryRun,
    /// Report it as a problem (doctor, which only reads).
    CheckOnly,
}

/// Step 4 for one page: subscribe it (or check), check lead access, list its forms.
pub(crate) async fn page_steps(
    client: &GraphClient,
    subscribe: Subscribe,
    app_id: Option<&str>,
    info: &TokenInfo,
    token: &SecretString,
    row: &mut PageRow,
) {
    let page = row.id.clone();
    let already = client
        .page_subscriptions(token, &page)
        .await
        .map(|apps| {
            apps.iter().any(|a| {
                app_id.is_none_or(|app| a.id.as_deref() == Some(app))
                    && a.subscribed_fields.iter().any(|f| f == "leadgen")
            })
        })
        .unwrap_or(false);
    if already {
        row.subscribed = Some(true);
        ok("the app gets this page's leadgen webhooks (subscribed)");
    } else if subscribe == Subscribe::WouldInDryRun {
        row.subscribed = Some(false);
        ok("would subscribe the app to this page's leadgen webhooks");
    } else if subscribe == Subscribe::CheckOnly {
        row.subscribed = Some(false);
        fail(format!(
            "the app does not get this page's leadgen webhooks: run `leadpipe connect` (or POST /{page}/subscribed_apps?subscribed_fields=leadgen)"
        ));
    } else {
        match client.subscribe_page(token, &page).await {
            Ok(()) => {
                row.subscribed = Some(true);
                ok("subscribed the app to this page's leadgen webhooks");
            }
            Err(e) => {
                row.subscribed = Some(false);
                fail(format!("subscribing the app to this page failed: {e}"));
                note("the token's user must be able to manage the page (pages_manage_metadata)");
            }
        }
    }
    match client
        .has_lead_access(
            token,
            &page,
            info.user_id.as_deref().unwrap_or_default(),
            app_id,
        )
        .await
    {
        Ok(access) if access.can_access_lead => {
            row.lead_access = Some(true);
            ok("lead access granted");
        }
        Ok(access) => {
            row.lead_access = Some(false);
            fail(format!(
                "no lead access: {}",
                access
                    .failure_reason
                    .as_deref()
                    .unwrap_or("Meta gave no reason")
            ));
            if let Some(fix) = &access.failure_resolution {
                note(format!("Meta says: {fix}"));
            }
        }
        Err(e) => {
            row.lead_access = Some(false);
            fail(format!("lead access could not be checked: {e}"));
        }
    }
    let forms: Result<Vec<leadpipe_graph::LeadgenForm>, GraphError> =
        client.leadgen_forms(token, &page).all_items().await;
    match forms {
        Ok(forms) => {
            row.forms = forms.len();
            row.leads = forms.iter().filter_map(|f| f.leads_count).sum();
            row.active_forms = forms
                .iter()
                .filter(|f| f.status.as_deref() == Some("ACTIVE"))
                .map(|f| f.id.clone())
                .collect();
            ok(format!(
                "{} form(s), {} active, {} lead(s) on them so far",
                row.forms,
                row.active_forms.len(),
                row.leads
            ));
            for form in &forms {
                note(format!(
                    "form {} {:?} {} ({} leads)",
                    form.id,
                    form.name.as_deref().unwrap_or(""),
                    form.status.as_deref().unwrap_or("?"),
                    form.leads_count
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "?".into())
                ));
            }
        }
        Err(e) => fail(format!("the page's forms could not be listed: {e}")),
    }
}

/// What [`merge_secret`] did.
struct Merge {
    new_pages: usize,
    kept_pages: usize,
    verify_generated: bool,
    lookup_generated: bool,
    verify_token: SecretString,
}

/// Step 6: `page_tokens` merged (pages from before kept unless replaced), `access_token`
/// set, `verify_token` and `lookup_key` kept or generated, `app_secret` kept (or set from
/// APP_SECRET). Every other key is left as it was.
/// `connect --dataset ID`: the dataset's token checked against it and stored, with a
/// stage key made when the secret has none (docs/stages.md). Prints no token or key.
async fn connect_dataset(args: &ConnectArgs, dataset: &str) -> Result<(), CliError> {
    if !leadpipe_core::ids::is_graph_id(dataset) {
        return Err(CliError::Settings(
            "--dataset must be the dataset's id (digits), from Events Manager".into(),
        ));
    }
    let token = Env::process()
        .optional("LEADPIPE_CONVERSIONS_TOKEN")
        .map(SecretString::from)
        .ok_or_else(|| {
            CliError::Settings(
                "set LEADPIPE_CONVERSIONS_TOKEN to the dataset's access token (Events Manager > the dataset > Settings > Generate access token)".into(),
            )
        })?;
    let place = SecretPlace::from_args(args).await?;
    if args.dry_run {
        println!("dry run: reading only; nothing is written");
    }
    let placeholder = AppSecrets {
        app_secret: SecretString::from(String::new()),
        verify_token: None,
        lookup_key: None,
        conversions_token: None,
        stage_keys: Vec::new(),
        access_token: None,
        page_tokens: Default::default(),
    };
    let config = leadpipe_graph_source::graph_config(&Env::process(), &placeholder)?;
    let client = leadpipe_graph_source::conversions_client(&config)?;
    match client.dataset_name(&token, dataset).await {
        Ok(name) => ok(format!(
            "dataset {dataset} (\"{}\"): the token {} reaches it",
            crate::render::line(&name),
            tail(&token)
        )),
        Err(e) => {
            fail(format!("the token cannot reach dataset {dataset}: {e}"));
            note(
                "generate a new token in the dataset's Settings (Events Manager), then run connect --dataset again",
            );
            return Err(CliError::Failed(
                "verdict: the dataset could not be reached with this token".into(),
            ));
        }
    }
    if args.dry_run {
        println!(
            "would store conversions_token ({}) in {}",
            tail(&token),
            place.describe()
        );
        return Ok(());
    }
    let made_key = place
        .update(|secret| {
            secret.insert("conversions_token".into(), json!(token.expose_secret()));
            let has_key = matches!(secret.get("stage_keys"), Some(Value::Array(keys)) if keys.iter().any(|k| k.as_str().is_some_and(|k| !k.is_empty())));
            if !has_key {
                secret.insert("stage_keys".into(), json!([random_hex(24)?]));
            }
            Ok(!has_key)
        })
        .await?;
    ok(format!("wrote conversions_token to {}", place.describe()));
    if made_key {
        ok(
            "made a stage key (stage_keys): CRMs send it as X-Leadpipe-Key to POST /stages; read it from the secret",
        );
    }
    println!(
        "next: set CONVERSIONS_DATASET_ID={dataset} (the stack parameter ConversionsDatasetId); stages refused `token` come back with `leadpipe redrive --reason-class token`"
    );
    Ok(())
}

fn merge_secret(
    secret: &mut Map<String, Value>,
    rows: &[PageRow],
    access_token: &SecretString,
    app_secret: &SecretString,
) -> Result<Merge, CliError> {
    if string_of(secret, "app_secret").is_none() {
        secret.insert("app_secret".into(), json!(app_secret.expose_secret()));
    }
    let mut tokens = match secret.remove("page_tokens") {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let mut new_pages = 0;
    for row in rows {
        if let Some(token) = &row.token {
            if !tokens.contains_key(&row.id) {
                new_pages += 1;
            }
            tokens.insert(row.id.clone(), json!(token.expose_secret()));
        }
    }
    let kept_pages = tokens.len() - rows.iter().filter(|r| r.token.is_some()).count();
    secret.insert("page_tokens".into(), Value::Object(tokens));
    secret.insert("access_token".into(), json!(access_token.expose_secret()));
    let verify_generated = string_of(secret, "verify_token").is_none();
    if verify_generated {
        secret.insert("verify_token".into(), json!(random_hex(20)?));
    }
    let lookup_generated = string_of(secret, "lookup_key").is_none();
    if lookup_generated {
        secret.insert("lookup_key".into(), json!(random_hex(32)?));
    }
    let verify_token = SecretString::from(string_of(secret, "verify_token").unwrap_or_default());
    Ok(Merge {
        new_pages,
        kept_pages,
        verify_generated,
        lookup_generated,
        verify_token,
    })
}

/// Where a test lead is looked for.
enum Store {
    /// `serve`'s file, opened once it exists (serve may create it while we wait).
    Local(PathBuf, Option<leadpipe_local::LocalDb>),
    Dynamo(leadpipe_aws::DynamoLeadStore),
}

impl Store {
    async fn ingested_at(&mut self, lead_id: &str) -> Result<Option<String>, String> {
        match self {
            Self::Local(path, db) => {
                if db.is_none() {
                    if !path.exists() {
                        return Ok(None);
                    }
                    *db = Some(
                        leadpipe_local::LocalDb::open_read_only(path).map_err(|e| e.to_string())?,
                    );
                }
                match db {
                    Some(db) => db.ingested_at(lead_id).map_err(|e| e.to_string()),
                    None => Ok(None),
                }
            }
            Self::Dynamo(store) => store.ingested_at(lead_id).await.map_err(|e| e.to_string()),
        }
    }
}

/// Step 7: a test lead on the first ready page's first active form, waited for in the
/// store, then deleted at Meta. True when it was seen stored.
async fn test_lead(client: &GraphClient, args: &ConnectArgs, rows: &[PageRow]) -> bool {
    let mut store = match (&args.db, &args.leads_table) {
        (Some(path), _) => Store::Local(path.clone(), None),
        (None, Some(table)) => {
            let config = leadpipe_aws::sdk_config().await;
            Store::Dynamo(leadpipe_aws::DynamoLeadStore::new(&config, table.clone()))
        }
        (None, None) => {
            fail(
                "--test-lead needs --db PATH (serve's file) or --leads-table NAME (the stack's table) to look for it",
            );
            return false;
        }
    };
    let Some((row, form)) = rows
        .iter()
        .filter(|r| r.ready())
        .find_map(|r| r.active_forms.first().map(|f| (r, f.clone())))
    else {
        fail("no test lead: no subscribed, readable page has an active form");
        return false;
    };
    let Some(token) = &row.token else {
        return false;
    };
    let created = Instant::now();
    let lead_id = match create_test_lead(client, token, &form).await {
        Ok(id) => id,
        Err(e) => {
            fail(format!(
                "the test lead could not be created on form {form}: {e}"
            ));
            return false;
        }
    };
    ok(format!(
        "created test lead {lead_id} on form {form} (page {}); waiting up to {} s for it to be stored",
        row.id, args.wait_seconds
    ));
    let deadline = created + Duration::from_secs(args.wait_seconds);
    let mut seen = None;
    let mut last_error = None;
    while Instant::now() < deadline {
        match store.ingested_at(&lead_id).await {
            Ok(Some(at)) => {
                seen = Some(at);
                break;
            }
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let observed = created.elapsed();
    // The store's ingested_at has whole seconds: the time is what this command saw.
    let stored = match &seen {
        Some(_) => {
            ok(format!(
                "test lead {lead_id} stored: in the store {:.1} s after it was created",
                observed.as_secs_f64()
            ));
            true
        }
        None => {
            fail(format!(
                "test lead {lead_id} was not stored within {} s{}",
                args.wait_seconds,
                last_error
                    .map(|e| format!(" (the store: {e})"))
                    .unwrap_or_default()
            ));
            note(
                "is the webhook running at the callback URL, subscribed (--callback-url), and can ingest read Graph? `leadpipe status` and the logs say more",
            );
            false
        }
    };
    match client.delete_node(token, &lead_id).await {
        Ok(()) => note(format!("deleted test lead {lead_id} at Meta")),
        Err(e) => fail(format!(
            "test lead {lead_id} could not be deleted at Meta: {e}"
        )),
    }
    stored
}

/// `POST /{form}/test_leads`; when Meta refuses because one exists already, that one is
/// deleted and the call made again.
async fn create_test_lead(
    client: &GraphClient,
    token: &SecretString,
    form: &str,
) -> Result<String, GraphError> {
    match client.create_test_lead(token, form, None).await {
        Ok(id) => Ok(id),
        Err(first) => {
            let existing: Vec<String> = client
                .test_leads(token, form)
                .all_items()
                .await
                .unwrap_or_default();
            if existing.is_empty() {
                return Err(first);
            }
            for id in &existing {
                client.delete_node(token, id).await?;
                note(format!(
                    "deleted the form's earlier test lead {id} (Meta allows one at a time)"
                ));
            }
            client.create_test_lead(token, form, None).await
        }
    }
}

pub(crate) fn print_table(rows: &[PageRow], dry_run: bool) {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    // The terminal's width, else 80 columns: long names wrap inside their cell.
    table.set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
    if table.width().is_none() {
        table.set_width(80);
    }
    table.set_header(["page", "name", "webhook", "leads", "forms", "token"]);
    for row in rows {
        table.add_row([
            crate::render::line(&row.id),
            crate::render::outside_text(&row.name, 40),
            yes_no(row.subscribed, dry_run).to_owned(),
            yes_no(row.lead_access, false).to_owned(),
            format!("{}, {} active", row.forms, row.active_forms.len()),
            row.token_expiry.clone(),
        ]);
    }
    // An id is never cut; a name wraps in its cell instead.
    if let Some(ids) = table.column_mut(0) {
        ids.set_constraint(comfy_table::ColumnConstraint::ContentWidth);
    }
    println!("{table}");
}
