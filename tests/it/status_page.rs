//! The status page `/` of `etl run --metrics-addr`, rendered by headless Chromium (Debian's
//! `chromium`, installed by `scripts/stack.sh tools`) while a real consumer runs as a login
//! holding only `piivault_etl`.

use std::path::Path;
use std::time::Duration;

use crate::support::{Setup, assert_no_input_values, free_port, http_get, sample_bodies, send};

const SHARED_DEVICE: &str = "status-page-shared-device-7f3a";
const SHARED_IP: &str = "198.51.100.77";

/// Chromium's binary: `PIIVAULT_CHROMIUM` or `chromium` on PATH.
fn chromium() -> String {
    let bin = std::env::var("PIIVAULT_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let found = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{bin} not found: run scripts/stack.sh tools (installs Debian's chromium)"
    );
    bin
}

/// Runs headless Chromium on `url` with `args`; returns stdout.
fn headless(bin: &str, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox", // tests may run as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Takes a screenshot of `url` at `size` ("width,height") into target/test-output/`name`, kept
/// for a person to look at after the run; returns its bytes, checked to be a PNG.
fn screenshot(bin: &str, url: &str, name: &str, size: &str) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-output");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join(name);
    let _ = std::fs::remove_file(&png);
    headless(
        bin,
        url,
        &[
            &format!("--screenshot={}", png.display()),
            &format!("--window-size={size}"),
        ],
    );
    let bytes = std::fs::read(&png).expect("chromium wrote no screenshot");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{name}");
    println!("status page screenshot: {}", png.display());
    bytes
}

/// The text of the element with `id` in `dom` (the first `>` after the id to the next `<`).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap();
    &rest[start..start + end]
}

/// The element with `id` up to its closing `</tr>` (a table row).
fn row_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let rest = &dom[at..];
    &rest[..rest.find("</tr>").unwrap_or(rest.len())]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_renders_counts_keys_and_duplicate_tokens_in_chromium() {
    let bin = chromium();
    let s = Setup::new().await;
    let (_etl_name, etl_url) = s.login("piivault_etl").await;

    // The sample, plus one device shared by three users and one IP shared by two.
    let mut bodies = sample_bodies();
    for (i, ip) in [(1, SHARED_IP), (2, SHARED_IP), (3, "203.0.113.9")] {
        bodies.push(
            serde_json::json!({
                "user_id": format!("status-user-{i}"), "app_version": "2.3.0",
                "device_type": "android", "ip": ip, "locale": "RU",
                "device_id": SHARED_DEVICE,
            })
            .to_string(),
        );
    }
    send(&s.queue, &bodies).await;

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let spawned = tokio::time::Instant::now();
    let consumer = s.etl.clone().with("DATABASE_URL", &etl_url).spawn(&[
        "run",
        "--wait-time-secs",
        "1",
        "--metrics-addr",
        &addr,
    ]);
    let want = format!("piivault_deleted_total {}", bodies.len());
    let mut done = false;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http_get(port, "/metrics").1.lines().any(|l| l == want)
        {
            done = true;
            break;
        }
    }
    assert!(
        done,
        "the consumer did not delete all {} messages",
        bodies.len()
    );

    // The page's row count is the statistics collector's, flushed by the writers' backends a
    // moment after their commits; and the recent rate needs a sample a second old.
    s.db.wait_for(
        "SELECT coalesce(max(n_live_tup), 0) FROM pg_stat_user_tables WHERE relname = 'user_logins'",
        102,
        Duration::from_secs(20),
    )
    .await;
    tokio::time::sleep_until(spawned + Duration::from_secs(2)).await;
    // The backlog is the observer's last read (every 5 s): wait until it has seen the queue empty.
    let empty = [
        r#"piivault_queue_messages{state="visible"} 0"#,
        r#"piivault_queue_messages{state="in_flight"} 0"#,
    ];
    let mut metrics = String::new();
    for _ in 0..150 {
        metrics = http_get(port, "/metrics").1;
        if empty.iter().all(|e| metrics.lines().any(|l| l == *e)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        empty.iter().all(|e| metrics.lines().any(|l| l == *e)),
        "{metrics}"
    );
    // The duplicate groups come from the shared-token summary, which the deployment's CronJob
    // rebuilds with `etl report refresh`; the page itself never scans user_logins.
    let refreshed = s.etl.run(&["report", "refresh"]).await;
    assert_eq!(refreshed.assert_success().json_lines()[0]["groups"], 2);
    let url = format!("http://127.0.0.1:{port}/");
    let dom = headless(&bin, &url, &["--dump-dom"]);
    assert!(dom.contains("<h1>piivault status</h1>"), "{dom}");
    assert_eq!(text_of(&dom, "received"), bodies.len().to_string());
    assert_eq!(text_of(&dom, "loaded"), "102");
    assert_eq!(text_of(&dom, "quarantined"), "1");
    assert_eq!(text_of(&dom, "deleted"), bodies.len().to_string());
    assert_eq!(text_of(&dom, "quarantine"), "1", "the table's own count");
    assert_eq!(
        text_of(&dom, "user-logins"),
        "102",
        "the statistics collector's count"
    );
    let average: f64 = text_of(&dom, "rate-average").parse().unwrap();
    assert!(average > 0.0, "messages/s since start: {average}");
    let recent: f64 = text_of(&dom, "rate-recent").parse().unwrap();
    assert!(recent > 0.0, "messages/s over the last minute: {recent}");
    assert!(
        !dom.contains("class=\"unavailable\""),
        "a part failed: {dom}"
    );
    assert!(
        dom.contains("<td>seal</td><td>1</td><td>active</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("<td>token</td><td>1</td><td>active</td>"),
        "{dom}"
    );

    // The operator's parts: backlog, latency, chart, stages, last error, newest commit.
    for id in ["queue-visible", "queue-in-flight", "queue-delayed"] {
        assert_eq!(text_of(&dom, id), "0", "#{id}");
    }
    for id in ["latency-minute", "latency-start"] {
        let row = row_of(&dom, id);
        let figures = row.matches(" ms</td>").count() + row.matches(" s</td>").count();
        assert_eq!(figures, 3, "p50, p95, p99 in {row}");
    }
    let chart = &dom[dom.find("<svg id=\"chart\"").expect("no chart")..];
    assert!(
        chart[..chart.find("</svg>").unwrap()].contains("class=\"loaded\""),
        "no loaded bar in the chart: {chart}"
    );
    for stage in ["receive", "write", "delete"] {
        assert!(
            row_of(&dom, &format!("stage-{stage}")).contains("<td>ok</td>"),
            "{stage} in {dom}"
        );
    }
    assert_eq!(text_of(&dom, "last-error"), "None.");
    assert!(text_of(&dom, "last-commit").starts_with("at "), "{dom}");
    assert!(
        text_of(&dom, "dependencies").starts_with("Postgres: ok · SQS: ok"),
        "{dom}"
    );

    // The duplicate groups show the tokens that user_logins holds, with their counts.
    let device_token: String = sqlx::query_scalar(
        "SELECT masked_device_id FROM user_logins WHERE user_id = 'status-user-1'",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    let ip_token: String =
        sqlx::query_scalar("SELECT masked_ip FROM user_logins WHERE user_id = 'status-user-1'")
            .fetch_one(&s.db.pool)
            .await
            .unwrap();
    assert!(
        dom.contains(&format!(
            "<td class=\"token\">{device_token}</td><td>3</td><td>3</td>"
        )),
        "device group in {dom}"
    );
    assert!(
        dom.contains(&format!(
            "<td class=\"token\">{ip_token}</td><td>2</td><td>2</td>"
        )),
        "IP group in {dom}"
    );

    assert!(text_of(&dom, "summary").starts_with("Counted at "), "{dom}");
    // Tokens and counts only: no user id, IP or device id of any message.
    assert_no_input_values(&dom, &bodies, "the status page");

    let bytes = screenshot(&bin, &url, "status-page.png", "1100,1300");
    assert!(bytes.len() > 20_000, "a near-empty screenshot");
    // As a phone shows it: the same page at a phone's width, tables scroll inside themselves.
    screenshot(&bin, &url, "status-page-phone.png", "390,2400");

    let out = crate::support::sigterm(consumer).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn views_never_wait_for_a_blocked_scan_and_postgres_cancels_it() {
    let s = Setup::new().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let consumer = s.etl.spawn(&[
        "run",
        "--wait-time-secs",
        "1",
        "--metrics-addr",
        &addr,
        "--status-timeout-secs",
        "2",
    ]);
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
    }

    // The summary's reads wait on a lock the test holds. The first view waits 3 s at most for
    // the first read, then renders what this process knows and says the rest is being read.
    let lock = s.db.block_shared_tokens().await;
    let started = std::time::Instant::now();
    let (status, page) = http_get(port, "/");
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(page.contains("id=\"db-pending\""), "{page}");
    assert!(page.contains("<td id=\"received\">0</td>"), "{page}");

    // Postgres cancels each scan after --status-timeout-secs; the next views show the figures
    // that could be read and say which could not.
    let mut page = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        page = http_get(port, "/").1;
        if !page.contains("db-pending") {
            break;
        }
    }
    assert_eq!(
        page.matches("canceling statement due to statement timeout")
            .count(),
        3,
        "the summary's state, devices and IPs: {page}"
    );
    assert!(page.contains("<td id=\"quarantine\">0</td>"), "{page}");
    assert!(
        page.contains("<td>seal</td><td>1</td><td>active</td>"),
        "{page}"
    );
    let waiting =
        s.db.count(
            "SELECT count(*) FROM pg_stat_activity
             WHERE query LIKE '%shared_tokens%' AND state = 'active' AND pid <> pg_backend_pid()",
        )
        .await;
    assert_eq!(
        waiting, 0,
        "cancelled by the server, not abandoned by the client"
    );
    drop(lock);

    let out = crate::support::sigterm(consumer).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}
