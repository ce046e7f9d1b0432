//! The Conversions API: `POST /{dataset-id}/events` (`../shared/reference/conversions-api-crm.md`,
//! section 1). The token is the dataset's (Events Manager's or a system user's), not one of
//! this app's, so the client that sends with it is built without `appsecret_proof`.

use super::{GraphClient, Payload, parse_failure};
use crate::error::GraphError;
use crate::models::ParseError;
use reqwest::Method;
use secrecy::SecretString;
use serde::Deserialize;

impl GraphClient {
    /// Sends one request of events (`data_json` is the JSON array) and gives
    /// `events_received`. Meta takes the whole request or refuses it.
    pub async fn send_events(
        &self,
        token: &SecretString,
        dataset_id: &str,
        data_json: String,
        test_event_code: Option<&str>,
    ) -> Result<u64, GraphError> {
        let operation = format!("POST /{dataset_id}/events");
        let url = self.node_url(&[dataset_id, "events"], &operation)?;
        let mut form = vec![("data".to_owned(), data_json)];
        if let Some(code) = test_event_code {
            form.push(("test_event_code".to_owned(), code.to_owned()));
        }
        form.push((
            "partner_agent".to_owned(),
            concat!("leadpipe-", env!("CARGO_PKG_VERSION")).to_owned(),
        ));
        let body = self
            .execute(
                &operation,
                Method::POST,
                url,
                Payload::Form(form),
                token,
                &[],
            )
            .await?;
        #[derive(Deserialize)]
        struct Received {
            events_received: u64,
        }
        // A 2xx is Meta taking the request; a body without the count still is.
        Ok(serde_json::from_str::<Received>(&body)
            .map(|r| r.events_received)
            .unwrap_or(0))
    }

    /// `GET /{dataset-id}?fields=id,name`: the dataset's name, proving the token reaches it.
    pub async fn dataset_name(
        &self,
        token: &SecretString,
        dataset_id: &str,
    ) -> Result<String, GraphError> {
        let operation = format!("GET /{dataset_id}");
        let url = self.node_url(&[dataset_id], &operation)?;
        let body = self
            .execute(
                &operation,
                Method::GET,
                url,
                Payload::Query(vec![("fields".into(), "id,name".into())]),
                token,
                &[],
            )
            .await?;
        #[derive(Deserialize)]
        struct Dataset {
            #[serde(default)]
            name: String,
        }
        serde_json::from_str::<Dataset>(&body)
            .map(|d| d.name)
            .map_err(|e| parse_failure(operation, ParseError::new("dataset", &e)))
    }
}
