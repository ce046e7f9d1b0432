//! The forwarding outbox (`serve --forward-to`): each new lead's event, written in the same
//! transaction as the lead's first insert, until the forwarder has delivered it or given up
//! on it (then it stays as a dead letter with its reason). docs/leads-out.md.

use crate::{LocalDb, LocalError, now_unix_ms};
use leadpipe_core::ports::DeadLetterClass;
use rusqlite::params;
use std::time::Duration;

/// An event to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// The lead's id: the `Idempotency-Key`.
    pub lead_id: String,
    /// The lead event's JSON, sent as it is.
    pub body: String,
    /// Deliveries tried so far.
    pub attempts: i64,
    /// When the lead was stored, unix ms.
    pub created_at: i64,
}

/// What the outbox holds, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxSummary {
    /// Events waiting to be delivered.
    pub pending: i64,
    /// When the oldest waiting event was stored, unix ms.
    pub oldest_pending_ms: Option<i64>,
    /// Events given up on.
    pub dead: i64,
    /// The newest dead letter's reason.
    pub newest_dead_reason: Option<String>,
}

impl LocalDb {
    /// From now on, a lead's first insert also writes its event to the outbox.
    pub fn enable_outbox(&self) {
        self.outbox
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes up to `max` events that are due, and hides them for `lease` (a forwarder that
    /// dies mid-send gets them back after that).
    pub fn outbox_claim(&self, max: usize, lease: Duration) -> Result<Vec<OutboxItem>, LocalError> {
        let now = now_unix_ms();
        let hidden_until = now + lease.as_millis() as i64;
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let items: Vec<OutboxItem> = {
                let mut stmt = tx.prepare(
                    "SELECT lead_id, body, attempts, created_at FROM outbox
                     WHERE state = 'pending' AND next_at <= ?1 ORDER BY next_at, created_at LIMIT ?2",
                )?;
                stmt.query_map(params![now, max as i64], |r| {
                    Ok(OutboxItem {
                        lead_id: r.get(0)?,
                        body: r.get(1)?,
                        attempts: r.get(2)?,
                        created_at: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?
            };
            for item in &items {
                tx.execute(
                    "UPDATE outbox SET next_at = ?2, leased = 1 WHERE lead_id = ?1",
                    params![item.lead_id, hidden_until],
                )?;
            }
            tx.commit()?;
            Ok(items)
        })
    }

    /// Gives back what a forwarder that is gone had claimed (call it once, before the one
    /// forwarder of this file starts): events in flight when a process died are due again
    /// at once, not after their lease. A retry's own wait is kept.
    pub fn outbox_release_claims(&self) -> Result<usize, LocalError> {
        let now = now_unix_ms();
        self.with(|conn| {
            conn.execute(
                "UPDATE outbox SET next_at = ?1, leased = 0 WHERE state = 'pending' AND leased = 1",
                params![now],
            )
        })
    }

    /// These events were delivered: they leave the outbox, in one transaction.
    pub fn outbox_delivered(&self, lead_ids: &[String]) -> Result<(), LocalError> {
        if lead_ids.is_empty() {
            return Ok(());
        }
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for id in lead_ids {
                tx.execute("DELETE FROM outbox WHERE lead_id = ?1", params![id])?;
            }
            tx.commit()
        })
    }

    /// Not delivered this time: try again at `next_at` (unix ms).
    pub fn outbox_retry(
        &self,
        lead_id: &str,
        next_at: i64,
        reason: &str,
    ) -> Result<(), LocalError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_at = ?2, leased = 0, last_error = ?3 WHERE lead_id = ?1",
                params![lead_id, next_at, reason],
            )
            .map(|_| ())
        })
    }

    /// Given up: the event stays as a dead letter of `class` (`refused`: a permanent
    /// answer; `exhausted`: too old to try again) with its reason.
    pub fn outbox_dead(
        &self,
        lead_id: &str,
        class: DeadLetterClass,
        reason: &str,
    ) -> Result<(), LocalError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, state = 'dead', leased = 0, dead_class = ?2,
                        last_error = ?3 WHERE lead_id = ?1",
                params![lead_id, class.as_str(), reason],
            )
            .map(|_| ())
        })
    }

    /// Events stored before `before` (unix ms) that are still pending and not in flight are
    /// dead letters (`exhausted`) with `reason`, whenever their next attempt was due.
    pub fn outbox_expire(&self, before: i64, reason: &str) -> Result<usize, LocalError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE outbox SET state = 'dead', dead_class = 'exhausted', last_error = ?2
                 WHERE state = 'pending' AND leased = 0 AND created_at < ?1",
                params![before, reason],
            )
        })
    }

    /// `redrive` for forwarding: the outbox's dead letters of `class` (all when `None`)
    /// are due again at once, with a fresh age (a day from now before they give up again);
    /// `dry_run` only counts them. Returns how many.
    pub fn outbox_redrive(
        &self,
        class: Option<DeadLetterClass>,
        dry_run: bool,
    ) -> Result<usize, LocalError> {
        let class = class.map(DeadLetterClass::as_str);
        // A file this version has not opened to write yet has no class column: its forward
        // dead letters are all `refused`, as the migration will make them.
        let has_class: bool = self.with(|conn| {
            conn.query_row(
                "SELECT COUNT(*) FROM pragma_table_info('outbox') WHERE name = 'dead_class'",
                [],
                |r| r.get::<_, i64>(0),
            )
        })? > 0;
        let selects = if has_class {
            "state = 'dead' AND (?1 IS NULL OR COALESCE(dead_class, 'refused') = ?1)"
        } else {
            "state = 'dead' AND (?1 IS NULL OR ?1 = 'refused')"
        };
        if dry_run {
            return self.with(|conn| {
                conn.query_row(
                    &format!("SELECT COUNT(*) FROM outbox WHERE {selects}"),
                    params![class],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as usize)
            });
        }
        let now = now_unix_ms();
        self.with(|conn| {
            conn.execute(
                &format!(
                    "UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?2, created_at = ?2,
                            leased = 0, dead_class = NULL WHERE {selects}"
                ),
                params![class, now],
            )
        })
    }

    /// Pending and dead events, for `status`.
    pub fn outbox_summary(&self) -> Result<OutboxSummary, LocalError> {
        self.with(|conn| {
            let (pending, oldest): (i64, Option<i64>) = conn.query_row(
                "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE state = 'pending'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let dead: i64 = conn.query_row(
                "SELECT COUNT(*) FROM outbox WHERE state = 'dead'",
                [],
                |r| r.get(0),
            )?;
            let newest_dead_reason: Option<String> = conn
                .query_row(
                    "SELECT last_error FROM outbox WHERE state = 'dead' ORDER BY rowid DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })?;
            Ok(OutboxSummary {
                pending,
                oldest_pending_ms: oldest,
                dead,
                newest_dead_reason,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leadpipe_core::ports::{LeadSourceKind, LeadStore, StoredLead};

    fn stored(id: &str) -> StoredLead {
        StoredLead {
            lead: leadpipe_graph::Lead::from_json(&format!(
                r#"{{"id":"{id}","created_time":"2026-11-30T04:00:00+0000","form_id":"5","field_data":[{{"name":"email","values":["a@b.c"]}}]}}"#
            ))
            .unwrap(),
            page_id: "7".into(),
            form_id: Some("5".into()),
            source: LeadSourceKind::Webhook,
            ingested_at: time::OffsetDateTime::now_utc(),
            readable: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_first_write_and_its_event_commit_together_and_a_second_write_adds_none() {
        let path = std::env::temp_dir().join(format!("leadpipe-outbox-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let db = LocalDb::open(&path).unwrap();
        db.put_leads(&[stored("1")]).await.unwrap();
        assert_eq!(db.outbox_summary().unwrap().pending, 0, "off until enabled");
        db.enable_outbox();
        db.put_leads(&[stored("2"), stored("3")]).await.unwrap();
        db.put_leads(&[stored("2")]).await.unwrap();
        assert_eq!(db.outbox_summary().unwrap().pending, 2);
        let claimed = db.outbox_claim(10, Duration::from_secs(60)).unwrap();
        assert_eq!(claimed.len(), 2);
        let event: serde_json::Value = serde_json::from_str(&claimed[0].body).unwrap();
        assert_eq!(event["version"], "1");
        assert!(
            db.outbox_claim(10, Duration::from_secs(60))
                .unwrap()
                .is_empty(),
            "leased"
        );
        db.outbox_delivered(&["2".to_owned()]).unwrap();
        db.outbox_dead("3", DeadLetterClass::Refused, "HTTP 400: no")
            .unwrap();
        let summary = db.outbox_summary().unwrap();
        assert_eq!((summary.pending, summary.dead), (0, 1));
        assert_eq!(summary.newest_dead_reason.as_deref(), Some("HTTP 400: no"));
        // A forward dead letter can be replayed: redrive makes it due again, by class.
        assert_eq!(
            db.outbox_redrive(Some(DeadLetterClass::Exhausted), false)
                .unwrap(),
            0
        );
        assert_eq!(
            db.outbox_redrive(None, true).unwrap(),
            1,
            "a dry run counts"
        );
        assert_eq!(db.outbox_summary().unwrap().dead, 1, "and moves nothing");
        assert_eq!(
            db.outbox_redrive(Some(DeadLetterClass::Refused), false)
                .unwrap(),
            1
        );
        let again = db.outbox_claim(10, Duration::from_secs(60)).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].lead_id.as_str(), again[0].attempts), ("3", 0));
        drop(db);
        let _ = std::fs::remove_file(&path);
    }
}
