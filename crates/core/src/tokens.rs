//! Tokens that heal: the page tokens a process reads Graph with, and the rule for reading
//! the secret again before giving a page's leads up (docs/connect.md, "When a token
//! changes").
//!
//! A warm Lambda container (or a long-running `serve`) keeps the secret it read at start.
//! When `connect` adds a page or replaces a token, or a token dies and is replaced, the
//! process would dead-letter that page's leads `token` until it is recycled. Instead, a read
//! that fails for a token or permission reason makes the use case ask [`TokenRefresh`] to
//! read the secret again; when it did, the page's reads are tried once more with what the
//! secret now holds, and only what still fails is dead-lettered. [`SecretsRefresher`] reads
//! at most once a minute per process, and concurrent callers share one read.

use crate::secrets::{AppSecrets, SecretsError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The least time between two reads of the secret by one process.
pub const MIN_REREAD: Duration = Duration::from_secs(60);

/// The secret as the process holds it: shared by the Graph readers (which take the current
/// version per call) and replaced by a re-read. Clones share it.
#[derive(Clone)]
pub struct TokenBook {
    current: Arc<RwLock<Arc<AppSecrets>>>,
    generation: Arc<AtomicU64>,
}

impl std::fmt::Debug for TokenBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBook")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl TokenBook {
    /// A book holding `secrets`.
    pub fn new(secrets: AppSecrets) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(secrets))),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The secret as it is now.
    pub fn current(&self) -> Arc<AppSecrets> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the secret (a re-read).
    pub fn replace(&self, secrets: AppSecrets) {
        let secrets = Arc::new(secrets);
        match self.current.write() {
            Ok(mut current) => *current = secrets,
            Err(poisoned) => *poisoned.into_inner() = secrets,
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// How many times the secret was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

/// Reads the secret from where it lives (Secrets Manager, the secret file).
pub trait SecretsLoader: Send + Sync {
    /// The secret as it is now.
    fn load(&self) -> impl Future<Output = Result<AppSecrets, SecretsError>> + Send;

    /// Whether the secret has surely changed since the last load, when that is cheap to
    /// tell (a file's modification time, Secrets Manager's current version id): then it is
    /// read again at once, whatever the interval. `false` when it cannot tell.
    fn changed(&self) -> impl Future<Output = bool> + Send {
        async { false }
    }
}

/// What the use cases ask when a page's token was refused.
pub trait TokenRefresh: Send + Sync {
    /// Which version of the secret the readers hold now: taken before a read, and given
    /// to [`TokenRefresh::refresh`] when that read is refused.
    fn generation(&self) -> u64;

    /// Reads the secret again, if the rule allows it now; `true` when the tokens are newer
    /// than `seen` (the version the refused read used), by this call or an earlier one, so
    /// a retry may succeed.
    fn refresh(&self, seen: u64) -> impl Future<Output = bool> + Send;
}

/// No re-read: a process whose secret cannot change (inline settings, tools).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRefresh;

impl TokenRefresh for NoRefresh {
    fn generation(&self) -> u64 {
        0
    }

    async fn refresh(&self, _seen: u64) -> bool {
        false
    }
}

/// The rule: at most one read per [`MIN_REREAD`] per process, one read shared by the callers
/// that ask while it runs.
pub struct SecretsRefresher<L> {
    loader: L,
    book: TokenBook,
    last: Mutex<Option<Instant>>,
    turn: futures::lock::Mutex<()>,
    min_interval: Duration,
    reads: AtomicU64,
}

impl<L> std::fmt::Debug for SecretsRefresher<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsRefresher")
            .field("reads", &self.reads.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<L: SecretsLoader> SecretsRefresher<L> {
    /// A refresher reading through `loader` into `book`.
    pub fn new(loader: L, book: TokenBook) -> Self {
        Self::with_interval(loader, book, MIN_REREAD)
    }

    /// The same with another least interval (tests).
    pub fn with_interval(loader: L, book: TokenBook, min_interval: Duration) -> Self {
        Self {
            loader,
            book,
            last: Mutex::new(None),
            turn: futures::lock::Mutex::new(()),
            min_interval,
            reads: AtomicU64::new(0),
        }
    }

    /// Reads of the secret made so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// The book it writes.
    pub fn book(&self) -> &TokenBook {
        &self.book
    }
}

impl<L: SecretsLoader> TokenRefresh for SecretsRefresher<L> {
    fn generation(&self) -> u64 {
        self.book.generation()
    }

    async fn refresh(&self, seen: u64) -> bool {
        // The secret was read again since the refused read began (by another caller, before
        // or while this one waited): retry with that.
        if self.book.generation() != seen {
            return true;
        }
        let _turn = self.turn.lock().await;
        if self.book.generation() != seen {
            return true;
        }
        let interval_passed = self
            .last
            .lock()
            .is_ok_and(|last| last.is_none_or(|at| at.elapsed() >= self.min_interval));
        let due = interval_passed || self.loader.changed().await;
        if due && let Ok(mut last) = self.last.lock() {
            *last = Some(Instant::now());
        }
        if !due {
            return false;
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        match self.loader.load().await {
            Ok(secrets) => {
                self.book.replace(secrets);
                tracing::info!(
                    "the secret was read again after a token was refused; the page's reads are retried with it"
                );
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, "the secret could not be read again; the refused reads stand");
                false
            }
        }
    }
}

/// A token expiring sooner than this is reported `expiring_soon` (and counted in the
/// `PageTokensExpiringSoon` metric, which has an alarm).
pub const EXPIRING_SOON: Duration = Duration::from_secs(7 * 86_400);

/// A page token's health, as each backfill run finds it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    /// Valid, with lead access, not expiring within [`EXPIRING_SOON`].
    Valid,
    /// Valid, but it expires within [`EXPIRING_SOON`].
    ExpiringSoon,
    /// Meta refuses it (expired, revoked, password changed) or the secret has none.
    Invalid,
    /// Valid, but it may not read the page's leads (Leads Access Manager, a missing role).
    NoLeadAccess,
    /// Graph could not say (down, rate limited): no verdict this run.
    Unchecked,
}

impl TokenState {
    /// As `status` and the logs say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::ExpiringSoon => "expiring_soon",
            Self::Invalid => "invalid",
            Self::NoLeadAccess => "no_lead_access",
            Self::Unchecked => "unchecked",
        }
    }

    /// Whether a person must act now (its leads are, or soon will be, refused).
    pub fn needs_a_person(self) -> bool {
        !matches!(self, Self::Valid | Self::Unchecked)
    }

    /// What fixes it.
    pub fn fix(self) -> &'static str {
        match self {
            Self::Valid => "nothing to do",
            Self::Unchecked => "nothing yet: the next backfill run checks it again",
            Self::ExpiringSoon | Self::Invalid => {
                "issue a new token for the page's person (or a system user) and run `leadpipe connect --app-id <APP_ID> --page <PAGE_ID>` with the pipeline's --db or --stack: it writes the token and brings back the leads that waited"
            }
            Self::NoLeadAccess => {
                "give the app and the token's person access in Meta Business Suite > Settings > Leads Access, then run `leadpipe connect --page <PAGE_ID>` with the pipeline's --db or --stack"
            }
        }
    }
}

/// One page token's health at a backfill run: ids, Meta's reason and the expiry, never the
/// token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PageTokenHealth {
    /// The page.
    pub page_id: String,
    /// What the run found.
    pub state: TokenState,
    /// Unix seconds; `None` when it does not expire or is not known.
    pub expires_at: Option<i64>,
    /// Meta's reason for an invalid token or denied access.
    pub reason: Option<String>,
    /// When it was checked, RFC 3339 UTC.
    pub checked_at: String,
}

/// Judges a page token from `debug_token`'s answer (or why it could not be had) and the
/// page's lead access, at `now` (unix seconds).
pub fn judge_token(
    page_id: &str,
    info: Result<&leadpipe_graph::TokenInfo, &leadpipe_graph::GraphError>,
    access: Option<&leadpipe_graph::HasLeadAccess>,
    now: time::OffsetDateTime,
) -> PageTokenHealth {
    let checked_at = crate::when::contract_time(now);
    let health = |state, expires_at, reason: Option<String>| PageTokenHealth {
        page_id: page_id.to_owned(),
        state,
        expires_at,
        reason,
        checked_at: checked_at.clone(),
    };
    let info = match info {
        Ok(info) => info,
        Err(err) if err.class() == leadpipe_graph::ErrorClass::Token => {
            return health(TokenState::Invalid, None, Some(err.message.clone()));
        }
        // Graph down or rate limited: no verdict on the token (and no alarm).
        Err(err) => {
            return health(TokenState::Unchecked, None, Some(err.message.clone()));
        }
    };
    let expires_at = info.expires_at.filter(|at| *at > 0);
    if !info.is_valid {
        let reason = info
            .error
            .as_ref()
            .and_then(|e| e.message.clone())
            .unwrap_or_else(|| "Meta says the token is not valid".into());
        return health(TokenState::Invalid, expires_at, Some(reason));
    }
    if let Some(access) = access
        && !access.can_access_lead
    {
        return health(
            TokenState::NoLeadAccess,
            expires_at,
            Some(access.diagnosis()),
        );
    }
    let soon = now.unix_timestamp() + EXPIRING_SOON.as_secs() as i64;
    match expires_at {
        Some(at) if at <= soon => health(TokenState::ExpiringSoon, Some(at), None),
        _ => health(TokenState::Valid, expires_at, None),
    }
}

/// Whether `connect`, having fixed `pages` (a new token, access granted), brings this dead
/// letter back: a `token` or `permission` one of one of those pages. Leads of other pages
/// and other classes stay where they are.
pub fn healed_by_connect(
    class: crate::dead_letter::DeadLetterClass,
    body: &str,
    pages: &std::collections::BTreeSet<String>,
) -> bool {
    use crate::dead_letter::DeadLetterClass as C;
    matches!(class, C::Token | C::Permission)
        && crate::event::LeadEvent::from_message_body(body)
            .is_ok_and(|e| pages.contains(&e.page_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn secrets(page_token: &str) -> AppSecrets {
        AppSecrets {
            app_secret: SecretString::from("s"),
            verify_token: None,
            access_token: None,
            page_tokens: [("77".to_owned(), SecretString::from(page_token))].into(),
            lookup_key: None,
            conversions_token: None,
            stage_keys: Vec::new(),
            destinations: Default::default(),
            destinations_file: None,
        }
    }

    /// A secret store whose token can be changed, counting reads, taking its time.
    #[derive(Default)]
    struct Store {
        token: Mutex<String>,
        reads: AtomicU64,
    }

    impl SecretsLoader for Arc<Store> {
        async fn load(&self) -> Result<AppSecrets, SecretsError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(secrets(&self.token.lock().unwrap()))
        }
    }

    fn token_of(book: &TokenBook) -> String {
        use secrecy::ExposeSecret;
        book.current().page_tokens["77"].expose_secret().to_owned()
    }

    #[tokio::test]
    async fn the_secret_is_read_again_at_most_once_a_minute() {
        let store = Arc::new(Store::default());
        *store.token.lock().unwrap() = "new".into();
        let book = TokenBook::new(secrets("old"));
        let refresher = SecretsRefresher::new(store.clone(), book.clone());
        assert!(refresher.refresh(0).await, "the first refusal reads it");
        assert_eq!(token_of(&book), "new", "the readers see the new token");
        for _ in 0..10 {
            let now = refresher.generation();
            assert!(
                !refresher.refresh(now).await,
                "then not again within the minute"
            );
        }
        assert_eq!(store.reads.load(Ordering::SeqCst), 1);
        // A read that began before the re-read and was refused after it retries with it.
        assert!(
            refresher.refresh(0).await,
            "the secret is newer than that read's"
        );
        assert_eq!(store.reads.load(Ordering::SeqCst), 1);
        let quick = SecretsRefresher::with_interval(store.clone(), book, Duration::ZERO);
        assert!(quick.refresh(quick.generation()).await);
        assert!(quick.refresh(quick.generation()).await);
        assert_eq!(quick.reads(), 2, "the interval is the rule's only limit");
    }

    /// A secret file: it says when it was written since the last read.
    struct File {
        written: std::sync::atomic::AtomicBool,
        reads: AtomicU64,
    }

    impl SecretsLoader for Arc<File> {
        async fn load(&self) -> Result<AppSecrets, SecretsError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.written.store(false, Ordering::SeqCst);
            Ok(secrets("new"))
        }
        async fn changed(&self) -> bool {
            self.written.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_secret_surely_rewritten_is_read_again_within_the_minute() {
        let file = Arc::new(File {
            written: std::sync::atomic::AtomicBool::new(false),
            reads: AtomicU64::new(0),
        });
        let refresher = SecretsRefresher::new(file.clone(), TokenBook::new(secrets("old")));
        assert!(refresher.refresh(0).await);
        let now = refresher.generation();
        assert!(
            !refresher.refresh(now).await,
            "unchanged: the interval holds"
        );
        file.written.store(true, Ordering::SeqCst);
        assert!(
            refresher.refresh(now).await,
            "`connect` wrote it: read at once"
        );
        assert_eq!(file.reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_that_ask_together_share_one_read() {
        let store = Arc::new(Store::default());
        *store.token.lock().unwrap() = "new".into();
        let refresher = Arc::new(SecretsRefresher::new(
            store.clone(),
            TokenBook::new(secrets("old")),
        ));
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let refresher = refresher.clone();
                tokio::spawn(async move { refresher.refresh(0).await })
            })
            .collect();
        let mut told = Vec::new();
        for caller in callers {
            told.push(caller.await.unwrap());
        }
        assert_eq!(store.reads.load(Ordering::SeqCst), 1, "one read for all");
        assert!(told.iter().all(|t| *t), "every caller may retry: {told:?}");
    }

    #[test]
    fn connect_brings_back_only_that_pages_token_and_permission_dead_letters() {
        use crate::dead_letter::DeadLetterClass as C;
        let body = |page: &str| {
            format!(
                r#"{{"leadgen_id":"1","page_id":"{page}","received_at":"2026-12-01T00:00:00Z"}}"#
            )
        };
        let fixed: std::collections::BTreeSet<String> = ["77".to_owned()].into();
        assert!(healed_by_connect(C::Token, &body("77"), &fixed));
        assert!(healed_by_connect(C::Permission, &body("77"), &fixed));
        assert!(
            !healed_by_connect(C::Token, &body("88"), &fixed),
            "another page"
        );
        for other in [C::NotFound, C::Exhausted, C::Malformed, C::BadRequest] {
            assert!(!healed_by_connect(other, &body("77"), &fixed), "{other}");
        }
        assert!(!healed_by_connect(C::Token, "not json", &fixed));
    }

    #[test]
    fn a_page_token_is_judged_by_metas_answer_and_its_expiry() {
        let now = time::macros::datetime!(2026-12-02 00:00:00 UTC);
        let info = |valid: bool, expires_at: i64| -> leadpipe_graph::TokenInfo {
            serde_json::from_value(serde_json::json!({
                "is_valid": valid, "expires_at": expires_at,
                "error": (!valid).then(|| serde_json::json!({"code": 190, "subcode": 460,
                    "message": "The session has been invalidated because the user changed their password"}))
            }))
            .unwrap()
        };
        let access = |ok: bool| -> leadpipe_graph::HasLeadAccess {
            serde_json::from_value(serde_json::json!({"can_access_lead": ok,
                "failure_reason": (!ok).then_some("The app is not allowed by Leads Access Manager")}))
            .unwrap()
        };
        let day = 86_400;
        let at = now.unix_timestamp();
        let judged = |i: &leadpipe_graph::TokenInfo, a: bool| {
            judge_token("77", Ok(i), Some(&access(a)), now).state
        };
        assert_eq!(
            judged(&info(true, 0), true),
            TokenState::Valid,
            "never expires"
        );
        assert_eq!(judged(&info(true, at + 30 * day), true), TokenState::Valid);
        assert_eq!(
            judged(&info(true, at + 6 * day), true),
            TokenState::ExpiringSoon
        );
        assert_eq!(
            judged(&info(true, at + 30 * day), false),
            TokenState::NoLeadAccess
        );
        let invalid = judge_token("77", Ok(&info(false, 0)), None, now);
        assert_eq!(invalid.state, TokenState::Invalid);
        assert!(invalid.reason.unwrap().contains("changed their password"));
        let refused = leadpipe_graph::GraphError::local(
            "GET /debug_token".into(),
            leadpipe_graph::ErrorClass::Token,
            "the secret has no page_tokens entry for this page",
        );
        assert_eq!(
            judge_token("77", Err(&refused), None, now).state,
            TokenState::Invalid
        );
        assert!(TokenState::ExpiringSoon.needs_a_person() && !TokenState::Valid.needs_a_person());
    }
}
