//! What every store adds to a lead for the duties personal data brings (GDPR, LGPD, CCPA):
//! keyed lookup hashes of the person's email and phone, so `forget` finds their leads
//! through an index instead of a scan, and an expiry for retention (docs/operate.md).
//!
//! The hashes are HMAC-SHA256 with the secret's `lookup_key`, never plain digests: an email
//! address is guessable, and a plain hash of it would be the address in all but name.

use crate::ports::StoredLead;
use crate::settings::{Env, SettingsError};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// The field names whose first value is hashed (Meta's standard questions).
pub const EMAIL_FIELD: &str = "email";
/// See [`EMAIL_FIELD`].
pub const PHONE_FIELD: &str = "phone_number";

/// The setting that turns retention on.
pub const RETENTION_SETTING: &str = "LEADS_RETENTION_DAYS";

/// Lookup keys and retention, as every store applies them.
#[derive(Clone, Default)]
pub struct LeadPolicy {
    lookup_key: Option<SecretString>,
    retention_days: u32,
}

impl std::fmt::Debug for LeadPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeadPolicy")
            .field("lookup_keys", &self.lookup_key.is_some())
            .field("retention_days", &self.retention_days)
            .finish()
    }
}

/// The attributes a [`LeadPolicy`] gives one lead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivacyAttributes {
    /// Keyed hash of the normalised first email.
    pub email_key: Option<String>,
    /// Keyed hash of the normalised first phone number.
    pub phone_key: Option<String>,
    /// Unix seconds after which the lead is deleted.
    pub expires_at: Option<i64>,
}

impl LeadPolicy {
    /// A policy with this lookup key (none: no lookup attributes) and retention (0: keep).
    pub fn new(lookup_key: Option<SecretString>, retention_days: u32) -> Self {
        Self {
            lookup_key: lookup_key.filter(|k| !k.expose_secret().is_empty()),
            retention_days,
        }
    }

    /// `LEADS_RETENTION_DAYS` (unset or 0: keep) with the secret's `lookup_key`.
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        lookup_key: Option<SecretString>,
    ) -> Result<Self, SettingsError> {
        let days = match env.optional(RETENTION_SETTING) {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|d| *d <= 36_500)
                .ok_or(SettingsError::Invalid {
                    name: RETENTION_SETTING,
                    why: "it must be a whole number of days from 0 (keep) to 36500".into(),
                })?,
        };
        Ok(Self::new(lookup_key, days))
    }

    /// Days a lead is kept; 0 keeps it.
    pub fn retention_days(&self) -> u32 {
        self.retention_days
    }

    /// Whether lookup keys are written.
    pub fn has_lookup_key(&self) -> bool {
        self.lookup_key.is_some()
    }

    /// The attributes of one lead: hashes of its first email and phone, and its expiry
    /// (`created_time` plus the retention).
    /// The contact's email and phone are the ones hashed: the phone in E.164 when it could be
    /// read (`crate::contact`), as given otherwise.
    pub fn attributes(&self, stored: &StoredLead) -> PrivacyAttributes {
        let first = |name: &str| {
            stored
                .lead
                .field(name)
                .and_then(|values| values.first())
                .map(String::as_str)
        };
        let contact = &stored.readable.contact;
        let email = contact.email.as_deref().or_else(|| first(EMAIL_FIELD));
        let phone_key = match (&contact.phone, &contact.phone_as_given) {
            (Some(e164), _) => self.keyed(e164),
            (None, Some(given)) => self.phone_key(given),
            (None, None) => first(PHONE_FIELD).and_then(|p| self.phone_key(p)),
        };
        PrivacyAttributes {
            email_key: email.and_then(|e| self.email_key(e)),
            phone_key,
            expires_at: (self.retention_days > 0).then(|| {
                stored.lead.created_time.unix_timestamp() + i64::from(self.retention_days) * 86_400
            }),
        }
    }

    /// The lookup keys of a lead stored without them, from its first email and phone
    /// (`leadpipe lookup-keys`): the same keys [`LeadPolicy::attributes`] writes.
    pub fn keys_of(&self, email: Option<&str>, phone: Option<&str>) -> PrivacyAttributes {
        PrivacyAttributes {
            email_key: email.and_then(|e| self.email_key(e)),
            phone_key: phone.and_then(|p| self.phone_key(p)),
            expires_at: None,
        }
    }

    /// The lookup key of an email address, as `forget --email` asks for it.
    pub fn email_key(&self, email: &str) -> Option<String> {
        self.keyed(&normalise_email(email)?)
    }

    /// Every key an address may be stored under: today's, and the one leads stored before
    /// the normaliser took Unicode into account were given (trimmed and lower-cased only),
    /// when it differs. `forget --email` looks for each, so no older lead is missed.
    pub fn email_keys(&self, email: &str) -> Vec<String> {
        let legacy = email.trim().to_lowercase();
        let mut keys: Vec<String> = self.email_key(email).into_iter().collect();
        if !legacy.is_empty()
            && let Some(old) = self.keyed(&legacy)
            && !keys.contains(&old)
        {
            keys.push(old);
        }
        keys
    }

    /// The lookup key of a phone number that could not be read as a number (digits only, a
    /// leading `+` kept), and of every phone stored before phones were read by country.
    pub fn phone_key(&self, phone: &str) -> Option<String> {
        self.keyed(&normalise_phone(phone)?)
    }

    /// Every key a number may be stored under, as `forget --phone` asks for it: its E.164
    /// form read as international and with each country in `regions` (the forms' countries),
    /// and the digits-only key of numbers stored before, or not readable as numbers.
    pub fn phone_keys(&self, phone: &str, regions: &[crate::contact::Region]) -> Vec<String> {
        use crate::contact::{Phone, normalise_phone as read};
        let mut keys = Vec::new();
        let mut add = |key: Option<String>| {
            if let Some(key) = key
                && !keys.contains(&key)
            {
                keys.push(key);
            }
        };
        let readings = std::iter::once(None).chain(regions.iter().copied().map(Some));
        for region in readings {
            if let Some(Phone::E164(number)) = read(phone, region) {
                add(self.keyed(&number));
            }
        }
        add(self.phone_key(phone));
        keys
    }

    fn keyed(&self, value: &str) -> Option<String> {
        let key = self.lookup_key.as_ref()?;
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose_secret().as_bytes()).ok()?;
        mac.update(value.as_bytes());
        Some(hex::encode(mac.finalize().into_bytes()))
    }
}

pub use crate::contact::normalise_email;

/// Digits only, a leading `+` kept: the rule of lookup keys before phones were read by
/// country ([`crate::contact::legacy_phone_digits`]).
pub fn normalise_phone(phone: &str) -> Option<String> {
    crate::contact::legacy_phone_digits(phone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::LeadSourceKind;

    fn stored() -> StoredLead {
        StoredLead {
            lead: leadpipe_graph::Lead::from_json(
                r#"{"id":"1","created_time":"2026-11-30T00:00:00+0000","field_data":[
                    {"name":"email","values":["  Ada@Example.ORG ","second@example.org"]},
                    {"name":"phone_number","values":["+1 (555) 010-9999"]}]}"#,
            )
            .unwrap(),
            page_id: "7".into(),
            form_id: Some("5".into()),
            source: LeadSourceKind::Webhook,
            ingested_at: time::OffsetDateTime::now_utc(),
            readable: Default::default(),
        }
    }

    #[test]
    fn keys_are_keyed_hashes_of_the_normalised_first_values() {
        let policy = LeadPolicy::new(Some(SecretString::from("k1")), 30);
        let attrs = policy.attributes(&stored());
        // Computed apart: python3 -c "import hmac,hashlib;
        // print(hmac.new(b'k1',b'ada@example.org',hashlib.sha256).hexdigest())"
        assert_eq!(
            attrs.email_key.as_deref(),
            Some("fad71898e04afd4563bb0e08245ab88cb61722287f77a1e6b9908c4525cbaac3")
        );
        assert_eq!(
            attrs.phone_key.as_deref(),
            Some("f9458a26e3e26e74a4847bcf56cd83763e7030c2973f5cc4a880936d9a87c319")
        );
        assert_eq!(attrs.email_key, policy.email_key("ada@example.org"));
        assert_eq!(attrs.phone_key, policy.phone_key("+15550109999"));
        assert_ne!(attrs.email_key, policy.email_key("second@example.org"));
        assert_eq!(attrs.expires_at, Some(1_795_996_800 + 30 * 86_400));
        let other_key = LeadPolicy::new(Some(SecretString::from("k2")), 0);
        assert_ne!(other_key.email_key("ada@example.org"), attrs.email_key);
        assert_eq!(other_key.attributes(&stored()).expires_at, None);
    }

    #[test]
    fn without_a_lookup_key_nothing_is_hashed() {
        let attrs = LeadPolicy::new(None, 0).attributes(&stored());
        assert_eq!(attrs, PrivacyAttributes::default());
        assert_eq!(normalise_phone("555 0101"), Some("5550101".into()));
        assert_eq!(normalise_phone("n/a"), None);
        assert_eq!(normalise_email("   "), None);
    }

    #[test]
    fn one_address_written_other_ways_is_one_key() {
        let policy = LeadPolicy::new(Some(SecretString::from("k")), 0);
        for (stored, asked) in [
            ("jos\u{e9}@example.org", "jose\u{301}@example.org"),
            ("ada@b\u{fc}cher.de", "ada@xn--bcher-kva.de"),
            ("ADA@B\u{dc}CHER.DE", "ada@xn--bcher-kva.de"),
            ("\u{130}lker@example.org", "ilker@example.org"),
            (" Ada@Example.ORG ", "ada@example.org"),
        ] {
            assert_eq!(
                normalise_email(stored),
                normalise_email(asked),
                "{stored} ~ {asked}"
            );
            assert_eq!(policy.email_key(stored), policy.email_key(asked));
        }
        assert_ne!(
            normalise_email("ada@example.org"),
            normalise_email("adb@example.org")
        );
        assert_eq!(
            normalise_email("jose\u{301}@x.org").as_deref(),
            Some("jos\u{e9}@x.org")
        );
    }

    #[test]
    fn a_lead_keyed_under_the_earlier_rule_is_still_found() {
        let policy = LeadPolicy::new(Some(SecretString::from("k")), 0);
        let keys = policy.email_keys("ADA@B\u{dc}CHER.DE");
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&policy.keyed("ada@b\u{fc}cher.de").unwrap()));
        assert_eq!(keys[0], policy.email_key("ada@xn--bcher-kva.de").unwrap());
        assert_eq!(
            policy.email_keys("ada@example.org").len(),
            1,
            "ASCII: one key"
        );
    }

    #[test]
    fn one_number_written_other_ways_is_found_by_one_key() {
        use crate::contact::Region;
        let policy = LeadPolicy::new(Some(SecretString::from("k")), 0);
        let us = Region::parse("US").unwrap();
        let stored = policy.keyed("+15551234567").unwrap();
        for asked in ["+1 (555) 123-4567", "15551234567", "555-123-4567"] {
            assert!(
                policy.phone_keys(asked, &[us]).contains(&stored),
                "{asked} on a US form"
            );
        }
        assert!(
            !policy.phone_keys("555-123-4567", &[]).contains(&stored),
            "a national number needs the form's country"
        );
        // A lead stored under the earlier rule is still found.
        let old = policy.keyed("5551234567").unwrap();
        assert!(policy.phone_keys("555-123-4567", &[us]).contains(&old));
    }

    #[test]
    fn the_stored_key_is_the_contacts_e164_phone() {
        let policy = LeadPolicy::new(Some(SecretString::from("k")), 0);
        let mut lead = stored();
        lead.readable = crate::readable::Readable::of(&lead.lead.field_data, None);
        assert_eq!(lead.readable.contact.phone.as_deref(), Some("+15550109999"));
        assert_eq!(
            policy.attributes(&lead).phone_key,
            policy.keyed("+15550109999")
        );
    }

    #[test]
    fn retention_comes_from_the_setting() {
        let env = Env::from_lookup(|name| (name == RETENTION_SETTING).then(|| "90".to_owned()));
        assert_eq!(
            LeadPolicy::from_env(&env, None).unwrap().retention_days(),
            90
        );
        let bad = Env::from_lookup(|name| (name == RETENTION_SETTING).then(|| "-1".to_owned()));
        assert!(LeadPolicy::from_env(&bad, None).is_err());
    }
}
