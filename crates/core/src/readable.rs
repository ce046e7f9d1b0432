//! A lead as a salesperson reads it: the form's name, each answer under its question's label
//! with option keys shown as the choices the person saw, and a normalised contact. Made once,
//! when the lead is first stored, from the form's version at that time, and kept with the
//! lead: the event, the export and the lookup keys all read this one value
//! (docs/leads-out.md, "Readable parts").

use crate::contact::{Phone, Region, normalise_email, normalise_phone};
use crate::forms::{Form, QuestionKind};
use leadpipe_graph::FieldData;
use serde::{Deserialize, Serialize};

/// One answer, in the form's order.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The field name (`field_data`'s `name`).
    pub key: String,
    /// The question as the person saw it; the key when the form is not known.
    pub label: String,
    /// Every value, option keys turned into the choices' text.
    pub values: Vec<String>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("key", &self.key)
            .field("values", &self.values.len())
            .finish_non_exhaustive()
    }
}

/// The person, from Meta's standard questions; each part absent when the form did not ask.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// Trimmed, lower-case ([`normalise_email`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// E.164, read with the form's country for numbers written without `+`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// The phone answer as given, when it could not be read as a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_as_given: Option<String>,
    /// Full name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    /// First name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// City.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// State or province.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// ZIP or post code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zip: Option<String>,
    /// Country.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

impl std::fmt::Debug for Contact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Which parts there are, never what they say.
        f.debug_struct("Contact")
            .field(
                "parts",
                &self.parts().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Contact {
    /// The part names, in the contract's order.
    pub const PARTS: [&'static str; 10] = [
        "email",
        "phone",
        "phone_as_given",
        "full_name",
        "first_name",
        "last_name",
        "city",
        "state",
        "zip",
        "country",
    ];

    /// A part by name (`email`, `phone`, ...).
    pub fn part(&self, name: &str) -> Option<&str> {
        match name {
            "email" => self.email.as_deref(),
            "phone" => self.phone.as_deref(),
            "phone_as_given" => self.phone_as_given.as_deref(),
            "full_name" => self.full_name.as_deref(),
            "first_name" => self.first_name.as_deref(),
            "last_name" => self.last_name.as_deref(),
            "city" => self.city.as_deref(),
            "state" => self.state.as_deref(),
            "zip" => self.zip.as_deref(),
            "country" => self.country.as_deref(),
            _ => None,
        }
    }

    /// The parts present, in order.
    pub fn parts(&self) -> impl Iterator<Item = (&'static str, &str)> {
        Self::PARTS
            .into_iter()
            .filter_map(|name| self.part(name).map(|v| (name, v)))
    }

    /// Whether no part is present.
    pub fn is_empty(&self) -> bool {
        self.parts().next().is_none()
    }

    fn slot(&mut self, part: Part) -> &mut Option<String> {
        match part {
            Part::Email | Part::WorkEmail => &mut self.email,
            Part::Phone | Part::WorkPhone => &mut self.phone,
            Part::FullName => &mut self.full_name,
            Part::FirstName => &mut self.first_name,
            Part::LastName => &mut self.last_name,
            Part::City => &mut self.city,
            Part::State => &mut self.state,
            Part::Zip => &mut self.zip,
            Part::Country => &mut self.country,
        }
    }
}

/// What a question says about the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Email,
    WorkEmail,
    Phone,
    WorkPhone,
    FullName,
    FirstName,
    LastName,
    City,
    State,
    Zip,
    Country,
}

impl Part {
    /// A personal answer wins over a work one for the same slot.
    fn is_work(self) -> bool {
        matches!(self, Self::WorkEmail | Self::WorkPhone)
    }

    fn of_kind(kind: &QuestionKind) -> Option<Self> {
        Some(match kind {
            QuestionKind::Email => Self::Email,
            QuestionKind::WorkEmail => Self::WorkEmail,
            QuestionKind::Phone => Self::Phone,
            QuestionKind::WorkPhone => Self::WorkPhone,
            QuestionKind::FullName => Self::FullName,
            QuestionKind::FirstName => Self::FirstName,
            QuestionKind::LastName => Self::LastName,
            QuestionKind::City => Self::City,
            QuestionKind::State | QuestionKind::Province => Self::State,
            QuestionKind::Zip | QuestionKind::PostCode => Self::Zip,
            QuestionKind::Country => Self::Country,
            _ => return None,
        })
    }

    /// Meta's standard field names, for a lead whose form is not known.
    fn of_key(key: &str) -> Option<Self> {
        Some(match key {
            "email" => Self::Email,
            "work_email" => Self::WorkEmail,
            "phone_number" | "phone" => Self::Phone,
            "work_phone_number" => Self::WorkPhone,
            "full_name" => Self::FullName,
            "first_name" => Self::FirstName,
            "last_name" => Self::LastName,
            "city" => Self::City,
            "state" | "province" => Self::State,
            "zip_code" | "post_code" | "zip" | "postal_code" => Self::Zip,
            "country" => Self::Country,
            _ => return None,
        })
    }
}

/// The readable parts of one lead.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readable {
    /// The form's name, when the form is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form_name: Option<String>,
    /// Every answer: the form's questions first, in its order, then fields it does not list.
    #[serde(default)]
    pub answers: Vec<Answer>,
    /// The person.
    #[serde(default)]
    pub contact: Contact,
}

impl Readable {
    /// The lead's answers read against its form (or by key alone when the form is not known).
    pub fn of(fields: &[FieldData], form: Option<&Form>) -> Self {
        let region = form
            .and_then(|f| f.locale.as_deref())
            .and_then(Region::from_locale);
        let mut answers: Vec<(Answer, Option<Part>)> = Vec::new();
        let push = |answers: &mut Vec<(Answer, Option<Part>)>,
                    key: &str,
                    label: &str,
                    values: Vec<String>,
                    part: Option<Part>| {
            // A name Graph repeats keeps every value, as `fields` does.
            if let Some((existing, _)) = answers.iter_mut().find(|(a, _)| a.key == key) {
                existing.values.extend(values);
            } else {
                answers.push((
                    Answer {
                        key: key.to_owned(),
                        label: label.to_owned(),
                        values,
                    },
                    part,
                ));
            }
        };
        let given = |key: &str| -> Vec<&String> {
            fields
                .iter()
                .filter(|f| f.name == key)
                .flat_map(|f| &f.values)
                .collect()
        };
        if let Some(form) = form {
            for question in &form.questions {
                let values = given(&question.key);
                if values.is_empty() {
                    continue;
                }
                let shown = values
                    .into_iter()
                    .map(|v| {
                        question
                            .options
                            .iter()
                            .find(|o| &o.key == v)
                            .map_or_else(|| v.clone(), |o| o.value.clone())
                    })
                    .collect();
                let part = Part::of_kind(&question.kind).or_else(|| Part::of_key(&question.key));
                push(&mut answers, &question.key, &question.label, shown, part);
            }
        }
        for field in fields {
            let listed = form.is_some_and(|f| f.question(&field.name).is_some());
            if !listed {
                push(
                    &mut answers,
                    &field.name,
                    &field.name,
                    field.values.clone(),
                    Part::of_key(&field.name),
                );
            }
        }
        let mut contact = Contact::default();
        let mut from_work: [bool; 2] = [false, false];
        for (answer, part) in &answers {
            let Some(part) = *part else { continue };
            let Some(first) = answer
                .values
                .iter()
                .map(|v| v.trim())
                .find(|v| !v.is_empty())
            else {
                continue;
            };
            // The first personal answer fills a slot; a work answer only an empty one.
            let work_flag = match part {
                Part::Email | Part::WorkEmail => Some(0),
                Part::Phone | Part::WorkPhone => Some(1),
                _ => None,
            };
            let filled = match part {
                Part::Phone | Part::WorkPhone => {
                    contact.phone.is_some() || contact.phone_as_given.is_some()
                }
                other => contact.slot(other).is_some(),
            };
            let replace = filled && !part.is_work() && work_flag.is_some_and(|i| from_work[i]);
            if filled && !replace {
                continue;
            }
            if let Some(i) = work_flag {
                from_work[i] = part.is_work();
            }
            match part {
                Part::Phone | Part::WorkPhone => match normalise_phone(first, region) {
                    Some(Phone::E164(number)) => {
                        contact.phone = Some(number);
                        contact.phone_as_given = None;
                    }
                    Some(Phone::AsGiven(text)) => {
                        contact.phone = None;
                        contact.phone_as_given = Some(text);
                    }
                    None => {}
                },
                Part::Email | Part::WorkEmail => contact.email = normalise_email(first),
                other => *contact.slot(other) = Some(first.to_owned()),
            }
        }
        Self {
            form_name: form.and_then(|f| f.name.clone()),
            answers: answers.into_iter().map(|(a, _)| a).collect(),
            contact,
        }
    }
}

/// The answer columns of an export headed by question labels: the forms' questions (forms by
/// id, each in its own order) among `keys` (the field names the exported leads have), then
/// keys no form lists, by name. Each is `(key, header)`: the label, or `label (key)` when
/// two columns would share a header, or the key when no form names it.
pub fn labelled_columns(
    forms: &[Form],
    keys: &std::collections::BTreeSet<String>,
) -> Vec<(String, String)> {
    let mut forms: Vec<&Form> = forms.iter().collect();
    forms.sort_by(|a, b| a.id.cmp(&b.id));
    let mut columns: Vec<(String, String)> = Vec::new();
    for form in forms {
        for q in &form.questions {
            if keys.contains(&q.key) && !columns.iter().any(|(k, _)| k == &q.key) {
                columns.push((q.key.clone(), q.label.clone()));
            }
        }
    }
    for key in keys {
        if !columns.iter().any(|(k, _)| k == key) {
            columns.push((key.clone(), key.clone()));
        }
    }
    let headers: Vec<String> = columns.iter().map(|(_, h)| h.clone()).collect();
    for (key, header) in &mut columns {
        if headers.iter().filter(|h| *h == header).count() > 1 {
            *header = format!("{header} ({key})");
        }
    }
    columns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forms::{Question, QuestionOption};

    fn field(name: &str, values: &[&str]) -> FieldData {
        FieldData {
            name: name.into(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    fn question(key: &str, label: &str, kind: &str, options: &[(&str, &str)]) -> Question {
        Question {
            key: key.into(),
            label: label.into(),
            kind: QuestionKind::from(kind.to_owned()),
            options: options
                .iter()
                .map(|(k, v)| QuestionOption {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
        }
    }

    fn form(locale: &str) -> Form {
        Form {
            id: "5".into(),
            name: Some("Solar quote".into()),
            status: None,
            locale: Some(locale.into()),
            page_id: Some("77".into()),
            privacy_policy_url: None,
            questions: vec![
                question("full_name", "Nome completo", "FULL_NAME", &[]),
                question("email", "E-mail", "EMAIL", &[]),
                question("telefone_1", "Telefone", "PHONE", &[]),
                question(
                    "which_services",
                    "Which services?",
                    "CUSTOM",
                    &[("solar", "Solar panels"), ("battery", "Home battery")],
                ),
                question("roof_type", "Roof type", "CUSTOM", &[("flat", "Flat roof")]),
                question("short_answer", "Anything else?", "CUSTOM", &[]),
                question("appointment", "Pick a time", "DATE_TIME", &[]),
                question("selected_dealer", "Nearest store", "STORE_LOOKUP", &[]),
                question("cep", "CEP", "POST_CODE", &[]),
                question("estado", "Estado", "STATE", &[]),
                question("work_email", "Work e-mail", "WORK_EMAIL", &[]),
                question("never_answered", "Skipped", "CUSTOM", &[]),
            ],
            fetched_at: 0,
        }
    }

    #[test]
    fn answers_come_by_label_in_the_forms_order_with_options_shown() {
        let fields = [
            field("which_services", &["solar", "battery"]),
            field("email", &[" Ana@Exemplo.COM.br "]),
            field("telefone_1", &["(11) 91234-5678"]),
            field("full_name", &["Ana Souza"]),
            field("roof_type", &["flat"]),
            field("short_answer", &["call after 6pm"]),
            field("appointment", &["2026-12-03T15:00:00-0300"]),
            field("selected_dealer", &["99213450"]),
            field("cep", &["01310-100"]),
            field("estado", &["SP"]),
            field("work_email", &["ana@firma.com.br"]),
            field("utm_only_in_lead", &["x"]),
        ];
        let readable = Readable::of(&fields, Some(&form("pt_BR")));
        assert_eq!(readable.form_name.as_deref(), Some("Solar quote"));
        let labels: Vec<(&str, &str)> = readable
            .answers
            .iter()
            .map(|a| (a.key.as_str(), a.label.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("full_name", "Nome completo"),
                ("email", "E-mail"),
                ("telefone_1", "Telefone"),
                ("which_services", "Which services?"),
                ("roof_type", "Roof type"),
                ("short_answer", "Anything else?"),
                ("appointment", "Pick a time"),
                ("selected_dealer", "Nearest store"),
                ("cep", "CEP"),
                ("estado", "Estado"),
                ("work_email", "Work e-mail"),
                ("utm_only_in_lead", "utm_only_in_lead"),
            ],
            "the form's order; a field the form does not list last, by its key"
        );
        assert_eq!(readable.answers[3].values, ["Solar panels", "Home battery"]);
        assert_eq!(
            readable.answers[4].values,
            ["Flat roof"],
            "a conditional question"
        );
        assert_eq!(
            readable.answers[5].values,
            ["call after 6pm"],
            "free text as given"
        );
        assert_eq!(
            readable.answers[7].values,
            ["99213450"],
            "the store's number"
        );
        let c = &readable.contact;
        assert_eq!(
            c.email.as_deref(),
            Some("ana@exemplo.com.br"),
            "personal over work"
        );
        assert_eq!(
            c.phone.as_deref(),
            Some("+5511912345678"),
            "the form's country"
        );
        assert_eq!(c.phone_as_given, None);
        assert_eq!(c.full_name.as_deref(), Some("Ana Souza"));
        assert_eq!(c.zip.as_deref(), Some("01310-100"));
        assert_eq!(c.state.as_deref(), Some("SP"));
        assert_eq!(
            (c.city.as_deref(), c.country.as_deref()),
            (None, None),
            "not asked"
        );
    }

    #[test]
    fn without_the_form_standard_keys_still_make_the_contact() {
        let fields = [
            field("work_email", &["Grace@Navy.MIL"]),
            field("phone_number", &["+1 (212) 555-0123"]),
            field("first_name", &["Grace"]),
            field("zip_code", &["10001"]),
            field("which_services", &["solar"]),
        ];
        let readable = Readable::of(&fields, None);
        assert_eq!(readable.form_name, None);
        assert_eq!(readable.answers.len(), 5);
        assert_eq!(readable.answers[4].label, "which_services");
        assert_eq!(
            readable.answers[4].values,
            ["solar"],
            "no options known: the key"
        );
        let c = &readable.contact;
        assert_eq!(
            c.email.as_deref(),
            Some("grace@navy.mil"),
            "the work email when alone"
        );
        assert_eq!(c.phone.as_deref(), Some("+12125550123"));
        assert_eq!(c.first_name.as_deref(), Some("Grace"));
        assert_eq!(c.zip.as_deref(), Some("10001"));
    }

    #[test]
    fn a_phone_that_cannot_be_read_is_kept_as_given_and_flagged() {
        let readable = Readable::of(
            &[field("phone_number", &[" call me "])],
            Some(&form("en_US")),
        );
        assert_eq!(readable.contact.phone, None);
        assert_eq!(readable.contact.phone_as_given.as_deref(), Some("call me"));
        let national = Readable::of(&[field("phone_number", &["212-555-0123"])], None);
        assert_eq!(
            national.contact.phone_as_given.as_deref(),
            Some("212-555-0123"),
            "no form, no country: a national number is not guessed at"
        );
        let us = Readable::of(
            &[field("phone_number", &["212-555-0123"])],
            Some(&form("en_US")),
        );
        assert_eq!(us.contact.phone.as_deref(), Some("+12125550123"));
    }

    #[test]
    fn the_work_email_gives_way_to_a_personal_one_given_later() {
        let fields = [
            field("work_email", &["w@firm.example"]),
            field("email", &["p@home.example"]),
        ];
        let readable = Readable::of(&fields, None);
        assert_eq!(readable.contact.email.as_deref(), Some("p@home.example"));
        let blank = Readable::of(&[field("email", &["  "]), field("city", &[])], None);
        assert!(blank.contact.is_empty(), "blank answers make no part");
        assert_eq!(blank.answers.len(), 2, "yet they are answers");
        assert_eq!(
            format!("{:?}", readable.contact),
            r#"Contact { parts: ["email"] }"#
        );
    }

    #[test]
    fn export_columns_are_headed_by_label_in_the_forms_order() {
        let mut other = form("en_US");
        other.id = "4".into();
        other.questions = vec![
            question("email", "Email address", "EMAIL", &[]),
            question("budget", "Budget", "CUSTOM", &[]),
            question("which_services", "Estado", "CUSTOM", &[]),
        ];
        let keys: std::collections::BTreeSet<String> = [
            "email",
            "budget",
            "estado",
            "which_services",
            "zz_unlisted",
            "cep",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let columns = labelled_columns(&[form("pt_BR"), other], &keys);
        assert_eq!(
            columns,
            [
                ("email", "Email address"),
                ("budget", "Budget"),
                ("which_services", "Estado (which_services)"),
                ("cep", "CEP"),
                ("estado", "Estado (estado)"),
                ("zz_unlisted", "zz_unlisted"),
            ]
            .map(|(k, h)| (k.to_owned(), h.to_owned())),
            "form 4 first (by id), each in its order, a shared label told apart by key"
        );
    }
}
