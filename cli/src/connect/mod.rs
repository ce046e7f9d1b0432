//! `leadpipe connect`: from a person's token to subscribed pages, a written secret and a test
//! lead seen arriving (docs/connect.md). Each step prints a line with ✔ or ✘ and, for ✘,
//! what to do, in Meta's own words where Meta gave them. No token is printed: a token is
//! shown by its last four characters only, where a person needs to tell two apart.
//!
//! Its rooms: the checks it shares with doctor (`crate::checks`), what it prints
//! (`crate::report`), the secret's place (`secret`), the test lead (`test_lead`) and the
//! Conversions dataset (`dataset`); this file runs the steps in order.

mod args;
mod dataset;
mod pages;
mod secret;
mod test_lead;

use crate::CliError;
use crate::checks::{Level, Subscribe, check_token, page_steps, report_scopes};
use crate::report::{fail, note, ok, print_table, tail, when};
pub use args::ConnectArgs;
use dataset::connect_dataset;
use leadpipe_core::secrets::AppSecrets;
use leadpipe_core::settings::Env;
use leadpipe_graph::{GraphClient, GraphError, TokenInfo};
use secrecy::{ExposeSecret, SecretString};
use secret::{SecretPlace, merge_secret, string_of};
use std::time::Duration;
use test_lead::test_lead;
use time::OffsetDateTime;

/// A user token expiring sooner than this is exchanged for a long-lived one.
const EXCHANGE_BELOW: Duration = Duration::from_secs(7 * 86_400);

/// The person's token: `--user-token-file` or `LEADPIPE_USER_TOKEN`.
fn user_token(args: &ConnectArgs) -> Result<SecretString, CliError> {
    if let Some(path) = &args.user_token_file {
        let text = crate::read_small_file(path, 64 * 1024).map_err(|e| {
            CliError::Settings(format!(
                "the token file {} cannot be read: {e}",
                path.display()
            ))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(CliError::Settings(format!(
                "the token file {} is empty",
                path.display()
            )));
        }
        return Ok(SecretString::from(token.to_owned()));
    }
    Env::process()
        .optional("LEADPIPE_USER_TOKEN")
        .map(|t| SecretString::from(t.trim().to_owned()))
        .ok_or_else(|| {
            CliError::Settings(
                "no token: set LEADPIPE_USER_TOKEN or give --user-token-file PATH (a user token from Graph API Explorer or your login flow, or a system user's token)".into(),
            )
        })
}

/// Runs every step, prints the table and the verdict; fails when a page needs a person.
pub async fn run(args: ConnectArgs) -> Result<(), CliError> {
    if let Some(dataset) = &args.dataset {
        return connect_dataset(&args, dataset).await;
    }
    let app_id = args.app_id.clone().unwrap_or_default();
    let place = SecretPlace::from_args(&args).await?;
    let mut secret = place.read().await?;
    let app_secret = match string_of(&secret, "app_secret") {
        Some(s) => SecretString::from(s),
        None => Env::process()
            .optional("APP_SECRET")
            .map(SecretString::from)
            .ok_or_else(|| {
                CliError::Settings(format!(
                    "no app secret: put app_secret in {} or set APP_SECRET (App settings > Basic in Meta's dashboard)",
                    place.describe()
                ))
            })?,
    };
    let person = user_token(&args)?;
    let env = Env::process();
    let placeholder = AppSecrets {
        app_secret: app_secret.clone(),
        verify_token: None,
        lookup_key: None,
        conversions_token: None,
        stage_keys: Vec::new(),
        destinations: Default::default(),
        destinations_file: None,
        access_token: None,
        page_tokens: Default::default(),
    };
    let client = GraphClient::new(leadpipe_graph_source::graph_config(&env, &placeholder)?)?;
    let app_token = SecretString::from(format!("{}|{}", app_id, app_secret.expose_secret()));
    if args.dry_run {
        println!("dry run: reading only; nothing is written, subscribed or created");
    }
    let mut problems = 0usize;

    // 1. The token.
    let info = match client.debug_token(&app_token, &person).await {
        Ok(info) => info,
        Err(e) => {
            fail(format!("the token could not be checked: {e}"));
            if e.status.is_none() {
                // No answer at all: a network problem, not a wrong app id.
                note(
                    "Graph could not be reached: check this machine's network and proxy (and GRAPH_API_BASE if set), then run connect again",
                );
            } else {
                note(
                    "check --app-id and the app secret (App settings > Basic), then run connect again",
                );
            }
            return Err(CliError::Failed(
                "verdict: the token could not be checked".into(),
            ));
        }
    };
    let token_found = check_token(&info, Some(&app_id));
    token_found.print();
    if token_found.count(Level::Problem) > 0 {
        return Err(CliError::Failed(
            "verdict: a new token is needed (see above)".into(),
        ));
    }
    let scopes = report_scopes(&info);
    scopes.print();
    problems += scopes.count(Level::Problem);

    // 2. A long-lived token.
    let (long_lived, long_expiry) =
        match long_lived(&client, &args, &app_secret, &person, &info).await {
            Ok(pair) => pair,
            Err(e) => {
                fail(format!("the token could not be exchanged: {e}"));
                return Err(CliError::Failed(
                    "verdict: the token could not be made long-lived".into(),
                ));
            }
        };

    // 3. Pages, the person's own and a Business Manager's.
    let (mut rows, found_problems) =
        pages::pages(&client, &args, &long_lived, &app_token, &info).await?;
    problems += found_problems;

    // 4. Per page: subscription, lead access, forms.
    for row in &mut rows {
        println!(
            "page {} ({})",
            crate::render::line(&row.id),
            crate::render::line(&row.name)
        );
        let Some(token) = row.token.clone() else {
            continue;
        };
        note(format!(
            "page token {} ({}), found through {}",
            tail(&token),
            row.token_expiry,
            row.found
        ));
        let subscribe = if args.dry_run {
            Subscribe::WouldInDryRun
        } else {
            Subscribe::Yes
        };
        page_steps(&client, subscribe, Some(&app_id), &info, &token, row)
            .await
            .print();
        // A dry run subscribes nothing: only what a person must fix counts there.
        let needs_person = if args.dry_run {
            row.lead_access != Some(true)
        } else {
            !row.ready()
        };
        if needs_person {
            problems += 1;
        }
    }

    // 6. The secret, written before the app's subscription: Meta's challenge comes at once,
    // and the webhook answers it with the verify token it reads from here.
    let merged = if args.dry_run {
        merge_secret(&mut secret, &rows, &long_lived, &app_secret)
    } else {
        // Merged again into the secret as it is now, under a lock: another `connect` that
        // wrote meanwhile keeps its pages and tokens.
        place
            .update(|secret| merge_secret(secret, &rows, &long_lived, &app_secret))
            .await
    };
    let verify_token = match merged {
        Ok(merge) => {
            let line = format!(
                "{}: page_tokens for {} page(s) ({} new, {} kept from before), access_token {} ({long_expiry}), verify_token {}, lookup_key {}",
                place.describe(),
                rows.len(),
                merge.new_pages,
                merge.kept_pages,
                tail(&long_lived),
                if merge.verify_generated {
                    "generated"
                } else {
                    "kept"
                },
                if merge.lookup_generated {
                    "generated"
                } else {
                    "kept"
                },
            );
            if args.dry_run {
                ok(format!("would write the secret {line}"));
            } else {
                ok(format!("wrote the secret {line}"));
                if let SecretPlace::File(_) = place {
                    note("the file is readable by you only (0600)");
                } else {
                    note(
                        "warm functions read it at their next refused read (a new version is seen at once); new ones at start",
                    );
                }
            }
            merge.verify_token
        }
        Err(e) => return Err(e),
    };

    // 5. The app's webhook subscription.
    if let Some(callback) = &args.callback_url {
        if args.dry_run {
            ok(format!(
                "would subscribe app {} to pages' leadgen at {callback}",
                app_id
            ));
        } else {
            match client
                .subscribe_app(&app_token, &app_id, callback, &verify_token)
                .await
            {
                Ok(()) => ok(format!(
                    "app {} subscribed to pages' leadgen at {callback}: it answered Meta's challenge",
                    app_id
                )),
                Err(e) => {
                    problems += 1;
                    fail(format!("the app's webhook subscription failed: {e}"));
                    note(
                        "Meta calls the URL with a GET at once: is it reachable from the internet, serving leadpipe's webhook, with the verify_token just written?",
                    );
                }
            }
        }
    }

    // 7. Heal: what waited for these pages' token or access goes back to the queue.
    let fixed: std::collections::BTreeSet<String> = rows
        .iter()
        .filter(|r| r.lead_access == Some(true))
        .map(|r| r.id.clone())
        .collect();
    if !fixed.is_empty() && !heal(&args, &fixed).await {
        problems += 1;
    }

    // 8. A test lead.
    if args.test_lead {
        if args.dry_run {
            ok("would create a test lead and wait for it");
        } else if !test_lead(&client, &args, &rows).await {
            problems += 1;
        }
    }

    print_table(&rows, args.dry_run);
    if problems == 0 {
        println!(
            "verdict: {} {} page(s) subscribed and readable",
            if args.dry_run {
                "dry run ok:"
            } else {
                "ready:"
            },
            rows.iter().filter(|r| r.ready()).count()
        );
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "verdict: {problems} thing(s) need a person's action (✘ above); fix them and run connect again"
        )))
    }
}

/// Step 7: the `token` and `permission` dead letters of the pages just fixed go back to the
/// pipeline's queue (core's rule, `leadpipe_core::tokens::healed_by_connect`), locally with
/// `--db` and on the stack with `--stack`; a dry run counts them. False when it failed.
async fn heal(args: &ConnectArgs, fixed: &std::collections::BTreeSet<String>) -> bool {
    use crate::operate::{Piles, Target};
    let target = if let Some(path) = &args.db {
        if !path.exists() {
            note(format!(
                "{} does not exist yet: no dead letter to bring back",
                path.display()
            ));
            return true;
        }
        Target::Local(path.clone())
    } else if let Some(stack) = &args.stack {
        let config = leadpipe_aws::sdk_config().await;
        match crate::operate::AwsNames::default()
            .over_stack(&config, Some(stack))
            .await
        {
            Ok(names) => Target::Aws(Box::new(config), names),
            Err(e) => {
                fail(format!("the stack's queues could not be found: {e}"));
                return false;
            }
        }
    } else {
        note(
            "leads that waited as token or permission dead letters come back with `leadpipe redrive --reason-class token` (or give connect --db/--stack to do it)",
        );
        return true;
    };
    let piles = match Piles::of(target, args.dry_run) {
        Ok(piles) => piles,
        Err(e) => {
            fail(format!("the dead letters could not be reached: {e}"));
            return false;
        }
    };
    let pick = leadpipe_core::redrive::Pick::HealedPages(fixed);
    match leadpipe_core::redrive::redrive(&piles, pick, args.dry_run).await {
        Ok(report) if args.dry_run => ok(format!(
            "would bring back {} lead(s) of these pages that waited as token or permission dead letters",
            report.leads.moved
        )),
        Ok(report) => ok(format!(
            "brought back {} lead(s) of these pages that waited as token or permission dead letters; other pages' and classes' stay",
            report.leads.moved
        )),
        Err(e) => {
            fail(format!("the dead letters could not be brought back: {e}"));
            return false;
        }
    }
    true
}

/// Step 2: a short-lived user token is exchanged; a long-lived or system user's is kept.
async fn long_lived(
    client: &GraphClient,
    args: &ConnectArgs,
    app_secret: &SecretString,
    person: &SecretString,
    info: &TokenInfo,
) -> Result<(SecretString, String), GraphError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let expires_at = info.expires_at.unwrap_or_default();
    let is_user = info.token_type.as_deref() == Some("USER");
    let short = is_user && expires_at > 0 && expires_at - now < EXCHANGE_BELOW.as_secs() as i64;
    if !short {
        ok(format!(
            "kept the token {} as it is ({})",
            tail(person),
            when(info.expires_at)
        ));
        return Ok((person.clone(), when(info.expires_at)));
    }
    if args.dry_run {
        ok(format!(
            "would exchange the short-lived token {} ({}) for a long-lived one",
            tail(person),
            when(info.expires_at)
        ));
        return Ok((person.clone(), when(info.expires_at)));
    }
    let exchanged = client
        .exchange_token(
            args.app_id.as_deref().unwrap_or_default(),
            app_secret,
            person,
        )
        .await?;
    let expiry = when(exchanged.expires_in.map(|s| now + s));
    ok(format!(
        "exchanged the short-lived token {} ({}) for a long-lived one {} ({expiry})",
        tail(person),
        when(info.expires_at),
        tail(&exchanged.access_token)
    ));
    Ok((exchanged.access_token, expiry))
}
