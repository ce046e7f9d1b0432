//! HubSpot: contacts upserted by email with the batch upsert on the dated path
//! (`POST /crm/objects/2026-03/contacts/batch/upsert`, up to 100 a call), so a repeat is
//! the same contact. Auth: a Service Key or a legacy private app token, as a Bearer token.
//! A 429 says which limit in `policyName`: `TEN_SECONDLY_ROLLING` is waited out (the
//! interval header, else 10 s), `DAILY` pauses the destination (HubSpot resets at the
//! account's midnight and sends no `Retry-After`). A 400 for a batch is split until the
//! lead it is about stands alone, so one bad email never refuses the others.

use crate::http::{Answer, unsent};
use leadpipe_core::dead_letter::DeadLetterClass;
use leadpipe_core::destinations::{MappedLead, Outcome};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use std::time::Duration;

/// HubSpot's API host.
pub const BASE: &str = "https://api.hubapi.com";
/// The dated upsert path HubSpot documents since 2026-03-30.
pub const UPSERT_PATH: &str = "/crm/objects/2026-03/contacts/batch/upsert";
/// How long a spent daily limit pauses the destination before leadpipe asks again.
pub const DAILY_PAUSE: Duration = Duration::from_secs(3_600);

/// A HubSpot account, by its token.
pub struct HubSpot {
    /// The shared client.
    pub http: reqwest::Client,
    /// `https://api.hubapi.com` (a stand-in's in tests).
    pub base: url::Url,
    /// The Service Key or private app token.
    pub token: SecretString,
}

impl HubSpot {
    /// Upserts each lead's contact; one outcome per lead.
    pub async fn deliver(&self, leads: &[MappedLead]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; leads.len()];
        let mut sendable = Vec::new();
        for (i, lead) in leads.iter().enumerate() {
            match lead.property("email") {
                Some(email) if !email.is_empty() => sendable.push(i),
                _ => {
                    outcomes[i] = Some(Outcome::Refused {
                        reason: "no email to upsert the contact by: map `email` (contact.email) and ask for it on the form".into(),
                    })
                }
            }
        }
        self.upsert(leads, &sendable, &mut outcomes).await;
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(Outcome::Retry {
                    after: None,
                    reason: "HubSpot's answer did not name this contact".into(),
                })
            })
            .collect()
    }

    async fn upsert(&self, leads: &[MappedLead], which: &[usize], out: &mut [Option<Outcome>]) {
        // A batch refused whole is halved until the lead it is about stands alone. When both
        // halves are refused with the batch's very words, the cause is the batch's own (an
        // unknown property, say), shared by every lead: they are refused together, so a
        // shared cause costs three calls, not 2n - 1.
        let mut stack: Vec<(Vec<usize>, Batch)> = Vec::new();
        if !which.is_empty() {
            let first = self.call(leads, which).await;
            stack.push((which.to_vec(), first));
        }
        while let Some((part, answer)) = stack.pop() {
            match answer {
                Batch::Each(results, again) => {
                    for (i, outcome) in results {
                        out[i] = Some(outcome);
                    }
                    // A 207's leads not in its results: each alone, so an error is its own.
                    for i in again {
                        let alone = self.call(leads, &[i]).await;
                        stack.push((vec![i], alone));
                    }
                }
                Batch::Split(reason) if part.len() == 1 => {
                    out[part[0]] = Some(Outcome::Refused { reason });
                }
                Batch::Split(reason) => {
                    let (a, b) = part.split_at(part.len() / 2);
                    let (first, second) = (self.call(leads, a).await, self.call(leads, b).await);
                    let shared = matches!((&first, &second), (Batch::Split(x), Batch::Split(y)) if *x == reason && *y == reason);
                    if shared {
                        for i in part {
                            out[i] = Some(Outcome::Refused {
                                reason: reason.clone(),
                            });
                        }
                    } else {
                        stack.push((b.to_vec(), second));
                        stack.push((a.to_vec(), first));
                    }
                }
                Batch::All(outcome) => {
                    for i in part {
                        out[i] = Some(outcome.clone());
                    }
                }
            }
        }
    }

    async fn call(&self, leads: &[MappedLead], part: &[usize]) -> Batch {
        let inputs: Vec<serde_json::Value> = part
            .iter()
            .map(|&i| {
                let lead = &leads[i];
                let email = lead.property("email").unwrap_or_default();
                let properties: serde_json::Map<String, serde_json::Value> = lead
                    .properties
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                json!({"idProperty": "email", "id": email, "properties": properties})
            })
            .collect();
        let Ok(url) = self.base.join(UPSERT_PATH) else {
            return Batch::All(Outcome::Refused {
                reason: "the base_url cannot take HubSpot's path".into(),
            });
        };
        let sent = self
            .http
            .post(url)
            .bearer_auth(self.token.expose_secret())
            .json(&json!({ "inputs": inputs }))
            .send()
            .await;
        let answer = match sent {
            Ok(response) => match Answer::read(response).await {
                Ok(answer) => answer,
                Err(e) => return Batch::All(unsent(e)),
            },
            Err(e) => return Batch::All(unsent(e)),
        };
        let body = answer.json();
        let message = body["message"].as_str().unwrap_or_default().to_owned();
        match answer.status {
            200 | 201 | 207 => {
                // Results name the contact by its email (the upsert's id property).
                let mut by_email = std::collections::HashMap::new();
                for result in body["results"].as_array().into_iter().flatten() {
                    if let (Some(email), Some(id)) = (
                        result["properties"]["email"].as_str(),
                        result["id"].as_str(),
                    ) {
                        by_email.insert(email.to_lowercase(), id.to_owned());
                    }
                }
                let errors = body["errors"].as_array().is_some_and(|e| !e.is_empty());
                let mut done = Vec::new();
                let mut again = Vec::new();
                for &i in part {
                    let email = leads[i]
                        .property("email")
                        .unwrap_or_default()
                        .to_lowercase();
                    match by_email.get(&email) {
                        Some(id) => done.push((i, Outcome::Delivered(Some(id.clone())))),
                        // Another lead's error may quote that lead's values: never join
                        // them into this one's reason. Sent alone, its error is its own.
                        None if errors && part.len() > 1 => again.push(i),
                        None if errors => done.push((
                            i,
                            Outcome::Refused {
                                reason: answer.said(
                                    body["errors"][0]["message"].as_str().unwrap_or_default(),
                                ),
                            },
                        )),
                        None => done.push((
                            i,
                            Outcome::Retry {
                                after: None,
                                reason: answer.said("the contact is not in HubSpot's results"),
                            },
                        )),
                    }
                }
                Batch::Each(done, again)
            }
            400 | 409 | 422 => Batch::Split(answer.said(&message)),
            401 => Batch::All(Outcome::Denied {
                class: DeadLetterClass::Token,
                reason: answer.said(&message),
            }),
            403 => Batch::All(Outcome::Denied {
                class: DeadLetterClass::Permission,
                reason: answer.said(&message),
            }),
            404 => Batch::All(Outcome::Refused {
                reason: answer.said(&message),
            }),
            429 => Batch::All(rate_limited(&answer, &body)),
            _ => Batch::All(answer.retry(&message)),
        }
    }

    /// `GET` one contact: the token, its scope and the host are right.
    pub async fn check(&self) -> Result<String, String> {
        let url = self
            .base
            .join("/crm/objects/2026-03/contacts?limit=1")
            .map_err(|e| e.to_string())?;
        let response = self
            .http
            .get(url)
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| format!("HubSpot did not answer: {}", e.without_url()))?;
        let answer = Answer::read(response)
            .await
            .map_err(|e| e.without_url().to_string())?;
        if answer.status == 200 {
            Ok("HubSpot took the token and its contacts can be read".into())
        } else {
            Err(answer.said(answer.json()["message"].as_str().unwrap_or_default()))
        }
    }
}

/// What a batch call came to.
enum Batch {
    /// An outcome per lead, and the leads to send again, each alone.
    Each(Vec<(usize, Outcome)>, Vec<usize>),
    /// The same outcome for every lead of the call.
    All(Outcome),
    /// Refused as a whole for something in it: halve it.
    Split(String),
}

/// A 429: the ten-second window is waited out; a spent day pauses the destination.
fn rate_limited(answer: &Answer, body: &serde_json::Value) -> Outcome {
    let message = body["message"].as_str().unwrap_or("rate limited");
    if body["policyName"] == "DAILY" {
        return Outcome::Pause {
            for_: DAILY_PAUSE,
            reason: answer.said(message),
        };
    }
    let interval = answer
        .header_number("x-hubspot-ratelimit-interval-milliseconds")
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(10));
    Outcome::Retry {
        after: Some(interval),
        reason: answer.said(message),
    }
}
