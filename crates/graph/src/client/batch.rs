//! Leads by id: one `GET /{lead-id}`, or the batch API, 50 to a call, a result per lead.

use super::{GraphClient, Payload, check_id, parse_failure};
use crate::error::{ErrorClass, GraphError};
use crate::models::{Lead, ParseError};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The batch API takes at most 50 requests per call.
const BATCH_LIMIT: usize = 50;

/// One lead's outcome within a batch read.
#[derive(Debug)]
pub struct BatchItem {
    /// The lead asked for.
    pub lead_id: String,
    /// The lead, or why it could not be read.
    pub result: Result<Lead, GraphError>,
}

impl GraphClient {
    /// `GET /{lead-id}` with every lead field.
    pub async fn lead(&self, token: &SecretString, lead_id: &str) -> Result<Lead, GraphError> {
        let operation = format!("GET /{lead_id}");
        let url = self.node_url(&[lead_id], &operation)?;
        let body = self
            .execute(
                &operation,
                Method::GET,
                url,
                Payload::Query(vec![("fields".into(), self.lead_fields.clone())]),
                token,
                &[],
            )
            .await?;
        Lead::from_json(&body).map_err(|e| parse_failure(operation, e))
    }

    /// Many leads in as few round trips as the batch API allows (50 per call), with a result
    /// per lead: one gone or forbidden lead does not fail the others. Items that fail
    /// transiently inside a successful batch are sent again under the retry policy.
    pub async fn leads(
        &self,
        token: &SecretString,
        lead_ids: &[String],
    ) -> Result<Vec<BatchItem>, GraphError> {
        let mut out = Vec::with_capacity(lead_ids.len());
        for chunk in lead_ids.chunks(BATCH_LIMIT) {
            out.extend(self.lead_batch(token, chunk).await?);
        }
        Ok(out)
    }

    async fn lead_batch(
        &self,
        token: &SecretString,
        ids: &[String],
    ) -> Result<Vec<BatchItem>, GraphError> {
        let mut done: Vec<BatchItem> = Vec::with_capacity(ids.len());
        let mut pending: Vec<String> = ids.to_vec();
        let mut delays = self.backoff();
        loop {
            let results = self.lead_batch_once(token, &pending).await?;
            let mut again = Vec::new();
            for item in results {
                match &item.result {
                    Err(e) if e.class == ErrorClass::Transient => again.push(item),
                    _ => done.push(item),
                }
            }
            if again.is_empty() {
                break;
            }
            match delays.next() {
                Some(delay) => {
                    tracing::warn!(
                        failed = again.len(),
                        delay_ms = delay.as_millis() as u64,
                        "transient failures inside a Graph batch; sending those again"
                    );
                    tokio::time::sleep(delay).await;
                    pending = again.into_iter().map(|i| i.lead_id).collect();
                }
                None => {
                    done.extend(again);
                    break;
                }
            }
        }
        // Keep the caller's order.
        done.sort_by_key(|item| {
            ids.iter()
                .position(|id| *id == item.lead_id)
                .unwrap_or(usize::MAX)
        });
        Ok(done)
    }

    async fn lead_batch_once(
        &self,
        token: &SecretString,
        ids: &[String],
    ) -> Result<Vec<BatchItem>, GraphError> {
        // An id that is not a Graph id fails alone; the others are still read.
        let (ids, malformed): (Vec<&String>, Vec<&String>) =
            ids.iter().partition(|id| check_id(id, "batch").is_ok());
        let mut out: Vec<BatchItem> = malformed
            .into_iter()
            .map(|id| BatchItem {
                lead_id: id.clone(),
                result: Err(GraphError::local(
                    format!("GET /{id} (in batch)"),
                    ErrorClass::BadRequest,
                    "the lead id is not a Graph id (letters, digits and _ only)",
                )),
            })
            .collect();
        if ids.is_empty() {
            return Ok(out);
        }
        let operation = format!("POST / (batch of {})", ids.len());
        let requests: Vec<serde_json::Value> = ids
            .iter()
            .map(|id| serde_json::json!({"method": "GET", "relative_url": format!("{id}?fields={}", self.lead_fields)}))
            .collect();
        let url = self.node_url(&[], &operation)?;
        let form = vec![
            (
                "batch".to_owned(),
                serde_json::Value::Array(requests).to_string(),
            ),
            ("include_headers".to_owned(), "false".to_owned()),
        ];
        let (body, usage) = self
            .execute_with_usage(
                &operation,
                Method::POST,
                url,
                Payload::Form(form),
                token,
                &[],
            )
            .await?;
        #[derive(Deserialize)]
        struct Item {
            code: u16,
            #[serde(default)]
            body: Option<String>,
        }
        let items: Vec<Option<Item>> = serde_json::from_str(&body)
            .map_err(|e| parse_failure(operation.clone(), ParseError::new("batch response", &e)))?;
        let secret = token.expose_secret();
        let proof = self.proof(secret);
        let app_secret = self.app_secret.as_ref().map(|s| s.expose_secret());
        let secrets: Vec<&str> = std::iter::once(secret)
            .chain(proof.as_deref())
            .chain(app_secret)
            .collect();
        out.extend(ids.iter().enumerate().map(|(i, id)| {
            let item_op = format!("GET /{id} (in batch)");
            let result = match items.get(i) {
                Some(Some(item)) if (200..300).contains(&item.code) => {
                    Lead::from_json(item.body.as_deref().unwrap_or_default())
                        .map_err(|e| parse_failure(item_op, e))
                }
                // Items carry no headers (include_headers=false): the batch
                // answer's usage headers are what says how long to wait.
                Some(Some(item)) => Err(GraphError::from_response(
                    item_op,
                    item.code,
                    item.body.as_deref().unwrap_or_default(),
                    usage.clone(),
                    &secrets,
                )),
                // Meta answers null for a request it did not get to in time.
                _ => Err(GraphError::local(
                    item_op,
                    ErrorClass::Transient,
                    "no answer for this item in the batch",
                )),
            };
            BatchItem {
                lead_id: (*id).clone(),
                result,
            }
        }));
        Ok(out)
    }
}
