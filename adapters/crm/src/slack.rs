//! Slack: an incoming webhook URL (the URL is the credential); a short message per lead
//! (the form's name, the time, the campaign; the answers only when the file asks: they are
//! personal data in a chat). Success is a 200 whose body is `ok` (a 200 saying anything
//! else is refused); a 429 waits its `Retry-After`. Slack has no idempotency key: the
//! ledger's delivered state is what keeps a second post from happening.

use crate::http::{Answer, unsent};
use leadpipe_core::dead_letter::DeadLetterClass;
use leadpipe_core::destinations::{MappedLead, Outcome};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

/// A channel's incoming webhook.
pub struct Slack {
    /// The shared client.
    pub http: reqwest::Client,
    /// `https://hooks.slack.com/services/T…/B…/…`.
    pub url: SecretString,
    /// Put the answers in the message.
    pub include_answers: bool,
}

impl Slack {
    /// The message's text for `lead`.
    pub fn text(&self, lead: &MappedLead) -> String {
        let event = &lead.lead;
        let mut text = format!(
            "New lead: {} · {}",
            event.form_name.as_deref().unwrap_or("a lead form"),
            event.created_time
        );
        if let Some(campaign) = &event.campaign_name {
            text.push_str(&format!(" · {campaign}"));
        }
        text.push_str(&format!(" (lead {})", event.lead_id));
        if self.include_answers {
            for answer in &event.answers {
                text.push_str(&format!("\n{}: {}", answer.label, answer.values.join(", ")));
            }
        }
        text
    }

    async fn post(&self, body: serde_json::Value) -> Result<Answer, Outcome> {
        let response = self
            .http
            .post(self.url.expose_secret())
            .json(&body)
            .send()
            .await
            .map_err(unsent)?;
        Answer::read(response).await.map_err(unsent)
    }

    /// Posts one message per lead.
    pub async fn deliver(&self, leads: &[MappedLead]) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(leads.len());
        for lead in leads {
            let answer = match self
                .post(serde_json::json!({"text": self.text(lead)}))
                .await
            {
                Ok(answer) => answer,
                Err(outcome) => {
                    out.push(outcome);
                    continue;
                }
            };
            let body = answer.body.trim().to_owned();
            out.push(match answer.status {
                200 if body == "ok" => Outcome::Delivered(None),
                429 => Outcome::Retry {
                    after: Some(Duration::from_secs(
                        answer.header_number("retry-after").unwrap_or(1),
                    )),
                    reason: answer.said(&body),
                },
                // A revoked or mistyped webhook; an archived channel, a removed app.
                404 => Outcome::Denied {
                    class: DeadLetterClass::Token,
                    reason: answer.said(&body),
                },
                403 | 410 => Outcome::Denied {
                    class: DeadLetterClass::Permission,
                    reason: answer.said(&body),
                },
                200 | 400..=499 => Outcome::Refused {
                    reason: answer.said(&body),
                },
                _ => answer.retry(&body),
            });
        }
        out
    }

    /// An empty message: Slack answers `no_text` (400) from a live webhook without posting
    /// anything; a revoked or wrong one answers otherwise.
    pub async fn check(&self) -> Result<String, String> {
        let answer = self
            .post(serde_json::json!({}))
            .await
            .map_err(|o| format!("{o:?}"))?;
        match (answer.status, answer.body.trim()) {
            (400, "no_text") => Ok("the Slack webhook is live (nothing was posted)".into()),
            _ => Err(answer.said(answer.body.trim())),
        }
    }
}
