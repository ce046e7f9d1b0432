//! The Conversions API as the stand-in serves it: `POST /{dataset-id}/events` and `GET
//! /{dataset-id}`, with Meta's rules (`../shared/reference/conversions-api-crm.md`): an event
//! older than 7 days or a lead id Meta does not know fails the whole request and nothing in
//! it is taken; a stage dated before its lead is dropped without a word; the answer is a
//! count, never a per-event status.

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};

/// The stand-in's one dataset.
pub const DATASET_ID: &str = "880000000000001";
/// The token that may write to it (what Events Manager would generate).
pub const TOKEN: &str = "EAAconversions-sandbox-token";

/// What the stand-in's dataset saw.
#[derive(Debug, Default)]
pub(crate) struct ConversionsState {
    /// Events taken, as sent (with `test_event_code` added when the request had one).
    pub(crate) taken: Vec<Value>,
    /// Events taken but dropped: dated before their lead.
    pub(crate) dropped: Vec<Value>,
    /// Requests taken, requests refused.
    pub(crate) accepted_requests: u64,
    pub(crate) refused_requests: u64,
    /// Lead ids Meta refuses in events.
    pub(crate) refused_leads: HashSet<String>,
    /// Requests still to answer with a transient 500.
    pub(crate) transient: u32,
    /// `(event_id, event_name)` taken: Meta keeps the first and drops a repeat
    /// (CA/parameters/server-event, "Dedupe").
    pub(crate) seen: HashSet<(String, String)>,
    /// Repeats dropped that way.
    pub(crate) deduplicated: u64,
}

/// A refusal as Meta words it: `(status, code, subcode, message, transient)`.
pub(crate) type Refusal = (u16, i64, Option<i64>, &'static str, bool);

/// Handles `POST /{dataset}/events` given the lead creation times the world knows.
pub(crate) fn receive(
    state: &mut ConversionsState,
    dataset: &str,
    params: &HashMap<String, String>,
    created: &dyn Fn(&str) -> Option<i64>,
    now: i64,
) -> Result<Value, Refusal> {
    if params.get("access_token").map(String::as_str) != Some(TOKEN) {
        return Err((
            400,
            190,
            None,
            "Invalid OAuth access token - Cannot parse access token",
            false,
        ));
    }
    if dataset != DATASET_ID {
        return Err((
            400,
            100,
            Some(33),
            "Unsupported post request. Object does not exist or cannot be loaded due to missing permissions",
            false,
        ));
    }
    if state.transient > 0 {
        state.transient -= 1;
        return Err((500, 2, None, "Service temporarily unavailable", true));
    }
    let refuse = |state: &mut ConversionsState, r: Refusal| {
        state.refused_requests += 1;
        Err(r)
    };
    let Some(Ok(Value::Array(events))) =
        params.get("data").map(|d| serde_json::from_str::<Value>(d))
    else {
        return refuse(
            state,
            (
                400,
                100,
                None,
                "Invalid parameter: data must be a JSON array",
                false,
            ),
        );
    };
    if events.is_empty() || events.len() > 1_000 {
        return refuse(
            state,
            (400, 100, None, "Invalid parameter: 1 to 1000 events", false),
        );
    }
    let mut taken = Vec::new();
    let mut dropped = Vec::new();
    for event in &events {
        let name_ok = event["event_name"].as_str().is_some_and(|n| !n.is_empty());
        let Some(time) = event["event_time"].as_i64() else {
            return refuse(
                state,
                (400, 100, None, "Invalid parameter: event_time", false),
            );
        };
        if !name_ok || event["action_source"] != "system_generated" {
            return refuse(state, (400, 100, None, "Invalid parameter", false));
        }
        if now - time > 7 * 86_400 {
            return refuse(
                state,
                (400, 100, Some(2_804_003), "Event Timestamp Too Old", false),
            );
        }
        let Some(lead_id) = event["user_data"]["lead_id"].as_str() else {
            return refuse(
                state,
                (
                    400,
                    100,
                    None,
                    "Invalid parameter: user_data.lead_id",
                    false,
                ),
            );
        };
        let Some(created_at) = created(lead_id).filter(|_| !state.refused_leads.contains(lead_id))
        else {
            return refuse(state, (400, 100, None, "Invalid parameter: lead_id", false));
        };
        let mut kept = event.clone();
        if let Some(code) = params.get("test_event_code") {
            kept["test_event_code"] = json!(code);
        }
        let key = (
            event["event_id"].as_str().unwrap_or_default().to_owned(),
            event["event_name"].as_str().unwrap_or_default().to_owned(),
        );
        if !key.0.is_empty() && state.seen.contains(&key) {
            state.deduplicated += 1;
            continue;
        }
        if time < created_at {
            dropped.push(kept);
        } else {
            taken.push(kept);
        }
    }
    state.accepted_requests += 1;
    for event in &taken {
        if let (Some(id), Some(name)) = (event["event_id"].as_str(), event["event_name"].as_str()) {
            state.seen.insert((id.to_owned(), name.to_owned()));
        }
    }
    let received = events.len();
    state.taken.extend(taken);
    state.dropped.extend(dropped);
    Ok(json!({"events_received": received, "messages": [], "fbtrace_id": "SandboxTrace"}))
}
