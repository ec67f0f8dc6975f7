//! The read-only status page `/`: what this process has done and how fast, the database's totals,
//! the data key versions and the top duplicate groups. Plain HTML rendered per request, no
//! script; tokens and counts only — never a user id, an original value or a key.
//!
//! The database figures come from scans of `user_logins` (seconds at a million rows), so a view
//! never waits for them: a view that finds them older than [`DB_PART_TTL`] starts one re-read in
//! the background (never two at once) and shows the previous figures with their age. Only the
//! very first view waits, briefly, so a small database shows its figures at once.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Served;
use crate::pipeline::Summary;
use crate::store::report::{self, DuplicateBy, DuplicateGroup};
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
/// The window of the "recent" rate.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// How often the rate window takes a sample.
pub(super) const RATE_SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Samples of the received counter, so the page can show the rate of the last minute rather than
/// only the average since start (which hides a stall in a long-running consumer).
#[derive(Default)]
pub struct RateWindow {
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl RateWindow {
    /// Records `received` as of now and forgets samples older than the window.
    pub fn sample(&self, received: u64) {
        self.sample_at(Instant::now(), received);
    }

    fn sample_at(&self, at: Instant, received: u64) {
        let mut samples = self.samples.lock().expect("rate window lock");
        samples.push_back((at, received));
        while samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > RATE_WINDOW)
        {
            samples.pop_front();
        }
    }

    /// Messages per second between the oldest sample at most a minute before `now` and
    /// `(now, received)`; `None` until such a sample is at least one second old.
    pub fn per_second(&self, now: Instant, received: u64) -> Option<f64> {
        let samples = self.samples.lock().expect("rate window lock");
        let (t, n) = samples
            .iter()
            .find(|(t, _)| now.duration_since(*t) <= RATE_WINDOW)?;
        let secs = now.duration_since(*t).as_secs_f64();
        (secs >= 1.0).then(|| received.saturating_sub(*n) as f64 / secs)
    }
}

/// A part of the page read from the database, or why it could not be read.
type Part<T> = Result<T, String>;

/// One data key version as the page shows it.
pub struct KeyLine {
    purpose: String,
    version: i32,
    state: String,
    created_at: DateTime<Utc>,
}

/// Everything the page shows, gathered before rendering.
pub struct StatusView {
    summary: Summary,
    recent_rate: Option<f64>,
    /// `None` while the first read is still running.
    db: Option<Arc<DbPart>>,
    at: DateTime<Utc>,
}

/// What the page reads from the database, and when it was read.
pub struct DbPart {
    user_logins: Part<i64>,
    quarantined: Part<i64>,
    keys: Part<Vec<KeyLine>>,
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
    let recent_rate = served.rates.per_second(Instant::now(), summary.received);
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
         </tbody></table>"
    );

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

const HEAD: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"10\"><title>piivault status</title><style>\
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}\
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
            db: Some(Arc::new(DbPart {
                user_logins: Ok(110),
                quarantined: Err("permission denied <x>".into()),
                keys: Ok(vec![KeyLine {
                    purpose: "seal".into(),
                    version: 2,
                    state: "active".into(),
                    created_at: Utc::now(),
                }]),
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
        assert!(html.contains("<td>seal</td><td>2</td><td>active</td>"));
    }

    #[test]
    fn the_recent_rate_covers_the_last_minute_only() {
        let rates = RateWindow::default();
        let t0 = Instant::now();
        rates.sample_at(t0, 0);
        assert_eq!(rates.per_second(t0, 0), None, "no span yet");
        // 1000 messages in the first 30 s, then a stall: the last minute shows the stall.
        rates.sample_at(t0 + Duration::from_secs(30), 1000);
        rates.sample_at(t0 + Duration::from_secs(95), 1000);
        let now = t0 + Duration::from_secs(100);
        assert_eq!(rates.per_second(now, 1000), Some(0.0));
        rates.sample_at(now, 1000);
        // Oldest sample left is from 95 s: 500 messages over 15 s.
        assert_eq!(
            rates.per_second(now + Duration::from_secs(10), 1500),
            Some(500.0 / 15.0)
        );
        // Nothing sampled in the minute before: no recent rate rather than a stale one.
        assert_eq!(rates.per_second(now + Duration::from_secs(70), 1500), None);
    }
}
