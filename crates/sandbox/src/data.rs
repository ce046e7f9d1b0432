//! Generated pages, forms and leads, deterministic for a seed.

use serde_json::{Value, json};

/// How much to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetSpec {
    /// Pages, each with its own token.
    pub pages: usize,
    /// Forms on each page.
    pub forms_per_page: usize,
    /// Leads in all, spread over the forms.
    pub leads: usize,
    /// One lead in this many is organic (no ad).
    pub organic_every: usize,
    /// The same seed makes the same world.
    pub seed: u64,
    /// Unix seconds of the newest lead; the others go back a minute each.
    pub newest: i64,
}

impl Default for DatasetSpec {
    fn default() -> Self {
        Self {
            pages: 2,
            forms_per_page: 2,
            leads: 100,
            organic_every: 7,
            seed: 7,
            newest: 1_764_390_000,
        }
    }
}

/// One generated lead and where it lives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SandboxLead {
    /// The lead's Graph id.
    pub id: String,
    /// Its page.
    pub page_id: String,
    /// Its form.
    pub form_id: String,
    /// Its ad, for a paid lead.
    pub ad_id: Option<String>,
    /// Its ad group, for a paid lead.
    pub adgroup_id: Option<String>,
    /// When it was created, unix seconds.
    pub created_time: i64,
    /// The lead exactly as the stand-in serves it.
    pub json: Value,
}

/// The stand-in's world.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// `(page_id, token)`.
    pub pages: Vec<(String, String)>,
    /// `(page_id, form_id, created_time)`.
    pub forms: Vec<(String, String, i64)>,
    /// Every lead, oldest first.
    pub leads: Vec<SandboxLead>,
    /// Lead id to its place in `leads`.
    index: std::collections::HashMap<String, usize>,
}

const FIRST: [&str; 8] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken",
];
const LAST: [&str; 8] = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
];
const CITIES: [&str; 5] = ["Lisbon", "Porto", "Austin", "Nairobi", "Osaka"];
const SERVICES: [&str; 4] = ["oil change", "tyres", "brakes", "inspection"];

/// The token the stand-in accepts for a page.
pub fn page_token(page_id: &str) -> String {
    format!("sandbox-page-token-{page_id}")
}

/// Graph's time format, `2015-02-28T08:49:14+0000`.
pub fn graph_time(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+0000",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "1970-01-01T00:00:00+0000".to_owned(),
    }
}

impl Dataset {
    /// Generates the world for `spec`.
    pub fn generate(spec: &DatasetSpec) -> Self {
        Self::generate_with(spec, |lead| lead)
    }

    /// Generates the world for `spec`, passing each lead through `keep` as it is made: the
    /// sandbox serializes each lead's JSON there, so a 100,000-lead world never exists as
    /// `Value` trees all at once (BENCHMARKS.md, demo memory).
    pub fn generate_with(
        spec: &DatasetSpec,
        mut keep: impl FnMut(SandboxLead) -> SandboxLead,
    ) -> Self {
        let mut rng = fastrand::Rng::with_seed(spec.seed);
        let mut data = Dataset::default();
        for p in 0..spec.pages.max(1) {
            let page_id = format!("{}", 104_857_600_000_001u64 + p as u64);
            data.pages.push((page_id.clone(), page_token(&page_id)));
            for f in 0..spec.forms_per_page.max(1) {
                let form_id = format!("{}", 555_000_000_000_000u64 + (p * 100 + f) as u64);
                let oldest = spec.newest - 60 * spec.leads as i64 - 86_400;
                data.forms.push((page_id.clone(), form_id, oldest));
            }
        }
        let forms = data.forms.clone();
        for i in 0..spec.leads {
            let (page_id, form_id, _) = &forms[i % forms.len()];
            let id = format!("{}", 1_900_000_000_000_000u64 + i as u64);
            let organic = spec.organic_every > 0 && i % spec.organic_every == 0;
            let ad_id = (!organic).then(|| format!("{}", 238_000_000_000_000u64 + (i % 5) as u64));
            let created_time = spec.newest - 60 * i as i64;
            let first = FIRST[rng.usize(..FIRST.len())];
            let last = LAST[rng.usize(..LAST.len())];
            let services: Vec<&str> = SERVICES.iter().copied().filter(|_| rng.bool()).collect();
            let services = if services.is_empty() {
                vec![SERVICES[0]]
            } else {
                services
            };
            let mut lead = json!({
                "id": id,
                "created_time": graph_time(created_time),
                "form_id": form_id,
                "field_data": [
                    {"name": "full_name", "values": [format!("{first} {last}")]},
                    {"name": "email", "values": [format!("{}.{}{}@example.com", first.to_lowercase(), last.to_lowercase(), i)]},
                    {"name": "phone_number", "values": [format!("+1555{:07}", rng.u32(..10_000_000))]},
                    {"name": "city", "values": [CITIES[rng.usize(..CITIES.len())]]},
                    {"name": "services", "values": services},
                    {"name": "selected_dealer", "values": [format!("{}", 99_213_000 + rng.u32(..400))]}
                ],
                "custom_disclaimer_responses": [
                    {"checkbox_key": "marketing_opt_in", "is_checked": if rng.bool() { "1" } else { "" }},
                    {"checkbox_key": "terms", "is_checked": "1"}
                ],
                "is_organic": organic,
                "platform": if rng.bool() { "fb" } else { "ig" }
            });
            if let Some(ad) = &ad_id {
                lead["ad_id"] = json!(ad);
                lead["ad_name"] = json!(format!("Ad {ad}"));
                lead["adset_id"] = json!("238000000000100");
                lead["adset_name"] = json!("Drivers 25-54");
                lead["campaign_id"] = json!("238000000000200");
                lead["campaign_name"] = json!("Q4 service");
            }
            data.push(keep(SandboxLead {
                id,
                page_id: page_id.clone(),
                form_id: form_id.clone(),
                adgroup_id: ad_id.clone(),
                ad_id,
                created_time,
                json: lead,
            }));
        }
        data
    }

    /// The lead with this id.
    pub fn lead(&self, id: &str) -> Option<&SandboxLead> {
        self.index.get(id).and_then(|i| self.leads.get(*i))
    }

    /// Adds a lead (a test lead made through the API).
    pub fn push(&mut self, lead: SandboxLead) {
        self.index.insert(lead.id.clone(), self.leads.len());
        self.leads.push(lead);
    }

    /// Removes a lead (a test lead deleted through the API).
    pub fn remove(&mut self, id: &str) {
        if self.index.remove(id).is_some() {
            self.leads.retain(|l| l.id != id);
            self.index = self
                .leads
                .iter()
                .enumerate()
                .map(|(i, l)| (l.id.clone(), i))
                .collect();
        }
    }

    /// The page a token belongs to.
    pub fn page_of_token(&self, token: &str) -> Option<&str> {
        self.pages
            .iter()
            .find(|(_, t)| t == token)
            .map(|(p, _)| p.as_str())
    }
}
