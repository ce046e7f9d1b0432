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
}
