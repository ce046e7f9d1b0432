//! `serve --forward-to URL`: each new lead's event (lead event v1) POSTed to where sales
//! works, from the durable outbox in the SQLite file (docs/leads-out.md).
//!
//! Headers: `Content-Type: application/json`, `Idempotency-Key: <lead_id>`,
//! `X-Leadpipe-Signature-256: sha256=<hex HMAC-SHA256 of the body>` keyed with the forward
//! key (Meta's scheme, so a receiver checks it the same way). Network errors, 408, 429 and
//! 5xx are retried with exponential backoff and full jitter (a `Retry-After` in seconds is
//! honoured) for up to a day, then dead-lettered; any other answer but 2xx is a dead letter
//! at once, with its status and the first 200 bytes of the answer, the lead's own values
//! taken out of it. Delivery is at least once: a crash between the POST and the outbox's
//! delete sends it again, with the same `Idempotency-Key`.

use futures::StreamExt;
use leadpipe_local::{LocalDb, OutboxItem};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-leadpipe-signature-256";

/// How the forwarder behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardSettings {
    /// Give up on an event this long after the lead was stored.
    pub max_age: Duration,
    /// The first retry's longest wait; doubled per attempt, up to `max_wait`.
    pub first_wait: Duration,
    /// The longest wait between attempts.
    pub max_wait: Duration,
    /// POSTs in flight at once.
    pub concurrency: usize,
    /// Time allowed for one POST.
    pub timeout: Duration,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(24 * 3600),
            first_wait: Duration::from_secs(1),
            max_wait: Duration::from_secs(10 * 60),
            concurrency: 8,
            timeout: Duration::from_secs(15),
        }
    }
}

/// What one POST came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// 2xx.
    Delivered,
    /// Worth another try, after at least `after` when the receiver said so.
    Retry {
        /// The receiver's `Retry-After`.
        after: Option<Duration>,
        /// Why, for the outbox's record.
        reason: String,
    },
    /// Never worth another try.
    Refused(String),
}

/// Sends the outbox's events to one URL.
#[derive(Clone)]
pub struct Forwarder {
    db: LocalDb,
    http: reqwest::Client,
    url: String,
    key: SecretString,
    settings: ForwardSettings,
    /// Stored-to-delivered times (ms), kept only when asked (the demo's table).
    latencies: Option<Arc<std::sync::Mutex<Vec<u64>>>>,
}

impl Forwarder {
    /// Keeps each delivered event's time from stored to delivered, in `into`.
    pub fn record_latencies(mut self, into: Arc<std::sync::Mutex<Vec<u64>>>) -> Self {
        self.latencies = Some(into);
        self
    }

    /// A forwarder over `db`'s outbox to `url`, signing with `key`.
    pub fn new(
        db: LocalDb,
        url: String,
        key: SecretString,
        settings: ForwardSettings,
    ) -> Result<Self, crate::CliError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("leadpipe/", env!("CARGO_PKG_VERSION")))
            // A redirect would send the lead to a place nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| crate::CliError::Settings(format!("the HTTP client: {e}")))?;
        Ok(Self {
            db,
            http,
            url,
            key,
            settings,
            latencies: None,
        })
    }

    /// Runs until `stop` is set.
    pub async fn run(self, stop: Arc<AtomicBool>) {
        match self.db.outbox_release_claims() {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                events = n,
                "lead events in flight when the last process stopped are due again"
            ),
            Err(err) => tracing::error!(error = %err, "the outbox's claims could not be released"),
        }
        let lease = self.settings.timeout * 2 + Duration::from_secs(5);
        while !stop.load(Ordering::Relaxed) {
            let due = match self.db.outbox_claim(self.settings.concurrency * 4, lease) {
                Ok(due) => due,
                Err(err) => {
                    tracing::error!(error = %err, "the outbox cannot be read");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if due.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            // Deliveries of a round leave the outbox together: one commit (one fsync) for
            // the round, not one per event.
            let delivered: Vec<String> = futures::stream::iter(due)
                .map(|item| self.forward(item))
                .buffer_unordered(self.settings.concurrency)
                .filter_map(|done| async move { done })
                .collect()
                .await;
            if let Err(err) = self.db.outbox_delivered(&delivered) {
                // Their leases run out and they are sent again: at least once.
                tracing::error!(error = %err, events = delivered.len(), "the outbox could not record deliveries");
            }
        }
    }

    /// POSTs one event and records a failure; returns its lead id when it was delivered
    /// (the caller removes those from the outbox together).
    async fn forward(&self, item: OutboxItem) -> Option<String> {
        let delivery = self.post(&item).await;
        let now = now_ms();
        let result = match &delivery {
            Delivery::Delivered => {
                tracing::debug!(lead_id = %item.lead_id, "lead forwarded");
                if let Some(all) = &self.latencies
                    && let Ok(mut all) = all.lock()
                {
                    all.push((now - item.created_at).max(0) as u64);
                }
                return Some(item.lead_id);
            }
            Delivery::Retry { after, reason } => {
                let age = Duration::from_millis((now - item.created_at).max(0) as u64);
                if age >= self.settings.max_age {
                    tracing::error!(lead_id = %item.lead_id, attempts = item.attempts + 1, reason = %reason, "giving up forwarding a lead");
                    self.db.outbox_dead(
                        &item.lead_id,
                        &format!("gave up after {} attempts: {reason}", item.attempts + 1),
                    )
                } else {
                    let wait =
                        backoff(&self.settings, item.attempts).max(after.unwrap_or_default());
                    tracing::warn!(lead_id = %item.lead_id, attempt = item.attempts + 1, wait_ms = wait.as_millis() as u64, reason = %reason, "forwarding a lead failed; will retry");
                    self.db
                        .outbox_retry(&item.lead_id, now + wait.as_millis() as i64, reason)
                }
            }
            Delivery::Refused(reason) => {
                tracing::error!(lead_id = %item.lead_id, reason = %reason, "the receiver refused a lead");
                self.db.outbox_dead(&item.lead_id, reason)
            }
        };
        if let Err(err) = result {
            // The lease runs out and the event is tried again: at least once.
            tracing::error!(lead_id = %item.lead_id, error = %err, "the outbox could not be updated");
        }
        None
    }

    /// One POST of one event.
    pub async fn post(&self, item: &OutboxItem) -> Delivery {
        let signature = match leadpipe_core::signature::sign(
            self.key.expose_secret().as_bytes(),
            item.body.as_bytes(),
        ) {
            Ok(s) => s,
            Err(_) => return Delivery::Refused("the forward key cannot sign".into()),
        };
        let sent = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", &item.lead_id)
            .header(SIGNATURE_HEADER, signature)
            .body(item.body.clone())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                // reqwest's text names the URL, which may hold a key: say only what happened.
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "could not connect"
                } else {
                    "the request failed in transit"
                };
                return Delivery::Retry {
                    after: None,
                    reason: format!("network: {what}"),
                };
            }
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Delivery::Delivered;
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let answer = response.bytes().await.unwrap_or_default();
        let reason = format!(
            "HTTP {status}: {}",
            scrub(&answer[..answer.len().min(200)], &item.body)
        );
        match status {
            408 | 429 | 500..=599 => Delivery::Retry {
                after: retry_after,
                reason,
            },
            _ => Delivery::Refused(reason),
        }
    }
}

/// Full jitter: a random wait up to `first_wait × 2^attempts`, capped at `max_wait`.
fn backoff(settings: &ForwardSettings, attempts: i64) -> Duration {
    let exp = settings
        .first_wait
        .saturating_mul(1u32 << attempts.clamp(0, 20) as u32)
        .min(settings.max_wait);
    Duration::from_millis(fastrand::u64(..=exp.as_millis() as u64))
}

/// The receiver's answer as text, with every value of the lead taken out: a receiver may
/// echo what it was sent, and a dead letter's reason is printed by `status`.
pub fn scrub(answer: &[u8], event_json: &str) -> String {
    let mut text = String::from_utf8_lossy(answer).into_owned();
    let mut values: Vec<String> = Vec::new();
    if let Ok(event) =
        serde_json::from_str::<leadpipe_core::lead_received::LeadReceived>(event_json)
    {
        values.extend(event.fields.into_values().flatten());
        values.extend(
            [event.ad_name, event.adset_name, event.campaign_name]
                .into_iter()
                .flatten(),
        );
    }
    // Longest first, so a value inside another is not left half-redacted.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for value in values.iter().filter(|v| v.len() >= 3) {
        text = text.replace(value.as_str(), "[lead value]");
    }
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receivers_echo_loses_the_leads_values() {
        let event = r#"{"version":"1","lead_id":"1","created_time":"2026-11-30T04:00:00Z","page_id":"7","is_organic":false,
            "fields":{"email":["ada@example.org"],"full_name":["Ada Lovelace"]},"custom_disclaimer_responses":[],
            "source":"webhook","ingested_at":"2026-11-30T04:00:01Z"}"#;
        let text = scrub(
            b"{\"error\":\"duplicate email ada@example.org for Ada Lovelace\"}\n",
            event,
        );
        assert!(
            !text.contains("ada@example.org") && !text.contains("Ada Lovelace"),
            "{text}"
        );
        assert!(text.contains("duplicate email [lead value]"), "{text}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let settings = ForwardSettings {
            first_wait: Duration::from_millis(100),
            max_wait: Duration::from_secs(1),
            ..ForwardSettings::default()
        };
        for _ in 0..50 {
            assert!(backoff(&settings, 0) <= Duration::from_millis(100));
            assert!(backoff(&settings, 30) <= Duration::from_secs(1));
        }
    }
}
