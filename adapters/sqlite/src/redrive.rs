//! `redrive` on the SQLite file (core's `redrive` over [`DeadLetterPiles`]): the lead
//! queue's dead letters back to the queue, forwarding's back to the outbox, the stages'
//! back to the stage queue; each pile in one transaction, so none is lost or doubled by a
//! crash midway.

use crate::{LocalDb, LocalError, now_unix_ms};
use leadpipe_core::dead_letter::DeadLetterClass;
use leadpipe_core::failure::Cause;
use leadpipe_core::redrive::{DeadLetterPiles, Moved, Pick, Pile};
use rusqlite::params;

/// A stored class: files from before the class had its contract name say `max_receives`
/// until they are opened to write (adapters/sqlite/src/schema.rs, step 5).
fn stored_class(name: &str) -> Option<DeadLetterClass> {
    match name {
        "max_receives" => Some(DeadLetterClass::Exhausted),
        other => DeadLetterClass::parse(other),
    }
}

impl LocalDb {
    /// Moves the lead queue's dead letters `pick` picks back to the queue, in one
    /// transaction; with `dry_run`, only counts them.
    fn redrive_leads(&self, pick: &Pick<'_>, dry_run: bool) -> Result<Moved, LocalError> {
        let now = now_unix_ms();
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(if dry_run {
                rusqlite::TransactionBehavior::Deferred
            } else {
                rusqlite::TransactionBehavior::Immediate
            })?;
            let mut picked = Vec::new();
            let mut left = 0;
            {
                let mut stmt =
                    tx.prepare("SELECT id, reason_class, body FROM dead_letters ORDER BY id")?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    let (id, class, body): (i64, String, String) =
                        (row.get(0)?, row.get(1)?, row.get(2)?);
                    if pick.picks(stored_class(&class), &body) {
                        picked.push((id, body));
                    } else {
                        left += 1;
                    }
                }
            }
            let moved = Moved {
                moved: picked.len(),
                left,
                failed: 0,
            };
            if dry_run {
                return Ok(moved);
            }
            for (id, body) in &picked {
                tx.execute(
                    "INSERT INTO queue (body, visible_at, enqueued_at) VALUES (?1, ?2, ?2)",
                    params![body, now],
                )?;
                tx.execute("DELETE FROM dead_letters WHERE id = ?1", params![id])?;
            }
            tx.commit()?;
            Ok(moved)
        })
    }
}

impl DeadLetterPiles for LocalDb {
    async fn move_back(&self, pile: Pile, pick: &Pick<'_>, dry_run: bool) -> Result<Moved, Cause> {
        let moved = |n| Moved {
            moved: n,
            ..Moved::default()
        };
        match pile {
            Pile::Leads => self.redrive_leads(pick, dry_run),
            // Forwarding and stages are picked by class only (core's `Pick::reaches`).
            Pile::Forwards => self.outbox_redrive(pick.class(), dry_run).map(moved),
            Pile::Stages => self.redrive_stages(pick.class(), dry_run).map(moved),
            Pile::Destinations => self.redrive_deliveries(pick.class(), dry_run).map(moved),
        }
        .map_err(Cause::from_error)
    }
}
