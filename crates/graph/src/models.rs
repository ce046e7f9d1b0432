//! Typed Graph nodes. Each keeps the JSON exactly as Graph returned it (`raw`), so a field
//! Meta adds tomorrow is stored today even though no struct names it.
//!
//! A [`Lead`]'s `Debug` shows ids and counts only: its answers are a person's data.

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::fmt;
use time::OffsetDateTime;

/// Why a node could not be read. Names the place, never the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{node}{} is not readable: {category} JSON at line {line}, column {column}", id.as_ref().map(|i| format!(" {i}")).unwrap_or_default())]
pub struct ParseError {
    /// The item's id, when it had a readable one (ids are not secret; values are).
    pub id: Option<String>,
    /// What was being read.
    pub node: &'static str,
    /// What kind of break: malformed, truncated, unexpected shape.
    pub category: &'static str,
    /// Line of the break.
    pub line: usize,
    /// Column of the break.
    pub column: usize,
}

impl ParseError {
    pub(crate) fn new(node: &'static str, err: &serde_json::Error) -> Self {
        let category = match err.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "malformed",
            serde_json::error::Category::Data => "unexpected shape of",
            serde_json::error::Category::Eof => "truncated",
        };
        Self {
            id: None,
            node,
            category,
            line: err.line(),
            column: err.column(),
        }
    }

    /// The same error, naming the item's id as read from its raw JSON (when it has one).
    pub fn with_id_from(mut self, raw_json: &str) -> Self {
        #[derive(Deserialize)]
        struct IdOnly {
            #[serde(default)]
            id: Option<IdRepr>,
        }
        self.id = serde_json::from_str::<IdOnly>(raw_json)
            .ok()
            .and_then(|w| w.id)
            .map(|id| match id {
                IdRepr::Text(t) => t,
                IdRepr::Number(n) => n.to_string(),
            })
            .filter(|id| !id.is_empty());
        self
    }

    /// Truncated JSON may be a glitch on the way; a wrong shape will not fix itself.
    pub fn is_truncation(&self) -> bool {
        self.category == "truncated"
    }
}

// ---- flexible scalars -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(untagged)]
enum IdRepr {
    Text(String),
    Number(u64),
}

fn id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match IdRepr::deserialize(d)? {
        IdRepr::Text(t) => t,
        IdRepr::Number(n) => n.to_string(),
    })
}

fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<IdRepr>::deserialize(d)? {
        None => None,
        Some(IdRepr::Text(t)) if t.is_empty() => None,
        Some(IdRepr::Text(t)) => Some(t),
        Some(IdRepr::Number(n)) => Some(n.to_string()),
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BoolRepr {
    Bool(bool),
    Number(i64),
    Text(String),
}

/// Graph sends booleans as `true`, `1`, `"1"`, `"true"` or `""` depending on the field.
fn flexible_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Option::<BoolRepr>::deserialize(d)? {
        None => false,
        Some(BoolRepr::Bool(b)) => b,
        Some(BoolRepr::Number(n)) => n != 0,
        Some(BoolRepr::Text(t)) => matches!(t.as_str(), "1" | "true" | "TRUE" | "True"),
    })
}

fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let value = Option::<Value>::deserialize(d)?;
    Ok(match value {
        None | Some(Value::Null) => None,
        Some(v) => Some(flexible_bool(v).map_err(serde::de::Error::custom)?),
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberRepr {
    Number(i64),
    Text(String),
}

fn opt_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match Option::<NumberRepr>::deserialize(d)? {
        None => None,
        Some(NumberRepr::Number(n)) => Some(n),
        Some(NumberRepr::Text(t)) => t.parse().ok(),
    })
}

/// Graph's times: `2015-02-28T08:49:14+0000`; RFC 3339 and unix seconds are accepted too.
pub fn parse_graph_time(text: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    let graph = format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][offset_hour sign:mandatory][offset_minute]"
    );
    OffsetDateTime::parse(text, graph)
        .or_else(|_| OffsetDateTime::parse(text, &Rfc3339))
        .ok()
        .or_else(|| {
            text.parse::<i64>()
                .ok()
                .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        })
}

fn graph_time<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
    match NumberRepr::deserialize(d)? {
        NumberRepr::Number(n) => {
            OffsetDateTime::from_unix_timestamp(n).map_err(serde::de::Error::custom)
        }
        NumberRepr::Text(t) => {
            parse_graph_time(&t).ok_or_else(|| serde::de::Error::custom("time is not a Graph time"))
        }
    }
}

fn opt_graph_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OffsetDateTime>, D::Error> {
    Ok(match Option::<NumberRepr>::deserialize(d)? {
        None => None,
        Some(NumberRepr::Number(n)) => OffsetDateTime::from_unix_timestamp(n).ok(),
        Some(NumberRepr::Text(t)) => parse_graph_time(&t),
    })
}

// ---- Lead ---------------------------------------------------------------------------------

/// One answer of a lead form: the field's name (the form's own key when custom field ids
/// are used) and every value, as Graph gave them.
#[derive(Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct FieldData {
    /// The name.
    pub name: String,
    /// Every value, as Graph gave it.
    #[serde(default)]
    pub values: Vec<String>,
}

impl fmt::Debug for FieldData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FieldData {{ name: {:?}, values: {} redacted }}",
            self.name,
            self.values.len()
        )
    }
}

/// A response to an optional custom disclaimer checkbox.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DisclaimerResponse {
    /// The checkbox's key in the form.
    #[serde(default)]
    pub checkbox_key: String,
    /// Whether the person ticked it.
    #[serde(default, deserialize_with = "flexible_bool")]
    pub is_checked: bool,
}

#[derive(Deserialize)]
struct LeadWire {
    #[serde(deserialize_with = "id")]
    id: String,
    #[serde(deserialize_with = "graph_time")]
    created_time: OffsetDateTime,
    #[serde(default, deserialize_with = "opt_id")]
    ad_id: Option<String>,
    #[serde(default)]
    ad_name: Option<String>,
    #[serde(default, deserialize_with = "opt_id")]
    adset_id: Option<String>,
    #[serde(default)]
    adset_name: Option<String>,
    #[serde(default, deserialize_with = "opt_id")]
    campaign_id: Option<String>,
    #[serde(default)]
    campaign_name: Option<String>,
    #[serde(default, deserialize_with = "opt_id")]
    form_id: Option<String>,
    #[serde(default)]
    field_data: Vec<FieldData>,
    #[serde(default)]
    custom_disclaimer_responses: Vec<DisclaimerResponse>,
    #[serde(default, deserialize_with = "flexible_bool")]
    is_organic: bool,
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    partner_name: Option<String>,
    #[serde(default, deserialize_with = "opt_id")]
    retailer_item_id: Option<String>,
    #[serde(default)]
    home_listing: Option<Value>,
    #[serde(default)]
    vehicle: Option<Value>,
    #[serde(default)]
    post: Option<Value>,
}

/// A lead (`GET /{lead-id}`, or an item of `/{form-id}/leads` and `/{ad-id}/leads`).
#[derive(Clone, PartialEq)]
pub struct Lead {
    /// The Graph id.
    pub id: String,
    /// When it was created.
    pub created_time: OffsetDateTime,
    /// The ad the lead came through; absent for organic and test leads.
    pub ad_id: Option<String>,
    /// The ad's name (needs ads permissions on the ad account).
    pub ad_name: Option<String>,
    /// The ad set of the ad.
    pub adset_id: Option<String>,
    /// The ad set's name (needs ads permissions).
    pub adset_name: Option<String>,
    /// The campaign of the ad.
    pub campaign_id: Option<String>,
    /// The campaign's name (needs ads permissions).
    pub campaign_name: Option<String>,
    /// The lead form.
    pub form_id: Option<String>,
    /// The answers, one entry per field.
    pub field_data: Vec<FieldData>,
    /// Answers to optional custom disclaimer checkboxes.
    pub custom_disclaimer_responses: Vec<DisclaimerResponse>,
    /// Whether the lead came without an ad.
    pub is_organic: bool,
    /// Where the lead was submitted: `fb`, `ig`, ...
    pub platform: Option<String>,
    /// The partner that delivered the lead, if any.
    pub partner_name: Option<String>,
    /// The retailer item (catalog) id, if any.
    pub retailer_item_id: Option<String>,
    /// Home listing details (real-estate lead forms), as Graph sent them.
    pub home_listing: Option<Value>,
    /// Vehicle details (automotive lead forms), as Graph sent them.
    pub vehicle: Option<Value>,
    /// The post the lead came through, as Graph sent it.
    pub post: Option<Value>,
    /// The lead's JSON exactly as Graph returned it.
    pub raw: String,
}

impl Lead {
    /// Parses one lead's JSON, keeping it as `raw`.
    pub fn from_json(json: &str) -> Result<Self, ParseError> {
        let wire: LeadWire = serde_json::from_str(json).map_err(|e| ParseError::new("lead", &e))?;
        Ok(Self {
            id: wire.id,
            created_time: wire.created_time,
            ad_id: wire.ad_id,
            ad_name: wire.ad_name,
            adset_id: wire.adset_id,
            adset_name: wire.adset_name,
            campaign_id: wire.campaign_id,
            campaign_name: wire.campaign_name,
            form_id: wire.form_id,
            field_data: wire.field_data,
            custom_disclaimer_responses: wire.custom_disclaimer_responses,
            is_organic: wire.is_organic,
            platform: wire.platform,
            partner_name: wire.partner_name,
            retailer_item_id: wire.retailer_item_id,
            home_listing: wire.home_listing,
            vehicle: wire.vehicle,
            post: wire.post,
            raw: json.to_owned(),
        })
    }

    /// The values of one field, by name.
    pub fn field(&self, name: &str) -> Option<&[String]> {
        self.field_data
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.values.as_slice())
    }
}

impl fmt::Debug for Lead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lead")
            .field("id", &self.id)
            .field("created_time", &self.created_time)
            .field("form_id", &self.form_id)
            .field("ad_id", &self.ad_id)
            .field("is_organic", &self.is_organic)
            .field("fields", &self.field_data.len())
            .finish_non_exhaustive()
    }
}

// ---- LeadgenForm ----------------------------------------------------------------------------

/// A page's lead form (`GET /{page-id}/leadgen_forms`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LeadgenForm {
    /// The Graph id.
    #[serde(deserialize_with = "id")]
    pub id: String,
    /// The name.
    #[serde(default)]
    pub name: Option<String>,
    /// `ACTIVE`, `ARCHIVED`, `DELETED` or `DRAFT`.
    #[serde(default)]
    pub status: Option<String>,
    /// The form's locale, e.g. `en_US`.
    #[serde(default)]
    pub locale: Option<String>,
    /// When it was created.
    #[serde(default, deserialize_with = "opt_graph_time")]
    pub created_time: Option<OffsetDateTime>,
    /// Leads the form has collected.
    #[serde(default, deserialize_with = "opt_count")]
    pub leads_count: Option<i64>,
    /// Leads collected without an ad.
    #[serde(default, deserialize_with = "opt_count")]
    pub organic_leads_count: Option<i64>,
    /// Leads past Meta's 90-day retention.
    #[serde(default, deserialize_with = "opt_count")]
    pub expired_leads_count: Option<i64>,
    /// The page the form belongs to.
    #[serde(default)]
    pub page: Option<Value>,
    /// The form's questions, as Graph sent them.
    #[serde(default)]
    pub questions: Vec<Value>,
    /// The form's tracking parameters.
    #[serde(default)]
    pub tracking_parameters: Option<Value>,
    /// The form's privacy policy link.
    #[serde(default)]
    pub privacy_policy_url: Option<String>,
    /// The form's thank-you page, as Graph sent it.
    #[serde(default)]
    pub thank_you_page: Option<Value>,
    /// The JSON exactly as Graph returned it.
    #[serde(skip)]
    pub raw: String,
}

/// The fields requested for forms.
pub const FORM_FIELDS: &str = "id,name,status,locale,created_time,leads_count,organic_leads_count,expired_leads_count,page,questions,tracking_parameters,privacy_policy_url,thank_you_page";

// ---- HasLeadAccess ----------------------------------------------------------------------------

/// `GET /{page-id}?fields=has_lead_access.user_id(U).app_id(A)`: can this user (and app)
/// read this page's leads, and if not, Meta's reason and remedy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HasLeadAccess {
    /// Whether the app has `leads_retrieval`.
    #[serde(default, deserialize_with = "opt_bool")]
    pub app_has_leads_permission: Option<bool>,
    /// Whether leads can be read with these parameters.
    #[serde(default, deserialize_with = "flexible_bool")]
    pub can_access_lead: bool,
    /// Whether the page uses Leads Access Manager.
    #[serde(default, deserialize_with = "opt_bool")]
    pub enabled_lead_access_manager: Option<bool>,
    /// Meta's reason when access is denied.
    #[serde(default)]
    pub failure_reason: Option<String>,
    /// Meta's remedy when access is denied.
    #[serde(default)]
    pub failure_resolution: Option<String>,
    /// Whether the user is an admin of the page.
    #[serde(default, deserialize_with = "opt_bool")]
    pub is_page_admin: Option<bool>,
    /// The page.
    #[serde(default, deserialize_with = "opt_id")]
    pub page_id: Option<String>,
    /// Whether the user may read leads.
    #[serde(default, deserialize_with = "opt_bool")]
    pub user_has_leads_permission: Option<bool>,
    /// The user.
    #[serde(default, deserialize_with = "opt_id")]
    pub user_id: Option<String>,
}

impl HasLeadAccess {
    /// Meta's reason and remedy in one sentence, for summaries and logs.
    pub fn diagnosis(&self) -> String {
        if self.can_access_lead {
            return "lead access granted".to_owned();
        }
        let mut parts = vec![
            self.failure_reason
                .clone()
                .unwrap_or_else(|| "Meta gave no reason".to_owned()),
        ];
        if let Some(fix) = &self.failure_resolution {
            parts.push(format!("to fix: {fix}"));
        }
        if self.app_has_leads_permission == Some(false) {
            parts.push("the app lacks leads_retrieval".to_owned());
        }
        if self.user_has_leads_permission == Some(false) {
            parts.push("the token's user has no lead access on this page".to_owned());
        }
        parts.join("; ")
    }
}

// ---- debug_token ---------------------------------------------------------------------------

/// `GET /debug_token?input_token=...`: what a token is and until when it works.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TokenInfo {
    /// The app the token belongs to.
    #[serde(default, deserialize_with = "opt_id")]
    pub app_id: Option<String>,
    /// `USER`, `PAGE`, `APP`, `SYSTEM_USER`.
    #[serde(rename = "type", default)]
    pub token_type: Option<String>,
    /// The app's name.
    #[serde(default)]
    pub application: Option<String>,
    /// Whether the token works now.
    #[serde(default, deserialize_with = "flexible_bool")]
    pub is_valid: bool,
    /// Unix seconds; 0 means it does not expire.
    #[serde(default, deserialize_with = "opt_count")]
    pub expires_at: Option<i64>,
    /// Unix seconds when data access expires.
    #[serde(default, deserialize_with = "opt_count")]
    pub data_access_expires_at: Option<i64>,
    /// Unix seconds when the token was issued.
    #[serde(default, deserialize_with = "opt_count")]
    pub issued_at: Option<i64>,
    /// Permissions granted to the token.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The user.
    #[serde(default, deserialize_with = "opt_id")]
    pub user_id: Option<String>,
    /// The profile the token acts for.
    #[serde(default, deserialize_with = "opt_id")]
    pub profile_id: Option<String>,
    /// Why an invalid token is invalid, in Meta's words.
    #[serde(default)]
    pub error: Option<TokenProblem>,
}

/// `debug_token`'s `error` for an invalid token (e.g. code 190, subcode 463: expired).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TokenProblem {
    /// Meta's code.
    #[serde(default)]
    pub code: Option<i64>,
    /// Meta's subcode.
    #[serde(default)]
    pub subcode: Option<i64>,
    /// Meta's message.
    #[serde(default)]
    pub message: Option<String>,
}

/// Permissions `connect` asks for beside [`REQUIRED_SCOPES`]: without them some things
/// still work, with less (docs/connect.md).
pub const OPTIONAL_SCOPES: [(&str, &str); 1] =
    [("ads_management", "ad, ad set and campaign names on leads")];

/// How a person gets a permission the token lacks.
pub fn how_to_grant(scope: &str) -> &'static str {
    match scope {
        "leads_retrieval" => {
            "add Lead Ads' leads_retrieval to the app (App Review for Advanced Access outside Dev Mode) and grant it when issuing the token"
        }
        "pages_show_list" | "pages_read_engagement" | "pages_manage_metadata" => {
            "grant it when issuing the token (Graph API Explorer or your login flow), as a Page admin"
        }
        "ads_management" => "grant it when issuing the token, with access to the ad account",
        _ => "grant it when issuing the token",
    }
}

/// The permissions leadpipe needs (docs/graph-api.md, "Access").
pub const REQUIRED_SCOPES: [&str; 4] = [
    "leads_retrieval",
    "pages_show_list",
    "pages_read_engagement",
    "pages_manage_metadata",
];

impl TokenInfo {
    /// The required scopes this token lacks.
    pub fn missing_scopes(&self) -> Vec<&'static str> {
        REQUIRED_SCOPES
            .into_iter()
            .filter(|s| !self.scopes.iter().any(|have| have == s))
            .collect()
    }

    /// The optional scopes this token lacks, each with what it gives.
    pub fn missing_optional_scopes(&self) -> Vec<(&'static str, &'static str)> {
        OPTIONAL_SCOPES
            .into_iter()
            .filter(|(s, _)| !self.scopes.iter().any(|have| have == s))
            .collect()
    }
}

/// An app subscribed to a page's webhooks (`GET /{page-id}/subscribed_apps`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SubscribedApp {
    /// The Graph id.
    #[serde(default, deserialize_with = "opt_id")]
    pub id: Option<String>,
    /// The name.
    #[serde(default)]
    pub name: Option<String>,
    /// The webhook fields subscribed.
    #[serde(default)]
    pub subscribed_fields: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_doc_lead_and_keeps_raw() {
        let json = r#"{"created_time":"2015-02-28T08:49:14+0000","id":"111","ad_id":"222","form_id":"333",
            "field_data":[{"name":"car_make","values":["Honda"]},{"name":"email","values":["joe@example.com"]},
            {"name":"services","values":["oil","tyres"]}],
            "custom_disclaimer_responses":[{"checkbox_key":"optional_1","is_checked":"1"},{"checkbox_key":"optional_2","is_checked":""}],
            "is_organic":false,"brand_new_field":{"x":1}}"#;
        let lead = Lead::from_json(json).unwrap();
        assert_eq!(lead.id, "111");
        assert_eq!(lead.created_time.unix_timestamp(), 1_425_113_354);
        assert_eq!(lead.field("services").unwrap(), ["oil", "tyres"]);
        assert!(lead.custom_disclaimer_responses[0].is_checked);
        assert!(!lead.custom_disclaimer_responses[1].is_checked);
        assert_eq!(lead.raw, json);
        let debug = format!("{lead:?}");
        assert!(
            !debug.contains("joe@example.com") && !debug.contains("Honda"),
            "{debug}"
        );
    }

    #[test]
    fn numeric_ids_and_organic_leads() {
        let lead =
            Lead::from_json(r#"{"id":123,"created_time":1700000000,"form_id":456,"is_organic":1}"#)
                .unwrap();
        assert_eq!(lead.id, "123");
        assert_eq!(lead.form_id.as_deref(), Some("456"));
        assert!(lead.is_organic);
        assert_eq!(lead.ad_id, None);
    }

    #[test]
    fn unreadable_lead_error_names_no_content() {
        let err = Lead::from_json(r#"{"id":"1","created_time":"yesterday","field_data":[{"name":"email","values":["a@b.c"]}]}"#).unwrap_err();
        assert!(!err.to_string().contains("a@b.c"));
        assert!(!err.to_string().contains("yesterday"));
    }

    #[test]
    fn lead_access_diagnosis_in_plain_words() {
        let access: HasLeadAccess = serde_json::from_str(
            r#"{"app_has_leads_permission":true,"can_access_lead":false,"enabled_lead_access_manager":true,
               "failure_reason":"The user is not assigned in Leads Access Manager","failure_resolution":"Assign the user in Leads Access Manager",
               "is_page_admin":true,"page_id":"99","user_has_leads_permission":false,"user_id":"5"}"#,
        )
        .unwrap();
        let text = access.diagnosis();
        assert!(
            text.contains("not assigned in Leads Access Manager"),
            "{text}"
        );
        assert!(text.contains("to fix: Assign the user"), "{text}");
    }
}
