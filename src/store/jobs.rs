//! Key jobs (`vault.key_jobs`, migration 0011): a job that opens sealed values registers first,
//! which commits an audit row, and then reads pages through definer functions that serve only
//! its login's open jobs.

use sqlx::PgPool;

use super::StoreError;

/// An open key job's id, given by `vault.job_begin()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobId(pub i64);

/// What a job records about itself.
pub struct JobStart<'a> {
    /// `reencrypt`, `retokenize`, `verify`, `erase` or `replay`.
    pub action: &'a str,
    /// What it reads, for the audit trail (never a value).
    pub selector: &'a str,
    /// Why (at least 8 characters).
    pub reason: &'a str,
    /// OS account running the command.
    pub actor: &'a str,
}

/// Registers a job; its audit row is committed before this returns.
pub async fn begin(pool: &PgPool, start: &JobStart<'_>) -> Result<JobId, StoreError> {
    sqlx::query_scalar("SELECT vault.job_begin($1, $2, $3, $4)")
        .bind(start.action)
        .bind(start.selector)
        .bind(start.reason)
        .bind(start.actor)
        .fetch_one(pool)
        .await
        .map(JobId)
        .map_err(StoreError::during("starting an audited key job"))
}

/// Closes a job: its id serves no more pages.
pub async fn end(pool: &PgPool, job: JobId) -> Result<(), StoreError> {
    sqlx::query("SELECT vault.job_end($1)")
        .bind(job.0)
        .execute(pool)
        .await
        .map_err(StoreError::during("ending a key job"))?;
    Ok(())
}
