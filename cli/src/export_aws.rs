//! `leadpipe export --leads-table/--stack`: the deployed table's leads in the local export's
//! formats, read by `leadpipe_aws::export` (two passes for CSV: the field names, then the
//! leads, streamed).

use crate::CliError;
use crate::export::{AnswerColumns, Format, RowWriter};
use leadpipe_local::LeadFilter;
use std::io::Write;

/// Exports the table's leads `filter` selects; returns how many. With `labels`, the
/// answer columns are headed by the catalog's labels (the state table's forms).
pub async fn export<W: Write>(
    config: &aws_config::SdkConfig,
    names: &crate::operate::AwsNames,
    filter: &LeadFilter,
    format: Format,
    labels: bool,
    out: W,
    progress: &indicatif::ProgressBar,
) -> Result<usize, CliError> {
    let table = names
        .leads_table
        .as_deref()
        .ok_or_else(|| CliError::Settings("the stack has no LeadsTableName output".into()))?;
    let client = leadpipe_aws::DynamoClient::new(config);
    let unreachable = |e: leadpipe_core::ports::StoreError| CliError::Unreachable(e.to_string());
    let keys = if format == Format::Csv {
        leadpipe_aws::export::field_names(&client, table, filter)
            .await
            .map_err(unreachable)?
    } else {
        Default::default()
    };
    let answers = match (labels, &names.state_table) {
        (true, Some(state)) => AnswerColumns::by_label(
            keys,
            &leadpipe_aws::export::catalog(&client, state)
                .await
                .map_err(unreachable)?,
        ),
        (true, None) => AnswerColumns::by_label(keys, &[]),
        (false, _) => AnswerColumns::by_key(keys),
    };
    let mut writer = RowWriter::new(format, answers, out)?;
    let written = leadpipe_aws::export::each_lead(&client, table, filter, |row| {
        writer.write(&row)?;
        progress.inc(1);
        Ok::<_, CliError>(())
    })
    .await?;
    writer.finish()?;
    Ok(written)
}
