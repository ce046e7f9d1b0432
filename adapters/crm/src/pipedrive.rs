//! Pipedrive: an API token (`x-api-token`); the person found by email (v2 search) or
//! created (v2), then a lead (still v1) linked to them with the Meta lead id in a deal
//! custom field. Pipedrive has no upsert: the lead is looked up by that field first (v2
//! lead search), so a repeat finds the lead it made. A spent daily budget (429 until the
//! reset) pauses the destination; a burst limit is waited out.

use crate::http::{Answer, unsent};
use leadpipe_core::dead_letter::DeadLetterClass;
use leadpipe_core::destinations::{MappedLead, Outcome};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use std::time::Duration;

/// A 429's wait when it names none; one longer than this is called the daily budget.
const BURST: Duration = Duration::from_secs(60);

/// A Pipedrive company, by an API token.
pub struct Pipedrive {
    /// The shared client.
    pub http: reqwest::Client,
    /// `https://COMPANY.pipedrive.com`.
    pub base: url::Url,
    /// The API token.
    pub token: SecretString,
    /// The deal custom field's key holding the Meta lead id.
    pub lead_id_field: String,
}

/// A call's end: an answer, or the outcome the lead gets.
type Step = Result<serde_json::Value, Outcome>;

impl Pipedrive {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> Step {
        let url = self.base.join(path).map_err(|e| Outcome::Refused {
            reason: format!("the base_url cannot take {path}: {e}"),
        })?;
        let mut request = self
            .http
            .request(method, url)
            .header("x-api-token", self.token.expose_secret())
            .query(query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = match request.send().await {
            Ok(response) => Answer::read(response).await.map_err(unsent)?,
            Err(e) => return Err(unsent(e)),
        };
        let json = answer.json();
        let said = format!(
            "{} {}",
            json["error"].as_str().unwrap_or_default(),
            json["error_info"].as_str().unwrap_or_default()
        );
        match answer.status {
            200 | 201 if json["success"] == true => Ok(json),
            200 | 201 => Err(Outcome::Refused {
                reason: answer.said(said.trim()),
            }),
            // Pipedrive documents no 429 body or header for certain: the whole destination
            // waits, the reset when it says one (the daily budget's can be hours), else a
            // minute, and asks again; no lead spends a try on it.
            429 => {
                let reset = answer
                    .header_number("x-ratelimit-reset")
                    .map(Duration::from_secs)
                    .unwrap_or(BURST)
                    .max(Duration::from_secs(1));
                Err(Outcome::Pause {
                    for_: reset,
                    reason: answer.said(if reset > BURST {
                        "the daily API budget is spent"
                    } else {
                        "rate limited"
                    }),
                })
            }
            401 => Err(Outcome::Denied {
                class: DeadLetterClass::Token,
                reason: answer.said(said.trim()),
            }),
            403 => Err(Outcome::Denied {
                class: DeadLetterClass::Permission,
                reason: answer.said(said.trim()),
            }),
            400..=499 => Err(Outcome::Refused {
                reason: answer.said(said.trim()),
            }),
            _ => Err(answer.retry(said.trim())),
        }
    }

    /// The first search hit's id.
    fn first_id(json: &serde_json::Value) -> Option<String> {
        json["data"]["items"]
            .as_array()
            .and_then(|items| items.first())
            .and_then(|item| match &item["item"]["id"] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
    }

    async fn one(&self, lead: &MappedLead) -> Step {
        let lead_id = lead.lead.lead_id.as_str();
        let found = self
            .call(
                reqwest::Method::GET,
                "/api/v2/leads/search",
                &[
                    ("term", lead_id),
                    ("fields", "custom_fields"),
                    ("exact_match", "true"),
                ],
                None,
            )
            .await?;
        if let Some(id) = Self::first_id(&found) {
            return Ok(json!({"lead": id}));
        }
        let name = lead
            .property("name")
            .map(str::to_owned)
            .or_else(|| lead.lead.contact.full_name.clone())
            .unwrap_or_else(|| format!("Facebook lead {lead_id}"));
        let email = lead.property("email");
        let mut person = None;
        if let Some(email) = email {
            let found = self
                .call(
                    reqwest::Method::GET,
                    "/api/v2/persons/search",
                    &[
                        ("term", email),
                        ("fields", "email"),
                        ("exact_match", "true"),
                    ],
                    None,
                )
                .await?;
            person = Self::first_id(&found);
        }
        let person = match person {
            Some(id) => id,
            None => {
                let mut body = json!({"name": name});
                if let Some(email) = email {
                    body["emails"] = json!([{"value": email, "primary": true, "label": "work"}]);
                }
                if let Some(phone) = lead.property("phone") {
                    body["phones"] = json!([{"value": phone, "primary": true, "label": "mobile"}]);
                }
                let made = self
                    .call(reqwest::Method::POST, "/api/v2/persons", &[], Some(body))
                    .await?;
                match &made["data"]["id"] {
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    _ => {
                        return Err(Outcome::Retry {
                            after: None,
                            reason: "Pipedrive made a person without an id".into(),
                        });
                    }
                }
            }
        };
        let person_id: serde_json::Value = person
            .parse::<u64>()
            .map(|n| json!(n))
            .unwrap_or_else(|_| json!(person));
        let mut body = json!({"title": format!("FB: {name}"), "person_id": person_id});
        body[self.lead_id_field.as_str()] = json!(lead_id);
        let made = self
            .call(reqwest::Method::POST, "/api/v1/leads", &[], Some(body))
            .await?;
        Ok(json!({"lead": made["data"]["id"]}))
    }

    /// Finds or makes each lead; one outcome per lead.
    pub async fn deliver(&self, leads: &[MappedLead]) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(leads.len());
        for lead in leads {
            out.push(match self.one(lead).await {
                Ok(done) => Outcome::Delivered(done["lead"].as_str().map(str::to_owned)),
                Err(outcome) => outcome,
            });
        }
        out
    }

    /// `GET /api/v1/users/me`: the token and the company host are right.
    pub async fn check(&self) -> Result<String, String> {
        match self
            .call(reqwest::Method::GET, "/api/v1/users/me", &[], None)
            .await
        {
            Ok(_) => Ok("Pipedrive took the token".into()),
            Err(
                Outcome::Refused { reason }
                | Outcome::Denied { reason, .. }
                | Outcome::Retry { reason, .. }
                | Outcome::Pause { reason, .. },
            ) => Err(reason),
            Err(Outcome::Delivered(_)) => Ok("Pipedrive took the token".into()),
        }
    }
}
