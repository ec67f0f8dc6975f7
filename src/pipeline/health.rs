//! What each stage of a run last did: when it last succeeded, when it last had to retry, and the
//! last error of the run (class, dependency, time; never a message). The status page shows it;
//! `piivault_retries_total` and `piivault_errors_total` count the same events.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

use crate::error::classify::Dependency;

/// A stage of `etl run`, as the status page names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Receiving from the queue (or reading the input file).
    Receive,
    /// Protecting and committing rows.
    Write,
    /// Deleting committed messages from the queue.
    Delete,
}

impl Stage {
    /// Every stage, in the order data flows.
    pub const ALL: [Stage; 3] = [Stage::Receive, Stage::Write, Stage::Delete];

    /// Its name on the page.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Receive => "receive",
            Stage::Write => "write",
            Stage::Delete => "delete",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The last error a run met.
#[derive(Debug, Clone, PartialEq)]
pub struct LastError {
    /// Where.
    pub stage: Option<Stage>,
    /// Which service.
    pub dependency: Dependency,
    /// Its class ([`crate::error::classify::Classified::class`]).
    pub class: &'static str,
    /// When.
    pub at: DateTime<Utc>,
    /// Retried (true) or the end of the run (false).
    pub retried: bool,
}

/// One stage's health as of now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageHealth {
    /// Not yet active.
    Waiting,
    /// Its last attempt succeeded.
    Ok(DateTime<Utc>),
    /// Retrying since its last success (or since start).
    Retrying(DateTime<Utc>),
    /// It ended the run.
    Failed(DateTime<Utc>),
}

/// Milliseconds since the epoch of each stage's last success and last retry (0: never).
#[derive(Default)]
pub struct StageClock {
    last_ok: [AtomicI64; 3],
    last_retry: [AtomicI64; 3],
    last_error: Mutex<Option<LastError>>,
}

impl StageClock {
    /// `stage` succeeded now.
    pub fn ok(&self, stage: Stage) {
        self.last_ok[stage.index()].fetch_max(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Records an error met in `stage`, retried or final.
    pub fn error(&self, error: LastError) {
        if let (true, Some(stage)) = (error.retried, error.stage) {
            self.last_retry[stage.index()]
                .fetch_max(error.at.timestamp_millis(), Ordering::Relaxed);
        }
        *self.last_error.lock().expect("last error lock") = Some(error);
    }

    /// The run's last error, if any.
    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().expect("last error lock").clone()
    }

    /// Each stage's health, in data-flow order.
    pub fn health(&self) -> [(Stage, StageHealth); 3] {
        let last = self.last_error();
        Stage::ALL.map(|stage| {
            let at = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap_or_default();
            let ok = self.last_ok[stage.index()].load(Ordering::Relaxed);
            let retry = self.last_retry[stage.index()].load(Ordering::Relaxed);
            let health = match &last {
                Some(e) if !e.retried && e.stage == Some(stage) => StageHealth::Failed(e.at),
                _ if retry > ok => StageHealth::Retrying(at(retry)),
                _ if ok > 0 => StageHealth::Ok(at(ok)),
                _ => StageHealth::Waiting,
            };
            (stage, health)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(stage: Stage, retried: bool) -> LastError {
        LastError {
            stage: Some(stage),
            dependency: Dependency::Postgres,
            class: "unreachable",
            at: Utc::now(),
            retried,
        }
    }

    #[test]
    fn a_stage_is_retrying_until_it_succeeds_again_and_failed_once_it_ended_the_run() {
        let clock = StageClock::default();
        assert!(
            clock
                .health()
                .iter()
                .all(|(_, h)| *h == StageHealth::Waiting)
        );
        clock.ok(Stage::Receive);
        std::thread::sleep(std::time::Duration::from_millis(2));
        clock.error(error(Stage::Write, true));
        let health = clock.health();
        assert!(matches!(health[0], (Stage::Receive, StageHealth::Ok(_))));
        assert!(matches!(
            health[1],
            (Stage::Write, StageHealth::Retrying(_))
        ));
        assert_eq!(health[2], (Stage::Delete, StageHealth::Waiting));
        std::thread::sleep(std::time::Duration::from_millis(2));
        clock.ok(Stage::Write);
        assert!(matches!(clock.health()[1].1, StageHealth::Ok(_)));
        clock.error(error(Stage::Write, false));
        assert!(matches!(clock.health()[1].1, StageHealth::Failed(_)));
        assert_eq!(clock.last_error().unwrap().class, "unreachable");
    }
}
