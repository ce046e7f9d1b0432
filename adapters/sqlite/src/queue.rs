//! The local queue: leases that hide a message for a while, acks that delete it, the
//! receive limit that dead-letters it (`exhausted`), and the dead letters with their class.

use crate::{LocalDb, LocalError, now_unix_ms};
use leadpipe_core::ports::{Cause, DeadLetterReason, QueueControl, QueueError};
use leadpipe_core::record::contract_time;
use leadpipe_core::status::DeadLetterGroup;
use rusqlite::params;
use std::time::Duration;
use time::OffsetDateTime;

/// A dead letter as the file keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRow {
    /// The queue message body.
    pub body: String,
    /// Its class's name (`leadpipe_core::dead_letter::DeadLetterClass`).
    pub reason_class: String,
    /// What failed and what to do; never lead contents.
    pub reason: String,
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

impl LocalDb {
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

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetterRow>, LocalError> {
        self.with(|conn| {
            let mut stmt =
                conn.prepare("SELECT body, reason_class, reason FROM dead_letters ORDER BY id")?;
            stmt.query_map([], |r| {
                Ok(DeadLetterRow {
                    body: r.get(0)?,
                    reason_class: r.get(1)?,
                    reason: r.get(2)?,
                })
            })?
            .collect()
        })
    }

    /// Dead letters by class, the largest first, each with its newest reason and time.
    pub fn dead_letter_summary(&self) -> Result<Vec<DeadLetterGroup>, LocalError> {
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
            stmt.query_map([], |r| {
                Ok(DeadLetterGroup {
                    reason_class: r.get(0)?,
                    count: r.get::<_, i64>(1)?.max(0) as u64,
                    newest_reason: r.get(2)?,
                    newest_at: Some(r.get(3)?),
                })
            })?
            .collect()
        })
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

impl leadpipe_core::ports::LeaseQueue for LocalDb {
    async fn send(&self, bodies: &[String]) -> Result<(), QueueError> {
        let now = now_unix_ms();
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for body in bodies {
                tx.execute(
                    "INSERT INTO queue (body, visible_at, enqueued_at) VALUES (?1, ?2, ?2)",
                    params![body, now],
                )?;
            }
            tx.commit()
        })
        .map_err(|e| QueueError::Unavailable(Cause::from_error(e)))
    }

    async fn lease(
        &self,
        max: usize,
        visibility: Duration,
        max_receives: u32,
    ) -> Result<Vec<leadpipe_core::ports::LeasedMessage>, QueueError> {
        Ok(
            LocalDb::lease(self, max, visibility, i64::from(max_receives))
                .map_err(|e| QueueError::Unavailable(Cause::from_error(e)))?
                .into_iter()
                .map(|m| leadpipe_core::ports::LeasedMessage {
                    receipt: m.id.to_string(),
                    body: m.body,
                    receive_count: u32::try_from(m.receive_count).unwrap_or(u32::MAX),
                })
                .collect(),
        )
    }

    async fn ack(&self, receipts: &[String]) -> Result<(), QueueError> {
        let ids = receipts
            .iter()
            .map(|r| r.parse::<i64>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| QueueError::Rejected {
                failed: receipts.len(),
                total: receipts.len(),
                reason: "not a local receipt".into(),
            })?;
        LocalDb::ack(self, &ids).map_err(|e| QueueError::Unavailable(Cause::from_error(e)))
    }
}
