//! What to ask of a form's or an ad's leads: `filtering` on `time_created` and a page size.

/// The operators `filtering` takes on `time_created`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeOperator {
    /// `LESS_THAN`.
    LessThan,
    /// `GREATER_THAN`.
    GreaterThan,
    /// `GREATER_THAN_OR_EQUAL`.
    GreaterThanOrEqual,
}

impl TimeOperator {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::LessThan => "LESS_THAN",
            Self::GreaterThan => "GREATER_THAN",
            Self::GreaterThanOrEqual => "GREATER_THAN_OR_EQUAL",
        }
    }
}

/// One `filtering` clause on `time_created` (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeFilter {
    /// How `time_created` is compared.
    pub operator: TimeOperator,
    /// Unix seconds.
    pub value: i64,
}

/// What to ask of a form's or an ad's leads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeadQuery {
    /// Combined with AND, as Graph does.
    pub filters: Vec<TimeFilter>,
    /// Page size; Graph's default when `None`.
    pub limit: Option<u32>,
}

impl LeadQuery {
    /// Adds a `time_created` clause.
    pub fn with_time(mut self, operator: TimeOperator, value: i64) -> Self {
        self.filters.push(TimeFilter { operator, value });
        self
    }

    /// Sets the page size.
    pub fn with_limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    pub(super) fn filtering(&self) -> Option<String> {
        if self.filters.is_empty() {
            return None;
        }
        let clauses: Vec<serde_json::Value> = self
            .filters
            .iter()
            .map(|f| serde_json::json!({"field": "time_created", "operator": f.operator.as_str(), "value": f.value}))
            .collect();
        Some(serde_json::Value::Array(clauses).to_string())
    }
}
