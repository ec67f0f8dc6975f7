//! Postgres: connection, embedded migrations, and one module per table group. Sees tokens,
//! sealed bytes and plain fields only — never keys or plaintext PII.

pub mod audit;
pub mod keys;
pub mod rotation;
pub mod vault;
pub mod writer;

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

/// Failures talking to Postgres. Messages never include bound values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be made.
    #[error(
        "cannot connect to Postgres ({var}): {detail}.\nCheck that Postgres is running and {var} is right (scripts/stack.sh up starts a local one)."
    )]
    Connect { var: &'static str, detail: String },
    /// Migrations failed.
    #[error(
        "database migration failed: {0}.\nFix the cause and run `etl migrate` again (it resumes where it stopped)."
    )]
    Migrate(String),
    /// The schema is not there yet.
    #[error("{what} failed: the piivault tables are missing ({detail}).\nRun `etl migrate` first.")]
    NotMigrated { what: &'static str, detail: String },
    /// The role lacks a privilege.
    #[error(
        "{what} failed: permission denied ({detail}).\nGrant this login the privileges it needs on user_logins and the vault and etl schemas."
    )]
    PermissionDenied { what: &'static str, detail: String },
    /// A deadlock or serialization failure: retrying the transaction is safe.
    #[error(
        "{what} failed: the transaction conflicted with another one ({detail}). Nothing was committed; retry."
    )]
    Conflict { what: &'static str, detail: String },
    /// A key job's target key stopped being usable while it ran (nothing of that batch committed).
    #[error(
        "{what}: the target key changed while the job ran; nothing of that batch was written. Re-run the command."
    )]
    Stale { what: &'static str },
    /// The connection broke or timed out mid-way.
    #[error("{what} failed: Postgres became unreachable ({detail}). Nothing was committed; retry.")]
    Unavailable { what: &'static str, detail: String },
    /// Any other database error.
    #[error("{what} failed: {detail}")]
    Query { what: &'static str, detail: String },
}

impl StoreError {
    /// Classifies a sqlx error raised while doing `what`.
    pub fn from_sqlx(what: &'static str, error: sqlx::Error) -> StoreError {
        let detail = error.to_string();
        match &error {
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some("42P01" | "3F000") => StoreError::NotMigrated { what, detail },
                Some("42501") => StoreError::PermissionDenied { what, detail },
                Some("40001" | "40P01") => StoreError::Conflict { what, detail },
                Some(code) if code.starts_with("08") || code.starts_with("57P") => {
                    StoreError::Unavailable { what, detail }
                }
                _ => StoreError::Query { what, detail },
            },
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                StoreError::Unavailable { what, detail }
            }
            _ => StoreError::Query { what, detail },
        }
    }

    /// A closure for `map_err` that classifies errors of `what`.
    pub fn during(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
        move |e| StoreError::from_sqlx(what, e)
    }
}

/// Opens a small pool; `var` names the setting the URL came from, for error messages.
pub async fn connect(
    url: &str,
    var: &'static str,
    max_connections: u32,
) -> Result<PgPool, StoreError> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|e| StoreError::Connect {
            var,
            detail: e.to_string(),
        })
}

/// Applies the embedded migrations; a no-op when they are all applied.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    match sqlx::migrate!("./migrations").run(pool).await {
        Ok(()) => Ok(()),
        // A failing statement is classified like any query (permission, connection, ...).
        Err(sqlx::migrate::MigrateError::Execute(e)) => {
            Err(StoreError::from_sqlx("applying a migration", e))
        }
        Err(e) => Err(StoreError::Migrate(e.to_string())),
    }
}
