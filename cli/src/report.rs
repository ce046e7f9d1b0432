//! What connect and doctor print: one line per step (✔, ✘, a note, or ? for a check that
//! could not be made), and the pages' table. Text from Graph (page names, Meta's messages)
//! is shown with control characters escaped, so it cannot forge or hide a line. No token is
//! printed: a token is shown by its last four characters only.

use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

/// One step's line. Its text may carry what Graph said (page names, Meta's messages): it
/// is shown with control characters escaped, so it cannot forge or hide a line.
pub(crate) fn ok(text: impl std::fmt::Display) {
    println!("✔ {}", shown(text));
}

pub(crate) fn fail(text: impl std::fmt::Display) {
    println!("✘ {}", shown(text));
}

pub(crate) fn note(text: impl std::fmt::Display) {
    println!("  {}", shown(text));
}

pub(crate) fn shown(text: impl std::fmt::Display) -> String {
    crate::render::outside_text(&text.to_string(), 2000)
}

/// The last four characters of a token, for telling tokens apart.
pub fn tail(token: &SecretString) -> String {
    let text = token.expose_secret();
    let chars: Vec<char> = text.chars().collect();
    if chars.len() < 12 {
        return "…".to_owned();
    }
    format!("…{}", chars[chars.len() - 4..].iter().collect::<String>())
}

pub(crate) fn when(unix: Option<i64>) -> String {
    match unix {
        None | Some(0) => "never expires".to_owned(),
        Some(at) => match OffsetDateTime::from_unix_timestamp(at) {
            Ok(t) => format!("expires {}", leadpipe_core::record::contract_time(t)),
            Err(_) => format!("expires at unix {at}"),
        },
    }
}

/// What connect (or doctor) found and did for one page; the final table's row.
#[derive(Debug, Default)]
pub(crate) struct PageRow {
    pub id: String,
    pub name: String,
    pub subscribed: Option<bool>,
    pub lead_access: Option<bool>,
    pub forms: usize,
    pub active_forms: Vec<String>,
    pub leads: i64,
    pub token_expiry: String,
    pub token: Option<SecretString>,
    /// Which way the page was found (the person's own pages, or a business's).
    pub found: String,
}

impl PageRow {
    pub(crate) fn ready(&self) -> bool {
        self.subscribed == Some(true) && self.lead_access == Some(true)
    }
}

pub(crate) fn yes_no(value: Option<bool>, dry_run: bool) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) if dry_run => "not yet",
        Some(false) => "NO",
        None => "unknown",
    }
}

pub(crate) fn print_table(rows: &[PageRow], dry_run: bool) {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    // The terminal's width, else 80 columns: long names wrap inside their cell.
    table.set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
    if table.width().is_none() {
        table.set_width(80);
    }
    table.set_header(["page", "name", "webhook", "leads", "forms", "token"]);
    for row in rows {
        table.add_row([
            crate::render::line(&row.id),
            crate::render::outside_text(&row.name, 40),
            yes_no(row.subscribed, dry_run).to_owned(),
            yes_no(row.lead_access, false).to_owned(),
            format!("{}, {} active", row.forms, row.active_forms.len()),
            row.token_expiry.clone(),
        ]);
    }
    // An id is never cut; a name wraps in its cell instead.
    if let Some(ids) = table.column_mut(0) {
        ids.set_constraint(comfy_table::ColumnConstraint::ContentWidth);
    }
    println!("{table}");
}

/// A check that could not be made (a read that failed): never a finding about the setup.
pub(crate) fn unchecked(text: impl std::fmt::Display) {
    println!("? could not check: {}", shown(text));
}
