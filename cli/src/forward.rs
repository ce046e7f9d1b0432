//! `serve --forward-to URL`: each new lead's event (lead event v1) POSTed to where sales
//! works, from the durable outbox in the SQLite file (docs/leads-out.md).
//!
//! Headers: `Content-Type: application/json`, `Idempotency-Key: <lead_id>`,
//! `X-Leadpipe-Signature-256: sha256=<hex HMAC-SHA256 of the body>` keyed with the forward
//! key (Meta's scheme, so a receiver checks it the same way). Network errors, 408, 429 and
//! 5xx are retried with exponential backoff and full jitter (a `Retry-After` in seconds is
//! honoured, up to the backoff's longest wait) for up to a day, then dead-lettered
//! (`exhausted`); any other answer but 2xx is a dead letter at once (`refused`), with its
//! status, a 3xx's `Location` and a short hash of the answer's body, never the body itself.
//! Delivery is at least once: a crash between the POST and the outbox's
//! delete sends it again, with the same `Idempotency-Key`.

use futures::StreamExt;
use leadpipe_core::ports::DeadLetterClass;
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

    /// Runs until `stop` is set, then finishes the calls in flight and records them.
    ///
    /// Calls run side by side, up to `concurrency`, and a slot freed by a finished call is
    /// filled at once: a receiver that hangs on one lead holds one slot for at most
    /// `timeout`, never the others' leads. Deliveries are recorded together (one commit for
    /// all that finished while the forwarder waited for the next).
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
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut delivered: Vec<String> = Vec::new();
        let mut last_sweep = std::time::Instant::now() - Duration::from_secs(60);
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            if stopping && in_flight.is_empty() {
                break;
            }
            if !stopping && last_sweep.elapsed() >= Duration::from_secs(10) {
                last_sweep = std::time::Instant::now();
                self.give_up_on_old();
            }
            let free = self.settings.concurrency.saturating_sub(in_flight.len());
            let mut claimed = 0;
            if !stopping && free > 0 {
                match self.db.outbox_claim(free, lease) {
                    Ok(due) => {
                        claimed = due.len();
                        for item in due {
                            in_flight.push(self.forward(item));
                        }
                    }
                    Err(err) => tracing::error!(error = %err, "the outbox cannot be read"),
                }
            }
            // Wait for a call to finish, or a moment when nothing is in flight (or nothing
            // more was due), then look for due events again.
            let idle = Duration::from_millis(if claimed == 0 { 100 } else { 5 });
            if in_flight.is_empty() {
                self.record(&mut delivered);
                tokio::time::sleep(idle).await;
                continue;
            }
            tokio::select! {
                done = in_flight.next() => {
                    if let Some(Some(id)) = done {
                        delivered.push(id);
                    }
                    // Everything else that finished meanwhile, without waiting.
                    while let Some(Some(done)) = futures::FutureExt::now_or_never(in_flight.next()) {
                        delivered.extend(done);
                    }
                }
                _ = tokio::time::sleep(idle), if free > 0 && !stopping => {}
            }
            // Every call that finished by now is recorded in one commit.
            self.record(&mut delivered);
        }
        self.record(&mut delivered);
    }

    /// Removes delivered events from the outbox in one commit.
    fn record(&self, delivered: &mut Vec<String>) {
        if delivered.is_empty() {
            return;
        }
        if let Err(err) = self.db.outbox_delivered(delivered) {
            // Their leases run out and they are sent again: at least once.
            tracing::error!(error = %err, events = delivered.len(), "the outbox could not record deliveries");
        }
        delivered.clear();
    }

    /// Events older than `max_age` are dead letters (`exhausted`) whether or not an
    /// attempt is due: a wait a receiver asked for never parks a lead past its day.
    fn give_up_on_old(&self) {
        let before = now_ms().saturating_sub(self.settings.max_age.as_millis() as i64);
        match self.db.outbox_expire(before, &self.too_old()) {
            Ok(0) => {}
            Ok(n) => tracing::error!(events = n, "giving up forwarding leads that are too old"),
            Err(err) => tracing::error!(error = %err, "the outbox could not be swept"),
        }
    }

    /// The reason an event past `max_age` is given up with.
    fn too_old(&self) -> String {
        format!(
            "not delivered within {} s of being stored",
            self.settings.max_age.as_secs()
        )
    }

    /// Whether `item` is past `max_age` at `now` (unix ms).
    fn is_too_old(&self, item: &OutboxItem, now: i64) -> bool {
        Duration::from_millis(now.saturating_sub(item.created_at).max(0) as u64)
            >= self.settings.max_age
    }

    /// POSTs one event and records a failure; returns its lead id when it was delivered
    /// (the caller removes those from the outbox together).
    async fn forward(&self, item: OutboxItem) -> Option<String> {
        // Claimed after its day ran out (the sweep skips claimed events): no attempt.
        if self.is_too_old(&item, now_ms()) {
            if let Err(err) =
                self.db
                    .outbox_dead(&item.lead_id, DeadLetterClass::Exhausted, &self.too_old())
            {
                tracing::error!(lead_id = %item.lead_id, error = %err, "the outbox could not be updated");
            }
            return None;
        }
        let delivery = self.post(&item).await;
        let now = now_ms();
        let result = match &delivery {
            Delivery::Delivered => {
                tracing::debug!(lead_id = %item.lead_id, "lead forwarded");
                if let Some(all) = &self.latencies
                    && let Ok(mut all) = all.lock()
                {
                    all.push(now.saturating_sub(item.created_at).max(0) as u64);
                }
                return Some(item.lead_id);
            }
            Delivery::Retry { after, reason } => {
                if self.is_too_old(&item, now) {
                    tracing::error!(lead_id = %item.lead_id, attempts = item.attempts + 1, reason = %reason, "giving up forwarding a lead");
                    self.db.outbox_dead(
                        &item.lead_id,
                        DeadLetterClass::Exhausted,
                        &format!("gave up after {} attempts: {reason}", item.attempts + 1),
                    )
                } else {
                    let wait = retry_wait(&self.settings, item.attempts, *after);
                    tracing::warn!(lead_id = %item.lead_id, attempt = item.attempts + 1, wait_ms = wait.as_millis() as u64, reason = %reason, "forwarding a lead failed; will retry");
                    self.db.outbox_retry(
                        &item.lead_id,
                        now.saturating_add(wait.as_millis() as i64),
                        reason,
                    )
                }
            }
            Delivery::Refused(reason) => {
                tracing::error!(lead_id = %item.lead_id, reason = %reason, "the receiver refused a lead");
                self.db
                    .outbox_dead(&item.lead_id, DeadLetterClass::Refused, reason)
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
        // Where a redirect pointed, as its origin only: its path or query can carry anything.
        let location = (300..400)
            .contains(&status)
            .then(|| response.headers().get(reqwest::header::LOCATION))
            .flatten()
            .map(|v| origin_of(&String::from_utf8_lossy(v.as_bytes())));
        let reason = answer_reason(status, location.as_deref(), response).await;
        match status {
            408 | 429 | 500..=599 => Delivery::Retry {
                after: retry_after,
                reason,
            },
            _ => Delivery::Refused(reason),
        }
    }
}

/// What the receiver's answer is kept as: its status, where a 3xx pointed, and a short hash
/// of the first bytes of its body, never the body. A receiver may echo the lead in any
/// encoding (escaped, URL-encoded, cut, upper-cased), so no scrub of the text can be
/// trusted; the hash still tells two answers apart. At most [`ANSWER_BYTES`] are read: a
/// receiver cannot make the forwarder hold a large body.
async fn answer_reason(
    status: u16,
    location: Option<&str>,
    mut response: reqwest::Response,
) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut read = 0usize;
    let mut more = false;
    while read < ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(ANSWER_BYTES - read);
                hasher.update(&chunk[..take]);
                read += take;
                more = take < chunk.len();
            }
            Ok(None) | Err(_) => break,
        }
    }
    // Dropped unread, the rest of the body is never taken in.
    drop(response);
    let mut reason = format!("HTTP {status}");
    if let Some(location) = location {
        reason.push_str(&format!(", Location {location}"));
    }
    if read > 0 {
        let digest = hex::encode(&hasher.finalize()[..6]);
        reason.push_str(&format!(
            ", body {read}{} bytes, sha256 {digest}",
            if more { "+" } else { "" }
        ));
    }
    reason
}

/// `scheme://host[:port]` of a URL, or `a relative URL` when it has none.
fn origin_of(location: &str) -> String {
    match url::Url::parse(location) {
        Ok(url) => format!(
            "{}://{}{}",
            url.scheme(),
            crate::render::line(url.host_str().unwrap_or("?")),
            url.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "a relative URL".to_owned(),
    }
}

/// The most of a refusal's body that is read (to hash it).
pub const ANSWER_BYTES: usize = 4096;

/// The wait before the next attempt: the backoff, or the receiver's `Retry-After` when it
/// asks for longer, but never longer than `max_wait` (a receiver cannot park a lead for
/// years, nor wrap the clock with a huge number).
fn retry_wait(settings: &ForwardSettings, attempts: i64, asked: Option<Duration>) -> Duration {
    backoff(settings, attempts)
        .max(asked.unwrap_or_default())
        .min(settings.max_wait)
}

/// Full jitter: a random wait up to `first_wait × 2^attempts`, capped at `max_wait`.
fn backoff(settings: &ForwardSettings, attempts: i64) -> Duration {
    let exp = settings
        .first_wait
        .saturating_mul(1u32 << attempts.clamp(0, 20) as u32)
        .min(settings.max_wait);
    Duration::from_millis(fastrand::u64(..=exp.as_millis() as u64))
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    use axum::http::StatusCode;
    use leadpipe_core::ports::{LeadSourceKind, LeadStore, StoredLead};
    use std::sync::atomic::AtomicUsize;

    fn item(lead_id: &str) -> OutboxItem {
        OutboxItem {
            lead_id: lead_id.into(),
            body: format!(r#"{{"lead_id":"{lead_id}","fields":{{"email":["ada@example.org"]}}}}"#),
            attempts: 0,
            created_at: now_ms(),
        }
    }

    fn stored(id: &str) -> StoredLead {
        StoredLead {
            lead: leadpipe_graph::Lead::from_json(&format!(
                r#"{{"id":"{id}","created_time":"2026-11-30T04:00:00+0000","form_id":"5","field_data":[{{"name":"email","values":["ada@example.org"]}}]}}"#
            ))
            .unwrap(),
            page_id: "7".into(),
            form_id: Some("5".into()),
            source: LeadSourceKind::Webhook,
            ingested_at: time::OffsetDateTime::now_utc(),
            readable: Default::default(),
        }
    }

    /// A receiver on loopback answering with `answer` (it sees the Idempotency-Key).
    async fn receiver<F, Fut>(answer: F) -> String
    where
        F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = axum::response::Response> + Send,
    {
        let app = axum::Router::new().route(
            "/in",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let answer = answer.clone();
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    answer(key).await
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/in", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        url
    }

    fn temp_db(name: &str) -> (LocalDb, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("leadpipe-forward-{name}-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let db = LocalDb::open(&path).unwrap();
        db.enable_outbox();
        (db, path)
    }

    fn forwarder(db: &LocalDb, url: String, settings: ForwardSettings) -> Forwarder {
        Forwarder::new(
            db.clone(),
            url,
            SecretString::from("forward-key-0123456789"),
            settings,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_refusal_keeps_no_part_of_the_body_and_reads_only_its_start() {
        // The echo in every form a scrub missed: escaped, URL-encoded, upper-cased, cut;
        // then a megabyte more than anyone needs to read.
        let url = receiver(|_| async {
            let echo = "{\"e\":\"ad\\u0061@example.org\"} ada%40example.org ADA@EXAMPLE.ORG ad";
            let body = format!("{echo}{}", "x".repeat(1 << 20));
            (StatusCode::BAD_REQUEST, body).into_response()
        })
        .await;
        let (db, path) = temp_db("refusal");
        let delivery = forwarder(&db, url, ForwardSettings::default())
            .post(&item("1"))
            .await;
        let Delivery::Refused(reason) = delivery else {
            panic!("{delivery:?}");
        };
        assert!(
            reason.starts_with("HTTP 400, body 4096+ bytes, sha256 "),
            "{reason}"
        );
        assert!(!reason.to_lowercase().contains("ad"), "{reason}");
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn a_redirect_is_kept_as_its_origin_only() {
        let url = receiver(|_| async {
            (
                StatusCode::FOUND,
                [(
                    axum::http::header::LOCATION,
                    "https://elsewhere.example/x?email=ada%40example.org&token=EAAsecret",
                )],
                "moved",
            )
                .into_response()
        })
        .await;
        let (db, path) = temp_db("redirect");
        let delivery = forwarder(&db, url, ForwardSettings::default())
            .post(&item("1"))
            .await;
        assert_eq!(
            delivery,
            Delivery::Refused(
                "HTTP 302, Location https://elsewhere.example, body 5 bytes, sha256 ".to_owned()
                    + &hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(b"moved")[..6])
            )
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_receivers_wait_is_capped_and_cannot_wrap() {
        let settings = ForwardSettings {
            first_wait: Duration::from_millis(100),
            max_wait: Duration::from_secs(600),
            ..ForwardSettings::default()
        };
        for asked in [999_999_999, u64::MAX] {
            let wait = retry_wait(&settings, 0, Some(Duration::from_secs(asked)));
            assert_eq!(wait, Duration::from_secs(600), "{asked}");
        }
        assert_eq!(
            retry_wait(&settings, 0, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_huge_retry_after_parks_the_lead_without_a_hot_loop() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let url = receiver(move |_| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(axum::http::header::RETRY_AFTER, "18446744073709551615")],
                    "slow down",
                )
                    .into_response()
            }
        })
        .await;
        let (db, path) = temp_db("retry-after");
        db.put_leads(&[stored("1")]).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let run = tokio::spawn(forwarder(&db, url, ForwardSettings::default()).run(stop.clone()));
        // Wait for the first call (progress), then give a wrapped wait time to show itself.
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::Relaxed);
        run.await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "parked, not retried at once"
        );
        assert_eq!(db.outbox_summary().unwrap().pending, 1, "and still pending");
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_receiver_hanging_on_one_lead_does_not_hold_the_others() {
        let hanging = Arc::new(AtomicBool::new(false));
        let flag = hanging.clone();
        let url = receiver(move |key: String| {
            let flag = flag.clone();
            async move {
                if key == "1" {
                    flag.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                StatusCode::ACCEPTED.into_response()
            }
        })
        .await;
        let (db, path) = temp_db("hang");
        db.put_leads(&[stored("1")]).await.unwrap();
        let settings = ForwardSettings {
            timeout: Duration::from_secs(120),
            ..ForwardSettings::default()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let run = tokio::spawn(forwarder(&db, url, settings).run(stop.clone()));
        while !hanging.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Leads stored while lead 1 hangs still go out. Progress, not a clock: they are
        // delivered while lead 1's call has two minutes left (the bound here is shorter).
        db.put_leads(&[stored("2"), stored("3"), stored("4")])
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while db.outbox_summary().unwrap().pending > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the others waited for lead 1"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::Relaxed);
        run.abort();
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn old_events_are_dead_letters_whenever_their_next_attempt_is() {
        let (db, path) = temp_db("old");
        db.put_leads(&[stored("1")]).await.unwrap();
        db.outbox_retry("1", i64::MAX, "HTTP 429").unwrap();
        assert_eq!(db.outbox_expire(now_ms() + 1000, "too old").unwrap(), 1);
        let summary = db.outbox_summary().unwrap();
        assert_eq!((summary.pending, summary.dead), (0, 1));
        assert_eq!(
            db.outbox_redrive(Some(DeadLetterClass::Exhausted), false)
                .unwrap(),
            1
        );
        let _ = std::fs::remove_file(&path);
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
