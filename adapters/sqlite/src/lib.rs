//! One SQLite file holds the local pipeline: the queue (durable before the webhook answers
//! 200), the leads (the leads table of docs/architecture.md, with `fields` and the disclaimers as JSON), the
//! dead letters and the backfill checkpoints. WAL with `synchronous = FULL`: a `kill -9`
//! after an answer loses nothing that was answered for.

#![warn(missing_docs)]
//!
//! The rooms: [`schema`] (tables and migrations by `user_version`), `posts` (the group
//! commit behind the webhook's answer), `queue`, `leads`, `checkpoints`, `outbox`,
//! `stages`, `forms`, `privacy` (erasure and lookup keys), `redrive` and `status`.

use leadpipe_core::privacy::LeadPolicy;
use posts::PostWriter;
use rusqlite::Connection;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

mod checkpoints;
mod deliveries;
mod forms;
mod leads;
mod outbox;
mod posts;
mod privacy;
mod queue;
mod redrive;
pub mod schema;
mod stages;
mod status;
pub use deliveries::DestinationCounts;
pub use outbox::{OutboxItem, OutboxSummary};
pub use privacy::{Erased, Unkeyed};
pub use queue::{DeadLetterRow, Leased, LocalQueueControl};
pub use stages::{ClaimedStage, MAX_STAGE_ATTEMPTS, StageCounts, StagesQueued};

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// SQLite refused the file, its schema or its settings.
    #[error("the SQLite file could not be opened: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file's schema could not be brought up to date (or is a newer leadpipe's).
    #[error("the SQLite file could not be opened: {0}")]
    Schema(#[from] schema::MigrationError),
    /// The file could not be created (with mode 0600) or the writer thread started.
    #[error("the SQLite file could not be opened: {0}")]
    Io(#[from] std::io::Error),
    /// The file is an SQLite file, but not leadpipe's: nothing was changed in it.
    #[error("{0} is not a leadpipe database (it has no leadpipe tables); nothing was changed")]
    NotLeadpipe(String),
}

/// Why a read or write of the local file failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// SQLite failed (busy past the timeout, read-only, disk full, corrupt file).
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A thread panicked holding the connection; nothing can be trusted to be consistent.
    #[error("the database connection was poisoned by a failed thread")]
    Poisoned,
    /// A stored lead's JSON column does not parse: the file was changed by hand or is
    /// damaged. Names the lead and the column, never the content.
    #[error("lead {lead_id}: the stored {column} is not valid JSON ({source})")]
    Corrupt {
        /// The lead whose row is damaged.
        lead_id: String,
        /// The column that does not parse.
        column: &'static str,
        /// The parse error (a place, never the content).
        #[source]
        source: serde_json::Error,
    },
}

/// The SQLite file, shared by the queue, store and checkpoint adapters.
#[derive(Debug, Clone)]
pub struct LocalDb {
    conn: Arc<Mutex<Connection>>,
    /// The post writer (group commit); absent on a read-only handle.
    posts: Option<PostWriter>,
    /// Whether a first insert also writes the lead's event to the outbox (`serve
    /// --forward-to`), in the same transaction.
    outbox: Arc<std::sync::atomic::AtomicBool>,
    /// Lookup keys and expiry written with each lead.
    policy: Arc<std::sync::RwLock<LeadPolicy>>,
    /// The initial stage a first insert also queues (`serve` with a Conversions dataset),
    /// in the same transaction.
    initial_stage: Arc<std::sync::RwLock<Option<leadpipe_core::stages::StageName>>>,
}

pub use leadpipe_core::lead_row::{LeadFilter, LeadRow};

/// The optional string columns, in contract order (core's one list).
pub use leadpipe_core::record::OPTIONAL_ATTRIBUTES as OPTIONAL_COLUMNS;

/// Creates `path` with mode 0600 when it does not exist yet; an existing file is left as is.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn now_unix_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl LocalDb {
    /// Opens (creating if needed) the file at `path`.
    /// A new file is created readable by its owner only (0600): it holds personal data.
    /// SQLite gives its `-wal` and `-shm` files the same mode.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        create_private(path)?;
        let mut conn = Connection::open(path)?;
        conn.execute_batch(schema::PRAGMAS)?;
        schema::migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            posts: Some(PostWriter::start(path)?),
            outbox: Arc::default(),
            policy: Arc::default(),
            initial_stage: Arc::default(),
        })
    }

    /// Opens an existing file read-only (export: it must never change or create the file).
    pub fn open_read_only(path: &Path) -> Result<Self, OpenError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            posts: None,
            outbox: Arc::default(),
            policy: Arc::default(),
            initial_stage: Arc::default(),
        })
    }

    /// Opens an existing leadpipe file read-only (dry runs: they must change nothing, not
    /// even the journal mode), refusing an SQLite file that is not leadpipe's.
    pub fn open_existing_read_only(path: &Path) -> Result<Self, OpenError> {
        let db = Self::open_read_only(path)?;
        let tables: i64 = db
            .with(|conn| {
                conn.query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'
                       AND name IN ('queue', 'dead_letters', 'leads', 'state')",
                    [],
                    |r| r.get(0),
                )
            })
            .map_err(|e| match e {
                LocalError::Sqlite(e) => OpenError::Sqlite(e),
                other => OpenError::NotLeadpipe(format!("{} ({other})", path.display())),
            })?;
        if tables < 4 {
            return Err(OpenError::NotLeadpipe(path.display().to_string()));
        }
        Ok(db)
    }

    /// Opens an existing leadpipe file to change it (`forget`, `redrive`): refused, untouched,
    /// when the file is not leadpipe's, so an operator's slip cannot add tables to another
    /// program's database.
    pub fn open_existing(path: &Path) -> Result<Self, OpenError> {
        drop(Self::open_existing_read_only(path)?);
        Self::open(path)
    }

    /// Runs `f` on the connection. SQLite blocks (fsync, the lock): on a multi-threaded
    /// tokio runtime the calling worker hands its other tasks to the rest first
    /// (`block_in_place`), so a slow commit never stalls the HTTP server or `/health`.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, LocalError> {
        let run = || {
            let mut conn = self.conn.lock().map_err(|_| LocalError::Poisoned)?;
            Ok(f(&mut conn)?)
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        }
    }
}
