//! `leadpipe redrive` on the SQLite file: dead letters back to the queue, in one
//! transaction, so none is lost or doubled by a crash midway.

use crate::{LocalDb, LocalError, now_unix_ms};
use rusqlite::params;

impl LocalDb {
    /// Moves the dead letters of `reason_class` (all when `None`) back to the queue; with
    /// `dry_run`, only counts them. Returns how many.
    pub fn redrive(&self, reason_class: Option<&str>, dry_run: bool) -> Result<usize, LocalError> {
        let now = now_unix_ms();
        if dry_run {
            // Reads only: a dry run works on a file opened read-only.
            return self.with(|conn| {
                conn.query_row(
                    "SELECT COUNT(*) FROM dead_letters WHERE ?1 IS NULL OR reason_class = ?1
                       OR (?1 = 'exhausted' AND reason_class = 'max_receives')",
                    params![reason_class],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as usize)
            });
        }
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let rows: Vec<(i64, String)> = {
                let mut stmt = tx.prepare(
                    "SELECT id, body FROM dead_letters WHERE ?1 IS NULL OR reason_class = ?1 ORDER BY id",
                )?;
                stmt.query_map(params![reason_class], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?
            };
            for (id, body) in &rows {
                tx.execute(
                    "INSERT INTO queue (body, visible_at, enqueued_at) VALUES (?1, ?2, ?2)",
                    params![body, now],
                )?;
                tx.execute("DELETE FROM dead_letters WHERE id = ?1", params![id])?;
            }
            tx.commit()?;
            Ok(rows.len())
        })
    }

    /// Moves the dead letters `wanted` picks (by class and body) back to the queue, in one
    /// transaction; with `dry_run`, only counts them. Returns how many.
    pub fn redrive_where(
        &self,
        wanted: impl Fn(&str, &str) -> bool,
        dry_run: bool,
    ) -> Result<usize, LocalError> {
        let now = now_unix_ms();
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(if dry_run {
                rusqlite::TransactionBehavior::Deferred
            } else {
                rusqlite::TransactionBehavior::Immediate
            })?;
            let rows: Vec<(i64, String)> = {
                let mut stmt =
                    tx.prepare("SELECT id, reason_class, body FROM dead_letters ORDER BY id")?;
                stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?
                .filter_map(|row| match row {
                    Ok((id, class, body)) if wanted(&class, &body) => Some(Ok((id, body))),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<rusqlite::Result<_>>()?
            };
            if dry_run {
                return Ok(rows.len());
            }
            for (id, body) in &rows {
                tx.execute(
                    "INSERT INTO queue (body, visible_at, enqueued_at) VALUES (?1, ?2, ?2)",
                    params![body, now],
                )?;
                tx.execute("DELETE FROM dead_letters WHERE id = ?1", params![id])?;
            }
            tx.commit()?;
            Ok(rows.len())
        })
    }
}
