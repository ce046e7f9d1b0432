//! The webhook destination: the lead event, signed, to a URL of the business's own, as
//! `serve --forward-to` posts it (docs/leads-out.md): `Content-Type: application/json`,
//! `Idempotency-Key: <lead_id>`, `X-Leadpipe-Signature-256: sha256=<hex HMAC-SHA256>` keyed
//! with the secret's `destinations.<name>.key`. 2xx is delivered; 408, 429 and 5xx are
//! retried (`Retry-After` honoured); any other answer is refused, its reason the status and
//! the answer's length only (a receiver may echo the lead).

use crate::http::{Answer, unsent};
use leadpipe_core::dead_letter::DeadLetterClass;
use leadpipe_core::destinations::{MappedLead, Outcome};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-leadpipe-signature-256";

/// A receiver of the business's own.
pub struct Webhook {
    /// The shared client.
    pub http: reqwest::Client,
    /// Where the events go.
    pub url: url::Url,
    /// The signing key.
    pub key: SecretString,
}

impl Webhook {
    /// Posts each lead's event.
    pub async fn deliver(&self, leads: &[MappedLead]) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(leads.len());
        for lead in leads {
            let body = lead.lead.to_json();
            let Ok(signature) = leadpipe_core::signature::sign(
                self.key.expose_secret().as_bytes(),
                body.as_bytes(),
            ) else {
                out.push(Outcome::Refused {
                    reason: "the destination's key cannot sign".into(),
                });
                continue;
            };
            let sent = self
                .http
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("idempotency-key", &lead.lead.lead_id)
                .header(SIGNATURE_HEADER, signature)
                .body(body)
                .send()
                .await;
            let answer = match sent {
                Ok(response) => match Answer::read(response).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        out.push(unsent(e));
                        continue;
                    }
                },
                Err(e) => {
                    out.push(unsent(e));
                    continue;
                }
            };
            let said = format!("an answer of {} bytes", answer.body.len());
            out.push(match answer.status {
                200..=299 => Outcome::Delivered(None),
                401 => Outcome::Denied {
                    class: DeadLetterClass::Token,
                    reason: answer.said(&said),
                },
                403 => Outcome::Denied {
                    class: DeadLetterClass::Permission,
                    reason: answer.said(&said),
                },
                408 | 429 | 500..=599 => Outcome::Retry {
                    after: answer.header_number("retry-after").map(Duration::from_secs),
                    reason: answer.said(&said),
                },
                _ => Outcome::Refused {
                    reason: answer.said(&said),
                },
            });
        }
        out
    }

    /// A `HEAD` of the URL: the receiver answers (any status); nothing is posted.
    pub async fn check(&self) -> Result<String, String> {
        let response = self
            .http
            .head(self.url.clone())
            .send()
            .await
            .map_err(|e| format!("the receiver did not answer: {}", e.without_url()))?;
        Ok(format!(
            "the receiver at {} answers (HTTP {} to a HEAD; nothing was posted)",
            self.url.host_str().unwrap_or("?"),
            response.status().as_u16()
        ))
    }
}
