//! `leadpipe doctor`: the read-only check of a real setup, page by page, with the secret's
//! own page tokens: the token (valid, expiry, scopes), the app's leadgen subscription, lead
//! access in Meta's words, and the forms. The checks are connect's (`crate::checks`), run
//! without changing anything. A read that failed is a check not made: the verdict then
//! cannot be "ready", and is no finding about the setup either (exit 2, not 1).

use crate::checks::{Findings, Level, Subscribe, check_token, page_steps, report_scopes};
use crate::report::{PageRow, fail, print_table, when};
use crate::{CliError, DoctorArgs, load_secrets};
use leadpipe_core::settings::Env;
use leadpipe_graph::GraphClient;

/// Runs the checks and prints one line each, a table, then a verdict; fails when anything
/// needs doing (1), or when a check could not be made (2).
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
    let (mut problems, mut unchecked) = (0, 0);
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
                let mut found = Findings::default();
                found.unchecked(format!("the token: {e}"));
                found.print();
                unchecked += 1;
                rows.push(row);
                continue;
            }
        };
        let token_found = check_token(&info, None);
        token_found.print();
        if token_found.count(Level::Problem) > 0 {
            problems += 1;
            rows.push(row);
            continue;
        }
        let scopes = report_scopes(&info);
        scopes.print();
        problems += scopes.count(Level::Problem);
        row.token_expiry = when(info.expires_at);
        let found = page_steps(
            &client,
            Subscribe::CheckOnly,
            info.app_id.as_deref(),
            &info,
            token,
            &mut row,
        )
        .await;
        found.print();
        unchecked += found.count(Level::Unchecked);
        if found.count(Level::Problem) > 0 {
            problems += 1;
        }
        rows.push(row);
    }
    print_table(&rows, false);
    if problems > 0 {
        Err(CliError::Failed(format!(
            "verdict: {problems} problem(s) above; fix them and run doctor again"
        )))
    } else if unchecked > 0 {
        Err(CliError::Unreachable(format!(
            "verdict: unknown: {unchecked} check(s) could not be made (see `? could not check` above); run doctor again"
        )))
    } else {
        println!(
            "verdict: ready: leads from {} page(s) can be received and read",
            pages.len()
        );
        Ok(())
    }
}
