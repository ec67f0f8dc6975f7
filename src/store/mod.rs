//! Postgres: connection, embedded migrations, and one module per table group. Sees tokens,
//! sealed bytes and plain fields only — never keys or plaintext PII.

pub mod audit;
pub mod governance;
pub mod jobs;
pub mod keys;
pub mod quarantine;
pub mod report;
pub mod rotation;
pub mod vault;
pub mod writer;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

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
    /// The database refused a row's data (too long for a column, a constraint, an encoding):
    /// retrying cannot help; the row is a poison row.
    #[error(
        "{what} failed: the database refused a row ({}).",
        describe_sqlstate(code)
    )]
    Rejected { what: &'static str, code: String },
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
    /// The connection broke or timed out mid-way, or the server is shutting down or starting.
    #[error("{what} failed: Postgres became unreachable ({detail}). Nothing was committed; retry.")]
    Unavailable { what: &'static str, detail: String },
    /// The server accepts only reads: a failover left the connection on a standby, or
    /// `default_transaction_read_only` is on.
    #[error(
        "{what} failed: Postgres is read-only ({detail}): a failover left this connection on a standby, or default_transaction_read_only is on. Nothing was committed.\nPoint the database URL at the primary, or turn default_transaction_read_only off."
    )]
    ReadOnly { what: &'static str, detail: String },
    /// The server ran out of a resource: disk, memory, connections.
    #[error(
        "{what} failed: Postgres is out of resources ({detail}). Nothing was committed.\nFree disk space or memory on the server, or raise max_connections (or run fewer writers and consumers)."
    )]
    Exhausted { what: &'static str, detail: String },
    /// The server cancelled the statement: `statement_timeout`, or an administrator's cancel.
    #[error(
        "{what} failed: Postgres cancelled the statement ({detail}): it ran past statement_timeout or was cancelled by an administrator. Nothing was committed.\nLook for long-held locks or an overloaded server; lower --batch-size or raise this login's statement_timeout."
    )]
    Cancelled { what: &'static str, detail: String },
    /// Any other database error.
    #[error("{what} failed: {detail}")]
    Query { what: &'static str, detail: String },
}

impl StoreError {
    /// Classifies a sqlx error raised while doing `what`.
    pub fn from_sqlx(what: &'static str, error: sqlx::Error) -> StoreError {
        // The server's own message and code: sqlx's Display appends the line of Postgres's C
        // source that raised it, which means nothing to an operator.
        let detail = match &error {
            sqlx::Error::Database(db) => match db.code() {
                Some(code) => format!("{} (SQLSTATE {code})", db.message()),
                None => db.message().to_owned(),
            },
            other => other.to_string(),
        };
        match &error {
            sqlx::Error::Database(db) => {
                StoreError::from_sqlstate(what, db.code().as_deref(), detail)
            }
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

/// A PII-free description of a data-related SQLSTATE (the server's message may quote the value).
pub fn describe_sqlstate(code: &str) -> String {
    let what = match code {
        "22001" => "a value is too long for its column",
        "22003" => "a number is out of range",
        "22021" | "22P05" => "a character the database encoding cannot store",
        "22P02" => "a value has the wrong format for its column",
        "23502" => "a required column is empty",
        "23503" => "a referenced row is missing",
        "23514" => "a check constraint failed",
        _ if code.starts_with("22") => "a data exception",
        _ => "an integrity constraint failed",
    };
    format!("SQLSTATE {code}: {what}")
}

/// The `application_name` of `etl`'s ordinary connections (writers, commands), as
/// `pg_stat_activity` and server logs show it; a URL that names one keeps its own.
pub const APPLICATION: &str = "piivault-etl";

/// Opens a small pool; `var` names the setting the URL came from, for error messages.
pub async fn connect(
    url: &str,
    var: &'static str,
    max_connections: u32,
) -> Result<PgPool, StoreError> {
    let options = parse_url(url, var, APPLICATION)?;
    connect_with(options, var, max_connections).await
}

/// A pool whose statements Postgres itself cancels after `statement_timeout`, named
/// `application` (unless the URL names one): for reads that must never hold a connection long,
/// whoever asks (the status page, the background observer).
pub async fn connect_bounded(
    url: &str,
    var: &'static str,
    application: &'static str,
    max_connections: u32,
    statement_timeout: Duration,
) -> Result<PgPool, StoreError> {
    let timeout = format!("{}ms", statement_timeout.as_millis());
    let options =
        parse_url(url, var, application)?.options([("statement_timeout", timeout.as_str())]);
    connect_with(options, var, max_connections).await
}

fn parse_url(
    url: &str,
    var: &'static str,
    application: &'static str,
) -> Result<PgConnectOptions, StoreError> {
    let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| StoreError::Connect {
        var,
        detail: e.to_string(),
    })?;
    Ok(match options.get_application_name() {
        Some(_) => options,
        None => options.application_name(application),
    })
}

async fn connect_with(
    options: PgConnectOptions,
    var: &'static str,
    max_connections: u32,
) -> Result<PgPool, StoreError> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
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

/// What [`close_public_schema`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicSchema {
    /// PUBLIC could not create in `public`: nothing to do.
    AlreadyClosed,
    /// PUBLIC could; the privilege is revoked now.
    Closed,
    /// PUBLIC can, and this login may not revoke it (it does not own the schema).
    StillOpen,
}

async fn public_may_create(pool: &PgPool) -> Result<bool, StoreError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n,
                               pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) a
                        WHERE n.nspname = 'public' AND a.grantee = 0 AND a.privilege_type = 'CREATE')",
    )
    .fetch_one(pool)
    .await
    .map_err(StoreError::during("reading the privileges of schema public"))
}

/// Revokes `CREATE` on schema `public` from `PUBLIC` when it is granted.
pub async fn close_public_schema(pool: &PgPool) -> Result<PublicSchema, StoreError> {
    if !public_may_create(pool).await? {
        return Ok(PublicSchema::AlreadyClosed);
    }
    // A login that does not own the schema gets a warning from Postgres, not an error: check.
    sqlx::query("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        .execute(pool)
        .await
        .map_err(StoreError::during(
            "revoking CREATE on schema public from PUBLIC",
        ))?;
    Ok(if public_may_create(pool).await? {
        PublicSchema::StillOpen
    } else {
        PublicSchema::Closed
    })
}
