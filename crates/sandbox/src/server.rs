//! The HTTP stand-in.

use crate::accounts::{Accounts, Registry, TokenKind, UserToken, now};
use crate::data::{Dataset, DatasetSpec, SandboxLead, graph_time, page_token};
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
    /// Pages whose `GET /{page}/subscribed_apps` fails with a transient 500 every time: a
    /// read that cannot tell whether the app is subscribed.
    pub unreadable_subscriptions: Vec<String>,
    /// Added to every answer.
    pub latency: Duration,
    /// The `estimated_time_to_regain_access` (minutes) rate-limit answers carry; 0 means 1.
    pub regain_minutes: f64,
}

struct SandboxState {
    /// The world, each generated lead's `json` taken out into `raw` (see [`Sandbox::start`]).
    data: RwLock<Dataset>,
    /// The generated leads' JSON, serialized: a `Value` tree costs about 6 KB a lead in
    /// B-tree nodes against 0.7 KB of text, and the demo makes 100,000 (BENCHMARKS.md).
    raw: RwLock<HashMap<String, Box<serde_json::value::RawValue>>>,
    faults: RwLock<Faults>,
    rng: Mutex<fastrand::Rng>,
    requests: AtomicU64,
    /// `GET /{form-id}` reads answered.
    form_reads: AtomicU64,
    /// Page tokens Meta invalidated, with the subcode it answers them with from then on:
    /// 460 (the person changed their password) or 467 (the session was invalidated).
    revoked: RwLock<HashMap<String, i64>>,
    /// Page id to its token's expiry as `debug_token` gives it (absent: never expires).
    expiries: RwLock<HashMap<String, i64>>,
    next_test_lead: AtomicU64,
    registry: RwLock<Registry>,
    http: reqwest::Client,
    /// The Conversions API dataset (`crate::conversions`).
    conversions: Mutex<crate::conversions::ConversionsState>,
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
    pub async fn start(mut data: Dataset, faults: Faults) -> std::io::Result<Self> {
        let mut raw = HashMap::with_capacity(data.leads.len());
        for lead in &mut data.leads {
            *lead = compact(std::mem::take(lead), &mut raw);
        }
        Self::serve(data, raw, faults).await
    }

    /// Generates the world for `spec` and starts on it, each lead's JSON serialized as it is
    /// made (what `demo` uses: a 100,000-lead world as `Value` trees is about 600 MB).
    pub async fn generate(spec: &DatasetSpec, faults: Faults) -> std::io::Result<Self> {
        let mut raw = HashMap::with_capacity(spec.leads);
        let data = Dataset::generate_with(spec, |lead| compact(lead, &mut raw));
        Self::serve(data, raw, faults).await
    }

    /// The world's pages, forms and leads with their ids and times but not their JSON
    /// (what a webhook post names), for a sender and a comparison.
    pub fn leads_by_id(&self) -> Dataset {
        let Ok(data) = self.state.data.read() else {
            return Dataset::default();
        };
        let mut copy = data.clone();
        for lead in &mut copy.leads {
            lead.json = Value::Null;
        }
        copy
    }

    async fn serve(
        data: Dataset,
        raw: HashMap<String, Box<serde_json::value::RawValue>>,
        faults: Faults,
    ) -> std::io::Result<Self> {
        let state = Arc::new(SandboxState {
            data: RwLock::new(data),
            raw: RwLock::new(raw),
            faults: RwLock::new(faults),
            rng: Mutex::new(fastrand::Rng::with_seed(11)),
            requests: AtomicU64::new(0),
            form_reads: AtomicU64::new(0),
            revoked: RwLock::new(Default::default()),
            expiries: RwLock::new(Default::default()),
            next_test_lead: AtomicU64::new(1),
            registry: RwLock::new(Registry::default()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            conversions: Mutex::new(Default::default()),
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

    /// Conversions API events taken (dropped ones not included), as sent.
    pub fn conversion_events(&self) -> Vec<Value> {
        self.state
            .conversions
            .lock()
            .map(|c| c.taken.clone())
            .unwrap_or_default()
    }

    /// Events Meta took but dropped without a word (dated before their lead).
    pub fn conversion_events_dropped(&self) -> Vec<Value> {
        self.state
            .conversions
            .lock()
            .map(|c| c.dropped.clone())
            .unwrap_or_default()
    }

    /// `(requests taken, requests refused)` by the dataset.
    pub fn conversion_requests(&self) -> (u64, u64) {
        self.state
            .conversions
            .lock()
            .map(|c| (c.accepted_requests, c.refused_requests))
            .unwrap_or_default()
    }

    /// Repeats of an `(event_id, event_name)` already taken, dropped as Meta drops them.
    pub fn conversion_events_deduplicated(&self) -> u64 {
        self.state
            .conversions
            .lock()
            .map(|c| c.deduplicated)
            .unwrap_or_default()
    }

    /// From now on Meta refuses any request with an event for `lead_id`.
    pub fn refuse_lead_in_events(&self, lead_id: &str) {
        if let Ok(mut c) = self.state.conversions.lock() {
            c.refused_leads.insert(lead_id.to_owned());
        }
    }

    /// The next `n` event requests are answered with a transient 500.
    pub fn fail_conversions(&self, n: u32) {
        if let Ok(mut c) = self.state.conversions.lock() {
            c.transient = n;
        }
    }

    /// `http://127.0.0.1:port`, the value for `GRAPH_API_BASE`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Invalidates a page's token as Meta does when the page's person changes their password
    /// (190/460 from now on, `debug_token` says so too) and gives the page a new one, which
    /// `/me/accounts` hands out. Returns the new token.
    pub fn rotate_page_token(&self, page_id: &str) -> Option<String> {
        self.invalidate_page_token(page_id, 460)
    }

    /// Invalidates a page's token with Meta's `subcode` (460: password changed; 467: the
    /// session was invalidated, e.g. the person logged out) and gives the page a new one.
    pub fn invalidate_page_token(&self, page_id: &str, subcode: i64) -> Option<String> {
        let mut data = self.state.data.write().ok()?;
        let entry = data.pages.iter_mut().find(|(p, _)| p == page_id)?;
        let n = self.state.requests.load(Ordering::Relaxed);
        let old = std::mem::replace(&mut entry.1, format!("{}-new-{n}", page_token(page_id)));
        if let Ok(mut revoked) = self.state.revoked.write() {
            revoked.insert(old, subcode);
        }
        Some(entry.1.clone())
    }

    /// Makes `debug_token` say the page's token expires at `unix` (a token derived from a
    /// person's 60-day token).
    pub fn set_page_token_expiry(&self, page_id: &str, unix: i64) {
        if let Ok(mut expiries) = self.state.expiries.write() {
            expiries.insert(page_id.to_owned(), unix);
        }
    }

    /// How many single forms (`GET /{form-id}`) it has served: the catalog's Graph reads.
    pub fn form_reads(&self) -> u64 {
        self.state.form_reads.load(Ordering::Relaxed)
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

    /// Replaces who the stand-in knows: the app, people's tokens, subscribed pages.
    pub fn set_accounts(&self, accounts: Accounts) {
        if let Ok(mut r) = self.state.registry.write() {
            r.accounts = accounts;
        }
    }

    /// The pages with the app subscribed to `leadgen` (every page unless set otherwise).
    pub fn subscribed_pages(&self) -> Vec<String> {
        let Ok(registry) = self.state.registry.read() else {
            return Vec::new();
        };
        self.dataset()
            .pages
            .iter()
            .map(|(p, _)| p.clone())
            .filter(|p| registry.is_subscribed(p))
            .collect()
    }

    /// The app's webhook callback, once `POST /{app}/subscriptions` succeeded.
    pub fn app_callback(&self) -> Option<String> {
        self.state
            .registry
            .read()
            .ok()
            .and_then(|r| r.app_subscription.as_ref().map(|(url, _)| url.clone()))
    }

    /// Each form's test lead, as Meta holds them now.
    pub fn test_leads(&self) -> std::collections::BTreeMap<String, String> {
        self.state
            .registry
            .read()
            .map(|r| r.test_leads.clone())
            .unwrap_or_default()
    }

    /// One lead's JSON as the stand-in serves it, without copying the world (the demo
    /// compares 100,000 leads with it).
    pub fn lead_json(&self, id: &str) -> Option<Value> {
        let data = self.state.data.read().ok()?;
        data.lead(id).map(|lead| lead_json(&self.state, lead))
    }

    /// A copy of the world as it is now (test leads included).
    pub fn dataset(&self) -> Dataset {
        let Ok(data) = self.state.data.read() else {
            return Dataset::default();
        };
        let mut copy = data.clone();
        for lead in &mut copy.leads {
            lead.json = lead_json(&self.state, lead);
        }
        copy
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
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["oauth", "access_token"]) => return exchange_token(&state, &params),
        ("GET", ["me", "accounts"]) => return my_accounts(&state, &uri, &params),
        ("GET", ["me", "businesses"]) => return my_businesses(&state, &params),
        ("GET", [business, edge @ ("owned_pages" | "client_pages")]) => {
            return business_pages(&state, business, edge, &params);
        }
        ("POST", [app, "subscriptions"]) => {
            return subscribe_app(&state, app, &params).await;
        }
        ("POST", [form, "test_leads"]) => return create_test_lead(&state, form, &params),
        ("GET", [form, "test_leads"]) => return list_test_leads(&state, form, &params),
        ("DELETE", [id]) => return delete_test_lead(&state, id, &params),
        ("POST", [dataset, "events"]) => return conversions_events(&state, dataset, &params),
        ("GET", [crate::conversions::DATASET_ID]) => {
            return if params.get("access_token").map(String::as_str)
                == Some(crate::conversions::TOKEN)
            {
                ok(json!({"id": crate::conversions::DATASET_ID, "name": "Sandbox CRM dataset"}))
            } else {
                graph_error(400, 190, None, "Invalid OAuth access token", false)
            };
        }
        _ => {}
    }
    // Read under the lock, without copying the world per request; nothing below awaits.
    let Ok(data) = state.data.read() else {
        return graph_error(500, 1, None, "sandbox poisoned", true);
    };
    let data = &*data;
    if segments.first() == Some(&"debug_token") {
        return debug_token(&state, data, &params, &expired);
    }
    if let Some(token) = params.get("access_token")
        && let Some(subcode) = state
            .revoked
            .read()
            .ok()
            .and_then(|r| r.get(token).copied())
    {
        return graph_error(400, 190, Some(subcode), revoked_message(subcode), false);
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
        ("GET", [node]) => read_form(&state, data, node, &page_of_token)
            .unwrap_or_else(|| read_lead(&state, data, node, &page_of_token)),
        ("GET", [page, "leadgen_forms"]) => leadgen_forms(data, page),
        ("GET", [page, "subscribed_apps"]) => {
            let unreadable = state
                .faults
                .read()
                .is_ok_and(|f| f.unreadable_subscriptions.iter().any(|p| p == page));
            if unreadable {
                return graph_error(500, 2, None, "An unexpected error has occurred.", true);
            }
            subscribed_apps(&state, page)
        }
        ("POST", [page, "subscribed_apps"]) => {
            subscribe_page(&state, data, page, &page_of_token, &params)
        }
        ("GET", [node, "leads"]) => edge_leads(&state, data, &uri, node, &params, &page_of_token),
        _ => graph_error(400, 100, None, "Unsupported request", false),
    }
}

/// `POST /{dataset}/events`, against the world's leads and the test leads made so far.
fn conversions_events(
    state: &SandboxState,
    dataset: &str,
    params: &HashMap<String, String>,
) -> Response {
    let Ok(data) = state.data.read() else {
        return graph_error(500, 1, None, "sandbox poisoned", true);
    };
    let created = |id: &str| data.lead(id).map(|l| l.created_time);
    let Ok(mut conversions) = state.conversions.lock() else {
        return graph_error(500, 1, None, "sandbox poisoned", true);
    };
    match crate::conversions::receive(&mut conversions, dataset, params, &created, now()) {
        Ok(answer) => ok(answer),
        Err((status, code, subcode, message, transient)) => {
            graph_error(status, code, subcode, message, transient)
        }
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

/// `GET /debug_token?input_token=...`: page tokens never expire and carry every scope;
/// people's tokens as [`Accounts`] says; the app's own token; anything else is invalid.
fn debug_token(
    state: &SandboxState,
    data: &Dataset,
    params: &HashMap<String, String>,
    expired: &[String],
) -> Response {
    let input = params.get("input_token").cloned().unwrap_or_default();
    let Ok(registry) = state.registry.read() else {
        return graph_error(500, 1, None, "sandbox poisoned", true);
    };
    let app_id = registry.accounts.app_id.clone();
    if let Some(subcode) = state
        .revoked
        .read()
        .ok()
        .and_then(|r| r.get(&input).copied())
    {
        return ok(
            json!({"data": {"app_id": app_id, "type": "PAGE", "is_valid": false, "scopes": [],
            "error": {"code": 190, "subcode": subcode, "message": revoked_message(subcode)}}}),
        );
    }
    if let Some(page) = data.page_of_token(&input).map(str::to_owned) {
        let valid = !expired.contains(&page);
        let expires_at = state
            .expiries
            .read()
            .ok()
            .and_then(|e| e.get(&page).copied())
            .unwrap_or(0);
        return ok(
            json!({"data": {"app_id": app_id, "type": "PAGE", "application": "leadpipe sandbox",
            "is_valid": valid, "expires_at": expires_at, "data_access_expires_at": 0,
            "scopes": ["leads_retrieval", "pages_show_list", "pages_read_engagement", "pages_manage_metadata", "pages_manage_ads"],
            "user_id": "1000000000042", "profile_id": page}}),
        );
    }
    if let Some(user) = registry.user(&input) {
        let mut info = json!({"app_id": app_id, "type": if user.kind == TokenKind::SystemUser { "SYSTEM_USER" } else { "USER" },
            "application": "leadpipe sandbox", "is_valid": user.kind != TokenKind::Expired,
            "expires_at": user.expires_at(), "data_access_expires_at": user.issued_at + 90 * 86_400,
            "issued_at": user.issued_at, "scopes": user.scopes, "user_id": "1000000000042"});
        if user.kind == TokenKind::Expired {
            info["error"] = json!({"code": 190, "subcode": 463,
                "message": "Error validating access token: Session has expired. The current time is later than the expiry time."});
        }
        return ok(json!({ "data": info }));
    }
    if input == registry.app_token() {
        return ok(
            json!({"data": {"app_id": app_id, "type": "APP", "application": "leadpipe sandbox", "is_valid": true}}),
        );
    }
    ok(json!({"data": {"is_valid": false, "scopes": [],
        "error": {"code": 190, "message": "Invalid OAuth access token - Cannot parse access token"}}}))
}

/// `GET /me/businesses`: every business, to a token with `business_management` (Meta's
/// 200 error without it).
fn my_businesses(state: &SandboxState, params: &HashMap<String, String>) -> Response {
    let Ok(registry) = state.registry.read() else {
        return graph_error(500, 1, None, "sandbox poisoned", true);
    };
    let user = match person(&registry, params) {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    if !user.scopes.iter().any(|s| s == "business_management") {
        return graph_error(
            403,
            200,
            None,
            "(#200) Requires business_management permission to manage the object",
            false,
        );
    }
    let items: Vec<Value> = registry
        .accounts
        .businesses
        .iter()
        .map(|b| json!({"id": b.id, "name": b.name}))
        .collect();
    ok(json!({"data": items}))
}

/// `GET /{business}/owned_pages` and `client_pages`: the business's pages with their
/// current tokens.
fn business_pages(
    state: &SandboxState,
    business: &str,
    edge: &str,
    params: &HashMap<String, String>,
) -> Response {
    let Ok(registry) = state.registry.read() else {
        return graph_error(500, 1, None, "sandbox poisoned", true);
    };
    if let Err(refused) = person(&registry, params) {
        return refused;
    }
    let Some(found) = registry
        .accounts
        .businesses
        .iter()
        .find(|b| b.id == business)
    else {
        return graph_error(
            400,
            100,
            Some(33),
            "Unsupported get request. Object does not exist",
            false,
        );
    };
    let pages = if edge == "owned_pages" {
        &found.owned_pages
    } else {
        &found.client_pages
    };
    let Ok(data) = state.data.read() else {
        return graph_error(500, 1, None, "sandbox poisoned", true);
    };
    let items: Vec<Value> = pages
        .iter()
        .map(|p| {
            let token = data
                .pages
                .iter()
                .find(|(id, _)| id == p)
                .map_or_else(|| page_token(p), |(_, t)| t.clone());
            json!({"id": p, "name": format!("Page {p}"), "access_token": token})
        })
        .collect();
    ok(json!({"data": items}))
}

/// A person's token from the request, or Graph's refusal.
#[allow(clippy::result_large_err)]
fn person(registry: &Registry, params: &HashMap<String, String>) -> Result<UserToken, Response> {
    let token = params
        .get("access_token")
        .map(String::as_str)
        .unwrap_or_default();
    match registry.user(token) {
        Some(user) if user.kind == TokenKind::Expired => Err(graph_error(
            400,
            190,
            Some(463),
            "Error validating access token: Session has expired",
            false,
        )),
        Some(user) => Ok(user.clone()),
        None => Err(graph_error(
            400,
            190,
            None,
            "Invalid OAuth access token - Cannot parse access token",
            false,
        )),
    }
}

/// `GET /oauth/access_token?grant_type=fb_exchange_token`: a long-lived token for a valid
/// user token, given the app's id and secret.
fn exchange_token(state: &SandboxState, params: &HashMap<String, String>) -> Response {
    let Ok(mut registry) = state.registry.write() else {
        return graph_error(500, 1, None, "sandbox poisoned", true);
    };
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
    if get("grant_type") != "fb_exchange_token" {
        return graph_error(400, 100, None, "Missing or unsupported grant_type", false);
    }
    if get("client_id") != registry.accounts.app_id {
        return graph_error(
            400,
            101,
            None,
            "Error validating application. Invalid application ID.",
            false,
        );
    }
    if get("client_secret") != registry.accounts.app_secret {
        return graph_error(400, 1, None, "Error validating client secret.", false);
    }
    let mut exchanged = params.clone();
    exchanged.insert("access_token".into(), get("fb_exchange_token").to_owned());
    let user = match person(&registry, &exchanged) {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    registry.exchanged += 1;
    let token = format!("sandbox-long-lived-{}", registry.exchanged);
    let long = UserToken {
        token: token.clone(),
        kind: TokenKind::LongLived,
        issued_at: now(),
        ..user
    };
    registry.accounts.users.push(long);
    ok(json!({"access_token": token, "token_type": "bearer", "expires_in": 60 * 86_400}))
}

/// `GET /me/accounts`: the user's pages with their tokens, a few at a time.
fn my_accounts(state: &SandboxState, uri: &Uri, params: &HashMap<String, String>) -> Response {
    let Ok(registry) = state.registry.read() else {
        return graph_error(500, 1, None, "sandbox poisoned", true);
    };
    let user = match person(&registry, params) {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    if !user.scopes.iter().any(|s| s == "pages_show_list") {
        return graph_error(
            403,
            200,
            None,
            "(#200) This endpoint requires the 'pages_show_list' permission.",
            false,
        );
    }
    let Ok(data) = state.data.read() else {
        return graph_error(500, 1, None, "sandbox poisoned", true);
    };
    let pages: Vec<&String> = data
        .pages
        .iter()
        .map(|(p, _)| p)
        .filter(|p| user.pages.as_ref().is_none_or(|only| only.contains(p)))
        .collect();
    let size = registry.accounts.accounts_page_size.max(1);
    let offset: usize = params
        .get("after")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let items: Vec<Value> = pages
        .iter()
        .skip(offset)
        .take(size)
        .map(|p| {
            let token = data
                .pages
                .iter()
                .find(|(id, _)| id == *p)
                .map_or_else(|| page_token(p), |(_, t)| t.clone());
            json!({"id": p, "name": format!("Page {p}"), "access_token": token,
                "category": "Automotive Repair Shop", "tasks": ["ADVERTISE", "ANALYZE", "CREATE_CONTENT", "MESSAGING", "MODERATE", "MANAGE"]})
        })
        .collect();
    let end = offset + items.len();
    let mut paging = json!({"cursors": {"before": offset.to_string(), "after": end.to_string()}});
    if end < pages.len() {
        let mut next = url::Url::parse(&format!("http://sandbox{}", uri.path()))
            .unwrap_or_else(|_| unreachable_url());
        // Meta's next links repeat the token; the client must strip it.
        for (k, v) in params {
            if k != "after" {
                next.query_pairs_mut().append_pair(k, v);
            }
        }
        next.query_pairs_mut()
            .append_pair("after", &end.to_string());
        paging["next"] = json!(next.as_str());
    }
    ok(json!({"data": items, "paging": paging}))
}

/// `GET /{page}/subscribed_apps`: the sandbox app, when it is subscribed.
fn subscribed_apps(state: &SandboxState, page: &str) -> Response {
    let subscribed = state
        .registry
        .read()
        .map(|r| r.is_subscribed(page))
        .unwrap_or(false);
    let data = if subscribed {
        json!([{"id": crate::accounts::APP_ID, "name": "leadpipe sandbox", "subscribed_fields": ["leadgen"]}])
    } else {
        json!([])
    };
    ok(json!({ "data": data }))
}

/// `POST /{page}/subscribed_apps`: with the page's own token only.
fn subscribe_page(
    state: &SandboxState,
    data: &Dataset,
    page: &str,
    page_of_token: &str,
    params: &HashMap<String, String>,
) -> Response {
    if page != page_of_token {
        return graph_error(
            403,
            210,
            None,
            "(#210) A page access token is required to request this resource.",
            false,
        );
    }
    if params.get("subscribed_fields").map(String::as_str) != Some("leadgen") {
        return graph_error(
            400,
            100,
            None,
            "(#100) Param subscribed_fields must be one of {leadgen, ...}",
            false,
        );
    }
    let pages: Vec<String> = data.pages.iter().map(|(p, _)| p.clone()).collect();
    if let Ok(mut registry) = state.registry.write() {
        registry.subscribe(page, &pages);
    }
    ok(json!({"success": true}))
}

/// `POST /{app}/subscriptions`: with the app's token; Meta calls the callback with a
/// challenge right away and subscribes only when it is echoed.
async fn subscribe_app(
    state: &SandboxState,
    app: &str,
    params: &HashMap<String, String>,
) -> Response {
    let (app_token, app_id) = match state.registry.read() {
        Ok(r) => (r.app_token(), r.accounts.app_id.clone()),
        Err(_) => return graph_error(500, 1, None, "sandbox poisoned", true),
    };
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    if get("access_token") != app_token || app != app_id {
        return graph_error(
            400,
            15,
            None,
            "(#15) This method must be called with an app access_token.",
            false,
        );
    }
    if get("object") != "page" || get("fields") != "leadgen" {
        return graph_error(
            400,
            100,
            None,
            "(#100) object must be page with fields leadgen",
            false,
        );
    }
    let (callback, verify_token) = (get("callback_url"), get("verify_token"));
    let challenge = format!(
        "{}",
        1_000_000_000u64 + state.requests.load(Ordering::Relaxed)
    );
    let url = match url::Url::parse_with_params(
        &callback,
        &[
            ("hub.mode", "subscribe"),
            ("hub.challenge", challenge.as_str()),
            ("hub.verify_token", verify_token.as_str()),
        ],
    ) {
        Ok(url) => url,
        Err(_) => {
            return graph_error(
                400,
                100,
                None,
                "(#100) Param callback_url must be a valid URL",
                false,
            );
        }
    };
    let failed = |why: String| {
        graph_error(
            400,
            2200,
            None,
            &format!("(#2200) callback verification failed: {why}"),
            false,
        )
    };
    match state.http.get(url).send().await {
        Err(_) => failed("Couldn't connect to server".into()),
        Ok(answer) => {
            let status = answer.status().as_u16();
            let body = answer.text().await.unwrap_or_default();
            if status == 200 && body == challenge {
                if let Ok(mut r) = state.registry.write() {
                    r.app_subscription = Some((callback, verify_token));
                }
                ok(json!({"success": true}))
            } else {
                let received: String = body.chars().take(50).collect();
                failed(format!(
                    "The URL couldn't be validated. Response does not match challenge, expected value=\"{challenge}\", received=\"{received}\" (HTTP {status})"
                ))
            }
        }
    }
}

/// `GET /{form}/test_leads`.
fn list_test_leads(state: &SandboxState, form: &str, params: &HashMap<String, String>) -> Response {
    if let Err(refused) = form_page(state, form, params) {
        return refused;
    }
    let ids: Vec<Value> = state
        .registry
        .read()
        .map(|r| {
            r.test_leads
                .get(form)
                .map(|id| vec![json!({"id": id})])
                .unwrap_or_default()
        })
        .unwrap_or_default();
    ok(json!({ "data": ids }))
}

/// The page a form belongs to, checked against the request's page token.
#[allow(clippy::result_large_err)]
fn form_page(
    state: &SandboxState,
    form: &str,
    params: &HashMap<String, String>,
) -> Result<String, Response> {
    let Ok(data) = state.data.read() else {
        return Err(graph_error(500, 1, None, "sandbox poisoned", true));
    };
    let expired = state
        .faults
        .read()
        .map(|f| f.expired_token_pages.clone())
        .unwrap_or_default();
    let page_of_token = authorize(&data, params, &expired)?;
    match data.forms.iter().find(|(_, f, _)| f == form) {
        Some((page, _, _)) if *page == page_of_token => Ok(page.clone()),
        Some(_) => Err(graph_error(403, 200, None, "Permissions error", false)),
        None => Err(graph_error(
            400,
            100,
            Some(33),
            "Unsupported request. Object does not exist",
            false,
        )),
    }
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

/// Moves a lead's JSON into `raw`, serialized (kept in the lead if it cannot be).
fn compact(
    mut lead: SandboxLead,
    raw: &mut HashMap<String, Box<serde_json::value::RawValue>>,
) -> SandboxLead {
    if let Ok(text) = serde_json::value::to_raw_value(&lead.json) {
        raw.insert(lead.id.clone(), text);
        lead.json = Value::Null;
    }
    lead
}

/// A lead's JSON as text: its own when it has one (test leads), else the serialized copy
/// taken at start, as it is (a batch answer carries it as a string).
fn lead_text(state: &SandboxState, lead: &SandboxLead) -> String {
    if !lead.json.is_null() {
        return lead.json.to_string();
    }
    state
        .raw
        .read()
        .ok()
        .and_then(|raw| raw.get(&lead.id).map(|text| text.get().to_owned()))
        .unwrap_or_else(|| Value::Null.to_string())
}

/// A lead's JSON: its own when it has one (test leads), else the serialized copy parsed.
fn lead_json(state: &SandboxState, lead: &SandboxLead) -> Value {
    if !lead.json.is_null() {
        return lead.json.clone();
    }
    serde_json::from_str(&lead_text(state, lead)).unwrap_or(Value::Null)
}

/// `GET /{lead-id}`: the lead, a fault, a permission error for another page's token, or gone.
fn read_lead(state: &SandboxState, data: &Dataset, lead_id: &str, page_of_token: &str) -> Response {
    match data.lead(lead_id) {
        Some(lead) if lead.page_id != page_of_token => {
            graph_error(403, 200, None, "Permissions error", false)
        }
        Some(lead) => match lead_fault(state) {
            Some(fault) => fault_response(state, fault),
            None => ok(lead_json(state, lead)),
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

/// A form of the dataset as Graph serves it, in its page's locale.
fn form_of(data: &Dataset, page: &str, id: &str, created: i64) -> Value {
    let page_index = data.pages.iter().position(|(p, _)| p == page).unwrap_or(0);
    crate::data::form_json(id, page, crate::data::form_locale(page_index), created)
}

/// `GET /{form-id}`: one form, to a token of its page; another page's token is refused as
/// Meta refuses it.
fn read_form(
    state: &SandboxState,
    data: &Dataset,
    form_id: &str,
    page_of_token: &str,
) -> Option<Response> {
    let (page, id, created) = data.forms.iter().find(|(_, f, _)| f == form_id)?;
    state.form_reads.fetch_add(1, Ordering::Relaxed);
    Some(if page != page_of_token {
        graph_error(403, 200, None, "Permissions error", false)
    } else {
        ok(form_of(data, page, id, *created))
    })
}

/// Meta's words for an invalidated token: 190/460 (a password change) or 190/467.
fn revoked_message(subcode: i64) -> &'static str {
    if subcode == 467 {
        "Error validating access token: The session is invalid because the user logged out."
    } else {
        "Error validating access token: The session has been invalidated because the user changed their password or Facebook has changed the session for security reasons."
    }
}

/// `GET /{page}/leadgen_forms`: every form of the page, with its lead count.
fn leadgen_forms(data: &Dataset, page: &str) -> Response {
    let forms: Vec<Value> = data
        .forms
        .iter()
        .filter(|(p, _, _)| p == page)
        .map(|(page, id, created)| {
            let mut form = form_of(data, page, id, *created);
            form["leads_count"] = json!(data.leads.iter().filter(|l| &l.form_id == id).count());
            form
        })
        .collect();
    ok(json!({"data": forms}))
}

/// `POST /{form}/test_leads`: one test lead per form at a time, as Meta allows; when the
/// app is subscribed to the page, Meta's webhook for it goes to the app's callback.
fn create_test_lead(
    state: &Arc<SandboxState>,
    form: &str,
    params: &HashMap<String, String>,
) -> Response {
    let page_id = match form_page(state, form, params) {
        Ok(page) => page,
        Err(refused) => return refused,
    };
    if state
        .registry
        .read()
        .map(|r| r.test_leads.contains_key(form))
        .unwrap_or(false)
    {
        return graph_error(
            400,
            100,
            Some(1_892_035),
            "(#100) A test lead already exists for this form. Delete it before creating another one.",
            false,
        );
    }
    let n = state.next_test_lead.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}", 1_990_000_000_000_000u64 + n);
    let created = now();
    let lead = SandboxLead {
        id: id.clone(),
        page_id: page_id.clone(),
        form_id: form.to_owned(),
        ad_id: None,
        adgroup_id: None,
        created_time: created,
        json: json!({"id": id, "created_time": graph_time(created), "form_id": form,
            "field_data": [{"name": "email", "values": ["test@fb.com"]}, {"name": "full_name", "values": ["<test lead: dummy data for full_name>"]}],
            "custom_disclaimer_responses": [], "is_organic": true, "platform": "fb"}),
    };
    match state.data.write() {
        Ok(mut data) => data.push(lead.clone()),
        Err(_) => return graph_error(500, 1, None, "sandbox poisoned", true),
    }
    let delivery = match state.registry.write() {
        Ok(mut r) => {
            r.test_leads.insert(form.to_owned(), id.clone());
            let secret = r.accounts.app_secret.clone();
            r.app_subscription
                .clone()
                .filter(|_| r.is_subscribed(&page_id))
                .map(|(callback, _)| (callback, secret))
        }
        Err(_) => None,
    };
    if let Some((callback, secret)) = delivery {
        let http = state.http.clone();
        tokio::spawn(async move {
            let body = crate::sender::post_body(&[&lead], now());
            let Ok(signature) = leadpipe_core::signature::sign(secret.as_bytes(), body.as_bytes())
            else {
                return;
            };
            // Meta retries a failed delivery; so does the stand-in, a few times.
            for _ in 0..5 {
                let sent = http
                    .post(&callback)
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", &signature)
                    .body(body.clone())
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
    ok(json!({ "id": id }))
}

/// `DELETE /{id}`: test leads only.
fn delete_test_lead(state: &SandboxState, id: &str, params: &HashMap<String, String>) -> Response {
    let form = state.registry.read().ok().and_then(|r| {
        r.test_leads
            .iter()
            .find(|(_, lead)| lead.as_str() == id)
            .map(|(form, _)| form.clone())
    });
    let Some(form) = form else {
        return graph_error(
            400,
            100,
            Some(33),
            "Unsupported delete request. Object does not exist",
            false,
        );
    };
    if let Err(refused) = form_page(state, &form, params) {
        return refused;
    }
    if let Ok(mut r) = state.registry.write() {
        r.test_leads.remove(&form);
    }
    if let Ok(mut data) = state.data.write() {
        data.remove(id);
    }
    ok(json!({"success": true}))
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
                    None => json!({"code": 200, "body": lead_text(state, lead)}),
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
        .map(|l| lead_json(state, l))
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

pub use crate::accounts::demo_app_secret;

/// Every page's token, for a local secret.
pub fn tokens(data: &Dataset) -> Vec<(String, String)> {
    data.pages
        .iter()
        .map(|(p, _)| (p.clone(), page_token(p)))
        .collect()
}
