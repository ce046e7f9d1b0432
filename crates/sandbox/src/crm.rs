//! Stand-ins of the services leadpipe delivers leads to, on one loopback server, behaving as
//! `../shared/reference/crm-apis.md` documents them: their auth, their answers, their rate
//! limits and what makes a repeat the same record.
//!
//! - **HubSpot** `POST /crm/objects/2026-03/contacts/batch/upsert` (Bearer [`HUBSPOT_TOKEN`];
//!   upsert by email; 400 for a whole batch holding a refused email; 429 with `policyName`)
//!   and `GET /crm/objects/2026-03/contacts`.
//! - **Salesforce** `POST /services/oauth2/token` (client credentials), `PATCH
//!   /services/data/v67.0/sobjects/Lead/{field}/{id}` (201 created, 200 updated;
//!   `INVALID_SESSION_ID` after [`CrmStandIn::expire_salesforce_sessions`];
//!   `REQUEST_LIMIT_EXCEEDED` as a 403), `GET /services/data/v67.0/limits`.
//! - **Pipedrive** (`x-api-token` [`PIPEDRIVE_TOKEN`]) `GET /api/v2/leads/search`, `GET
//!   /api/v2/persons/search`, `POST /api/v2/persons`, `POST /api/v1/leads` (no upsert), `GET
//!   /api/v1/users/me`; a spent daily budget is a 429 until the reset.
//! - **Slack** `POST` [`SLACK_PATH`]: `ok`, `no_text` for an empty message, 429 with
//!   `Retry-After`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// HubSpot's Service Key in the stand-in.
pub const HUBSPOT_TOKEN: &str = "hs-service-key-sandbox-7f3a";
/// Salesforce's consumer key.
pub const SALESFORCE_CLIENT_ID: &str = "3MVG9sandbox-consumer-key";
/// Salesforce's consumer secret.
pub const SALESFORCE_CLIENT_SECRET: &str = "sandbox-consumer-secret-41c9";
/// The Lead's external id field.
pub const SALESFORCE_FIELD: &str = "FB_Lead_Id__c";
/// Pipedrive's API token.
pub const PIPEDRIVE_TOKEN: &str = "pd-api-token-sandbox-93b1";
/// The deal custom field (40 characters) holding the Meta lead id.
pub const PIPEDRIVE_FIELD: &str = "f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0";
/// The Slack webhook's path (the URL is the credential).
pub const SLACK_PATH: &str = "/services/T0SANDBOX/B0SANDBOX/s4ndb0xWebhookSecret";

/// What each service holds, and the faults asked for.
#[derive(Debug, Default)]
pub struct CrmState {
    /// The stand-in's own base URL (Salesforce's `instance_url`).
    pub base: String,
    /// HubSpot contacts: email → (id, properties).
    pub hubspot: BTreeMap<String, (String, Value)>,
    /// HubSpot upsert calls, each with its number of inputs.
    pub hubspot_calls: Vec<usize>,
    /// Emails HubSpot refuses (the whole batch holding one gets a 400).
    pub hubspot_refused: Vec<String>,
    /// HubSpot answers a refused email with a 207 (the others taken, an error naming it)
    /// instead of refusing the whole batch.
    pub hubspot_partial: bool,
    /// Every HubSpot upsert is refused with this message (an unknown property, say).
    pub hubspot_refuse_all: Option<String>,
    /// The next HubSpot calls answer 429 with this `policyName`.
    pub hubspot_limited: Vec<&'static str>,
    /// Salesforce Leads: external id → (id, fields).
    pub salesforce: BTreeMap<String, (String, Value)>,
    /// Tokens issued; only the newest is valid.
    pub salesforce_tokens: u32,
    /// Every token issued so far is expired.
    pub salesforce_expired_below: u32,
    /// The next Salesforce calls answer `REQUEST_LIMIT_EXCEEDED`.
    pub salesforce_limited: u32,
    /// Pipedrive persons: (id, name, email).
    pub pipedrive_persons: Vec<(u64, String, String)>,
    /// Pipedrive leads: (id, title, person id, the Meta lead id field).
    pub pipedrive_leads: Vec<(String, String, u64, String)>,
    /// Pipedrive answers 429 until the reset (the daily budget is spent).
    pub pipedrive_budget_spent: bool,
    /// Slack messages taken, in order.
    pub slack: Vec<String>,
    /// The next Slack posts answer 429.
    pub slack_limited: u32,
}

/// The stand-ins, running on loopback; stop when dropped.
pub struct CrmStandIn {
    address: SocketAddr,
    state: Arc<Mutex<CrmState>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for CrmStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl CrmStandIn {
    /// Starts the stand-ins on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let state = Arc::new(Mutex::new(CrmState {
            base: format!("http://{address}"),
            ..CrmState::default()
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            address,
            state,
            server,
        })
    }

    /// `http://127.0.0.1:port`: every service's base URL (and Salesforce's My Domain).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The Slack webhook URL.
    pub fn slack_url(&self) -> String {
        format!("{}{SLACK_PATH}", self.base_url())
    }

    /// Reads or changes what the services hold.
    pub fn with<T>(&self, f: impl FnOnce(&mut CrmState) -> T) -> T {
        match self.state.lock() {
            Ok(mut state) => f(&mut state),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Every Salesforce token issued so far stops working (sessions time out).
    pub fn expire_salesforce_sessions(&self) {
        self.with(|s| s.salesforce_expired_below = s.salesforce_tokens + 1);
    }
}

type Shared = Arc<Mutex<CrmState>>;

fn answer(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

fn text(status: u16, body: &'static str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, body).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

async fn handle(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Ok(mut s) = state.lock() else {
        return text(500, "poisoned");
    };
    let s = &mut *s;
    if path == SLACK_PATH {
        return slack(s, &method, &json);
    }
    if path.starts_with("/services/T") {
        // A revoked or mistyped incoming webhook.
        return text(404, "no_service");
    }
    if path.starts_with("/crm/") {
        return hubspot(s, &method, &path, &headers, &json);
    }
    if path.starts_with("/services/") {
        return salesforce(s, &method, &path, &headers, &body, &json);
    }
    if path.starts_with("/api/") {
        return pipedrive(s, &method, &path, &query, &headers, &json);
    }
    text(404, "no such stand-in")
}

fn slack(s: &mut CrmState, method: &Method, json: &Value) -> Response {
    if method != Method::POST {
        return text(405, "invalid_method");
    }
    if s.slack_limited > 0 {
        s.slack_limited -= 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "rate_limited",
        )
            .into_response();
    }
    match json["text"].as_str() {
        Some(t) if !t.is_empty() => {
            s.slack.push(t.to_owned());
            text(200, "ok")
        }
        _ => text(400, "no_text"),
    }
}

fn hubspot(
    s: &mut CrmState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    json: &Value,
) -> Response {
    if bearer(headers) != Some(HUBSPOT_TOKEN) {
        return answer(
            401,
            json!({"status": "error", "message": "Authentication credentials not found.", "category": "INVALID_AUTHENTICATION", "correlationId": "sandbox"}),
        );
    }
    if let Some(policy) = (!s.hubspot_limited.is_empty()).then(|| s.hubspot_limited.remove(0)) {
        let message = if policy == "DAILY" {
            "You have reached your daily limit."
        } else {
            "You have reached your ten_secondly_rolling limit."
        };
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("x-hubspot-ratelimit-interval-milliseconds", "10000")],
            axum::Json(json!({"status": "error", "message": message, "errorType": "RATE_LIMIT", "policyName": policy, "correlationId": "sandbox"})),
        )
            .into_response();
    }
    match (method.as_str(), path) {
        ("GET", "/crm/objects/2026-03/contacts") => answer(200, json!({"results": []})),
        ("POST", "/crm/objects/2026-03/contacts/batch/upsert") => {
            let inputs = json["inputs"].as_array().cloned().unwrap_or_default();
            if inputs.len() > 100 {
                return answer(
                    400,
                    json!({"status": "error", "message": "Batch input limit is 100", "category": "VALIDATION_ERROR"}),
                );
            }
            s.hubspot_calls.push(inputs.len());
            if let Some(message) = &s.hubspot_refuse_all {
                return answer(
                    400,
                    json!({"status": "error", "category": "VALIDATION_ERROR", "message": message}),
                );
            }
            let mut errors = Vec::new();
            for input in &inputs {
                let email = input["id"].as_str().unwrap_or_default().to_lowercase();
                if input["idProperty"] != "email" || email.is_empty() {
                    return answer(
                        400,
                        json!({"status": "error", "message": "idProperty must be email", "category": "VALIDATION_ERROR"}),
                    );
                }
                if s.hubspot_refused.contains(&email) {
                    // HubSpot echoes the value it refuses: core must scrub it.
                    let message =
                        format!("Property values were not valid: Email address {email} is invalid");
                    if !s.hubspot_partial {
                        return answer(
                            400,
                            json!({"status": "error", "category": "VALIDATION_ERROR", "message": message}),
                        );
                    }
                    errors.push(json!({"status": "error", "category": "VALIDATION_ERROR", "message": message}));
                }
            }
            let mut results = Vec::new();
            for input in inputs {
                let email = input["id"].as_str().unwrap_or_default().to_lowercase();
                if s.hubspot_refused.contains(&email) {
                    continue;
                }
                let next = s.hubspot.len() + 1;
                let new = !s.hubspot.contains_key(&email);
                let entry = s
                    .hubspot
                    .entry(email.clone())
                    .or_insert_with(|| (format!("{}", 37_000 + next), json!({})));
                if let (Some(have), Some(props)) =
                    (entry.1.as_object_mut(), input["properties"].as_object())
                {
                    for (k, v) in props {
                        have.insert(k.clone(), v.clone());
                    }
                }
                results.push(json!({"id": entry.0, "new": new, "properties": {"email": email}}));
            }
            if errors.is_empty() {
                answer(200, json!({"status": "COMPLETE", "results": results}))
            } else {
                answer(
                    207,
                    json!({"status": "COMPLETE", "results": results, "numErrors": errors.len(), "errors": errors}),
                )
            }
        }
        _ => answer(
            404,
            json!({"status": "error", "message": "Not found", "category": "OBJECT_NOT_FOUND"}),
        ),
    }
}

fn salesforce(
    s: &mut CrmState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    raw: &[u8],
    json: &Value,
) -> Response {
    if path == "/services/oauth2/token" && method == Method::POST {
        let form: BTreeMap<String, String> =
            url::form_urlencoded::parse(raw).into_owned().collect();
        let get = |k: &str| form.get(k).map(String::as_str);
        if get("grant_type") != Some("client_credentials") {
            return answer(
                400,
                json!({"error": "unsupported_grant_type", "error_description": "grant type not supported"}),
            );
        }
        if get("client_id") != Some(SALESFORCE_CLIENT_ID)
            || get("client_secret") != Some(SALESFORCE_CLIENT_SECRET)
        {
            return answer(
                400,
                json!({"error": "invalid_client", "error_description": "invalid client credentials"}),
            );
        }
        s.salesforce_tokens += 1;
        return answer(
            200,
            json!({"access_token": format!("00Dsandbox!token{}", s.salesforce_tokens),
            "instance_url": s.base, "token_type": "Bearer", "issued_at": "0", "signature": "x", "token_format": "opaque"}),
        );
    }
    let valid = bearer(headers)
        .and_then(|t| t.strip_prefix("00Dsandbox!token"))
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n >= s.salesforce_expired_below && n <= s.salesforce_tokens);
    if !valid {
        return answer(
            401,
            json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]),
        );
    }
    if s.salesforce_limited > 0 {
        s.salesforce_limited -= 1;
        return answer(
            403,
            json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]),
        );
    }
    if path == "/services/data/v67.0/limits" {
        return answer(
            200,
            json!({"DailyApiRequests": {"Max": 100000, "Remaining": 99000}}),
        );
    }
    let prefix = format!("/services/data/v67.0/sobjects/Lead/{SALESFORCE_FIELD}/");
    let Some(external) = path.strip_prefix(&prefix) else {
        return answer(
            404,
            json!([{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]),
        );
    };
    if method != Method::PATCH {
        return answer(
            405,
            json!([{"message": "method not allowed", "errorCode": "METHOD_NOT_ALLOWED"}]),
        );
    }
    let Some(fields) = json.as_object() else {
        return answer(
            400,
            json!([{"message": "bad body", "errorCode": "JSON_PARSER_ERROR"}]),
        );
    };
    if fields.contains_key(SALESFORCE_FIELD) || fields.contains_key("Id") {
        return answer(
            400,
            json!([{"message": "the external id or Id is not allowed in the body", "errorCode": "INVALID_FIELD"}]),
        );
    }
    for required in ["LastName", "Company"] {
        if !fields.contains_key(required) {
            return answer(
                400,
                json!([{"message": format!("Required fields are missing: [{required}]"), "errorCode": "REQUIRED_FIELD_MISSING", "fields": [required]}]),
            );
        }
    }
    let next = s.salesforce.len() + 1;
    let created = !s.salesforce.contains_key(external);
    let entry = s
        .salesforce
        .entry(external.to_owned())
        .or_insert_with(|| (format!("00Q{next:015}"), json!({})));
    if let Some(have) = entry.1.as_object_mut() {
        for (k, v) in fields {
            have.insert(k.clone(), v.clone());
        }
    }
    answer(
        if created { 201 } else { 200 },
        json!({"id": entry.0, "success": true, "errors": [], "created": created}),
    )
}

fn pipedrive(
    s: &mut CrmState,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
    json: &Value,
) -> Response {
    let token = headers.get("x-api-token").and_then(|v| v.to_str().ok());
    if token != Some(PIPEDRIVE_TOKEN) {
        return answer(
            401,
            json!({"success": false, "error": "unauthorized access", "error_info": "Please check developers.pipedrive.com", "data": null, "additional_data": null}),
        );
    }
    if s.pipedrive_budget_spent {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                ("x-ratelimit-reset", "3600"),
                ("x-ratelimit-remaining", "0"),
            ],
            axum::Json(json!({"success": false, "error": "Request over limit", "data": null})),
        )
            .into_response();
    }
    let term = query.get("term").cloned().unwrap_or_default();
    let hits = |items: Vec<Value>| answer(200, json!({"success": true, "data": {"items": items}}));
    match (method.as_str(), path) {
        ("GET", "/api/v1/users/me") => answer(200, json!({"success": true, "data": {"id": 1, "name": "Sandbox"}})),
        ("GET", "/api/v2/leads/search") => hits(
            s.pipedrive_leads
                .iter()
                .filter(|(_, _, _, meta)| meta == &term)
                .map(|(id, title, _, _)| json!({"result_score": 1.0, "item": {"id": id, "title": title}}))
                .collect(),
        ),
        ("GET", "/api/v2/persons/search") => hits(
            s.pipedrive_persons
                .iter()
                .filter(|(_, _, email)| email.eq_ignore_ascii_case(&term))
                .map(|(id, name, _)| json!({"result_score": 1.0, "item": {"id": id, "name": name}}))
                .collect(),
        ),
        ("POST", "/api/v2/persons") => {
            let Some(name) = json["name"].as_str().filter(|n| !n.is_empty()) else {
                return answer(400, json!({"success": false, "error": "Name must be given.", "data": null}));
            };
            let email = json["emails"][0]["value"].as_str().unwrap_or_default();
            let id = 500 + s.pipedrive_persons.len() as u64 + 1;
            s.pipedrive_persons
                .push((id, name.to_owned(), email.to_owned()));
            answer(201, json!({"success": true, "data": {"id": id, "name": name}}))
        }
        ("POST", "/api/v1/leads") => {
            let (Some(title), Some(person)) = (json["title"].as_str(), json["person_id"].as_u64()) else {
                return answer(400, json!({"success": false, "error": "title and person_id or organization_id are required", "data": null}));
            };
            let meta = json[PIPEDRIVE_FIELD].as_str().unwrap_or_default().to_owned();
            let id = format!("adf21080-0e10-11eb-879b-{:012}", s.pipedrive_leads.len() + 1);
            s.pipedrive_leads
                .push((id.clone(), title.to_owned(), person, meta));
            answer(201, json!({"success": true, "data": {"id": id, "title": title, "person_id": person}}))
        }
        _ => answer(404, json!({"success": false, "error": "Unknown method", "data": null})),
    }
}
