//! `leadpipe forget` and `redrive` on the local file, as the real binary: a person found by
//! the keyed hash of their email and erased from leads, outbox and dead letters, nothing of
//! theirs printed; dead letters of one class moved back to the queue.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe_core::ports::{LeadSourceKind, LeadStore, StoredLead};
use leadpipe_core::privacy::LeadPolicy;
use leadpipe_local::LocalDb;
use secrecy::SecretString;
use std::path::{Path, PathBuf};

use crate::support::BINARY;
const LOOKUP_KEY: &str = "operate-test-lookup-key-5e1f";

fn stored(id: &str, email: &str, phone: &str) -> StoredLead {
    StoredLead {
        lead: leadpipe_graph::Lead::from_json(&format!(
            r#"{{"id":"{id}","created_time":"2026-11-30T00:00:00+0000","field_data":[
                {{"name":"email","values":["{email}"]}},{{"name":"phone_number","values":["{phone}"]}},
                {{"name":"full_name","values":["Person {id}"]}}]}}"#
        ))
        .unwrap(),
        page_id: "7".into(),
        form_id: Some("5".into()),
        source: LeadSourceKind::Webhook,
        ingested_at: time::OffsetDateTime::now_utc(),
        readable: Default::default(),
    }
}

struct Files {
    dir: PathBuf,
    db: PathBuf,
    secret: PathBuf,
}

async fn world(name: &str) -> Files {
    let dir = std::env::temp_dir().join(format!("leadpipe-operate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db_path = dir.join("leads.db");
    let secret = dir.join("secret.json");
    leadpipe::write_private(
        &secret,
        serde_json::json!({"app_secret": "s", "lookup_key": LOOKUP_KEY}).to_string(),
    )
    .unwrap();
    let db = LocalDb::open(&db_path).unwrap();
    db.set_policy(LeadPolicy::new(Some(SecretString::from(LOOKUP_KEY)), 0));
    db.enable_outbox();
    db.put_leads(&[
        stored("101", "ada@example.org", "+1 555 0101"),
        stored("102", "ADA@example.org ", "+1 555 0199"),
        stored("103", "grace@example.org", "+1 555 0101"),
        stored("104", "edsger@example.org", "+1 555 0104"),
    ])
    .await
    .unwrap();
    drop(db);
    // Dead letters of two classes, one naming Ada's second lead.
    let conn = rusqlite::Connection::open(&db_path).unwrap();
    for (lead, class) in [("102", "token"), ("900", "token"), ("901", "not_found")] {
        conn.execute(
            "INSERT INTO dead_letters (body, reason_class, reason, dead_lettered_at) VALUES (?1, ?2, 'r', 'now')",
            rusqlite::params![format!(r#"{{"leadgen_id":"{lead}","page_id":"7","received_at":"2026-11-30T00:00:00Z"}}"#), class],
        )
        .unwrap();
    }
    Files {
        dir,
        db: db_path,
        secret,
    }
}

async fn run(args: &[&str], db: &Path, secret: &Path) -> (bool, String) {
    let out = tokio::process::Command::new(BINARY)
        .args(args)
        .arg("--db")
        .arg(db)
        .env("LEADPIPE_SECRET_FILE", secret)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn lead_ids(db: &Path) -> Vec<String> {
    LocalDb::open_read_only(db)
        .unwrap()
        .leads()
        .unwrap()
        .into_iter()
        .map(|r| r.lead_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_by_email_erases_exactly_the_persons_leads_everywhere() {
    let files = world("email").await;
    let (ok, dry) = run(
        &["forget", "--email", " Ada@Example.org", "--dry-run"],
        &files.db,
        &files.secret,
    )
    .await;
    assert!(ok, "{dry}");
    assert!(
        dry.contains("would forget 2 lead(s) found by email_key: 101, 102"),
        "{dry}"
    );
    assert_eq!(lead_ids(&files.db).len(), 4, "a dry run erases nothing");

    let (ok, text) = run(
        &["forget", "--email", "ada@example.org"],
        &files.db,
        &files.secret,
    )
    .await;
    assert!(ok, "{text}");
    assert!(
        text.contains("forgot 2 lead(s) found by email_key: 101, 102"),
        "{text}"
    );
    assert!(
        text.contains("leads 2, forwarding outbox 2, dead letters 1, queued messages 0"),
        "{text}"
    );
    assert!(
        text.contains("erasure"),
        "an erasure record is logged: {text}"
    );
    for personal in [
        "ada@example.org",
        "Ada@Example.org",
        "Person 101",
        "555 0101",
    ] {
        assert!(!text.contains(personal), "{personal} printed: {text}");
    }
    assert_eq!(lead_ids(&files.db), ["103", "104"]);
    let db = LocalDb::open_read_only(&files.db).unwrap();
    assert_eq!(
        db.outbox_summary().unwrap().pending,
        2,
        "only the others' events are left"
    );
    assert!(
        db.dead_letters()
            .unwrap()
            .iter()
            .all(|d| !d.body.contains("\"102\""))
    );

    // By phone: Grace shares Ada's old number; only her lead is left with it.
    let (ok, text) = run(
        &["forget", "--phone", "+1 (555) 0101", "--json"],
        &files.db,
        &files.secret,
    )
    .await;
    assert!(ok, "{text}");
    let report: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(report["lead_ids"], serde_json::json!(["103"]));
    assert_eq!(lead_ids(&files.db), ["104"]);
    let _ = std::fs::remove_dir_all(&files.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_by_email_needs_the_lookup_key_and_by_lead_does_not() {
    let files = world("nokey").await;
    let no_key = files.dir.join("no-key.json");
    leadpipe::write_private(&no_key, r#"{"app_secret":"s"}"#).unwrap();
    let (ok, text) = run(
        &["forget", "--email", "ada@example.org"],
        &files.db,
        &no_key,
    )
    .await;
    assert!(!ok && text.contains("no lookup_key"), "{text}");
    let (ok, text) = run(&["forget", "--lead", "104"], &files.db, &no_key).await;
    assert!(
        ok && text.contains("forgot 1 lead(s) found by lead id: 104"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&files.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_moves_one_class_back_to_the_queue() {
    let files = world("redrive").await;
    let (ok, text) = run(
        &["redrive", "--reason-class", "token", "--dry-run"],
        &files.db,
        &files.secret,
    )
    .await;
    assert!(ok && text.contains("would move 2 dead letter(s)"), "{text}");
    let (ok, text) = run(
        &["redrive", "--reason-class", "nonsense"],
        &files.db,
        &files.secret,
    )
    .await;
    // clap offers core's one list of classes, the one `status` prints from.
    assert!(
        !ok && text.contains("possible values")
            && text.contains("exhausted")
            && text.contains("unknown_lead"),
        "{text}"
    );
    let (ok, text) = run(
        &["redrive", "--reason-class", "token"],
        &files.db,
        &files.secret,
    )
    .await;
    assert!(ok && text.contains("moved 2 dead letter(s)"), "{text}");
    let db = LocalDb::open_read_only(&files.db).unwrap();
    let left: Vec<String> = db
        .dead_letters()
        .unwrap()
        .into_iter()
        .map(|d| d.reason_class)
        .collect();
    assert_eq!(left, ["not_found"]);
    assert_eq!(db.queue_len().unwrap(), 2);
    let _ = std::fs::remove_dir_all(&files.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_lead_is_not_brought_back_by_the_next_backfill() {
    use leadpipe_sandbox::{Dataset, DatasetSpec, Faults, Sandbox};
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let data = Dataset::generate(&DatasetSpec {
        pages: 1,
        forms_per_page: 1,
        leads: 5,
        newest: now - 3_600,
        ..DatasetSpec::default()
    });
    let sandbox = Sandbox::start(data.clone(), Faults::default())
        .await
        .unwrap();
    let files = world("comeback").await;
    let tokens: serde_json::Map<String, serde_json::Value> =
        leadpipe_sandbox::server::tokens(&data)
            .into_iter()
            .map(|(page, token)| (page, serde_json::Value::String(token)))
            .collect();
    leadpipe::write_private(
        &files.secret,
        serde_json::json!({"app_secret": leadpipe_sandbox::server::demo_app_secret(),
            "lookup_key": LOOKUP_KEY, "page_tokens": tokens})
        .to_string(),
    )
    .unwrap();
    let backfill = |window: bool| {
        let mut command = tokio::process::Command::new(BINARY);
        command
            .arg("backfill")
            .arg("--db")
            .arg(&files.db)
            .env("LEADPIPE_SECRET_FILE", &files.secret)
            .env("GRAPH_API_BASE", sandbox.base_url());
        if window {
            // As `backfill --from` reads back up to Meta's 90 days.
            command.args(["--from", &(now - 7 * 86_400).to_string()]);
        }
        command.output()
    };
    let first = backfill(false).await.unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let victim = data.leads[2].id.clone();
    assert!(lead_ids(&files.db).contains(&victim));
    let (ok, said) = run(&["forget", "--lead", &victim], &files.db, &files.secret).await;
    assert!(ok, "{said}");
    assert!(said.contains("forgot 1 lead(s)"), "{said}");
    for window in [false, true] {
        let again = backfill(window).await.unwrap();
        assert!(
            again.status.success(),
            "{}",
            String::from_utf8_lossy(&again.stderr)
        );
        let ids = lead_ids(&files.db);
        assert!(
            !ids.contains(&victim),
            "the erased lead came back ({window})"
        );
        for lead in data.leads.iter().filter(|l| l.id != victim) {
            assert!(ids.contains(&lead.id), "{} is kept", lead.id);
        }
    }
    let _ = std::fs::remove_dir_all(&files.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_says_what_it_cannot_search_and_lookup_keys_makes_it_searchable() {
    let files = world("unkeyed").await;
    // Two more leads, stored before the secret had a lookup key.
    let db = LocalDb::open(&files.db).unwrap();
    db.put_leads(&[
        stored("201", "ada@example.org", "+1 555 0201"),
        stored("202", "lin@example.org", "+1 555 0202"),
    ])
    .await
    .unwrap();
    drop(db);
    let (ok, said) = run(
        &["forget", "--email", "Ada@Example.org"],
        &files.db,
        &files.secret,
    )
    .await;
    assert!(
        !ok,
        "an erasure that may be incomplete is a person's problem: {said}"
    );
    assert!(said.contains("forgot 2 lead(s)"), "{said}");
    assert!(
        said.contains("2 stored lead(s) have no lookup key"),
        "{said}"
    );
    assert!(said.contains("leadpipe lookup-keys"), "{said}");
    assert!(lead_ids(&files.db).contains(&"201".to_owned()));
    let (ok, said) = run(&["lookup-keys", "--dry-run"], &files.db, &files.secret).await;
    assert!(
        ok && said.contains("would add lookup keys to 2 lead(s)"),
        "{said}"
    );
    let (ok, said) = run(&["lookup-keys"], &files.db, &files.secret).await;
    assert!(
        ok && said.contains("added lookup keys to 2 lead(s)"),
        "{said}"
    );
    let (ok, said) = run(
        &["forget", "--email", "ada@example.org"],
        &files.db,
        &files.secret,
    )
    .await;
    assert!(ok, "{said}");
    assert!(
        said.contains("forgot 1 lead(s) found by email_key: 201"),
        "{said}"
    );
    assert!(!said.contains("warning"), "{said}");
    let _ = std::fs::remove_dir_all(&files.dir);
}

#[test]
fn forget_by_email_works_on_the_demos_data() {
    let dir = std::env::temp_dir().join(format!("leadpipe-operate-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("demo.db");
    let out = std::process::Command::new(BINARY)
        .args(["demo", "--quiet", "--leads", "40", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = LocalDb::open_read_only(&db)
        .unwrap()
        .leads()
        .unwrap()
        .remove(0);
    let email = row.fields["email"][0].clone();
    // Status names each form beside its id, in text and JSON (the forms catalog).
    let status = std::process::Command::new(BINARY)
        .args(["status", "--json", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let names: Vec<&str> = json["leads_per_form"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(names.contains(&"Service quote 555000000000000"), "{json}");
    assert!(json["checkpoints"][0]["name"].is_string(), "{json}");
    let out = std::process::Command::new(BINARY)
        .args(["forget", "--email", &email, "--db"])
        .arg(&db)
        .env("LOOKUP_KEY", leadpipe::demo::DEMO_LOOKUP_KEY)
        .env_remove("LEADPIPE_SECRET_FILE")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!said.contains("forgot 0 lead(s)"), "{said}");
    assert!(!lead_ids(&db).contains(&row.lead_id));

    // A phone typed as `212.555.0123` on a US form is found when asked as
    // `+1 2125550123`: one E.164 key, read in the form's country.
    let rows = LocalDb::open_read_only(&db).unwrap().leads().unwrap();
    let national = rows
        .iter()
        .find(|r| {
            !r.fields["phone_number"][0].starts_with('+')
                && r.readable
                    .form_name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("Service quote"))
        })
        .expect("a lead of a US form with a national number");
    let digits: String = national.fields["phone_number"][0]
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let digits = &digits[digits.len() - 10..];
    let out = std::process::Command::new(BINARY)
        .args(["forget", "--phone", &format!("+1 {digits}"), "--db"])
        .arg(&db)
        .env("LOOKUP_KEY", leadpipe::demo::DEMO_LOOKUP_KEY)
        .env_remove("LEADPIPE_SECRET_FILE")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(!lead_ids(&db).contains(&national.lead_id), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn export_heads_answers_by_label_and_carries_the_contact() {
    let dir = std::env::temp_dir().join(format!("leadpipe-labels-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("demo.db");
    let out = std::process::Command::new(BINARY)
        .args(["demo", "--quiet", "--leads", "30", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let export = |args: &[&str]| {
        let out = std::process::Command::new(BINARY)
            .arg("export")
            .args(args)
            .arg("--db")
            .arg(&db)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };

    // --labels: the questions' labels, the US form's first (forms by id, each in its order),
    // and the choices as shown.
    let csv_bytes = export(&["--labels", "--form", "555000000000000"]);
    let mut reader = csv::Reader::from_reader(csv_bytes.as_slice());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let at = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no {name} column in {header:?}"))
    };
    assert!(at("Full name") < at("Email") && at("Email") < at("Which services do you need?"));
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert!(!rows.is_empty());
    for row in &rows {
        assert_eq!(&row[at("form_name")], "Service quote 555000000000000");
        let services = leadpipe::export::decode_values(&row[at("Which services do you need?")]);
        for shown in &services {
            assert!(
                ["Oil change", "Tyres", "Brakes", "Inspection"].contains(&shown.as_str()),
                "{shown} is a choice as shown"
            );
        }
        let phone = &row[at("contact_phone")];
        assert!(
            phone.starts_with("+1") && phone.len() == 12,
            "{phone} is E.164"
        );
        assert_eq!(
            &row[at("contact_email")],
            &row[at("contact_email")].to_lowercase()
        );
    }

    // Without --labels the columns are Meta's keys with raw values, plus the contact.
    let plain = export(&[]);
    let mut reader = csv::Reader::from_reader(plain.as_slice());
    let header = reader.headers().unwrap().clone();
    assert!(header.iter().any(|h| h == "field:services"));
    assert!(header.iter().any(|h| h == "contact_phone"));

    // JSON lines carry answers and contact.
    let lines = export(&["--format", "jsonl"]);
    let first: serde_json::Value =
        serde_json::from_slice(lines.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert!(
        first["answers"].as_array().is_some_and(|a| !a.is_empty()),
        "{first}"
    );
    assert!(first["contact"]["email"].is_string(), "{first}");
    let _ = std::fs::remove_dir_all(&dir);
}
