//! The file's schema and its migrations, keyed by `PRAGMA user_version`: a file records
//! the last step it has, and opening it to write runs the steps after that one, each in
//! its own IMMEDIATE transaction together with the version it reaches (a crash midway
//! leaves the file at the step before). Files from before versioning are at 0 and may
//! already have any step, so every step checks before it changes anything. A new table or
//! column is a new step at the end, never an edit of an earlier one.

use rusqlite::{Connection, OptionalExtension, params};

/// Every connection's settings: WAL, a sync before each commit returns, and a wait for the
/// lock rather than an instant "busy".
pub(crate) const PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;";

/// The tables and indexes of the first versioned schema; every later change is a
/// migration below, never an edit here.
const TABLES: &str = "
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

/// One step of the schema.
struct Migration {
    /// The `user_version` the step brings the file to.
    version: i32,
    /// What it brings, for the error when it fails.
    what: &'static str,
    apply: fn(&Connection) -> rusqlite::Result<()>,
}

const MIGRATIONS: [Migration; 6] = [
    Migration {
        version: 1,
        what: "the tables",
        apply: |conn| conn.execute_batch(TABLES),
    },
    Migration {
        version: 2,
        what: "form_id optional (ad leads with no form)",
        apply: migrate_form_id_nullable,
    },
    Migration {
        version: 3,
        what: "lookup keys, expiry and the readable parts",
        apply: migrate_privacy_columns,
    },
    Migration {
        version: 4,
        what: "the class of forwarding's dead letters",
        apply: migrate_outbox_class,
    },
    Migration {
        version: 5,
        what: "max_receives named exhausted",
        apply: migrate_exhausted_class,
    },
    Migration {
        version: 6,
        what: "deliveries to destinations",
        apply: |conn| conn.execute_batch(DELIVERIES),
    },
];

/// Per destination and lead, the forwarder's state (adapters/sqlite/src/deliveries.rs):
/// `body` is the lead event (core's `LeadReceived`) as it was queued; and each
/// destination's pause while its budget is spent.
const DELIVERIES: &str = "
CREATE TABLE IF NOT EXISTS deliveries (
    destination TEXT NOT NULL,
    lead_id TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    queued_at INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    leased_until INTEGER NOT NULL DEFAULT 0,
    record_id TEXT,
    reason_class TEXT,
    reason TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (destination, lead_id)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (destination, state, next_at);
-- The destinations the last `serve --destinations` named (and the forms each takes, JSON):
-- every writer of the file (serve, a standalone backfill) queues a new lead for them.
CREATE TABLE IF NOT EXISTS destinations_enabled (
    name TEXT PRIMARY KEY,
    forms TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS destination_pauses (
    destination TEXT PRIMARY KEY,
    until_ms INTEGER NOT NULL,
    reason TEXT NOT NULL
);
";

/// The version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The file was written by a newer leadpipe, whose tables this build does not know.
    #[error(
        "the file's schema is version {found}, newer than this leadpipe's {known}: use a newer leadpipe"
    )]
    Newer {
        /// The file's `user_version`.
        found: i32,
        /// [`SCHEMA_VERSION`].
        known: i32,
    },
    /// A step failed; the file stays at the step before it.
    #[error("the schema step to version {version} ({what}) failed: {source}")]
    Step {
        /// The version it would have reached.
        version: i32,
        /// What it brings.
        what: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The version could not be read.
    #[error("the schema version could not be read: {0}")]
    Version(#[from] rusqlite::Error),
}

/// The file's `user_version`.
pub fn schema_version(conn: &Connection) -> rusqlite::Result<i32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Runs every step the file does not have yet.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), MigrationError> {
    migrate_to(conn, SCHEMA_VERSION)
}

/// Runs the steps after the file's version up to `last` (the tests stop at a step to
/// build the schema before the next one).
fn migrate_to(conn: &mut Connection, last: i32) -> Result<(), MigrationError> {
    let found = schema_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(MigrationError::Newer {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for step in MIGRATIONS
        .iter()
        .filter(|m| m.version > found && m.version <= last)
    {
        let failed = |source| MigrationError::Step {
            version: step.version,
            what: step.what,
            source,
        };
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(failed)?;
        (step.apply)(&tx).map_err(failed)?;
        tx.pragma_update(None, "user_version", step.version)
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
    }
    Ok(())
}

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
        "ALTER TABLE leads RENAME TO leads_before_optional_form;
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
         CREATE INDEX by_form ON leads (form_id, created_time);",
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
pub(crate) fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
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

/// Dead letters of the queue's own limit were called `max_receives` before the class had
/// its contract name, `exhausted` (DESIGN.md, "Dead letters").
fn migrate_exhausted_class(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE dead_letters SET reason_class = 'exhausted' WHERE reason_class = 'max_receives'",
        [],
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_at(version: i32) -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, version).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), version);
        conn
    }

    fn columns(conn: &Connection, table: &str) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM pragma_table_info(?1)")
            .unwrap();
        stmt.query_map(params![table], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    const LEAD: &str = "INSERT INTO leads (lead_id, created_time, page_id, form_id, is_organic, fields,
        custom_disclaimer_responses, raw, source, ingested_at)
        VALUES ('1', '2026-12-01T09:00:00Z', '2', ?1, 0, '{}', '[]', '{}', 'webhook', '2026-12-01T09:00:01Z')";

    #[test]
    fn a_new_file_gets_every_step_and_a_second_open_runs_none() {
        let mut conn = file_at(0);
        migrate(&mut conn).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), SCHEMA_VERSION);
        for table in [
            "queue",
            "dead_letters",
            "leads",
            "state",
            "outbox",
            "erased",
            "forms",
            "token_health",
            "stages",
        ] {
            assert!(!columns(&conn, table).is_empty(), "{table}");
        }
        // Every step is known to run once: a second pass finds nothing to do, and would
        // fail loudly if it tried (the form_id rebuild's rename would find its table).
        conn.execute(LEAD, params![Option::<String>::None]).unwrap();
        migrate(&mut conn).unwrap();
        let leads: i64 = conn
            .query_row("SELECT COUNT(*) FROM leads", [], |r| r.get(0))
            .unwrap();
        assert_eq!(leads, 1);
    }

    #[test]
    fn a_file_of_a_newer_leadpipe_is_refused_untouched() {
        let mut conn = file_at(SCHEMA_VERSION);
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert!(matches!(err, MigrationError::Newer { .. }), "{err}");
        assert_eq!(schema_version(&conn).unwrap(), SCHEMA_VERSION + 1);
    }

    #[test]
    fn step_2_makes_form_id_optional_keeping_every_lead() {
        // The leads table as files had it before: form_id NOT NULL, '' for no form.
        let mut conn = file_at(1);
        conn.execute_batch(
            "DROP TABLE leads;
             CREATE TABLE leads (lead_id TEXT PRIMARY KEY, created_time TEXT NOT NULL, page_id TEXT NOT NULL,
                form_id TEXT NOT NULL, ad_id TEXT, ad_name TEXT, adset_id TEXT, adset_name TEXT,
                campaign_id TEXT, campaign_name TEXT, platform TEXT, partner_name TEXT, retailer_item_id TEXT,
                is_organic INTEGER NOT NULL, fields TEXT NOT NULL, custom_disclaimer_responses TEXT NOT NULL,
                raw TEXT NOT NULL, source TEXT NOT NULL, ingested_at TEXT NOT NULL);",
        )
        .unwrap();
        conn.execute(LEAD, params![""]).unwrap();
        migrate_to(&mut conn, 2).unwrap();
        let form: Option<String> = conn
            .query_row("SELECT form_id FROM leads WHERE lead_id = '1'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(form, None);
        let not_null: i64 = conn
            .query_row(
                "SELECT \"notnull\" FROM pragma_table_info('leads') WHERE name = 'form_id'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(not_null, 0);
    }

    #[test]
    fn step_3_adds_the_lookup_columns_and_their_indexes_to_stored_leads() {
        let mut conn = file_at(2);
        conn.execute(LEAD, params!["10"]).unwrap();
        migrate_to(&mut conn, 3).unwrap();
        let have = columns(&conn, "leads");
        for column in ["email_key", "phone_key", "expires_at", "readable"] {
            assert!(have.iter().any(|c| c == column), "{column}");
        }
        let key: Option<String> = conn
            .query_row("SELECT email_key FROM leads WHERE lead_id = '1'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(key, None);
        let indexes: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name IN ('by_email_key', 'by_phone_key', 'by_expiry')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 3);
    }

    #[test]
    fn step_4_gives_forwarding_dead_letters_a_class_column_left_empty_for_old_ones() {
        let mut conn = file_at(3);
        conn.execute(
            "INSERT INTO outbox (lead_id, body, created_at, next_at, state) VALUES ('1', '{}', 0, 0, 'dead')",
            [],
        )
        .unwrap();
        migrate_to(&mut conn, 4).unwrap();
        let class: Option<String> = conn
            .query_row(
                "SELECT dead_class FROM outbox WHERE lead_id = '1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        // Read as `refused` (adapters/sqlite/src/outbox.rs): what they were.
        assert_eq!(class, None);
    }

    #[test]
    fn step_5_names_max_receives_exhausted_and_leaves_other_classes() {
        let mut conn = file_at(4);
        for class in ["max_receives", "token"] {
            conn.execute(
                "INSERT INTO dead_letters (body, reason_class, reason, dead_lettered_at) VALUES ('{}', ?1, 'r', 't')",
                params![class],
            )
            .unwrap();
        }
        migrate_to(&mut conn, 5).unwrap();
        let classes: Vec<String> = conn
            .prepare("SELECT reason_class FROM dead_letters ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(classes, ["exhausted", "token"]);
    }

    #[test]
    fn step_6_adds_the_deliveries_beside_every_stored_lead() {
        let mut conn = file_at(5);
        conn.execute(LEAD, params!["10"]).unwrap();
        migrate_to(&mut conn, 6).unwrap();
        assert!(
            columns(&conn, "deliveries")
                .iter()
                .any(|c| c == "reason_class")
        );
        assert!(!columns(&conn, "destination_pauses").is_empty());
        let leads: i64 = conn
            .query_row("SELECT COUNT(*) FROM leads", [], |r| r.get(0))
            .unwrap();
        assert_eq!(leads, 1);
    }

    #[test]
    fn a_file_from_before_versioning_with_every_step_already_opens_and_keeps_its_rows() {
        // What the last release wrote: every table and column, user_version 0.
        let mut conn = file_at(SCHEMA_VERSION);
        conn.execute(LEAD, params!["10"]).unwrap();
        conn.pragma_update(None, "user_version", 0).unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), SCHEMA_VERSION);
        let leads: i64 = conn
            .query_row("SELECT COUNT(*) FROM leads", [], |r| r.get(0))
            .unwrap();
        assert_eq!(leads, 1);
    }
}
