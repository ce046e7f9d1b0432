//! The local stage queue and ledger (docs/stages.md): one row per (lead, stage), keyed by
//! its event id, so the same stage twice is one row and one event. A row is `queued` until
//! Meta takes it (`sent`, kept: the ledger) or it is refused (`refused`, with its class: a
//! dead letter `redrive` can bring back).

use super::{LocalDb, LocalError, now_unix_ms};
use leadpipe_core::ports::{Cause, DeadLetterClass, StoreError};
use leadpipe_core::stages::{StageChange, StageLead, StageLeads, StageLedger, StageOutcome};
use rusqlite::params;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// Tries before a stage Meta keeps answering with a transient error is `exhausted`.
pub const MAX_STAGE_ATTEMPTS: i64 = 12;

/// A stage taken from the queue to send.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedStage {
    /// Its event id (the row's key).
    pub event_id: String,
    /// The stage.
    pub stage: StageChange,
    /// Tries so far, this one included.
    pub attempts: i64,
}

/// What queueing some stages did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StagesQueued {
    /// New rows (or refused ones given again).
    pub queued: usize,
    /// The same (lead, stage) queued or sent already: one event.
    pub already: usize,
}

/// The stage rows, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StageCounts {
    /// Waiting to be sent.
    pub queued: i64,
    /// Taken by Meta.
    pub sent: i64,
    /// Refused, by class.
    pub refused: BTreeMap<String, i64>,
}

impl LocalDb {
    /// From now on, a lead's first write also queues its initial stage named `name`.
    pub fn enable_initial_stage(&self, name: leadpipe_core::stages::StageName) {
        if let Ok(mut initial) = self.initial_stage.write() {
            *initial = Some(name);
        }
    }

    /// Queues stages durably (committed before this returns). A (lead, stage) already
    /// queued or sent is left as it is; one refused before is queued again with what it
    /// says now (a CRM correcting a stage time).
    pub fn queue_stages(&self, stages: &[StageChange]) -> Result<StagesQueued, LocalError> {
        let now = now_unix_ms();
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut done = StagesQueued::default();
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO stages (event_id, lead_id, body, queued_at, next_at) VALUES (?1, ?2, ?3, ?4, ?4)
                     ON CONFLICT (event_id) DO UPDATE SET body = excluded.body, state = 'queued',
                        next_at = excluded.next_at, attempts = 0, reason_class = NULL, reason = NULL
                     WHERE stages.state = 'refused'",
                )?;
                for stage in stages {
                    let changed =
                        insert.execute(params![stage.event_id(), stage.lead_id, stage.to_json(), now])?;
                    if changed == 1 {
                        done.queued += 1;
                    } else {
                        done.already += 1;
                    }
                }
            }
            tx.commit()?;
            Ok(done)
        })
    }

    /// Takes up to `max` due stages, each hidden for `lease` (a crash leaves it due again
    /// after that: sent at least once, and Meta's event id makes a repeat one event).
    pub fn claim_stages(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedStage>, LocalError> {
        let now = now_unix_ms();
        let until = now + lease.as_millis() as i64;
        let rows: Vec<(String, String, i64)> = self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "UPDATE stages SET next_at = ?1, attempts = attempts + 1
                 WHERE event_id IN (SELECT event_id FROM stages WHERE state = 'queued' AND next_at <= ?2
                                    ORDER BY next_at LIMIT ?3)
                 RETURNING event_id, body, attempts",
            )?;
            stmt.query_map(params![until, now, max as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })?;
        let mut claimed = Vec::with_capacity(rows.len());
        for (event_id, body, attempts) in rows {
            match serde_json::from_str::<StageChange>(&body) {
                Ok(stage) => claimed.push(ClaimedStage {
                    event_id,
                    stage,
                    attempts,
                }),
                // Only this file writes bodies; one it cannot read is kept, refused, not lost.
                Err(_) => self.stage_refused(
                    &event_id,
                    DeadLetterClass::Malformed,
                    "the stored stage cannot be read",
                )?,
            }
        }
        Ok(claimed)
    }

    fn stage_refused(
        &self,
        event_id: &str,
        class: DeadLetterClass,
        reason: &str,
    ) -> Result<(), LocalError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE stages SET state = 'refused', reason_class = ?2, reason = ?3 WHERE event_id = ?1",
                params![event_id, class.as_str(), reason],
            )
            .map(|_| ())
        })
    }

    /// Applies what sending did: sent ones kept as sent, refused ones as dead letters, the
    /// rest due again after a backoff (or Meta's wait), `exhausted` after
    /// [`MAX_STAGE_ATTEMPTS`].
    pub fn stages_done(
        &self,
        claimed: &[ClaimedStage],
        outcomes: &[StageOutcome],
    ) -> Result<(), LocalError> {
        let now = now_unix_ms();
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for (claim, outcome) in claimed.iter().zip(outcomes) {
                match outcome {
                    StageOutcome::Sent | StageOutcome::AlreadySent => {
                        // A duplicate row cannot exist (one key), so "already sent" is this row.
                        tx.execute(
                            "UPDATE stages SET state = 'sent', sent_at = COALESCE(sent_at, ?2) WHERE event_id = ?1",
                            params![claim.event_id, now],
                        )?;
                    }
                    StageOutcome::Refused(refusal) => {
                        tx.execute(
                            "UPDATE stages SET state = 'refused', reason_class = ?2, reason = ?3 WHERE event_id = ?1",
                            params![claim.event_id, refusal.class.as_str(), refusal.reason],
                        )?;
                    }
                    StageOutcome::Retry { reason, .. } if claim.attempts >= MAX_STAGE_ATTEMPTS => {
                        tx.execute(
                            "UPDATE stages SET state = 'refused', reason_class = 'exhausted', reason = ?2 WHERE event_id = ?1",
                            params![claim.event_id, format!("tried {} times; last: {reason}", claim.attempts)],
                        )?;
                    }
                    StageOutcome::Retry { after, .. } => {
                        // 2 s, 4 s, … capped at 10 min; Meta's own wait when it gave one.
                        let backoff = Duration::from_secs(2u64.saturating_pow(claim.attempts.clamp(1, 20) as u32))
                            .min(Duration::from_secs(600));
                        let wait = after.unwrap_or(backoff).max(Duration::from_secs(1));
                        tx.execute(
                            "UPDATE stages SET next_at = ?2 WHERE event_id = ?1",
                            params![claim.event_id, now + wait.as_millis() as i64],
                        )?;
                    }
                }
            }
            tx.commit()
        })
    }

    /// Stage rows by state, refused ones by class.
    pub fn stage_counts(&self) -> Result<StageCounts, LocalError> {
        self.with(|conn| {
            let mut counts = StageCounts::default();
            let mut stmt = conn.prepare(
                "SELECT state, COALESCE(reason_class, ''), COUNT(*) FROM stages GROUP BY state, reason_class",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?;
            for row in rows {
                let (state, class, n) = row?;
                match state.as_str() {
                    "queued" => counts.queued += n,
                    "sent" => counts.sent += n,
                    _ => *counts.refused.entry(class).or_default() += n,
                }
            }
            Ok(counts)
        })
    }

    /// `(class, reason)` of each refused stage, with its lead id, oldest first.
    pub fn stage_dead_letters(&self) -> Result<Vec<(String, String, String)>, LocalError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT lead_id, reason_class, reason FROM stages WHERE state = 'refused' ORDER BY queued_at",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect()
        })
    }

    /// Refused stages of `class` (all when `None`) queued again; their count.
    pub fn redrive_stages(
        &self,
        class: Option<DeadLetterClass>,
        dry_run: bool,
    ) -> Result<usize, LocalError> {
        let class = class.map(DeadLetterClass::as_str);
        let now = now_unix_ms();
        self.with(|conn| {
            if dry_run {
                return conn.query_row(
                    "SELECT COUNT(*) FROM stages WHERE state = 'refused' AND (?1 IS NULL OR reason_class = ?1)",
                    params![class],
                    |r| r.get::<_, i64>(0).map(|n| n as usize),
                );
            }
            conn.execute(
                "UPDATE stages SET state = 'queued', next_at = ?2, attempts = 0, reason_class = NULL, reason = NULL
                 WHERE state = 'refused' AND (?1 IS NULL OR reason_class = ?1)",
                params![class, now],
            )
        })
    }
}

impl leadpipe_core::stages::StageQueue for LocalDb {
    async fn queue_stages(
        &self,
        stages: &[StageChange],
    ) -> Result<(), leadpipe_core::ports::QueueError> {
        LocalDb::queue_stages(self, stages)
            .map(|_| ())
            .map_err(|e| leadpipe_core::ports::QueueError::Unavailable(Cause::from_error(e)))
    }
}

impl StageLeads for LocalDb {
    async fn stage_leads(
        &self,
        lead_ids: &[String],
    ) -> Result<BTreeMap<String, StageLead>, StoreError> {
        let rows: Vec<(String, String, Option<String>)> = self
            .with(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT lead_id, created_time, readable FROM leads WHERE lead_id = ?1",
                )?;
                let mut rows = Vec::new();
                for id in lead_ids {
                    let mut found =
                        stmt.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                    if let Some(row) = found.next() {
                        rows.push(row?);
                    }
                }
                Ok(rows)
            })
            .map_err(|e| StoreError::Unavailable(Cause::from_error(e)))?;
        let mut leads = BTreeMap::new();
        for (id, created, readable) in rows {
            let Ok(created) = time::OffsetDateTime::parse(
                &created,
                &time::format_description::well_known::Rfc3339,
            ) else {
                continue;
            };
            let contact = readable
                .and_then(|r| serde_json::from_str::<leadpipe_core::readable::Readable>(&r).ok())
                .map(|r| r.contact)
                .unwrap_or_default();
            leads.insert(
                id,
                StageLead {
                    created_time: created.unix_timestamp(),
                    email: contact.email,
                    phone: contact.phone,
                },
            );
        }
        Ok(leads)
    }
}

impl StageLedger for LocalDb {
    async fn already_sent(&self, event_ids: &[String]) -> Result<HashSet<String>, StoreError> {
        self.with(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT 1 FROM stages WHERE event_id = ?1 AND state = 'sent'")?;
            let mut sent = HashSet::new();
            for id in event_ids {
                if stmt.exists(params![id])? {
                    sent.insert(id.clone());
                }
            }
            Ok(sent)
        })
        .map_err(|e| StoreError::Unavailable(Cause::from_error(e)))
    }

    async fn record_sent(&self, sent: &[StageChange], at: i64) -> Result<(), StoreError> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for stage in sent {
                tx.execute(
                    "INSERT INTO stages (event_id, lead_id, body, queued_at, next_at, state, sent_at)
                     VALUES (?1, ?2, ?3, ?4, ?4, 'sent', ?4)
                     ON CONFLICT (event_id) DO UPDATE SET state = 'sent', sent_at = COALESCE(sent_at, excluded.sent_at)",
                    params![stage.event_id(), stage.lead_id, stage.to_json(), at * 1_000],
                )?;
            }
            tx.commit()
        })
        .map_err(|e| StoreError::Unavailable(Cause::from_error(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leadpipe_core::stages::{StageName, StageRefusal};

    fn stage(lead: &str, name: &str, at: i64) -> StageChange {
        StageChange::new(
            lead.into(),
            StageName::parse(name).unwrap(),
            at,
            None,
            None,
            i64::MAX / 2,
        )
        .unwrap()
    }

    fn fresh(name: &str) -> LocalDb {
        let path =
            std::env::temp_dir().join(format!("leadpipe-stages-{name}-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        LocalDb::open(&path).unwrap()
    }

    #[tokio::test]
    async fn a_new_lead_queues_its_initial_stage_in_the_same_write_and_is_found_for_its_stages() {
        use leadpipe_core::ports::{LeadSourceKind, LeadStore, StoredLead};
        let db = fresh("initial");
        let lead = |id: &str| {
            StoredLead {
            lead: leadpipe_graph::Lead::from_json(&format!(
                r#"{{"id":"{id}","created_time":"2026-11-30T04:00:00+0000","form_id":"5","field_data":[]}}"#
            ))
            .unwrap(),
            page_id: "7".into(),
            form_id: Some("5".into()),
            source: LeadSourceKind::Webhook,
            ingested_at: time::OffsetDateTime::now_utc(),
            readable: leadpipe_core::readable::Readable {
                contact: leadpipe_core::readable::Contact { email: Some("a@b.c".into()), ..Default::default() },
                ..Default::default()
            },
        }
        };
        db.put_leads(&[lead("1")]).await.unwrap();
        assert_eq!(db.stage_counts().unwrap().queued, 0, "off until enabled");
        db.enable_initial_stage(StageName::parse("Lead").unwrap());
        db.put_leads(&[lead("2"), lead("2")]).await.unwrap();
        let claimed = db.claim_stages(10, Duration::from_secs(60)).unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].stage.stage.as_str(), "Lead");
        assert_eq!(claimed[0].stage.stage_time, 1_796_011_200);
        let found = db.stage_leads(&["2".into(), "9".into()]).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found["2"].created_time, 1_796_011_200);
        assert_eq!(found["2"].email.as_deref(), Some("a@b.c"));
    }

    #[tokio::test]
    async fn a_stage_is_one_row_until_sent_and_a_refused_one_comes_back_by_class() {
        let db = fresh("one-row");
        let queued = db
            .queue_stages(&[
                stage("111", "Qualified", 1_000),
                stage("111", "Qualified", 2_000),
                stage("222", "Won", 1_000),
            ])
            .unwrap();
        assert_eq!(
            queued,
            StagesQueued {
                queued: 2,
                already: 1
            }
        );
        let claimed = db.claim_stages(10, Duration::from_secs(60)).unwrap();
        assert_eq!(claimed.len(), 2);
        assert_eq!(
            claimed[0].stage.stage_time, 1_000,
            "the first one queued is kept"
        );
        // Leased: nothing more is due.
        assert!(
            db.claim_stages(10, Duration::from_secs(60))
                .unwrap()
                .is_empty()
        );
        let refused = StageOutcome::Refused(StageRefusal {
            class: DeadLetterClass::BeforeLead,
            reason: "before".into(),
        });
        db.stages_done(&claimed, &[StageOutcome::Sent, refused])
            .unwrap();
        let counts = db.stage_counts().unwrap();
        assert_eq!((counts.queued, counts.sent), (0, 1));
        assert_eq!(counts.refused.get("before_lead"), Some(&1));
        let ids: Vec<String> = claimed.iter().map(|c| c.event_id.clone()).collect();
        assert_eq!(db.already_sent(&ids).await.unwrap().len(), 1);
        // Sent is sent: the same stage again is not queued.
        assert_eq!(
            db.queue_stages(&[stage("111", "Qualified", 3_000)])
                .unwrap()
                .already,
            1
        );
        // Redrive by another class moves nothing; by its class, it is due again.
        assert_eq!(
            db.redrive_stages(Some(DeadLetterClass::Expired), false)
                .unwrap(),
            0
        );
        assert_eq!(
            db.redrive_stages(Some(DeadLetterClass::BeforeLead), true)
                .unwrap(),
            1
        );
        assert_eq!(
            db.redrive_stages(Some(DeadLetterClass::BeforeLead), false)
                .unwrap(),
            1
        );
        assert_eq!(
            db.claim_stages(10, Duration::from_secs(60)).unwrap().len(),
            1
        );
    }

    #[tokio::test]
    async fn a_stage_meta_keeps_failing_is_exhausted_not_lost() {
        let db = fresh("exhausted");
        db.queue_stages(&[stage("111", "Won", 1_000)]).unwrap();
        let mut claimed = db.claim_stages(1, Duration::from_secs(60)).unwrap();
        claimed[0].attempts = MAX_STAGE_ATTEMPTS;
        db.stages_done(
            &claimed,
            &[StageOutcome::Retry {
                reason: "Meta: transient (code 2)".into(),
                after: None,
            }],
        )
        .unwrap();
        assert_eq!(
            db.stage_counts().unwrap().refused.get("exhausted"),
            Some(&1)
        );
        let letters = db.stage_dead_letters().unwrap();
        assert_eq!(letters[0].0, "111");
        assert!(letters[0].2.contains("tried 12 times"), "{letters:?}");
    }
}
