//! Meta's usage headers: how close the app, page and business use cases are to their rate
//! limits, so callers can slow down before 100% and know how long to wait after it.

use serde::Deserialize;
use std::time::Duration;

/// `X-App-Usage` (and `X-Page-Usage`): percentages of the limit used in the rolling hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct UsagePercent {
    /// Calls made, in percent of the limit.
    #[serde(default)]
    pub call_count: f64,
    /// CPU time used, in percent of the limit.
    #[serde(default)]
    pub total_cputime: f64,
    /// Time used, in percent of the limit.
    #[serde(default)]
    pub total_time: f64,
}

impl UsagePercent {
    /// The highest of the three percentages.
    pub fn max(&self) -> f64 {
        self.call_count.max(self.total_cputime).max(self.total_time)
    }
}

/// One entry of `X-Business-Use-Case-Usage`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct BusinessUsage {
    /// The business the entry is about (the header's key).
    #[serde(skip)]
    pub business_id: String,
    /// The use case, e.g. `leadgen`, `pages`, `ads_management`.
    #[serde(rename = "type", default)]
    pub use_case: String,
    /// Calls made, in percent of the limit.
    #[serde(default)]
    pub call_count: f64,
    /// CPU time used, in percent of the limit.
    #[serde(default)]
    pub total_cputime: f64,
    /// Time used, in percent of the limit.
    #[serde(default)]
    pub total_time: f64,
    /// Minutes until calls are allowed again; 0 when not throttled.
    #[serde(default)]
    pub estimated_time_to_regain_access: f64,
}

/// Everything the usage headers of one response said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// `X-App-Usage`.
    pub app: Option<UsagePercent>,
    /// `X-Page-Usage`.
    pub page: Option<UsagePercent>,
    /// `X-Business-Use-Case-Usage`, one entry per business and use case.
    pub business: Vec<BusinessUsage>,
}

impl Usage {
    /// Reads `X-App-Usage`, `X-Page-Usage` and `X-Business-Use-Case-Usage`; a header that
    /// is absent or unreadable is left out rather than failing the call.
    #[cfg(feature = "client")]
    pub fn from_headers(headers: &reqwest::header::HeaderMap) -> Self {
        let json = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let app = json("x-app-usage").and_then(|v| serde_json::from_str(v).ok());
        let page = json("x-page-usage").and_then(|v| serde_json::from_str(v).ok());
        let business = json("x-business-use-case-usage")
            .and_then(|v| {
                serde_json::from_str::<std::collections::BTreeMap<String, Vec<BusinessUsage>>>(v)
                    .ok()
            })
            .map(|by_business| {
                by_business
                    .into_iter()
                    .flat_map(|(id, entries)| {
                        entries.into_iter().map(move |mut e| {
                            e.business_id = id.clone();
                            e
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            app,
            page,
            business,
        }
    }

    /// Whether any usage header was present.
    pub fn is_empty(&self) -> bool {
        self.app.is_none() && self.page.is_none() && self.business.is_empty()
    }

    /// The highest percentage any header reported.
    pub fn max_percent(&self) -> f64 {
        let business = self
            .business
            .iter()
            .map(|b| b.call_count.max(b.total_cputime).max(b.total_time));
        [self.app.map(|a| a.max()), self.page.map(|p| p.max())]
            .into_iter()
            .flatten()
            .chain(business)
            .fold(0.0, f64::max)
    }

    /// Meta's own estimate of when access returns, when it gave one.
    pub fn regain_access_after(&self) -> Option<Duration> {
        self.business
            .iter()
            .map(|b| b.estimated_time_to_regain_access)
            .filter(|m| m.is_finite() && *m > 0.0)
            .fold(None, |acc: Option<f64>, m| {
                Some(acc.map_or(m, |a| a.max(m)))
            })
            .map(|minutes| Duration::from_secs_f64(minutes * 60.0))
    }

    /// How long a careful caller waits before its next call: Meta's estimate when it gave
    /// one; otherwise a pause that grows as usage nears 100% (Meta's windows roll over an
    /// hour, so at 100% a few minutes is the least that helps).
    pub fn suggested_wait(&self) -> Duration {
        if let Some(wait) = self.regain_access_after() {
            return wait;
        }
        match self.max_percent() {
            p if p >= 100.0 => Duration::from_secs(300),
            p if p >= 95.0 => Duration::from_secs(60),
            p if p >= 85.0 => Duration::from_secs(5),
            _ => Duration::ZERO,
        }
    }
}

#[cfg(all(test, feature = "client"))]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn reads_all_three_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-app-usage",
            HeaderValue::from_static(r#"{"call_count":28,"total_time":25,"total_cputime":91}"#),
        );
        headers.insert(
            "x-business-use-case-usage",
            HeaderValue::from_static(
                r#"{"1122":[{"type":"leadgen","call_count":100,"total_cputime":10,"total_time":10,"estimated_time_to_regain_access":7}],"3344":[{"type":"pages","call_count":3,"total_cputime":1,"total_time":1,"estimated_time_to_regain_access":0}]}"#,
            ),
        );
        let usage = Usage::from_headers(&headers);
        assert_eq!(usage.app.map(|a| a.max()), Some(91.0));
        assert_eq!(usage.business.len(), 2);
        assert_eq!(usage.business[0].business_id, "1122");
        assert_eq!(usage.business[0].use_case, "leadgen");
        assert_eq!(usage.max_percent(), 100.0);
        assert_eq!(usage.regain_access_after(), Some(Duration::from_secs(420)));
        assert_eq!(usage.suggested_wait(), Duration::from_secs(420));
    }

    #[test]
    fn grows_the_wait_as_usage_nears_the_limit() {
        let at = |pct: f64| Usage {
            app: Some(UsagePercent {
                call_count: pct,
                ..UsagePercent::default()
            }),
            ..Usage::default()
        };
        assert_eq!(at(10.0).suggested_wait(), Duration::ZERO);
        assert_eq!(at(90.0).suggested_wait(), Duration::from_secs(5));
        assert_eq!(at(99.0).suggested_wait(), Duration::from_secs(60));
        assert_eq!(at(120.0).suggested_wait(), Duration::from_secs(300));
    }

    #[test]
    fn unreadable_headers_are_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert("x-app-usage", HeaderValue::from_static("not json"));
        assert!(Usage::from_headers(&headers).is_empty());
    }
}
