#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

pub const APP_SECRET: &str = "backfill-app-secret-5d1e";
pub const TOKEN_A: &str = "EAApageAtoken111";
pub const TOKEN_B: &str = "EAApageBtoken222";
pub const PAGE_A: &str = "7001";
pub const PAGE_B: &str = "7002";

#[derive(Debug, Clone)]
pub struct FakeLead {
    pub id: String,
    pub created: i64,
    pub form: String,
    pub ad: Option<String>,
}

/// What the stand-in serves: pages with forms with leads, and which pages deny access.
#[derive(Debug, Default)]
pub struct Dataset {
    pub forms: BTreeMap<String, Vec<String>>,
    pub form_created: i64,
    pub leads: Vec<FakeLead>,
    pub denied_pages: Vec<String>,
    pub requests: usize,
}

pub type Shared = Arc<Mutex<Dataset>>;

pub fn lead_json(lead: &FakeLead) -> serde_json::Value {
    let created = time::OffsetDateTime::from_unix_timestamp(lead.created).unwrap();
    let created = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+0000",
        created.year(),
        created.month() as u8,
        created.day(),
        created.hour(),
        created.minute(),
        created.second()
    );
    let mut json = serde_json::json!({
        "id": lead.id, "created_time": created, "form_id": lead.form,
        "field_data": [{"name": "email", "values": [format!("{}@example.org", lead.id)]},
                       {"name": "phone_number", "values": ["+15550100"]}],
        "custom_disclaimer_responses": [], "is_organic": lead.ad.is_none(), "platform": "ig"
    });
    if let Some(ad) = &lead.ad {
        json["ad_id"] = serde_json::json!(ad);
    }
    json
}

fn query(request: &Request, key: &str) -> Option<String> {
    request
        .url
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Serves debug_token, has_lead_access, leadgen_forms and `/{form|ad}/leads` from `data`,
/// with `filtering` on time_created applied, newest first as Meta does, and cursor paging.
pub async fn graph_stand_in(data: Shared) -> MockServer {
    let server = MockServer::start().await;
    let uri = server.uri();
    Mock::given(wiremock::matchers::method("GET"))
        .respond_with(move |request: &Request| {
            let mut data = data.lock().unwrap();
            data.requests += 1;
            let segments: Vec<String> = request.url.path_segments().unwrap().map(str::to_owned).collect();
            let token = query(request, "access_token").unwrap_or_default();
            match segments.as_slice() {
                [_, node] if node == "debug_token" => ResponseTemplate::new(200).set_body_json(serde_json::json!({
                    "data": {"app_id": "99", "type": "PAGE", "is_valid": true, "user_id": "42",
                             "scopes": ["leads_retrieval"]}})),
                [_, page] if query(request, "fields").is_some_and(|f| f.starts_with("has_lead_access")) => {
                    let denied = data.denied_pages.contains(page);
                    let body = if denied {
                        serde_json::json!({"app_has_leads_permission": true, "can_access_lead": false,
                          "failure_reason": "The user is not assigned to this Page in Leads Access Manager",
                          "failure_resolution": "Assign the user in Leads Access Manager in Business Settings",
                          "user_has_leads_permission": false, "page_id": page})
                    } else {
                        serde_json::json!({"app_has_leads_permission": true, "can_access_lead": true, "page_id": page})
                    };
                    ResponseTemplate::new(200).set_body_json(serde_json::json!({"has_lead_access": body, "id": page}))
                }
                [_, page, edge] if edge == "leadgen_forms" => {
                    let forms: Vec<_> = data.forms.get(page).cloned().unwrap_or_default().into_iter()
                        .map(|id| serde_json::json!({"id": id, "name": format!("Form {id}"), "status": "ACTIVE",
                            "created_time": data.form_created}))
                        .collect();
                    ResponseTemplate::new(200).set_body_json(serde_json::json!({"data": forms}))
                }
                [_, node, edge] if edge == "leads" => {
                    assert!(token == TOKEN_A || token == TOKEN_B, "a page token is sent");
                    let filters: Vec<serde_json::Value> = query(request, "filtering")
                        .map(|f| serde_json::from_str(&f).unwrap())
                        .unwrap_or_default();
                    let mut leads: Vec<&FakeLead> = data.leads.iter()
                        .filter(|l| &l.form == node || l.ad.as_deref() == Some(node.as_str()))
                        .filter(|l| filters.iter().all(|f| {
                            let v = f["value"].as_i64().unwrap();
                            match f["operator"].as_str().unwrap() {
                                "GREATER_THAN" => l.created > v,
                                "GREATER_THAN_OR_EQUAL" => l.created >= v,
                                "LESS_THAN" => l.created < v,
                                other => panic!("operator {other}"),
                            }
                        }))
                        .collect();
                    leads.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
                    let limit: usize = query(request, "limit").and_then(|l| l.parse().ok()).unwrap_or(25);
                    let offset: usize = query(request, "after").and_then(|a| a.parse().ok()).unwrap_or(0);
                    let page: Vec<_> = leads.iter().skip(offset).take(limit).map(|l| lead_json(l)).collect();
                    let mut paging = serde_json::json!({"cursors": {"before": offset.to_string(), "after": (offset + page.len()).to_string()}});
                    if offset + page.len() < leads.len() {
                        let mut next = url::Url::parse(&format!("{uri}{}", request.url.path())).unwrap();
                        for (k, v) in request.url.query_pairs() {
                            if k != "after" && k != "access_token" && k != "appsecret_proof" {
                                next.query_pairs_mut().append_pair(&k, &v);
                            }
                        }
                        next.query_pairs_mut().append_pair("access_token", &token).append_pair("after", &(offset + page.len()).to_string());
                        paging["next"] = serde_json::json!(next.as_str());
                    }
                    ResponseTemplate::new(200).set_body_json(serde_json::json!({"data": page, "paging": paging}))
                }
                other => ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": {
                    "message": format!("unknown path {other:?}"), "type": "GraphMethodException", "code": 100}})),
            }
        })
        .mount(&server)
        .await;
    server
}

/// Three forms over two pages: 7, 12 and 5 leads, an hour apart, the last `now - 1h`.
pub fn three_forms(now: i64) -> Dataset {
    let mut data = Dataset {
        form_created: now - 30 * 86_400,
        ..Dataset::default()
    };
    data.forms
        .insert(PAGE_A.into(), vec!["501".into(), "502".into()]);
    data.forms.insert(PAGE_B.into(), vec!["503".into()]);
    let mut n = 0;
    for (form, count) in [("501", 7), ("502", 12), ("503", 5)] {
        for i in 0..count {
            n += 1;
            data.leads.push(FakeLead {
                id: format!("9{form}{i:03}"),
                created: now - 3600 * (i + 1),
                form: form.into(),
                ad: (i % 3 != 0).then(|| format!("ad{form}")),
            });
        }
    }
    assert_eq!(n, 24);
    data
}

pub use leadpipe_lambda_harness::Moto;
