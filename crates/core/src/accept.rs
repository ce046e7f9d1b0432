//! The webhook use case: answer Meta's verification handshake, and turn a signed post into
//! queued lead events, answering 200 only when every event is queued.
//!
//! The HTTP shape is kept to plain values ([`WebhookRequest`], [`WebhookResponse`]) so that
//! the Lambda function and the local server share one implementation.

use crate::event::LeadEvent;
use crate::ports::{EventQueue, QueueError};
use crate::secrets::{AppSecrets, SecretsError};
use crate::signature::{SignatureError, verify_signature};
use crate::webhook::{InvalidChange, JsonError, parse_delivery};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// Posts above this size are refused before the signature is even computed. Meta's posts
/// are a few KiB; 1 MiB leaves ample room for a post with hundreds of changes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Meta's challenge is an integer; anything longer than this is not one.
const MAX_CHALLENGE_LEN: usize = 128;

/// The two secrets the webhook needs.
#[derive(Debug, Clone)]
pub struct WebhookSecrets {
    /// The app secret every post's signature is checked with.
    pub app_secret: SecretString,
    /// The token Meta's verification handshake must present.
    pub verify_token: SecretString,
}

impl TryFrom<&AppSecrets> for WebhookSecrets {
    type Error = SecretsError;

    fn try_from(secrets: &AppSecrets) -> Result<Self, Self::Error> {
        Ok(Self {
            app_secret: secrets.app_secret.clone(),
            verify_token: secrets.require_verify_token()?.clone(),
        })
    }
}

/// Why a verification handshake was refused (all answered 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// `hub.mode` was not `subscribe`.
    #[error("hub.mode is not subscribe")]
    WrongMode,
    /// The token did not match the verify token.
    #[error("hub.verify_token does not match")]
    WrongToken,
    /// The challenge was missing, too long, or not a plain token.
    #[error("hub.challenge is missing or not a short token")]
    BadChallenge,
}

/// Answers `GET ?hub.mode=subscribe&hub.verify_token=..&hub.challenge=..`: the challenge
/// to echo, or why not.
pub fn verify_subscription(
    verify_token: &SecretString,
    mode: Option<&str>,
    token: Option<&str>,
    challenge: Option<&str>,
) -> Result<String, VerifyError> {
    if mode != Some("subscribe") {
        return Err(VerifyError::WrongMode);
    }
    let given = token.unwrap_or_default().as_bytes();
    if !bool::from(given.ct_eq(verify_token.expose_secret().as_bytes())) {
        return Err(VerifyError::WrongToken);
    }
    match challenge {
        Some(c)
            if !c.is_empty()
                && c.len() <= MAX_CHALLENGE_LEN
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Ok(c.to_owned())
        }
        _ => Err(VerifyError::BadChallenge),
    }
}

/// What an accepted post held. Ids and counts only: safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The post's `object` (`page` for leads).
    pub object: String,
    /// Entries in the post.
    pub entries: usize,
    /// Changes in all entries.
    pub changes: usize,
    /// Changes of a field other than `leadgen`.
    pub skipped_changes: usize,
    /// `leadgen` changes with no readable leadgen id (names only, never values).
    pub invalid: Vec<InvalidChange>,
    /// The leadgen ids queued, in the post's order.
    pub leadgen_ids: Vec<String>,
}

/// Why a post was not accepted; [`DeliveryError::status`] says what to answer Meta.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Over [`MAX_BODY_BYTES`]: refused before the signature is computed.
    #[error("the body is {size} bytes, over the {MAX_BODY_BYTES}-byte limit")]
    TooLarge {
        /// The body's size in bytes.
        size: usize,
    },
    /// The signature is missing or wrong: nothing was parsed.
    #[error("signature refused: {0}")]
    Signature(#[from] SignatureError),
    /// Signed, but not a webhook payload.
    #[error("signed body is not a webhook payload: {0}")]
    Json(#[from] JsonError),
    /// The queue did not take every event; Meta must deliver the post again.
    #[error("{events} events not all queued: {error}")]
    Queue {
        /// Events the post held.
        events: usize,
        /// What the queue said.
        error: QueueError,
    },
}

impl DeliveryError {
    /// The HTTP status to answer: 4xx for what Meta cannot fix by retrying the same post
    /// (except that a 4xx still makes Meta retry, which is harmless), 503 for the queue so
    /// that Meta delivers the post again.
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => 413,
            Self::Signature(_) => 403,
            Self::Json(_) => 400,
            Self::Queue { .. } => 503,
        }
    }
}

/// Verifies, parses and queues one post. `Ok` means every lead event is on the queue.
pub async fn accept_delivery<Q: EventQueue>(
    secrets: &WebhookSecrets,
    queue: &Q,
    signature: Option<&str>,
    body: &[u8],
    received_at: OffsetDateTime,
) -> Result<Accepted, DeliveryError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(DeliveryError::TooLarge { size: body.len() });
    }
    verify_signature(
        secrets.app_secret.expose_secret().as_bytes(),
        signature,
        body,
    )?;
    let delivery = parse_delivery(body, received_at)?;
    if !delivery.events.is_empty() {
        queue
            .enqueue(&delivery.events)
            .await
            .map_err(|error| DeliveryError::Queue {
                events: delivery.events.len(),
                error,
            })?;
    }
    Ok(Accepted {
        object: delivery.object,
        entries: delivery.entries,
        changes: delivery.changes,
        skipped_changes: delivery.skipped_changes,
        invalid: delivery.invalid,
        leadgen_ids: delivery
            .events
            .into_iter()
            .map(|e: LeadEvent| e.leadgen_id)
            .collect(),
    })
}

/// An HTTP request to the webhook, reduced to what the use case reads.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    /// `GET` (verification) or `POST` (delivery).
    pub method: &'a str,
    /// The first `hub.mode` query parameter.
    pub hub_mode: Option<&'a str>,
    /// The first `hub.verify_token` query parameter.
    pub hub_verify_token: Option<&'a str>,
    /// The first `hub.challenge` query parameter.
    pub hub_challenge: Option<&'a str>,
    /// The `X-Hub-Signature-256` header.
    pub signature: Option<&'a str>,
    /// The raw body, exactly as received (the signature is over these bytes).
    pub body: &'a [u8],
}

/// The answer to give, as plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookResponse {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type` of the body.
    pub content_type: &'static str,
    /// The body: the challenge, or a short word (never a secret or lead value).
    pub body: String,
    /// What the request counts for, for the edge to turn into metrics (the Lambda writes
    /// them as EMF lines): `WebhookEventsAccepted`, `WebhookPostsAccepted`,
    /// `WebhookPostsRefused`, `WebhookPostsFailed`.
    pub metrics: Vec<(&'static str, u64)>,
}

impl WebhookResponse {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            metrics: Vec::new(),
        }
    }

    fn counting(mut self, metrics: &[(&'static str, u64)]) -> Self {
        self.metrics = metrics.to_vec();
        self
    }
}

/// Dispatches one request and writes the one log line it deserves (ids and counts only).
pub async fn handle_webhook_request<Q: EventQueue>(
    secrets: &WebhookSecrets,
    queue: &Q,
    request: WebhookRequest<'_>,
    received_at: OffsetDateTime,
) -> WebhookResponse {
    match request.method {
        "GET" => match verify_subscription(
            &secrets.verify_token,
            request.hub_mode,
            request.hub_verify_token,
            request.hub_challenge,
        ) {
            Ok(challenge) => {
                tracing::info!(outcome = "verified", status = 200, "webhook verification");
                WebhookResponse::text(200, challenge)
            }
            Err(err) => {
                tracing::warn!(outcome = "refused", status = 403, reason = %err, "webhook verification");
                WebhookResponse::text(403, "forbidden")
            }
        },
        "POST" => {
            let body_bytes = request.body.len();
            match accept_delivery(secrets, queue, request.signature, request.body, received_at)
                .await
            {
                Ok(accepted) => {
                    for change in &accepted.invalid {
                        tracing::warn!(
                            entry_id = change.entry_id.as_deref(),
                            value_fields = %change.value_fields.join(","),
                            missing = change.missing,
                            "a leadgen change could not be queued: nothing to read it by"
                        );
                    }
                    let page = accepted.object == crate::webhook::PAGE_OBJECT;
                    let usual =
                        page && accepted.skipped_changes == 0 && accepted.invalid.is_empty();
                    if usual {
                        // The line of nearly every post, so only what an operator looks up:
                        // the ids (log bytes are most of the bill: BENCHMARKS.md).
                        tracing::info!(
                            outcome = "queued",
                            status = 200,
                            leadgen_ids = %accepted.leadgen_ids.join(","),
                            "webhook delivery"
                        );
                    } else {
                        tracing::info!(
                            outcome = if page { "queued" } else { "ignored" },
                            status = 200,
                            object = %accepted.object,
                            body_bytes,
                            entries = accepted.entries,
                            changes = accepted.changes,
                            skipped_changes = accepted.skipped_changes,
                            invalid_changes = accepted.invalid.len(),
                            queued = accepted.leadgen_ids.len(),
                            leadgen_ids = %accepted.leadgen_ids.join(","),
                            "webhook delivery"
                        );
                    }
                    WebhookResponse::text(200, "EVENT_RECEIVED").counting(&[
                        ("WebhookEventsAccepted", accepted.leadgen_ids.len() as u64),
                        ("WebhookPostsAccepted", 1),
                    ])
                }
                Err(err) => {
                    let status = err.status();
                    let counted = if status >= 500 {
                        ("WebhookPostsFailed", 1)
                    } else {
                        ("WebhookPostsRefused", 1)
                    };
                    if status >= 500 {
                        tracing::error!(outcome = "failed", status, body_bytes, reason = %err, "webhook delivery");
                    } else {
                        tracing::warn!(outcome = "refused", status, body_bytes, reason = %err, "webhook delivery");
                    }
                    let body = match status {
                        413 => "payload too large",
                        403 => "forbidden",
                        400 => "bad request",
                        _ => "temporarily unavailable, retry",
                    };
                    WebhookResponse::text(status, body).counting(&[counted])
                }
            }
        }
        _ => WebhookResponse::text(405, "method not allowed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryQueue;
    use crate::signature::sign;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-29 05:00:00 UTC);
    const BODY: &str = r#"{"object":"page","entry":[{"id":"1","time":5,"changes":[
        {"field":"leadgen","value":{"leadgen_id":"42","page_id":"1","form_id":"7","created_time":5}}]}]}"#;

    fn secrets() -> WebhookSecrets {
        WebhookSecrets {
            app_secret: SecretString::from("app-secret"),
            verify_token: SecretString::from("verify-me"),
        }
    }

    fn post<'a>(signature: Option<&'a str>, body: &'a [u8]) -> WebhookRequest<'a> {
        WebhookRequest {
            method: "POST",
            hub_mode: None,
            hub_verify_token: None,
            hub_challenge: None,
            signature,
            body,
        }
    }

    #[tokio::test]
    async fn signed_post_queues_every_event() {
        let queue = MemoryQueue::new();
        let sig = sign(b"app-secret", BODY.as_bytes()).unwrap();
        let response =
            handle_webhook_request(&secrets(), &queue, post(Some(&sig), BODY.as_bytes()), NOW)
                .await;
        assert_eq!(response.status, 200);
        let events = queue.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].leadgen_id, "42");
        assert_eq!(events[0].received_at, NOW);
    }

    #[tokio::test]
    async fn bad_signature_is_403_and_queues_nothing() {
        let queue = MemoryQueue::new();
        let sig = sign(b"another-secret", BODY.as_bytes()).unwrap();
        for signature in [None, Some(sig.as_str()), Some("sha1=abc")] {
            let response =
                handle_webhook_request(&secrets(), &queue, post(signature, BODY.as_bytes()), NOW)
                    .await;
            assert_eq!(response.status, 403);
        }
        assert!(queue.events().is_empty());
    }

    #[tokio::test]
    async fn signature_is_checked_before_parsing() {
        // Garbage with a wrong signature is a 403, not a 400: nothing is parsed unsigned.
        let queue = MemoryQueue::new();
        let response =
            handle_webhook_request(&secrets(), &queue, post(Some("sha256=00"), b"{{{"), NOW).await;
        assert_eq!(response.status, 403);
    }

    #[tokio::test]
    async fn signed_malformed_json_is_400() {
        let queue = MemoryQueue::new();
        let body = b"{\"object\":\"page\",\"entry\":[";
        let sig = sign(b"app-secret", body).unwrap();
        let response =
            handle_webhook_request(&secrets(), &queue, post(Some(&sig), body), NOW).await;
        assert_eq!(response.status, 400);
        assert!(queue.events().is_empty());
    }

    #[tokio::test]
    async fn oversized_body_is_413() {
        let queue = MemoryQueue::new();
        let body = vec![b' '; MAX_BODY_BYTES + 1];
        let sig = sign(b"app-secret", &body).unwrap();
        let response =
            handle_webhook_request(&secrets(), &queue, post(Some(&sig), &body), NOW).await;
        assert_eq!(response.status, 413);
    }

    #[tokio::test]
    async fn queue_failure_is_503_so_meta_retries() {
        let queue = MemoryQueue::new();
        queue.set_failing(true);
        let sig = sign(b"app-secret", BODY.as_bytes()).unwrap();
        let response =
            handle_webhook_request(&secrets(), &queue, post(Some(&sig), BODY.as_bytes()), NOW)
                .await;
        assert_eq!(response.status, 503);
    }

    #[tokio::test]
    async fn other_objects_are_acknowledged_and_ignored() {
        let queue = MemoryQueue::new();
        let body =
            br#"{"object":"user","entry":[{"id":"1","changes":[{"field":"leadgen","value":{}}]}]}"#;
        let sig = sign(b"app-secret", body).unwrap();
        let response =
            handle_webhook_request(&secrets(), &queue, post(Some(&sig), body), NOW).await;
        assert_eq!(response.status, 200);
        assert!(queue.events().is_empty());
    }

    #[tokio::test]
    async fn verification_handshake() {
        let queue = MemoryQueue::new();
        let get = |mode, token, challenge| WebhookRequest {
            method: "GET",
            hub_mode: mode,
            hub_verify_token: token,
            hub_challenge: challenge,
            signature: None,
            body: b"",
        };
        let ok = handle_webhook_request(
            &secrets(),
            &queue,
            get(Some("subscribe"), Some("verify-me"), Some("1158201444")),
            NOW,
        )
        .await;
        assert_eq!((ok.status, ok.body.as_str()), (200, "1158201444"));
        assert!(ok.content_type.starts_with("text/plain"));
        for (mode, token, challenge) in [
            (Some("subscribe"), Some("wrong"), Some("1")),
            (Some("subscribe"), Some("verify-m"), Some("1")),
            (Some("subscribe"), None, Some("1")),
            (Some("unsubscribe"), Some("verify-me"), Some("1")),
            (None, Some("verify-me"), Some("1")),
            (Some("subscribe"), Some("verify-me"), None),
            (Some("subscribe"), Some("verify-me"), Some("<script>")),
        ] {
            let refused =
                handle_webhook_request(&secrets(), &queue, get(mode, token, challenge), NOW).await;
            assert_eq!(refused.status, 403, "{mode:?} {token:?} {challenge:?}");
            assert_ne!(refused.body, "1");
        }
    }

    #[tokio::test]
    async fn other_methods_are_405() {
        let queue = MemoryQueue::new();
        let mut request = post(None, b"");
        request.method = "PUT";
        let response = handle_webhook_request(&secrets(), &queue, request, NOW).await;
        assert_eq!(response.status, 405);
    }
}
