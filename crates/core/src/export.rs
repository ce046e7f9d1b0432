//! `leadpipe export`'s rule, once for every store: which answer columns a CSV has (by
//! field key, or by the questions' labels from the forms catalog), read before the first
//! row so that nothing but the current row is held, and every lead the filter selects
//! handed on as the store's scan yields it. The SQLite file and the stack's table implement
//! [`LeadScan`]; the CLI's printer is the [`RowSink`].

use crate::failure::StoreError;
use crate::forms::Form;
use crate::lead_row::{LeadFilter, LeadRow};
use std::collections::BTreeSet;
use std::future::Future;

/// The CSV header prefix of a form field's column when it is headed by its key.
pub const FIELD_PREFIX: &str = "field:";

/// A store's leads as export reads them: streamed, never all held.
pub trait LeadScan: Send + Sync {
    /// The form field keys of the leads `filter` selects (a CSV's columns).
    fn field_names(
        &self,
        filter: &LeadFilter,
    ) -> impl Future<Output = Result<BTreeSet<String>, StoreError>> + Send;

    /// The forms catalog, for the columns by label.
    fn catalog(&self) -> impl Future<Output = Result<Vec<Form>, StoreError>> + Send;

    /// Hands every lead `filter` selects to `each`, as the store yields them; returns how
    /// many. An error of `each` stops the scan and is returned.
    fn each_lead<E: From<StoreError> + Send>(
        &self,
        filter: &LeadFilter,
        each: impl FnMut(LeadRow) -> Result<(), E> + Send,
    ) -> impl Future<Output = Result<usize, E>> + Send;
}

/// Where exported rows go (the CLI's CSV or JSONL printer).
pub trait RowSink {
    /// The sink's failure; a store's failure becomes one.
    type Error: From<StoreError> + Send;
    /// Whether the answer columns are needed before the first row (CSV's header).
    fn wants_columns(&self) -> bool;
    /// The answer columns, given once before the first row when [`wants_columns`](Self::wants_columns).
    fn columns(&mut self, answers: AnswerColumns) -> Result<(), Self::Error>;
    /// One lead.
    fn row(&mut self, row: LeadRow) -> Result<(), Self::Error>;
}

/// Exports the leads `filter` selects from `scan` into `sink`; returns how many. With
/// `labels`, answer columns are headed by the catalog's labels and hold the choices as the
/// person saw them.
pub async fn export<S: LeadScan, K: RowSink + Send>(
    scan: &S,
    filter: &LeadFilter,
    labels: bool,
    sink: &mut K,
) -> Result<usize, K::Error> {
    if sink.wants_columns() {
        let keys = scan.field_names(filter).await?;
        let answers = if labels {
            AnswerColumns::by_label(keys, &scan.catalog().await?)
        } else {
            AnswerColumns::by_key(keys)
        };
        sink.columns(answers)?;
    }
    scan.each_lead(filter, |row| sink.row(row)).await
}

/// A CSV's answer columns: `(field key, header)` in order, and whether they show the
/// answers as labelled (the choice's text) or as Meta sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerColumns {
    columns: Vec<(String, String)>,
    labels: bool,
}

impl AnswerColumns {
    /// `field:<key>` columns by name, with Meta's raw values.
    pub fn by_key(keys: BTreeSet<String>) -> Self {
        Self {
            columns: keys
                .into_iter()
                .map(|k| {
                    let header = format!("{FIELD_PREFIX}{k}");
                    (k, header)
                })
                .collect(),
            labels: false,
        }
    }

    /// Columns headed by the questions' labels of `forms`, with the choices' text as the
    /// person saw them.
    pub fn by_label(keys: BTreeSet<String>, forms: &[Form]) -> Self {
        Self {
            columns: crate::readable::labelled_columns(forms, &keys),
            labels: true,
        }
    }

    /// The headers, in column order.
    pub fn headers(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|(_, h)| h.as_str())
    }

    /// `row`'s values for each column, in column order: the labelled answer's shown values
    /// when the columns are by label and the lead has them, else Meta's field values.
    pub fn values<'a>(&'a self, row: &'a LeadRow) -> impl Iterator<Item = Option<&'a [String]>> {
        self.columns.iter().map(move |(key, _)| {
            let shown = self
                .labels
                .then(|| row.readable.answers.iter().find(|a| &a.key == key))
                .flatten()
                .map(|a| a.values.as_slice());
            shown.or_else(|| row.fields.get(key).map(Vec::as_slice))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryLeadScan;

    fn row(id: &str, form: &str, fields: &[(&str, &str)]) -> LeadRow {
        LeadRow {
            lead_id: id.into(),
            created_time: "2026-12-01T09:00:00Z".into(),
            page_id: "1".into(),
            form_id: Some(form.into()),
            optional: Default::default(),
            is_organic: false,
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
            custom_disclaimer_responses: serde_json::json!([]),
            raw: "{}".into(),
            source: crate::ports::LeadSourceKind::Webhook,
            ingested_at: "2026-12-01T09:00:01Z".into(),
            readable: Default::default(),
        }
    }

    #[derive(Default)]
    struct Sink {
        csv: bool,
        columns: Vec<Vec<String>>,
        rows: Vec<String>,
        refuse_after: Option<usize>,
    }

    #[derive(Debug, PartialEq)]
    enum SinkError {
        Store,
        Full,
    }

    impl From<StoreError> for SinkError {
        fn from(_: StoreError) -> Self {
            Self::Store
        }
    }

    impl RowSink for Sink {
        type Error = SinkError;
        fn wants_columns(&self) -> bool {
            self.csv
        }
        fn columns(&mut self, answers: AnswerColumns) -> Result<(), SinkError> {
            self.columns
                .push(answers.headers().map(str::to_owned).collect());
            Ok(())
        }
        fn row(&mut self, row: LeadRow) -> Result<(), SinkError> {
            if self.refuse_after == Some(self.rows.len()) {
                return Err(SinkError::Full);
            }
            self.rows.push(row.lead_id);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_csv_gets_its_columns_once_before_the_rows_of_its_filter() {
        let scan = MemoryLeadScan::new(vec![
            row("1", "10", &[("email", "a@x.test")]),
            row("2", "20", &[("phone", "1")]),
            row("3", "10", &[("city", "Lisbon")]),
        ]);
        let filter = LeadFilter {
            form_id: Some("10".into()),
            ..Default::default()
        };
        let mut csv = Sink {
            csv: true,
            ..Default::default()
        };
        assert_eq!(export(&scan, &filter, false, &mut csv).await, Ok(2));
        assert_eq!(csv.columns, vec![vec!["field:city", "field:email"]]);
        assert_eq!(csv.rows, ["1", "3"]);

        // JSONL needs no columns: the scan is read once, without the field-name pass.
        let mut jsonl = Sink::default();
        let before = scan.field_name_reads();
        assert_eq!(
            export(&scan, &LeadFilter::default(), false, &mut jsonl).await,
            Ok(3)
        );
        assert_eq!(scan.field_name_reads(), before);
        assert!(jsonl.columns.is_empty());
    }

    #[tokio::test]
    async fn a_sink_that_fails_stops_the_scan_and_a_store_that_fails_is_its_error() {
        let scan = MemoryLeadScan::new(vec![row("1", "10", &[]), row("2", "10", &[])]);
        let mut full = Sink {
            refuse_after: Some(1),
            ..Default::default()
        };
        assert_eq!(
            export(&scan, &LeadFilter::default(), false, &mut full).await,
            Err(SinkError::Full)
        );
        assert_eq!(full.rows, ["1"]);

        scan.fail();
        let mut csv = Sink {
            csv: true,
            ..Default::default()
        };
        assert_eq!(
            export(&scan, &LeadFilter::default(), true, &mut csv).await,
            Err(SinkError::Store)
        );
        assert!(csv.rows.is_empty());
    }

    #[test]
    fn labelled_columns_show_the_answer_as_seen_and_fall_back_to_the_field() {
        let mut lead = row("1", "10", &[("q", "opt_a"), ("other", "x")]);
        lead.readable.answers = vec![crate::readable::Answer {
            key: "q".into(),
            label: "Question?".into(),
            values: vec!["Option A".into()],
        }];
        let by_key = AnswerColumns::by_key(["other".to_owned(), "q".to_owned()].into());
        let seen: Vec<_> = by_key.values(&lead).collect();
        assert_eq!(seen[1], Some(&["opt_a".to_owned()][..]));
        let labelled = AnswerColumns {
            columns: vec![
                ("q".into(), "Question?".into()),
                ("gone".into(), "Gone".into()),
            ],
            labels: true,
        };
        let seen: Vec<_> = labelled.values(&lead).collect();
        assert_eq!(seen, vec![Some(&["Option A".to_owned()][..]), None]);
    }
}
