//! The checks connect and doctor share (docs/connect.md): the token, its scopes, and each
//! page's webhook subscription, lead access and forms. Each returns its findings instead of
//! printing them; a Graph read that failed is a check that could not be made
//! (`Level::Unchecked`), never a finding about the setup.

use crate::report::{PageRow, when};
use futures::TryStreamExt;
use leadpipe_graph::{GraphClient, GraphError, TokenInfo, how_to_grant};
use secrecy::SecretString;

/// How sure a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// It is as it should be.
    Ok,
    /// A person must act.
    Problem,
    /// Said for the reader; no verdict.
    Note,
    /// The read that would tell failed.
    Unchecked,
}

/// What a check found, in order.
#[derive(Debug, Default)]
pub(crate) struct Findings(Vec<(Level, String)>);

impl Findings {
    pub(crate) fn ok(&mut self, text: impl std::fmt::Display) {
        self.0.push((Level::Ok, text.to_string()));
    }
    pub(crate) fn problem(&mut self, text: impl std::fmt::Display) {
        self.0.push((Level::Problem, text.to_string()));
    }
    pub(crate) fn note(&mut self, text: impl std::fmt::Display) {
        self.0.push((Level::Note, text.to_string()));
    }
    pub(crate) fn unchecked(&mut self, text: impl std::fmt::Display) {
        self.0.push((Level::Unchecked, text.to_string()));
    }

    /// How many findings are of `level`.
    pub(crate) fn count(&self, level: Level) -> usize {
        self.0.iter().filter(|(l, _)| *l == level).count()
    }

    /// Prints each as its line (crate::report).
    pub(crate) fn print(&self) {
        for (level, text) in &self.0 {
            match level {
                Level::Ok => crate::report::ok(text),
                Level::Problem => crate::report::fail(text),
                Level::Note => crate::report::note(text),
                Level::Unchecked => crate::report::unchecked(text),
            }
        }
    }
}

/// Every item of a paged edge, page after page.
pub(crate) trait AllItems<T> {
    async fn all_items(self) -> Result<Vec<T>, GraphError>;
}

impl<T, S> AllItems<T> for S
where
    S: futures::Stream<Item = Result<leadpipe_graph::Page<T>, GraphError>>,
{
    async fn all_items(self) -> Result<Vec<T>, GraphError> {
        let mut all = Vec::new();
        let mut pages = std::pin::pin!(self);
        while let Some(page) = pages.try_next().await? {
            all.extend(page.items);
        }
        Ok(all)
    }
}

/// Step 1: whether the token can be used at all (and, given `app_id`, is that app's): it
/// can when the findings hold no problem.
pub(crate) fn check_token(info: &TokenInfo, app_id: Option<&str>) -> Findings {
    let mut found = Findings::default();
    if !info.is_valid {
        let why = info
            .error
            .as_ref()
            .map(|e| {
                format!(
                    "{} (code {}{})",
                    e.message.as_deref().unwrap_or("Meta gave no reason"),
                    e.code.unwrap_or_default(),
                    e.subcode.map(|s| format!("/{s}")).unwrap_or_default()
                )
            })
            .unwrap_or_else(|| "Meta gave no reason".into());
        found.problem(format!("the token is not valid: {why}"));
        found.note(
            "issue a new one (Graph API Explorer, your login flow, or a system user in Business Settings) and run connect again",
        );
        return found;
    }
    if let (Some(owner), Some(app_id)) = (info.app_id.as_deref(), app_id)
        && owner != app_id
    {
        found.problem(format!(
            "the token belongs to app {owner}, not {app_id}: issue it for this app"
        ));
        return found;
    }
    found.ok(format!(
        "token valid: {} of user {}, {}, {} scope(s)",
        info.token_type.as_deref().unwrap_or("unknown type"),
        info.user_id.as_deref().unwrap_or("unknown"),
        when(info.expires_at),
        info.scopes.len()
    ));
    found
}

/// The scopes the token lacks, each with how to get it: a required one is a problem, an
/// optional one a note.
pub(crate) fn report_scopes(info: &TokenInfo) -> Findings {
    let mut found = Findings::default();
    let missing = info.missing_scopes();
    for scope in &missing {
        found.problem(format!("the token lacks {scope}: {}", how_to_grant(scope)));
    }
    for (scope, gives) in info.missing_optional_scopes() {
        found.note(format!(
            "! the token lacks {scope} (optional: {gives}); {}",
            how_to_grant(scope)
        ));
    }
    found
}

/// What step 4 does about a page the app is not subscribed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subscribe {
    /// Subscribe it (connect).
    Yes,
    /// Say it would (connect --dry-run).
    WouldInDryRun,
    /// Report it as a problem (doctor, which only reads).
    CheckOnly,
}

/// Step 4 for one page: subscribe it (or check), check lead access, list its forms.
pub(crate) async fn page_steps(
    client: &GraphClient,
    subscribe: Subscribe,
    app_id: Option<&str>,
    info: &TokenInfo,
    token: &SecretString,
    row: &mut PageRow,
) -> Findings {
    let mut found = Findings::default();
    let page = row.id.clone();
    let already = client.page_subscriptions(token, &page).await.map(|apps| {
        apps.iter().any(|a| {
            app_id.is_none_or(|app| a.id.as_deref() == Some(app))
                && a.subscribed_fields.iter().any(|f| f == "leadgen")
        })
    });
    match (already, subscribe) {
        (Ok(true), _) => {
            row.subscribed = Some(true);
            found.ok("the app gets this page's leadgen webhooks (subscribed)");
        }
        // A failed read says nothing about the subscription: doctor cannot tell, a dry
        // run cannot either, and connect subscribes anyway (Meta's subscribe is
        // idempotent).
        (Err(e), Subscribe::CheckOnly | Subscribe::WouldInDryRun) => {
            row.subscribed = None;
            found.unchecked(format!(
                "whether the app gets this page's leadgen webhooks: {e}"
            ));
        }
        (Ok(false), Subscribe::WouldInDryRun) => {
            row.subscribed = Some(false);
            found.ok("would subscribe the app to this page's leadgen webhooks");
        }
        (Ok(false), Subscribe::CheckOnly) => {
            row.subscribed = Some(false);
            found.problem(format!(
                "the app does not get this page's leadgen webhooks: run `leadpipe connect` (or POST /{page}/subscribed_apps?subscribed_fields=leadgen)"
            ));
        }
        (Ok(false) | Err(_), Subscribe::Yes) => match client.subscribe_page(token, &page).await {
            Ok(()) => {
                row.subscribed = Some(true);
                found.ok("subscribed the app to this page's leadgen webhooks");
            }
            Err(e) => {
                row.subscribed = Some(false);
                found.problem(format!("subscribing the app to this page failed: {e}"));
                found.note(
                    "the token's user must be able to manage the page (pages_manage_metadata)",
                );
            }
        },
    }
    match client
        .has_lead_access(
            token,
            &page,
            info.user_id.as_deref().unwrap_or_default(),
            app_id,
        )
        .await
    {
        Ok(access) if access.can_access_lead => {
            row.lead_access = Some(true);
            found.ok("lead access granted");
        }
        Ok(access) => {
            row.lead_access = Some(false);
            found.problem(format!(
                "no lead access: {}",
                access
                    .failure_reason
                    .as_deref()
                    .unwrap_or("Meta gave no reason")
            ));
            if let Some(fix) = &access.failure_resolution {
                found.note(format!("Meta says: {fix}"));
            }
        }
        Err(e) => {
            row.lead_access = None;
            found.unchecked(format!("lead access: {e}"));
        }
    }
    let forms: Result<Vec<leadpipe_graph::LeadgenForm>, GraphError> =
        client.leadgen_forms(token, &page).all_items().await;
    match forms {
        Ok(forms) => {
            row.forms = forms.len();
            row.leads = forms.iter().filter_map(|f| f.leads_count).sum();
            row.active_forms = forms
                .iter()
                .filter(|f| f.status.as_deref() == Some("ACTIVE"))
                .map(|f| f.id.clone())
                .collect();
            found.ok(format!(
                "{} form(s), {} active, {} lead(s) on them so far",
                row.forms,
                row.active_forms.len(),
                row.leads
            ));
            for form in &forms {
                found.note(format!(
                    "form {} {:?} {} ({} leads)",
                    form.id,
                    form.name.as_deref().unwrap_or(""),
                    form.status.as_deref().unwrap_or("?"),
                    form.leads_count
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "?".into())
                ));
            }
        }
        Err(e) => found.unchecked(format!("the page's forms: {e}")),
    }
    found
}
