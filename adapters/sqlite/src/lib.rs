//! One SQLite file holds the local pipeline: the queue (durable before the webhook answers
//! 200), the leads (the leads table of docs/architecture.md, with `fields` and the disclaimers as JSON), the
//! dead letters and the backfill checkpoints. WAL with `synchronous = FULL`: a `kill -9`
//! after an answer loses nothing that was answered for.

#![warn(missing_docs)]
use leadpipe_core::event::LeadEvent;
use leadpipe_core::lead_received::LeadReceived;
use leadpipe_core::ports::{
    Cause, CheckpointStore, DeadLetterReason, EventQueue, LeadStore, PutOutcome, QueueControl,
    QueueError, RunFacts, StoreError, StoredLead,
};
use leadpipe_core::privacy::LeadPolicy;
use leadpipe_core::record::contract_time;

mod forms;
mod outbox;
mod privacy;
mod redrive;
mod stages;
mod status;
pub use outbox::{OutboxItem, OutboxSummary};
pub use privacy::Erased;
use rusqlite::{Connection, OptionalExtension, params};
pub use stages::{ClaimedStage, MAX_STAGE_ATTEMPTS, StageCounts, StagesQueued};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

/// Every connection's settings: WAL, a sync before each commit returns, and a wait for the
/// lock rather than an instant "busy".
const PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    enqueued_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    reason_class TEXT NOT NULL,
    reason TEXT NOT NULL,
    dead_lettered_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leads (
    lead_id TEXT PRIMARY KEY,
    created_time TEXT NOT NULL,
    page_id TEXT NOT NULL,
    form_id TEXT,
    ad_id TEXT, ad_name TEXT, adset_id TEXT, adset_name TEXT,
    campaign_id TEXT, campaign_name TEXT, platform TEXT, partner_name TEXT, retailer_item_id TEXT,
    is_organic INTEGER NOT NULL,
    fields TEXT NOT NULL,
    custom_disclaimer_responses TEXT NOT NULL,
    raw TEXT NOT NULL,
    source TEXT NOT NULL,
    ingested_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS by_form ON leads (form_id, created_time);
CREATE TABLE IF NOT EXISTS write_probe (at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    lead_id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending',
    leased INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_at);
-- Erasure records: the ids `forget` erased, so no store path writes them again (a
-- backfill re-reading the window, an ingest in flight). Ids only, never a value.
CREATE TABLE IF NOT EXISTS erased (
    lead_id TEXT PRIMARY KEY,
    erased_at TEXT NOT NULL
);
-- The forms catalog (docs/leads-out.md, Readable parts): one row per form, its latest
-- version as JSON (core's `forms::Form`).
CREATE TABLE IF NOT EXISTS forms (
    form_id TEXT PRIMARY KEY,
    page_id TEXT,
    name TEXT,
    form TEXT NOT NULL,
    fetched_at INTEGER NOT NULL
);
-- Each page token's health as the last backfill run found it (core's tokens::PageTokenHealth
-- as JSON): ids, states and Meta's reasons, never a token.
CREATE TABLE IF NOT EXISTS token_health (
    page_id TEXT PRIMARY KEY,
    health TEXT NOT NULL
);
-- Stages back to Meta (adapters/sqlite/src/stages.rs): queue, ledger and dead letters in
-- one row per (lead, stage). `body` is core's StageChange as JSON.
CREATE TABLE IF NOT EXISTS stages (
    event_id TEXT PRIMARY KEY,
    lead_id TEXT NOT NULL,
    body TEXT NOT NULL,
    queued_at INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'queued',
    reason_class TEXT,
    reason TEXT,
    sent_at INTEGER
);
CREATE INDEX IF NOT EXISTS stages_due ON stages (state, next_at);
CREATE TABLE IF NOT EXISTS state (
    pk TEXT PRIMARY KEY,
    checkpoint INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    last_run_leads_read INTEGER NOT NULL,
    last_run_new INTEGER NOT NULL,
    last_run_already_present INTEGER NOT NULL
);
";

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// SQLite refused the file, its schema or its settings.
    #[error("the SQLite file could not be opened: {0}")]
    Sqlite(#[from] rusqlite::Error),
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

/// One post's queue messages, and where to say whether they are durable.
type PostRequest = (
    Vec<String>,
    tokio::sync::oneshot::Sender<Result<(), Arc<rusqlite::Error>>>,
);

/// Group commit for webhook posts: one thread with its own connection takes every post
/// that arrived while it was committing the last group, writes them in one transaction
/// (one fsync for all), and only then answers each. A post is still answered only once it
/// is durable, and posts never queue behind ingest's reads and writes on the other
/// connection, nor stall the async runtime.
#[derive(Debug, Clone)]
struct PostWriter {
    sender: std::sync::mpsc::Sender<PostRequest>,
}

/// Posts committed together at most.
const MAX_GROUP: usize = 512;

impl PostWriter {
    fn start(path: &Path) -> Result<Self, OpenError> {
        let mut conn = Connection::open(path)?;
        conn.execute_batch(PRAGMAS)?;
        let (sender, receiver) = std::sync::mpsc::channel::<PostRequest>();
        std::thread::Builder::new()
            .name("leadpipe-post-writer".into())
            .spawn(move || {
                // Ends when every LocalDb handle (and so every sender) is gone.
                while let Ok(first) = receiver.recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match receiver.try_recv() {
                            Ok(next) => group.push(next),
                            Err(_) => break,
                        }
                    }
                    let result = write_group(&mut conn, &group).map_err(Arc::new);
                    for (_, answer) in group {
                        let _ = answer.send(result.clone());
                    }
                }
            })?;
        Ok(Self { sender })
    }
}

fn write_group(conn: &mut Connection, group: &[PostRequest]) -> rusqlite::Result<()> {
    let now = now_unix_ms();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO queue (body, visible_at, enqueued_at) VALUES (?1, ?2, ?2)",
        )?;
        for (bodies, _) in group {
            for body in bodies {
                insert.execute(params![body, now])?;
            }
        }
    }
    // An empty request is a health probe: a row written and removed in the group's own
    // transaction proves the path posts take is writable, at the cost of no extra fsync.
    if group.iter().any(|(bodies, _)| bodies.is_empty()) {
        tx.execute("INSERT INTO write_probe (at) VALUES (?1)", params![now])?;
        tx.execute("DELETE FROM write_probe", [])?;
    }
    tx.commit()
}

/// A leased queue message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    /// The row id, which is also the receipt handle.
    pub id: i64,
    /// The queue message body.
    pub body: String,
    /// How often it was leased, this time included.
    pub receive_count: i64,
}

pub use leadpipe_core::lead_row::{LeadFilter, LeadRow};

/// The optional string columns, in contract order (core's one list).
pub use leadpipe_core::record::OPTIONAL_ATTRIBUTES as OPTIONAL_COLUMNS;

/// Files made before form_id became optional (ad leads with no form) have it NOT NULL;
/// rebuild that one table in a transaction, keeping every row.
fn migrate_form_id_nullable(conn: &Connection) -> rusqlite::Result<()> {
    let not_null: bool = conn
        .query_row(
            "SELECT \"notnull\" FROM pragma_table_info('leads') WHERE name = 'form_id'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .is_some_and(|n| n != 0);
    if !not_null {
        return Ok(());
    }
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         ALTER TABLE leads RENAME TO leads_before_optional_form;
         DROP INDEX IF EXISTS by_form;
         CREATE TABLE leads (
            lead_id TEXT PRIMARY KEY, created_time TEXT NOT NULL, page_id TEXT NOT NULL, form_id TEXT,
            ad_id TEXT, ad_name TEXT, adset_id TEXT, adset_name TEXT,
            campaign_id TEXT, campaign_name TEXT, platform TEXT, partner_name TEXT, retailer_item_id TEXT,
            is_organic INTEGER NOT NULL, fields TEXT NOT NULL, custom_disclaimer_responses TEXT NOT NULL,
            raw TEXT NOT NULL, source TEXT NOT NULL, ingested_at TEXT NOT NULL);
         INSERT INTO leads SELECT lead_id, created_time, page_id, NULLIF(form_id, ''), ad_id, ad_name, adset_id,
            adset_name, campaign_id, campaign_name, platform, partner_name, retailer_item_id, is_organic, fields,
            custom_disclaimer_responses, raw, source, ingested_at FROM leads_before_optional_form;
         DROP TABLE leads_before_optional_form;
         CREATE INDEX by_form ON leads (form_id, created_time);
         COMMIT;",
    )
}

/// The lookup keys and expiry (`crate::privacy`), added to files made before they existed,
/// with their partial indexes (only leads that have one are in them).
fn migrate_privacy_columns(conn: &Connection) -> rusqlite::Result<()> {
    // `readable`: the lead's form name, answers by label and contact, as JSON (core's
    // `readable::Readable`), from the release that brought the forms catalog.
    for column in [
        "email_key TEXT",
        "phone_key TEXT",
        "expires_at INTEGER",
        "readable TEXT",
    ] {
        let name = column.split(' ').next().unwrap_or_default();
        let exists: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('leads') WHERE name = ?1",
                params![name],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)?;
        if !exists {
            conn.execute_batch(&format!("ALTER TABLE leads ADD COLUMN {column}"))?;
        }
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS by_email_key ON leads (email_key) WHERE email_key IS NOT NULL;
         CREATE INDEX IF NOT EXISTS by_phone_key ON leads (phone_key) WHERE phone_key IS NOT NULL;
         CREATE INDEX IF NOT EXISTS by_expiry ON leads (expires_at) WHERE expires_at IS NOT NULL;",
    )
}

/// Whether `table` has `column` (files opened read-only are not migrated).
fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        params![table, column],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// The class of an outbox dead letter (`refused`, `exhausted`), for `redrive --reason-class`;
/// files made before it had none (their dead letters count as `refused`).
fn migrate_outbox_class(conn: &Connection) -> rusqlite::Result<()> {
    let exists: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('outbox') WHERE name = 'dead_class'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?;
    if !exists {
        conn.execute_batch("ALTER TABLE outbox ADD COLUMN dead_class TEXT")?;
    }
    Ok(())
}

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
        let conn = Connection::open(path)?;
        conn.execute_batch(PRAGMAS)?;
        conn.execute_batch(SCHEMA)?;
        migrate_form_id_nullable(&conn)?;
        migrate_privacy_columns(&conn)?;
        migrate_outbox_class(&conn)?;
        // Files from before the class had its contract name (a write only when there is
        // one: a file that cannot be written is refused by serve's probe, with its reason).
        let renamed: i64 = conn.query_row(
            "SELECT COUNT(*) FROM dead_letters WHERE reason_class = 'max_receives'",
            [],
            |r| r.get(0),
        )?;
        if renamed > 0 {
            conn.execute(
                "UPDATE dead_letters SET reason_class = 'exhausted' WHERE reason_class = 'max_receives'",
                [],
            )?;
        }
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

    /// Whether posts can be made durable right now: a probe through the post writer, committed
    /// with whatever group of posts it joins (`serve`'s start and `/health`). A read-only
    /// file, directory or mount fails here (SQLite opens such a file read-only without a
    /// word), not at the first post. `Err` says why not.
    pub async fn probe_posts(&self) -> Result<(), String> {
        let writer = self
            .posts
            .as_ref()
            .ok_or_else(|| "the database was opened read-only".to_owned())?;
        let (answer, durable) = tokio::sync::oneshot::channel();
        writer
            .sender
            .send((Vec::new(), answer))
            .map_err(|_| "the post writer has stopped".to_owned())?;
        durable
            .await
            .map_err(|_| "the post writer has stopped".to_owned())?
            .map_err(|e| e.to_string())
    }

    /// Leases up to `max` visible messages for `visibility`. Messages received
    /// `max_receives` times already go to the dead letters instead.
    pub fn lease(
        &self,
        max: usize,
        visibility: Duration,
        max_receives: i64,
    ) -> Result<Vec<Leased>, LocalError> {
        let now = now_unix_ms();
        let until = now + visibility.as_millis() as i64;
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let exhausted: Vec<(i64, String, i64)> = {
                let mut stmt = tx.prepare("SELECT id, body, receive_count FROM queue WHERE visible_at <= ?1 AND receive_count >= ?2")?;
                stmt.query_map(params![now, max_receives], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<_, _>>()?
            };
            for (id, body, count) in exhausted {
                tx.execute(
                    "INSERT INTO dead_letters (body, reason_class, reason, dead_lettered_at) VALUES (?1, 'exhausted', ?2, ?3)",
                    params![body, format!("received {count} times without success"), contract_time(OffsetDateTime::now_utc())],
                )?;
                tx.execute("DELETE FROM queue WHERE id = ?1", params![id])?;
            }
            let leased: Vec<Leased> = {
                let mut stmt = tx.prepare(
                    "UPDATE queue SET visible_at = ?1, receive_count = receive_count + 1
                     WHERE id IN (SELECT id FROM queue WHERE visible_at <= ?2 ORDER BY id LIMIT ?3)
                     RETURNING id, body, receive_count",
                )?;
                stmt.query_map(params![until, now, max as i64], |r| {
                    Ok(Leased { id: r.get(0)?, body: r.get(1)?, receive_count: r.get(2)? })
                })?
                .collect::<Result<_, _>>()?
            };
            tx.commit()?;
            Ok(leased)
        })
    }

    /// Deletes handled messages.
    pub fn ack(&self, ids: &[i64]) -> Result<(), LocalError> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for id in ids {
                tx.execute("DELETE FROM queue WHERE id = ?1", params![id])?;
            }
            tx.commit()
        })
    }

    /// Messages in the queue, visible or not.
    pub fn queue_len(&self) -> Result<i64, LocalError> {
        self.with(|conn| conn.query_row("SELECT COUNT(*) FROM queue", [], |r| r.get(0)))
    }

    /// `(body, class, reason)` of every dead letter.
    pub fn dead_letters(&self) -> Result<Vec<(String, String, String)>, LocalError> {
        self.with(|conn| {
            let mut stmt =
                conn.prepare("SELECT body, reason_class, reason FROM dead_letters ORDER BY id")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
    }

    /// Every stored lead, ordered by form and time.
    pub fn leads(&self) -> Result<Vec<LeadRow>, LocalError> {
        let mut rows = Vec::new();
        self.each_lead(&LeadFilter::default(), |row| {
            rows.push(row);
            Ok::<_, LocalError>(())
        })?;
        Ok(rows)
    }

    /// Streams the leads `filter` selects to `f`, one row at a time (memory stays flat
    /// however many there are), in the order of [`LocalDb::leads`].
    pub fn each_lead<E: From<LocalError>>(
        &self,
        filter: &LeadFilter,
        mut f: impl FnMut(LeadRow) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut seen = 0;
        let mut failure: Option<E> = None;
        self.with(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT lead_id, created_time, page_id, form_id, ad_id, ad_name, adset_id, adset_name, campaign_id,
                        campaign_name, platform, partner_name, retailer_item_id, is_organic, fields,
                        custom_disclaimer_responses, raw, source, ingested_at, {readable}
                 FROM leads
                 WHERE (?1 IS NULL OR form_id = ?1) AND (?2 IS NULL OR created_time >= ?2)
                   AND (?3 IS NULL OR created_time < ?3)
                 ORDER BY form_id, created_time, lead_id",
                // A file opened read-only before its migration has no such column yet.
                readable = if has_column(conn, "leads", "readable")? { "readable" } else { "NULL" },
            ))?;
            let mut rows = stmt.query(params![filter.form_id, filter.since, filter.until])?;
            while let Some(r) = rows.next()? {
                let mut optional = BTreeMap::new();
                for (i, name) in OPTIONAL_COLUMNS.iter().enumerate() {
                    if let Some(v) = r.get::<_, Option<String>>(4 + i)? {
                        optional.insert(*name, v);
                    }
                }
                let lead_id: String = r.get(0)?;
                let fields: String = r.get(14)?;
                let disclaimers: String = r.get(15)?;
                let corrupt = |column, source| LocalError::Corrupt {
                    lead_id: lead_id.clone(),
                    column,
                    source,
                };
                let parsed = serde_json::from_str(&fields)
                    .map_err(|e| corrupt("fields", e))
                    .and_then(|fields| {
                        serde_json::from_str(&disclaimers)
                            .map(|d| (fields, d))
                            .map_err(|e| corrupt("custom_disclaimer_responses", e))
                    });
                let (fields, custom_disclaimer_responses) = match parsed {
                    Ok(parsed) => parsed,
                    Err(e) => {
                        failure = Some(e.into());
                        return Ok(());
                    }
                };
                let row = LeadRow {
                    lead_id,
                    created_time: r.get(1)?,
                    page_id: r.get(2)?,
                    form_id: r.get(3)?,
                    optional,
                    is_organic: r.get::<_, i64>(13)? != 0,
                    fields,
                    custom_disclaimer_responses,
                    raw: r.get(16)?,
                    source: r.get(17)?,
                    ingested_at: r.get(18)?,
                    // Written by this code only; a row it cannot read is one stored before.
                    readable: r
                        .get::<_, Option<String>>(19)?
                        .and_then(|json| serde_json::from_str(&json).ok())
                        .unwrap_or_default(),
                };
                seen += 1;
                if let Err(e) = f(row) {
                    failure = Some(e);
                    return Ok(());
                }
            }
            Ok(())
        })
        .map_err(E::from)?;
        match failure {
            Some(e) => Err(e),
            None => Ok(seen),
        }
    }

    /// The form field names of the leads `filter` selects (a CSV's columns), read without
    /// holding the leads.
    pub fn field_names(
        &self,
        filter: &LeadFilter,
    ) -> Result<std::collections::BTreeSet<String>, LocalError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT fields FROM leads
                 WHERE (?1 IS NULL OR form_id = ?1) AND (?2 IS NULL OR created_time >= ?2)
                   AND (?3 IS NULL OR created_time < ?3)",
            )?;
            let mut rows = stmt.query(params![filter.form_id, filter.since, filter.until])?;
            let mut names = std::collections::BTreeSet::new();
            while let Some(r) = rows.next()? {
                let fields: String = r.get(0)?;
                if let Ok(map) =
                    serde_json::from_str::<BTreeMap<String, serde::de::IgnoredAny>>(&fields)
                {
                    names.extend(map.into_keys());
                }
            }
            Ok(names)
        })
    }

    /// Messages waiting (visible or leased) and when the oldest was queued (unix ms).
    pub fn queue_stats(&self) -> Result<(i64, Option<i64>), LocalError> {
        self.with(|conn| {
            conn.query_row("SELECT COUNT(*), MIN(enqueued_at) FROM queue", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
        })
    }

    /// Dead letters by reason class: `(class, count, newest reason, newest time)`.
    pub fn dead_letter_summary(&self) -> Result<Vec<(String, i64, String, String)>, LocalError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                // `max_receives` is what files from before the class had its contract name
                // call `exhausted` (a read-only status does not migrate them).
                "SELECT c.class, c.n, d.reason, d.dead_lettered_at
                 FROM dead_letters d
                 JOIN (SELECT CASE reason_class WHEN 'max_receives' THEN 'exhausted' ELSE reason_class END AS class,
                              COUNT(*) AS n, MAX(id) AS newest
                       FROM dead_letters GROUP BY class) c ON d.id = c.newest
                 ORDER BY c.n DESC, c.class",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect()
        })
    }

    /// Every checkpoint with its last run's facts:
    /// `(key, checkpoint, updated_at, leads read, new, already present)`.
    #[allow(clippy::type_complexity)]
    pub fn checkpoints(&self) -> Result<Vec<(String, i64, String, i64, i64, i64)>, LocalError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT pk, checkpoint, updated_at, last_run_leads_read, last_run_new,
                        last_run_already_present FROM state ORDER BY pk",
            )?;
            stmt.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect()
        })
    }

    /// Leads stored since `since` (RFC 3339 UTC, as `ingested_at` is written), per form
    /// (`None`: leads with no form).
    pub fn leads_stored_since(
        &self,
        since: &str,
    ) -> Result<Vec<(Option<String>, i64)>, LocalError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT form_id, COUNT(*) FROM leads WHERE ingested_at >= ?1
                 GROUP BY form_id ORDER BY form_id",
            )?;
            stmt.query_map(params![since], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
    }

    /// When the lead was stored (`ingested_at`), or `None` when it is not in the file.
    pub fn ingested_at(&self, lead_id: &str) -> Result<Option<String>, LocalError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT ingested_at FROM leads WHERE lead_id = ?1",
                params![lead_id],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Number of stored leads.
    pub fn lead_count(&self) -> Result<i64, LocalError> {
        self.with(|conn| conn.query_row("SELECT COUNT(*) FROM leads", [], |r| r.get(0)))
    }
}

impl EventQueue for LocalDb {
    async fn enqueue(&self, events: &[LeadEvent]) -> Result<(), QueueError> {
        let bodies: Vec<String> = events
            .iter()
            .map(LeadEvent::to_message_body)
            .collect::<Result<_, _>>()
            .map_err(|e| QueueError::Rejected {
                failed: events.len(),
                total: events.len(),
                reason: e.to_string(),
            })?;
        // One transaction (shared with the posts that arrived meanwhile): the post's events
        // are all durable, or none are, before the answer.
        let writer = self
            .posts
            .as_ref()
            .ok_or_else(|| QueueError::Unavailable("the database was opened read-only".into()))?;
        let (answer, durable) = tokio::sync::oneshot::channel();
        writer
            .sender
            .send((bodies, answer))
            .map_err(|_| QueueError::Unavailable("the post writer has stopped".into()))?;
        durable
            .await
            .map_err(|_| QueueError::Unavailable("the post writer has stopped".into()))?
            .map_err(|e| QueueError::Unavailable(Cause::from_error(e)))
    }
}

/// The local queue's ingest-side operations; delays are capped (the demo keeps them short).
#[derive(Debug, Clone)]
pub struct LocalQueueControl {
    /// The file.
    pub db: LocalDb,
    /// The longest a rate-limited message is parked.
    pub max_delay: Duration,
}

impl QueueControl for LocalQueueControl {
    async fn dead_letter(&self, body: &str, reason: &DeadLetterReason) -> Result<(), QueueError> {
        self.db
            .with(|conn| {
                conn.execute(
                    "INSERT INTO dead_letters (body, reason_class, reason, dead_lettered_at) VALUES (?1, ?2, ?3, ?4)",
                    params![body, reason.class.as_str(), reason.detail, contract_time(OffsetDateTime::now_utc())],
                )
            })
            .map(|_| ())
            .map_err(|e| QueueError::Unavailable(Cause::from_error(e)))
    }

    async fn delay(&self, receipt_handle: &str, delay: Duration) -> Result<(), QueueError> {
        let id: i64 = receipt_handle.parse().map_err(|_| QueueError::Rejected {
            failed: 1,
            total: 1,
            reason: "not a local receipt".into(),
        })?;
        let until = now_unix_ms() + delay.min(self.max_delay).as_millis() as i64;
        self.db
            .with(|conn| {
                conn.execute(
                    "UPDATE queue SET visible_at = ?1 WHERE id = ?2",
                    params![until, id],
                )
            })
            .map(|_| ())
            .map_err(|e| QueueError::Unavailable(Cause::from_error(e)))
    }
}

impl LeadStore for LocalDb {
    async fn put_leads(&self, leads: &[StoredLead]) -> Result<Vec<PutOutcome>, StoreError> {
        let outbox = self.outbox.load(std::sync::atomic::Ordering::Relaxed);
        let policy = self.policy.read().map(|p| p.clone()).unwrap_or_default();
        let initial = self
            .initial_stage
            .read()
            .map(|s| s.clone())
            .unwrap_or_default();
        let now = now_unix_ms();
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut outcomes = Vec::with_capacity(leads.len());
            for stored in leads {
                // An erased lead is never written again: to every caller it is a lead already
                // handled (docs/operate.md, "Erasure"). Same transaction as the insert, so a
                // concurrent `forget` is either before it (seen here) or after (erases it).
                let erased: bool = tx
                    .prepare_cached("SELECT COUNT(*) FROM erased WHERE lead_id = ?1")?
                    .query_row(params![stored.lead.id], |r| r.get::<_, i64>(0))?
                    > 0;
                if erased {
                    outcomes.push(PutOutcome::AlreadyPresent);
                    continue;
                }
                // Core's projection, encoded as a row: `fields` and the disclaimers as JSON.
                let record = stored.record();
                let privacy = policy.attributes(stored);
                let optional = |name: &str| {
                    record.optional.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
                };
                let disclaimers: Vec<serde_json::Value> = record
                    .disclaimers
                    .iter()
                    .map(|(key, checked)| serde_json::json!({"checkbox_key": key, "is_checked": checked}))
                    .collect();
                let changed = tx.execute(
                    "INSERT OR IGNORE INTO leads (lead_id, created_time, page_id, form_id, ad_id, ad_name, adset_id,
                        adset_name, campaign_id, campaign_name, platform, partner_name, retailer_item_id, is_organic,
                        fields, custom_disclaimer_responses, raw, source, ingested_at, email_key, phone_key, expires_at,
                        readable)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
                    params![
                        record.lead_id,
                        record.created_time,
                        record.page_id,
                        record.form_id,
                        optional("ad_id"),
                        optional("ad_name"),
                        optional("adset_id"),
                        optional("adset_name"),
                        optional("campaign_id"),
                        optional("campaign_name"),
                        optional("platform"),
                        optional("partner_name"),
                        optional("retailer_item_id"),
                        record.is_organic as i64,
                        serde_json::to_string(&record.fields).unwrap_or_else(|_| "{}".into()),
                        serde_json::Value::Array(disclaimers).to_string(),
                        record.raw,
                        record.source,
                        record.ingested_at,
                        privacy.email_key,
                        privacy.phone_key,
                        privacy.expires_at,
                        serde_json::to_string(record.readable).ok(),
                    ],
                )?;
                // The lead's event, in the same transaction as its first write: a lead stored
                // is a lead to forward, whatever crashes next (docs/leads-out.md).
                if changed == 1 && outbox {
                    tx.execute(
                        "INSERT OR IGNORE INTO outbox (lead_id, body, created_at, next_at) VALUES (?1, ?2, ?3, ?3)",
                        params![record.lead_id, LeadReceived::from_record(&record).to_json(), now],
                    )?;
                }
                // Its first stage too (docs/stages.md, "The initial stage"), at its creation.
                if changed == 1
                    && let Some(name) = &initial
                    && leadpipe_core::stages::initial_stage_in_time(
                        stored.lead.created_time.unix_timestamp(),
                        now / 1_000,
                    )
                {
                    let stage = leadpipe_core::stages::StageChange::initial(
                        &stored.lead.id,
                        name,
                        stored.lead.created_time.unix_timestamp(),
                    );
                    tx.execute(
                        "INSERT OR IGNORE INTO stages (event_id, lead_id, body, queued_at, next_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                        params![stage.event_id(), stage.lead_id, stage.to_json(), now],
                    )?;
                }
                outcomes.push(if changed == 1 { PutOutcome::Inserted } else { PutOutcome::AlreadyPresent });
            }
            tx.commit()?;
            Ok(outcomes)
        })
        .map_err(|e| StoreError::Unavailable(Cause::from_error(e)))
    }
}

impl CheckpointStore for LocalDb {
    async fn save_token_health(
        &self,
        health: &[leadpipe_core::tokens::PageTokenHealth],
    ) -> Result<(), StoreError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            for page in health {
                tx.execute(
                    "INSERT INTO token_health (page_id, health) VALUES (?1, ?2)
                     ON CONFLICT (page_id) DO UPDATE SET health = excluded.health",
                    params![
                        page.page_id,
                        serde_json::to_string(page).unwrap_or_default()
                    ],
                )?;
            }
            tx.commit()
        })
        .map_err(|e| StoreError::Unavailable(Cause::from_error(e)))
    }

    async fn checkpoint(&self, key: &str) -> Result<Option<i64>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT checkpoint FROM state WHERE pk = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
        })
        .map_err(|e| StoreError::Unavailable(Cause::from_error(e)))
    }

    async fn save_checkpoint(
        &self,
        key: &str,
        checkpoint: i64,
        facts: &RunFacts,
    ) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO state (pk, checkpoint, updated_at, last_run_leads_read, last_run_new, last_run_already_present)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (pk) DO UPDATE SET checkpoint = excluded.checkpoint, updated_at = excluded.updated_at,
                   last_run_leads_read = excluded.last_run_leads_read, last_run_new = excluded.last_run_new,
                   last_run_already_present = excluded.last_run_already_present
                 WHERE excluded.checkpoint >= state.checkpoint",
                params![key, checkpoint, contract_time(OffsetDateTime::now_utc()), facts.leads_read as i64, facts.new as i64, facts.already_present as i64],
            )
        })
        .map(|_| ())
        .map_err(|e| StoreError::Unavailable(Cause::from_error(e)))
    }
}
