//! The other calls: lead access, token facts, test leads, webhook subscriptions.

use super::{GraphClient, Payload, check_id, expect_success, parse_failure};
use crate::error::{ErrorClass, GraphError};
use crate::models::{FieldData, HasLeadAccess, ParseError, SubscribedApp, TokenInfo};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

impl GraphClient {
    /// `GET /{page-id}?fields=has_lead_access.user_id(U).app_id(A)`.
    pub async fn has_lead_access(
        &self,
        token: &SecretString,
        page_id: &str,
        user_id: &str,
        app_id: Option<&str>,
    ) -> Result<HasLeadAccess, GraphError> {
        let operation = format!("GET /{page_id}?fields=has_lead_access");
        check_id(user_id, &operation)?;
        let mut field = format!("has_lead_access.user_id({user_id})");
        if let Some(app_id) = app_id {
            check_id(app_id, &operation)?;
            field.push_str(&format!(".app_id({app_id})"));
        }
        let url = self.node_url(&[page_id], &operation)?;
        let body = self
            .execute(
                &operation,
                Method::GET,
                url,
                Payload::Query(vec![("fields".into(), field)]),
                token,
                &[],
            )
            .await?;
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Access {
            List { data: Vec<HasLeadAccess> },
            One(HasLeadAccess),
        }
        #[derive(Deserialize)]
        struct Wire {
            has_lead_access: Access,
        }
        let wire: Wire = serde_json::from_str(&body).map_err(|e| {
            parse_failure(operation.clone(), ParseError::new("has_lead_access", &e))
        })?;
        match wire.has_lead_access {
            Access::One(access) => Ok(access),
            Access::List { data } => data.into_iter().next().ok_or_else(|| {
                GraphError::local(
                    operation,
                    ErrorClass::BadRequest,
                    "has_lead_access came back empty",
                )
            }),
        }
    }

    /// `GET /{form-id}` with the form fields (name, status, locale, page, questions, ...):
    /// one form, for the catalog when a lead names a form it does not hold.
    pub async fn form(
        &self,
        token: &SecretString,
        form_id: &str,
    ) -> Result<crate::models::LeadgenForm, GraphError> {
        let operation = format!("GET /{form_id}");
        let url = self.node_url(&[form_id], &operation)?;
        let params = vec![("fields".to_owned(), crate::models::FORM_FIELDS.to_owned())];
        let body = self
            .execute(
                &operation,
                Method::GET,
                url,
                Payload::Query(params),
                token,
                &[],
            )
            .await?;
        let mut form: crate::models::LeadgenForm = serde_json::from_str(&body)
            .map_err(|e| parse_failure(operation, ParseError::new("leadgen form", &e)))?;
        form.raw = body;
        Ok(form)
    }

    /// `GET /debug_token?input_token=...`, asked with `app_token` (`app_id|app_secret` or
    /// any token of the app).
    pub async fn debug_token(
        &self,
        app_token: &SecretString,
        input_token: &SecretString,
    ) -> Result<TokenInfo, GraphError> {
        let operation = "GET /debug_token".to_owned();
        let url = self.node_url(&["debug_token"], &operation)?;
        let params = vec![(
            "input_token".to_owned(),
            input_token.expose_secret().to_owned(),
        )];
        let body = self
            .execute(
                &operation,
                Method::GET,
                url,
                Payload::Query(params),
                app_token,
                &[input_token.expose_secret()],
            )
            .await?;
        #[derive(Deserialize)]
        struct Wire {
            data: TokenInfo,
        }
        serde_json::from_str::<Wire>(&body)
            .map(|w| w.data)
            .map_err(|e| parse_failure(operation, ParseError::new("debug_token", &e)))
    }

    /// `POST /{form-id}/test_leads`: creates a test lead (optionally with answers) and
    /// returns its id.
    pub async fn create_test_lead(
        &self,
        page_token: &SecretString,
        form_id: &str,
        field_data: Option<&[FieldData]>,
    ) -> Result<String, GraphError> {
        let operation = format!("POST /{form_id}/test_leads");
        let url = self.node_url(&[form_id, "test_leads"], &operation)?;
        let mut form = Vec::new();
        if let Some(fields) = field_data {
            let json = serde_json::to_string(fields).map_err(|_| {
                GraphError::local(
                    operation.clone(),
                    ErrorClass::BadRequest,
                    "field_data could not be encoded",
                )
            })?;
            form.push(("field_data".to_owned(), json));
        }
        let body = self
            .execute(
                &operation,
                Method::POST,
                url,
                Payload::Form(form),
                page_token,
                &[],
            )
            .await?;
        #[derive(Deserialize)]
        struct Created {
            #[serde(deserialize_with = "super::string_or_number")]
            id: String,
        }
        serde_json::from_str::<Created>(&body)
            .map(|c| c.id)
            .map_err(|e| parse_failure(operation, ParseError::new("created test lead", &e)))
    }

    /// `POST /{app-id}/subscriptions`: subscribes the app to pages' `leadgen` webhooks.
    pub async fn subscribe_app(
        &self,
        app_token: &SecretString,
        app_id: &str,
        callback_url: &str,
        verify_token: &SecretString,
    ) -> Result<(), GraphError> {
        let operation = format!("POST /{app_id}/subscriptions");
        let url = self.node_url(&[app_id, "subscriptions"], &operation)?;
        let form = vec![
            ("object".to_owned(), "page".to_owned()),
            ("fields".to_owned(), "leadgen".to_owned()),
            ("callback_url".to_owned(), callback_url.to_owned()),
            (
                "verify_token".to_owned(),
                verify_token.expose_secret().to_owned(),
            ),
            ("include_values".to_owned(), "true".to_owned()),
        ];
        let body = self
            .execute(
                &operation,
                Method::POST,
                url,
                Payload::Form(form),
                app_token,
                &[verify_token.expose_secret()],
            )
            .await?;
        expect_success(operation, &body)
    }

    /// `POST /{page-id}/subscribed_apps?subscribed_fields=leadgen` with the page's token.
    pub async fn subscribe_page(
        &self,
        page_token: &SecretString,
        page_id: &str,
    ) -> Result<(), GraphError> {
        let operation = format!("POST /{page_id}/subscribed_apps");
        let url = self.node_url(&[page_id, "subscribed_apps"], &operation)?;
        let form = vec![("subscribed_fields".to_owned(), "leadgen".to_owned())];
        let body = self
            .execute(
                &operation,
                Method::POST,
                url,
                Payload::Form(form),
                page_token,
                &[],
            )
            .await?;
        expect_success(operation, &body)
    }

    /// `GET /{page-id}/subscribed_apps`: which apps get this page's webhooks, for which fields.
    pub async fn page_subscriptions(
        &self,
        page_token: &SecretString,
        page_id: &str,
    ) -> Result<Vec<SubscribedApp>, GraphError> {
        let operation = format!("GET /{page_id}/subscribed_apps");
        let url = self.node_url(&[page_id, "subscribed_apps"], &operation)?;
        let body = self
            .execute(
                &operation,
                Method::GET,
                url,
                Payload::Query(Vec::new()),
                page_token,
                &[],
            )
            .await?;
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            data: Vec<SubscribedApp>,
        }
        serde_json::from_str::<Wire>(&body)
            .map(|w| w.data)
            .map_err(|e| parse_failure(operation, ParseError::new("subscribed_apps", &e)))
    }
}
