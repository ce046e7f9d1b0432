//! Paged edges: a form's or an ad's leads (with `filtering` on `time_created`) and a page's
//! forms, following `paging.next` only to the same edge under our own base.

use super::{GraphClient, LeadQuery, Payload, parse_failure, with_query};
use crate::error::{ErrorClass, GraphError};
use crate::models::{FORM_FIELDS, Lead, LeadgenForm, ParseError};
use futures::Stream;
use reqwest::Method;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

/// The most pages one listing follows (100,000 accounts, forms or test leads at 100 a page).
pub const MAX_PAGES: usize = 1_000;

/// One page of a paged edge.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items of this page that could be read.
    pub items: Vec<T>,
    /// Items whose JSON could not be read (their place is logged, their content is not).
    pub unreadable: Vec<ParseError>,
    /// `paging.cursors.after`, for the record; cursors are not for long-term storage.
    pub after: Option<String>,
    /// Whether Graph said there is a next page (`paging.next` present).
    pub has_next: bool,
    next: Option<Url>,
}

impl<T> Page<T> {
    /// A last page (no next), e.g. from a stand-in of Graph in tests of the use cases.
    pub fn last(items: Vec<T>, unreadable: Vec<ParseError>) -> Self {
        Self {
            items,
            unreadable,
            after: None,
            has_next: false,
            next: None,
        }
    }

    /// Where the next page is, when there is one; hold it to read on later in the same run.
    pub fn next_page(&self) -> Option<NextPage> {
        self.next.clone().map(NextPage)
    }
}

/// The address of the next page of a paged edge (already stripped of any token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextPage(Url);

impl NextPage {
    /// The address, to carry as an opaque cursor within a run; give it back through
    /// [`GraphClient::next_page_from`].
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl GraphClient {
    /// A [`NextPage`] from its [`NextPage::as_str`]: accepted only as the next page of a
    /// node's `leads` or a page's `leadgen_forms` under this client's own base and version,
    /// with no token in it. Anything else is a Graph error and nothing is sent.
    pub fn next_page_from(&self, address: &str) -> Result<NextPage, GraphError> {
        let refuse = || {
            GraphError::local(
                "resume a paged read".into(),
                ErrorClass::BadRequest,
                "the cursor is not a next page of this client's Graph",
            )
        };
        let url = Url::parse(address).map_err(|_| refuse())?;
        let base = self.node_url(&[], "resume a paged read")?;
        let same_origin = url.origin() == base.origin();
        let base_path = base.path();
        let rest = url
            .path()
            .strip_prefix(base_path)
            .map(|r| r.split('/').collect::<Vec<_>>());
        let shape_ok = matches!(rest.as_deref(), Some([id, edge])
            if super::check_id(id, "resume").is_ok() && (*edge == "leads" || *edge == "leadgen_forms"));
        let no_token = !url
            .query_pairs()
            .any(|(k, _)| k == "access_token" || k == "appsecret_proof");
        if same_origin && shape_ok && no_token {
            Ok(NextPage(url))
        } else {
            Err(refuse())
        }
    }

    /// `GET /{form-id}/leads`, page after page until `paging.next` is absent.
    pub fn form_leads<'a>(
        &'a self,
        token: &'a SecretString,
        form_id: &str,
        query: &LeadQuery,
    ) -> impl Stream<Item = Result<Page<Lead>, GraphError>> + Send + 'a {
        self.lead_pages(token, form_id, query)
    }

    /// `GET /{ad-id}/leads`, page after page until `paging.next` is absent.
    pub fn ad_leads<'a>(
        &'a self,
        token: &'a SecretString,
        ad_id: &str,
        query: &LeadQuery,
    ) -> impl Stream<Item = Result<Page<Lead>, GraphError>> + Send + 'a {
        self.lead_pages(token, ad_id, query)
    }

    fn lead_pages<'a>(
        &'a self,
        token: &'a SecretString,
        node_id: &str,
        query: &LeadQuery,
    ) -> impl Stream<Item = Result<Page<Lead>, GraphError>> + Send + 'a {
        let operation = format!("GET /{node_id}/leads");
        let first = self.first_leads_url(node_id, query, &operation);
        self.pages(token, operation, first, Lead::from_json)
    }

    fn first_leads_url(
        &self,
        node_id: &str,
        query: &LeadQuery,
        operation: &str,
    ) -> Result<Url, GraphError> {
        let mut params = vec![("fields".to_owned(), self.lead_fields.clone())];
        if let Some(filtering) = query.filtering() {
            params.push(("filtering".to_owned(), filtering));
        }
        if let Some(limit) = query.limit {
            params.push(("limit".to_owned(), limit.to_string()));
        }
        self.node_url(&[node_id, "leads"], operation)
            .map(|url| with_query(url, &params))
    }

    /// The first page of `GET /{form-or-ad-id}/leads`; follow it with
    /// [`GraphClient::lead_page_after`] while [`Page::next_page`] is `Some`.
    pub async fn lead_page(
        &self,
        token: &SecretString,
        node_id: &str,
        query: &LeadQuery,
    ) -> Result<Page<Lead>, GraphError> {
        let operation = format!("GET /{node_id}/leads");
        let url = self.first_leads_url(node_id, query, &operation)?;
        self.fetch_page(token, operation, url, Lead::from_json)
            .await
    }

    /// The page of leads at `next`.
    pub async fn lead_page_after(
        &self,
        token: &SecretString,
        next: &NextPage,
    ) -> Result<Page<Lead>, GraphError> {
        self.fetch_page(
            token,
            format!("GET {} (next page)", next.0.path()),
            next.0.clone(),
            Lead::from_json,
        )
        .await
    }

    /// `GET /{page-id}/leadgen_forms`, every page.
    pub fn leadgen_forms<'a>(
        &'a self,
        token: &'a SecretString,
        page_id: &str,
    ) -> impl Stream<Item = Result<Page<LeadgenForm>, GraphError>> + Send + 'a {
        let operation = format!("GET /{page_id}/leadgen_forms");
        let params = vec![("fields".to_owned(), FORM_FIELDS.to_owned())];
        let first = self
            .node_url(&[page_id, "leadgen_forms"], &operation)
            .map(|url| with_query(url, &params));
        self.pages(token, operation, first, |json| {
            let mut form: LeadgenForm =
                serde_json::from_str(json).map_err(|e| ParseError::new("leadgen form", &e))?;
            form.raw = json.to_owned();
            Ok(form)
        })
    }

    /// Fetches one page: the first, or the one after `page` when it has a next.
    pub async fn next_page<T>(
        &self,
        token: &SecretString,
        page: &Page<T>,
        parse: fn(&str) -> Result<T, ParseError>,
    ) -> Option<Result<Page<T>, GraphError>> {
        let next = page.next.clone()?;
        Some(
            self.fetch_page(token, "GET next page".into(), next, parse)
                .await,
        )
    }

    pub(super) fn pages<'a, T: Send + 'a>(
        &'a self,
        token: &'a SecretString,
        operation: String,
        first: Result<Url, GraphError>,
        parse: fn(&str) -> Result<T, ParseError>,
    ) -> impl Stream<Item = Result<Page<T>, GraphError>> + Send + 'a {
        let start = (Some(first), std::collections::HashSet::<String>::new());
        futures::stream::try_unfold(start, move |(state, mut seen)| {
            let operation = operation.clone();
            async move {
                let Some(url) = state else {
                    return Ok(None);
                };
                let url = url?;
                // A `paging.next` that points back at a page already read, or pages without
                // end, would read forever: stop with an error instead.
                if !seen.insert(url.as_str().to_owned()) {
                    return Err(GraphError::local(
                        operation,
                        ErrorClass::BadRequest,
                        "paging.next repeats a page already read: the listing was stopped",
                    ));
                }
                if seen.len() > MAX_PAGES {
                    return Err(GraphError::local(
                        operation,
                        ErrorClass::BadRequest,
                        format!("more than {MAX_PAGES} pages: the listing was stopped"),
                    ));
                }
                let page = self.fetch_page(token, operation, url, parse).await?;
                let next = page.next.clone().map(Ok);
                Ok(Some((page, (next, seen))))
            }
        })
    }

    async fn fetch_page<T>(
        &self,
        token: &SecretString,
        operation: String,
        url: Url,
        parse: fn(&str) -> Result<T, ParseError>,
    ) -> Result<Page<T>, GraphError> {
        let url_for_next = url.clone();
        let body = self
            .execute(
                &operation,
                Method::GET,
                url,
                Payload::Query(Vec::new()),
                token,
                &[],
            )
            .await?;
        #[derive(Deserialize)]
        struct Wire<'b> {
            #[serde(borrow, default)]
            data: Vec<&'b RawValue>,
            #[serde(default)]
            paging: Option<Paging>,
        }
        #[derive(Deserialize)]
        struct Paging {
            #[serde(default)]
            next: Option<String>,
            #[serde(default)]
            cursors: Option<Cursors>,
        }
        #[derive(Deserialize)]
        struct Cursors {
            #[serde(default)]
            after: Option<String>,
        }
        let wire: Wire<'_> = serde_json::from_str(&body)
            .map_err(|e| parse_failure(operation.clone(), ParseError::new("page", &e)))?;
        let mut items = Vec::with_capacity(wire.data.len());
        let mut unreadable = Vec::new();
        for raw in wire.data {
            match parse(raw.get()) {
                Ok(item) => items.push(item),
                Err(err) => {
                    let err = err.with_id_from(raw.get());
                    tracing::warn!(operation = %operation, error = %err, "skipping an unreadable item of a page");
                    unreadable.push(err);
                }
            }
        }
        let paging = wire.paging;
        let next = match paging.as_ref().and_then(|p| p.next.as_deref()) {
            Some(next) => Some(next_page_url(next, &url_for_next, &operation)?),
            None => None,
        };
        Ok(Page {
            items,
            unreadable,
            after: paging.and_then(|p| p.cursors).and_then(|c| c.after),
            has_next: next.is_some(),
            next,
        })
    }
}

/// The page after `current`, from Meta's `paging.next`: only the same edge of the same node
/// (`[base path]/<version>/<id>/<edge>`) is followed, on our own base (its path prefix kept),
/// with the cursors and filters Meta put in its query but without the token it echoes. Any
/// other place is a Graph error: the token goes only where the client was configured to
/// send it.
fn next_page_url(next: &str, current: &Url, operation: &str) -> Result<Url, GraphError> {
    let refuse = |why: &str| GraphError::local(operation.to_owned(), ErrorClass::BadRequest, why);
    let parsed = Url::parse(next).map_err(|_| refuse("paging.next is not a URL"))?;
    let segments = |url: &Url| -> Vec<String> {
        url.path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let (want, got) = (segments(current), segments(&parsed));
    let shape_ok = want.len() >= 3 && got.len() >= 3 && {
        let (want_prefix, want_tail) = want.split_at(want.len() - 2);
        let (got_head, got_tail) = got.split_at(got.len() - 2);
        let (got_version, got_prefix) = got_head.split_last().unzip();
        let base_prefix = &want_prefix[..want_prefix.len() - 1];
        got_tail == want_tail
            && got_version.is_some_and(|v| is_version(v))
            && got_prefix.is_some_and(|p| p.is_empty() || p == base_prefix)
    };
    if !shape_ok {
        return Err(refuse(
            "paging.next points somewhere other than the next page of this edge",
        ));
    }
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != "access_token" && k != "appsecret_proof")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut url = current.clone();
    url.set_query(None);
    Ok(with_query(url, &kept))
}

/// `v26.0`, `v9`: the version segment of a Graph path.
fn is_version(segment: &str) -> bool {
    segment.strip_prefix('v').is_some_and(|rest| {
        !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit() || c == '.')
    })
}
