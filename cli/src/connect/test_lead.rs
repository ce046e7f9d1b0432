//! connect's last step: a test lead on an active form, waited for where `serve` or the
//! stack stores it, then deleted at Meta.

use super::args::ConnectArgs;
use super::secret::Store;
use crate::checks::AllItems;
use crate::report::{PageRow, fail, note, ok};
use leadpipe_graph::{GraphClient, GraphError};
use secrecy::SecretString;
use std::time::{Duration, Instant};

/// Step 7: a test lead on the first ready page's first active form, waited for in the
/// store, then deleted at Meta. True when it was seen stored.
pub(crate) async fn test_lead(client: &GraphClient, args: &ConnectArgs, rows: &[PageRow]) -> bool {
    let mut store = match (&args.db, &args.leads_table) {
        (Some(path), _) => Store::Local(path.clone(), None),
        (None, Some(table)) => {
            let config = leadpipe_aws::sdk_config().await;
            Store::Dynamo(leadpipe_aws::DynamoLeadStore::new(&config, table.clone()))
        }
        (None, None) => {
            fail(
                "--test-lead needs --db PATH (serve's file) or --leads-table NAME (the stack's table) to look for it",
            );
            return false;
        }
    };
    let Some((row, form)) = rows
        .iter()
        .filter(|r| r.ready())
        .find_map(|r| r.active_forms.first().map(|f| (r, f.clone())))
    else {
        fail("no test lead: no subscribed, readable page has an active form");
        return false;
    };
    let Some(token) = &row.token else {
        return false;
    };
    let created = Instant::now();
    let lead_id = match create_test_lead(client, token, &form).await {
        Ok(id) => id,
        Err(e) => {
            fail(format!(
                "the test lead could not be created on form {form}: {e}"
            ));
            return false;
        }
    };
    ok(format!(
        "created test lead {lead_id} on form {form} (page {}); waiting up to {} s for it to be stored",
        row.id, args.wait_seconds
    ));
    let deadline = created + Duration::from_secs(args.wait_seconds);
    let mut seen = None;
    let mut last_error = None;
    while Instant::now() < deadline {
        match store.ingested_at(&lead_id).await {
            Ok(Some(at)) => {
                seen = Some(at);
                break;
            }
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let observed = created.elapsed();
    // The store's ingested_at has whole seconds: the time is what this command saw.
    let stored = match &seen {
        Some(_) => {
            ok(format!(
                "test lead {lead_id} stored: in the store {:.1} s after it was created",
                observed.as_secs_f64()
            ));
            true
        }
        None => {
            fail(format!(
                "test lead {lead_id} was not stored within {} s{}",
                args.wait_seconds,
                last_error
                    .map(|e| format!(" (the store: {e})"))
                    .unwrap_or_default()
            ));
            note(
                "is the webhook running at the callback URL, subscribed (--callback-url), and can ingest read Graph? `leadpipe status` and the logs say more",
            );
            false
        }
    };
    match client.delete_node(token, &lead_id).await {
        Ok(()) => note(format!("deleted test lead {lead_id} at Meta")),
        Err(e) => fail(format!(
            "test lead {lead_id} could not be deleted at Meta: {e}"
        )),
    }
    stored
}

/// `POST /{form}/test_leads`; when Meta refuses because one exists already, that one is
/// deleted and the call made again.
pub(crate) async fn create_test_lead(
    client: &GraphClient,
    token: &SecretString,
    form: &str,
) -> Result<String, GraphError> {
    match client.create_test_lead(token, form, None).await {
        Ok(id) => Ok(id),
        Err(first) => {
            let existing: Vec<String> = client
                .test_leads(token, form)
                .all_items()
                .await
                .unwrap_or_default();
            if existing.is_empty() {
                return Err(first);
            }
            for id in &existing {
                client.delete_node(token, id).await?;
                note(format!(
                    "deleted the form's earlier test lead {id} (Meta allows one at a time)"
                ));
            }
            client.create_test_lead(token, form, None).await
        }
    }
}
