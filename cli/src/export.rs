//! `leadpipe export`: the leads as CSV (one column per form field) or JSON lines.

use crate::CliError;
use leadpipe_local::{LeadRow, LocalDb, OPTIONAL_COLUMNS};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
}

/// Arguments of `leadpipe export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[arg(long, env = "LEADPIPE_DB", default_value = "leadpipe.db")]
    pub db: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    pub format: Format,
    /// Output file (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The fixed columns before the form fields.
pub const FIXED_COLUMNS: [&str; 5] = [
    "lead_id",
    "created_time",
    "page_id",
    "form_id",
    "is_organic",
];
/// The columns after the form fields.
pub const TRAILING_COLUMNS: [&str; 4] = [
    "custom_disclaimer_responses",
    "source",
    "ingested_at",
    "raw",
];
/// Prefix of the per-field columns.
pub const FIELD_PREFIX: &str = "field:";

/// A field's values in one CSV cell: the value itself when there is exactly one, else a
/// JSON array (so several values, and none, survive the trip).
pub fn encode_values(values: &[String]) -> String {
    match values {
        [one] if !one.starts_with('[') => one.clone(),
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

/// Writes `rows` as CSV.
pub fn write_csv<W: Write>(rows: &[LeadRow], out: W) -> Result<(), CliError> {
    let fields: BTreeSet<&str> = rows
        .iter()
        .flat_map(|r| r.fields.keys().map(String::as_str))
        .collect();
    let mut writer = csv::Writer::from_writer(out);
    let mut header: Vec<String> = FIXED_COLUMNS.iter().map(|s| s.to_string()).collect();
    header.extend(OPTIONAL_COLUMNS.iter().map(|s| s.to_string()));
    header.extend(fields.iter().map(|f| format!("{FIELD_PREFIX}{f}")));
    header.extend(TRAILING_COLUMNS.iter().map(|s| s.to_string()));
    let fail = |e: csv::Error| CliError::Failed(format!("CSV: {e}"));
    writer.write_record(&header).map_err(fail)?;
    for row in rows {
        let mut record = vec![
            row.lead_id.clone(),
            row.created_time.clone(),
            row.page_id.clone(),
            row.form_id.clone(),
            row.is_organic.to_string(),
        ];
        record.extend(
            OPTIONAL_COLUMNS
                .iter()
                .map(|c| row.optional.get(c).cloned().unwrap_or_default()),
        );
        record.extend(fields.iter().map(|f| {
            row.fields
                .get(*f)
                .map(|v| encode_values(v))
                .unwrap_or_default()
        }));
        record.push(row.custom_disclaimer_responses.to_string());
        record.push(row.source.clone());
        record.push(row.ingested_at.clone());
        record.push(row.raw.clone());
        writer.write_record(&record).map_err(fail)?;
    }
    writer
        .flush()
        .map_err(|e| CliError::Failed(format!("CSV: {e}")))
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
    object
}

/// `leadpipe export`.
pub fn run(args: ExportArgs) -> Result<(), CliError> {
    if !args.db.exists() {
        return Err(CliError::Settings(format!(
            "{} does not exist",
            args.db.display()
        )));
    }
    let db = LocalDb::open(&args.db).map_err(|e| CliError::Settings(e.to_string()))?;
    let rows = db.leads().map_err(CliError::Failed)?;
    let out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .map_err(|e| CliError::Failed(format!("{}: {e}", path.display())))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = std::io::BufWriter::new(out);
    match args.format {
        Format::Csv => write_csv(&rows, &mut out)?,
        Format::Jsonl => {
            for row in &rows {
                writeln!(out, "{}", row_json(row)).map_err(|e| CliError::Failed(e.to_string()))?;
            }
        }
    }
    out.flush().map_err(|e| CliError::Failed(e.to_string()))
}
