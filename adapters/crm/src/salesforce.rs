//! Salesforce: an External Client App's client credentials, the token from the org's My
//! Domain host (login.salesforce.com refuses this flow), a new token and one retry on
//! `INVALID_SESSION_ID`; a `Lead` upserted by `PATCH` on an external id field holding the
//! Meta lead id (201 created, 200 or 204 updated), so a repeat is the same record. A 300
//! (more than one Lead holds the id) is refused with what to do; `REQUEST_LIMIT_EXCEEDED`
//! (a 403, Salesforce has no 429) pauses the destination.

use crate::http::{Answer, unsent};
use leadpipe_core::dead_letter::DeadLetterClass;
use leadpipe_core::destinations::{MappedLead, Outcome};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;
use tokio::sync::Mutex;

/// How long a spent API allocation pauses the destination (a rolling 24 h window).
pub const LIMIT_PAUSE: Duration = Duration::from_secs(3_600);
/// The value Salesforce's own web-to-lead puts in a required field a form did not ask.
const NOT_PROVIDED: &str = "[not provided]";

/// A Salesforce org, by its External Client App's credentials.
pub struct Salesforce {
    http: reqwest::Client,
    login_url: url::Url,
    client_id: SecretString,
    client_secret: SecretString,
    external_id_field: String,
    api_version: String,
    /// `(access token, instance URL)`, fetched once and again after a session ends.
    session: Mutex<Option<(SecretString, url::Url)>>,
}

impl Salesforce {
    /// The org at `login_url` (its My Domain).
    pub fn new(
        http: reqwest::Client,
        login_url: url::Url,
        client_id: SecretString,
        client_secret: SecretString,
        external_id_field: String,
        api_version: String,
    ) -> Self {
        Self {
            http,
            login_url,
            client_id,
            client_secret,
            external_id_field,
            api_version,
            session: Mutex::new(None),
        }
    }

    /// A session: the one held, or a new one from the token endpoint.
    async fn session(&self, fresh: bool) -> Result<(SecretString, url::Url), String> {
        let mut held = self.session.lock().await;
        if !fresh && let Some(session) = held.as_ref() {
            return Ok(session.clone());
        }
        let url = self
            .login_url
            .join("/services/oauth2/token")
            .map_err(|e| e.to_string())?;
        let response = self
            .http
            .post(url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.expose_secret()),
                ("client_secret", self.client_secret.expose_secret()),
            ])
            .send()
            .await
            .map_err(|e| format!("the token endpoint did not answer: {}", e.without_url()))?;
        let answer = Answer::read(response)
            .await
            .map_err(|e| e.without_url().to_string())?;
        let body = answer.json();
        if answer.status != 200 {
            return Err(answer.said(&format!(
                "{} {}",
                body["error"].as_str().unwrap_or_default(),
                body["error_description"].as_str().unwrap_or_default()
            )));
        }
        let token = body["access_token"].as_str().unwrap_or_default();
        let instance = body["instance_url"]
            .as_str()
            .and_then(|u| url::Url::parse(u).ok())
            .filter(crate::http::is_safe)
            .ok_or_else(|| "the token answer has no https instance_url".to_owned())?;
        let session = (SecretString::from(token.to_owned()), instance);
        *held = Some(session.clone());
        Ok(session)
    }

    /// Upserts each lead (one call each: the composite upsert is for later).
    pub async fn deliver(&self, leads: &[MappedLead]) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(leads.len());
        for lead in leads {
            out.push(self.upsert(lead).await);
        }
        out
    }

    async fn upsert(&self, lead: &MappedLead) -> Outcome {
        let mut body: serde_json::Map<String, serde_json::Value> = lead
            .properties
            .iter()
            .filter(|(k, _)| k != &self.external_id_field && k != "Id")
            .map(|(k, v)| (k.clone(), serde_json::json!(v)))
            .collect();
        // A Lead requires LastName and Company; a form that did not ask still makes one.
        if !body.contains_key("LastName") {
            let name = lead
                .lead
                .contact
                .full_name
                .clone()
                .unwrap_or_else(|| NOT_PROVIDED.to_owned());
            body.insert("LastName".into(), serde_json::json!(name));
        }
        body.entry("Company")
            .or_insert_with(|| serde_json::json!(NOT_PROVIDED));
        let mut fresh = false;
        for _ in 0..2 {
            let (token, instance) = match self.session(fresh).await {
                Ok(session) => session,
                // The app's credentials refused: the destination waits for a fix.
                Err(reason) if reason.starts_with("HTTP 4") => {
                    return Outcome::Denied {
                        class: DeadLetterClass::Token,
                        reason,
                    };
                }
                Err(reason) => {
                    return Outcome::Retry {
                        after: None,
                        reason,
                    };
                }
            };
            let path = format!(
                "/services/data/{}/sobjects/Lead/{}/{}",
                self.api_version, self.external_id_field, lead.lead.lead_id
            );
            let Ok(url) = instance.join(&path) else {
                return Outcome::Refused {
                    reason: "the instance URL cannot take the upsert's path".into(),
                };
            };
            let sent = self
                .http
                .patch(url)
                .bearer_auth(token.expose_secret())
                .json(&body)
                .send()
                .await;
            let answer = match sent {
                Ok(response) => match Answer::read(response).await {
                    Ok(answer) => answer,
                    Err(e) => return unsent(e),
                },
                Err(e) => return unsent(e),
            };
            let json = answer.json();
            let first = &json[0];
            let code = first["errorCode"].as_str().unwrap_or_default();
            let message = format!("{code}: {}", first["message"].as_str().unwrap_or_default());
            match answer.status {
                200 | 201 => {
                    return Outcome::Delivered(json["id"].as_str().map(str::to_owned));
                }
                204 => return Outcome::Delivered(None),
                300 => {
                    return Outcome::Refused {
                        reason: answer.said(&format!(
                            "more than one Lead has {} = this lead's id: merge them in Salesforce, then redrive",
                            self.external_id_field
                        )),
                    };
                }
                401 if code == "INVALID_SESSION_ID" && !fresh => {
                    fresh = true;
                    continue;
                }
                403 if code == "REQUEST_LIMIT_EXCEEDED" => {
                    return Outcome::Pause {
                        for_: LIMIT_PAUSE,
                        reason: answer.said(&message),
                    };
                }
                // A new session refused too, or the Run As user lacks a right.
                401 => {
                    return Outcome::Denied {
                        class: DeadLetterClass::Token,
                        reason: answer.said(&message),
                    };
                }
                403 => {
                    return Outcome::Denied {
                        class: DeadLetterClass::Permission,
                        reason: answer.said(&message),
                    };
                }
                400..=499 => {
                    return Outcome::Refused {
                        reason: answer.said(&message),
                    };
                }
                _ => return answer.retry(&message),
            }
        }
        Outcome::Retry {
            after: None,
            reason: "the session ended twice in a row".into(),
        }
    }

    /// A token, then the org's limits: the app, its flow and its user are right.
    pub async fn check(&self) -> Result<String, String> {
        let (token, instance) = self.session(true).await?;
        let url = instance
            .join(&format!("/services/data/{}/limits", self.api_version))
            .map_err(|e| e.to_string())?;
        let response = self
            .http
            .get(url)
            .bearer_auth(token.expose_secret())
            .send()
            .await
            .map_err(|e| format!("Salesforce did not answer: {}", e.without_url()))?;
        let answer = Answer::read(response)
            .await
            .map_err(|e| e.without_url().to_string())?;
        if answer.status == 200 {
            Ok(format!(
                "Salesforce issued a token and the org answers on {}",
                self.api_version
            ))
        } else {
            let json = answer.json();
            Err(answer.said(json[0]["message"].as_str().unwrap_or_default()))
        }
    }
}
