//! What lies under a port's failure, kept apart from the ports so that the rules that
//! only report a store's failure (the forms catalog) need not import the ports' vocabulary.

/// What lies under a port's failure: a message for people (never a secret or a lead value)
/// and, when an adapter had one, the error itself, kept for `source()` chains. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Cause {
    message: String,
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl Cause {
    /// The error, described by its own `Display`.
    pub fn from_error(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            message: error.to_string(),
            source: Some(std::sync::Arc::new(error)),
        }
    }

    /// The error, with a description of the adapter's own (an SDK's `Display` can be as
    /// terse as "service error").
    pub fn described(
        message: impl Into<String>,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(std::sync::Arc::new(error)),
        }
    }
}

impl From<String> for Cause {
    fn from(message: String) -> Self {
        Self {
            message,
            source: None,
        }
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Two causes are the same failure when they say the same.
impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for Cause {}

/// Why the store could not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer.
    #[error("the lead store could not be reached: {0}")]
    Unavailable(#[source] Cause),
    /// The store answered with a refusal.
    #[error("the lead store refused the write: {0}")]
    Rejected(#[source] Cause),
}
