//! The calls that connect an app to pages (docs/connect.md): a short-lived user token
//! exchanged for a long-lived one, the user's pages with their tokens, a form's test leads,
//! and deleting a node (a test lead).

use super::{GraphClient, Payload, expect_success, parse_failure, with_query};
use crate::error::GraphError;
use crate::models::ParseError;
use futures::Stream;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// A long-lived user token from `GET /oauth/access_token?grant_type=fb_exchange_token`.
#[derive(Debug, Clone)]
pub struct ExchangedToken {
    /// The new token (about 60 days).
    pub access_token: SecretString,
    /// Seconds until it expires, when Meta says.
    pub expires_in: Option<i64>,
}

/// One page the user can act on (`GET /me/accounts`), with its own token.
#[derive(Clone, Deserialize)]
pub struct PageAccount {
    /// The page's id.
    #[serde(deserialize_with = "super::string_or_number")]
    pub id: String,
    /// The page's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The page token; from a long-lived user token it does not expire.
    pub access_token: SecretString,
    /// What the user may do on the page (`MANAGE`, `ADVERTISE`, ...).
    #[serde(default)]
    pub tasks: Vec<String>,
}

impl std::fmt::Debug for PageAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageAccount")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("tasks", &self.tasks)
            .finish_non_exhaustive()
    }
}

/// A Business Manager the token's person or system user can see (`GET /me/businesses`).
#[derive(Debug, Clone, Deserialize)]
pub struct Business {
    /// The business's id.
    #[serde(deserialize_with = "super::string_or_number")]
    pub id: String,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
}

/// How a business holds a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusinessEdge {
    /// `owned_pages`: the business owns it.
    Owned,
    /// `client_pages`: a client's page the business has access to (agencies).
    Client,
}

impl BusinessEdge {
    /// The edge's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owned => "owned_pages",
            Self::Client => "client_pages",
        }
    }
}

/// A page of a business (`GET /{business-id}/owned_pages` or `client_pages`); its token is
/// there only when the token's person or system user has a task on the page.
#[derive(Clone, Deserialize)]
pub struct BusinessPage {
    /// The page's id.
    #[serde(deserialize_with = "super::string_or_number")]
    pub id: String,
    /// The page's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The page token, when Meta gives one.
    #[serde(default)]
    pub access_token: Option<SecretString>,
}

impl std::fmt::Debug for BusinessPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusinessPage")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("access_token", &self.access_token.is_some())
            .finish()
    }
}

fn business(json: &str) -> Result<Business, ParseError> {
    serde_json::from_str(json).map_err(|e| ParseError::new("business", &e))
}

fn business_page(json: &str) -> Result<BusinessPage, ParseError> {
    serde_json::from_str(json).map_err(|e| ParseError::new("business page", &e))
}

fn page_account(json: &str) -> Result<PageAccount, ParseError> {
    serde_json::from_str(json).map_err(|e| ParseError::new("page account", &e))
}

fn node_id(json: &str) -> Result<String, ParseError> {
    #[derive(Deserialize)]
    struct Node {
        #[serde(deserialize_with = "super::string_or_number")]
        id: String,
    }
    serde_json::from_str::<Node>(json)
        .map(|n| n.id)
        .map_err(|e| ParseError::new("node", &e))
}

impl GraphClient {
    /// `GET /oauth/access_token?grant_type=fb_exchange_token`: a short-lived user token (an
    /// hour) for a long-lived one (about 60 days). Needs the app's id and secret.
    pub async fn exchange_token(
        &self,
        app_id: &str,
        app_secret: &SecretString,
        short_lived: &SecretString,
    ) -> Result<ExchangedToken, GraphError> {
        let operation = "GET /oauth/access_token (fb_exchange_token)".to_owned();
        super::check_id(app_id, &operation)?;
        let url = self.node_url(&["oauth", "access_token"], &operation)?;
        let params = vec![
            ("grant_type".to_owned(), "fb_exchange_token".to_owned()),
            ("client_id".to_owned(), app_id.to_owned()),
            (
                "client_secret".to_owned(),
                app_secret.expose_secret().to_owned(),
            ),
            (
                "fb_exchange_token".to_owned(),
                short_lived.expose_secret().to_owned(),
            ),
        ];
        let body = self
            .execute(
                &operation,
                Method::GET,
                url,
                Payload::Query(params),
                short_lived,
                &[app_secret.expose_secret()],
            )
            .await?;
        #[derive(Deserialize)]
        struct Wire {
            access_token: SecretString,
            #[serde(default)]
            expires_in: Option<i64>,
        }
        serde_json::from_str::<Wire>(&body)
            .map(|w| ExchangedToken {
                access_token: w.access_token,
                expires_in: w.expires_in,
            })
            .map_err(|e| parse_failure(operation, ParseError::new("exchanged token", &e)))
    }

    /// `GET /me/accounts`, every page: the pages the token's user can act on, each with
    /// its own token.
    pub fn my_accounts<'a>(
        &'a self,
        user_token: &'a SecretString,
    ) -> impl Stream<Item = Result<super::Page<PageAccount>, GraphError>> + Send + 'a {
        let operation = "GET /me/accounts".to_owned();
        let params = vec![
            ("fields".to_owned(), "id,name,access_token,tasks".to_owned()),
            ("limit".to_owned(), "100".to_owned()),
        ];
        let first = self
            .node_url(&["me", "accounts"], &operation)
            .map(|url| with_query(url, &params));
        self.pages(user_token, operation, first, page_account)
    }

    /// `GET /me/businesses`, every page: the businesses the token can see (needs
    /// `business_management`).
    pub fn my_businesses<'a>(
        &'a self,
        user_token: &'a SecretString,
    ) -> impl Stream<Item = Result<super::Page<Business>, GraphError>> + Send + 'a {
        let operation = "GET /me/businesses".to_owned();
        let params = vec![
            ("fields".to_owned(), "id,name".to_owned()),
            ("limit".to_owned(), "100".to_owned()),
        ];
        let first = self
            .node_url(&["me", "businesses"], &operation)
            .map(|url| with_query(url, &params));
        self.pages(user_token, operation, first, business)
    }

    /// `GET /{business-id}/owned_pages` or `client_pages`, every page, each with the page
    /// token Meta gives this token's person or system user.
    pub fn business_pages<'a>(
        &'a self,
        user_token: &'a SecretString,
        business_id: &str,
        edge: BusinessEdge,
    ) -> impl Stream<Item = Result<super::Page<BusinessPage>, GraphError>> + Send + 'a {
        let operation = format!("GET /{business_id}/{}", edge.as_str());
        let params = vec![
            ("fields".to_owned(), "id,name,access_token".to_owned()),
            ("limit".to_owned(), "100".to_owned()),
        ];
        let first = self
            .node_url(&[business_id, edge.as_str()], &operation)
            .map(|url| with_query(url, &params));
        self.pages(user_token, operation, first, business_page)
    }

    /// `GET /{form-id}/test_leads`, every page: the ids of the form's test leads.
    pub fn test_leads<'a>(
        &'a self,
        page_token: &'a SecretString,
        form_id: &str,
    ) -> impl Stream<Item = Result<super::Page<String>, GraphError>> + Send + 'a {
        let operation = format!("GET /{form_id}/test_leads");
        let first = self
            .node_url(&[form_id, "test_leads"], &operation)
            .map(|url| with_query(url, &[("fields".to_owned(), "id".to_owned())]));
        self.pages(page_token, operation, first, node_id)
    }

    /// `DELETE /{id}` (a test lead).
    pub async fn delete_node(&self, token: &SecretString, id: &str) -> Result<(), GraphError> {
        let operation = format!("DELETE /{id}");
        let url = self.node_url(&[id], &operation)?;
        let body = self
            .execute(
                &operation,
                Method::DELETE,
                url,
                Payload::Query(Vec::new()),
                token,
                &[],
            )
            .await?;
        expect_success(operation, &body)
    }
}
