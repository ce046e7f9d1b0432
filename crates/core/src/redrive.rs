//! `leadpipe redrive`'s rule, once for every target: dead letters go back where they came
//! from (the lead queue's to the lead queue, forwarding's to the outbox, the stages' to the
//! stage queue), by class, or all of them; `connect` uses the same move for the `token`
//! and `permission` dead letters of the pages it fixed. The SQLite file and the stack
//! implement [`DeadLetterPiles`]; each move deletes a dead letter only once its copy is
//! back, so a failure midway leaves it in both places (ingest's first write wins) or in
//! the dead letters, never nowhere.

use crate::dead_letter::DeadLetterClass;
use crate::failure::Cause;
use serde::Serialize;
use std::collections::BTreeSet;
use std::future::Future;

/// Where dead letters wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pile {
    /// The lead queue's dead letters (ingest's refusals, used-up receives).
    Leads,
    /// Forwarding's (`serve --forward-to`): `refused` and `exhausted` only.
    Forwards,
    /// The stages' (docs/stages.md).
    Stages,
    /// The destinations' (docs/destinations.md): `refused`, `exhausted`, `malformed`.
    Destinations,
}

impl Pile {
    /// Every pile, in the order they are moved.
    pub const ALL: [Self; 4] = [
        Self::Leads,
        Self::Forwards,
        Self::Stages,
        Self::Destinations,
    ];

    /// For messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leads => "lead queue",
            Self::Forwards => "forwarding",
            Self::Stages => "stage queue",
            Self::Destinations => "destinations'",
        }
    }
}

/// Which dead letters go back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick<'a> {
    /// Every one.
    All,
    /// Those of one class.
    Class(DeadLetterClass),
    /// The `token` and `permission` lead dead letters of these pages (after `connect`
    /// fixed them: `tokens::healed_by_connect`).
    HealedPages(&'a BTreeSet<String>),
}

impl Pick<'_> {
    /// `Class(c)` or `All`.
    pub fn of(class: Option<DeadLetterClass>) -> Self {
        class.map_or(Self::All, Self::Class)
    }

    /// The one class asked for, for a store that selects by class itself.
    pub fn class(&self) -> Option<DeadLetterClass> {
        match self {
            Self::Class(c) => Some(*c),
            Self::All | Self::HealedPages(_) => None,
        }
    }

    /// Whether a dead letter of `class` (`None`: a class this build does not know) with
    /// this queue `body` goes back.
    pub fn picks(&self, class: Option<DeadLetterClass>, body: &str) -> bool {
        match self {
            Self::All => true,
            Self::Class(c) => class == Some(*c),
            Self::HealedPages(pages) => {
                class.is_some_and(|c| crate::tokens::healed_by_connect(c, body, pages))
            }
        }
    }

    /// Whether `pile` can hold what this picks: forwarding's dead letters are only ever
    /// `refused` or `exhausted`, and a page fix concerns lead reads only.
    pub fn reaches(&self, pile: Pile) -> bool {
        match (self, pile) {
            (_, Pile::Leads) | (Self::All, _) => true,
            (Self::Class(c), Pile::Forwards) => {
                matches!(c, DeadLetterClass::Refused | DeadLetterClass::Exhausted)
            }
            (Self::Class(_), Pile::Stages) => true,
            (Self::Class(c), Pile::Destinations) => matches!(
                c,
                DeadLetterClass::Refused | DeadLetterClass::Exhausted | DeadLetterClass::Malformed
            ),
            (Self::HealedPages(_), Pile::Forwards | Pile::Stages | Pile::Destinations) => false,
        }
    }
}

/// What a move did to one pile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Moved {
    /// Moved back (a dry run: would be).
    pub moved: usize,
    /// Left where they are: not picked, or their move failed.
    pub left: usize,
    /// Moves that failed (each stays a dead letter).
    pub failed: usize,
}

/// The targets' dead letters.
pub trait DeadLetterPiles: Send + Sync {
    /// Moves the dead letters of `pile` that `pick` picks back where they came from; with
    /// `dry_run`, counts them and changes nothing. A pile the target does not have is
    /// empty.
    fn move_back(
        &self,
        pile: Pile,
        pick: &Pick<'_>,
        dry_run: bool,
    ) -> impl Future<Output = Result<Moved, Cause>> + Send;
}

/// What [`redrive`] did, pile by pile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RedriveReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// The lead queue's.
    pub leads: Moved,
    /// Forwarding's.
    pub forwards: Moved,
    /// The stages'.
    pub stages: Moved,
    /// The destinations'.
    pub destinations: Moved,
}

impl RedriveReport {
    /// The pile's part.
    pub fn pile(&self, pile: Pile) -> &Moved {
        match pile {
            Pile::Leads => &self.leads,
            Pile::Forwards => &self.forwards,
            Pile::Stages => &self.stages,
            Pile::Destinations => &self.destinations,
        }
    }

    fn pile_mut(&mut self, pile: Pile) -> &mut Moved {
        match pile {
            Pile::Leads => &mut self.leads,
            Pile::Forwards => &mut self.forwards,
            Pile::Stages => &mut self.stages,
            Pile::Destinations => &mut self.destinations,
        }
    }

    /// Moves that failed, in every pile: a person runs redrive again.
    pub fn failed(&self) -> usize {
        Pile::ALL.iter().map(|p| self.pile(*p).failed).sum()
    }

    /// Left in every pile.
    pub fn left(&self) -> usize {
        Pile::ALL.iter().map(|p| self.pile(*p).left).sum()
    }

    /// `redrive --json`'s object (docs/operate.md): `moved` is the lead queue's.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "dry_run": self.dry_run,
            "moved": self.leads.moved,
            "forwards": self.forwards.moved,
            "stages": self.stages.moved,
            "destinations": self.destinations.moved,
            "left": self.left(),
            "failed": self.failed(),
        })
    }
}

/// A pile could not be read or moved; the piles before it were.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {} dead letters could not be moved: {cause}", pile.as_str())]
pub struct RedriveError {
    /// The pile that failed.
    pub pile: Pile,
    /// Why.
    #[source]
    pub cause: Cause,
    /// What was done before it.
    pub done: RedriveReport,
}

/// Moves what `pick` picks back, pile by pile, from every pile that can hold it.
pub async fn redrive<P: DeadLetterPiles>(
    piles: &P,
    pick: Pick<'_>,
    dry_run: bool,
) -> Result<RedriveReport, RedriveError> {
    let mut report = RedriveReport {
        dry_run,
        ..Default::default()
    };
    for pile in Pile::ALL {
        if !pick.reaches(pile) {
            continue;
        }
        match piles.move_back(pile, &pick, dry_run).await {
            Ok(moved) => *report.pile_mut(pile) = moved,
            Err(cause) => {
                return Err(RedriveError {
                    pile,
                    cause,
                    done: report,
                });
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryDeadLetters;
    use DeadLetterClass as C;

    fn event(page: &str, lead: &str) -> String {
        format!(
            r#"{{"page_id":"{page}","form_id":"9","leadgen_id":"{lead}","created_time":1764470000,"received_at":"2026-11-30T04:00:00Z"}}"#
        )
    }

    fn piles() -> MemoryDeadLetters {
        let piles = MemoryDeadLetters::default();
        piles.add(Pile::Leads, Some(C::Token), &event("1", "11"));
        piles.add(Pile::Leads, Some(C::Token), &event("2", "12"));
        piles.add(Pile::Leads, Some(C::Exhausted), &event("1", "13"));
        piles.add(Pile::Leads, None, &event("1", "14"));
        piles.add(Pile::Forwards, Some(C::Refused), "f1");
        piles.add(Pile::Forwards, Some(C::Exhausted), "f2");
        piles.add(Pile::Stages, Some(C::UnknownLead), "s1");
        piles
    }

    #[tokio::test]
    async fn a_class_comes_back_from_every_pile_that_can_hold_it_and_only_it() {
        let piles = piles();
        let report = redrive(&piles, Pick::Class(C::Exhausted), false)
            .await
            .unwrap();
        assert_eq!(report.leads.moved, 1);
        assert_eq!(report.forwards.moved, 1);
        assert_eq!(report.stages.moved, 0);
        assert_eq!(piles.back(Pile::Leads), vec![event("1", "13")]);
        assert_eq!(piles.back(Pile::Forwards), vec!["f2".to_owned()]);
        assert_eq!(piles.waiting(Pile::Leads), 3);

        // `token` cannot be a forwarding dead letter: that pile is not even asked.
        let report = redrive(&piles, Pick::Class(C::Token), false).await.unwrap();
        assert_eq!((report.leads.moved, report.forwards), (2, Moved::default()));
        assert_eq!(piles.asked(Pile::Forwards), 1);
    }

    #[tokio::test]
    async fn all_includes_classes_this_build_does_not_know_and_a_dry_run_moves_nothing() {
        let piles = piles();
        let dry = redrive(&piles, Pick::All, true).await.unwrap();
        assert_eq!(
            (dry.leads.moved, dry.forwards.moved, dry.stages.moved),
            (4, 2, 1)
        );
        assert!(dry.dry_run);
        assert_eq!(piles.waiting(Pile::Leads), 4);
        assert!(piles.back(Pile::Leads).is_empty());
        let json = dry.to_json();
        assert_eq!(json["moved"], 4);
        assert_eq!(json["forwards"], 2);
        assert_eq!(json["stages"], 1);

        let done = redrive(&piles, Pick::All, false).await.unwrap();
        assert_eq!(done.leads.moved, 4);
        assert_eq!(piles.waiting(Pile::Leads), 0);
    }

    #[tokio::test]
    async fn a_page_fix_brings_back_that_pages_token_dead_letters_only() {
        let piles = piles();
        let fixed: BTreeSet<String> = ["1".to_owned()].into();
        let report = redrive(&piles, Pick::HealedPages(&fixed), false)
            .await
            .unwrap();
        assert_eq!(report.leads.moved, 1);
        assert_eq!(piles.back(Pile::Leads), vec![event("1", "11")]);
        assert_eq!(
            (piles.asked(Pile::Forwards), piles.asked(Pile::Stages)),
            (0, 0)
        );
    }

    #[tokio::test]
    async fn a_failing_pile_is_named_with_what_was_moved_before_it() {
        let piles = piles();
        piles.fail(Pile::Forwards);
        let err = redrive(&piles, Pick::All, false).await.unwrap_err();
        assert_eq!(err.pile, Pile::Forwards);
        assert_eq!(err.done.leads.moved, 4);
        assert!(err.to_string().contains("forwarding"), "{err}");

        // A move that fails leaves the dead letter and is counted for the verdict.
        let piles = MemoryDeadLetters::default();
        piles.add(Pile::Leads, Some(C::Token), &event("1", "1"));
        piles.refuse_moves(Pile::Leads);
        let report = redrive(&piles, Pick::All, false).await.unwrap();
        assert_eq!((report.failed(), report.left()), (1, 1));
        assert_eq!(piles.waiting(Pile::Leads), 1);
    }
}
