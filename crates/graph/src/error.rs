//! One error type for every Graph failure, classified once by the table in docs/graph-api.md
//! (and docs/architecture.md's failure classes), so every caller decides retry, delay, skip or
//! dead-letter from [`ErrorClass`] alone.

use crate::usage::Usage;
#[cfg(feature = "client")]
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// What a caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Try again soon: codes 1 and 2, HTTP 5xx, `is_transient`, time-outs, lost connections.
    Transient,
    /// Wait for the usage window: codes 4, 17, 32, 341, 613, 80000-80008.
    RateLimited,
    /// The token is expired or revoked (190): a person must issue a new one.
    Token,
    /// The token lacks a permission (10, 200-299).
    Permission,
    /// The object is gone or invisible to this token (100 with subcode 33, 803).
    NotFound,
    /// Anything else Meta refused; sending it again will not help.
    BadRequest,
    /// Meta answered, but the lead's JSON has a shape the parser refuses: reading it again
    /// gives the same answer until leadpipe is fixed, so it is kept for a redrive.
    Unreadable,
}

impl ErrorClass {
    /// Whether sending the same request later can succeed without anyone acting.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Transient | Self::RateLimited)
    }

    /// A stable lower-case name, for logs, metrics and dead-letter reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::RateLimited => "rate_limited",
            Self::Token => "token",
            Self::Permission => "permission",
            Self::NotFound => "not_found",
            Self::BadRequest => "bad_request",
            Self::Unreadable => "unreadable",
        }
    }

    /// Classifies a Graph error body's fields (docs/graph-api.md, "Errors and rate limits").
    pub fn classify(
        status: Option<u16>,
        code: Option<i64>,
        subcode: Option<i64>,
        is_transient: bool,
    ) -> Self {
        match code {
            Some(4 | 17 | 32 | 341 | 613 | 80000..=80008) => Self::RateLimited,
            Some(190 | 102) => Self::Token,
            Some(10 | 200..=299) => Self::Permission,
            Some(100) if subcode == Some(33) => Self::NotFound,
            Some(803) => Self::NotFound,
            Some(1 | 2) => Self::Transient,
            _ if is_transient => Self::Transient,
            _ if status.is_some_and(|s| s >= 500) => Self::Transient,
            _ => Self::BadRequest,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed Graph call: Meta's error fields when it sent them, the HTTP status, the class,
/// and the usage headers of the failed response.
///
/// Its `Display` and `Debug` never contain an access token: the request path is kept
/// without its query, and any token found in Meta's message is replaced.
#[derive(Clone, PartialEq, thiserror::Error)]
#[error("Graph {operation} failed: {class}{}{}: {message}{}",
    status.map(|s| format!(", HTTP {s}")).unwrap_or_default(),
    code.map(|c| format!(", code {c}{}", subcode.map(|s| format!("/{s}")).unwrap_or_default())).unwrap_or_default(),
    fbtrace_id.as_ref().map(|t| format!(" (fbtrace_id {t})")).unwrap_or_default())]
pub struct GraphError {
    /// What was being done, e.g. `GET /{id}` with the real id: ids are not secret.
    pub operation: String,
    /// What to do about it; see [`ErrorClass`].
    pub class: ErrorClass,
    /// The HTTP status, when Meta answered.
    pub status: Option<u16>,
    /// Meta's error `code`.
    pub code: Option<i64>,
    /// Meta's `error_subcode`.
    pub subcode: Option<i64>,
    /// Meta's error `type`, e.g. `OAuthException`.
    pub error_type: Option<String>,
    /// Meta's message (tokens redacted) or ours.
    pub message: String,
    /// Meta's trace id, for support requests.
    pub fbtrace_id: Option<String>,
    /// Meta's own `is_transient` flag.
    pub is_transient: bool,
    /// The usage headers of the failed response.
    pub usage: Usage,
}

impl fmt::Debug for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphError")
            .field("operation", &self.operation)
            .field("class", &self.class)
            .field("status", &self.status)
            .field("code", &self.code)
            .field("subcode", &self.subcode)
            .field("error_type", &self.error_type)
            .field("message", &self.message)
            .field("fbtrace_id", &self.fbtrace_id)
            .field("is_transient", &self.is_transient)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "client")]
#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[cfg(feature = "client")]
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(rename = "type", default)]
    error_type: Option<String>,
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    error_subcode: Option<i64>,
    #[serde(default)]
    is_transient: Option<bool>,
    #[serde(default)]
    fbtrace_id: Option<String>,
}

impl GraphError {
    /// Builds the error for a non-2xx answer from its body (Meta's error JSON, or not).
    #[cfg(feature = "client")]
    pub(crate) fn from_response(
        operation: String,
        status: u16,
        body: &str,
        usage: Usage,
        secrets: &[&str],
    ) -> Self {
        match serde_json::from_str::<ErrorEnvelope>(body) {
            Ok(ErrorEnvelope { error }) => {
                let is_transient = error.is_transient.unwrap_or(false);
                Self {
                    class: ErrorClass::classify(
                        Some(status),
                        error.code,
                        error.error_subcode,
                        is_transient,
                    ),
                    operation,
                    status: Some(status),
                    code: error.code,
                    subcode: error.error_subcode,
                    // Every field a server writes can echo what it was sent.
                    error_type: error.error_type.map(|t| redact(t, secrets)),
                    message: redact(error.message.unwrap_or_default(), secrets),
                    fbtrace_id: error.fbtrace_id.map(|t| redact(t, secrets)),
                    is_transient,
                    usage,
                }
            }
            Err(_) => Self {
                class: ErrorClass::classify(Some(status), None, None, false),
                operation,
                status: Some(status),
                code: None,
                subcode: None,
                error_type: None,
                message: format!("HTTP {status} without a Graph error body"),
                fbtrace_id: None,
                is_transient: false,
                usage,
            },
        }
    }

    /// A failure with no answer from Meta (time-out, refused connection) or an answer that
    /// could not be read.
    pub fn local(operation: String, class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            operation,
            class,
            status: None,
            code: None,
            subcode: None,
            error_type: None,
            message: message.into(),
            fbtrace_id: None,
            is_transient: class == ErrorClass::Transient,
            usage: Usage::default(),
        }
    }

    /// The class; see [`ErrorClass`].
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// How long to wait before trying again, for retryable errors: Meta's estimate from the
    /// usage headers when given; for rate limits without one, a conservative minute.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.class {
            ErrorClass::RateLimited => Some(match self.usage.suggested_wait() {
                Duration::ZERO => Duration::from_secs(60),
                wait => wait,
            }),
            ErrorClass::Transient => Some(self.usage.suggested_wait()),
            _ => None,
        }
    }
}

/// Replaces every occurrence of each secret in `text`, in each form a server's echo can
/// give it: as it is, URL-encoded (`+` or `%20` for a space, `%7C` or `%7c`), and escaped
/// for JSON (`\/`, `\u007c`).
#[cfg(feature = "client")]
pub(crate) fn redact(mut text: String, secrets: &[&str]) -> String {
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        for form in secret_forms(secret) {
            if text.contains(&form) {
                text = text.replace(&form, "[REDACTED]");
            }
        }
    }
    text
}

/// The forms of `secret` that [`redact`] looks for, longest first.
#[cfg(feature = "client")]
fn secret_forms(secret: &str) -> Vec<String> {
    let percent = |upper: bool| -> String {
        secret
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    };
    let unicode = |upper: bool| -> String {
        secret
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_string()
                } else {
                    let mut units = [0u16; 2];
                    c.encode_utf16(&mut units)
                        .iter()
                        .map(|u| {
                            if upper {
                                format!("\\u{u:04X}")
                            } else {
                                format!("\\u{u:04x}")
                            }
                        })
                        .collect()
                }
            })
            .collect()
    };
    let json = serde_json::to_string(secret)
        .map(|quoted| quoted[1..quoted.len() - 1].to_owned())
        .unwrap_or_default();
    let mut forms = vec![
        secret.to_owned(),
        url::form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
        percent(true),
        percent(false),
        json.clone(),
        json.replace('/', "\\/"),
        unicode(false),
        unicode(true),
    ];
    forms.retain(|f| !f.is_empty());
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    forms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(code: i64, subcode: Option<i64>) -> ErrorClass {
        ErrorClass::classify(Some(400), Some(code), subcode, false)
    }

    #[test]
    fn the_table_of_graph_facts() {
        for code in [4, 17, 32, 341, 613, 80000, 80001, 80004, 80005, 80008] {
            assert_eq!(class_of(code, None), ErrorClass::RateLimited, "{code}");
        }
        assert_eq!(class_of(190, Some(463)), ErrorClass::Token);
        assert_eq!(class_of(190, Some(460)), ErrorClass::Token);
        for code in [10, 200, 250, 299] {
            assert_eq!(class_of(code, None), ErrorClass::Permission, "{code}");
        }
        assert_eq!(class_of(100, Some(33)), ErrorClass::NotFound);
        assert_eq!(class_of(803, None), ErrorClass::NotFound);
        assert_eq!(class_of(100, None), ErrorClass::BadRequest);
        assert_eq!(class_of(2635, None), ErrorClass::BadRequest);
        assert_eq!(class_of(104, None), ErrorClass::BadRequest);
        assert_eq!(class_of(1, None), ErrorClass::Transient);
        assert_eq!(class_of(2, None), ErrorClass::Transient);
        assert_eq!(
            ErrorClass::classify(Some(400), Some(99), None, true),
            ErrorClass::Transient
        );
        assert_eq!(
            ErrorClass::classify(Some(503), None, None, false),
            ErrorClass::Transient
        );
        assert_eq!(
            ErrorClass::classify(Some(400), Some(80009), None, false),
            ErrorClass::BadRequest
        );
    }

    #[cfg(feature = "client")]
    #[test]
    fn a_secret_is_redacted_in_every_form_and_field_it_is_echoed_in() {
        let secret = "s3cr/et|app+key";
        for echo in [
            "s3cr/et|app+key".to_owned(),
            "s3cr%2Fet%7Capp%2Bkey".to_owned(),
            "s3cr%2fet%7capp%2bkey".to_owned(),
            "s3cr\\/et|app+key".to_owned(),
            "s3cr\\u002fet\\u007capp\\u002bkey".to_owned(),
        ] {
            let body = serde_json::json!({"error": {
                "message": format!("bad proof for {echo}"),
                "type": format!("OAuthException {echo}"),
                "code": 190,
                "fbtrace_id": echo,
            }})
            .to_string();
            let err = GraphError::from_response(
                "GET /me".into(),
                400,
                &body,
                Usage::default(),
                &[secret],
            );
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("s3cr"), "{echo}: {shown}");
            assert!(shown.contains("[REDACTED]"), "{shown}");
        }
    }

    #[test]
    fn reads_a_real_shaped_error_body_and_redacts_tokens() {
        let body = r#"{"error":{"message":"Error validating access token: EAAB-secret-token has expired","type":"OAuthException","code":190,"error_subcode":463,"fbtrace_id":"AbCdEf123"}}"#;
        let err = GraphError::from_response(
            "GET /123".into(),
            400,
            body,
            Usage::default(),
            &["EAAB-secret-token"],
        );
        assert_eq!(err.class, ErrorClass::Token);
        assert_eq!(err.code, Some(190));
        assert_eq!(err.subcode, Some(463));
        assert_eq!(err.error_type.as_deref(), Some("OAuthException"));
        assert_eq!(err.fbtrace_id.as_deref(), Some("AbCdEf123"));
        assert!(!err.to_string().contains("EAAB-secret-token"));
        assert!(!format!("{err:?}").contains("EAAB-secret-token"));
        assert!(err.to_string().contains("code 190/463"), "{err}");
    }
}
