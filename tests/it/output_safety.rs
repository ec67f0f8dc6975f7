//! Output safety: client-supplied values never reach a terminal as escape sequences or a
//! spreadsheet as formulas (table and CSV), JSON stays exact; blank device ids are missing
//! values; `--help` never prints a secret variable's value.

use std::path::PathBuf;

use crate::support::{Etl, Setup, reveal_user};

/// An OSC 8 hyperlink: on a terminal it shows "click" linking to http://x.
const OSC8: &str = "\u{1b}]8;;http://x\u{7}click\u{1b}]8;;\u{7}";
/// A spreadsheet formula.
const FORMULA: &str = r#"=HYPERLINK("http://x","y")"#;
const USER: &str = "os-user-1";

/// Writes `events` as a JSON-lines file in `dir`.
fn jsonl(dir: &tempfile::TempDir, events: &[serde_json::Value]) -> PathBuf {
    let file = dir.path().join("events.jsonl");
    let lines: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    file
}

/// The fields of one RFC 4180 CSV line (no embedded newlines: the output escapes them).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let (mut quoted, mut chars) = (false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut().unwrap().push(c),
        }
    }
    assert!(!quoted, "unterminated quote in {line:?}");
    fields
}

async fn reveal(s: &Setup, format: &str) -> String {
    let run = s
        .etl
        .run(&[
            "reveal",
            "--purpose",
            "fraud-investigation",
            "--user-id",
            USER,
            "--reason",
            "output safety check",
            "--format",
            format,
        ])
        .await;
    run.assert_success().stdout.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn table_and_csv_escape_controls_and_formulas_json_stays_exact() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let file = jsonl(
        &dir,
        &[
            serde_json::json!({"user_id": USER, "ip": "198.51.100.7", "device_id": OSC8}),
            serde_json::json!({"user_id": USER, "ip": "198.51.100.8", "device_id": FORMULA}),
            serde_json::json!({"user_id": USER, "ip": "198.51.100.9", "device_id": "-5\u{202e}gnp.exe\u{9b}"}),
        ],
    );
    s.etl
        .run(&["run", "--input", file.to_str().unwrap()])
        .await
        .assert_success();

    let escaped_osc8 = r"\u{1b}]8;;http://x\u{7}click\u{1b}]8;;\u{7}";
    let table = reveal(&s, "table").await;
    let csv = reveal(&s, "csv").await;
    for (name, out) in [("table", &table), ("csv", &csv)] {
        assert_eq!(out.lines().count(), 4, "{name}: header + 3 rows\n{out}");
        for bad in ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}'] {
            assert!(!out.contains(bad), "{name} prints {bad:?} raw:\n{out}");
        }
        assert!(
            out.contains(escaped_osc8),
            "{name} shows the value visibly:\n{out}"
        );
        assert!(out.contains(r"'-5\u{202e}gnp.exe\u{9b}"), "{name}:\n{out}");
    }
    // Table cells are separated by at least two spaces; none may start a formula.
    for line in table.lines() {
        for cell in line.split("  ").map(str::trim).filter(|c| !c.is_empty()) {
            assert!(
                !cell.starts_with(['=', '+', '-', '@']),
                "table cell {cell:?}\n{table}"
            );
        }
    }
    let mut devices = Vec::new();
    for line in csv.lines() {
        let fields = csv_fields(line);
        assert_eq!(fields.len(), 6, "{line}");
        for field in &fields {
            assert!(
                !field.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "csv field {field:?}\n{csv}"
            );
        }
        devices.push(fields[3].clone());
    }
    assert!(
        devices.contains(&format!("'{FORMULA}")),
        "the formula is neutralised with a leading quote: {devices:?}"
    );

    // JSON carries the exact originals.
    let json = reveal(&s, "json").await;
    let mut exact: Vec<String> = json
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["device_id"].as_str().unwrap().to_owned()
        })
        .collect();
    exact.sort();
    let mut want = vec![
        OSC8.to_owned(),
        FORMULA.to_owned(),
        "-5\u{202e}gnp.exe\u{9b}".to_owned(),
    ];
    want.sort();
    assert_eq!(exact, want);

    // The audit list table escapes the client-supplied reason too.
    s.etl
        .run(&reveal_user(USER, "=cmd|' /C calc'!A0 \u{1b}[2J check"))
        .await
        .assert_success();
    let audit = s.etl.run(&["audit", "list"]).await;
    let audit = &audit.assert_success().stdout;
    assert!(!audit.contains('\u{1b}'), "{audit}");
    assert!(
        audit.contains(r"'=cmd|' /C calc'!A0 \u{1b}[2J check"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn blank_device_ids_are_null_and_form_no_duplicate_group() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let file = jsonl(
        &dir,
        &[
            serde_json::json!({"user_id": "blank-1", "ip": "198.51.100.1", "device_id": ""}),
            serde_json::json!({"user_id": "blank-2", "ip": "198.51.100.2", "device_id": "  "}),
            serde_json::json!({"user_id": "blank-3", "ip": "198.51.100.3", "device_id": "\t"}),
            serde_json::json!({"user_id": "blank-4", "ip": " ", "device_id": "dev-real"}),
            serde_json::json!({"user_id": "blank-5", "ip": "", "device_id": "dev-real"}),
        ],
    );
    let summary = s
        .etl
        .run(&["run", "--input", file.to_str().unwrap()])
        .await
        .json();
    assert_eq!(
        (summary["loaded"].as_u64(), summary["quarantined"].as_u64()),
        (Some(5), Some(0)),
        "{summary}"
    );
    assert_eq!(
        s.db.count(
            "SELECT count(*) FROM user_logins u JOIN vault.login_pii v USING (message_id)
             WHERE u.user_id IN ('blank-1', 'blank-2', 'blank-3')
               AND u.masked_device_id IS NULL AND v.device_id_sealed IS NULL
               AND u.masked_ip IS NOT NULL AND v.ip_sealed IS NOT NULL"
        )
        .await,
        3,
        "blank device ids: no token, nothing sealed"
    );
    assert_eq!(
        s.db.count(
            "SELECT count(*) FROM user_logins u JOIN vault.login_pii v USING (message_id)
             WHERE u.user_id IN ('blank-4', 'blank-5')
               AND u.masked_ip IS NULL AND v.ip_sealed IS NULL"
        )
        .await,
        2,
        "blank ips: no token, nothing sealed"
    );

    let report = s
        .etl
        .run(&["report", "duplicates", "--by", "device", "--format", "json"])
        .await;
    let groups: Vec<serde_json::Value> = report
        .assert_success()
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let real: String = sqlx::query_scalar(
        "SELECT DISTINCT masked_device_id FROM user_logins WHERE user_id = 'blank-4'",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(groups.len(), 1, "only the real shared device: {groups:?}");
    assert_eq!(groups[0]["token"], real.as_str());
    assert_eq!(groups[0]["users"], 2);
    let ips = s
        .etl
        .run(&["report", "duplicates", "--by", "ip", "--format", "json"])
        .await;
    assert_eq!(ips.assert_success().stdout, "", "blank ips form no group");
}

#[tokio::test(flavor = "multi_thread")]
async fn help_never_prints_secret_variable_values() {
    let etl = Etl::default()
        .with("PIIVAULT_KEK", "file:/secret/kek-path-xyz")
        .with("DATABASE_URL", "postgres://u:hunter2@h/db")
        .with(
            "PIIVAULT_REVEAL_DATABASE_URL",
            "postgres://auditor:auditpw-xyz@h/db",
        )
        .with(
            "SQS_QUEUE_URL",
            "https://sqs.example.invalid/123/queue-name-xyz",
        );
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["reveal", "--help"],
        &["keys", "--help"],
        &["audit", "list", "--help"],
        &["-h"],
    ] {
        let run = etl.run(args).await;
        run.assert_success();
        let all = format!("{}{}", run.stdout, run.stderr);
        for secret in [
            "kek-path-xyz",
            "/secret/",
            "hunter2",
            "auditpw-xyz",
            "queue-name-xyz",
        ] {
            assert!(
                !all.contains(secret),
                "etl {args:?} printed {secret}:\n{all}"
            );
        }
        if args.contains(&"--help") {
            assert!(
                all.contains("PIIVAULT_KEK"),
                "the variable is still named:\n{all}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_in_the_query_string_never_reaches_stderr() {
    let secret = "qs-s3cret-pw";
    for url in [
        format!("postgres://127.0.0.1:1/x?user=etl&password={secret}"),
        format!("postgres:///x?host=127.0.0.1&port=1&password={secret}"),
    ] {
        for format in ["pretty", "json"] {
            let run = Etl::default()
                .with("DATABASE_URL", &url)
                .with("PIIVAULT_KEK", "file:/nonexistent/kek.bin")
                .with("RUST_LOG", "trace")
                .run(&["--log-format", format, "keys", "status"])
                .await;
            assert_eq!(run.code, 69, "unreachable: {}", run.stderr);
            assert!(
                !run.stderr.contains(secret) && !run.stdout.contains(secret),
                "{url} ({format}): {}",
                run.stderr
            );
        }
    }
}
