//! Who the stand-in Meta knows, for `leadpipe connect` (docs/connect.md): the app, people's
//! tokens (short-lived, long-lived, system user, expired; with or without scopes), which
//! pages have the app subscribed, the app's own webhook subscription, and test leads.

use std::collections::{BTreeMap, BTreeSet};

/// Every permission leadpipe can use.
pub const ALL_SCOPES: [&str; 6] = [
    "leads_retrieval",
    "pages_show_list",
    "pages_read_engagement",
    "pages_manage_metadata",
    "pages_manage_ads",
    "ads_management",
];

/// What kind of person's token it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A user token from a login: an hour.
    ShortLived,
    /// A user token after `fb_exchange_token`: about 60 days.
    LongLived,
    /// A system user's token: does not expire.
    SystemUser,
    /// A user token past its expiry.
    Expired,
}

/// A person's token the stand-in accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserToken {
    /// The token's text.
    pub token: String,
    /// Its kind.
    pub kind: TokenKind,
    /// Its permissions.
    pub scopes: Vec<String>,
    /// The pages its user can act on; `None` means every page of the world.
    pub pages: Option<Vec<String>>,
    /// Unix seconds it was issued.
    pub issued_at: i64,
}

impl UserToken {
    /// A token of `kind` with every scope, for every page.
    pub fn new(token: &str, kind: TokenKind) -> Self {
        Self {
            token: token.to_owned(),
            kind,
            scopes: ALL_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            pages: None,
            issued_at: now(),
        }
    }

    /// The same token without these scopes.
    pub fn without(mut self, scopes: &[&str]) -> Self {
        self.scopes.retain(|s| !scopes.contains(&s.as_str()));
        self
    }

    /// Unix seconds it expires; 0 for never.
    pub fn expires_at(&self) -> i64 {
        match self.kind {
            TokenKind::ShortLived => self.issued_at + 3_600,
            TokenKind::LongLived => self.issued_at + 60 * 86_400,
            TokenKind::SystemUser => 0,
            TokenKind::Expired => self.issued_at - 3_600,
        }
    }
}

/// The app and the people the stand-in knows.
#[derive(Debug, Clone)]
pub struct Accounts {
    /// The app's id.
    pub app_id: String,
    /// The app's secret.
    pub app_secret: String,
    /// People's tokens.
    pub users: Vec<UserToken>,
    /// Pages with the app subscribed to `leadgen`; `None` means every page (the world as
    /// the demo and the tests of reading assume it).
    pub subscribed_pages: Option<BTreeSet<String>>,
    /// `/me/accounts` page size, small so paging is exercised.
    pub accounts_page_size: usize,
    /// Business Managers and the pages they hold (`/me/businesses`, needs
    /// `business_management`); each user sees every business here.
    pub businesses: Vec<SandboxBusiness>,
}

/// A Business Manager of the sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxBusiness {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Pages it owns (`owned_pages`).
    pub owned_pages: Vec<String>,
    /// Its clients' pages it has access to (`client_pages`).
    pub client_pages: Vec<String>,
}

/// The app secret the sandbox's webhook sender signs with in the demo.
pub fn demo_app_secret() -> &'static str {
    "sandbox-app-secret"
}

/// The token [`Accounts::default`] knows: a short-lived one with every scope.
pub const DEFAULT_USER_TOKEN: &str = "sandbox-user-token";
/// The sandbox app's id.
pub const APP_ID: &str = "1000000000001";

impl Default for Accounts {
    fn default() -> Self {
        Self {
            app_id: APP_ID.to_owned(),
            app_secret: demo_app_secret().to_owned(),
            users: vec![UserToken::new(DEFAULT_USER_TOKEN, TokenKind::ShortLived)],
            subscribed_pages: None,
            accounts_page_size: 2,
            businesses: Vec::new(),
        }
    }
}

/// What has changed since start: subscriptions and test leads.
#[derive(Debug, Clone, Default)]
pub(crate) struct Registry {
    pub accounts: Accounts,
    /// The app's webhook subscription: `(callback_url, verify_token)`.
    pub app_subscription: Option<(String, String)>,
    /// Each form's test lead.
    pub test_leads: BTreeMap<String, String>,
    /// Tokens issued by `fb_exchange_token`, counted for their names.
    pub exchanged: u64,
}

impl Registry {
    pub fn user(&self, token: &str) -> Option<&UserToken> {
        self.accounts.users.iter().find(|u| u.token == token)
    }

    pub fn is_subscribed(&self, page: &str) -> bool {
        self.accounts
            .subscribed_pages
            .as_ref()
            .is_none_or(|s| s.contains(page))
    }

    pub fn subscribe(&mut self, page: &str, all_pages: &[String]) {
        let set = self
            .accounts
            .subscribed_pages
            .get_or_insert_with(|| all_pages.iter().cloned().collect());
        set.insert(page.to_owned());
    }

    pub fn app_token(&self) -> String {
        format!("{}|{}", self.accounts.app_id, self.accounts.app_secret)
    }
}

pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
