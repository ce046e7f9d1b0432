//! `leadpipe doctor`: the read-only check of a real setup, page by page, with the secret's
//! own page tokens: the token (valid, expiry, scopes), the app's leadgen subscription, lead
//! access in Meta's words, and the forms. The checks are `connect`'s (steps 1, 3 and 4),
//! run without changing anything.

use crate::connect::{
    PageRow, Subscribe, check_token, fail, page_steps, print_table, report_scopes, when,
};
use crate::{CliError, DoctorArgs, load_secrets};
use leadpipe_core::settings::Env;
use leadpipe_graph::GraphClient;

/// Runs the checks and prints one line each, a table, then a verdict; fails when anything
/// needs doing.
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
    let mut rows = Vec::new();
    for page in &pages {
        println!("page {}", crate::render::line(page));
        let mut row = PageRow {
            id: page.clone(),
            ..PageRow::default()
        };
        let Some(token) = secrets.token_for_page(page) else {
            fail(format!(
                "no token: add page_tokens.{page} (or access_token) to the secret, or run `leadpipe connect`"
            ));
            problems += 1;
            rows.push(row);
            continue;
        };
        // A page token asks about itself: doctor has no app token (no app id is given).
        let info = match client.debug_token(token, token).await {
            Ok(info) => info,
            Err(e) => {
                fail(format!("the token check failed: {e}"));
                problems += 1;
                rows.push(row);
                continue;
            }
        };
        if !check_token(&info, None) {
            problems += 1;
            rows.push(row);
            continue;
        }
        problems += report_scopes(&info);
        row.token_expiry = when(info.expires_at);
        page_steps(
            &client,
            Subscribe::CheckOnly,
            info.app_id.as_deref(),
            &info,
            token,
            &mut row,
        )
        .await;
        if !row.ready() {
            problems += 1;
        }
        rows.push(row);
    }
    print_table(&rows, false);
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
