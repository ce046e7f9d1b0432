//! The contract every store keeps, as cases any store can be run through: the in-memory
//! fakes here, SQLite in leadpipe-local's tests, DynamoDB (on moto) in leadpipe-aws's.
//! Each case returns what broke, in words, so a test of any adapter reads the same.

use crate::dead_letter::DeadLetterClass;
use crate::ports::{
    CheckpointStore, LeadSourceKind, LeadStore, LeaseQueue, PutOutcome, RunFacts, StoredLead,
};
use crate::redrive::{DeadLetterPiles, Pick, Pile};
use std::time::Duration;
use time::OffsetDateTime;

/// A lead as Graph would give it, with `id` and a form.
pub fn sample_lead(id: &str, source: LeadSourceKind, ingested_at: OffsetDateTime) -> StoredLead {
    let raw = format!(
        r#"{{"id":"{id}","created_time":"2026-11-30T04:00:00+0000","form_id":"9","field_data":[{{"name":"email","values":["p{id}@example.org"]}}]}}"#
    );
    // A literal that parses: the contract is about the store, not the parser.
    let lead = leadpipe_graph::Lead::from_json(&raw).unwrap_or_else(|_| unreachable_lead());
    StoredLead {
        readable: crate::readable::Readable::of(&lead.field_data, None),
        lead,
        page_id: "77".into(),
        form_id: Some("9".into()),
        source,
        ingested_at,
    }
}

#[allow(clippy::panic)]
fn unreachable_lead() -> leadpipe_graph::Lead {
    panic!("the sample lead literal always parses")
}

/// First write wins: a lead written again (a duplicate webhook, a backfill re-read) leaves
/// the first write's item, `source` and `ingested_at` included; a lead twice in one call is
/// one insert. `read` gives back the stored `(source, ingested_at as unix seconds)`.
pub async fn first_write_wins<S, R>(store: &S, prefix: &str, read: R) -> Result<(), String>
where
    S: LeadStore,
    R: AsyncFn(&str) -> Option<(String, i64)>,
{
    let first = OffsetDateTime::from_unix_timestamp(1_764_470_000).map_err(|e| e.to_string())?;
    let later = OffsetDateTime::from_unix_timestamp(1_764_480_000).map_err(|e| e.to_string())?;
    let (a, b, c) = (
        format!("{prefix}1"),
        format!("{prefix}2"),
        format!("{prefix}3"),
    );
    let outcomes = store
        .put_leads(&[
            sample_lead(&a, LeadSourceKind::Webhook, first),
            sample_lead(&b, LeadSourceKind::Webhook, first),
        ])
        .await
        .map_err(|e| format!("the first write failed: {e}"))?;
    expect(
        &outcomes,
        &[PutOutcome::Inserted, PutOutcome::Inserted],
        "two new leads",
    )?;
    let outcomes = store
        .put_leads(&[
            sample_lead(&a, LeadSourceKind::Backfill, later),
            sample_lead(&c, LeadSourceKind::Backfill, later),
            sample_lead(&c, LeadSourceKind::Backfill, later),
        ])
        .await
        .map_err(|e| format!("the second write failed: {e}"))?;
    // The two writes of the new lead may race (DynamoDB's puts of a call run at once):
    // exactly one of them inserts.
    let mut pair = outcomes
        .get(1..)
        .map(<[PutOutcome]>::to_vec)
        .unwrap_or_default();
    pair.sort_by_key(|o| matches!(o, PutOutcome::AlreadyPresent));
    expect(
        &[
            outcomes.first().copied(),
            pair.first().copied(),
            pair.get(1).copied(),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>(),
        &[
            PutOutcome::AlreadyPresent,
            PutOutcome::Inserted,
            PutOutcome::AlreadyPresent,
        ],
        "a lead again, then a new one twice in the same call",
    )?;
    match read(&a).await {
        Some((source, at)) if source == "webhook" && at == first.unix_timestamp() => Ok(()),
        other => Err(format!(
            "lead {a} should keep its first write (webhook, {}), found {other:?}",
            first.unix_timestamp()
        )),
    }
}

/// A checkpoint never moves back, and is absent until first saved.
pub async fn checkpoint_never_moves_back<C: CheckpointStore>(
    checkpoints: &C,
    key: &str,
) -> Result<(), String> {
    let read = async |what: &str| {
        checkpoints
            .checkpoint(key)
            .await
            .map_err(|e| format!("{what}: {e}"))
    };
    if let Some(found) = read("before any save").await? {
        return Err(format!("{key} had a checkpoint before any save: {found}"));
    }
    for (save, want) in [(1_000, 1_000), (500, 1_000), (2_000, 2_000), (2_000, 2_000)] {
        checkpoints
            .save_checkpoint(key, save, &RunFacts::default())
            .await
            .map_err(|e| format!("save {save}: {e}"))?;
        let found = read("after a save").await?;
        if found != Some(want) {
            return Err(format!(
                "after saving {save}, {key} is {found:?}, not {want}"
            ));
        }
    }
    Ok(())
}

/// The queue's contract, on an empty queue: a lease hides a message from the next lease,
/// an ack deletes it, the receive after the last allowed one dead-letters it as
/// `exhausted`, and redrive brings it back with its receives counted from zero.
pub async fn a_queue_keeps_its_leases<Q: LeaseQueue + DeadLetterPiles>(
    queue: &Q,
) -> Result<(), String> {
    const LONG: Duration = Duration::from_secs(600);
    // A lease of zero ends at once: the message is visible to the next lease.
    const NONE: Duration = Duration::ZERO;
    let lease = async |visibility: Duration, what: &str| {
        queue
            .lease(10, visibility, 3)
            .await
            .map_err(|e| format!("{what}: {e}"))
    };
    let bodies = |leased: &[crate::ports::LeasedMessage]| {
        leased.iter().map(|m| m.body.clone()).collect::<Vec<_>>()
    };
    queue
        .send(&["held".to_owned(), "acked".to_owned()])
        .await
        .map_err(|e| format!("send: {e}"))?;

    let first = lease(NONE, "the first lease").await?;
    let mut got = bodies(&first);
    got.sort();
    if got != ["acked", "held"] || first.iter().any(|m| m.receive_count != 1) {
        return Err(format!(
            "the first lease should hand out both once, gave {first:?}"
        ));
    }
    let acked: Vec<String> = first
        .iter()
        .filter(|m| m.body == "acked")
        .map(|m| m.receipt.clone())
        .collect();
    queue.ack(&acked).await.map_err(|e| format!("ack: {e}"))?;

    // Only `held` is left; lease it for long: hidden from the next lease.
    let second = lease(LONG, "the second lease").await?;
    if bodies(&second) != ["held"] || second.first().map(|m| m.receive_count) != Some(2) {
        return Err(format!(
            "after the ack only `held` (2nd receive) should come, gave {second:?}"
        ));
    }
    let hidden = lease(NONE, "a lease during the first's").await?;
    if !hidden.is_empty() {
        return Err(format!(
            "a leased message must stay hidden, gave {hidden:?}"
        ));
    }
    let receipts: Vec<String> = second.iter().map(|m| m.receipt.clone()).collect();
    queue
        .ack(&receipts)
        .await
        .map_err(|e| format!("ack: {e}"))?;
    queue
        .ack(&receipts)
        .await
        .map_err(|e| format!("a second ack of the same receipt: {e}"))?;

    // `spent`: three receives allowed; the fourth lease dead-letters it.
    queue
        .send(&["spent".to_owned()])
        .await
        .map_err(|e| format!("send: {e}"))?;
    for receive in 1..=3 {
        let got = lease(NONE, "a receive").await?;
        if bodies(&got) != ["spent"] || got.first().map(|m| m.receive_count) != Some(receive) {
            return Err(format!(
                "receive {receive} should hand out `spent`, gave {got:?}"
            ));
        }
    }
    let fourth = lease(NONE, "the receive past the limit").await?;
    if !fourth.is_empty() {
        return Err(format!(
            "past its receives `spent` must be a dead letter, gave {fourth:?}"
        ));
    }
    let exhausted = Pick::Class(DeadLetterClass::Exhausted);
    let counted = queue
        .move_back(Pile::Leads, &exhausted, true)
        .await
        .map_err(|e| format!("count the dead letters: {e}"))?;
    if counted.moved != 1 {
        return Err(format!(
            "one `exhausted` dead letter expected, found {counted:?}"
        ));
    }
    let moved = queue
        .move_back(Pile::Leads, &exhausted, false)
        .await
        .map_err(|e| format!("redrive: {e}"))?;
    if moved.moved != 1 {
        return Err(format!("redrive should move `spent` back, did {moved:?}"));
    }
    let back = lease(LONG, "the lease after redrive").await?;
    if bodies(&back) != ["spent"] || back.first().map(|m| m.receive_count) != Some(1) {
        return Err(format!(
            "redrive should return `spent` with fresh receives, gave {back:?}"
        ));
    }
    Ok(())
}

fn expect(got: &[PutOutcome], want: &[PutOutcome], what: &str) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: expected {want:?}, got {got:?}"))
    }
}

/// A lead event (v1) for destination tests: lead `id` on form `form_id`, a person with
/// `email` (contact and field), a phone, a name, and one labelled answer `services`.
pub fn sample_lead_event(
    id: &str,
    form_id: &str,
    email: &str,
) -> crate::lead_received::LeadReceived {
    let json = serde_json::json!({
        "version": "1", "lead_id": id, "created_time": "2026-12-01T09:00:00Z",
        "page_id": "77", "form_id": form_id, "campaign_name": "Winter solar", "ad_name": "Roof A",
        "platform": "ig", "is_organic": false,
        "fields": {"email": [email], "full_name": ["Jane Doe"], "phone_number": ["+351 912 345 678"],
                   "which_services": ["solar", "battery"]},
        "custom_disclaimer_responses": [], "source": "webhook",
        "ingested_at": "2026-12-01T09:00:02Z", "form_name": "Solar quote",
        "answers": [{"key": "which_services", "label": "Which services?", "values": ["Solar panels", "Battery"]}],
        "contact": {"email": email, "phone": "+351912345678", "full_name": "Jane Doe",
                    "first_name": "Jane", "last_name": "Doe"}
    });
    serde_json::from_value(json).unwrap_or_else(|e| unreachable_event(&e.to_string()))
}

#[allow(clippy::panic)]
fn unreachable_event(why: &str) -> crate::lead_received::LeadReceived {
    panic!("the sample lead event literal always reads: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryCheckpoints, MemoryLeadStore, MemoryLeaseQueue};

    #[tokio::test]
    async fn the_memory_stores_keep_the_contract() {
        let store = MemoryLeadStore::new();
        first_write_wins(&store, "m", async |id: &str| {
            store
                .get(id)
                .map(|l| (l.source.as_str().to_owned(), l.ingested_at.unix_timestamp()))
        })
        .await
        .unwrap();
        checkpoint_never_moves_back(&MemoryCheckpoints::default(), "form#1")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_memory_queue_keeps_the_contract() {
        a_queue_keeps_its_leases(&MemoryLeaseQueue::default())
            .await
            .unwrap();
    }
}
