//! `leadpipe export --leads-table/--stack`: the deployed table's leads in the local export's
//! formats, read by `leadpipe_aws::export` (two passes for CSV: the field names, then the
//! leads, streamed).

use crate::CliError;
use crate::export::{Format, RowWriter};
use leadpipe_local::LeadFilter;
use std::io::Write;

/// Exports the table's leads `filter` selects; returns how many.
pub async fn export<W: Write>(
    config: &aws_config::SdkConfig,
    table: &str,
    filter: &LeadFilter,
    format: Format,
    out: W,
    progress: &indicatif::ProgressBar,
) -> Result<usize, CliError> {
    let client = leadpipe_aws::DynamoClient::new(config);
    let names = if format == Format::Csv {
        leadpipe_aws::export::field_names(&client, table, filter)
            .await
            .map_err(|e| CliError::Unreachable(e.to_string()))?
    } else {
        Default::default()
    };
    let mut writer = RowWriter::new(format, names, out)?;
    let written = leadpipe_aws::export::each_lead(&client, table, filter, |row| {
        writer.write(&row)?;
        progress.inc(1);
        Ok::<_, CliError>(())
    })
    .await?;
    writer.finish()?;
    Ok(written)
}
