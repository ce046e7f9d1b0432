//! Why a JSON text could not be read, without the text: serde's own messages quote values,
//! and a value may be a customer's email. Used by the webhook parser, the queue message and
//! the secret's reader alike.

/// A JSON error that says where the input broke and what kind of break, never the input
/// itself: serde's own messages quote values, and values may be a customer's email.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{category} JSON at line {line}, column {column}{}", missing_field.as_ref().map(|f| format!(" (missing field `{f}`)")).unwrap_or_default())]
pub struct JsonError {
    /// What kind of break: malformed, truncated, unexpected shape.
    pub category: &'static str,
    /// Line of the break.
    pub line: usize,
    /// Column of the break.
    pub column: usize,
    /// A field name is the schema's, not the input's, so it is safe to say.
    pub missing_field: Option<String>,
}

impl From<serde_json::Error> for JsonError {
    fn from(err: serde_json::Error) -> Self {
        let category = match err.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "malformed",
            serde_json::error::Category::Data => "unexpected shape of",
            serde_json::error::Category::Eof => "truncated",
        };
        let message = err.to_string();
        let missing_field = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned);
        Self {
            category,
            line: err.line(),
            column: err.column(),
            missing_field,
        }
    }
}
