//! `connect --dataset`: the Conversions API token checked against its dataset (its name
//! read) and stored (docs/stages.md).

use super::args::ConnectArgs;
use super::secret::SecretPlace;
use super::secret::random_hex;
use crate::CliError;
use crate::report::{fail, note, ok, tail};
use leadpipe_core::secrets::AppSecrets;
use leadpipe_core::settings::Env;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

/// Step 6: `page_tokens` merged (pages from before kept unless replaced), `access_token`
/// set, `verify_token` and `lookup_key` kept or generated, `app_secret` kept (or set from
/// APP_SECRET). Every other key is left as it was.
/// `connect --dataset ID`: the dataset's token checked against it and stored, with a
/// stage key made when the secret has none (docs/stages.md). Prints no token or key.
pub(crate) async fn connect_dataset(args: &ConnectArgs, dataset: &str) -> Result<(), CliError> {
    if !leadpipe_core::ids::is_graph_id(dataset) {
        return Err(CliError::Settings(
            "--dataset must be the dataset's id (digits), from Events Manager".into(),
        ));
    }
    let token = Env::process()
        .optional("LEADPIPE_CONVERSIONS_TOKEN")
        .map(SecretString::from)
        .ok_or_else(|| {
            CliError::Settings(
                "set LEADPIPE_CONVERSIONS_TOKEN to the dataset's access token (Events Manager > the dataset > Settings > Generate access token)".into(),
            )
        })?;
    let place = SecretPlace::from_args(args).await?;
    if args.dry_run {
        println!("dry run: reading only; nothing is written");
    }
    let placeholder = AppSecrets {
        app_secret: SecretString::from(String::new()),
        verify_token: None,
        lookup_key: None,
        conversions_token: None,
        stage_keys: Vec::new(),
        destinations: Default::default(),
        destinations_file: None,
        access_token: None,
        page_tokens: Default::default(),
    };
    let config = leadpipe_graph_source::graph_config(&Env::process(), &placeholder)?;
    let client = leadpipe_graph_source::conversions_client(&config)?;
    match client.dataset_name(&token, dataset).await {
        Ok(name) => ok(format!(
            "dataset {dataset} (\"{}\"): the token {} reaches it",
            crate::render::line(&name),
            tail(&token)
        )),
        Err(e) => {
            fail(format!("the token cannot reach dataset {dataset}: {e}"));
            note(
                "generate a new token in the dataset's Settings (Events Manager), then run connect --dataset again",
            );
            return Err(CliError::Failed(
                "verdict: the dataset could not be reached with this token".into(),
            ));
        }
    }
    if args.dry_run {
        println!(
            "would store conversions_token ({}) in {}",
            tail(&token),
            place.describe()
        );
        return Ok(());
    }
    let made_key = place
        .update(|secret| {
            secret.insert("conversions_token".into(), json!(token.expose_secret()));
            let has_key = matches!(secret.get("stage_keys"), Some(Value::Array(keys)) if keys.iter().any(|k| k.as_str().is_some_and(|k| !k.is_empty())));
            if !has_key {
                secret.insert("stage_keys".into(), json!([random_hex(24)?]));
            }
            Ok(!has_key)
        })
        .await?;
    ok(format!("wrote conversions_token to {}", place.describe()));
    if made_key {
        ok(
            "made a stage key (stage_keys): CRMs send it as X-Leadpipe-Key to POST /stages; read it from the secret",
        );
    }
    println!(
        "next: set CONVERSIONS_DATASET_ID={dataset} (the stack parameter ConversionsDatasetId); stages refused `token` come back with `leadpipe redrive --reason-class token`"
    );
    Ok(())
}
