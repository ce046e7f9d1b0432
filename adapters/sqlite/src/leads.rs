//! The leads table: the idempotent first write (with its outbox event, initial stage and
//! lookup keys in the same transaction), and the reads export and the checks make.

use crate::schema::has_column;
use crate::{LeadFilter, LeadRow, LocalDb, LocalError, OPTIONAL_COLUMNS, now_unix_ms};
use leadpipe_core::lead_received::LeadReceived;
use leadpipe_core::ports::{Cause, LeadStore, PutOutcome, StoreError, StoredLead};
use rusqlite::{OptionalExtension, params};
use std::collections::BTreeMap;

impl LocalDb {
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
                // `webhook` or `backfill`, read by the enum's own names.
                let source: String = r.get(17)?;
                let parsed = serde_json::from_str(&fields)
                    .map_err(|e| corrupt("fields", e))
                    .and_then(|fields| {
                        serde_json::from_str(&disclaimers)
                            .map(|d| (fields, d))
                            .map_err(|e| corrupt("custom_disclaimer_responses", e))
                    })
                    .and_then(|(fields, d)| {
                        serde_json::from_value(serde_json::Value::String(source))
                            .map(|source| (fields, d, source))
                            .map_err(|e| corrupt("source", e))
                    });
                let (fields, custom_disclaimer_responses, source) = match parsed {
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
                    source,
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
            // Read in the write's own transaction: whichever process writes, it queues for
            // the destinations the last serve named.
            let destinations = crate::deliveries::enabled(&tx)?;
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
                // And each destination that takes it (docs/destinations.md), in the same
                // transaction: a lead stored is a lead every destination gets.
                if changed == 1 && !destinations.is_empty() {
                    let event = LeadReceived::from_record(&record);
                    crate::deliveries::queue_in(&tx, &destinations, &event, now)?;
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

impl From<LocalError> for StoreError {
    fn from(e: LocalError) -> Self {
        match e {
            // A damaged row is the store's answer, not its absence.
            LocalError::Corrupt { .. } => StoreError::Rejected(Cause::from_error(e)),
            other => StoreError::Unavailable(Cause::from_error(other)),
        }
    }
}

/// A scan's failure: the file's, or the one the caller's `each` returned.
enum ScanStop<E> {
    File(LocalError),
    Each(E),
}

impl<E> From<LocalError> for ScanStop<E> {
    fn from(e: LocalError) -> Self {
        Self::File(e)
    }
}

impl leadpipe_core::export::LeadScan for LocalDb {
    async fn field_names(
        &self,
        filter: &LeadFilter,
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        Ok(LocalDb::field_names(self, filter)?)
    }

    async fn catalog(&self) -> Result<Vec<leadpipe_core::forms::Form>, StoreError> {
        Ok(LocalDb::catalog(self)?)
    }

    async fn each_lead<E: From<StoreError> + Send>(
        &self,
        filter: &LeadFilter,
        mut each: impl FnMut(LeadRow) -> Result<(), E> + Send,
    ) -> Result<usize, E> {
        LocalDb::each_lead(self, filter, |row| each(row).map_err(ScanStop::Each)).map_err(|stop| {
            match stop {
                ScanStop::File(e) => E::from(StoreError::from(e)),
                ScanStop::Each(e) => e,
            }
        })
    }
}
