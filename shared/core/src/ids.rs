//! Graph ids arrive as JSON strings in real payloads and as numbers in Meta's own samples.
//! Both become the same `String`, so nothing downstream cares which form was sent.

use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum IdRepr {
    Text(String),
    Number(u64),
}

/// Deserializes an id given as a JSON string or a non-negative integer into a `String`.
pub fn flexible_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match IdRepr::deserialize(deserializer)? {
        IdRepr::Text(text) if !text.is_empty() => Ok(text),
        IdRepr::Text(_) => Err(serde::de::Error::custom("id is an empty string")),
        IdRepr::Number(number) => Ok(number.to_string()),
    }
}

/// Like [`flexible_id`], for an id that may be absent or `null`.
pub fn optional_flexible_id<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    match Option::<IdRepr>::deserialize(deserializer)? {
        None => Ok(None),
        Some(IdRepr::Text(text)) if text.is_empty() => Ok(None),
        Some(IdRepr::Text(text)) => Ok(Some(text)),
        Some(IdRepr::Number(number)) => Ok(Some(number.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum UnixRepr {
    Number(i64),
    Text(String),
}

/// Deserializes unix seconds given as a number or a numeric string.
pub fn flexible_unix_seconds<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    match Option::<UnixRepr>::deserialize(deserializer)? {
        None => Ok(None),
        Some(UnixRepr::Number(seconds)) => Ok(Some(seconds)),
        Some(UnixRepr::Text(text)) => text
            .parse::<i64>()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("time is not unix seconds")),
    }
}
