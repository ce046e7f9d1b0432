//! Settings read once at start from the environment, failing fast with a message that says
//! which variable is wrong and what it is for. Values are never echoed: some are secrets.

use crate::secrets::AppSecrets;
use secrecy::SecretString;
use std::collections::BTreeMap;

/// A setting that is missing or unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A required setting is absent.
    #[error("{name} is not set: {purpose}")]
    Missing {
        /// The variable.
        name: &'static str,
        /// What it is for, for the message.
        purpose: &'static str,
    },
    /// A setting's value cannot be used; `why` never quotes it.
    #[error("{name} is not valid: {why}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What is wrong with it, without its value.
        why: String,
    },
}

/// Reads settings through `lookup` (the process environment in production, a map in tests).
pub struct Env<F> {
    lookup: F,
}

impl Env<fn(&str) -> Option<String>> {
    /// The process environment; empty values count as unset.
    pub fn process() -> Self {
        Self {
            lookup: |name| std::env::var(name).ok().filter(|v| !v.is_empty()),
        }
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// Settings read through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: F) -> Self {
        Self { lookup }
    }

    /// The value of `name`, when set and not empty.
    pub fn optional(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
    }

    /// The value of `name`, or an error naming it and its purpose.
    pub fn required(
        &self,
        name: &'static str,
        purpose: &'static str,
    ) -> Result<String, SettingsError> {
        self.optional(name)
            .ok_or(SettingsError::Missing { name, purpose })
    }

    /// A whole number of seconds in `name`, or `default` when unset.
    pub fn seconds(
        &self,
        name: &'static str,
        default: std::time::Duration,
    ) -> Result<std::time::Duration, SettingsError> {
        match self.optional(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map(std::time::Duration::from_secs)
                .map_err(|_| SettingsError::Invalid {
                    name,
                    why: "it must be a whole number of seconds".into(),
                }),
        }
    }

    /// Where the app's secrets come from: `SECRET_ARN` wins; otherwise `APP_SECRET` (and
    /// `VERIFY_TOKEN`, `ACCESS_TOKEN`) stand in, as docs/architecture.md allows for local runs.
    pub fn secret_source(&self) -> Result<SecretSource, SettingsError> {
        if let Some(arn) = self.optional("SECRET_ARN") {
            return Ok(SecretSource::SecretsManager { arn });
        }
        self.inline_secrets().map(SecretSource::Inline)
    }

    /// The secret from `APP_SECRET` (with `VERIFY_TOKEN` and `ACCESS_TOKEN`), whatever
    /// `SECRET_ARN` says: the local binary's way, which never reads Secrets Manager.
    pub fn inline_secrets(&self) -> Result<AppSecrets, SettingsError> {
        let app_secret = self.required(
            "APP_SECRET",
            "set SECRET_ARN to the Secrets Manager secret, or APP_SECRET (with VERIFY_TOKEN and ACCESS_TOKEN) for a local run",
        )?;
        Ok(AppSecrets {
            app_secret: SecretString::from(app_secret),
            verify_token: self.optional("VERIFY_TOKEN").map(SecretString::from),
            lookup_key: self.optional("LOOKUP_KEY").map(SecretString::from),
            access_token: self.optional("ACCESS_TOKEN").map(SecretString::from),
            page_tokens: BTreeMap::new(),
            conversions_token: self.optional("CONVERSIONS_TOKEN").map(SecretString::from),
            stage_keys: self
                .optional("STAGE_KEYS")
                .map(|keys| {
                    keys.split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(|k| SecretString::from(k.to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            // A destination's credentials live in the secret file or Secrets Manager only.
            destinations: BTreeMap::new(),
            destinations_file: None,
        })
    }

    /// The stage settings (docs/stages.md, "Settings"): `None` when
    /// `CONVERSIONS_DATASET_ID` is unset or empty (stages off).
    pub fn stages(&self) -> Result<Option<StagesConfig>, SettingsError> {
        let Some(dataset_id) = self.optional("CONVERSIONS_DATASET_ID") else {
            return Ok(None);
        };
        let dataset_id = dataset_id.trim().to_owned();
        if !crate::ids::is_graph_id(&dataset_id) {
            return Err(SettingsError::Invalid {
                name: "CONVERSIONS_DATASET_ID",
                why: "it must be the dataset's id (digits), from Events Manager".into(),
            });
        }
        let initial_stage = crate::stages::StageName::parse(
            &self
                .optional("INITIAL_STAGE_NAME")
                .unwrap_or_else(|| "Lead".into()),
        )
        .map_err(|_| SettingsError::Invalid {
            name: "INITIAL_STAGE_NAME",
            why: "it must be a name of 1 to 100 characters".into(),
        })?;
        let lead_event_source = self
            .optional("LEAD_EVENT_SOURCE")
            .unwrap_or_else(|| "leadpipe".into());
        if lead_event_source.trim().is_empty() || lead_event_source.chars().count() > 100 {
            return Err(SettingsError::Invalid {
                name: "LEAD_EVENT_SOURCE",
                why: "it must be a name of 1 to 100 characters".into(),
            });
        }
        Ok(Some(StagesConfig {
            dataset_id,
            initial_stage,
            lead_event_source: lead_event_source.trim().to_owned(),
            test_event_code: self
                .optional("CONVERSIONS_TEST_EVENT_CODE")
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty()),
        }))
    }
}

/// Stages back to Meta, when a dataset is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagesConfig {
    /// `CONVERSIONS_DATASET_ID`.
    pub dataset_id: String,
    /// `INITIAL_STAGE_NAME` (default `Lead`): each new lead's first stage.
    pub initial_stage: crate::stages::StageName,
    /// `LEAD_EVENT_SOURCE` (default `leadpipe`).
    pub lead_event_source: String,
    /// `CONVERSIONS_TEST_EVENT_CODE`: Events Manager's Test Events code.
    pub test_event_code: Option<String>,
}

impl StagesConfig {
    /// The rules' settings.
    pub fn rules(&self) -> crate::stages::StageSettings {
        crate::stages::StageSettings {
            lead_event_source: self.lead_event_source.clone(),
            ..Default::default()
        }
    }
}

/// Where a binary gets its [`AppSecrets`].
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// The secret in Secrets Manager, read at start.
    SecretsManager {
        /// `SECRET_ARN`.
        arn: String,
    },
    /// The secret from the environment's stand-ins.
    Inline(AppSecrets),
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(move |k| map.get(k).cloned())
    }

    #[test]
    fn secret_arn_wins_over_inline_values() {
        let source = env(&[
            ("SECRET_ARN", "arn:aws:secretsmanager:x"),
            ("APP_SECRET", "s"),
        ])
        .secret_source()
        .unwrap();
        assert!(
            matches!(source, SecretSource::SecretsManager { arn } if arn == "arn:aws:secretsmanager:x")
        );
    }

    #[test]
    fn inline_secrets_for_local_runs() {
        let source = env(&[("APP_SECRET", "s"), ("VERIFY_TOKEN", "v")])
            .secret_source()
            .unwrap();
        let SecretSource::Inline(secrets) = source else {
            panic!("expected inline secrets");
        };
        assert_eq!(secrets.app_secret.expose_secret(), "s");
        assert_eq!(secrets.require_verify_token().unwrap().expose_secret(), "v");
    }

    #[test]
    fn stages_are_off_without_a_dataset_and_checked_with_one() {
        assert_eq!(env(&[]).stages().unwrap(), None);
        let on = env(&[("CONVERSIONS_DATASET_ID", "880000000000001")])
            .stages()
            .unwrap()
            .unwrap();
        assert_eq!(on.initial_stage.as_str(), "Lead");
        assert_eq!(on.lead_event_source, "leadpipe");
        let err = env(&[("CONVERSIONS_DATASET_ID", "pixel-9")])
            .stages()
            .unwrap_err();
        assert!(err.to_string().contains("CONVERSIONS_DATASET_ID"), "{err}");
        assert!(!err.to_string().contains("pixel-9"), "{err}");
        let keys = env(&[("APP_SECRET", "s"), ("STAGE_KEYS", "a, b,")])
            .inline_secrets()
            .unwrap();
        assert_eq!(keys.stage_keys.len(), 2);
    }

    #[test]
    fn missing_everything_says_what_to_set() {
        let err = env(&[]).secret_source().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("APP_SECRET is not set"), "{text}");
        assert!(text.contains("SECRET_ARN"), "{text}");
    }
}
