//! `leadpipe export`: the leads as CSV (one column per form field) or JSON lines.

use crate::CliError;
use leadpipe_core::export::{AnswerColumns, RowSink, export};
use leadpipe_local::{LeadRow, LocalDb, OPTIONAL_COLUMNS};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One row per lead, one column per form field; cells safe for spreadsheets.
    Csv,
    /// One JSON object per line, every attribute exactly.
    Jsonl,
}

/// Arguments of `leadpipe export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The SQLite file to read (opened read-only).
    #[arg(
        long,
        env = "LEADPIPE_DB",
        hide_env_values = true,
        default_value = "leadpipe.db"
    )]
    pub db: PathBuf,
    /// Read the deployed stack's leads table (its LeadsTableName output) instead.
    #[arg(long, conflicts_with = "leads_table")]
    pub stack: Option<String>,
    /// Read this DynamoDB leads table instead of the SQLite file.
    #[arg(long)]
    pub leads_table: Option<String>,
    /// Only this form's leads (a `by_form` query on DynamoDB).
    #[arg(long)]
    pub form: Option<String>,
    /// Leads created at or after this time (RFC 3339 or unix seconds).
    #[arg(long)]
    pub since: Option<String>,
    /// Leads created before this time (RFC 3339 or unix seconds).
    #[arg(long)]
    pub until: Option<String>,
    /// The output's format.
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    pub format: Format,
    /// Output file, created 0600 (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write through a symbolic link at --out (refused otherwise).
    #[arg(long)]
    pub force: bool,
    /// Head the CSV's answer columns with the questions' labels (per form, in the form's
    /// order) and fill them with the choices as shown; without it they are `field:<key>`
    /// with Meta's raw values.
    #[arg(long)]
    pub labels: bool,
}

/// The fixed columns before the form fields.
pub const FIXED_COLUMNS: [&str; 6] = [
    "lead_id",
    "created_time",
    "page_id",
    "form_id",
    "form_name",
    "is_organic",
];
/// Prefix of the normalised contact's columns (`contact_email`, `contact_phone`, ...: core's
/// `readable::Contact::PARTS`), after the optional attributes.
pub const CONTACT_PREFIX: &str = "contact_";
/// The columns after the form fields.
pub const TRAILING_COLUMNS: [&str; 4] = [
    "custom_disclaimer_responses",
    "source",
    "ingested_at",
    "raw",
];
pub use leadpipe_core::export::FIELD_PREFIX;

/// A CSV cell that no spreadsheet runs as a formula (OWASP's CSV-injection rule, narrowed
/// to what a spreadsheet would evaluate): a value starting with `=`, `@`, tab or CR gets a
/// leading `'`, and so does one starting with `+` or `-` unless it is a signed number or a
/// phone number written with digits, spaces, dots and brackets only (`+15553835705`,
/// `-12.5`, `+1 (555) 383 5705`), which a spreadsheet takes as a number or text, never as
/// a formula. `+1-555-0100` is neutralised: Excel would compute `1-555-100`. A value that
/// starts with `'` gets one too, so [`uncell`] can take exactly one off and every value
/// round-trips.
pub fn cell(value: &str) -> std::borrow::Cow<'_, str> {
    match value.chars().next() {
        Some('+' | '-') if is_number_or_phone(value) => value.into(),
        Some('=' | '+' | '-' | '@' | '\t' | '\r' | '\'') => format!("'{value}").into(),
        _ => value.into(),
    }
}

/// A sign, then digits with spaces, brackets and at most one decimal point or comma
/// between them, ending on a digit: nothing a formula could be made of.
fn is_number_or_phone(value: &str) -> bool {
    let rest = &value[1..];
    let digits = rest.chars().filter(char::is_ascii_digit).count();
    let points = rest.chars().filter(|c| matches!(c, '.' | ',')).count();
    rest.chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '(')
        && rest.ends_with(|c: char| c.is_ascii_digit())
        && digits > 0
        && points <= 1
        && rest
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '(' | ')' | '.' | ','))
}

/// The inverse of [`cell`].
pub fn uncell(cell: &str) -> &str {
    cell.strip_prefix('\'').unwrap_or(cell)
}

/// A field's values in one CSV cell: the value itself when there is exactly one, else a
/// JSON array (so several values, none, and one empty answer, survive the trip: an empty
/// cell is a question not asked).
pub fn encode_values(values: &[String]) -> String {
    match values {
        [one] if !one.is_empty() && !one.starts_with('[') => one.clone(),
        _ => serde_json::to_string(values).unwrap_or_default(),
    }
}

/// The inverse of [`encode_values`].
pub fn decode_values(cell: &str) -> Vec<String> {
    if cell.starts_with('[') {
        serde_json::from_str(cell).unwrap_or_else(|_| vec![cell.to_owned()])
    } else {
        vec![cell.to_owned()]
    }
}

/// The answer columns: `(key, header)` each, and whether cells show the choices' text.
/// Writes rows one at a time in either format; CSV's columns are fixed up front from the
/// field names, so nothing but the current row is held.
pub struct RowWriter<W: Write> {
    inner: Inner<W>,
    answers: AnswerColumns,
}

enum Inner<W: Write> {
    /// The writer, and whether its header is written.
    Csv(Box<csv::Writer<W>>, bool),
    Jsonl(W),
}

impl<W: Write> RowWriter<W> {
    /// A writer of `format`; a CSV's header is written when its answer columns are given
    /// (core's `export` gives them before the first row).
    pub fn new(format: Format, out: W) -> Self {
        let inner = match format {
            Format::Jsonl => Inner::Jsonl(out),
            Format::Csv => Inner::Csv(Box::new(csv::Writer::from_writer(out)), false),
        };
        Self {
            inner,
            answers: AnswerColumns::default(),
        }
    }

    fn header(&mut self) -> Result<(), CliError> {
        let Inner::Csv(writer, headed) = &mut self.inner else {
            return Ok(());
        };
        if *headed {
            return Ok(());
        }
        let mut header: Vec<String> = FIXED_COLUMNS.iter().map(|s| s.to_string()).collect();
        header.extend(OPTIONAL_COLUMNS.iter().map(|s| s.to_string()));
        header.extend(
            leadpipe_core::readable::Contact::PARTS
                .iter()
                .map(|p| format!("{CONTACT_PREFIX}{p}")),
        );
        header.extend(self.answers.headers().map(str::to_owned));
        header.extend(TRAILING_COLUMNS.iter().map(|s| s.to_string()));
        writer
            .write_record(header.iter().map(|h| cell(h).into_owned()))
            .map_err(csv_error)?;
        *headed = true;
        Ok(())
    }

    /// Writes one lead.
    pub fn write(&mut self, row: &LeadRow) -> Result<(), CliError> {
        self.header()?;
        match &mut self.inner {
            Inner::Jsonl(out) => writeln!(out, "{}", row_json(row)).map_err(CliError::Output),
            Inner::Csv(writer, _) => {
                let mut record = vec![
                    row.lead_id.clone(),
                    row.created_time.clone(),
                    row.page_id.clone(),
                    row.form_id.clone().unwrap_or_default(),
                    row.readable.form_name.clone().unwrap_or_default(),
                    row.is_organic.to_string(),
                ];
                record.extend(
                    OPTIONAL_COLUMNS
                        .iter()
                        .map(|c| row.optional.get(c).cloned().unwrap_or_default()),
                );
                let contact = &row.readable.contact;
                record.extend(
                    leadpipe_core::readable::Contact::PARTS
                        .iter()
                        .map(|p| contact.part(p).unwrap_or_default().to_owned()),
                );
                record.extend(
                    self.answers
                        .values(row)
                        .map(|v| v.map(encode_values).unwrap_or_default()),
                );
                record.push(row.custom_disclaimer_responses.to_string());
                record.push(row.source.as_str().to_owned());
                record.push(row.ingested_at.clone());
                record.push(row.raw.clone());
                writer
                    .write_record(record.iter().map(|c| cell(c).into_owned()))
                    .map_err(csv_error)
            }
        }
    }

    /// Flushes what is buffered.
    pub fn finish(mut self) -> Result<(), CliError> {
        self.header()?;
        match self.inner {
            Inner::Jsonl(mut out) => out.flush().map_err(CliError::Output),
            Inner::Csv(mut writer, _) => writer.flush().map_err(CliError::Output),
        }
    }
}

impl<W: Write + Send> RowSink for RowWriter<W> {
    type Error = CliError;

    fn wants_columns(&self) -> bool {
        matches!(self.inner, Inner::Csv(..))
    }

    fn columns(&mut self, answers: AnswerColumns) -> Result<(), CliError> {
        self.answers = answers;
        self.header()
    }

    fn row(&mut self, row: LeadRow) -> Result<(), CliError> {
        self.write(&row)
    }
}

/// Writes `rows` as CSV.
pub fn write_csv<W: Write>(rows: &[LeadRow], out: W) -> Result<(), CliError> {
    let fields: BTreeSet<String> = rows.iter().flat_map(|r| r.fields.keys().cloned()).collect();
    let mut writer = RowWriter::new(Format::Csv, out);
    writer.answers = AnswerColumns::by_key(fields);
    for row in rows {
        writer.write(row)?;
    }
    writer.finish()
}

fn csv_error(e: csv::Error) -> CliError {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => CliError::Output(io),
        other => CliError::Failed(format!("CSV: {other:?}")),
    }
}

/// The output file: created 0600 (leads are personal data); a symbolic link at the path is
/// refused unless `force`, so an export cannot be pointed at another file by a planted link.
fn create_out(path: &std::path::Path, force: bool) -> Result<std::fs::File, CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_symlink()
        && !force
    {
        return Err(CliError::Settings(format!(
            "{} is a symbolic link: give another --out, or --force to write through it",
            path.display()
        )));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::Settings(format!("{}: {e}", path.display())))
}

/// One JSON object per lead, every attribute.
pub fn row_json(row: &LeadRow) -> serde_json::Value {
    let mut object = serde_json::json!({
        "lead_id": row.lead_id, "created_time": row.created_time, "page_id": row.page_id, "form_id": row.form_id,
        "is_organic": row.is_organic, "fields": row.fields, "custom_disclaimer_responses": row.custom_disclaimer_responses,
        "raw": row.raw, "source": row.source, "ingested_at": row.ingested_at,
    });
    for (k, v) in &row.optional {
        object[*k] = serde_json::json!(v);
    }
    let readable = &row.readable;
    if let Some(name) = &readable.form_name {
        object["form_name"] = serde_json::json!(name);
    }
    if !readable.answers.is_empty() {
        object["answers"] = serde_json::json!(readable.answers);
    }
    if !readable.contact.is_empty() {
        object["contact"] = serde_json::json!(readable.contact);
    }
    object
}

/// A time flag as the contract's RFC 3339 UTC (what `created_time` is stored as), read by
/// core's one reading of times (dates and spans too).
pub(crate) fn contract_time_arg(flag: &str, value: &str) -> Result<String, CliError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    leadpipe_core::when::parse_time(value, now)
        .and_then(|unix| time::OffsetDateTime::from_unix_timestamp(unix).ok())
        .map(leadpipe_core::record::contract_time)
        .ok_or_else(|| {
            CliError::Settings(format!(
                "{flag} {} is not a time: give {}",
                crate::render::line(value),
                leadpipe_core::when::ACCEPTED
            ))
        })
}

/// `leadpipe export`: the local file, or the deployed stack's table; streamed either way.
pub async fn run(args: ExportArgs) -> Result<(), CliError> {
    let filter = leadpipe_local::LeadFilter {
        form_id: args.form.clone(),
        since: args
            .since
            .as_deref()
            .map(|v| contract_time_arg("--since", v))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|v| contract_time_arg("--until", v))
            .transpose()?,
    };
    // Send: the store's scan may run on any worker (the buffer below makes the unlocked
    // handle as cheap as a lock).
    let out: Box<dyn Write + Send> = match &args.out {
        Some(path) => Box::new(create_out(path, args.force)?),
        None => Box::new(std::io::stdout()),
    };
    let out = std::io::BufWriter::new(out);
    let progress = indicatif::ProgressBar::new_spinner();
    if args.out.is_none() {
        // Standard output is the data: no spinner beside it.
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} {pos} leads exported ({per_sec})")
    {
        progress.set_style(style);
    }
    let mut writer = Counted {
        rows: RowWriter::new(args.format, out),
        progress: &progress,
    };
    let written = if args.stack.is_some() || args.leads_table.is_some() {
        let config = leadpipe_aws::sdk_config().await;
        let names = crate::operate::AwsNames {
            leads_table: args.leads_table.clone(),
            ..Default::default()
        }
        .over_stack(&config, args.stack.as_deref())
        .await
        .map_err(|e| CliError::Unreachable(e.to_string()))?;
        let scan = leadpipe_aws::export::StackLeads {
            client: leadpipe_aws::DynamoClient::new(&config),
            table: names.leads_table.clone().ok_or_else(|| {
                CliError::Settings("the stack has no LeadsTableName output".into())
            })?,
            state_table: names.state_table.clone(),
        };
        export(&scan, &filter, args.labels, &mut writer)
            .await
            .map_err(unreachable)?
    } else {
        if !args.db.exists() {
            return Err(CliError::Settings(format!(
                "{} does not exist",
                args.db.display()
            )));
        }
        let db = LocalDb::open_read_only(&args.db)?;
        export(&db, &filter, args.labels, &mut writer).await?
    };
    writer.rows.finish()?;
    progress.finish_and_clear();
    tracing::info!(leads = written, "export done");
    Ok(())
}

/// The printer, ticking the spinner at each lead.
struct Counted<'a, W: Write> {
    rows: RowWriter<W>,
    progress: &'a indicatif::ProgressBar,
}

impl<W: Write + Send> RowSink for Counted<'_, W> {
    type Error = CliError;

    fn wants_columns(&self) -> bool {
        self.rows.wants_columns()
    }

    fn columns(&mut self, answers: AnswerColumns) -> Result<(), CliError> {
        self.rows.columns(answers)
    }

    fn row(&mut self, row: LeadRow) -> Result<(), CliError> {
        self.progress.inc(1);
        self.rows.row(row)
    }
}

/// The stack's store failing is AWS unreachable (exit 2 with the cause).
fn unreachable(e: CliError) -> CliError {
    match e {
        CliError::Store(e) => CliError::Unreachable(e.to_string()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn cells_that_a_spreadsheet_would_run_are_neutralised_and_round_trip() {
        for value in [
            "=HYPERLINK(\"http://x\")",
            "+1-555-0100",
            "-2+3",
            "+A1",
            "-",
            "+",
            "@SUM(A1)",
            "\tx",
            "\rx",
            "'already quoted",
            "''",
            "plain",
            "",
            "ünïcode",
        ] {
            let encoded = cell(value);
            assert!(
                !encoded.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{value:?} -> {encoded:?}"
            );
            assert_eq!(uncell(&encoded), value);
        }
        assert_eq!(cell("plain"), "plain");
        // What a CRM import needs as it was given: phones and signed numbers.
        for kept in [
            "+15553835705",
            "+1 (555) 383 5705",
            "-12.5",
            "+44 20 7946 0958",
            "-3",
        ] {
            assert_eq!(cell(kept), kept);
        }
    }

    #[test]
    fn csv_header_and_values_are_safe_for_spreadsheets() {
        let row = LeadRow {
            lead_id: "1".into(),
            created_time: "2026-01-01T00:00:00Z".into(),
            page_id: "2".into(),
            form_id: Some("3".into()),
            optional: BTreeMap::from([("ad_name", "=cmd|' /C calc'!A0".to_owned())]),
            is_organic: false,
            fields: BTreeMap::from([
                ("=evil".to_owned(), vec!["@x".to_owned()]),
                ("phone_number".to_owned(), vec!["+15550100".to_owned()]),
            ]),
            custom_disclaimer_responses: serde_json::json!([]),
            raw: "{}".into(),
            source: leadpipe_core::ports::LeadSourceKind::Webhook,
            ingested_at: "2026-01-01T00:00:01Z".into(),
            readable: Default::default(),
        };
        let mut bytes = Vec::new();
        write_csv(&[row], &mut bytes).unwrap_or_else(|e| panic!("{e}"));
        let mut reader = csv::Reader::from_reader(bytes.as_slice());
        let header = reader.headers().cloned().unwrap_or_default();
        let record = reader
            .records()
            .next()
            .and_then(Result::ok)
            .unwrap_or_default();
        for cell in header.iter().chain(record.iter()) {
            assert!(
                !cell.starts_with(['=', '@', '\t', '\r']),
                "unsafe cell {cell:?}"
            );
        }
        assert!(
            header
                .iter()
                .any(|h| h == "'field:=evil" || h == "field:=evil")
        );
        assert!(
            record.iter().any(|c| c == "+15550100"),
            "a phone stays as given"
        );
    }
}
