//! The HTTP stand-in.

use crate::data::{Dataset, SandboxLead, graph_time, page_token};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Faults injected into lead reads, by rate (0.0–1.0).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Answer `code 2, is_transient` (HTTP 500).
    pub transient_rate: f64,
    /// Answer `code 80005` with usage headers at 100%.
    pub rate_limited_rate: f64,
    /// Pages whose token is expired (`code 190/463`) on every call.
    pub expired_token_pages: Vec<String>,
    /// Pages whose token has no lead access.
    pub denied_pages: Vec<String>,
    /// Added to every answer.
    pub latency: Duration,
    /// The `estimated_time_to_regain_access` (minutes) rate-limit answers carry; 0 means 1.
    pub regain_minutes: f64,
}

struct SandboxState {
    data: RwLock<Dataset>,
    faults: RwLock<Faults>,
    rng: Mutex<fastrand::Rng>,
    requests: AtomicU64,
    next_test_lead: AtomicU64,
}

/// A running stand-in on loopback; stops when dropped.
pub struct Sandbox {
    address: SocketAddr,
    state: Arc<SandboxState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Sandbox {
    /// Starts the stand-in on a free loopback port.
    pub async fn start(data: Dataset, faults: Faults) -> std::io::Result<Self> {
        let state = Arc::new(SandboxState {
            data: RwLock::new(data),
            faults: RwLock::new(faults),
            rng: Mutex::new(fastrand::Rng::with_seed(11)),
            requests: AtomicU64::new(0),
            next_test_lead: AtomicU64::new(1),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            address,
            state,
            server,
        })
    }

    /// `http://127.0.0.1:port`, the value for `GRAPH_API_BASE`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// How many HTTP requests it has answered.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Replaces the faults (e.g. to end a rate-limit burst).
    pub fn set_faults(&self, faults: Faults) {
        if let Ok(mut f) = self.state.faults.write() {
            *f = faults;
        }
    }

    /// A copy of the world as it is now (test leads included).
    pub fn dataset(&self) -> Dataset {
        self.state
            .data
            .read()
            .map(|d| d.clone())
            .unwrap_or_default()
    }
}

fn graph_error(
    status: u16,
    code: i64,
    subcode: Option<i64>,
    message: &str,
    transient: bool,
) -> Response {
    graph_error_with_regain(status, code, subcode, message, transient, 1.0)
}

fn graph_error_with_regain(
    status: u16,
    code: i64,
    subcode: Option<i64>,
    message: &str,
    transient: bool,
    regain_minutes: f64,
) -> Response {
    let mut error = json!({"message": message, "type": "OAuthException", "code": code,
        "is_transient": transient, "fbtrace_id": "SandboxTrace"});
    if let Some(s) = subcode {
        error["error_subcode"] = json!(s);
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = (status, axum::Json(json!({"error": error}))).into_response();
    if code == 80005 {
        let usage = json!({"sandbox": [{"type": "leadgen", "call_count": 100, "total_cputime": 20, "total_time": 20,
            "estimated_time_to_regain_access": regain_minutes}]});
        if let Ok(value) = HeaderValue::from_str(&usage.to_string()) {
            response
                .headers_mut()
                .insert("x-business-use-case-usage", value);
        }
    }
    response
}

fn ok(value: Value) -> Response {
    let mut response = axum::Json(value).into_response();
    response.headers_mut().insert(
        "x-app-usage",
        HeaderValue::from_static(r#"{"call_count":3,"total_time":2,"total_cputime":2}"#),
    );
    response
}

/// A fault for one lead read, if the dice say so.
fn lead_fault(state: &SandboxState) -> Option<(u16, i64, bool)> {
    let faults = state.faults.read().ok()?;
    let roll = state.rng.lock().ok()?.f64();
    if roll < faults.transient_rate {
        Some((500, 2, true))
    } else if roll < faults.transient_rate + faults.rate_limited_rate {
        Some((400, 80005, false))
    } else {
        None
    }
}

fn regain_minutes(state: &SandboxState) -> f64 {
    state
        .faults
        .read()
        .map(|f| {
            if f.regain_minutes > 0.0 {
                f.regain_minutes
            } else {
                1.0
            }
        })
        .unwrap_or(1.0)
}

fn fault_response(state: &SandboxState, fault: (u16, i64, bool)) -> Response {
    match fault {
        (status, 2, _) => graph_error(status, 2, None, "Service temporarily unavailable", true),
        (status, code, _) => graph_error_with_regain(
            status,
            code,
            None,
            "There have been too many leadgen api calls to this Page account. Wait a bit and try again.",
            false,
            regain_minutes(state),
        ),
    }
}

fn parse_query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// Graph as the stand-in serves it: one request, dispatched by method and path, each edge
/// answered by a function of its own below.
async fn handle(
    State(state): State<Arc<SandboxState>>,
    method: Method,
    uri: Uri,
    _headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let latency = state.faults.read().map(|f| f.latency).unwrap_or_default();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut params = parse_query(&uri);
    if method == Method::POST {
        params.extend(url::form_urlencoded::parse(&body).into_owned());
    }
    let segments = path_segments(&uri);
    let (expired, denied) = state
        .faults
        .read()
        .map(|f| (f.expired_token_pages.clone(), f.denied_pages.clone()))
        .unwrap_or_default();
    if method == Method::POST && segments.len() == 2 && segments[1] == "test_leads" {
        return create_test_lead(&state, segments[0]);
    }
    // Read under the lock, without copying the world per request; nothing below awaits.
    let Ok(data) = state.data.read() else {
        return graph_error(500, 1, None, "sandbox poisoned", true);
    };
    let data = &*data;
    if segments.first() == Some(&"debug_token") {
        return debug_token(data, &params, &expired);
    }
    let page_of_token = match authorize(data, &params, &expired) {
        Ok(page) => page,
        Err(refused) => return refused,
    };
    match (method.as_str(), segments.as_slice()) {
        ("POST", []) => batch(
            &state,
            data,
            &page_of_token,
            params.get("batch").map(String::as_str).unwrap_or("[]"),
        ),
        ("GET", [node])
            if params
                .get("fields")
                .is_some_and(|f| f.starts_with("has_lead_access")) =>
        {
            has_lead_access(node, &page_of_token, &denied)
        }
        ("GET", [lead_id]) => read_lead(&state, data, lead_id, &page_of_token),
        ("GET", [page, "leadgen_forms"]) => leadgen_forms(data, page),
        (_, [page, "subscribed_apps"]) if method == Method::GET => ok(
            json!({"data": [{"id": "1000000000001", "name": "leadpipe sandbox", "subscribed_fields": ["leadgen"]}], "page": page}),
        ),
        ("POST", [_, "subscribed_apps"]) | ("POST", [_, "subscriptions"]) => {
            ok(json!({"success": true}))
        }
        ("GET", [node, "leads"]) => edge_leads(&state, data, &uri, node, &params, &page_of_token),
        _ => graph_error(400, 100, None, "Unsupported request", false),
    }
}

/// The path without the version segment (`/v26.0/123/leads` → `["123", "leads"]`).
fn path_segments(uri: &Uri) -> Vec<&str> {
    uri.path()
        .split('/')
        .filter(|s| !s.is_empty())
        .skip_while(|s| {
            s.starts_with('v') && s[1..].chars().all(|c| c.is_ascii_digit() || c == '.')
        })
        .collect()
}

/// The page the request's token belongs to, or Graph's answer to a bad or expired token
/// (an answer, sent as it is: no need to keep it small).
#[allow(clippy::result_large_err)]
fn authorize(
    data: &Dataset,
    params: &HashMap<String, String>,
    expired: &[String],
) -> Result<String, Response> {
    let token = params
        .get("access_token")
        .map(String::as_str)
        .unwrap_or_default();
    let Some(page) = data.page_of_token(token).map(str::to_owned) else {
        return Err(graph_error(
            400,
            190,
            None,
            "Invalid OAuth access token - Cannot parse access token",
            false,
        ));
    };
    if expired.contains(&page) {
        return Err(graph_error(
            400,
            190,
            Some(463),
            "Error validating access token: Session has expired",
            false,
        ));
    }
    Ok(page)
}

/// `GET /debug_token?input_token=...`: page tokens that never expire, with every scope.
fn debug_token(data: &Dataset, params: &HashMap<String, String>, expired: &[String]) -> Response {
    let input = params.get("input_token").cloned().unwrap_or_default();
    let page = data.page_of_token(&input).map(str::to_owned);
    let valid = page.as_ref().is_some_and(|p| !expired.contains(p));
    ok(
        json!({"data": {"app_id": "1000000000001", "type": "PAGE", "application": "leadpipe sandbox",
        "is_valid": valid, "expires_at": 0, "data_access_expires_at": 0,
        "scopes": ["leads_retrieval", "pages_show_list", "pages_read_engagement", "pages_manage_metadata", "pages_manage_ads"],
        "user_id": "1000000000042", "profile_id": page}}),
    )
}

/// `GET /{page}?fields=has_lead_access...`: granted to the page's own token unless denied.
fn has_lead_access(node: &str, page_of_token: &str, denied: &[String]) -> Response {
    let allowed = !denied.iter().any(|d| d == node) && page_of_token == node;
    let access = if allowed {
        json!({"app_has_leads_permission": true, "can_access_lead": true, "enabled_lead_access_manager": false,
               "is_page_admin": true, "page_id": node, "user_has_leads_permission": true, "user_id": "1000000000042"})
    } else {
        json!({"app_has_leads_permission": true, "can_access_lead": false, "enabled_lead_access_manager": true,
               "failure_reason": "The user is not assigned to this Page in Leads Access Manager",
               "failure_resolution": "Assign the user in Leads Access Manager (Business Settings > Integrations)",
               "is_page_admin": false, "page_id": node, "user_has_leads_permission": false, "user_id": "1000000000042"})
    };
    ok(json!({"has_lead_access": access, "id": node}))
}

/// `GET /{lead-id}`: the lead, a fault, a permission error for another page's token, or gone.
fn read_lead(state: &SandboxState, data: &Dataset, lead_id: &str, page_of_token: &str) -> Response {
    match data.lead(lead_id) {
        Some(lead) if lead.page_id != page_of_token => {
            graph_error(403, 200, None, "Permissions error", false)
        }
        Some(lead) => match lead_fault(state) {
            Some(fault) => fault_response(state, fault),
            None => ok(lead.json.clone()),
        },
        None => graph_error(
            400,
            100,
            Some(33),
            "Unsupported get request. Object does not exist",
            false,
        ),
    }
}

/// `GET /{page}/leadgen_forms`: every form of the page, with its lead count.
fn leadgen_forms(data: &Dataset, page: &str) -> Response {
    let forms: Vec<Value> = data
        .forms
        .iter()
        .filter(|(p, _, _)| p == page)
        .map(|(_, id, created)| {
            json!({"id": id, "name": format!("Form {id}"), "status": "ACTIVE",
            "locale": "en_US", "created_time": graph_time(*created),
            "leads_count": data.leads.iter().filter(|l| &l.form_id == id).count()})
        })
        .collect();
    ok(json!({"data": forms}))
}

fn create_test_lead(state: &SandboxState, form: &str) -> Response {
    let Ok(mut data) = state.data.write() else {
        return graph_error(500, 1, None, "sandbox poisoned", true);
    };
    let Some((page_id, form_id, _)) = data.forms.iter().find(|(_, f, _)| f == form).cloned() else {
        return graph_error(400, 100, Some(33), "Unsupported post request", false);
    };
    let n = state.next_test_lead.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}", 1_990_000_000_000_000u64 + n);
    let created = time::OffsetDateTime::now_utc().unix_timestamp();
    data.push(SandboxLead {
        id: id.clone(),
        page_id,
        form_id: form_id.clone(),
        ad_id: None,
        adgroup_id: None,
        created_time: created,
        json: json!({"id": id, "created_time": graph_time(created), "form_id": form_id,
            "field_data": [{"name": "email", "values": ["test@fb.com"]}, {"name": "full_name", "values": ["<test lead: dummy data for full_name>"]}],
            "custom_disclaimer_responses": [], "is_organic": true, "platform": "fb"}),
    });
    ok(json!({"id": id}))
}

fn batch(state: &SandboxState, data: &Dataset, page_of_token: &str, batch: &str) -> Response {
    let requests: Vec<Value> = serde_json::from_str(batch).unwrap_or_default();
    if requests.len() > 50 {
        return graph_error(
            400,
            100,
            None,
            "Too many requests in batch message. Maximum batch size is 50",
            false,
        );
    }
    let answers: Vec<Value> = requests
        .iter()
        .map(|r| {
            let id = r["relative_url"].as_str().unwrap_or_default().split('?').next().unwrap_or_default();
            let error = |status: u16, code: i64, subcode: Option<i64>, message: &str, transient: bool| {
                let mut e = json!({"message": message, "type": "OAuthException", "code": code, "is_transient": transient, "fbtrace_id": "SandboxTrace"});
                if let Some(s) = subcode {
                    e["error_subcode"] = json!(s);
                }
                json!({"code": status, "body": json!({"error": e}).to_string()})
            };
            match data.lead(id) {
                Some(lead) if lead.page_id != page_of_token => error(403, 200, None, "Permissions error", false),
                Some(lead) => match lead_fault(state) {
                    Some((status, 2, _)) => error(status, 2, None, "Service temporarily unavailable", true),
                    Some((status, code, _)) => error(status, code, None, "There have been too many leadgen api calls to this Page account.", false),
                    None => json!({"code": 200, "body": lead.json.to_string()}),
                },
                None => error(400, 100, Some(33), "Unsupported get request. Object does not exist", false),
            }
        })
        .collect();
    // Meta's batch items carry no headers unless asked; the usage headers come on the
    // batch response itself.
    let limited = answers.iter().any(|a| {
        a["body"]
            .as_str()
            .is_some_and(|b| b.contains("\"code\":80005"))
    });
    let mut response = ok(Value::Array(answers));
    if limited {
        let usage = json!({"sandbox": [{"type": "leadgen", "call_count": 100, "total_cputime": 20, "total_time": 20,
            "estimated_time_to_regain_access": regain_minutes(state)}]});
        if let Ok(value) = HeaderValue::from_str(&usage.to_string()) {
            response
                .headers_mut()
                .insert("x-business-use-case-usage", value);
        }
    }
    response
}

fn edge_leads(
    state: &SandboxState,
    data: &Dataset,
    uri: &Uri,
    node: &str,
    params: &HashMap<String, String>,
    page_of_token: &str,
) -> Response {
    if let Some(fault) = lead_fault(state) {
        return fault_response(state, fault);
    }
    let filters: Vec<Value> = params
        .get("filtering")
        .and_then(|f| serde_json::from_str(f).ok())
        .unwrap_or_default();
    let mut leads: Vec<&SandboxLead> = data
        .leads
        .iter()
        .filter(|l| l.page_id == page_of_token)
        .filter(|l| l.form_id == node || l.ad_id.as_deref() == Some(node))
        .filter(|l| {
            filters.iter().all(|f| {
                let v = f["value"].as_i64().unwrap_or_default();
                match f["operator"].as_str().unwrap_or_default() {
                    "GREATER_THAN" => l.created_time > v,
                    "GREATER_THAN_OR_EQUAL" => l.created_time >= v,
                    "LESS_THAN" => l.created_time < v,
                    _ => true,
                }
            })
        })
        .collect();
    leads.sort_by(|a, b| b.created_time.cmp(&a.created_time).then(b.id.cmp(&a.id)));
    let limit: usize = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(25)
        .clamp(1, 1000);
    let offset: usize = params
        .get("after")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let page: Vec<Value> = leads
        .iter()
        .skip(offset)
        .take(limit)
        .map(|l| l.json.clone())
        .collect();
    let end = offset + page.len();
    let mut paging = json!({"cursors": {"before": offset.to_string(), "after": end.to_string()}});
    if end < leads.len() {
        let mut next =
            url::Url::parse(&format!("http://sandbox{}", uri.path())).unwrap_or_else(|_| {
                url::Url::parse("http://sandbox/").unwrap_or_else(|_| unreachable_url())
            });
        for (k, v) in params {
            if k != "after" && k != "appsecret_proof" {
                next.query_pairs_mut().append_pair(k, v);
            }
        }
        next.query_pairs_mut()
            .append_pair("after", &end.to_string());
        paging["next"] = json!(next.as_str());
    }
    ok(json!({"data": page, "paging": paging}))
}

fn unreachable_url() -> url::Url {
    // "http://sandbox/" always parses; this is only the type system's fallback.
    url::Url::from_file_path("/").unwrap_or_else(|()| unreachable_url())
}

/// The app secret the sandbox's webhook sender signs with in the demo.
pub fn demo_app_secret() -> &'static str {
    "sandbox-app-secret"
}

/// Every page's token, for a local secret.
pub fn tokens(data: &Dataset) -> Vec<(String, String)> {
    data.pages
        .iter()
        .map(|(p, _)| (p.clone(), page_token(p)))
        .collect()
}
