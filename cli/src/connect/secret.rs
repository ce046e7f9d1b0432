//! Where connect writes: the secret's place (a local file or Secrets Manager), merged with
//! what it holds under a lock or a version check, written privately (0600, through a link);
//! and where it looks for the test lead (the SQLite file or the stack's table).

use super::args::ConnectArgs;
use crate::CliError;
use crate::report::PageRow;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

/// Where the secret lives.
pub(crate) enum SecretPlace {
    File(PathBuf),
    SecretsManager {
        client: leadpipe_aws::SecretsClient,
        arn: String,
    },
}

impl SecretPlace {
    pub(crate) async fn from_args(args: &ConnectArgs) -> Result<Self, CliError> {
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

    pub(crate) fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::SecretsManager { arn, .. } => arn.clone(),
        }
    }

    /// The secret's JSON object as stored (unknown keys kept), or empty when there is none.
    pub(crate) async fn read(&self) -> Result<Map<String, Value>, CliError> {
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
    pub(crate) async fn update<T>(
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

pub(crate) fn encode(secret: &Map<String, Value>) -> Result<String, CliError> {
    serde_json::to_string_pretty(secret)
        .map_err(|e| CliError::Settings(format!("the secret could not be encoded: {e}")))
}

/// Where a write to `path` lands: through a symbolic link to the file it names (so a
/// secret file that is a link, as a mounted secret often is, stays a link and its target
/// is updated), else `path` itself.
pub(crate) fn through_link(path: &Path) -> std::path::PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

/// An exclusive lock on `.NAME.lock` beside `path`, held while the returned file lives.
pub(crate) fn lock_beside(path: &Path) -> std::io::Result<std::fs::File> {
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
pub(crate) fn random_hex(bytes: usize) -> Result<String, CliError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)
        .map_err(|e| CliError::Settings(format!("no randomness from the system: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn string_of(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// What [`merge_secret`] did.
pub(crate) struct Merge {
    pub(crate) new_pages: usize,
    pub(crate) kept_pages: usize,
    pub(crate) verify_generated: bool,
    pub(crate) lookup_generated: bool,
    pub(crate) verify_token: SecretString,
}

pub(crate) fn merge_secret(
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
pub(crate) enum Store {
    /// `serve`'s file, opened once it exists (serve may create it while we wait).
    Local(PathBuf, Option<leadpipe_local::LocalDb>),
    Dynamo(leadpipe_aws::DynamoLeadStore),
}

impl Store {
    pub(crate) async fn ingested_at(&mut self, lead_id: &str) -> Result<Option<String>, String> {
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
