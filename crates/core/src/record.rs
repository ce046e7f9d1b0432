//! A stored lead's attributes, projected once for every store: which optional attributes
//! exist and in what order, that a repeated field name keeps every value, and the contract's
//! time format (docs/architecture.md, "Leads table"). The adapters only encode this (as a
//! DynamoDB item, as a SQLite row); none of them decides what a lead's attributes are.

use crate::ports::StoredLead;
use std::collections::BTreeMap;

/// The optional string attributes, in the contract's order; absent ones are left out.
pub const OPTIONAL_ATTRIBUTES: [&str; 9] = [
    "ad_id",
    "ad_name",
    "adset_id",
    "adset_name",
    "campaign_id",
    "campaign_name",
    "platform",
    "partner_name",
    "retailer_item_id",
];

pub use crate::when::contract_time;

/// A lead's attributes as every store keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadRecord<'a> {
    /// The lead's Graph id.
    pub lead_id: &'a str,
    /// [`contract_time`] of Graph's `created_time`.
    pub created_time: String,
    /// The page it came from.
    pub page_id: &'a str,
    /// Absent for an ad lead with no form; never `""`.
    pub form_id: Option<&'a str>,
    /// The [`OPTIONAL_ATTRIBUTES`] the lead has, in their order.
    pub optional: Vec<(&'static str, &'a str)>,
    /// Whether it came without an ad.
    pub is_organic: bool,
    /// Field name to every value Graph gave, in order; a name given twice keeps all.
    pub fields: BTreeMap<&'a str, Vec<&'a str>>,
    /// `(checkbox_key, is_checked)` in Graph's order.
    pub disclaimers: Vec<(&'a str, bool)>,
    /// The lead's JSON exactly as Graph returned it.
    pub raw: &'a str,
    /// `webhook` or `backfill`.
    pub source: &'static str,
    /// [`contract_time`] of the first ingest.
    pub ingested_at: String,
    /// The form's name, the answers by label and the contact (`crate::readable`).
    pub readable: &'a crate::readable::Readable,
}

impl StoredLead {
    /// The lead's attributes, for a store to encode.
    pub fn record(&self) -> LeadRecord<'_> {
        let lead = &self.lead;
        let present = [
            &lead.ad_id,
            &lead.ad_name,
            &lead.adset_id,
            &lead.adset_name,
            &lead.campaign_id,
            &lead.campaign_name,
            &lead.platform,
            &lead.partner_name,
            &lead.retailer_item_id,
        ];
        let mut fields: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for field in &lead.field_data {
            fields
                .entry(field.name.as_str())
                .or_default()
                .extend(field.values.iter().map(String::as_str));
        }
        LeadRecord {
            lead_id: &lead.id,
            created_time: contract_time(lead.created_time),
            page_id: &self.page_id,
            form_id: self.form_id.as_deref().filter(|f| !f.is_empty()),
            optional: OPTIONAL_ATTRIBUTES
                .into_iter()
                .zip(present)
                .filter_map(|(name, value)| value.as_deref().map(|v| (name, v)))
                .filter(|(_, v)| !v.is_empty())
                .collect(),
            is_organic: lead.is_organic,
            fields,
            disclaimers: lead
                .custom_disclaimer_responses
                .iter()
                .map(|d| (d.checkbox_key.as_str(), d.is_checked))
                .collect(),
            raw: &lead.raw,
            source: self.source.as_str(),
            ingested_at: contract_time(self.ingested_at),
            readable: &self.readable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::LeadSourceKind;
    use time::macros::datetime;

    #[test]
    fn one_projection_for_every_store() {
        let lead = leadpipe_graph::Lead::from_json(
            r#"{"id":"1","created_time":"2026-11-30T04:00:00+0100","ad_id":"6","ad_name":"",
                "platform":"fb","field_data":[{"name":"services","values":["a"]},
                {"name":"services","values":["b","c"]},{"name":"email","values":["x@example.org"]}],
                "custom_disclaimer_responses":[{"checkbox_key":"k","is_checked":"1"}]}"#,
        )
        .unwrap();
        let stored = StoredLead {
            lead,
            page_id: "77".into(),
            form_id: Some(String::new()),
            source: LeadSourceKind::Backfill,
            ingested_at: datetime!(2026-11-30 05:00:00.75 UTC),
            readable: Default::default(),
        };
        let record = stored.record();
        assert_eq!(record.created_time, "2026-11-30T03:00:00Z");
        assert_eq!(record.ingested_at, "2026-11-30T05:00:00Z");
        assert_eq!(record.form_id, None, "never an empty form_id");
        assert_eq!(record.optional, [("ad_id", "6"), ("platform", "fb")]);
        assert_eq!(
            record.fields["services"],
            ["a", "b", "c"],
            "a repeated name keeps all"
        );
        assert_eq!(record.disclaimers, [("k", true)]);
        assert_eq!(record.source, "backfill");
    }
}
