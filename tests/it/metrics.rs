//! `etl run --metrics-addr`: Prometheus metrics, liveness and readiness, from a real run.

use std::time::Duration;

use crate::support::{
    Setup, TempCluster, TempEmulator, assert_no_input_values, free_port, http_get as get,
    http_get_accepting, sample_bodies, send,
};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_readiness_follow_a_real_run() {
    let mut emulator = TempEmulator::start();
    let s = Setup::builder()
        .emulator(&emulator)
        .visibility(5)
        .build()
        .await;
    let (queue_url, etl) = (&*s.queue, &s.etl);
    let bodies: Vec<String> = sample_bodies().into_iter().take(30).collect();
    send(queue_url, &bodies).await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let consumer = etl.spawn(&["run", "--wait-time-secs", "1", "--metrics-addr", &addr]);
    let metrics = metrics_once(port, "piivault_deleted_total 30").await;
    for line in [
        "piivault_received_total 30",
        "piivault_loaded_total 29",
        "piivault_quarantined_total 1",
        "piivault_duplicates_total 0",
        "piivault_deleted_total 30",
        "piivault_in_flight_messages 0",
        "piivault_end_to_end_seconds_count 30",
        r#"piivault_key_version{purpose="seal",version="1",state="active"} 1"#,
        r#"piivault_key_version{purpose="token",version="1",state="active"} 1"#,
        r#"piivault_dependency_up{dependency="postgres"} 1"#,
        r#"piivault_dependency_up{dependency="sqs"} 1"#,
        r#"piivault_retries_total{dependency="postgres"} 0"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    assert!(
        metrics.contains("piivault_batch_seconds_bucket"),
        "{metrics}"
    );
    let build = format!(
        r#"piivault_build_info{{version="{}"}} 1"#,
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        metrics.lines().any(|l| l == build),
        "{build} in:\n{metrics}"
    );
    assert_no_input_values(&metrics, &bodies, "the metrics");
    // Without an Accept header: the classic text format, which promtool accepts as it is.
    let (_, classic_type, classic) = http_get_accepting(port, "/metrics", None);
    assert_eq!(classic_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        classic.contains("# TYPE piivault_received_total counter\n") && !classic.contains("# EOF"),
        "{classic}"
    );
    let lint = promtool(&["check", "metrics"], Some(&classic));
    assert_eq!(
        lint,
        (true, String::new()),
        "promtool check metrics:\n{classic}"
    );
    // What a Prometheus server asks for: OpenMetrics.
    let (_, om_type, om) = http_get_accepting(
        port,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert!(
        om_type.starts_with("application/openmetrics-text"),
        "{om_type}"
    );
    assert!(
        om.ends_with("# EOF\n") && om.contains("# TYPE piivault_received counter\n"),
        "{om}"
    );
    assert_eq!(get(port, "/healthz"), (200, "ok\n".to_owned()));
    let (status, ready) = get(port, "/readyz");
    assert_eq!(status, 200, "{ready}");
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(
        (ready["postgres"].as_str(), ready["sqs"].as_str()),
        (Some("ok"), Some("ok"))
    );

    // SQS gone: alive but not ready once the observer's next check (every 5 s, 2 s timeout)
    // has failed, and it says which dependency failed.
    emulator.stop();
    let (mut status, mut ready) = (0, String::new());
    for _ in 0..120 {
        (status, ready) = get(port, "/readyz");
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 503, "not unready within 12 s: {ready}");
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["postgres"], "ok");
    let sqs = ready["sqs"].as_str().unwrap();
    assert!(sqs.starts_with("unreachable"), "{sqs}"); // refused at once, or no answer in 2 s
    assert_eq!(get(port, "/healthz").0, 200);
    let metrics = get(port, "/metrics").1;
    let down = r#"piivault_dependency_up{dependency="sqs"} 0"#;
    assert!(metrics.lines().any(|l| l == down), "{metrics}");
    // The receives failed and were retried: the families served from their first sample on
    // are there now.
    for name in SERVED_FROM_FIRST_SAMPLE {
        let declared = format!("# TYPE {name} ");
        assert!(
            metrics.lines().any(|l| l.starts_with(&declared)),
            "{name} in:\n{metrics}"
        );
    }

    let out = crate::support::sigterm(consumer).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["loaded"], 29);

    // A taken address is a configuration error, before anything is consumed.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let refused = etl
        .run(&["run", "--drain", "--metrics-addr", &taken_addr])
        .await;
    assert_eq!(refused.code, 78, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("cannot listen on --metrics-addr"),
        "{}",
        refused.stderr
    );
}

/// `/metrics` once it holds `line` (at most 30 s after the server starts listening).
async fn metrics_once(port: u16, line: &str) -> String {
    let mut metrics = String::new();
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            metrics = get(port, "/metrics").1;
            if metrics.lines().any(|l| l == line) {
                break;
            }
        }
    }
    metrics
}

/// The alert rules shipped for operators.
fn alert_rules() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml")
}

/// The Grafana dashboard shipped for operators.
fn grafana_dashboard() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/piivault.json")
}

/// Families `/metrics` serves only from their first sample on: their labels (an error's class)
/// are not known before, and prometheus-client serves nothing of an empty family.
/// `metrics_health_and_readiness_follow_a_real_run` sees them once SQS fails.
const SERVED_FROM_FIRST_SAMPLE: &[&str] = &["piivault_errors_total"];

/// Asserts every `piivault_*` name in `text` (from `what`) is one `served` (classic text format)
/// declares, or one of [`SERVED_FROM_FIRST_SAMPLE`]: by its `# TYPE` line, which names a counter
/// by its `_total` samples and a histogram by the base of its `_bucket`, `_count` and `_sum`
/// samples.
fn assert_names_served(text: &str, what: &str, served: &str) {
    let declared = |name: &str, kinds: &[&str]| {
        served.lines().any(|l| {
            l.strip_prefix("# TYPE ")
                .and_then(|t| t.split_once(' '))
                .is_some_and(|(n, kind)| n == name && (kinds.is_empty() || kinds.contains(&kind)))
        })
    };
    for name in text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("piivault_"))
    {
        let sample_of = ["_bucket", "_count", "_sum"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .any(|base| declared(base, &["histogram", "summary"]));
        assert!(
            declared(name, &[]) || sample_of || SERVED_FROM_FIRST_SAMPLE.contains(&name),
            "{name} (in {what}) is not served:\n{served}"
        );
    }
}

/// Every PromQL expression of a Grafana dashboard: each `expr` (panel targets, nested rows,
/// annotations) and each query variable's query, its `label_values(selector, label)` made the
/// PromQL that answers the same.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn exprs(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value.as_str()) {
                        ("expr", Some(expr)) => found.push(expr.to_owned()),
                        _ => exprs(value, found),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    exprs(dashboard, &mut found);
    let variables = dashboard["templating"]["list"].as_array().cloned();
    for variable in variables.unwrap_or_default() {
        if variable["type"] != "query" {
            continue;
        }
        let query = &variable["query"];
        let query = query
            .as_str()
            .or(query["query"].as_str())
            .unwrap_or_default();
        let promql = match query.strip_prefix("label_values(") {
            Some(args) => {
                let args = args.strip_suffix(')').unwrap_or(args);
                let (selector, label) = args
                    .rsplit_once(',')
                    .unwrap_or_else(|| panic!("label_values without a selector: {query}"));
                format!("count by ({}) ({selector})", label.trim())
            }
            None => query.to_owned(),
        };
        found.push(promql);
    }
    found
}

/// `expr` with the Grafana variables the dashboard uses (`$name` or `${name}`) replaced by what
/// Grafana sends for a 5-minute range and every instance; any other variable fails the test.
fn grafana_substituted(expr: &str) -> String {
    let value = |name: &str| match name {
        "__rate_interval" | "__interval" => "1m",
        "__range" => "5m",
        "instance" => ".*",
        other => panic!("a Grafana variable this test does not know, ${other}, in {expr}"),
    };
    let (mut out, mut rest) = (String::new(), expr);
    while let Some((before, after)) = rest.split_once('$') {
        let (name, tail) = match after.strip_prefix('{') {
            Some(braced) => braced.split_once('}').expect("an unclosed ${"),
            None => after.split_at(
                after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len()),
            ),
        };
        out = out + before + value(name);
        rest = tail;
    }
    out + rest
}

/// `text` percent-encoded for a URL's query string: every byte but RFC 3986's unreserved ones.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `promtool` with `args` in `deploy/prometheus`, `stdin` piped in: (success, everything
/// it printed).
fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(alert_rules().parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool missing: run scripts/stack.sh tools (installs Debian's prometheus)");
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let printed =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), printed)
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let (ok, printed) = promtool(&["check", "rules", "alerts.yml"], None);
    assert!(
        ok && printed.contains("SUCCESS: 7 rules found"),
        "{printed}"
    );
    let (ok, printed) = promtool(&["test", "rules", "alerts_test.yml"], None);
    assert!(ok && printed.contains("SUCCESS"), "{printed}");
}

/// A Prometheus server of the test's own on a free port, scraping `target` every second and
/// evaluating the shipped alert rules.
struct TempPrometheus {
    _dir: tempfile::TempDir,
    child: std::process::Child,
    port: u16,
}

impl TempPrometheus {
    fn start(target: &str) -> TempPrometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: ['{}']\n\
                 scrape_configs:\n  - job_name: piivault\n    static_configs: [{{targets: ['{target}']}}]\n",
                alert_rules().display()
            ),
        )
        .unwrap();
        let port = free_port();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect(
                "prometheus missing: run scripts/stack.sh tools (installs Debian's prometheus)",
            );
        TempPrometheus {
            _dir: dir,
            child,
            port,
        }
    }

    /// An instant query's HTTP status and answer (JSON null when the body is not JSON).
    fn answer(&self, expr: &str) -> (u16, serde_json::Value) {
        let path = format!("/api/v1/query?query={}", percent_encoded(expr));
        let (status, body) = get(self.port, &path);
        (status, serde_json::from_str(&body).unwrap_or_default())
    }

    /// The value of an instant query's single result, once it has one.
    fn query(&self, expr: &str) -> Option<f64> {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let (status, answer) = self.answer(expr);
        if status != 200 {
            return None;
        }
        let result = answer["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for TempPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_a_run_and_counts_what_it_loaded() {
    let s = crate::support::Setup::new().await;
    let bodies: Vec<String> = sample_bodies().into_iter().take(40).collect();
    send(&s.queue, &bodies).await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let prometheus = TempPrometheus::start(&addr);
    let consumer = s
        .etl
        .spawn(&["run", "--wait-time-secs", "1", "--metrics-addr", &addr]);
    let mut seen = (None, None);
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen = (
            prometheus.query("piivault_loaded_total"),
            prometheus.query("up"),
        );
        if seen.0 == Some(39.0) {
            break;
        }
    }
    let rows = s.db.count("SELECT count(*) FROM user_logins").await;
    assert_eq!(rows, 39, "the sample's first 40 bodies hold one malformed");
    assert_eq!(seen, (Some(39.0), Some(1.0)), "Prometheus's answer");
    assert_eq!(prometheus.query("piivault_quarantined_total"), Some(1.0));
    // Every metric the alert rules name is one etl serves, and every rule evaluates cleanly
    // against the real series.
    let served = get(port, "/metrics").1;
    let rules = std::fs::read_to_string(alert_rules()).unwrap();
    assert_names_served(&rules, "the alert rules", &served);
    let mut health = Vec::new();
    for _ in 0..20 {
        let (_, body) = get(prometheus.port, "/api/v1/rules");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        health = answer["data"]["groups"][0]["rules"]
            .as_array()
            .map(|rules| rules.iter().map(|r| r["health"].to_string()).collect())
            .unwrap_or_default();
        if health.len() == 7 && health.iter().all(|h| h == "\"ok\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(health, vec!["\"ok\""; 7], "rule health");
    let firing = prometheus.query("count(ALERTS)");
    assert_eq!(firing, None, "no alert fires on a healthy run");
    // The same of the Grafana dashboard: every metric its queries name is served, and every
    // query (Grafana's variables filled in) is PromQL the real Prometheus evaluates.
    let dashboard = std::fs::read_to_string(grafana_dashboard()).unwrap();
    let queries = dashboard_queries(&serde_json::from_str(&dashboard).unwrap());
    assert!(!queries.is_empty(), "no query in the dashboard");
    assert_names_served(&queries.join("\n"), "the Grafana dashboard", &served);
    for expr in &queries {
        let (status, answer) = prometheus.answer(&grafana_substituted(expr));
        assert_eq!(
            (status, answer["status"].as_str()),
            (200, Some("success")),
            "{expr}: {answer}"
        );
    }
    // The queue's depth, sampled every 5 s: empty once everything is deleted.
    let mut depth = None;
    for _ in 0..30 {
        depth = prometheus.query(r#"sum(piivault_queue_messages{state=~"visible|in_flight"})"#);
        if depth == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(depth, Some(0.0), "visible + in flight once drained");
    let out = crate::support::sigterm(consumer).await;
    assert_eq!(out.json()["loaded"], 39);
    drop(prometheus);
}

/// Statements the cluster logged (`log_line_prefix = '%a|'`) per application name.
fn statements_by(log: &str, application: &str) -> usize {
    let prefix = format!("{application}|");
    log.lines()
        .filter(|l| {
            l.starts_with(&prefix)
                && (l.contains("LOG:  statement: ") || l.contains("LOG:  execute "))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn scrapes_and_probes_cost_the_writers_no_database_round_trips() {
    // The test's own cluster, so it may log every statement with the client's application name.
    let cluster = TempCluster::start();
    let admin = sqlx::PgPool::connect(&cluster.url()).await.unwrap();
    for sql in [
        "ALTER SYSTEM SET log_statement = 'all'",
        "ALTER SYSTEM SET log_line_prefix = '%a|'",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(sql).execute(&admin).await.unwrap();
    }
    admin.close().await;
    let s = Setup::builder().cluster(&cluster).build().await;
    let (queue_url, etl) = (&*s.queue, &s.etl);
    let bodies: Vec<String> = sample_bodies().into_iter().take(20).collect();
    send(queue_url, &bodies).await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let consumer = etl.spawn(&["run", "--wait-time-secs", "1", "--metrics-addr", &addr]);
    let metrics = metrics_once(port, "piivault_deleted_total 20").await;
    assert!(metrics.contains("piivault_deleted_total 20"), "{metrics}");
    // The writers' statements are in the log under their name: the count below can see them.
    let before = cluster.log();
    assert!(statements_by(&before, "piivault-etl") > 0, "{before}");

    // 100 scrapes a second for 10 s, every tenth one a readiness probe too.
    let started = std::time::Instant::now();
    let mut scrapes = 0;
    while started.elapsed() < Duration::from_secs(10) {
        let (status, body) = get(port, "/metrics");
        assert!(
            status == 200 && body.contains("piivault_loaded_total 19"),
            "{body}"
        );
        if scrapes % 10 == 0 {
            assert_eq!(get(port, "/readyz").0, 200);
        }
        scrapes += 1;
        let next = Duration::from_millis(10 * scrapes);
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    let window = cluster.log()[before.len()..].to_owned();
    let out = crate::support::sigterm(consumer).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(scrapes >= 900, "only {scrapes} scrapes in 10 s");
    assert_eq!(
        statements_by(&window, "piivault-etl"),
        0,
        "the writers' connections ran statements while only scrapes came in:\n{window}"
    );
    // The observer's reads: one key list every 5 s, whatever the scrape rate.
    let observer = statements_by(&window, "piivault-observer");
    assert!(
        (1..=4).contains(&observer),
        "{observer} observer statements:\n{window}"
    );
}
