//! Times as people type them on a command line: unix seconds, RFC 3339, a date
//! (`2026-12-01`, midnight UTC), or a span back from now (`90s`, `30m`, `24h`, `7d`,
//! `2w`). One reading for every flag that takes a time (`backfill --from/--to`, `export
//! --since/--until`, the on-demand backfill request).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// RFC 3339 UTC to the second, as the contract's example: `2015-02-28T08:49:14Z`.
pub fn contract_time(at: OffsetDateTime) -> String {
    let at = at
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(at);
    at.format(&Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// What a time flag accepts, for its error message.
pub const ACCEPTED: &str = "unix seconds, RFC 3339 (2026-12-01T09:00:00Z), a date (2026-12-01, midnight UTC) or a span back from now (90s, 30m, 24h, 7d, 2w)";

/// `text` as unix seconds, read against `now` (unix seconds) for a span; `None` when it is
/// none of the accepted forms, or a span too large to count back.
pub fn parse_time(text: &str, now: i64) -> Option<i64> {
    let text = text.trim();
    if let Ok(unix) = text.parse::<i64>() {
        return Some(unix);
    }
    if let Ok(at) = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Some(at.unix_timestamp());
    }
    if let Ok(date) = time::Date::parse(
        text,
        &time::macros::format_description!("[year]-[month]-[day]"),
    ) {
        return Some(date.midnight().assume_utc().unix_timestamp());
    }
    span_seconds(text).and_then(|back| now.checked_sub(back))
}

/// `24h` and the like as seconds.
fn span_seconds(text: &str) -> Option<i64> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(unit_at);
    let n: i64 = number.parse().ok()?;
    let per = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_people_type() {
        let now = 1_796_170_000;
        assert_eq!(parse_time("1796171060", now), Some(1_796_171_060));
        assert_eq!(parse_time("2026-12-01T00:00:00Z", now), Some(1_796_083_200));
        assert_eq!(parse_time("2026-12-01", now), Some(1_796_083_200));
        assert_eq!(parse_time(" 24h ", now), Some(now - 86_400));
        assert_eq!(parse_time("7d", now), Some(now - 7 * 86_400));
        assert_eq!(parse_time("30m", now), Some(now - 1_800));
        assert_eq!(parse_time("2w", now), Some(now - 14 * 86_400));
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "24x",
            "h",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_time(bad, now), None, "{bad}");
        }
    }
}
