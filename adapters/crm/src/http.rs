//! The one HTTP client every adapter uses, and how an answer becomes an outcome.

use leadpipe_core::destinations::Outcome;
use std::time::Duration;

/// A call's time-out: a service slower than this is retried later.
pub const TIMEOUT: Duration = Duration::from_secs(15);
/// The most of an answer's body that is read.
const MAX_BODY: usize = 64 * 1024;

/// No redirects (a credential must not follow one), a time-out per call.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// Whether a URL may carry a lead or a credential: https, or http to this machine only
/// (the stand-ins).
pub fn is_safe(url: &url::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")),
        _ => false,
    }
}

/// A send that failed before an answer: a retry, without the URL (Slack's is a credential).
pub fn unsent(e: reqwest::Error) -> Outcome {
    Outcome::Retry {
        after: None,
        reason: format!("no answer: {}", e.without_url()),
    }
}

/// An answer's status, headers and up to 64 KiB of its body as text.
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body's start, as text.
    pub body: String,
}

impl Answer {
    /// Reads the answer (a body cut at 64 KiB).
    pub async fn read(mut response: reqwest::Response) -> Result<Self, reqwest::Error> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            body.extend_from_slice(&chunk);
            if body.len() >= MAX_BODY {
                body.truncate(MAX_BODY);
                break;
            }
        }
        Ok(Self {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }

    /// A header as a number.
    pub fn header_number(&self, name: &str) -> Option<u64> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    }

    /// `HTTP <status>: <what>`, for a reason.
    pub fn said(&self, what: &str) -> String {
        let what = if what.is_empty() {
            self.body.chars().take(200).collect::<String>()
        } else {
            what.to_owned()
        };
        format!("HTTP {}: {what}", self.status)
    }

    /// A 5xx (or a status no service documents): try again later.
    pub fn retry(&self, what: &str) -> Outcome {
        Outcome::Retry {
            after: None,
            reason: self.said(what),
        }
    }
}
