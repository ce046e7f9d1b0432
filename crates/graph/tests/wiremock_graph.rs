//! The Graph client against an HTTP mock server (wiremock): real HTTP, real JSON.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use futures::TryStreamExt;
use leadpipe_graph::{ErrorClass, GraphClient, GraphConfig, LeadQuery, RetryPolicy, TimeOperator};
use secrecy::SecretString;
use std::time::Duration;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const APP_SECRET: &str = "leadpipe-app-secret";
const TOKEN: &str = "EAAGm0PX4ZCpsBAKtestpagetoken";
// Computed independently: python3 -c "import hmac,hashlib;
// print(hmac.new(b'leadpipe-app-secret', b'EAAGm0PX4ZCpsBAKtestpagetoken', hashlib.sha256).hexdigest())"
const PROOF: &str = "11693030b2d1ada7dcd5077310f5d0cf74a2a95c540286dce8c861930a79577e";

fn token() -> SecretString {
    SecretString::from(TOKEN)
}

fn client(server: &MockServer) -> GraphClient {
    GraphClient::new(GraphConfig {
        base_url: server.uri(),
        app_secret: Some(SecretString::from(APP_SECRET)),
        retry: RetryPolicy {
            max_retries: 3,
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
        },
        ..GraphConfig::default()
    })
    .unwrap()
}

fn lead_json(id: &str, created: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "created_time": created, "ad_id": "6001", "form_id": "555",
        "field_data": [{"name": "email", "values": ["person@example.com"]}, {"name": "services", "values": ["a", "b"]}],
        "custom_disclaimer_responses": [{"checkbox_key": "optional_1", "is_checked": "1"}],
        "is_organic": false, "platform": "fb"
    })
}

fn graph_error(code: i64, subcode: Option<i64>, transient: bool) -> serde_json::Value {
    let mut error = serde_json::json!({
        "message": format!("An error with code {code} (token {TOKEN})"),
        "type": "OAuthException", "code": code, "is_transient": transient, "fbtrace_id": "AZx1y2z3"
    });
    if let Some(sub) = subcode {
        error["error_subcode"] = serde_json::json!(sub);
    }
    serde_json::json!({ "error": error })
}

#[tokio::test]
async fn one_lead_with_fields_token_and_proof_on_the_wire() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v26.0/1001"))
        .and(query_param("access_token", TOKEN))
        .and(query_param("appsecret_proof", PROOF))
        .and(query_param("fields", leadpipe_graph::DEFAULT_LEAD_FIELDS))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(lead_json("1001", "2026-11-29T04:00:00+0000")),
        )
        .expect(1)
        .mount(&server)
        .await;
    let lead = client(&server).lead(&token(), "1001").await.unwrap();
    assert_eq!(lead.id, "1001");
    assert_eq!(lead.field("services").unwrap(), ["a", "b"]);
    assert!(lead.custom_disclaimer_responses[0].is_checked);
    assert_eq!(lead.created_time.unix_timestamp(), 1_795_924_800);
}

#[tokio::test]
async fn every_error_class_from_a_real_shaped_body() {
    let cases = [
        (400, 190, Some(463), false, ErrorClass::Token),
        (400, 4, None, false, ErrorClass::RateLimited),
        (400, 17, None, false, ErrorClass::RateLimited),
        (400, 80005, None, false, ErrorClass::RateLimited),
        (403, 10, None, false, ErrorClass::Permission),
        (400, 200, None, false, ErrorClass::Permission),
        (400, 100, Some(33), false, ErrorClass::NotFound),
        (400, 100, None, false, ErrorClass::BadRequest),
        (400, 2635, None, false, ErrorClass::BadRequest),
        (500, 2, None, true, ErrorClass::Transient),
    ];
    for (status, code, subcode, transient, class) in cases {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(
                ResponseTemplate::new(status).set_body_json(graph_error(code, subcode, transient)),
            )
            .mount(&server)
            .await;
        let err = client(&server).lead(&token(), "1001").await.unwrap_err();
        assert_eq!(err.class(), class, "code {code}");
        assert_eq!(err.code, Some(code));
        assert_eq!(err.subcode, subcode);
        assert_eq!(err.status, Some(status));
        assert_eq!(err.fbtrace_id.as_deref(), Some("AZx1y2z3"));
        assert_eq!(err.error_type.as_deref(), Some("OAuthException"));
        assert_eq!(err.is_transient, transient);
        // Meta's message echoed the token; it must not survive into our text.
        assert!(!err.to_string().contains(TOKEN), "{err}");
        assert!(!format!("{err:?}").contains(TOKEN), "{err:?}");
    }
}

#[tokio::test]
async fn transient_errors_are_retried_and_permission_errors_are_not() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v26.0/2001"))
        .respond_with(ResponseTemplate::new(500).set_body_json(graph_error(2, None, true)))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v26.0/2001"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(lead_json("2001", "2026-11-29T04:00:00+0000")),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v26.0/2002"))
        .respond_with(ResponseTemplate::new(403).set_body_json(graph_error(200, None, false)))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v26.0/2003"))
        .respond_with(ResponseTemplate::new(503).set_body_string("upstream busy"))
        .mount(&server)
        .await;
    let client = client(&server);

    assert_eq!(client.lead(&token(), "2001").await.unwrap().id, "2001");
    let err = client.lead(&token(), "2002").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permission);
    let err = client.lead(&token(), "2003").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);

    let requests = server.received_requests().await.unwrap();
    let count = |id: &str| {
        requests
            .iter()
            .filter(|r| r.url.path() == format!("/v26.0/{id}"))
            .count()
    };
    assert_eq!(count("2001"), 3, "two failures then a success");
    assert_eq!(count("2002"), 1, "permission errors are not retried");
    assert_eq!(
        count("2003"),
        4,
        "one attempt and three retries, then give up"
    );
}

#[tokio::test]
async fn rate_limits_expose_usage_headers_and_are_not_retried_here() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(graph_error(80005, None, false))
                .insert_header("x-app-usage", r#"{"call_count":96,"total_time":20,"total_cputime":20}"#)
                .insert_header(
                    "x-business-use-case-usage",
                    r#"{"777":[{"type":"leadgen","call_count":100,"total_cputime":5,"total_time":5,"estimated_time_to_regain_access":12}]}"#,
                ),
        )
        .mount(&server)
        .await;
    let client = client(&server);
    let err = client.lead(&token(), "3001").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::RateLimited);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(12 * 60)));
    assert_eq!(err.usage.business[0].use_case, "leadgen");
    assert_eq!(client.last_usage().app.map(|a| a.call_count), Some(96.0));
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_three_page_cursor_walk_goes_on_past_a_short_page() {
    let server = MockServer::start().await;
    let base = server.uri();
    // Meta echoes the token in paging.next; the client must not send a foreign one on.
    let next =
        |after: &str| format!("{base}/v26.0/555/leads?access_token=LEAKED&limit=3&after={after}");
    let page = |ids: &[&str], next: Option<String>| {
        let data: Vec<_> = ids
            .iter()
            .map(|id| lead_json(id, "2026-11-29T04:00:00+0000"))
            .collect();
        let mut paging = serde_json::json!({"cursors": {"before": "B", "after": format!("after-{}", ids.last().unwrap_or(&"none"))}});
        if let Some(next) = next {
            paging["next"] = serde_json::json!(next);
        }
        serde_json::json!({"data": data, "paging": paging})
    };
    Mock::given(method("GET"))
        .and(path("/v26.0/555/leads"))
        .and(query_param("after", "c2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&["6", "7"], None)))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v26.0/555/leads"))
        .and(query_param("after", "c1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&["4"], Some(next("c2")))))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v26.0/555/leads"))
        .and(query_param("limit", "3"))
        .and(query_param("fields", leadpipe_graph::DEFAULT_LEAD_FIELDS))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(page(&["1", "2", "3"], Some(next("c1")))),
        )
        .mount(&server)
        .await;

    let client = client(&server);
    let token = token();
    let query = LeadQuery::default()
        .with_time(TimeOperator::GreaterThan, 1_764_000_000)
        .with_time(TimeOperator::LessThan, 1_765_000_000)
        .with_limit(3);
    let pages: Vec<_> = client
        .form_leads(&token, "555", &query)
        .try_collect()
        .await
        .unwrap();
    let ids: Vec<&str> = pages
        .iter()
        .flat_map(|p| p.items.iter().map(|l| l.id.as_str()))
        .collect();
    assert_eq!(ids, ["1", "2", "3", "4", "6", "7"]);
    assert_eq!(pages.len(), 3);
    assert!(!pages[2].has_next);

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3);
    let first = &requests[0];
    let filtering = query_value(first, "filtering").unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&filtering).unwrap(),
        serde_json::json!([
            {"field": "time_created", "operator": "GREATER_THAN", "value": 1_764_000_000},
            {"field": "time_created", "operator": "LESS_THAN", "value": 1_765_000_000}
        ])
    );
    for request in &requests {
        let tokens: Vec<_> = request
            .url
            .query_pairs()
            .filter(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(tokens, [TOKEN], "exactly our token, never the echoed one");
        assert_eq!(
            query_value(request, "appsecret_proof").as_deref(),
            Some(PROOF)
        );
    }
}

#[tokio::test]
async fn ad_leads_and_leadgen_forms_are_paged_too() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v26.0/6001/leads"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "data": [lead_json("9", "2026-11-29T04:00:00+0000")], "paging": {"cursors": {"after": "x"}}})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v26.0/777/leadgen_forms"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "data": [{"id": "555", "name": "Quote", "status": "ACTIVE", "leads_count": 12, "locale": "en_US"},
                     {"id": 556, "name": "Old", "status": "ARCHIVED"}]})))
        .mount(&server)
        .await;
    let client = client(&server);
    let token = token();
    let pages: Vec<_> = client
        .ad_leads(&token, "6001", &LeadQuery::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(pages[0].items[0].id, "9");
    let forms: Vec<_> = client
        .leadgen_forms(&token, "777")
        .try_collect()
        .await
        .unwrap();
    assert_eq!(forms[0].items.len(), 2);
    assert_eq!(forms[0].items[0].leads_count, Some(12));
    assert_eq!(forms[0].items[1].id, "556");
    assert_eq!(forms[0].items[1].status.as_deref(), Some("ARCHIVED"));
}

#[tokio::test]
async fn a_batch_where_one_item_fails_returns_the_others() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v26.0/"))
        .respond_with(|request: &Request| {
            let form: Vec<(String, String)> = url::form_urlencoded::parse(&request.body).into_owned().collect();
            let batch = &form.iter().find(|(k, _)| k == "batch").unwrap().1;
            let requests: Vec<serde_json::Value> = serde_json::from_str(batch).unwrap();
            let answers: Vec<serde_json::Value> = requests
                .iter()
                .map(|r| {
                    let relative = r["relative_url"].as_str().unwrap();
                    let id = relative.split('?').next().unwrap();
                    if id == "gone" {
                        serde_json::json!({"code": 400, "body": graph_error(100, Some(33), false).to_string()})
                    } else {
                        serde_json::json!({"code": 200, "body": lead_json(id, "2026-11-29T04:00:00+0000").to_string()})
                    }
                })
                .collect();
            ResponseTemplate::new(200).set_body_json(answers)
        })
        .expect(1)
        .mount(&server)
        .await;
    let ids: Vec<String> = ["11", "gone", "13"].iter().map(|s| s.to_string()).collect();
    let items = client(&server).leads(&token(), &ids).await.unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0].result.as_ref().unwrap().id, "11");
    assert_eq!(items[1].lead_id, "gone");
    assert_eq!(
        items[1].result.as_ref().unwrap_err().class(),
        ErrorClass::NotFound
    );
    assert_eq!(items[2].result.as_ref().unwrap().id, "13");

    let request = &server.received_requests().await.unwrap()[0];
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&request.body)
        .into_owned()
        .collect();
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("access_token").as_deref(), Some(TOKEN));
    assert_eq!(get("appsecret_proof").as_deref(), Some(PROOF));
}

#[tokio::test]
async fn has_lead_access_debug_token_test_leads_and_subscriptions() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v26.0/777"))
        .and(query_param("fields", "has_lead_access.user_id(42).app_id(99)"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "has_lead_access": {"app_has_leads_permission": true, "can_access_lead": false,
              "enabled_lead_access_manager": true, "failure_reason": "User is not assigned",
              "failure_resolution": "Assign the user in Leads Access Manager", "is_page_admin": false,
              "page_id": "777", "user_has_leads_permission": false, "user_id": "42"}, "id": "777"})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v26.0/debug_token"))
        .and(query_param("input_token", TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"data": {
            "app_id": "99", "type": "PAGE", "application": "leadpipe", "is_valid": true, "expires_at": 0,
            "scopes": ["leads_retrieval", "pages_show_list"], "user_id": "42"}})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v26.0/555/test_leads"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "8008"})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v26.0/99/subscriptions"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"success": true})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v26.0/777/subscribed_apps"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"success": true})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v26.0/777/subscribed_apps"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"data": [
            {"id": "99", "name": "leadpipe", "subscribed_fields": ["leadgen"]}]})),
        )
        .mount(&server)
        .await;
    let client = client(&server);
    let token = token();

    let access = client
        .has_lead_access(&token, "777", "42", Some("99"))
        .await
        .unwrap();
    assert!(!access.can_access_lead);
    assert!(
        access
            .diagnosis()
            .contains("Assign the user in Leads Access Manager")
    );
    let info = client
        .debug_token(&SecretString::from("99|appsecret"), &token)
        .await
        .unwrap();
    assert!(info.is_valid);
    assert_eq!(info.token_type.as_deref(), Some("PAGE"));
    assert_eq!(
        info.missing_scopes(),
        ["pages_read_engagement", "pages_manage_metadata"]
    );
    assert_eq!(
        client.create_test_lead(&token, "555", None).await.unwrap(),
        "8008"
    );
    client
        .subscribe_app(
            &SecretString::from("99|appsecret"),
            "99",
            "https://example.test/hook",
            &SecretString::from("vt"),
        )
        .await
        .unwrap();
    client.subscribe_page(&token, "777").await.unwrap();
    let subs = client.page_subscriptions(&token, "777").await.unwrap();
    assert_eq!(subs[0].subscribed_fields, ["leadgen"]);

    let requests = server.received_requests().await.unwrap();
    let subscribe = requests
        .iter()
        .find(|r| r.url.path() == "/v26.0/99/subscriptions")
        .unwrap();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&subscribe.body)
        .into_owned()
        .collect();
    for (k, v) in [
        ("object", "page"),
        ("fields", "leadgen"),
        ("callback_url", "https://example.test/hook"),
    ] {
        assert!(form.contains(&(k.to_owned(), v.to_owned())), "{k}");
    }
}

#[tokio::test]
async fn transport_failures_never_show_the_token_and_bad_ids_never_leave() {
    let client = GraphClient::new(GraphConfig {
        base_url: "http://127.0.0.1:9".into(),
        retry: RetryPolicy {
            max_retries: 1,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        },
        ..GraphConfig::default()
    })
    .unwrap();
    let err = client.lead(&token(), "1").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    assert!(!err.to_string().contains(TOKEN), "{err}");
    assert!(!format!("{err:?}").contains(TOKEN), "{err:?}");

    let err = client.lead(&token(), "../me").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::BadRequest);
}

fn query_value(request: &Request, key: &str) -> Option<String> {
    request
        .url
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// A batch answer that echoes a lead per asked id.
fn echo_batch(request: &Request) -> ResponseTemplate {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&request.body)
        .into_owned()
        .collect();
    let batch = &form.iter().find(|(k, _)| k == "batch").unwrap().1;
    let requests: Vec<serde_json::Value> = serde_json::from_str(batch).unwrap();
    let answers: Vec<serde_json::Value> = requests
        .iter()
        .map(|r| {
            let id = r["relative_url"].as_str().unwrap().split('?').next().unwrap();
            serde_json::json!({"code": 200, "body": lead_json(id, "2026-11-29T04:00:00+0000").to_string()})
        })
        .collect();
    ResponseTemplate::new(200).set_body_json(answers)
}

#[tokio::test]
async fn one_malformed_id_fails_alone_and_the_batch_reads_the_others() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v26.0/"))
        .respond_with(echo_batch)
        .expect(1)
        .mount(&server)
        .await;
    let ids: Vec<String> = ["11", "../me", "13", ""]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let items = client(&server).leads(&token(), &ids).await.unwrap();
    let by_id: std::collections::BTreeMap<&str, &leadpipe_graph::BatchItem> =
        items.iter().map(|i| (i.lead_id.as_str(), i)).collect();
    assert_eq!(by_id.len(), 4);
    assert_eq!(by_id["11"].result.as_ref().unwrap().id, "11");
    assert_eq!(by_id["13"].result.as_ref().unwrap().id, "13");
    for bad in ["../me", ""] {
        let err = by_id[bad].result.as_ref().unwrap_err();
        assert_eq!(err.class(), ErrorClass::BadRequest, "{err}");
    }
    let request = &server.received_requests().await.unwrap()[0];
    let body = String::from_utf8_lossy(&request.body);
    assert!(
        !body.contains("..%2Fme") && !body.contains("../me"),
        "the bad id never left"
    );
}

#[tokio::test]
async fn redirects_are_not_followed_so_the_token_stays_home() {
    let elsewhere = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(
            ResponseTemplate::new(200).set_body_json(lead_json("1001", "2026-11-29T04:00:00+0000")),
        )
        .mount(&elsewhere)
        .await;
    let server = MockServer::start().await;
    for status in [301, 302, 307, 308] {
        server.reset().await;
        Mock::given(wiremock::matchers::any())
            .respond_with(
                ResponseTemplate::new(status)
                    .insert_header("location", format!("{}/v26.0/1001", elsewhere.uri())),
            )
            .mount(&server)
            .await;
        let err = client(&server).lead(&token(), "1001").await.unwrap_err();
        assert_eq!(err.status, Some(status), "{err}");
        let ids = vec!["1001".to_owned()];
        assert!(client(&server).leads(&token(), &ids).await.is_err());
    }
    assert!(
        elsewhere.received_requests().await.unwrap().is_empty(),
        "nothing reached the redirect's target"
    );
}

#[tokio::test]
async fn paging_next_is_followed_only_to_the_same_edge_under_our_base() {
    let server = MockServer::start().await;
    let prefix = "/graph-proxy";
    let base = format!("{}{prefix}", server.uri());
    let page = |next: Option<String>| {
        let mut body =
            serde_json::json!({"data": [lead_json("1", "2026-11-29T04:00:00+0000")], "paging": {}});
        if let Some(next) = next {
            body["paging"]["next"] = serde_json::json!(next);
        }
        body
    };
    let client = GraphClient::new(GraphConfig {
        base_url: base.clone(),
        app_secret: Some(SecretString::from(APP_SECRET)),
        ..GraphConfig::default()
    })
    .unwrap();
    let token = token();
    // Meta's own next (no prefix, its host): followed on our base, prefix kept.
    Mock::given(method("GET"))
        .and(path(format!("{prefix}/v26.0/555/leads")))
        .and(query_param("after", "c1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(None)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{prefix}/v26.0/555/leads")))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(Some(
            "https://graph.facebook.com/v26.0/555/leads?after=c1&access_token=ECHOED".into(),
        ))))
        .mount(&server)
        .await;
    let pages: Vec<_> = client
        .form_leads(&token, "555", &LeadQuery::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(pages.len(), 2);

    // Anything else is a Graph error, and nothing is sent there.
    for hostile in [
        "https://evil.example/v26.0/556/leads?after=x",
        "https://graph.facebook.com/v26.0/me/accounts?after=x",
        "https://graph.facebook.com/v26.0/555/leads/../../me?after=x",
        "https://graph.facebook.com/other/v26.0/555/leads?after=x",
        "https://graph.facebook.com/555/leads?after=x",
        "not a url",
    ] {
        server.reset().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_json(page(Some(hostile.into()))))
            .mount(&server)
            .await;
        let result: Result<Vec<_>, _> = client
            .form_leads(&token, "555", &LeadQuery::default())
            .try_collect()
            .await;
        let err = result.unwrap_err();
        assert_eq!(err.class(), ErrorClass::BadRequest, "{hostile}: {err}");
        assert_eq!(
            server.received_requests().await.unwrap().len(),
            1,
            "{hostile} was not followed"
        );
    }
}

#[tokio::test]
async fn appsecret_proof_is_redacted_like_the_token() {
    let server = MockServer::start().await;
    let body = serde_json::json!({"error": {"message": format!("Invalid appsecret_proof {PROOF} for token {TOKEN}"), "type": "GraphMethodException", "code": 100}});
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(400).set_body_json(body.clone()))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!([{"code": 400, "body": body.to_string()}])),
        )
        .mount(&server)
        .await;
    let err = client(&server).lead(&token(), "1").await.unwrap_err();
    let ids = vec!["2".to_owned()];
    let items = client(&server).leads(&token(), &ids).await.unwrap();
    let item_err = items[0].result.as_ref().unwrap_err();
    for text in [
        err.to_string(),
        format!("{err:?}"),
        item_err.to_string(),
        format!("{item_err:?}"),
    ] {
        assert!(!text.contains(PROOF), "{text}");
        assert!(!text.contains(TOKEN), "{text}");
        assert!(text.contains("[REDACTED]"), "{text}");
    }
}

#[tokio::test]
async fn a_cursor_resumes_only_a_next_page_of_this_client() {
    let server = MockServer::start().await;
    let client = client(&server);
    let base = server.uri();
    // What a page hands out as its next page resumes...
    let next = client
        .next_page_from(&format!("{base}/v26.0/555/leads?after=c1&limit=3"))
        .unwrap();
    assert_eq!(
        next.as_str(),
        format!("{base}/v26.0/555/leads?after=c1&limit=3")
    );
    assert!(
        client
            .next_page_from(&format!("{base}/v26.0/777/leadgen_forms?after=x"))
            .is_ok()
    );
    // ...anything else is refused before a request is made.
    for refused in [
        "https://graph.facebook.com/v26.0/555/leads?after=c1".to_owned(),
        format!("{base}/v25.0/555/leads?after=c1"),
        format!("{base}/v26.0/me/accounts?after=c1"),
        format!("{base}/v26.0/555/leads/extra?after=c1"),
        format!("{base}/v26.0/5%2F5/leads?after=c1"),
        format!("{base}/v26.0/555/leads?after=c1&access_token=EAAother"),
        "not a url".to_owned(),
    ] {
        let err = client.next_page_from(&refused).unwrap_err();
        assert_eq!(err.class(), ErrorClass::BadRequest, "{refused}");
    }
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn token_exchange_pages_of_accounts_and_test_lead_deletion() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v26.0/oauth/access_token"))
        .and(query_param("grant_type", "fb_exchange_token"))
        .and(query_param("client_id", "99"))
        .and(query_param("client_secret", APP_SECRET))
        .and(query_param("fb_exchange_token", "short-lived-user-token-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"access_token": "long-lived-user-token-2", "token_type": "bearer", "expires_in": 5183944}),
        ))
        .mount(&server)
        .await;
    // Meta's error may echo what it was given: neither the app secret nor a token may
    // reach the error's text.
    Mock::given(method("GET"))
        .and(path("/v26.0/oauth/access_token"))
        .and(query_param("fb_exchange_token", "expired-user-token-3"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": {
            "message": format!("Error validating access token expired-user-token-3 for client_secret {APP_SECRET}"),
            "type": "OAuthException", "code": 190, "error_subcode": 463}})))
        .mount(&server)
        .await;
    let next = format!(
        "{}/v26.0/me/accounts?access_token=long-lived-user-token-2&limit=100&after=QVFI",
        server.uri()
    );
    Mock::given(method("GET"))
        .and(path("/v26.0/me/accounts"))
        .and(query_param("after", "QVFI"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "data": [{"id": "778", "name": "Second", "access_token": "page-token-778", "tasks": ["MANAGE"]}],
            "paging": {"cursors": {"before": "QVFI", "after": "QVFJ"}}})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v26.0/me/accounts"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "data": [{"id": 777, "name": "First", "access_token": "page-token-777", "category": "Shop", "tasks": ["MANAGE", "ADVERTISE"]}],
            "paging": {"cursors": {"before": "QVFH", "after": "QVFI"}, "next": next}})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/v26.0/8008"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"success": true})),
        )
        .mount(&server)
        .await;

    let client = client(&server);
    let secret = SecretString::from(APP_SECRET);
    let exchanged = client
        .exchange_token(
            "99",
            &secret,
            &SecretString::from("short-lived-user-token-1"),
        )
        .await
        .unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(
        exchanged.access_token.expose_secret(),
        "long-lived-user-token-2"
    );
    assert_eq!(exchanged.expires_in, Some(5_183_944));
    let err = client
        .exchange_token("99", &secret, &SecretString::from("expired-user-token-3"))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Token);
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains(APP_SECRET) && !text.contains("expired-user-token-3"),
        "{text}"
    );

    let long = exchanged.access_token;
    let pages: Vec<leadpipe_graph::PageAccount> = client
        .my_accounts(&long)
        .map_ok(|p| {
            futures::stream::iter(p.items.into_iter().map(Ok::<_, leadpipe_graph::GraphError>))
        })
        .try_flatten()
        .try_collect()
        .await
        .unwrap();
    let ids: Vec<&str> = pages.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["777", "778"]);
    assert_eq!(pages[1].access_token.expose_secret(), "page-token-778");
    assert!(
        !format!("{pages:?}").contains("page-token-"),
        "Debug hides page tokens"
    );
    // The next page went with our token, not the one Meta echoed in `next` (the same here),
    // and exactly once each.
    let requests = server.received_requests().await.unwrap();
    let accounts: Vec<_> = requests
        .iter()
        .filter(|r| r.url.path() == "/v26.0/me/accounts")
        .collect();
    assert_eq!(accounts.len(), 2);
    assert!(accounts.iter().all(|r| {
        r.url
            .query_pairs()
            .filter(|(k, _)| k == "access_token")
            .count()
            == 1
    }));
    client.delete_node(&token(), "8008").await.unwrap();
}

#[tokio::test]
async fn a_paging_next_that_loops_ends_with_an_error_not_forever() {
    let server = MockServer::start().await;
    // Every page of /me/accounts says its next page is the first one again.
    let again = format!("{}/v26.0/me/accounts?after=c1", server.uri());
    Mock::given(method("GET"))
        .and(path("/v26.0/me/accounts"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "data": [{"id": "1", "name": "P", "access_token": "EAAP", "tasks": []}],
            "paging": {"next": again}
        })))
        .mount(&server)
        .await;
    let client = client(&server);
    let token = token();
    let read: Result<Vec<_>, _> = client.my_accounts(&token).try_collect().await;
    let err = read.unwrap_err();
    assert!(err.to_string().contains("repeats a page"), "{err}");
    let calls = server.received_requests().await.unwrap_or_default().len();
    assert_eq!(
        calls, 2,
        "the first page, and the next that repeats, then stop"
    );
}

#[tokio::test]
async fn answers_larger_than_what_is_used_are_refused_unread() {
    let server = MockServer::start().await;
    let huge = format!(
        r#"{{"data":[{{"id":"1","name":"{}","access_token":"EAAP"}}]}}"#,
        "x".repeat(leadpipe_graph::MAX_ANSWER_BYTES)
    );
    Mock::given(method("GET"))
        .and(path("/v26.0/me/accounts"))
        .respond_with(ResponseTemplate::new(200).set_body_string(huge))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v26.0/1001"))
        .respond_with(ResponseTemplate::new(500).set_body_string("e".repeat(1 << 20)))
        .mount(&server)
        .await;
    let client = GraphClient::new(GraphConfig {
        base_url: server.uri(),
        retry: RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        },
        ..GraphConfig::default()
    })
    .unwrap();
    let token = token();
    let err = client
        .my_accounts(&token)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
    let err = client.lead(&token, "1001").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "a 5xx stays a 5xx");
    assert!(err.to_string().contains("larger than"), "{err}");
}
