//! Analysts' reports over `user_logins`: tokens and counts only, never a vault value.

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

/// Tokens seen with at least `min_users` distinct users, most users first, at most `limit`.
/// Runs `shared_tokens()` (migration 0008), which the ETL role may call without reading
/// `user_logins` itself.
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
    sqlx::query_as("SELECT token, users, logins FROM shared_tokens($1, $2, $3)")
        .bind(by)
        .bind(min_users)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(StoreError::during("reading duplicate groups"))
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
