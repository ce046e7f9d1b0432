//! The dead-letter classes every store writes and every command reads (DESIGN.md, "Dead
//! letters"): one list, so `status` and `redrive --reason-class` cannot drift apart.

/// The `leadpipe_reason_class` of a dead letter (docs/architecture.md, "Dead letters").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterClass {
    /// The message body is not a lead event, or its ids are not Graph ids.
    Malformed,
    /// The lead is gone or invisible to the token.
    NotFound,
    /// The token lacks a permission.
    Permission,
    /// The token is expired or revoked.
    Token,
    /// Meta refused the request for another reason.
    BadRequest,
    /// The lead does not fit in a DynamoDB item even without `raw`.
    TooLarge,
    /// Meta's answer for the lead has a shape the parser refuses.
    Unreadable,
    /// The message used up its receives without success (the SQLite queue's own limit; on
    /// AWS what SQS moved to the DLQ after `maxReceiveCount`, with no attribute of ours).
    Exhausted,
    /// A destination (the forward URL) refused the lead with a permanent answer.
    Refused,
    /// A stage names a lead the store does not hold (docs/stages.md).
    UnknownLead,
    /// A stage dated before its lead was created: Meta would drop it without a word.
    BeforeLead,
    /// A stage that would be older than 7 days when sent: it would sink the whole request.
    Expired,
}

impl DeadLetterClass {
    /// Every class, in the contract's order.
    pub const ALL: [Self; 12] = [
        Self::Malformed,
        Self::NotFound,
        Self::Permission,
        Self::Token,
        Self::BadRequest,
        Self::TooLarge,
        Self::Unreadable,
        Self::Exhausted,
        Self::Refused,
        Self::UnknownLead,
        Self::BeforeLead,
        Self::Expired,
    ];

    /// The attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::NotFound => "not_found",
            Self::Permission => "permission",
            Self::Token => "token",
            Self::BadRequest => "bad_request",
            Self::TooLarge => "too_large",
            Self::Unreadable => "unreadable",
            Self::Exhausted => "exhausted",
            Self::Refused => "refused",
            Self::UnknownLead => "unknown_lead",
            Self::BeforeLead => "before_lead",
            Self::Expired => "expired",
        }
    }

    /// The class named `name`, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The dead-letter class of a permanent Graph failure; `None` for the retryable ones.
    pub fn of_graph(class: leadpipe_graph::ErrorClass) -> Option<Self> {
        use leadpipe_graph::ErrorClass as G;
        match class {
            G::Transient | G::RateLimited => None,
            G::Token => Some(Self::Token),
            G::Permission => Some(Self::Permission),
            G::NotFound => Some(Self::NotFound),
            G::BadRequest => Some(Self::BadRequest),
            G::Unreadable => Some(Self::Unreadable),
        }
    }
}

impl std::fmt::Display for DeadLetterClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message leaves the queue for the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterReason {
    /// The `leadpipe_reason_class` attribute.
    pub class: DeadLetterClass,
    /// One line for the operator: what failed and what to do. Never lead contents.
    pub detail: String,
}

/// A name that is no dead-letter class; its message lists the classes there are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{name:?} is not a dead-letter class: use one of {}",
    DeadLetterClass::names()
)]
pub struct UnknownClass {
    /// What was given.
    pub name: String,
}

impl DeadLetterClass {
    /// Every class's name, comma-separated, for messages and help.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::str::FromStr for DeadLetterClass {
    type Err = UnknownClass;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::parse(name).ok_or_else(|| UnknownClass {
            name: name.chars().take(40).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_reads_back_from_its_name_and_nothing_else_does() {
        for class in DeadLetterClass::ALL {
            assert_eq!(class.as_str().parse::<DeadLetterClass>(), Ok(class));
            assert_eq!(class.to_string(), class.as_str());
        }
        let err = "max_receives".parse::<DeadLetterClass>().unwrap_err();
        assert!(err.to_string().contains("exhausted"), "{err}");
        assert!("".parse::<DeadLetterClass>().is_err());
        assert!("Token".parse::<DeadLetterClass>().is_err());
    }
}
