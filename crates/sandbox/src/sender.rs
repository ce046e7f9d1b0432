//! Delivers signed webhook posts as Meta does, including its flaws on purpose: posts
//! dropped, posts delivered twice, deliveries out of order.

use crate::data::SandboxLead;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

/// How to deliver.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    /// The webhook's URL.
    pub url: String,
    /// The app secret posts are signed with.
    pub app_secret: String,
    /// Share of leads never delivered (the backfill must recover them).
    pub drop_rate: f64,
    /// Share of posts delivered twice.
    pub duplicate_rate: f64,
    /// Changes per post (Meta batches several).
    pub changes_per_post: usize,
    /// The same seed drops, duplicates and orders alike.
    pub seed: u64,
    /// Leads per second to send at, evenly paced; `None` sends as fast as answers come.
    pub rate: Option<f64>,
}

/// What was delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendReport {
    /// Posts sent, duplicates included.
    pub posts: usize,
    /// Posts sent a second time.
    pub duplicated_posts: usize,
    /// Leads whose post was answered 2xx at least once.
    pub delivered: BTreeSet<String>,
    /// Leads dropped on purpose.
    pub dropped: BTreeSet<String>,
    /// Posts that never got a 2xx after retries.
    pub failed_posts: usize,
}

/// A Meta-shaped post for these leads (ids as strings, as real payloads send them).
pub fn post_body(leads: &[&SandboxLead], now: i64) -> String {
    let entries: Vec<serde_json::Value> = leads
        .iter()
        .map(|l| {
            let mut value = json!({"leadgen_id": l.id, "page_id": l.page_id, "form_id": l.form_id, "created_time": l.created_time});
            if let Some(ad) = &l.ad_id {
                value["ad_id"] = json!(ad);
            }
            if let Some(adgroup) = &l.adgroup_id {
                value["adgroup_id"] = json!(adgroup);
            }
            json!({"id": l.page_id, "time": now, "changes": [{"field": "leadgen", "value": value}]})
        })
        .collect();
    json!({"object": "page", "entry": entries}).to_string()
}

impl WebhookSender {
    /// Sends every lead (less the dropped ones), calling `progress` with leads handled so far.
    pub async fn send(&self, leads: &[SandboxLead], progress: impl Fn(usize)) -> SendReport {
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let mut order: Vec<&SandboxLead> = leads.iter().collect();
        rng.shuffle(&mut order);
        let mut report = SendReport::default();
        let mut handled = 0;
        let started = tokio::time::Instant::now();
        for chunk in order.chunks(self.changes_per_post.max(1)) {
            if let Some(rate) = self.rate.filter(|r| *r > 0.0) {
                // The schedule, not the last post, sets the next: a slow answer is caught up.
                let due = started + Duration::from_secs_f64(handled as f64 / rate);
                tokio::time::sleep_until(due).await;
            }
            let kept: Vec<&SandboxLead> = chunk
                .iter()
                .copied()
                .filter(|l| {
                    let drop = rng.f64() < self.drop_rate;
                    if drop {
                        report.dropped.insert(l.id.clone());
                    }
                    !drop
                })
                .collect();
            handled += chunk.len();
            if kept.is_empty() {
                progress(handled);
                continue;
            }
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let body = post_body(&kept, now);
            let times = if rng.f64() < self.duplicate_rate {
                2
            } else {
                1
            };
            report.duplicated_posts += times - 1;
            for _ in 0..times {
                report.posts += 1;
                if self.deliver(&client, &body).await {
                    report.delivered.extend(kept.iter().map(|l| l.id.clone()));
                } else {
                    report.failed_posts += 1;
                }
            }
            progress(handled);
        }
        report
    }

    /// One post, retried as Meta retries a non-2xx (here: quickly, three times).
    async fn deliver(&self, client: &reqwest::Client, body: &str) -> bool {
        let signature =
            match leadpipe_core::signature::sign(self.app_secret.as_bytes(), body.as_bytes()) {
                Ok(s) => s,
                Err(_) => return false,
            };
        for attempt in 0..3u64 {
            let sent = client
                .post(&self.url)
                .header("content-type", "application/json")
                .header("x-hub-signature-256", &signature)
                .body(body.to_owned())
                .send()
                .await;
            if sent.is_ok_and(|r| r.status().is_success()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
        }
        false
    }
}
