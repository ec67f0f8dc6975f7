//! The operator's HTTP endpoints while `etl run` works: `/` (a status page), `/metrics`
//! (OpenMetrics when asked for, else the classic Prometheus text), `/healthz` (no stage has died
//! or stalled) and `/readyz` (Postgres and SQS answered the background observer's last check).
//! Read-only; nothing served names a user or carries a value — metrics are counts, readiness
//! details are error classes, the status page shows tokens and counts. `/metrics` and `/readyz`
//! read values the observer keeps, so probes and scrapes cost the dependencies nothing.

mod chart;
mod exposition;
mod history;
mod observe;
pub use observe::CHECK_TIMEOUT;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::pipeline::Counters;
use crate::source::sqs::SqsQueue;
use observe::{Observed, Observer};

/// What the endpoints read.
pub struct Served {
    /// The run's metrics.
    pub counters: Arc<Counters>,
    /// The background observer's own pool (readiness, key versions): never a writer's.
    pub observer_pool: PgPool,
    /// The status page's own pool, whose statements Postgres cancels after `page_timeout`: its
    /// scans never take a writer's connection and never outlive the timeout.
    pub page_pool: PgPool,
    /// The page pool's statement timeout.
    pub page_timeout: Duration,
    /// The queue, when consuming one (readiness, depth).
    pub queue: Option<SqsQueue>,
    /// What the observer last saw.
    pub observed: Arc<Observed>,
    /// When the run started (rates since start).
    pub started: Instant,
    /// The last hour of the counters (the status page's recent rate and chart).
    pub history: history::History,
    /// The status page's last database reads.
    pub db_cache: status::DbCache,
    /// `/healthz` fails when messages in hand make no progress for this long.
    pub stall_timeout: Duration,
}

impl Served {
    /// What the endpoints read for a run that started now.
    pub fn new(
        counters: Arc<Counters>,
        observer_pool: PgPool,
        page_pool: PgPool,
        page_timeout: Duration,
        queue: Option<SqsQueue>,
    ) -> Served {
        Served {
            counters,
            observer_pool,
            page_pool,
            page_timeout,
            queue,
            observed: Arc::default(),
            started: Instant::now(),
            history: history::History::default(),
            db_cache: status::DbCache::default(),
            stall_timeout: Duration::from_secs(600),
        }
    }

    /// `/healthz` fails after this long without progress on messages in hand.
    pub fn with_stall_timeout(mut self, stall_timeout: Duration) -> Served {
        self.stall_timeout = stall_timeout;
        self
    }
}

/// Binds `addr` now (so a taken port fails the command at once), then serves until `stop`.
pub async fn start(
    addr: SocketAddr,
    served: Served,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::MetricsAddr {
            addr: addr.to_string(),
            detail: e.to_string(),
        })?;
    let served = Arc::new(served);
    tokio::spawn(sample_history(served.clone(), stop.clone()));
    let observer = Observer {
        pool: served.observer_pool.clone(),
        queue: served.queue.clone(),
        counters: served.counters.clone(),
        observed: served.observed.clone(),
    };
    tokio::spawn(observer.run(stop.clone()));
    let app = Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(served);
    tracing::info!(%addr, "serving /, /metrics, /healthz, /readyz");
    Ok(tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "the metrics server stopped");
        }
    }))
}

/// Feeds the status page's history until `stop`.
async fn sample_history(served: Arc<Served>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(history::SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let s = served.counters.summary(served.started);
                served.history.sample(history::Counts {
                    received: s.received,
                    loaded: s.loaded,
                    quarantined: s.quarantined,
                });
            }
        }
    }
}

async fn status_page(State(served): State<Arc<Served>>) -> impl IntoResponse {
    let page = status::render(&status::gather(&served).await);
    // Unauthenticated: never cached, never framed, no script or outside resource may load.
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
        ],
        Html(page),
    )
}

async fn metrics(State(served): State<Arc<Served>>, headers: HeaderMap) -> impl IntoResponse {
    // Values only: the observer refreshes the gauges in the background, so a scrape costs
    // the database and the queue nothing.
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let text = served.counters.encode();
    if exposition::wants_openmetrics(accept) {
        ([(header::CONTENT_TYPE, exposition::OPENMETRICS)], text)
    } else {
        (
            [(header::CONTENT_TYPE, exposition::CLASSIC)],
            exposition::classic(&text),
        )
    }
}

/// Liveness: fails once a stage has died or messages in hand stopped making progress, so an
/// orchestrator restarts a process that cannot go on (it also exits on its own soon after).
async fn healthz(State(served): State<Arc<Served>>) -> impl IntoResponse {
    match served.counters.health(served.stall_timeout) {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {reason}\n"),
        ),
    }
}

/// Readiness as the observer last checked it: 503 until its first round, when a dependency
/// failed, or when the last round is older than [`observe::STALE_AFTER`].
async fn readyz(State(served): State<Arc<Served>>) -> impl IntoResponse {
    let body = match served.observed.checked() {
        None => serde_json::json!({
            "ready": false, "postgres": "not yet checked", "sqs": "not yet checked",
        }),
        Some(checked) => {
            let age = checked.at.elapsed();
            let fresh = age <= observe::STALE_AFTER;
            serde_json::json!({
                "ready": fresh && checked.ready(),
                "postgres": checked.postgres,
                "sqs": checked.sqs,
                "checked_secs_ago": age.as_secs(),
            })
        }
    };
    let status = if body["ready"] == true {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(counters: Arc<Counters>, stall_timeout: Duration) -> State<Arc<Served>> {
        // Never connected: /healthz reads only the counters.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let served = Served::new(counters, pool.clone(), pool, Duration::from_secs(1), None)
            .with_stall_timeout(stall_timeout);
        State(Arc::new(served))
    }

    async fn status_of(state: State<Arc<Served>>) -> (StatusCode, String) {
        let response = healthz(state).await.into_response();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn readiness(state: &State<Arc<Served>>) -> (StatusCode, serde_json::Value) {
        let response = readyz(State(state.0.clone())).await.into_response();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn readyz_answers_from_the_last_check_and_distrusts_an_old_one() {
        let state = served(Arc::new(Counters::default()), Duration::from_secs(10));
        let (status, body) = readiness(&state).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["postgres"], "not yet checked");
        let checked = |age: u64, postgres: &str| observe::Checked {
            at: Instant::now()
                .checked_sub(Duration::from_secs(age))
                .unwrap(),
            postgres: postgres.to_owned(),
            sqs: "ok".to_owned(),
        };
        state.observed.record(checked(1, "ok"));
        let (status, body) = readiness(&state).await;
        assert_eq!(
            (status, body["ready"].as_bool()),
            (StatusCode::OK, Some(true))
        );
        state.observed.record(checked(1, "unreachable"));
        let (status, body) = readiness(&state).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["postgres"], "unreachable");
        // The observer stopped checking: its last "ok" is no longer trusted.
        state
            .observed
            .record(checked(observe::STALE_AFTER.as_secs() + 1, "ok"));
        let (status, body) = readiness(&state).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["checked_secs_ago"], observe::STALE_AFTER.as_secs() + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn healthz_fails_once_messages_in_hand_stall_and_when_a_stage_failed() {
        let counters = Arc::new(Counters::default());
        let stall = Duration::from_secs(10);
        tokio::time::advance(Duration::from_secs(60)).await;
        // Idle for a minute is not a stall: nothing is in hand.
        assert_eq!(
            status_of(served(counters.clone(), stall)).await.0,
            StatusCode::OK
        );
        counters.received(10);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(
            status_of(served(counters.clone(), stall)).await.0,
            StatusCode::OK
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let (status, body) = status_of(served(counters.clone(), stall)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("no progress for 11 s"), "{body}");
        counters.done(10);
        assert_eq!(
            status_of(served(counters.clone(), stall)).await.0,
            StatusCode::OK
        );
        counters.stage_failed();
        let (status, body) = status_of(served(counters, stall)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("a stage failed"), "{body}");
    }
}
