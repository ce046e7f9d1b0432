//! Retention and erasure on the SQLite file (docs/operate.md): the lookup keys and expiry
//! each lead is written with, the hourly purge of expired leads, and `forget`.

use crate::{LocalDb, LocalError};
use leadpipe_core::privacy::LeadPolicy;
use rusqlite::params;

/// What one erasure removed: ids and counts only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    /// The leads removed.
    pub lead_ids: Vec<String>,
    /// Forwarding outbox rows removed (pending or dead).
    pub outbox: usize,
    /// Dead letters that named one of the leads.
    pub dead_letters: usize,
    /// Queued messages that named one of the leads.
    pub queued: usize,
    /// Stage rows (queued, sent or refused) of the leads: stage names and values are the
    /// business's data about the person.
    pub stages: usize,
}

/// A first email that normalises to something (not blank), and a first phone with a digit:
/// only these can have a key, so only these count as unsearchable without one.
const HAS_EMAIL: &str = "trim(COALESCE(json_extract(fields, '$.email[0]'), '')) <> ''";
const HAS_PHONE: &str = "COALESCE(json_extract(fields, '$.phone_number[0]'), '') GLOB '*[0-9]*'";
/// A lead that has one of them without its key.
fn unkeyed_condition() -> String {
    format!(
        "json_valid(fields) AND ((email_key IS NULL AND {HAS_EMAIL}) OR (phone_key IS NULL AND {HAS_PHONE}))"
    )
}

/// Stored leads with an email (a phone) but no lookup key for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unkeyed {
    /// With an email and no `email_key`.
    pub by_email: u64,
    /// With a phone and no `phone_key`.
    pub by_phone: u64,
}

impl LocalDb {
    /// From now on, leads are written with `policy`'s lookup keys and expiry.
    pub fn set_policy(&self, policy: LeadPolicy) {
        if let Ok(mut p) = self.policy.write() {
            *p = policy;
        }
    }

    /// Deletes leads whose `expires_at` (unix s) is before `now`; returns how many.
    pub fn purge_expired(&self, now: i64) -> Result<usize, LocalError> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM outbox WHERE lead_id IN
                   (SELECT lead_id FROM leads WHERE expires_at IS NOT NULL AND expires_at < ?1)",
                params![now],
            )?;
            tx.execute(
                "DELETE FROM stages WHERE lead_id IN
                   (SELECT lead_id FROM leads WHERE expires_at IS NOT NULL AND expires_at < ?1)",
                params![now],
            )?;
            // Each destination's copy of the lead event goes with the lead.
            tx.execute(
                "DELETE FROM deliveries WHERE lead_id IN
                   (SELECT lead_id FROM leads WHERE expires_at IS NOT NULL AND expires_at < ?1)",
                params![now],
            )?;
            let removed = tx.execute(
                "DELETE FROM leads WHERE expires_at IS NOT NULL AND expires_at < ?1",
                params![now],
            )?;
            tx.commit()?;
            Ok(removed)
        })
    }

    /// The leads with this lookup key (by the partial indexes: no scan).
    pub fn leads_by_lookup(
        &self,
        email_key: Option<&str>,
        phone_key: Option<&str>,
    ) -> Result<Vec<String>, LocalError> {
        self.with(|conn| {
            let mut ids = Vec::new();
            if let Some(key) = email_key {
                let mut stmt = conn.prepare("SELECT lead_id FROM leads WHERE email_key = ?1")?;
                for id in stmt.query_map(params![key], |r| r.get::<_, String>(0))? {
                    ids.push(id?);
                }
            }
            if let Some(key) = phone_key {
                let mut stmt = conn.prepare("SELECT lead_id FROM leads WHERE phone_key = ?1")?;
                for id in stmt.query_map(params![key], |r| r.get::<_, String>(0))? {
                    ids.push(id?);
                }
            }
            ids.sort();
            ids.dedup();
            Ok(ids)
        })
    }

    /// Stored leads that have an email (a phone) but no lookup key for it: `forget --email`
    /// (`--phone`) cannot find them.
    pub fn unkeyed(&self) -> Result<Unkeyed, LocalError> {
        self.with(|conn| {
            conn.query_row(
                &format!(
                    "SELECT COALESCE(SUM(email_key IS NULL AND {HAS_EMAIL}), 0),
                            COALESCE(SUM(phone_key IS NULL AND {HAS_PHONE}), 0)
                     FROM leads WHERE json_valid(fields)"
                ),
                [],
                |r| {
                    Ok(Unkeyed {
                        by_email: r.get::<_, i64>(0)?.max(0) as u64,
                        by_phone: r.get::<_, i64>(1)?.max(0) as u64,
                    })
                },
            )
        })
    }

    /// How many stored leads [`LocalDb::add_lookup_keys`] would key.
    pub fn unkeyed_leads(&self) -> Result<i64, LocalError> {
        self.with(|conn| {
            conn.query_row(
                &format!("SELECT COUNT(*) FROM leads WHERE {}", unkeyed_condition()),
                [],
                |r| r.get(0),
            )
        })
    }

    /// Adds the lookup keys `policy` gives to leads stored without them, `batch` leads per
    /// transaction, so an interrupted run keeps what it did and the next one goes on from
    /// there (it only looks at leads still without a key). Returns the leads keyed.
    pub fn add_lookup_keys(&self, policy: &LeadPolicy, batch: usize) -> Result<usize, LocalError> {
        let mut keyed = 0;
        let mut after = String::new();
        loop {
            let rows: Vec<(String, Option<String>, Option<String>)> = self.with(|conn| {
                let mut stmt = conn.prepare(&format!(
                    // The contact's E.164 phone when the lead has one (the key ingest writes now).
                    "SELECT lead_id, json_extract(fields, '$.email[0]'),
                            COALESCE(json_extract(readable, '$.contact.phone'), json_extract(fields, '$.phone_number[0]'))
                     FROM leads
                     WHERE lead_id > ?1 AND {}
                     ORDER BY lead_id LIMIT ?2",
                    unkeyed_condition()
                ))?;
                stmt.query_map(params![after, batch as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect()
            })?;
            let Some((last, _, _)) = rows.last() else {
                return Ok(keyed);
            };
            after = last.clone();
            self.with(|conn| {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                for (id, email, phone) in &rows {
                    let keys = policy.keys_of(email.as_deref(), phone.as_deref());
                    keyed += tx.execute(
                        "UPDATE leads SET email_key = COALESCE(email_key, ?2), phone_key = COALESCE(phone_key, ?3)
                         WHERE lead_id = ?1",
                        params![id, keys.email_key, keys.phone_key],
                    )?;
                }
                tx.commit()
            })?;
        }
    }

    /// Whether a lead is stored.
    pub fn has_lead(&self, lead_id: &str) -> Result<bool, LocalError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT COUNT(*) FROM leads WHERE lead_id = ?1",
                params![lead_id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
        })
    }

    /// Dead letters and queued messages naming `lead_id` (their bodies are queue messages
    /// whose `leadgen_id` is the id), as `(dead letters, queued)` row ids. The id is compared
    /// whole, never as a pattern: `%` or `_` in it match nothing but themselves. `instr`
    /// narrows the rows before the JSON is read; a body that is not JSON names no lead.
    fn messages_naming(
        conn: &rusqlite::Connection,
        lead_id: &str,
    ) -> rusqlite::Result<(Vec<i64>, Vec<i64>)> {
        let ids = |table: &str| -> rusqlite::Result<Vec<i64>> {
            let mut stmt = conn.prepare(&format!(
                "SELECT id FROM {table}
                 WHERE instr(body, ?1) > 0
                   AND CASE WHEN json_valid(body) THEN json_extract(body, '$.leadgen_id') END = ?1"
            ))?;
            let rows = stmt.query_map(params![lead_id], |r| r.get::<_, i64>(0))?;
            rows.collect()
        };
        Ok((ids("dead_letters")?, ids("queue")?))
    }

    /// Whether `lead_id` was erased (an erasure record holds it).
    pub fn is_erased(&self, lead_id: &str) -> Result<bool, LocalError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT COUNT(*) FROM erased WHERE lead_id = ?1",
                params![lead_id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
        })
    }

    /// What erasing these leads would remove, without removing it (`forget --dry-run`):
    /// reads only, so it works on a file opened read-only and changes nothing.
    pub fn erasure_preview(&self, lead_ids: &[String]) -> Result<Erased, LocalError> {
        self.with(|conn| {
            let mut preview = Erased::default();
            for id in lead_ids {
                let count = |sql: &str| {
                    conn.query_row(sql, params![id], |r| r.get::<_, i64>(0))
                        .map(|n| n as usize)
                };
                if count("SELECT COUNT(*) FROM leads WHERE lead_id = ?1")? > 0 {
                    preview.lead_ids.push(id.clone());
                }
                preview.outbox += count("SELECT COUNT(*) FROM outbox WHERE lead_id = ?1")?;
                preview.stages += count("SELECT COUNT(*) FROM stages WHERE lead_id = ?1")?;
                let (dead, queued) = Self::messages_naming(conn, id)?;
                preview.dead_letters += dead.len();
                preview.queued += queued.len();
            }
            Ok(preview)
        })
    }

    /// Erases these leads everywhere the file keeps them: the leads table, the outbox, their
    /// stages, and any dead letter or queued message naming them. One transaction: all or nothing.
    /// The erasure record of each id is written in the same transaction (docs/operate.md).
    pub fn erase(&self, lead_ids: &[String]) -> Result<Erased, LocalError> {
        let now = leadpipe_core::record::contract_time(time::OffsetDateTime::now_utc());
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut erased = Erased::default();
            for id in lead_ids {
                // The record first: from this commit on, no store path writes the id again.
                tx.execute(
                    "INSERT OR IGNORE INTO erased (lead_id, erased_at) VALUES (?1, ?2)",
                    params![id, now],
                )?;
                if tx.execute("DELETE FROM leads WHERE lead_id = ?1", params![id])? > 0 {
                    erased.lead_ids.push(id.clone());
                }
                // Forwarding's rows: the outbox's and each destination's copy of the event
                // (a pending one is never sent after this).
                erased.outbox +=
                    tx.execute("DELETE FROM outbox WHERE lead_id = ?1", params![id])?;
                erased.outbox +=
                    tx.execute("DELETE FROM deliveries WHERE lead_id = ?1", params![id])?;
                erased.stages +=
                    tx.execute("DELETE FROM stages WHERE lead_id = ?1", params![id])?;
                let (dead, queued) = Self::messages_naming(&tx, id)?;
                for row in &dead {
                    tx.execute("DELETE FROM dead_letters WHERE id = ?1", params![row])?;
                }
                for row in &queued {
                    tx.execute("DELETE FROM queue WHERE id = ?1", params![row])?;
                }
                erased.dead_letters += dead.len();
                erased.queued += queued.len();
            }
            tx.commit()?;
            Ok(erased)
        })
    }
}

impl leadpipe_core::erasure::Eraser for LocalDb {
    async fn form_locales(&self) -> Result<Vec<String>, leadpipe_core::ports::StoreError> {
        Ok(self
            .catalog()
            .map_err(store_error)?
            .into_iter()
            .filter_map(|f| f.locale)
            .collect())
    }

    async fn find(
        &self,
        by: leadpipe_core::erasure::FoundBy,
        keys: &[String],
    ) -> Result<Vec<String>, leadpipe_core::ports::StoreError> {
        use leadpipe_core::erasure::FoundBy;
        let mut ids = Vec::new();
        for key in keys {
            ids.extend(
                match by {
                    FoundBy::EmailKey => self.leads_by_lookup(Some(key), None),
                    FoundBy::PhoneKey => self.leads_by_lookup(None, Some(key)),
                    FoundBy::LeadId => Ok(vec![key.clone()]),
                }
                .map_err(store_error)?,
            );
        }
        Ok(ids)
    }

    async fn erase(
        &self,
        lead_ids: &[String],
        dry_run: bool,
    ) -> Result<leadpipe_core::erasure::Erased, leadpipe_core::ports::StoreError> {
        let done = if dry_run {
            self.erasure_preview(lead_ids)
        } else {
            self.erase(lead_ids)
        }
        .map_err(store_error)?;
        Ok(leadpipe_core::erasure::Erased {
            leads: done.lead_ids.len(),
            outbox: done.outbox,
            dead_letters: done.dead_letters,
            queued: done.queued,
            stages: done.stages,
        })
    }

    async fn unsearchable(
        &self,
        by: leadpipe_core::erasure::FoundBy,
    ) -> Result<Option<u64>, leadpipe_core::ports::StoreError> {
        use leadpipe_core::erasure::FoundBy;
        let unkeyed = self.unkeyed().map_err(store_error)?;
        Ok(match by {
            FoundBy::EmailKey => Some(unkeyed.by_email),
            FoundBy::PhoneKey => Some(unkeyed.by_phone),
            FoundBy::LeadId => None,
        })
    }
}

fn store_error(e: LocalError) -> leadpipe_core::ports::StoreError {
    leadpipe_core::ports::StoreError::Unavailable(leadpipe_core::ports::Cause::from_error(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use leadpipe_core::ports::{LeadSourceKind, LeadStore, StoredLead};
    use secrecy::SecretString;

    fn stored(id: &str, email: &str, created: &str) -> StoredLead {
        StoredLead {
            lead: leadpipe_graph::Lead::from_json(&format!(
                r#"{{"id":"{id}","created_time":"{created}","field_data":[{{"name":"email","values":["{email}"]}}]}}"#
            ))
            .unwrap(),
            page_id: "7".into(),
            form_id: Some("5".into()),
            source: LeadSourceKind::Webhook,
            ingested_at: time::OffsetDateTime::now_utc(),
            readable: Default::default(),
        }
    }

    fn db(name: &str) -> (LocalDb, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("leadpipe-privacy-{name}-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        (LocalDb::open(&path).unwrap(), path)
    }

    #[tokio::test]
    async fn forget_finds_a_person_by_key_and_erases_everywhere() {
        let (db, path) = db("forget");
        let policy = LeadPolicy::new(Some(SecretString::from("lk")), 0);
        db.set_policy(policy.clone());
        db.enable_outbox();
        db.put_leads(&[
            stored("1", "Ada@Example.org", "2026-11-30T00:00:00+0000"),
            stored("2", "ada@example.org ", "2026-11-30T00:00:00+0000"),
            stored("3", "grace@example.org", "2026-11-30T00:00:00+0000"),
        ])
        .await
        .unwrap();
        db.with(|c| {
            c.execute(
                "INSERT INTO dead_letters (body, reason_class, reason, dead_lettered_at) VALUES (?1, 'token', 'expired', 'now')",
                params![r#"{"leadgen_id":"2","page_id":"7"}"#],
            )
        })
        .unwrap();
        let key = policy.email_key("ADA@example.org");
        let ids = db.leads_by_lookup(key.as_deref(), None).unwrap();
        assert_eq!(ids, ["1", "2"]);
        let preview = db.erasure_preview(&ids).unwrap();
        assert_eq!(
            (preview.lead_ids.len(), preview.outbox, preview.dead_letters),
            (2, 2, 1)
        );
        assert_eq!(db.lead_count().unwrap(), 3, "a preview removes nothing");
        let erased = db.erase(&ids).unwrap();
        assert_eq!(erased, preview);
        assert_eq!(db.lead_count().unwrap(), 1);
        assert!(db.has_lead("3").unwrap());
        assert!(db.dead_letters().unwrap().is_empty());
        assert_eq!(db.outbox_summary().unwrap().pending, 1);
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn a_lead_id_is_matched_whole_never_as_a_pattern() {
        let (db, path) = db("pattern");
        db.with(|c| {
            for id in ["13001", "13002", "1300_", "99"] {
                c.execute(
                    "INSERT INTO dead_letters (body, reason_class, reason, dead_lettered_at) VALUES (?1, 'token', 'x', 'now')",
                    params![format!(r#"{{"leadgen_id":"{id}","page_id":"7"}}"#)],
                )?;
                c.execute(
                    "INSERT INTO queue (body, visible_at, enqueued_at) VALUES (?1, 0, 0)",
                    params![format!(r#"{{"leadgen_id":"{id}","page_id":"7"}}"#)],
                )?;
            }
            c.execute(
                "INSERT INTO dead_letters (body, reason_class, reason, dead_lettered_at) VALUES ('not json %', 'malformed', 'x', 'now')",
                [],
            )
        })
        .unwrap();
        let erased = db.erase(&["%".to_owned()]).unwrap();
        assert_eq!((erased.dead_letters, erased.queued), (0, 0));
        let erased = db.erase(&["1300_".to_owned()]).unwrap();
        assert_eq!((erased.dead_letters, erased.queued), (1, 1));
        assert_eq!(db.dead_letters().unwrap().len(), 4, "the others stay");
        assert_eq!(db.queue_len().unwrap(), 3);
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn an_erased_lead_is_never_stored_again() {
        let (db, path) = db("tombstone");
        db.enable_outbox();
        db.put_leads(&[stored("41", "a@b.c", "2026-11-30T00:00:00+0000")])
            .await
            .unwrap();
        db.erase(&["41".to_owned(), "42".to_owned()]).unwrap();
        // A backfill re-reading the window, an ingest that was in flight: both see the record.
        let outcomes = db
            .put_leads(&[
                stored("41", "a@b.c", "2026-11-30T00:00:00+0000"),
                stored("42", "a@b.c", "2026-11-30T00:00:00+0000"),
                stored("43", "a@b.c", "2026-11-30T00:00:00+0000"),
            ])
            .await
            .unwrap();
        assert_eq!(
            outcomes,
            [
                leadpipe_core::ports::PutOutcome::AlreadyPresent,
                leadpipe_core::ports::PutOutcome::AlreadyPresent,
                leadpipe_core::ports::PutOutcome::Inserted
            ]
        );
        assert!(!db.has_lead("41").unwrap() && !db.has_lead("42").unwrap());
        assert!(db.is_erased("42").unwrap() && !db.is_erased("43").unwrap());
        assert_eq!(
            db.outbox_summary().unwrap().pending,
            1,
            "only 43 is forwarded"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn leads_stored_without_lookup_keys_are_counted_and_keyed_later() {
        let (db, path) = db("rekey");
        db.put_leads(&[
            stored("1", "Ada@Example.org", "2026-11-30T00:00:00+0000"),
            stored("2", "grace@example.org", "2026-11-30T00:00:00+0000"),
        ])
        .await
        .unwrap();
        assert_eq!(
            db.unkeyed().unwrap(),
            Unkeyed {
                by_email: 2,
                by_phone: 0
            },
            "stored with no lookup key"
        );
        let policy = LeadPolicy::new(Some(SecretString::from("lk")), 0);
        let key = policy.email_key("ada@example.org");
        assert!(db.leads_by_lookup(key.as_deref(), None).unwrap().is_empty());
        assert_eq!(
            db.add_lookup_keys(&policy, 1).unwrap(),
            2,
            "in batches of one"
        );
        assert_eq!(db.unkeyed().unwrap(), Unkeyed::default());
        assert_eq!(db.leads_by_lookup(key.as_deref(), None).unwrap(), ["1"]);
        assert_eq!(
            db.add_lookup_keys(&policy, 10).unwrap(),
            0,
            "a rerun has nothing to do"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn expired_leads_are_purged_and_others_kept() {
        let (db, path) = db("purge");
        db.set_policy(LeadPolicy::new(None, 30));
        db.put_leads(&[
            stored("old", "a@b.c", "2020-01-01T00:00:00+0000"),
            stored("new", "a@b.c", "2026-11-30T00:00:00+0000"),
        ])
        .await
        .unwrap();
        let now = time::macros::datetime!(2026-12-01 00:00 UTC).unix_timestamp();
        assert_eq!(db.purge_expired(now).unwrap(), 1);
        assert!(!db.has_lead("old").unwrap() && db.has_lead("new").unwrap());
        let _ = std::fs::remove_file(&path);
    }
}
