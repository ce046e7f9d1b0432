//! A stored lead as export and the checks read it back, whichever store holds it (the
//! SQLite row and the DynamoDB item decode to this one type), and which leads an export
//! selects.

use std::collections::BTreeMap;

/// A stored lead row, for export and checks.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadRow {
    /// The lead's Graph id.
    pub lead_id: String,
    /// RFC 3339 UTC to the second.
    pub created_time: String,
    /// The page it came from.
    pub page_id: String,
    /// Absent for an ad lead with no form.
    pub form_id: Option<String>,
    /// The optional attributes it has, by name.
    pub optional: BTreeMap<&'static str, String>,
    /// Whether it came without an ad.
    pub is_organic: bool,
    /// Field name to every value.
    pub fields: BTreeMap<String, Vec<String>>,
    /// `[{checkbox_key, is_checked}]`.
    pub custom_disclaimer_responses: serde_json::Value,
    /// The lead's JSON as Graph returned it.
    pub raw: String,
    /// How it reached the store.
    pub source: crate::ports::LeadSourceKind,
    /// When it was first written, RFC 3339 UTC.
    pub ingested_at: String,
    /// The form's name, the answers by label, the contact (empty for leads stored before).
    pub readable: crate::readable::Readable,
}

/// Which leads an export reads: one form, and `created_time` in `[since, until)` (RFC 3339
/// UTC, as stored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeadFilter {
    /// Only this form.
    pub form_id: Option<String>,
    /// Created at or after.
    pub since: Option<String>,
    /// Created before.
    pub until: Option<String>,
}
