//! Backfill's checkpoints with their last run's facts, and the page tokens' health.

use crate::{LocalDb, LocalError};
use leadpipe_core::backfill::CheckpointKey;
use leadpipe_core::ports::{Cause, CheckpointStore, RunFacts, StoreError};
use leadpipe_core::record::contract_time;
use leadpipe_core::status::{CheckpointFacts, LastRun};
use rusqlite::{OptionalExtension, params};
use time::OffsetDateTime;

impl LocalDb {
    /// Every checkpoint with its last run's facts, by key (`form#` or `ad#`; a row with
    /// another key is no checkpoint and is left out).
    pub fn checkpoints(&self) -> Result<Vec<CheckpointFacts>, LocalError> {
        let rows = self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT pk, checkpoint, updated_at, last_run_leads_read, last_run_new,
                        last_run_already_present FROM state ORDER BY pk",
            )?;
            stmt.query_map([], |r| {
                let count = |i| r.get::<_, i64>(i).map(|n| n.max(0) as u64);
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    CheckpointFacts {
                        key: CheckpointKey::new(leadpipe_core::backfill::NodeKind::Form, "0"),
                        read_to: String::new(),
                        updated_at: r.get(2)?,
                        last_run: LastRun {
                            leads_read: count(3)?,
                            new: count(4)?,
                            already_present: count(5)?,
                        },
                        name: None,
                    },
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(pk, checkpoint, facts)| {
                Some(CheckpointFacts {
                    key: CheckpointKey::parse(&pk)?,
                    read_to: OffsetDateTime::from_unix_timestamp(checkpoint)
                        .map(contract_time)
                        .unwrap_or_default(),
                    ..facts
                })
            })
            .collect())
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
