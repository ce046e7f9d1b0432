//! `leadpipe status` on the SQLite file: core's [`StatusSource`] over the queue, the dead
//! letters, the checkpoints, the leads and the outbox.

use crate::{LocalDb, LocalError, now_unix_ms};
use leadpipe_core::ports::{Cause, StoreError};
use leadpipe_core::status::{
    CheckpointFacts, DeadLetterGroup, FormLeads, ForwardingFacts, QueueFacts, StatusSource,
};
use rusqlite::params;

fn unavailable(e: LocalError) -> StoreError {
    StoreError::Unavailable(Cause::from_error(e))
}

fn age_seconds(since_ms: Option<i64>) -> Option<u64> {
    since_ms.map(|at| (now_unix_ms().saturating_sub(at).max(0) / 1000) as u64)
}

impl LocalDb {
    fn stage_facts(&self) -> Result<leadpipe_core::status::StageFacts, LocalError> {
        let counts = self.stage_counts()?;
        let letters = self.stage_dead_letters()?;
        let refused = counts
            .refused
            .iter()
            .map(|(class, n)| DeadLetterGroup {
                reason_class: class.clone(),
                count: *n as u64,
                newest_reason: letters
                    .iter()
                    .rev()
                    .find(|(_, c, _)| c == class)
                    .map(|(_, _, reason)| reason.clone())
                    .unwrap_or_default(),
                newest_at: None,
            })
            .collect();
        Ok(leadpipe_core::status::StageFacts {
            queued: counts.queued as u64,
            sent: counts.sent as u64,
            refused,
        })
    }
}

impl StatusSource for LocalDb {
    async fn stages(&self) -> Result<Option<leadpipe_core::status::StageFacts>, StoreError> {
        self.stage_facts().map(Some).map_err(unavailable)
    }

    async fn queue(&self) -> Result<Option<QueueFacts>, StoreError> {
        let now = now_unix_ms();
        self.with(|conn| {
            conn.query_row(
                // Locally a lease and a rate limit's delay are one state (not visible yet).
                "SELECT COALESCE(SUM(visible_at <= ?1), 0), COALESCE(SUM(visible_at > ?1), 0), MIN(enqueued_at)
                 FROM queue",
                params![now],
                |r| {
                    Ok(QueueFacts {
                        waiting: r.get::<_, i64>(0)? as u64,
                        in_flight: r.get::<_, i64>(1)? as u64,
                        delayed: 0,
                        oldest_age_seconds: age_seconds(r.get(2)?),
                    })
                },
            )
        })
        .map(Some)
        .map_err(unavailable)
    }

    async fn dead_letters(&self) -> Result<Option<Vec<DeadLetterGroup>>, StoreError> {
        self.dead_letter_summary().map(Some).map_err(unavailable)
    }

    async fn checkpoints(&self) -> Result<Option<Vec<CheckpointFacts>>, StoreError> {
        LocalDb::checkpoints(self).map(Some).map_err(unavailable)
    }

    async fn leads_per_form(
        &self,
        day: &str,
        week: &str,
        _forms: &[String],
    ) -> Result<Option<Vec<FormLeads>>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT form_id, COALESCE(SUM(created_time >= ?1), 0), COUNT(*) FROM leads
                 WHERE created_time >= ?2 GROUP BY form_id ORDER BY form_id",
            )?;
            stmt.query_map(params![day, week], |r| {
                Ok(FormLeads {
                    form_id: r.get(0)?,
                    name: None,
                    last_24h: r.get::<_, i64>(1)? as u64,
                    last_7d: r.get::<_, i64>(2)? as u64,
                })
            })?
            .collect()
        })
        .map(Some)
        .map_err(unavailable)
    }

    async fn page_tokens(
        &self,
    ) -> Result<Option<Vec<leadpipe_core::tokens::PageTokenHealth>>, StoreError> {
        self.token_health().map(Some).map_err(unavailable)
    }

    async fn form_names(&self) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        Ok(self
            .catalog()
            .map_err(unavailable)?
            .into_iter()
            .filter_map(|f| f.name.map(|n| (f.id, n)))
            .collect())
    }

    async fn destinations(
        &self,
    ) -> Result<Option<Vec<leadpipe_core::status::DestinationFacts>>, StoreError> {
        let counts = self.destination_counts().map_err(unavailable)?;
        Ok(Some(
            counts
                .into_iter()
                .map(|c| leadpipe_core::status::DestinationFacts {
                    oldest_pending_age_seconds: age_seconds(c.oldest_pending_ms),
                    paused_until: c
                        .paused_until
                        .filter(|until| *until > now_unix_ms())
                        .and_then(|ms| time::OffsetDateTime::from_unix_timestamp(ms / 1000).ok())
                        .map(leadpipe_core::record::contract_time),
                    newest_dead_class: c.newest_dead.as_ref().map(|(class, _)| class.clone()),
                    newest_dead_reason: c.newest_dead.map(|(_, reason)| reason),
                    name: c.name,
                    pending: c.pending,
                    delivered: c.delivered,
                    dead: c.dead,
                })
                .collect(),
        ))
    }

    async fn forwarding(&self) -> Result<Option<ForwardingFacts>, StoreError> {
        // A file from before forwarding existed has no outbox: nothing to show then.
        Ok(self.outbox_summary().ok().map(|o| ForwardingFacts {
            pending: o.pending as u64,
            oldest_pending_age_seconds: age_seconds(o.oldest_pending_ms),
            dead: o.dead as u64,
            newest_dead_reason: o.newest_dead_reason,
        }))
    }
}
