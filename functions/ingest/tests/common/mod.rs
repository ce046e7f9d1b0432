#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

pub const APP_SECRET: &str = "ingest-app-secret-91c2";
pub const ACCESS_TOKEN: &str = "EAAingestpagetoken77";
pub const PAGE: &str = "104857600000001";

pub use leadpipe_lambda_harness::Moto;

pub fn event_body(leadgen_id: &str) -> String {
    format!(
        r#"{{"leadgen_id":"{leadgen_id}","page_id":"{PAGE}","form_id":"555000111222333","ad_id":"238000111222334","created_time":1764390000,"received_at":"2026-11-29T05:00:00Z"}}"#
    )
}

/// The lead the stand-in serves for `id`: organic (no ad) when the id starts with `org`.
pub fn lead_json(id: &str) -> serde_json::Value {
    let mut lead = serde_json::json!({
        "id": id,
        "created_time": "2026-11-29T04:59:58+0000",
        "form_id": "555000111222333",
        "field_data": [
            {"name": "email", "values": [format!("{id}@example.com")]},
            {"name": "full_name", "values": ["Ada Lovelace"]},
            {"name": "services", "values": ["oil change", "tyres", "brakes"]},
            {"name": "selected_dealer", "values": ["99213450"]}
        ],
        "custom_disclaimer_responses": [
            {"checkbox_key": "optional_1", "is_checked": "1"},
            {"checkbox_key": "optional_2", "is_checked": ""}
        ],
        "is_organic": id.starts_with("org"),
        "platform": "fb"
    });
    if !id.starts_with("org") {
        for (k, v) in [
            ("ad_id", "238000111222334"),
            ("ad_name", "Winter tyres"),
            ("adset_id", "238000111222335"),
            ("adset_name", "Drivers 25-54"),
            ("campaign_id", "238000111222336"),
            ("campaign_name", "Q4 service"),
        ] {
            lead[k] = serde_json::json!(v);
        }
    }
    lead
}

fn error_body(code: i64, subcode: Option<i64>) -> String {
    let mut error = serde_json::json!({"message": "err", "type": "OAuthException", "code": code, "fbtrace_id": "Ftrace"});
    if let Some(s) = subcode {
        error["error_subcode"] = serde_json::json!(s);
    }
    serde_json::json!({ "error": error }).to_string()
}

/// A Graph stand-in answering the batch API: ids starting `gone` are deleted (100/33),
/// `limited` are rate limited (80005), `denied` are a permission error (200); others are
/// leads from [`lead_json`].
pub async fn graph_stand_in() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v26.0/"))
        .respond_with(|request: &Request| {
            let form: Vec<(String, String)> = url::form_urlencoded::parse(&request.body)
                .into_owned()
                .collect();
            let batch = &form.iter().find(|(k, _)| k == "batch").unwrap().1;
            let requests: Vec<serde_json::Value> = serde_json::from_str(batch).unwrap();
            let answers: Vec<serde_json::Value> = requests
                .iter()
                .map(|r| {
                    let id = r["relative_url"]
                        .as_str()
                        .unwrap()
                        .split('?')
                        .next()
                        .unwrap()
                        .to_owned();
                    if id.starts_with("gone") {
                        serde_json::json!({"code": 400, "body": error_body(100, Some(33))})
                    } else if id.starts_with("limited") {
                        serde_json::json!({"code": 400, "body": error_body(80005, None)})
                    } else if id.starts_with("denied") {
                        serde_json::json!({"code": 403, "body": error_body(200, None)})
                    } else {
                        serde_json::json!({"code": 200, "body": lead_json(&id).to_string()})
                    }
                })
                .collect();
            ResponseTemplate::new(200).set_body_json(answers)
        })
        .mount(&server)
        .await;
    server
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

/// Asserts the stored item is the stand-in's lead, attribute for attribute.
pub fn assert_item_is_lead(item: &HashMap<String, AttributeValue>, id: &str, source: &str) {
    let organic = id.starts_with("org");
    assert_eq!(item["lead_id"], s(id));
    assert_eq!(item["created_time"], s("2026-11-29T04:59:58Z"));
    assert_eq!(item["page_id"], s(PAGE));
    assert_eq!(item["form_id"], s("555000111222333"));
    assert_eq!(item["platform"], s("fb"));
    assert_eq!(item["is_organic"], AttributeValue::Bool(organic));
    assert_eq!(item["source"], s(source));
    if organic {
        for k in [
            "ad_id",
            "ad_name",
            "adset_id",
            "adset_name",
            "campaign_id",
            "campaign_name",
        ] {
            assert!(
                !item.contains_key(k),
                "{k} must be left out of an organic lead"
            );
        }
    } else {
        assert_eq!(item["ad_id"], s("238000111222334"));
        assert_eq!(item["ad_name"], s("Winter tyres"));
        assert_eq!(item["adset_id"], s("238000111222335"));
        assert_eq!(item["adset_name"], s("Drivers 25-54"));
        assert_eq!(item["campaign_id"], s("238000111222336"));
        assert_eq!(item["campaign_name"], s("Q4 service"));
    }
    assert!(!item.contains_key("partner_name"));
    assert!(!item.contains_key("retailer_item_id"));
    let fields = item["fields"].as_m().unwrap();
    assert_eq!(fields.len(), 4);
    assert_eq!(
        fields["email"],
        AttributeValue::L(vec![s(&format!("{id}@example.com"))])
    );
    assert_eq!(
        fields["services"],
        AttributeValue::L(vec![s("oil change"), s("tyres"), s("brakes")])
    );
    assert_eq!(
        fields["selected_dealer"],
        AttributeValue::L(vec![s("99213450")])
    );
    let disclaimers = item["custom_disclaimer_responses"].as_l().unwrap();
    assert_eq!(disclaimers.len(), 2);
    let first = disclaimers[0].as_m().unwrap();
    assert_eq!(first["checkbox_key"], s("optional_1"));
    assert_eq!(first["is_checked"], AttributeValue::Bool(true));
    assert_eq!(
        disclaimers[1].as_m().unwrap()["is_checked"],
        AttributeValue::Bool(false)
    );
    let raw: serde_json::Value = serde_json::from_str(item["raw"].as_s().unwrap()).unwrap();
    assert_eq!(raw, lead_json(id));
    let ingested_at = item["ingested_at"].as_s().unwrap();
    assert!(
        time::OffsetDateTime::parse(ingested_at, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{ingested_at}"
    );
}
