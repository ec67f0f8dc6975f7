//! Analysts' reports over `user_logins`: tokens and counts only, never a vault value.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;

/// Which masked column groups duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicateBy {
    /// `masked_device_id`: one device used by several users.
    Device,
    /// `masked_ip`: one address used by several users.
    Ip,
}

/// One token shared by several users.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DuplicateGroup {
    /// The masked value (a token, not the original).
    pub token: String,
    /// Distinct users seen with it.
    pub users: i64,
    /// Logins carrying it.
    pub logins: i64,
}

/// Tokens seen with at least `min_users` distinct users, most users first, at most `limit`,
/// from the shared-token summary (migration 0016): instant at any size, as of
/// [`summary_state`]; empty while the summary is missing or of another token version.
pub async fn duplicate_groups(
    pool: &PgPool,
    by: DuplicateBy,
    min_users: i64,
    limit: i64,
) -> Result<Vec<DuplicateGroup>, StoreError> {
    let by = match by {
        DuplicateBy::Device => "device",
        DuplicateBy::Ip => "ip",
    };
    sqlx::query_as("SELECT token, users, logins FROM shared_tokens_summary($1, $2, $3)")
        .bind(by)
        .bind(min_users)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(StoreError::during("reading duplicate groups"))
}

/// When the shared-token summary was built, and whether analysts still see its token version.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SummaryState {
    /// When its build started.
    pub refreshed_at: DateTime<Utc>,
    /// The token key version it holds tokens of (None: built before `keys init`).
    pub token_version: Option<i32>,
    /// Whether that version is the one `user_logins` shows now.
    pub current: bool,
    /// Token groups it holds (both columns).
    pub groups: i64,
    /// How long its build took.
    pub seconds: f64,
}

/// The summary's state; None until it was first built.
pub async fn summary_state(pool: &PgPool) -> Result<Option<SummaryState>, StoreError> {
    sqlx::query_as(
        "SELECT refreshed_at, token_version, current, groups, seconds FROM shared_tokens_state()",
    )
    .fetch_optional(pool)
    .await
    .map_err(StoreError::during(
        "reading the shared-token summary's state",
    ))
}

/// Rebuilds the summary (one scan of `user_logins`) unless it is current and younger than
/// `max_age` (None: always); waits for a build another session runs. Whether this call built it.
pub async fn refresh_summary(pool: &PgPool, max_age: Option<Duration>) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT refresh_shared_tokens(make_interval(secs => $1))")
        .bind(max_age.map(|d| d.as_secs_f64()))
        .fetch_one(pool)
        .await
        .map_err(StoreError::during("building the shared-token summary"))
}

/// Rows in `user_logins` as the statistics collector last counted them: instant on any size,
/// where an exact `count(*)` would scan the table on every page view.
pub async fn user_logins_estimate(pool: &PgPool) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT coalesce(max(n_live_tup), 0) FROM pg_stat_user_tables
         WHERE relid = 'etl.logins'::regclass",
    )
    .fetch_one(pool)
    .await
    .map_err(StoreError::during("reading the size of user_logins"))
}
