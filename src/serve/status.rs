//! The read-only status page `/`: what this process has done and how fast (with a chart of the
//! last hour), the queue's backlog, end-to-end latency, each stage's health and the last error,
//! the database's totals, the data key versions and the top duplicate groups. Plain HTML rendered
//! per request, no script; tokens, counts and error classes only — never a user id, an original
//! value, an error message or a key.
//!
//! The database figures come from scans of `user_logins` (seconds at a million rows), so a view
//! never waits for them: a view that finds them older than [`DB_PART_TTL`] starts one re-read in
//! the background (never two at once) and shows the previous figures with their age. Only the
//! very first view waits, briefly, so a small database shows its figures at once.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Served;
use super::chart;
use super::history::Rates;
use super::observe::{Checked, QueueDepth};
use crate::pipeline::Summary;
use crate::pipeline::health::{LastError, Stage, StageHealth};
use crate::pipeline::latency::Quantiles;
use crate::store::report::{self, DuplicateBy, DuplicateGroup, SummaryState};
use crate::store::{StoreError, keys, quarantine};

/// Beyond Postgres's own statement timeout, how long the client waits for one read (a
/// connection to open, a cancel to arrive).
const READ_GRACE: Duration = Duration::from_secs(5);
/// How old the database figures may be before a view starts a re-read: however many people
/// look, the scans run at most once per interval.
const DB_PART_TTL: Duration = Duration::from_secs(30);
/// How long the first view waits for the first read.
const FIRST_READ_WAIT: Duration = Duration::from_secs(3);
/// Duplicate groups shown per column.
const TOP_GROUPS: i64 = 10;
/// A part of the page read from the database, or why it could not be read.
type Part<T> = Result<T, String>;

/// One data key version as the page shows it.
pub struct KeyLine {
    purpose: String,
    version: i32,
    state: String,
    created_at: DateTime<Utc>,
}

/// The queue's backlog as the page shows it.
#[derive(Clone, Copy)]
enum Backlog {
    /// The run loads a file.
    NoQueue,
    /// SQS has not answered the observer yet.
    NotRead,
    /// The observer's last read.
    Read(QueueDepth),
}

/// Everything the page shows, gathered before rendering.
pub struct StatusView {
    summary: Summary,
    recent_rate: Option<f64>,
    /// Loaded/quarantined per second, one-minute bins over the last hour, oldest first.
    minutes: Vec<Option<Rates>>,
    /// `None` when the run reads a file.
    backlog: Backlog,
    /// End-to-end latency over the last minute (`None`: nothing committed in it).
    latency_minute: Option<Quantiles>,
    /// End-to-end latency since start.
    latency_start: Option<Quantiles>,
    stages: [(Stage, StageHealth); 3],
    last_error: Option<LastError>,
    last_commit: Option<DateTime<Utc>>,
    /// The observer's last check and its age.
    checked: Option<(Checked, Duration)>,
    /// `None` while the first read is still running.
    db: Option<Arc<DbPart>>,
    at: DateTime<Utc>,
}

/// What the page reads from the database, and when it was read.
pub struct DbPart {
    user_logins: Part<i64>,
    quarantined: Part<i64>,
    keys: Part<Vec<KeyLine>>,
    summary: Part<Option<SummaryState>>,
    devices: Part<Vec<DuplicateGroup>>,
    ips: Part<Vec<DuplicateGroup>>,
    read_at: DateTime<Utc>,
}

/// The latest database figures and when they were read; at most one re-read at a time.
pub struct DbCache {
    latest: tokio::sync::watch::Sender<Option<(Instant, Arc<DbPart>)>>,
    reading: AtomicBool,
}

impl Default for DbCache {
    fn default() -> DbCache {
        DbCache {
            latest: tokio::sync::watch::Sender::new(None),
            reading: AtomicBool::new(false),
        }
    }
}

/// Reads the counters and the latest database figures, starting a re-read when they are old.
pub async fn gather(served: &Arc<Served>) -> StatusView {
    let summary = served.counters.summary(served.started);
    let now = Instant::now();
    let recent_rate = served.history.recent_rate(now, summary.received);
    let counters = &served.counters;
    let (latency_start, latency_minute) = counters.latency().quantiles_at(now);
    let cache = &served.db_cache;
    let stale = cache
        .latest
        .borrow()
        .as_ref()
        .is_none_or(|(at, _)| at.elapsed() >= DB_PART_TTL);
    if stale && !cache.reading.swap(true, Ordering::AcqRel) {
        let served = served.clone();
        tokio::spawn(async move {
            let part = read_db(&served.page_pool, served.page_timeout).await;
            let cache = &served.db_cache;
            cache
                .latest
                .send_replace(Some((Instant::now(), Arc::new(part))));
            cache.reading.store(false, Ordering::Release);
        });
    }
    let mut latest = cache.latest.subscribe();
    let db = match tokio::time::timeout(FIRST_READ_WAIT, latest.wait_for(Option::is_some)).await {
        Ok(Ok(value)) => value.as_ref().map(|(_, part)| part.clone()),
        _ => None,
    };
    StatusView {
        summary,
        recent_rate,
        minutes: served.history.minutes(now),
        backlog: match (&served.queue, served.observed.depth()) {
            (None, _) => Backlog::NoQueue,
            (Some(_), None) => Backlog::NotRead,
            (Some(_), Some(depth)) => Backlog::Read(depth),
        },
        latency_minute,
        latency_start,
        stages: counters.stages().health(),
        last_error: counters.stages().last_error(),
        last_commit: counters.last_commit(),
        checked: served.observed.checked().map(|c| {
            let age = c.at.elapsed();
            (c, age)
        }),
        db,
        at: Utc::now(),
    }
}

/// The page's database reads, one after another on the page's own connection (never a
/// writer's); Postgres cancels any statement running longer than `timeout`.
async fn read_db(pool: &PgPool, timeout: Duration) -> DbPart {
    let wait = timeout + READ_GRACE;
    let user_logins = bounded(wait, report::user_logins_estimate(pool)).await;
    let quarantined = bounded(wait, quarantine::count(pool)).await;
    let keys = bounded(wait, async {
        keys::list(pool).await.map(|rows| {
            rows.into_iter()
                .map(|k| KeyLine {
                    purpose: k.purpose.as_str().to_owned(),
                    version: k.version.0 as i32,
                    state: k.state.as_str().to_owned(),
                    created_at: k.created_at,
                })
                .collect()
        })
    })
    .await;
    // The shared-token summary, never rebuilt here: a page view must stay one index read.
    let summary = bounded(wait, report::summary_state(pool)).await;
    let devices = bounded(
        wait,
        report::duplicate_groups(pool, DuplicateBy::Device, 2, TOP_GROUPS),
    )
    .await;
    let ips = bounded(
        wait,
        report::duplicate_groups(pool, DuplicateBy::Ip, 2, TOP_GROUPS),
    )
    .await;
    DbPart {
        user_logins,
        quarantined,
        keys,
        summary,
        devices,
        ips,
        read_at: Utc::now(),
    }
}

/// The read's value, or a one-line reason (store errors never carry bound values).
async fn bounded<T>(wait: Duration, read: impl Future<Output = Result<T, StoreError>>) -> Part<T> {
    match tokio::time::timeout(wait, read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string().lines().next().unwrap_or_default().to_owned()),
        Err(_) => Err(format!("no answer within {} s", wait.as_secs())),
    }
}

/// The page as HTML. Every value from the database is escaped.
pub fn render(view: &StatusView) -> String {
    let s = &view.summary;
    let average = if s.seconds > 0.0 {
        s.received as f64 / s.seconds
    } else {
        0.0
    };
    let mut html = String::with_capacity(8 * 1024);
    html.push_str(HEAD);
    let read = view.db.as_ref().map_or_else(
        || "being read".to_owned(),
        |db| format!("read at {} UTC", db.read_at.format("%H:%M:%S")),
    );
    let _ = write!(
        html,
        "<p class=\"meta\">Rendered {} UTC · up {} · refreshes every 10 s · database figures \
         {read} (re-read when older than {} s)</p>",
        view.at.format("%Y-%m-%d %H:%M:%S"),
        uptime(s.seconds),
        DB_PART_TTL.as_secs()
    );

    html.push_str("<h2>This process</h2><table id=\"counts\"><tbody>");
    for (id, label, value) in [
        ("received", "received", s.received),
        ("loaded", "loaded", s.loaded),
        ("quarantined", "quarantined", s.quarantined),
        ("duplicates", "redelivered duplicates", s.duplicates),
        ("deleted", "deleted from the queue", s.deleted),
    ] {
        let _ = write!(
            html,
            "<tr><th>{label}</th><td id=\"{id}\">{value}</td></tr>"
        );
    }
    let recent = view
        .recent_rate
        .map_or_else(|| "–".to_owned(), |r| format!("{r:.1}"));
    let _ = write!(
        html,
        "<tr><th>messages/s, last minute</th><td id=\"rate-recent\">{recent}</td></tr>\
         <tr><th>messages/s, since start</th><td id=\"rate-average\">{average:.1}</td></tr>\
         <tr><th>newest commit by this process</th><td id=\"last-commit\">{}</td></tr>\
         </tbody></table>",
        view.last_commit
            .map_or_else(|| "none yet".to_owned(), |at| when(at, view.at))
    );
    render_live(&mut html, view);

    match &view.db {
        Some(db) => render_db(&mut html, db),
        None => html.push_str(
            "<h2>Database</h2><p id=\"db-pending\" class=\"meta\">The database figures are \
             being read (seconds on a large table); this page refreshes itself.</p>",
        ),
    }
    html.push_str(
        "<p class=\"meta\">Tokens are keyed HMACs: equal tokens mean equal originals. \
         Originals are revealed only by an auditor with <code>etl reveal</code>. \
         Full lists: <code>etl report duplicates</code>. Metrics: <a href=\"/metrics\">/metrics</a>, \
         readiness: <a href=\"/readyz\">/readyz</a>.</p></body></html>\n",
    );
    html
}

/// What the process knows without the database: chart, backlog, latency, stages, last error.
fn render_live(html: &mut String, view: &StatusView) {
    html.push_str("<h2>Loaded and quarantined per second, last hour</h2>");
    html.push_str(&chart::rates_svg("chart", &view.minutes));

    html.push_str("<h2>Queue backlog</h2>");
    match view.backlog {
        Backlog::NoQueue => {
            html.push_str("<p id=\"backlog\" class=\"none\">No queue: this run loads a file.</p>")
        }
        Backlog::NotRead => html.push_str(
            "<p id=\"backlog\" class=\"unavailable\">Not read yet (SQS has not answered \
             GetQueueAttributes).</p>",
        ),
        Backlog::Read(depth) => {
            let _ = write!(
                html,
                "<table id=\"backlog\"><tbody>\
                 <tr><th>visible (waiting)</th><td id=\"queue-visible\">{}</td></tr>\
                 <tr><th>in flight (received, not deleted; all consumers)</th>\
                 <td id=\"queue-in-flight\">{}</td></tr>\
                 <tr><th>delayed</th><td id=\"queue-delayed\">{}</td></tr></tbody></table>\
                 <p class=\"meta\">SQS's approximate counts, read {}.</p>",
                depth.visible,
                depth.in_flight,
                depth.delayed,
                when(depth.at, view.at)
            );
        }
    }

    html.push_str(
        "<h2>End-to-end latency (sent to committed)</h2><table id=\"latency\"><thead><tr>\
         <th></th><th>p50</th><th>p95</th><th>p99</th></tr></thead><tbody>",
    );
    for (id, label, q) in [
        ("latency-minute", "last minute", view.latency_minute),
        ("latency-start", "since start", view.latency_start),
    ] {
        match q {
            Some(q) => {
                let _ = write!(
                    html,
                    "<tr id=\"{id}\"><th>{label}</th><td>{}</td><td>{}</td><td>{}</td></tr>",
                    seconds(q.p50),
                    seconds(q.p95),
                    seconds(q.p99)
                );
            }
            None => {
                let _ = write!(
                    html,
                    "<tr id=\"{id}\"><th>{label}</th><td colspan=\"3\">no rows committed</td></tr>"
                );
            }
        }
    }
    html.push_str("</tbody></table>");

    html.push_str("<h2>Stages</h2>");
    table_head(html, "stages", &["stage", "state", "since"]);
    for (stage, health) in view.stages {
        let (state, at) = match health {
            _ if matches!(view.backlog, Backlog::NoQueue) && stage == Stage::Delete => {
                ("not used", None)
            }
            StageHealth::Waiting => ("waiting", None),
            StageHealth::Ok(at) => ("ok", Some(at)),
            StageHealth::Retrying(at) => ("retrying", Some(at)),
            StageHealth::Failed(at) => ("failed", Some(at)),
        };
        let _ = write!(
            html,
            "<tr class=\"{state}\" id=\"stage-{}\"><td>{}</td><td>{state}</td><td>{}</td></tr>",
            stage.as_str(),
            stage.as_str(),
            at.map_or_else(String::new, |at| when(at, view.at))
        );
    }
    html.push_str("</tbody></table>");
    if let Some((checked, age)) = &view.checked {
        let _ = write!(
            html,
            "<p id=\"dependencies\" class=\"meta\">Postgres: {} · SQS: {} (checked {} s ago)</p>",
            escape(&checked.postgres),
            escape(&checked.sqs),
            age.as_secs()
        );
    }

    html.push_str("<h2>Last error</h2>");
    match &view.last_error {
        None => html.push_str("<p id=\"last-error\" class=\"none\">None.</p>"),
        Some(e) => {
            let _ = write!(
                html,
                "<p id=\"last-error\" class=\"unavailable\">{} from {}{}, {}, {}.</p>",
                escape(e.class),
                e.dependency.as_str(),
                e.stage
                    .map_or_else(String::new, |s| format!(" in the {} stage", s.as_str())),
                if e.retried {
                    "retried"
                } else {
                    "ended the run"
                },
                when(e.at, view.at)
            );
        }
    }
}

/// `at` as a UTC time of day with its age as of `now`.
fn when(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let ago = (now - at).num_seconds().max(0) as f64;
    format!("at {} UTC ({} ago)", at.format("%H:%M:%S"), uptime(ago))
}

/// A latency: milliseconds below a second, else seconds.
fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.1} s")
    }
}

/// The database part of the page: totals, keys, duplicate groups.
fn render_db(html: &mut String, db: &DbPart) {
    html.push_str("<h2>Database</h2><table id=\"totals\"><tbody>");
    let _ = write!(
        html,
        "<tr><th>rows in user_logins (estimate)</th><td id=\"user-logins\">{}</td></tr>\
         <tr><th>messages in quarantine</th><td id=\"quarantine\">{}</td></tr></tbody></table>",
        part(&db.user_logins, |n| n.to_string()),
        part(&db.quarantined, |n| n.to_string()),
    );

    html.push_str("<h2>Data keys</h2>");
    match &db.keys {
        Err(why) => unavailable(html, why),
        Ok(keys) => {
            table_head(html, "keys", &["purpose", "version", "state", "created"]);
            for k in keys {
                let _ = write!(
                    html,
                    "<tr class=\"{state}\"><td>{}</td><td>{}</td><td>{state}</td><td>{}</td></tr>",
                    escape(&k.purpose),
                    k.version,
                    k.created_at.format("%Y-%m-%d %H:%M"),
                    state = escape(&k.state),
                );
            }
            html.push_str("</tbody></table>");
        }
    }

    render_summary(html, &db.summary);
    for (id, title, groups) in [
        ("devices", "Devices shared by several users", &db.devices),
        ("ips", "IP addresses shared by several users", &db.ips),
    ] {
        let _ = write!(html, "<h2>{title}</h2>");
        match groups {
            Err(why) => unavailable(html, why),
            Ok(groups) if groups.is_empty() => {
                let _ = write!(html, "<p id=\"{id}\" class=\"none\">None.</p>");
            }
            Ok(groups) => {
                table_head(html, id, &["token", "users", "logins"]);
                for g in groups {
                    let _ = write!(
                        html,
                        "<tr><td class=\"token\">{}</td><td>{}</td><td>{}</td></tr>",
                        escape(&g.token),
                        g.users,
                        g.logins
                    );
                }
                html.push_str("</tbody></table>");
            }
        }
    }
}

/// When the duplicate groups below were counted, or why there are none to show.
fn render_summary(html: &mut String, summary: &Part<Option<SummaryState>>) {
    html.push_str("<h2>Shared tokens</h2>");
    match summary {
        Err(why) => unavailable(html, why),
        Ok(None) => html.push_str(
            "<p id=\"summary\" class=\"unavailable\">Not built yet: <code>etl report refresh</code> \
             builds it (one scan of user_logins).</p>",
        ),
        Ok(Some(s)) if !s.current => html.push_str(
            "<p id=\"summary\" class=\"unavailable\">Out of date: built for a token key analysts \
             no longer see. <code>etl report refresh</code> rebuilds it.</p>",
        ),
        Ok(Some(s)) => {
            let _ = write!(
                html,
                "<p id=\"summary\" class=\"meta\">Counted at {} ({:.1} s), refreshed by \
                 <code>etl report refresh</code>.</p>",
                s.refreshed_at.format("%Y-%m-%d %H:%M:%S UTC"),
                s.seconds
            );
        }
    }
}

const HEAD: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta http-equiv=\"refresh\" content=\"10\"><title>piivault status</title><style>\
body{font:14px/1.4 system-ui,sans-serif;margin:1em auto;padding:0 1em;max-width:60em;color:#222}\
table{display:block;overflow-x:auto}tr.retrying td,tr.failed td{color:#a40;font-weight:bold}\
h1{font-size:1.5em}h2{font-size:1.1em;margin-top:1.5em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse}th,td{padding:.2em .8em;text-align:left}\
td{font-variant-numeric:tabular-nums}tbody tr:nth-child(odd){background:#f4f4f4}\
.token{font-family:monospace}.meta{color:#666}.unavailable{color:#a40}\
tr.active td:nth-child(3){color:#070;font-weight:bold}tr.retired{color:#999}\
</style></head><body><h1>piivault status</h1>";

/// Opens a table with a header row; the caller writes the rows and closes it.
fn table_head(html: &mut String, id: &str, columns: &[&str]) {
    let _ = write!(html, "<table id=\"{id}\"><thead><tr>");
    for c in columns {
        let _ = write!(html, "<th>{c}</th>");
    }
    html.push_str("</tr></thead><tbody>");
}

fn part<T>(value: &Part<T>, show: impl Fn(&T) -> String) -> String {
    match value {
        Ok(v) => show(v),
        Err(why) => format!(
            "<span class=\"unavailable\">unavailable: {}</span>",
            escape(why)
        ),
    }
}

fn unavailable(html: &mut String, why: &str) {
    let _ = write!(
        html,
        "<p class=\"unavailable\">Unavailable: {}</p>",
        escape(why)
    );
}

fn uptime(seconds: f64) -> String {
    let s = seconds as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// HTML-escapes text for element content and quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> StatusView {
        StatusView {
            summary: Summary {
                received: 120,
                loaded: 110,
                quarantined: 10,
                duplicates: 0,
                deleted: 120,
                seconds: 60.0,
            },
            recent_rate: None,
            minutes: vec![None; 60],
            backlog: Backlog::Read(QueueDepth {
                visible: 1200,
                in_flight: 30,
                delayed: 2,
                at: Utc::now(),
            }),
            latency_minute: Some(Quantiles {
                p50: 0.0421,
                p95: 0.9,
                p99: 2.5,
            }),
            latency_start: None,
            stages: [
                (Stage::Receive, StageHealth::Ok(Utc::now())),
                (Stage::Write, StageHealth::Retrying(Utc::now())),
                (Stage::Delete, StageHealth::Waiting),
            ],
            last_error: Some(LastError {
                stage: Some(Stage::Write),
                dependency: crate::error::classify::Dependency::Postgres,
                class: "read_only",
                at: Utc::now(),
                retried: true,
            }),
            last_commit: None,
            checked: None,
            db: Some(Arc::new(DbPart {
                user_logins: Ok(110),
                quarantined: Err("permission denied <x>".into()),
                keys: Ok(vec![KeyLine {
                    purpose: "seal".into(),
                    version: 2,
                    state: "active".into(),
                    created_at: Utc::now(),
                }]),
                summary: Ok(Some(SummaryState {
                    refreshed_at: Utc::now(),
                    token_version: Some(1),
                    current: true,
                    groups: 1,
                    seconds: 0.25,
                })),
                devices: Ok(vec![DuplicateGroup {
                    token: "<script>alert(1)</script>".into(),
                    users: 3,
                    logins: 4,
                }]),
                ips: Ok(vec![]),
                read_at: Utc::now(),
            })),
            at: Utc::now(),
        }
    }

    #[test]
    fn the_page_escapes_what_it_reads_and_says_what_is_missing() {
        let html = render(&view());
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("unavailable: permission denied &lt;x&gt;"));
        assert!(html.contains("<td id=\"loaded\">110</td>"));
        assert!(html.contains("<td id=\"rate-average\">2.0</td>"));
        assert!(html.contains("<td id=\"rate-recent\">–</td>"));
        assert!(html.contains("<p id=\"ips\" class=\"none\">None.</p>"));
        assert!(
            html.contains("<p id=\"summary\" class=\"meta\">Counted at "),
            "{html}"
        );
        assert!(html.contains("<td>seal</td><td>2</td><td>active</td>"));
        assert!(
            html.contains("<td id=\"queue-visible\">1200</td>"),
            "{html}"
        );
        assert!(html.contains("<td id=\"queue-in-flight\">30</td>"));
        assert!(html.contains(
            "<tr id=\"latency-minute\"><th>last minute</th><td>42 ms</td><td>900 ms</td><td>2.5 s</td></tr>"
        ));
        assert!(html.contains("<td colspan=\"3\">no rows committed</td>"));
        assert!(html.contains("<td id=\"last-commit\">none yet</td>"));
        assert!(html.contains("<svg id=\"chart\""));
        assert!(
            html.contains(
                "<tr class=\"retrying\" id=\"stage-write\"><td>write</td><td>retrying</td>"
            )
        );
        assert!(html.contains("<td>delete</td><td>waiting</td><td></td>"));
        assert!(
            html.contains("read_only from postgres in the write stage, retried, at "),
            "{html}"
        );
        // A file run has no queue: no backlog, and nothing to delete.
        let mut file = view();
        file.backlog = Backlog::NoQueue;
        let html = render(&file);
        assert!(html.contains("No queue: this run loads a file."));
        assert!(html.contains("<td>delete</td><td>not used</td>"));
    }
}
