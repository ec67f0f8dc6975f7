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
pub async fn duplicate_groups(
    pool: &PgPool,
    by: DuplicateBy,
    min_users: i64,
    limit: i64,
) -> Result<Vec<DuplicateGroup>, StoreError> {
    // The column name comes from the enum, never from input.
    let column = match by {
        DuplicateBy::Device => "masked_device_id",
        DuplicateBy::Ip => "masked_ip",
    };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {column} AS token, count(DISTINCT user_id) AS users, count(*) AS logins
         FROM user_logins WHERE {column} IS NOT NULL
         GROUP BY {column} HAVING count(DISTINCT user_id) >= $1
         ORDER BY users DESC, logins DESC, token
         LIMIT $2"
    )))
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
         WHERE relid = 'public.user_logins'::regclass",
    )
    .fetch_one(pool)
    .await
    .map_err(StoreError::during("reading the size of user_logins"))
}
