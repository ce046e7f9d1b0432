//! Deliveries to destinations on the SQLite file (core's `DeliveryLedger`): one row per
//! (destination, lead) holding the lead event as queued and its state (pending, delivered,
//! dead with its class and the service's scrubbed words), and each destination's pause.
//! A lease marks a row while it is being delivered, so a `kill -9` leaves it due again
//! when the lease ends. A first insert queues the lead for every destination that takes
//! it in the lead's own transaction (`enable_destinations`).

use crate::{LocalDb, LocalError, now_unix_ms};
use leadpipe_core::dead_letter::DeadLetterClass;
use leadpipe_core::destinations::{
    DeliveryLedger, DeliveryState, DestinationConfig, DestinationName, Due,
};
use leadpipe_core::failure::StoreError;
use leadpipe_core::lead_received::LeadReceived;
use rusqlite::{OptionalExtension, params};
use std::collections::BTreeSet;
use std::time::Duration;

/// A state as its columns: `(state, attempts, next_at, record_id, reason_class, reason)`,
/// `None` leaving a column as it is.
type Columns<'a> = (
    &'a str,
    Option<u32>,
    Option<i64>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

/// A destination and the forms it takes (none: every lead).
#[derive(Debug, Clone)]
pub(crate) struct Wanted {
    name: String,
    forms: BTreeSet<String>,
}

/// The destinations a first insert queues its lead for.
pub(crate) fn enabled(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Vec<Wanted>> {
    // Only a file opened to write stores leads, and opening it ran every schema step.
    let mut stmt =
        tx.prepare_cached("SELECT name, forms FROM destinations_enabled ORDER BY name")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut wanted = Vec::new();
    for row in rows {
        let (name, forms) = row?;
        wanted.push(Wanted {
            name,
            forms: serde_json::from_str(&forms).unwrap_or_default(),
        });
    }
    Ok(wanted)
}

/// Queues `event` for each of `destinations` that takes it (a row already there stays).
pub(crate) fn queue_in(
    tx: &rusqlite::Transaction<'_>,
    destinations: &[Wanted],
    event: &LeadReceived,
    now: i64,
) -> rusqlite::Result<()> {
    let body = event.to_json();
    for wanted in destinations {
        let takes = wanted.forms.is_empty()
            || event
                .form_id
                .as_ref()
                .is_some_and(|f| wanted.forms.contains(f));
        if takes {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO deliveries (destination, lead_id, body, queued_at, next_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?4)",
            )?
            .execute(params![wanted.name, event.lead_id, body, now])?;
        }
    }
    Ok(())
}

/// One destination's counts, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationCounts {
    /// The destination.
    pub name: String,
    /// Due now or later.
    pub pending: u64,
    /// Delivered.
    pub delivered: u64,
    /// Dead letters.
    pub dead: u64,
    /// The newest dead letter's class and reason.
    pub newest_dead: Option<(String, String)>,
    /// Until when it is paused (unix ms), when it is.
    pub paused_until: Option<i64>,
    /// The oldest pending lead's queueing time (unix ms).
    pub oldest_pending_ms: Option<i64>,
}

impl LocalDb {
    /// From now on each first insert also queues the lead for these destinations, in its
    /// own transaction, whichever process writes it (`serve --destinations` names them;
    /// `serve` without sets none; a standalone `backfill` follows the last serve's).
    pub fn enable_destinations(
        &self,
        destinations: &[DestinationConfig],
    ) -> Result<(), LocalError> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute("DELETE FROM destinations_enabled", [])?;
            for d in destinations {
                let forms: Vec<&String> = d.forms.iter().collect();
                tx.execute(
                    "INSERT INTO destinations_enabled (name, forms) VALUES (?1, ?2)",
                    params![
                        d.name.as_str(),
                        serde_json::to_string(&forms).unwrap_or_default()
                    ],
                )?;
            }
            tx.commit()
        })
    }

    /// Queues `events` for `destination` again from the start (`forward`'s replay): a
    /// delivered or dead row becomes pending with no tries; returns how many.
    pub fn requeue(
        &self,
        destination: &DestinationName,
        events: &[LeadReceived],
    ) -> Result<usize, LocalError> {
        let now = now_unix_ms();
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for event in events {
                tx.prepare_cached(
                    "INSERT INTO deliveries (destination, lead_id, body, queued_at, next_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?4, ?4)
                     ON CONFLICT (destination, lead_id) DO UPDATE SET body = excluded.body,
                       state = 'pending', attempts = 0, queued_at = excluded.queued_at,
                       next_at = excluded.next_at, leased_until = 0, reason_class = NULL,
                       reason = NULL, updated_at = excluded.updated_at",
                )?
                .execute(params![destination.as_str(), event.lead_id, event.to_json(), now])?;
            }
            tx.commit()?;
            Ok(events.len())
        })
    }

    /// Dead deliveries of `class` (all when `None`) made pending again with no tries, for
    /// `redrive`; with `dry_run`, counted only.
    pub fn redrive_deliveries(
        &self,
        class: Option<DeadLetterClass>,
        dry_run: bool,
    ) -> Result<usize, LocalError> {
        let class = class.map(DeadLetterClass::as_str);
        let now = now_unix_ms();
        self.with(|conn| {
            if crate::schema::schema_version(conn)? < 6 {
                return Ok(0);
            }
            if dry_run {
                return conn.query_row(
                    "SELECT COUNT(*) FROM deliveries WHERE state = 'dead' AND (?1 IS NULL OR reason_class = ?1)",
                    params![class],
                    |r| r.get::<_, i64>(0).map(|n| n as usize),
                );
            }
            conn.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, queued_at = ?2, next_at = ?2,
                   leased_until = 0, updated_at = ?2
                 WHERE state = 'dead' AND (?1 IS NULL OR reason_class = ?1)",
                params![class, now],
            )
        })
    }

    /// Every destination's counts (a file from before destinations has none).
    pub fn destination_counts(&self) -> Result<Vec<DestinationCounts>, LocalError> {
        self.with(|conn| {
            if crate::schema::schema_version(conn)? < 6 {
                return Ok(Vec::new());
            }
            let mut stmt = conn.prepare(
                "SELECT destination,
                        COALESCE(SUM(state = 'pending'), 0), COALESCE(SUM(state = 'delivered'), 0),
                        COALESCE(SUM(state = 'dead'), 0),
                        MIN(CASE WHEN state = 'pending' THEN queued_at END)
                 FROM deliveries GROUP BY destination ORDER BY destination",
            )?;
            let mut counts: Vec<DestinationCounts> = stmt
                .query_map([], |r| {
                    Ok(DestinationCounts {
                        name: r.get(0)?,
                        pending: r.get::<_, i64>(1)?.max(0) as u64,
                        delivered: r.get::<_, i64>(2)?.max(0) as u64,
                        dead: r.get::<_, i64>(3)?.max(0) as u64,
                        oldest_pending_ms: r.get(4)?,
                        ..Default::default()
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            for c in &mut counts {
                c.newest_dead = conn
                    .query_row(
                        "SELECT COALESCE(reason_class, 'refused'), COALESCE(reason, '') FROM deliveries
                         WHERE destination = ?1 AND state = 'dead' ORDER BY updated_at DESC LIMIT 1",
                        params![c.name],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                c.paused_until = conn
                    .query_row(
                        "SELECT until_ms FROM destination_pauses WHERE destination = ?1",
                        params![c.name],
                        |r| r.get(0),
                    )
                    .optional()?;
            }
            Ok(counts)
        })
    }

    /// The state of `lead_id` at `destination`: `(state, attempts, record id)`.
    pub fn delivery(
        &self,
        destination: &str,
        lead_id: &str,
    ) -> Result<Option<(String, u32, Option<String>)>, LocalError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT state, attempts, record_id FROM deliveries WHERE destination = ?1 AND lead_id = ?2",
                params![destination, lead_id],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u32, r.get(2)?)),
            )
            .optional()
        })
    }
}

impl DeliveryLedger for LocalDb {
    async fn due(
        &self,
        destination: &DestinationName,
        now_ms: i64,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Due>, StoreError> {
        let until = now_ms.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let rows: Vec<(String, String, i64, i64)> = self
            .with(|conn| {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let rows = {
                    let mut stmt = tx.prepare(
                        "UPDATE deliveries SET leased_until = ?3
                         WHERE rowid IN (SELECT rowid FROM deliveries
                           WHERE destination = ?1 AND state = 'pending' AND next_at <= ?2
                             AND leased_until <= ?2
                           ORDER BY queued_at, lead_id LIMIT ?4)
                         RETURNING lead_id, body, attempts, queued_at",
                    )?;
                    stmt.query_map(
                        params![destination.as_str(), now_ms, until, max as i64],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )?
                    .collect::<rusqlite::Result<Vec<_>>>()?
                };
                tx.commit()?;
                Ok(rows)
            })
            .map_err(StoreError::from)?;
        let mut due = Vec::with_capacity(rows.len());
        for (lead_id, body, attempts, queued_at_ms) in rows {
            match serde_json::from_str::<LeadReceived>(&body) {
                Ok(lead) => due.push(Due {
                    lead,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    queued_at_ms,
                }),
                // Written by this code only: a row that does not read is a dead letter,
                // never a loop.
                Err(e) => {
                    let reason = format!(
                        "the queued lead event does not read: {}",
                        leadpipe_core::json_error::JsonError::from(e)
                    );
                    self.record(
                        destination,
                        &[(
                            lead_id,
                            DeliveryState::Dead {
                                class: DeadLetterClass::Malformed,
                                reason,
                            },
                        )],
                    )
                    .await?;
                }
            }
        }
        Ok(due)
    }

    async fn record(
        &self,
        destination: &DestinationName,
        states: &[(String, DeliveryState)],
    ) -> Result<(), StoreError> {
        let now = now_unix_ms();
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for (lead_id, state) in states {
                let (state, attempts, next_at, record_id, class, reason): Columns<'_> = match state
                {
                    DeliveryState::Delivered(record) => {
                        ("delivered", None, None, record.as_deref(), None, None)
                    }
                    DeliveryState::Pending {
                        attempts,
                        at_ms,
                        reason,
                    } => (
                        "pending",
                        Some(*attempts),
                        Some(*at_ms),
                        None,
                        None,
                        reason.as_deref(),
                    ),
                    DeliveryState::Dead { class, reason } => (
                        "dead",
                        None,
                        None,
                        None,
                        Some(class.as_str()),
                        Some(reason.as_str()),
                    ),
                };
                tx.prepare_cached(
                    "UPDATE deliveries SET state = ?3, attempts = COALESCE(?4, attempts),
                       next_at = COALESCE(?5, next_at), record_id = COALESCE(?6, record_id),
                       reason_class = ?7, reason = COALESCE(?8, reason), leased_until = 0,
                       updated_at = ?9
                     WHERE destination = ?1 AND lead_id = ?2",
                )?
                .execute(params![
                    destination.as_str(),
                    lead_id,
                    state,
                    attempts,
                    next_at,
                    record_id,
                    class,
                    reason,
                    now
                ])?;
            }
            tx.commit()
        })
        .map_err(StoreError::from)
    }

    async fn paused_until(&self, destination: &DestinationName) -> Result<Option<i64>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT until_ms FROM destination_pauses WHERE destination = ?1",
                params![destination.as_str()],
                |r| r.get(0),
            )
            .optional()
        })
        .map_err(StoreError::from)
    }

    async fn pause(
        &self,
        destination: &DestinationName,
        until_ms: i64,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO destination_pauses (destination, until_ms, reason) VALUES (?1, ?2, ?3)
                 ON CONFLICT (destination) DO UPDATE SET until_ms = excluded.until_ms, reason = excluded.reason",
                params![destination.as_str(), until_ms, reason],
            )
        })
        .map(|_| ())
        .map_err(StoreError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leadpipe_core::destinations::{ForwardLimits, Outcome, forward_round, parse_file};
    use leadpipe_core::memory::ScriptedDestination;
    use leadpipe_core::ports::{LeadSourceKind, LeadStore, StoredLead};

    fn stored(id: &str, form: &str) -> StoredLead {
        let raw = format!(
            r#"{{"id":"{id}","created_time":"2026-11-30T04:00:00+0000","form_id":"{form}","field_data":[{{"name":"email","values":["p{id}@example.org"]}}]}}"#
        );
        let lead = leadpipe_graph::Lead::from_json(&raw).unwrap();
        StoredLead {
            readable: leadpipe_core::readable::Readable::of(&lead.field_data, None),
            lead,
            page_id: "77".into(),
            form_id: Some(form.into()),
            source: LeadSourceKind::Webhook,
            ingested_at: time::OffsetDateTime::now_utc(),
        }
    }

    fn db(name: &str) -> LocalDb {
        let path = std::env::temp_dir().join(format!(
            "leadpipe-deliveries-{name}-{}.db",
            std::process::id()
        ));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        LocalDb::open(&path).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_first_write_queues_each_destination_that_takes_it_and_rounds_deliver_once() {
        let db = db("first");
        let configs = parse_file(
            "[[destination]]\nname = \"all\"\nkind = \"slack\"\n[[destination]]\nname = \"solar\"\nkind = \"slack\"\nforms = [\"55\"]\n",
        )
        .unwrap();
        db.enable_destinations(&configs).unwrap();
        db.put_leads(&[stored("1", "55"), stored("2", "66")])
            .await
            .unwrap();
        db.put_leads(&[stored("1", "55")]).await.unwrap();
        let counts = db.destination_counts().unwrap();
        let pending: Vec<(String, u64)> =
            counts.iter().map(|c| (c.name.clone(), c.pending)).collect();
        assert_eq!(pending, [("all".to_owned(), 2), ("solar".to_owned(), 1)]);

        // The event queued is the one serve forwards, and a replay rebuilds the same one.
        let row = db
            .leads()
            .unwrap()
            .into_iter()
            .find(|r| r.lead_id == "1")
            .unwrap();
        let body: String = db
            .with(|c| {
                c.query_row(
                    "SELECT body FROM deliveries WHERE lead_id = '1' AND destination = 'all'",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap();
        let queued: LeadReceived = serde_json::from_str(&body).unwrap();
        assert_eq!(queued, LeadReceived::from_row(&row));

        let destination = ScriptedDestination::answering(vec![
            Outcome::Delivered(Some("m1".into())),
            Outcome::Refused {
                reason: "HTTP 400: invalid_payload".into(),
            },
        ]);
        let now = now_unix_ms();
        let report = forward_round(
            &db,
            &configs[0],
            &destination,
            &ForwardLimits::default(),
            now,
        )
        .await
        .unwrap();
        assert_eq!((report.delivered, report.dead), (1, 1));
        assert_eq!(db.delivery("all", "1").unwrap().unwrap().0, "delivered");
        let again = forward_round(
            &db,
            &configs[0],
            &destination,
            &ForwardLimits::default(),
            now,
        )
        .await
        .unwrap();
        assert_eq!(again.delivered + again.dead, 0, "nothing is sent twice");
        let all = &db.destination_counts().unwrap()[0];
        assert_eq!((all.delivered, all.dead), (1, 1));
        assert_eq!(
            all.newest_dead,
            Some(("refused".into(), "HTTP 400: invalid_payload".into()))
        );

        // redrive brings the dead one back; it goes through.
        assert_eq!(
            db.redrive_deliveries(Some(DeadLetterClass::Refused), true)
                .unwrap(),
            1
        );
        assert_eq!(db.redrive_deliveries(None, false).unwrap(), 1);
        let destination = ScriptedDestination::default();
        forward_round(
            &db,
            &configs[0],
            &destination,
            &ForwardLimits::default(),
            now_unix_ms(),
        )
        .await
        .unwrap();
        assert_eq!(db.destination_counts().unwrap()[0].delivered, 2);

        // forget takes every destination's copy of the lead's event with it.
        db.erase(&["1".to_owned()]).unwrap();
        assert_eq!(db.delivery("all", "1").unwrap(), None);
        assert_eq!(db.delivery("solar", "1").unwrap(), None);
        assert!(db.delivery("all", "2").unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_hides_a_lead_until_it_ends_and_a_pause_is_kept() {
        let db = db("lease");
        let configs = parse_file("[[destination]]\nname = \"d\"\nkind = \"slack\"\n").unwrap();
        db.enable_destinations(&configs).unwrap();
        db.put_leads(&[stored("1", "55")]).await.unwrap();
        let name = &configs[0].name;
        let now = now_unix_ms();
        let first = db
            .due(name, now, 10, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(first.len(), 1);
        // Killed mid-delivery: hidden during the lease, due after it.
        assert!(
            db.due(name, now + 1_000, 10, Duration::from_secs(60))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            db.due(name, now + 61_000, 10, Duration::from_secs(60))
                .await
                .unwrap()
                .len(),
            1
        );
        db.pause(name, now + 5_000, "daily budget").await.unwrap();
        assert_eq!(db.paused_until(name).await.unwrap(), Some(now + 5_000));
    }
}
