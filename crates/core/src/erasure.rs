//! `leadpipe forget`: erasure for GDPR, LGPD and CCPA requests, written once for the local
//! file and the stack (docs/operate.md). The rules live here: who a request names (a lead id
//! only as a Graph lead id; an address or number through the keyed lookups, today's key and
//! the earlier rule's), which leads that finds, and whether the answer can be trusted
//! (leads stored without a key cannot be found). The stores erase through [`Eraser`].

use crate::contact::Region;
use crate::ports::StoreError;
use crate::privacy::LeadPolicy;
use serde::Serialize;

/// Which lookup a request goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FoundBy {
    /// The lead's own id.
    LeadId,
    /// The keyed hash of the first email.
    EmailKey,
    /// The keyed hash of the first phone.
    PhoneKey,
}

impl FoundBy {
    /// As the report says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeadId => "lead id",
            Self::EmailKey => "email_key",
            Self::PhoneKey => "phone_key",
        }
    }
}

/// Whose leads to erase, as the person asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// One lead, by its id.
    Lead(String),
    /// Every lead whose first email is this address (as normalised).
    Email(String),
    /// Every lead whose first phone is this number: read as international, and in the
    /// national format of each country given and of each form's country in the catalog.
    Phone {
        /// The number as the person gave it.
        number: String,
        /// ISO 3166 codes to read a national number with, besides the forms' own.
        countries: Vec<String>,
    },
}

/// What one store erased (or, on a dry run, would erase).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    /// Leads that were stored.
    pub leads: usize,
    /// Forwarding outbox rows.
    pub outbox: usize,
    /// Dead letters naming the leads.
    pub dead_letters: usize,
    /// Queued messages naming the leads.
    pub queued: usize,
    /// The leads' stages back to Meta (the local file's stage rows).
    pub stages: usize,
}

/// A store's side of an erasure.
pub trait Eraser {
    /// The lead ids stored under any of `keys` in the lookup `by` (an index, never a scan).
    fn find(
        &self,
        by: FoundBy,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// Erases the leads everywhere the store keeps them and records each id so no store
    /// path writes it again; on a dry run only counts.
    fn erase(
        &self,
        lead_ids: &[String],
        dry_run: bool,
    ) -> impl Future<Output = Result<Erased, StoreError>> + Send;
    /// How many stored leads have a value for `by` but no key for it (a lookup cannot find
    /// them); `None` when the store cannot tell without a scan.
    fn unsearchable(
        &self,
        by: FoundBy,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;
    /// The locales of the forms the store's catalog holds (`en_US`, ...): the countries a
    /// phone written without `+` is read in. None known: international numbers only.
    fn form_locales(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send {
        async { Ok(Vec::new()) }
    }
}

/// What `forget` did: ids and counts, never the address or number asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasureReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// The lookup used.
    pub found_by: FoundBy,
    /// The ids found (or given).
    pub lead_ids: Vec<String>,
    /// Leads that were stored.
    pub leads: usize,
    /// Forwarding outbox rows.
    pub outbox: usize,
    /// Dead letters naming them.
    pub dead_letters: usize,
    /// Queued messages naming them.
    pub queued: usize,
    /// Their stages back to Meta.
    pub stages: usize,
    /// Stored leads this lookup cannot find (no key): the erasure may be incomplete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsearchable: Option<u64>,
}

impl ErasureReport {
    /// Whether some stored leads could not be searched: a person must act.
    pub fn may_be_incomplete(&self) -> bool {
        self.unsearchable.is_some_and(|n| n > 0)
    }
}

/// Why a request cannot be carried out. Never holds the address or number.
#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    /// The lead id is not a Graph lead id.
    #[error("--lead must be a lead id: the digits of Meta's leadgen id")]
    NotALeadId,
    /// The address or number normalises to nothing.
    #[error("the {0} given is empty once normalised")]
    Empty(&'static str),
    /// A `--country` is not an ISO 3166 two-letter code.
    #[error("--country must be a two-letter ISO 3166 code, such as US or BR")]
    NotACountry,
    /// An address or number needs the secret's `lookup_key`.
    #[error(
        "no lookup_key: --email and --phone need the secret's lookup_key; leads stored without one can be forgotten by --lead only"
    )]
    NoLookupKey,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A Graph lead id: 1 to 32 digits.
pub fn is_lead_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// Finds the person's leads and erases them through `eraser`.
pub async fn forget<E: Eraser>(
    eraser: &E,
    policy: &LeadPolicy,
    who: &Who,
    dry_run: bool,
) -> Result<ErasureReport, ForgetError> {
    let (found_by, mut lead_ids) = match who {
        Who::Lead(id) => {
            if !is_lead_id(id) {
                return Err(ForgetError::NotALeadId);
            }
            (FoundBy::LeadId, vec![id.clone()])
        }
        Who::Email(email) => {
            if !policy.has_lookup_key() {
                return Err(ForgetError::NoLookupKey);
            }
            let keys = policy.email_keys(email);
            if keys.is_empty() {
                return Err(ForgetError::Empty("email"));
            }
            (
                FoundBy::EmailKey,
                eraser.find(FoundBy::EmailKey, &keys).await?,
            )
        }
        Who::Phone { number, countries } => {
            if !policy.has_lookup_key() {
                return Err(ForgetError::NoLookupKey);
            }
            let mut regions: Vec<Region> = Vec::new();
            for code in countries {
                regions.push(Region::parse(code).ok_or(ForgetError::NotACountry)?);
            }
            for locale in eraser.form_locales().await? {
                if let Some(region) = Region::from_locale(&locale)
                    && !regions.contains(&region)
                {
                    regions.push(region);
                }
            }
            let keys = policy.phone_keys(number, &regions);
            if keys.is_empty() {
                return Err(ForgetError::Empty("phone"));
            }
            (
                FoundBy::PhoneKey,
                eraser.find(FoundBy::PhoneKey, &keys).await?,
            )
        }
    };
    lead_ids.sort();
    lead_ids.dedup();
    let erased = eraser.erase(&lead_ids, dry_run).await?;
    let unsearchable = match found_by {
        FoundBy::LeadId => None,
        by => eraser.unsearchable(by).await?,
    };
    Ok(ErasureReport {
        dry_run,
        found_by,
        lead_ids,
        leads: erased.leads,
        outbox: erased.outbox,
        dead_letters: erased.dead_letters,
        queued: erased.queued,
        stages: erased.stages,
        unsearchable,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;

    /// A lead's email and phone keys.
    type Keys = (Option<String>, Option<String>);

    /// A store of leads by id with their keys, and what was erased.
    #[derive(Default)]
    struct Store {
        leads: Mutex<BTreeMap<String, Keys>>,
        erased: Mutex<BTreeSet<String>>,
        without_keys: u64,
        locales: Vec<String>,
    }

    impl Eraser for Store {
        async fn form_locales(&self) -> Result<Vec<String>, StoreError> {
            Ok(self.locales.clone())
        }
        async fn find(&self, by: FoundBy, keys: &[String]) -> Result<Vec<String>, StoreError> {
            let leads = self.leads.lock().unwrap();
            Ok(leads
                .iter()
                .filter(|(_, (email, phone))| {
                    let key = if by == FoundBy::EmailKey {
                        email
                    } else {
                        phone
                    };
                    key.as_ref().is_some_and(|k| keys.contains(k))
                })
                .map(|(id, _)| id.clone())
                .collect())
        }
        async fn erase(&self, ids: &[String], dry_run: bool) -> Result<Erased, StoreError> {
            let mut leads = self.leads.lock().unwrap();
            let present = ids.iter().filter(|id| leads.contains_key(*id)).count();
            if !dry_run {
                for id in ids {
                    leads.remove(id);
                    self.erased.lock().unwrap().insert(id.clone());
                }
            }
            Ok(Erased {
                leads: present,
                ..Erased::default()
            })
        }
        async fn unsearchable(&self, _by: FoundBy) -> Result<Option<u64>, StoreError> {
            Ok(Some(self.without_keys))
        }
    }

    fn policy() -> LeadPolicy {
        LeadPolicy::new(Some(SecretString::from("k")), 0)
    }

    fn store(without_keys: u64) -> Store {
        let p = policy();
        let store = Store {
            without_keys,
            ..Store::default()
        };
        let mut leads = store.leads.lock().unwrap();
        leads.insert(
            "1".into(),
            (p.email_key("ada@example.org"), p.phone_key("+15550101")),
        );
        leads.insert("2".into(), (p.email_key(" ADA@example.org"), None));
        leads.insert(
            "3".into(),
            (p.email_key("grace@example.org"), p.phone_key("+15550101")),
        );
        drop(leads);
        store
    }

    #[tokio::test]
    async fn a_person_is_found_by_key_and_erased_and_a_dry_run_changes_nothing() {
        let store = store(0);
        let who = Who::Email("Ada@Example.ORG".into());
        let preview = forget(&store, &policy(), &who, true).await.unwrap();
        assert_eq!(
            (preview.lead_ids.clone(), preview.leads),
            (vec!["1".into(), "2".into()], 2)
        );
        assert_eq!(
            store.leads.lock().unwrap().len(),
            3,
            "a dry run erases nothing"
        );
        let done = forget(&store, &policy(), &who, false).await.unwrap();
        assert_eq!(done.lead_ids, ["1", "2"]);
        assert!(!done.may_be_incomplete());
        assert_eq!(
            store.leads.lock().unwrap().keys().collect::<Vec<_>>(),
            ["3"]
        );
        let by_phone = forget(
            &store,
            &policy(),
            &Who::Phone {
                number: "+1 555 0101".into(),
                countries: Vec::new(),
            },
            false,
        )
        .await
        .unwrap();
        assert_eq!(
            (by_phone.found_by, by_phone.lead_ids),
            (FoundBy::PhoneKey, vec!["3".into()])
        );
    }

    #[tokio::test]
    async fn only_a_lead_id_is_taken_and_an_id_not_stored_is_still_recorded() {
        let store = store(0);
        for odd in ["%", "1300_", "", "1 OR 1=1"] {
            assert!(matches!(
                forget(&store, &policy(), &Who::Lead(odd.into()), false).await,
                Err(ForgetError::NotALeadId)
            ));
        }
        let done = forget(&store, &policy(), &Who::Lead("99".into()), false)
            .await
            .unwrap();
        assert_eq!(done.leads, 0);
        assert!(
            store.erased.lock().unwrap().contains("99"),
            "recorded all the same"
        );
        assert_eq!(done.unsearchable, None, "an id needs no key");
    }

    #[tokio::test]
    async fn leads_without_keys_make_the_answer_incomplete_and_no_key_is_an_error() {
        let done = forget(
            &store(4),
            &policy(),
            &Who::Email("nobody@example.org".into()),
            false,
        )
        .await
        .unwrap();
        assert_eq!(done.unsearchable, Some(4));
        assert!(done.may_be_incomplete());
        let keyless = LeadPolicy::new(None, 0);
        assert!(matches!(
            forget(&store(0), &keyless, &Who::Email("a@b.c".into()), false).await,
            Err(ForgetError::NoLookupKey)
        ));
        assert!(matches!(
            forget(
                &store(0),
                &policy(),
                &Who::Phone {
                    number: "n/a".into(),
                    countries: Vec::new(),
                },
                false
            )
            .await,
            Err(ForgetError::Empty("phone"))
        ));
    }

    #[tokio::test]
    async fn a_number_written_the_national_way_finds_the_lead_through_the_forms_country() {
        let p = policy();
        let mut store = Store::default();
        // Stored as ingest stores it now: the E.164 number's key.
        store
            .leads
            .lock()
            .unwrap()
            .insert("7".into(), (None, p.phone_key("+15551234567")));
        let ask = |number: &str, countries: &[&str]| Who::Phone {
            number: number.into(),
            countries: countries.iter().map(|c| (*c).to_owned()).collect(),
        };
        let national = forget(&store, &p, &ask("555-123-4567", &[]), true)
            .await
            .unwrap();
        assert!(
            national.lead_ids.is_empty(),
            "no form known: no country to read it in"
        );
        store.locales = vec!["en_US".into()];
        for written in ["555-123-4567", "+1 (555) 123-4567", "15551234567"] {
            let found = forget(&store, &p, &ask(written, &[]), true).await.unwrap();
            assert_eq!(found.lead_ids, ["7"], "{written}");
        }
        let by_flag = Store {
            locales: Vec::new(),
            ..Store::default()
        };
        by_flag
            .leads
            .lock()
            .unwrap()
            .insert("7".into(), (None, p.phone_key("+15551234567")));
        let found = forget(&by_flag, &p, &ask("(555) 123-4567", &["us"]), true)
            .await
            .unwrap();
        assert_eq!(found.lead_ids, ["7"], "--country US");
        assert!(matches!(
            forget(&by_flag, &p, &ask("555", &["USA"]), true).await,
            Err(ForgetError::NotACountry)
        ));
    }
}
