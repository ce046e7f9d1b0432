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
/// The multiple-choice question's option keys (what `field_data` carries).
const SERVICES: [&str; 4] = ["oil_change", "tyres", "brakes", "inspection"];
/// The labels a person sees for [`SERVICES`], per locale.
const SERVICE_LABELS_EN: [&str; 4] = ["Oil change", "Tyres", "Brakes", "Inspection"];
const SERVICE_LABELS_PT: [&str; 4] = ["Troca de óleo", "Pneus", "Travões", "Inspeção"];

/// A form's locale: the first page's forms are American English, the others Brazilian
/// Portuguese (phones written in each country's ways).
pub fn form_locale(page_index: usize) -> &'static str {
    if page_index == 0 { "en_US" } else { "pt_BR" }
}

/// A form as `GET /{form-id}` and `leadgen_forms` serve it: every kind of question Meta
/// has (standard, short answer, multiple choice with option keys, a conditional question
/// with a dependent one, appointment, store locator) and a custom disclaimer, in `locale`.
pub fn form_json(form_id: &str, page_id: &str, locale: &str, created: i64) -> Value {
    let pt = locale == "pt_BR";
    let label = |en: &str, pt_text: &str| {
        if pt {
            pt_text.to_owned()
        } else {
            en.to_owned()
        }
    };
    let services = if pt {
        SERVICE_LABELS_PT
    } else {
        SERVICE_LABELS_EN
    };
    json!({
        "id": form_id,
        "name": if pt { format!("Orçamento oficina {form_id}") } else { format!("Service quote {form_id}") },
        "status": "ACTIVE",
        "locale": locale,
        "created_time": graph_time(created),
        "page": {"id": page_id, "name": format!("Page {page_id}")},
        "privacy_policy_url": "https://example.com/privacy",
        "questions": [
            {"key": "full_name", "label": label("Full name", "Nome completo"), "type": "FULL_NAME"},
            {"key": "email", "label": label("Email", "E-mail"), "type": "EMAIL"},
            {"key": "phone_number", "label": label("Phone number", "Número de telefone"), "type": "PHONE"},
            {"key": "city", "label": label("City", "Cidade"), "type": "CITY"},
            {"key": "services", "label": label("Which services do you need?", "De que serviços precisa?"), "type": "CUSTOM",
             "options": SERVICES.iter().zip(services).map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>()},
            {"key": "vehicle_type", "label": label("Vehicle type", "Tipo de veículo"), "type": "CUSTOM",
             "conditional_questions_group_id": "1200000000000001",
             "options": [{"key": "car", "value": label("Car", "Carro")}, {"key": "van", "value": label("Van", "Carrinha")}],
             "dependent_conditional_questions": [
                {"key": "vehicle_year", "label": label("Year of the vehicle", "Ano do veículo"), "type": "CUSTOM"}]},
            {"key": "anything_else", "label": label("Anything else we should know?", "Mais alguma coisa?"), "type": "CUSTOM"},
            {"key": "appointment", "label": label("Pick a time", "Escolha um horário"), "type": "DATE_TIME"},
            {"key": "selected_dealer", "label": label("Nearest workshop", "Oficina mais próxima"), "type": "STORE_LOOKUP"}
        ],
        "legal_content": {"custom_disclaimer": {"checkboxes": [
            {"key": "marketing_opt_in", "is_required": false, "is_checked_by_default": false},
            {"key": "terms", "is_required": true, "is_checked_by_default": false}]}}
    })
}

/// A phone number the way people type them into a form of `locale`, varied by `n`.
fn written_phone(locale: &str, n: u32) -> String {
    let line = n % 10_000;
    if locale == "pt_BR" {
        let (a, b) = (91_000 + n % 9_000, line);
        match n % 4 {
            0 => format!("+55 11 {a}-{b:04}"),
            1 => format!("(11) {a}-{b:04}"),
            2 => format!("11{a}{b:04}"),
            _ => format!("011 {a} {b:04}"),
        }
    } else {
        match n % 5 {
            0 => format!("+1555{:07}", n % 10_000_000),
            1 => format!("(212) 555-{line:04}"),
            2 => format!("212.555.{line:04}"),
            3 => format!("1 212 555 {line:04}"),
            _ => format!("+1 212-555-{line:04}"),
        }
    }
}

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
        let per_page = spec.forms_per_page.max(1);
        for i in 0..spec.leads {
            let (page_id, form_id, _) = &forms[i % forms.len()];
            let locale = form_locale((i % forms.len()) / per_page);
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
                    {"name": "phone_number", "values": [written_phone(locale, rng.u32(..10_000_000))]},
                    {"name": "city", "values": [CITIES[rng.usize(..CITIES.len())]]},
                    {"name": "services", "values": services},
                    {"name": "vehicle_type", "values": [if i % 2 == 0 { "car" } else { "van" }]},
                    {"name": "vehicle_year", "values": [format!("{}", 2010 + i % 15)]},
                    {"name": "anything_else", "values": [if i % 3 == 0 { "Please call after 6pm" } else { "" }]},
                    {"name": "appointment", "values": [graph_time(created_time + 86_400)]},
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

/// The E.164 number of a phone [`written_phone`] wrote (the sandbox's own formats only:
/// a test oracle, not a normaliser).
fn written_e164(locale: &str, written: &str) -> Option<String> {
    let digits: String = written.chars().filter(char::is_ascii_digit).collect();
    let national = if locale == "pt_BR" {
        digits
            .strip_prefix("55")
            .filter(|_| written.starts_with('+'))
            .or_else(|| digits.strip_prefix('0'))
            .unwrap_or(&digits)
            .to_owned()
    } else {
        digits
            .strip_prefix('1')
            .filter(|rest| rest.len() == 10)
            .unwrap_or(&digits)
            .to_owned()
    };
    let code = if locale == "pt_BR" { "55" } else { "1" };
    let lengths = if locale == "pt_BR" { 10..=11 } else { 10..=10 };
    lengths
        .contains(&national.len())
        .then(|| format!("+{code}{national}"))
}

impl Dataset {
    /// Checks a lead event's readable parts against this world: `form_name` and each
    /// answer's label are the form's, multiple-choice values are the options' text, the
    /// contact is the lead's email lower-cased and its phone in E.164. `Err` says what differs
    /// (ids and labels, never a value).
    pub fn check_readable(&self, event: &Value) -> Result<(), String> {
        let lead_id = event["lead_id"].as_str().unwrap_or_default();
        let lead = self
            .lead(lead_id)
            .ok_or_else(|| format!("{lead_id}: not a lead of the sandbox"))?;
        let page_index = self
            .pages
            .iter()
            .position(|(p, _)| p == &lead.page_id)
            .unwrap_or(0);
        let locale = form_locale(page_index);
        let created = self
            .forms
            .iter()
            .find(|(_, f, _)| f == &lead.form_id)
            .map(|(_, _, c)| *c)
            .unwrap_or(0);
        let form = form_json(&lead.form_id, &lead.page_id, locale, created);
        if event["form_name"] != form["name"] {
            return Err(format!("{lead_id}: form_name is not the form's name"));
        }
        let questions = form["questions"].as_array().cloned().unwrap_or_default();
        let mut all: Vec<Value> = Vec::new();
        for q in &questions {
            all.push(q.clone());
            if let Some(dependents) = q["dependent_conditional_questions"].as_array() {
                all.extend(dependents.iter().cloned());
            }
        }
        let answers = event["answers"].as_array().cloned().unwrap_or_default();
        for field in lead.json["field_data"].as_array().into_iter().flatten() {
            let key = field["name"].as_str().unwrap_or_default();
            let question = all.iter().find(|q| q["key"] == key);
            let answer = answers
                .iter()
                .find(|a| a["key"] == key)
                .ok_or_else(|| format!("{lead_id}: no answer for {key}"))?;
            let label = question.map_or(key, |q| q["label"].as_str().unwrap_or(key));
            if answer["label"] != label {
                return Err(format!("{lead_id}: {key} is not labelled {label:?}"));
            }
            let shown: Vec<Value> = field["values"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    question
                        .and_then(|q| q["options"].as_array())
                        .and_then(|o| o.iter().find(|o| &o["key"] == v))
                        .map_or_else(|| v.clone(), |o| o["value"].clone())
                })
                .collect();
            if answer["values"] != Value::Array(shown) {
                return Err(format!("{lead_id}: {key}'s values are not the shown ones"));
            }
        }
        let given = |key: &str| {
            lead.json["field_data"]
                .as_array()
                .and_then(|f| f.iter().find(|f| f["name"] == key))
                .and_then(|f| f["values"][0].as_str())
                .unwrap_or_default()
                .to_owned()
        };
        if event["contact"]["email"] != given("email").to_lowercase().as_str() {
            return Err(format!(
                "{lead_id}: contact.email is not the email lower-cased"
            ));
        }
        let phone = given("phone_number");
        match written_e164(locale, &phone).filter(|_| !phone.is_empty()) {
            None if phone.is_empty() => {}
            Some(e164) if event["contact"]["phone"] != e164.as_str() => {
                return Err(format!(
                    "{lead_id}: contact.phone is not the E.164 number ({locale})"
                ));
            }
            None if event["contact"]["phone_as_given"] != phone.as_str() => {
                return Err(format!(
                    "{lead_id}: an unreadable phone is not kept as given"
                ));
            }
            _ => {}
        }
        if event["contact"]["full_name"] != given("full_name").as_str()
            || event["contact"]["city"] != given("city").as_str()
        {
            return Err(format!("{lead_id}: contact's name or city differs"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_writes_phones_in_each_countrys_ways() {
        let us: Vec<String> = (0..5).map(|n| written_phone("en_US", 1234 + n)).collect();
        assert_eq!(us.len(), 5);
        for written in &us {
            assert!(written_e164("en_US", written).is_some(), "{written}");
        }
        assert_eq!(
            written_e164("en_US", "(212) 555-1234").as_deref(),
            Some("+12125551234")
        );
        for n in 0..4 {
            let written = written_phone("pt_BR", 5000 + n);
            let e164 = written_e164("pt_BR", &written).unwrap();
            assert!(
                e164.starts_with("+5511") && e164.len() == 14,
                "{written} -> {e164}"
            );
        }
    }
}
