//! connect's step 3: the pages the person's token reaches, their own (`/me/accounts`) and
//! those a Business Manager holds (owned and client pages), each with its page token and
//! which way it was found; only Graph ids are taken.

use super::args::ConnectArgs;
use crate::CliError;
use crate::checks::AllItems;
use crate::report::{PageRow, fail, note, ok, when};
use leadpipe_graph::{GraphClient, PageAccount, TokenInfo};
use secrecy::SecretString;

/// The rows of the pages to connect (all the token reaches, or `--page`'s), and how many
/// problems were found on the way; an error when no page can be connected at all.
pub(super) async fn pages(
    client: &GraphClient,
    args: &ConnectArgs,
    long_lived: &SecretString,
    app_token: &SecretString,
    info: &TokenInfo,
) -> Result<(Vec<PageRow>, usize), CliError> {
    let mut problems = 0;
    let accounts: Vec<PageAccount> = match client.my_accounts(long_lived).all_items().await {
        Ok(accounts) => accounts,
        Err(e) => {
            fail(format!("the token's pages could not be listed: {e}"));
            if info.missing_scopes().contains(&"pages_show_list") {
                note("grant pages_show_list and issue a new token");
            }
            return Err(CliError::Failed(
                "verdict: no page could be read (see above)".into(),
            ));
        }
    };
    // An id goes into the secret's keys and into Graph paths: only a Graph id is taken.
    let (accounts, odd): (Vec<PageAccount>, Vec<PageAccount>) = accounts
        .into_iter()
        .partition(|a| a.id.bytes().all(|b| b.is_ascii_digit()) && (1..=32).contains(&a.id.len()));
    for account in &odd {
        problems += 1;
        fail(format!(
            "Graph listed a page whose id is not a Graph id ({}); it is left out",
            account.id
        ));
    }
    // 3b. Pages a person or system user reaches through a Business Manager.
    let mut found: std::collections::BTreeMap<String, String> = accounts
        .iter()
        .map(|a| {
            (
                a.id.clone(),
                "the person's own pages (/me/accounts)".to_owned(),
            )
        })
        .collect();
    let mut accounts = accounts;
    problems += business_accounts(
        client,
        long_lived,
        info,
        &args.pages,
        &mut accounts,
        &mut found,
    )
    .await;
    ok(format!(
        "the token's user manages {} page(s)",
        accounts.len()
    ));
    if accounts.is_empty() {
        // Zero pages is never "ready": nothing would ever arrive.
        fail("the token sees no page: nothing can be connected");
        note(
            "the token's person needs a role on the page (Page settings > Page access: Facebook access with full control, or task access to leads), and the token must be issued with that page selected",
        );
        note(
            "pages held in a Business Manager are listed only to a person or system user with access there (Business settings > Accounts > Pages) and a token with business_management",
        );
        return Err(CliError::Failed(
            "verdict: the token sees no page (see above)".into(),
        ));
    }
    let mut rows = Vec::new();
    for wanted in &args.pages {
        if !accounts.iter().any(|a| &a.id == wanted) {
            problems += 1;
            fail(format!(
                "page {wanted} is not among them: the token's user needs a role on it (Page settings > Page access) and the token must include it"
            ));
        }
    }
    for account in accounts
        .into_iter()
        .filter(|a| args.pages.is_empty() || args.pages.contains(&a.id))
    {
        let expiry = match client.debug_token(app_token, &account.access_token).await {
            Ok(page_info) if page_info.is_valid => when(page_info.expires_at),
            Ok(_) => "not valid".to_owned(),
            Err(_) => "unknown".to_owned(),
        };
        rows.push(PageRow {
            name: account.name.clone().unwrap_or_default(),
            id: account.id.clone(),
            token_expiry: expiry,
            token: Some(account.access_token.clone()),
            found: found.get(&account.id).cloned().unwrap_or_default(),
            ..PageRow::default()
        });
    }
    Ok((rows, problems))
}

/// Step 3b: the pages of every business the token can see (`owned_pages`, `client_pages`),
/// added to `accounts` when the person's own list lacks them, each with the way it was
/// found. A token without `business_management` is told what it misses; a business page
/// without a token for this person is a problem to fix in Business settings. Returns the
/// problems.
async fn business_accounts(
    client: &GraphClient,
    token: &SecretString,
    info: &TokenInfo,
    wanted: &[String],
    accounts: &mut Vec<PageAccount>,
    found: &mut std::collections::BTreeMap<String, String>,
) -> usize {
    use futures::TryStreamExt;
    use leadpipe_graph::BusinessEdge;
    let businesses: Vec<leadpipe_graph::Business> = match client
        .my_businesses(token)
        .try_collect::<Vec<_>>()
        .await
    {
        Ok(pages) => pages.into_iter().flat_map(|p| p.items).collect(),
        Err(e) => {
            if !info.scopes.iter().any(|s| s == "business_management") {
                note(
                    "pages held in a Business Manager are not listed: the token lacks business_management (grant it and issue a new token to connect them)",
                );
            } else {
                note(format!("the token's businesses could not be listed: {e}"));
            }
            return 0;
        }
    };
    let mut problems = 0;
    for business in &businesses {
        let name = business.name.clone().unwrap_or_else(|| business.id.clone());
        for edge in [BusinessEdge::Owned, BusinessEdge::Client] {
            let pages: Vec<leadpipe_graph::BusinessPage> = match client
                .business_pages(token, &business.id, edge)
                .try_collect::<Vec<_>>()
                .await
            {
                Ok(pages) => pages.into_iter().flat_map(|p| p.items).collect(),
                Err(e) => {
                    note(format!(
                        "business {name}'s {} could not be listed: {e}",
                        edge.as_str()
                    ));
                    continue;
                }
            };
            let how = match edge {
                BusinessEdge::Owned => "owned",
                BusinessEdge::Client => "a client's",
            };
            for page in pages {
                let valid_id = page.id.bytes().all(|b| b.is_ascii_digit())
                    && (1..=32).contains(&page.id.len());
                if !valid_id || found.contains_key(&page.id) {
                    continue;
                }
                let Some(page_token) = page.access_token else {
                    let line = format!(
                        "page {} ({how} page of business {name}) gives this token no page token: give the person or system user a task on it (Business settings > Accounts > Pages)",
                        page.id
                    );
                    // A page not asked for (`--page`) is worth a word, not a failed verdict.
                    if wanted.is_empty() || wanted.contains(&page.id) {
                        problems += 1;
                        fail(line);
                    } else {
                        note(line);
                    }
                    continue;
                };
                found.insert(page.id.clone(), format!("business {name} ({how} page)"));
                accounts.push(PageAccount {
                    id: page.id,
                    name: page.name,
                    access_token: page_token,
                    tasks: Vec::new(),
                });
            }
        }
    }
    if !businesses.is_empty() {
        ok(format!(
            "{} business(es) seen through business_management",
            businesses.len()
        ));
    }
    problems
}
