//! The forms catalog in the SQLite file (core's `forms::FormStore`): a row per form with its
//! latest version as JSON, and the forms' names and countries for `status` and `forget`.

use crate::LocalDb;
use crate::schema::has_column;
use leadpipe_core::forms::{Form, FormStore};
use leadpipe_core::ports::{Cause, StoreError};
use rusqlite::{OptionalExtension, params};

impl FormStore for LocalDb {
    async fn load_form(&self, form_id: &str) -> Result<Option<Form>, StoreError> {
        let json: Option<String> = self
            .with(|conn| {
                conn.query_row(
                    "SELECT form FROM forms WHERE form_id = ?1",
                    params![form_id],
                    |r| r.get(0),
                )
                .optional()
            })
            .map_err(|e| StoreError::Unavailable(Cause::from_error(e)))?;
        // A row this code cannot read is treated as absent: Graph is asked again and the
        // row replaced.
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    async fn save_forms(&self, forms: &[Form]) -> Result<(), StoreError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            for form in forms {
                let json = serde_json::to_string(form).unwrap_or_default();
                tx.execute(
                    "INSERT INTO forms (form_id, page_id, name, form, fetched_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (form_id) DO UPDATE SET page_id = excluded.page_id, name = excluded.name,
                       form = excluded.form, fetched_at = excluded.fetched_at",
                    params![form.id, form.page_id, form.name, json, form.fetched_at],
                )?;
            }
            tx.commit()
        })
        .map_err(|e| StoreError::Unavailable(Cause::from_error(e)))
    }
}

impl LocalDb {
    /// Every form of the catalog, by id (`status` names forms; `export --labels` heads
    /// columns). Empty for a file from before the catalog.
    pub fn catalog(&self) -> Result<Vec<Form>, crate::LocalError> {
        self.with(|conn| {
            if !has_column(conn, "forms", "form")? {
                return Ok(Vec::new());
            }
            let mut stmt = conn.prepare("SELECT form FROM forms ORDER BY form_id")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let mut forms = Vec::new();
            for json in rows {
                if let Ok(form) = serde_json::from_str::<Form>(&json?) {
                    forms.push(form);
                }
            }
            Ok(forms)
        })
    }
}

impl LocalDb {
    /// Each page token's health as the last backfill run kept it (`status`). Empty for a
    /// file from before.
    pub fn token_health(
        &self,
    ) -> Result<Vec<leadpipe_core::tokens::PageTokenHealth>, crate::LocalError> {
        self.with(|conn| {
            if !has_column(conn, "token_health", "health")? {
                return Ok(Vec::new());
            }
            let mut stmt = conn.prepare("SELECT health FROM token_health ORDER BY page_id")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let mut all = Vec::new();
            for json in rows {
                if let Ok(health) = serde_json::from_str(&json?) {
                    all.push(health);
                }
            }
            Ok(all)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn form(id: &str, name: &str) -> Form {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "locale": "pt_BR", "page_id": "77", "fetched_at": 1,
            "questions": [{"key": "q", "label": "Question?", "type": "CUSTOM",
                "options": [{"key": "a", "value": "Answer A"}]}]
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn the_catalog_keeps_the_latest_version_of_each_form() {
        let path = std::env::temp_dir().join(format!("leadpipe-forms-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let db = LocalDb::open(&path).unwrap();
        assert_eq!(db.load_form("5").await.unwrap(), None);
        db.save_forms(&[form("5", "First"), form("6", "Other")])
            .await
            .unwrap();
        db.save_forms(&[form("5", "Renamed")]).await.unwrap();
        assert_eq!(db.load_form("5").await.unwrap(), Some(form("5", "Renamed")));
        let names: Vec<_> = db
            .catalog()
            .unwrap()
            .into_iter()
            .map(|f| f.name.unwrap())
            .collect();
        assert_eq!(names, ["Renamed", "Other"]);
        drop(db);
        // A new process over the same file finds the form without Graph.
        let again = LocalDb::open(&path).unwrap();
        assert!(again.load_form("6").await.unwrap().is_some());
        drop(again);
        let _ = std::fs::remove_file(&path);
    }
}
