//! One file per `etl` subcommand, plus the [`Context`] they share. Commands orchestrate the
//! stages; SQL lives in `store`, cryptography in `crypto` and `kek`.

pub mod audit;
pub mod erase;
pub mod keys;
pub mod migrate;
pub mod output;
pub mod policy;
pub mod progress;
pub mod quarantine;
pub mod report;
pub mod reveal;
pub mod run;
pub mod seed;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::crypto::{Keyring, OpenFailed};
use crate::error::Error;
use crate::kek::Kek;
use crate::store::jobs::{JobId, JobStart};
use crate::{keystore, store};

/// What every command gets: settings and the stop signal (SIGINT/SIGTERM).
pub struct Context {
    /// Settings from the environment and global flags.
    pub settings: Settings,
    /// Cancelled on SIGINT/SIGTERM.
    pub stop: CancellationToken,
}

impl Context {
    /// A pool on `DATABASE_URL`.
    pub async fn pool(&self, max_connections: u32) -> Result<PgPool, Error> {
        let url = self.settings.database_url()?;
        Ok(store::connect(url.expose(), "DATABASE_URL", max_connections).await?)
    }

    /// A pool on `DATABASE_URL` named `application`, whose statements Postgres cancels after
    /// `statement_timeout`.
    pub async fn bounded_pool(
        &self,
        application: &'static str,
        max_connections: u32,
        statement_timeout: std::time::Duration,
    ) -> Result<PgPool, Error> {
        let url = self.settings.database_url()?;
        Ok(store::connect_bounded(
            url.expose(),
            "DATABASE_URL",
            application,
            max_connections,
            statement_timeout,
        )
        .await?)
    }

    /// The auditor's connection (reveal, audit): `PIIVAULT_REVEAL_DATABASE_URL`, else
    /// `DATABASE_URL` with a warning.
    pub async fn auditor_pool(&self) -> Result<PgPool, Error> {
        let (url, var) = match &self.settings.reveal_database_url {
            Some(url) => (url, "PIIVAULT_REVEAL_DATABASE_URL"),
            None => {
                tracing::warn!("PIIVAULT_REVEAL_DATABASE_URL is not set; using DATABASE_URL");
                (self.settings.database_url()?, "DATABASE_URL")
            }
        };
        Ok(store::connect(url.expose(), var, 1).await?)
    }

    /// Opens the KEK named by `PIIVAULT_KEK`, serving the deployment `PIIVAULT_DEPLOYMENT` names
    /// (unset: the database's name).
    pub async fn kek(&self) -> Result<Kek, Error> {
        let deployment = self.settings.deployment()?;
        Ok(Kek::open(&self.settings.kek_uri()?)
            .await?
            .for_deployment(deployment))
    }

    /// Unwraps every stored data key with the KEK (once per process).
    pub async fn keyring(&self, pool: &PgPool) -> Result<Keyring, Error> {
        keystore::load(pool, &self.kek().await?).await
    }
}

/// Writes one line to stdout (results only; logs go to stderr).
pub fn print_line(line: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Starts an audited key job (`vault.job_begin()`): its audit row commits before any sealed
/// value can be read for it.
pub async fn begin_job(
    pool: &PgPool,
    action: &str,
    selector: &str,
    reason: &str,
) -> Result<JobId, Error> {
    let actor = crate::audit::os_user();
    let start = JobStart {
        action,
        selector,
        reason,
        actor: &actor,
    };
    Ok(store::jobs::begin(pool, &start).await?)
}

/// Logs a sealed value that did not open as one structured event (never its content).
pub fn report_open_failure(e: &OpenFailed) {
    tracing::error!(
        message_id = %e.message_id,
        field = e.field,
        key_version = e.key_version,
        "{e}"
    );
}
