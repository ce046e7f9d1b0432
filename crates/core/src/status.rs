//! `leadpipe status`: what a pipeline holds and whether a person must act, as one value
//! with one shape for the local file and for the deployed stack (docs/operate.md, "status
//! --json"). The edges read the facts through [`StatusSource`]; the rules of the verdict are
//! here, once.

use crate::ports::StoreError;
use serde::Serialize;
use std::time::Duration;

/// A queued message older than this means ingest is not keeping up or is failing.
pub const STUCK_AFTER: Duration = Duration::from_secs(15 * 60);

/// The queue of lead events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueFacts {
    /// Messages waiting to be read.
    pub waiting: u64,
    /// Messages being read now (leased, invisible).
    pub in_flight: u64,
    /// Messages parked for later (a rate limit's delay).
    pub delayed: u64,
    /// The oldest message's age; `None` where the store does not say (on AWS it is
    /// CloudWatch's `ApproximateAgeOfOldestMessage`, which the `OldestLeadEvent` alarm
    /// watches).
    pub oldest_age_seconds: Option<u64>,
}

/// The dead letters of one reason class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterGroup {
    /// The class (`DeadLetterClass`'s name; whatever a message carried, as it carried it).
    pub reason_class: String,
    /// How many.
    pub count: u64,
    /// The newest one's reason (text from outside: render it escaped).
    pub newest_reason: String,
    /// When the newest one was dead-lettered, RFC 3339, where the store says.
    pub newest_at: Option<String>,
}

/// One form's or ad's checkpoint and its last run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointFacts {
    /// `form#<id>` or `ad#<id>`.
    pub key: crate::backfill::CheckpointKey,
    /// Leads created before this were read (RFC 3339 UTC).
    pub read_to: String,
    /// When the last run saved it (RFC 3339).
    pub updated_at: String,
    /// The last run's counts.
    pub last_run: LastRun,
    /// The form's name from the catalog, for a `form#` key; `null` when not known.
    pub name: Option<String>,
}

/// A run's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LastRun {
    /// Leads Graph returned.
    pub leads_read: u64,
    /// Leads stored first.
    pub new: u64,
    /// Leads that were there already.
    pub already_present: u64,
}

/// Leads created lately, for one form (`None`: leads with no form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FormLeads {
    /// The form.
    pub form_id: Option<String>,
    /// Its name from the catalog; `null` when not known.
    pub name: Option<String>,
    /// Created in the last 24 hours.
    pub last_24h: u64,
    /// Created in the last 7 days.
    pub last_7d: u64,
}

/// The forwarding outbox (locally; on AWS deliver's state is in its alarms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ForwardingFacts {
    /// Events waiting to be delivered.
    pub pending: u64,
    /// The oldest waiting event's age.
    pub oldest_pending_age_seconds: Option<u64>,
    /// Events given up on (dead letters `refused` or `exhausted`).
    pub dead: u64,
    /// The newest one's reason.
    pub newest_dead_reason: Option<String>,
}

/// Stages back to Meta (docs/stages.md): queued, sent, and refused by class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StageFacts {
    /// Waiting to be sent.
    pub queued: u64,
    /// Taken by Meta.
    pub sent: u64,
    /// Refused (dead letters), by class, the largest first; `redrive --reason-class`
    /// brings them back.
    pub refused: Vec<DeadLetterGroup>,
}

/// One destination's deliveries (docs/destinations.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DestinationFacts {
    /// Its name in the destinations file.
    pub name: String,
    /// Waiting to be delivered (due now, or after a retry's wait or a pause).
    pub pending: u64,
    /// Delivered.
    pub delivered: u64,
    /// Dead letters (`refused`, `exhausted`): `redrive` or `forward` sends them again.
    pub dead: u64,
    /// The newest dead letter's class.
    pub newest_dead_class: Option<String>,
    /// Its reason: the service's words, lead values taken out.
    pub newest_dead_reason: Option<String>,
    /// Until when it is paused (its budget spent), RFC 3339.
    pub paused_until: Option<String>,
    /// Age of the oldest pending lead.
    pub oldest_pending_age_seconds: Option<u64>,
}

/// A page token's health with the command that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PageTokenStatus {
    /// What the last backfill run found.
    #[serde(flatten)]
    pub health: crate::tokens::PageTokenHealth,
    /// What to do about it.
    pub fix: &'static str,
}

/// What a person must do something about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    /// Dead letters wait: read the reasons, fix the cause, redrive.
    DeadLetters,
    /// The oldest queued message is older than [`STUCK_AFTER`].
    QueueStuck,
    /// Lead events could not be forwarded.
    ForwardingDead,
    /// The oldest waiting lead event is older than [`STUCK_AFTER`].
    ForwardingStuck,
    /// A page's token is invalid, expiring soon, or may not read the page's leads.
    PageTokens,
    /// Stages were refused and never sent (their dead letters say why).
    StagesRefused,
    /// A destination refused leads or gave up on them (their dead letters say why).
    DestinationsDead,
    /// A destination's oldest pending lead is older than [`STUCK_AFTER`].
    DestinationsStuck,
}

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing needs a person.
    Ok,
    /// See `needs_a_person`.
    NeedsAPerson,
}

/// A pipeline's status. Every part is there in both places; a part the target cannot read
/// (no queue named, no outbox on AWS) is `null`, never missing, so one script reads both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PipelineStatus {
    /// `local` or `stack`.
    pub target: &'static str,
    /// The queue of lead events.
    pub queue: Option<QueueFacts>,
    /// Dead letters by class, the largest first.
    pub dead_letters: Option<Vec<DeadLetterGroup>>,
    /// Checkpoints, by key.
    pub checkpoints: Option<Vec<CheckpointFacts>>,
    /// Leads created in the last 24 hours and 7 days, per form.
    pub leads_per_form: Option<Vec<FormLeads>>,
    /// The forwarding outbox.
    pub forwarding: Option<ForwardingFacts>,
    /// Each page token's health as the last backfill run found it, with what fixes it.
    pub page_tokens: Option<Vec<PageTokenStatus>>,
    /// Stages back to Meta.
    pub stages: Option<StageFacts>,
    /// Each destination's deliveries.
    pub destinations: Option<Vec<DestinationFacts>>,
    /// What a person must act on; empty when all is well.
    pub needs_a_person: Vec<Need>,
    /// `ok` or `needs_a_person`.
    pub verdict: Verdict,
}

/// Where the facts come from: the SQLite file, or the stack's queues and tables. `None`
/// for a part the target does not have or was not told about.
pub trait StatusSource {
    /// The queue.
    fn queue(&self) -> impl Future<Output = Result<Option<QueueFacts>, StoreError>> + Send;
    /// Dead letters by class (any order).
    fn dead_letters(
        &self,
    ) -> impl Future<Output = Result<Option<Vec<DeadLetterGroup>>, StoreError>> + Send;
    /// Every checkpoint (any order).
    fn checkpoints(
        &self,
    ) -> impl Future<Output = Result<Option<Vec<CheckpointFacts>>, StoreError>> + Send;
    /// Leads created since each bound (RFC 3339 UTC), per form; `forms` are the forms the
    /// checkpoints name, for a store that counts form by form.
    fn leads_per_form(
        &self,
        day: &str,
        week: &str,
        forms: &[String],
    ) -> impl Future<Output = Result<Option<Vec<FormLeads>>, StoreError>> + Send;
    /// The forwarding outbox.
    fn forwarding(
        &self,
    ) -> impl Future<Output = Result<Option<ForwardingFacts>, StoreError>> + Send;
    /// Each page token's health as the last backfill run kept it.
    fn page_tokens(
        &self,
    ) -> impl Future<Output = Result<Option<Vec<crate::tokens::PageTokenHealth>>, StoreError>> + Send
    {
        async { Ok(None) }
    }
    /// Stages back to Meta.
    fn stages(&self) -> impl Future<Output = Result<Option<StageFacts>, StoreError>> + Send {
        async { Ok(None) }
    }
    /// Each destination's deliveries.
    fn destinations(
        &self,
    ) -> impl Future<Output = Result<Option<Vec<DestinationFacts>>, StoreError>> + Send {
        async { Ok(None) }
    }
    /// The forms catalog's names, by form id (status shows names beside ids).
    fn form_names(
        &self,
    ) -> impl Future<Output = Result<std::collections::BTreeMap<String, String>, StoreError>> + Send
    {
        async { Ok(std::collections::BTreeMap::new()) }
    }
}

/// Reads every part and gives the verdict.
pub async fn pipeline_status<S: StatusSource>(
    source: &S,
    target: &'static str,
    now: time::OffsetDateTime,
) -> Result<PipelineStatus, StoreError> {
    let queue = source.queue().await?;
    let mut dead_letters = source.dead_letters().await?;
    if let Some(groups) = &mut dead_letters {
        groups.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.reason_class.cmp(&b.reason_class))
        });
    }
    let mut checkpoints = source.checkpoints().await?;
    if let Some(all) = &mut checkpoints {
        // By the key as written (`ad#…` before `form#…`), as the stores list them.
        all.sort_by_cached_key(|c| c.key.to_string());
    }
    let forms: Vec<String> = checkpoints
        .iter()
        .flatten()
        .filter_map(|c| c.key.form_id().map(str::to_owned))
        .collect();
    let since = |back: u64| crate::record::contract_time(now - Duration::from_secs(back));
    let mut leads_per_form = source
        .leads_per_form(&since(86_400), &since(7 * 86_400), &forms)
        .await?;
    // Names beside ids; a catalog that cannot be read leaves them null, never fails status.
    let names = source.form_names().await.unwrap_or_default();
    for c in checkpoints.iter_mut().flatten() {
        c.name = c.key.form_id().and_then(|id| names.get(id)).cloned();
    }
    for f in leads_per_form.iter_mut().flatten() {
        f.name = f.form_id.as_ref().and_then(|id| names.get(id)).cloned();
    }
    let forwarding = source.forwarding().await?;
    let page_tokens: Option<Vec<PageTokenStatus>> = source.page_tokens().await?.map(|all| {
        all.into_iter()
            .map(|health| PageTokenStatus {
                fix: health.state.fix(),
                health,
            })
            .collect()
    });

    let mut stages = source.stages().await?;
    if let Some(stages) = &mut stages {
        stages.refused.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.reason_class.cmp(&b.reason_class))
        });
    }
    let stuck = |age: Option<u64>| age.is_some_and(|a| a > STUCK_AFTER.as_secs());
    let mut needs = Vec::new();
    if dead_letters.iter().flatten().any(|g| g.count > 0) {
        needs.push(Need::DeadLetters);
    }
    if queue.as_ref().is_some_and(|q| stuck(q.oldest_age_seconds)) {
        needs.push(Need::QueueStuck);
    }
    if forwarding.as_ref().is_some_and(|f| f.dead > 0) {
        needs.push(Need::ForwardingDead);
    }
    if forwarding
        .as_ref()
        .is_some_and(|f| stuck(f.oldest_pending_age_seconds))
    {
        needs.push(Need::ForwardingStuck);
    }
    if page_tokens
        .iter()
        .flatten()
        .any(|t| t.health.state.needs_a_person())
    {
        needs.push(Need::PageTokens);
    }
    if stages.iter().any(|s| s.refused.iter().any(|g| g.count > 0)) {
        needs.push(Need::StagesRefused);
    }
    let destinations = source.destinations().await?;
    if destinations.iter().flatten().any(|d| d.dead > 0) {
        needs.push(Need::DestinationsDead);
    }
    if destinations.iter().flatten().any(|d| {
        d.oldest_pending_age_seconds
            .is_some_and(|a| a > STUCK_AFTER.as_secs())
            && d.paused_until.is_none()
    }) {
        needs.push(Need::DestinationsStuck);
    }
    Ok(PipelineStatus {
        target,
        queue,
        dead_letters,
        checkpoints,
        leads_per_form,
        forwarding,
        page_tokens,
        stages,
        destinations,
        verdict: if needs.is_empty() {
            Verdict::Ok
        } else {
            Verdict::NeedsAPerson
        },
        needs_a_person: needs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backfill::{CheckpointKey, NodeKind};

    #[derive(Default)]
    struct Facts {
        queue: Option<QueueFacts>,
        dead: Option<Vec<DeadLetterGroup>>,
        checkpoints: Option<Vec<CheckpointFacts>>,
        forwarding: Option<ForwardingFacts>,
        stages: Option<StageFacts>,
        asked_forms: std::sync::Mutex<Vec<String>>,
    }

    impl StatusSource for Facts {
        async fn queue(&self) -> Result<Option<QueueFacts>, StoreError> {
            Ok(self.queue.clone())
        }
        async fn dead_letters(&self) -> Result<Option<Vec<DeadLetterGroup>>, StoreError> {
            Ok(self.dead.clone())
        }
        async fn checkpoints(&self) -> Result<Option<Vec<CheckpointFacts>>, StoreError> {
            Ok(self.checkpoints.clone())
        }
        async fn leads_per_form(
            &self,
            _day: &str,
            _week: &str,
            forms: &[String],
        ) -> Result<Option<Vec<FormLeads>>, StoreError> {
            if let Ok(mut asked) = self.asked_forms.lock() {
                asked.extend_from_slice(forms);
            }
            Ok(Some(Vec::new()))
        }
        async fn forwarding(&self) -> Result<Option<ForwardingFacts>, StoreError> {
            Ok(self.forwarding.clone())
        }
        async fn stages(&self) -> Result<Option<StageFacts>, StoreError> {
            Ok(self.stages.clone())
        }
    }

    #[tokio::test]
    async fn a_refused_stage_needs_a_person_and_sent_ones_do_not() {
        let sent = Facts {
            stages: Some(StageFacts {
                queued: 3,
                sent: 40,
                refused: Vec::new(),
            }),
            ..Facts::default()
        };
        let status = pipeline_status(&sent, "local", NOW).await.unwrap();
        assert_eq!(status.verdict, Verdict::Ok);
        let refused = Facts {
            stages: Some(StageFacts {
                queued: 0,
                sent: 40,
                refused: vec![group("before_lead", 1), group("expired", 2)],
            }),
            ..Facts::default()
        };
        let status = pipeline_status(&refused, "local", NOW).await.unwrap();
        assert_eq!(status.needs_a_person, vec![Need::StagesRefused]);
        assert_eq!(
            status.stages.unwrap().refused[0].reason_class,
            "expired",
            "the largest first"
        );
    }

    fn group(class: &str, count: u64) -> DeadLetterGroup {
        DeadLetterGroup {
            reason_class: class.into(),
            count,
            newest_reason: "r".into(),
            newest_at: None,
        }
    }

    const NOW: time::OffsetDateTime = time::macros::datetime!(2026-12-02 00:00 UTC);

    #[tokio::test]
    async fn an_empty_pipeline_is_ok_and_every_part_is_in_the_json() {
        let status = pipeline_status(&Facts::default(), "local", NOW)
            .await
            .unwrap();
        assert_eq!(status.verdict, Verdict::Ok);
        let json = serde_json::to_value(&status).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "checkpoints",
                "dead_letters",
                "destinations",
                "forwarding",
                "leads_per_form",
                "needs_a_person",
                "page_tokens",
                "queue",
                "stages",
                "target",
                "verdict"
            ]
        );
        assert!(
            json["queue"].is_null(),
            "a part not read is null, not missing"
        );
    }

    #[tokio::test]
    async fn each_need_is_named_and_the_verdict_follows() {
        let facts = Facts {
            queue: Some(QueueFacts {
                oldest_age_seconds: Some(STUCK_AFTER.as_secs() + 1),
                ..QueueFacts::default()
            }),
            dead: Some(vec![group("token", 2), group("exhausted", 5)]),
            forwarding: Some(ForwardingFacts {
                dead: 1,
                oldest_pending_age_seconds: Some(10),
                ..ForwardingFacts::default()
            }),
            checkpoints: Some(vec![
                CheckpointFacts {
                    key: CheckpointKey::new(NodeKind::Form, "9"),
                    read_to: "x".into(),
                    updated_at: "x".into(),
                    last_run: LastRun::default(),
                    name: None,
                },
                CheckpointFacts {
                    key: CheckpointKey::new(NodeKind::Ad, "1"),
                    read_to: "x".into(),
                    updated_at: "x".into(),
                    last_run: LastRun::default(),
                    name: None,
                },
            ]),
            ..Facts::default()
        };
        let status = pipeline_status(&facts, "stack", NOW).await.unwrap();
        assert_eq!(
            status.needs_a_person,
            [Need::DeadLetters, Need::QueueStuck, Need::ForwardingDead]
        );
        assert_eq!(status.verdict, Verdict::NeedsAPerson);
        let dead = status.dead_letters.unwrap();
        assert_eq!(dead[0].reason_class, "exhausted", "the largest first");
        assert_eq!(
            status.checkpoints.unwrap()[0].key.to_string(),
            "ad#1",
            "by key"
        );
        assert_eq!(
            *facts.asked_forms.lock().unwrap(),
            ["9"],
            "forms from the checkpoints"
        );
        let quiet = Facts {
            queue: Some(QueueFacts {
                oldest_age_seconds: Some(60),
                ..QueueFacts::default()
            }),
            ..Facts::default()
        };
        assert_eq!(
            pipeline_status(&quiet, "local", NOW).await.unwrap().verdict,
            Verdict::Ok
        );
    }
}
