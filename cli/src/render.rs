//! Text that came from outside (Graph's page names and error messages, a receiver's
//! `Location`, dead-letter reasons) rendered for a terminal: every control character is
//! shown escaped, so an ESC, CR or newline in it cannot move the cursor, recolour, hide
//! text or forge a line of leadpipe's own report.

/// `text` with control characters (C0, DEL, C1) and the bidirectional overrides escaped as
/// `\u{..}`, cut to `max_chars` characters (with `…`).
pub fn outside_text(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 2));
    for (shown, c) in text.chars().enumerate() {
        if shown >= max_chars {
            out.push('…');
            break;
        }
        if c.is_control() || is_bidi_control(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// [`outside_text`] with the usual limit for one line of a report.
pub fn line(text: &str) -> String {
    outside_text(text, 300)
}

/// A duration in the largest unit that reads well: `840 ms`, `12.4 s`, `7 min 5 s`,
/// `8 h 27 min`, `3 d 4 h`.
pub fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {} s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Unix seconds as RFC 3339 UTC (`2026-12-01T09:00:00Z`), or the number when it is no time.
pub fn unix_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(leadpipe_core::record::contract_time)
        .unwrap_or_else(|_| unix.to_string())
}

/// Writes a command's report to stdout at once. A reader that went away (`| head`) is
/// [`crate::CliError::Output`] with a broken pipe, which ends the command quietly with
/// exit 0; never a panic, as `println!` would.
pub fn print(text: &str) -> Result<(), crate::CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(crate::CliError::Output)
}

/// Marks that reorder how a terminal shows the text around them (U+202A–U+202E,
/// U+2066–U+2069): "Trojan Source" lines.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_cuts_what_could_forge_a_line() {
        let forged = "Page\r\x1b[2K\u{2714} verdict: ready\nhidden\u{202e}txt\u{9b}";
        let shown = line(forged);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        assert_eq!(
            shown,
            "Page\\u{d}\\u{1b}[2K\u{2714} verdict: ready\\u{a}hidden\\u{202e}txt\\u{9b}"
        );
        assert_eq!(outside_text("abcdef", 3), "abc…");
        assert_eq!(line("Café Ünïcode"), "Café Ünïcode");
    }

    #[test]
    fn durations_read_in_their_largest_unit() {
        assert_eq!(duration_ms(840), "840 ms");
        assert_eq!(duration_ms(12_400), "12.4 s");
        assert_eq!(duration_ms(425_000), "7 min 5 s");
        assert_eq!(duration_ms(30_421_193), "8 h 27 min");
        assert_eq!(duration_ms(273_600_000), "3 d 4 h");
        assert_eq!(unix_time(1_796_171_060), "2026-12-02T00:24:20Z");
    }
}
