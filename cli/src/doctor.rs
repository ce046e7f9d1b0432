//! `leadpipe doctor`: the read-only check of a real setup, page by page: the token (valid,
//! expiry, scopes), lead access in Meta's words, and the page's leadgen subscription.

use crate::{CliError, DoctorArgs, load_secrets};
use leadpipe_core::settings::Env;
use leadpipe_graph::GraphClient;
use secrecy::SecretString;

/// Runs the checks and prints one line each, then a verdict; fails when anything needs doing.
pub async fn run(args: DoctorArgs) -> Result<(), CliError> {
    let secrets = load_secrets(args.secret_file.as_ref())?;
    let env = Env::process();
    let config = leadpipe_graph_source::graph_config(&env, &secrets)?;
    let client = GraphClient::new(config)?;
    let pages: Vec<String> = if args.pages.is_empty() {
        secrets.page_tokens.keys().cloned().collect()
    } else {
        args.pages
    };
    if pages.is_empty() {
        return Err(CliError::Settings(
            "no page to check: add page_tokens to the secret or pass --page".into(),
        ));
    }
    let mut problems = 0;
    for page in &pages {
        println!("page {page}");
        let Some(token) = secrets.token_for_page(page) else {
            println!("  PROBLEM no token: add page_tokens.{page} (or access_token) to the secret");
            problems += 1;
            continue;
        };
        problems += check_token_and_access(&client, token, page).await;
        problems += check_subscription(&client, token, page).await;
    }
    if problems == 0 {
        println!(
            "verdict: ready: leads from {} page(s) can be received and read",
            pages.len()
        );
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "verdict: {problems} problem(s) above; fix them and run doctor again"
        )))
    }
}

/// The token (valid, expiry, scopes) and, with its user, the page's lead access. Returns
/// the number of problems it printed.
async fn check_token_and_access(client: &GraphClient, token: &SecretString, page: &str) -> usize {
    let info = match client.debug_token(token, token).await {
        Ok(info) if info.is_valid => info,
        Ok(_) => {
            println!(
                "  PROBLEM token is not valid: issue a new one (a system user token does not expire)"
            );
            return 1;
        }
        Err(e) => {
            println!("  PROBLEM token check failed: {e}");
            return 1;
        }
    };
    let mut problems = 0;
    let expiry = match info.expires_at {
        Some(0) | None => "never expires".to_owned(),
        Some(at) => format!("expires at unix {at}"),
    };
    println!(
        "  ok      token valid ({}), {expiry}",
        info.token_type.as_deref().unwrap_or("unknown type")
    );
    let missing = info.missing_scopes();
    if !missing.is_empty() {
        problems += 1;
        println!(
            "  PROBLEM token lacks {}: grant them and issue a new token",
            missing.join(", ")
        );
    }
    match client
        .has_lead_access(
            token,
            page,
            info.user_id.as_deref().unwrap_or_default(),
            info.app_id.as_deref(),
        )
        .await
    {
        Ok(access) if access.can_access_lead => println!("  ok      lead access"),
        Ok(access) => {
            problems += 1;
            println!("  PROBLEM {}", access.diagnosis());
        }
        Err(e) => {
            problems += 1;
            println!("  PROBLEM lead access could not be checked: {e}");
        }
    }
    problems
}

/// Whether an app gets the page's `leadgen` webhooks. Returns the problems it printed.
async fn check_subscription(client: &GraphClient, token: &SecretString, page: &str) -> usize {
    match client.page_subscriptions(token, page).await {
        Ok(apps)
            if apps
                .iter()
                .any(|a| a.subscribed_fields.iter().any(|f| f == "leadgen")) =>
        {
            println!("  ok      an app gets this page's leadgen webhooks");
            0
        }
        Ok(_) => {
            println!(
                "  PROBLEM no app is subscribed to leadgen: POST /{page}/subscribed_apps?subscribed_fields=leadgen"
            );
            1
        }
        Err(e) => {
            println!("  PROBLEM webhook subscription could not be read: {e}");
            1
        }
    }
}
