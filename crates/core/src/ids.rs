//! Graph ids arrive as JSON strings in real payloads and as numbers in Meta's own samples.
//! Both become the same `String`, so nothing downstream cares which form was sent. Webhook
//! values are read leniently: a value that is not a usable id or time is treated as absent,
//! never as an error that would cost the rest of the post.

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(untagged)]
enum IdRepr {
    Text(String),
    Number(u64),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum UnixRepr {
    Number(i64),
    Text(String),
}

/// Unix seconds leadpipe takes as a time: after 1970 and before year 5000. Anything else
/// (`2^63`, `1e400`, negative) is no time at all, rather than a wrapped or clamped one.
const MAX_UNIX_SECONDS: i64 = 95_617_584_000;

/// An id from a raw JSON value, leniently: a non-empty string, or a positive integer that
/// fits in 64 bits. `0`, `"0"`, `""`, `null`, negatives, fractions, out-of-range numbers
/// and other shapes are no id (Meta sends `0` for an absent ad id). Never fails.
pub fn lenient_id(raw_json: &str) -> Option<String> {
    match serde_json::from_str::<IdRepr>(raw_json).ok()? {
        IdRepr::Text(text) if !text.is_empty() && text != "0" => Some(text),
        IdRepr::Number(number) if number > 0 => Some(number.to_string()),
        _ => None,
    }
}

/// Unix seconds from a raw JSON value (a number or a numeric string), or `None` when it is
/// not a usable time (after 1970 and before year 5000). Never fails.
pub fn lenient_unix_seconds(raw_json: &str) -> Option<i64> {
    let seconds = match serde_json::from_str::<UnixRepr>(raw_json).ok()? {
        UnixRepr::Number(seconds) => seconds,
        UnixRepr::Text(text) => text.trim().parse::<i64>().ok()?,
    };
    (1..=MAX_UNIX_SECONDS).contains(&seconds).then_some(seconds)
}

/// Whether `id` can stand in a Graph path: letters, digits and `_`, 1 to 128 of them. A
/// message whose ids are not is malformed on its own; it never reaches a Graph call.
pub fn is_graph_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_ids_take_what_is_an_id_and_nothing_else() {
        assert_eq!(lenient_id(r#""4444""#).as_deref(), Some("4444"));
        assert_eq!(lenient_id("123123123123").as_deref(), Some("123123123123"));
        assert_eq!(
            lenient_id("18446744073709551615").as_deref(),
            Some("18446744073709551615")
        );
        for none in [
            "0",
            r#""0""#,
            r#""""#,
            "null",
            "-5",
            "1.5",
            "1e400",
            "18446744073709551616",
            "{}",
            "[1]",
            "true",
        ] {
            assert_eq!(lenient_id(none), None, "{none}");
        }
    }

    #[test]
    fn lenient_times_refuse_what_would_wrap() {
        assert_eq!(lenient_unix_seconds("1440120384"), Some(1_440_120_384));
        assert_eq!(lenient_unix_seconds(r#""1440120384""#), Some(1_440_120_384));
        for none in [
            "9223372036854775808", // 2^63
            "9223372036854775807",
            "1e400",
            "-1",
            "0",
            "1.5",
            r#""soon""#,
            "null",
        ] {
            assert_eq!(lenient_unix_seconds(none), None, "{none}");
        }
    }
}
