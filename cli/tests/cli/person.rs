//! The `leadpipe` binary as a person meets it: bad and missing input gets one clear message
//! that names the fix, every flag explains itself, output pipes cleanly, and what it writes
//! is private.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::BINARY as BIN;

fn leadpipe(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args);
    for var in [
        "APP_SECRET",
        "ACCESS_TOKEN",
        "VERIFY_TOKEN",
        "SECRET_ARN",
        "LEADPIPE_SECRET_FILE",
        "LEADPIPE_DB",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    crate::support::scratch("person", name)
}

/// A small demo database to export from (the demo itself is tested in demo.rs).
fn demo_db(dir: &Path) -> PathBuf {
    let db = dir.join("demo.db");
    let out = leadpipe(
        &[
            "demo",
            "--leads",
            "300",
            "--quiet",
            "--db",
            db.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    db
}

#[test]
fn a_missing_secret_gets_one_message_that_names_every_way_to_give_one() {
    let mut messages = Vec::new();
    for command in [
        vec!["doctor"],
        vec!["backfill", "--db", "/nonexistent/x.db"],
    ] {
        for env in [vec![], vec![("SECRET_ARN", "arn:aws:secretsmanager:x")]] {
            let out = leadpipe(&command, &env);
            assert!(!out.status.success(), "{command:?} {env:?}");
            let stderr = text(&out.stderr);
            for fix in ["--secret-file", "APP_SECRET", "ACCESS_TOKEN", "SECRET_ARN"] {
                assert!(stderr.contains(fix), "{command:?} {env:?}: {stderr}");
            }
            assert!(
                text(&out.stdout).is_empty(),
                "nothing on stdout: {command:?}"
            );
            messages.push(stderr);
        }
    }
    assert!(
        messages.windows(2).all(|w| w[0] == w[1]),
        "the same words every time: {messages:#?}"
    );
}

#[test]
fn an_unreadable_secret_file_names_the_file() {
    let out = leadpipe(
        &["doctor", "--secret-file", "/nonexistent/secret.json"],
        &[],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("/nonexistent/secret.json"), "{stderr}");
    assert!(stderr.contains("cannot be read"), "{stderr}");
}

#[test]
fn every_flag_of_every_subcommand_has_help_text() {
    for sub in ["serve", "demo", "backfill", "export", "doctor", "status"] {
        let out = leadpipe(&[sub, "--help"], &[]);
        assert!(out.status.success(), "{sub}");
        let help = text(&out.stdout);
        let lines: Vec<&str> = help.lines().collect();
        let mut flags = 0;
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            // A flag line starts `-x` or `--name`; `- value: ...` lists a flag's values.
            let is_flag = trimmed.starts_with("--")
                || (trimmed.starts_with('-')
                    && trimmed
                        .chars()
                        .nth(1)
                        .is_some_and(|c| c.is_ascii_alphanumeric()));
            if !is_flag {
                continue;
            }
            flags += 1;
            let indent = line.len() - trimmed.len();
            // clap puts the text after two or more spaces, or on the next, deeper line.
            let same_line = trimmed
                .split_once("  ")
                .is_some_and(|(_, t)| !t.trim().is_empty());
            let next_line = lines.get(i + 1).is_some_and(|next| {
                let t = next.trim_start();
                !t.is_empty() && !t.starts_with('-') && next.len() - t.len() > indent
            });
            assert!(
                same_line || next_line,
                "`leadpipe {sub}`: no help for {trimmed:?}"
            );
        }
        assert!(flags >= 2, "{sub}: {help}");
    }
}

#[test]
fn export_into_a_closed_pipe_ends_quietly_with_exit_0() {
    let dir = temp_dir("pipe");
    let db = demo_db(&dir);
    for format in ["csv", "jsonl"] {
        let mut child = Command::new(BIN)
            .args(["export", "--db", db.to_str().unwrap(), "--format", format])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty());
        // The reader is gone, as after `| head -1`; 300 leads are far more than a pipe holds.
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{format}: {:?}", out.status);
        assert_eq!(text(&out.stderr), "", "{format}: silent");
    }
}

#[test]
fn export_writes_a_private_file_refuses_a_planted_link_and_leaves_the_db_alone() {
    let dir = temp_dir("export");
    let db = demo_db(&dir);
    assert_eq!(
        std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
        0o600,
        "the database is private"
    );

    let out_file = dir.join("leads.csv");
    let out = leadpipe(
        &[
            "export",
            "--db",
            db.to_str().unwrap(),
            "--out",
            out_file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let victim = dir.join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    let link = dir.join("link.csv");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let out = leadpipe(
        &[
            "export",
            "--db",
            db.to_str().unwrap(),
            "--out",
            link.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");

    // A missing database is an error, and export does not create one.
    let missing = dir.join("missing.db");
    let out = leadpipe(&["export", "--db", missing.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("does not exist"));
    assert!(!missing.exists());
}

#[test]
fn the_demo_cleans_up_after_itself_unless_kept_and_its_hint_runs() {
    let out = leadpipe(&["demo", "--leads", "50", "--quiet"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("deleted (run with --keep"), "{stdout}");

    let out = leadpipe(&["demo", "--leads", "50", "--quiet", "--keep"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let hint = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("try: "))
        .unwrap_or_else(|| panic!("no hint: {stdout}"));
    let words: Vec<&str> = hint.split_whitespace().collect();
    assert_eq!(words[0], BIN, "the hint names this binary: {hint}");
    let exported = Command::new(words[0]).args(&words[1..]).output().unwrap();
    assert!(exported.status.success(), "{}", text(&exported.stderr));
    let records = csv::Reader::from_reader(exported.stdout.as_slice())
        .records()
        .count();
    assert_eq!(records, 50);
    let db = PathBuf::from(words[words.iter().position(|w| *w == "--db").unwrap() + 1]);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

#[test]
fn backfill_reads_the_backfill_settings_as_the_lambda_does() {
    let dir = temp_dir("settings");
    let db = dir.join("x.db");
    let out = leadpipe(
        &["backfill", "--db", db.to_str().unwrap(), "--dry-run"],
        &[
            ("APP_SECRET", "s"),
            ("ACCESS_TOKEN", "t"),
            ("BACKFILL_PAGE_SIZE", "5000"),
        ],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("BACKFILL_PAGE_SIZE"), "{stderr}");
    assert!(stderr.contains("1 to 1000"), "{stderr}");
}

#[test]
fn a_backfill_window_out_of_range_is_refused_clearly() {
    let dir = temp_dir("window");
    let db = dir.join("x.db");
    let out = leadpipe(
        &[
            "backfill",
            "--db",
            db.to_str().unwrap(),
            "--from",
            "9223372036854775000",
        ],
        &[("APP_SECRET", "s"), ("ACCESS_TOKEN", "t")],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("from must be between 2015-01-01"),
        "{stderr}"
    );
}

#[test]
fn a_damaged_stored_lead_is_an_error_naming_it_never_an_empty_export() {
    let dir = temp_dir("corrupt");
    let db = demo_db(&dir);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let lead_id: String = conn
        .query_row("SELECT lead_id FROM leads LIMIT 1", [], |r| r.get(0))
        .unwrap();
    conn.execute(
        "UPDATE leads SET fields = '{not json' WHERE lead_id = ?1",
        [&lead_id],
    )
    .unwrap();
    drop(conn);
    let out = leadpipe(&["export", "--db", db.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&lead_id) && stderr.contains("fields"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not json"),
        "the content is not echoed: {stderr}"
    );
}

#[test]
fn status_says_what_the_local_pipeline_holds_and_when_a_person_is_needed() {
    let dir = temp_dir("status");
    let db = demo_db(&dir);
    let db_arg = db.to_str().unwrap();
    // The demo gives two bad stages on purpose: they wait for a person, and are all that does.
    let out = leadpipe(&["status", "--db", db_arg], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("needs a person: 2 stage(s) were refused"),
        "{stdout}"
    );
    assert!(
        stdout.contains("before_lead") && stdout.contains("unknown_lead"),
        "{stdout}"
    );
    assert!(
        stdout.contains("queue          0 waiting, 0 in flight"),
        "{stdout}"
    );

    let out = leadpipe(&["status", "--db", db_arg, "--json"], &[]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored: i64 = report["leads_per_form"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["last_24h"].as_i64().unwrap())
        .sum();
    assert_eq!(stored, 300, "{report}");
    assert!(
        !report["checkpoints"].as_array().unwrap().is_empty(),
        "{report}"
    );

    // A dead letter is something for a person: named by class, with its newest reason.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "INSERT INTO dead_letters (body, reason_class, reason, dead_lettered_at)
         VALUES ('{}', 'token', 'Graph GET /1 failed: token, code 190/463', '2026-11-30T05:00:00Z')",
        [],
    )
    .unwrap();
    drop(conn);
    let out = leadpipe(&["status", "--db", db_arg, "--json"], &[]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["dead_letters"][0]["reason_class"], "token");
    assert_eq!(report["dead_letters"][0]["count"], 1);
    assert_eq!(
        report["needs_a_person"],
        serde_json::json!(["dead_letters", "stages_refused"])
    );
    assert_eq!(report["verdict"], "needs_a_person");
    let human = text(&leadpipe(&["status", "--db", db_arg], &[]).stdout);
    assert!(
        human.contains("needs a person: 1 dead letter(s)"),
        "{human}"
    );
    assert!(!human.contains("@example"), "no lead value: {human}");
}

#[test]
fn help_never_shows_the_value_of_a_variable_that_can_hold_a_credential() {
    let out = leadpipe(
        &["serve", "--help"],
        &[(
            "LEADPIPE_FORWARD_TO",
            "https://user:hunter2pw@crm.example/in?api_key=K3Y-SECRET",
        )],
    );
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(help.contains("LEADPIPE_FORWARD_TO"), "{help}");
    assert!(
        !help.contains("hunter2pw") && !help.contains("K3Y-SECRET"),
        "{help}"
    );
}

#[test]
fn forget_takes_only_a_lead_id_and_dry_runs_touch_no_other_programs_file() {
    let dir = temp_dir("probes");
    let db = demo_db(&dir);
    for odd in ["%", "1300_", "1 OR 1=1"] {
        let out = leadpipe(
            &["forget", "--db", db.to_str().unwrap(), "--lead", odd],
            &[],
        );
        assert_eq!(out.status.code(), Some(2), "{odd}");
        assert!(text(&out.stderr).contains("must be a lead id"), "{odd}");
    }
    // Another program's SQLite file: refused, and left exactly as it was.
    let other = dir.join("other.db");
    {
        let conn = rusqlite::Connection::open(&other).unwrap();
        conn.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
            .unwrap();
    }
    let before = std::fs::read(&other).unwrap();
    for command in [
        vec![
            "forget",
            "--db",
            other.to_str().unwrap(),
            "--lead",
            "1",
            "--dry-run",
        ],
        vec!["redrive", "--db", other.to_str().unwrap(), "--dry-run"],
        vec!["forget", "--db", other.to_str().unwrap(), "--lead", "1"],
        vec!["redrive", "--db", other.to_str().unwrap()],
    ] {
        let out = leadpipe(&command, &[]);
        assert_eq!(out.status.code(), Some(2), "{command:?}");
        assert!(
            text(&out.stderr).contains("not a leadpipe database"),
            "{command:?}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(std::fs::read(&other).unwrap(), before, "not a byte changed");
    assert!(!dir.join("other.db-wal").exists(), "no switch to WAL");
    // A dry run on leadpipe's own file reads only: the file is opened read-only.
    let out = leadpipe(
        &[
            "forget",
            "--db",
            db.to_str().unwrap(),
            "--lead",
            "1",
            "--dry-run",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Files of a demo run by process `pid` left in the temp directory.
fn demo_litter(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with(&format!("leadpipe-demo-{pid}-"))
            })
        })
        .collect()
}

#[test]
fn the_demo_takes_any_input_without_a_panic_or_a_file_left_behind() {
    // Out of range: refused by the flag, with the range.
    for (flag, value, range) in [
        ("--leads", "0", "1..=1000000"),
        ("--drop", "2", "from 0 to 1"),
        ("--transient", "1", "from 0 to 0.9"),
        ("--rate", "0", "from 1 to 100000"),
        ("--duplicate=-0.5", "", "from 0 to 1"),
    ] {
        let args: Vec<&str> = ["demo", "--quiet", flag, value]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect();
        let out = leadpipe(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(range), "{flag} {value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // At the edges: every webhook dropped (no speed to lead to show), every post doubled.
    for args in [["--drop", "1"], ["--duplicate", "1"]] {
        let child = Command::new(BIN)
            .args(["demo", "--quiet", "--leads", "30"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(!text(&out.stderr).contains("panicked"), "{args:?}");
        assert!(
            demo_litter(pid).is_empty(),
            "{args:?}: {:?}",
            demo_litter(pid)
        );
    }
    // A reader that goes away after four lines: a quiet end, every time.
    for _ in 0..3 {
        let mut child = Command::new(BIN)
            .args(["demo", "--quiet", "--leads", "30"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        {
            let stdout = child.stdout.take().unwrap();
            let lines: Vec<String> = BufReader::new(stdout)
                .lines()
                .take(4)
                .map(Result::unwrap)
                .collect();
            assert_eq!(lines.len(), 4);
        }
        let out = child.wait_with_output().unwrap();
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{:?}: {stderr}", out.status);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{stderr}"
        );
        assert!(demo_litter(pid).is_empty());
    }
}

/// The cells of a flat ODS file's first table, row by row: `(is a formula, shown text)`.
fn fods_rows(fods: &str) -> Vec<Vec<(bool, String)>> {
    let unescape = |t: &str| {
        t.replace("&apos;", "'")
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    };
    fods.split("<table:table-row")
        .skip(1)
        .map(|row| {
            row.split("<table:table-cell")
                .skip(1)
                .filter_map(|cell| {
                    let (attributes, rest) = cell.split_once('>')?;
                    let text = if attributes.ends_with('/') {
                        String::new()
                    } else {
                        rest.split_once("<text:p>")
                            .and_then(|(_, t)| t.split_once("</text:p>"))
                            .map(|(t, _)| unescape(t))
                            .unwrap_or_default()
                    };
                    // Empty neighbours are written once, with a count.
                    let repeated = attributes
                        .split_once("table:number-columns-repeated=\"")
                        .and_then(|(_, n)| n.split_once('"'))
                        .and_then(|(n, _)| n.parse::<usize>().ok())
                        .unwrap_or(1)
                        .min(64);
                    Some(vec![
                        (attributes.contains("table:formula="), text);
                        repeated
                    ])
                })
                .flatten()
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_spreadsheet_runs_no_exported_cell_and_keeps_phones_as_given() {
    use leadpipe_core::ports::{LeadSourceKind, LeadStore, StoredLead};
    let soffice = Command::new("soffice").arg("--version").output();
    if !soffice.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: LibreOffice (soffice) is not installed here; .ci/run installs it");
        return;
    }
    let formulas = [
        "=1+1",
        "=HYPERLINK(\"http://x.example\",\"y\")",
        "@SUM(1+1)",
        "-2+3",
        "+1-555-0100",
        "+A1",
    ];
    let kept = [
        "+15553835705",
        "+1 (555) 383 5705",
        "-12.5",
        "+44 20 7946 0958",
    ];
    let field_data: Vec<serde_json::Value> = formulas
        .iter()
        .chain(kept.iter())
        .enumerate()
        .map(|(i, v)| serde_json::json!({"name": format!("q{i:02}"), "values": [v]}))
        .collect();
    let dir = temp_dir("spreadsheet");
    let db_path = dir.join("leads.db");
    let db = leadpipe_local::LocalDb::open(&db_path).unwrap();
    let lead = serde_json::json!({"id": "4242", "created_time": "2026-11-30T00:00:00+0000",
        "form_id": "5", "field_data": field_data});
    db.put_leads(&[StoredLead {
        lead: leadpipe_graph::Lead::from_json(&lead.to_string()).unwrap(),
        page_id: "7".into(),
        form_id: Some("5".into()),
        source: LeadSourceKind::Webhook,
        ingested_at: time::OffsetDateTime::now_utc(),
        readable: Default::default(),
    }])
    .await
    .unwrap();
    drop(db);
    let csv_path = dir.join("leads.csv");
    let out = leadpipe(
        &[
            "export",
            "--db",
            db_path.to_str().unwrap(),
            "--format",
            "csv",
            "--out",
            csv_path.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let converted = Command::new("soffice")
        .args(["--headless", "--convert-to", "fods", "--outdir"])
        .arg(&dir)
        .arg(&csv_path)
        .env("HOME", &dir)
        .output()
        .unwrap();
    assert!(converted.status.success(), "{}", text(&converted.stderr));
    let fods = std::fs::read_to_string(dir.join("leads.fods")).unwrap();
    let rows = fods_rows(&fods);
    let (header, row) = (&rows[0], &rows[1]);
    let cell_of = |i: usize| {
        let column = header
            .iter()
            .position(|(_, h)| h == &format!("field:q{i:02}"))
            .unwrap_or_else(|| panic!("no column q{i:02}: {header:?}"));
        row[column].clone()
    };
    for (i, value) in formulas.iter().enumerate() {
        let (formula, shown) = cell_of(i);
        assert!(!formula, "{value} was run as a formula ({shown})");
        assert_eq!(shown, format!("'{value}"), "{value}");
    }
    for (j, value) in kept.iter().enumerate() {
        let (formula, shown) = cell_of(formulas.len() + j);
        assert!(!formula, "{value}");
        // As given, or the same number (a spreadsheet reads +15553835705 as a number).
        let digits = |t: &str| t.chars().filter(char::is_ascii_digit).collect::<String>();
        assert!(
            !shown.starts_with('\''),
            "{value} carries an apostrophe: {shown}"
        );
        assert_eq!(digits(&shown), digits(value), "{value} -> {shown}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
