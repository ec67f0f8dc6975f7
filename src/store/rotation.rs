//! Batch reads and writes for the key jobs (`keys reencrypt | retokenize | verify | retire`).
//! Pages are keyset-paginated by `message_id`, so every job is resumable and makes progress even
//! past rows it cannot process. Sealed values are read through the definer functions of
//! migration 0011, for an open [`JobId`]: the admin role cannot select them itself.

use sqlx::{Executor, PgPool, Postgres, Transaction};

use super::StoreError;
use super::jobs::JobId;
use super::quarantine::SealedBody;
use crate::crypto::{KeyState, KeyVersion, Purpose};

type Tx<'a> = Transaction<'a, Postgres>;

/// A vault row's sealed values.
#[derive(sqlx::FromRow)]
pub struct SealedRow {
    pub message_id: String,
    pub user_id: String,
    /// The user of the message's `user_logins` row, where a query joins it (re-encryption
    /// refuses to bind a value to a vault user the analysts' row contradicts).
    #[sqlx(default)]
    pub login_user_id: Option<String>,
    pub key_version: i32,
    pub ip_sealed: Option<Vec<u8>>,
    pub device_id_sealed: Option<Vec<u8>>,
}

/// A vault row re-sealed under another version.
pub struct Resealed {
    pub message_id: String,
    pub from_version: i32,
    pub to_version: i32,
    pub ip_sealed: Option<Vec<u8>>,
    pub device_id_sealed: Option<Vec<u8>>,
}

/// A quarantined body re-sealed under another version, with its user tags under that version.
pub struct ResealedBody {
    pub message_id: String,
    pub from_version: i32,
    pub to_version: i32,
    pub body_sealed: Vec<u8>,
    /// Tags (no commas: `v<n>:` + base64url).
    pub user_tags: Vec<String>,
}

/// A vault row with the analysts' tokens of the same message, for `keys verify`.
#[derive(sqlx::FromRow)]
pub struct VerifyRow {
    pub message_id: String,
    pub user_id: String,
    /// The user of the message's `user_logins` row, if it has one.
    pub login_user_id: Option<String>,
    pub key_version: i32,
    pub ip_sealed: Option<Vec<u8>>,
    pub device_id_sealed: Option<Vec<u8>>,
    pub masked_ip: Option<String>,
    pub masked_device_id: Option<String>,
    pub token_version: Option<i32>,
}

fn during(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    StoreError::during(what)
}

/// Vault rows and quarantined bodies not sealed under `version` in the current format, counted
/// by `vault.count_not_sealed_at()` (the admin role cannot read sealed columns, and the format
/// marker is fixed in the database so the count is no oracle on sealed bytes).
pub async fn count_not_sealed_at(pool: &PgPool, version: i32) -> Result<(i64, i64), StoreError> {
    sqlx::query_as("SELECT vault, quarantine FROM vault.count_not_sealed_at($1)")
        .bind(version)
        .fetch_one(pool)
        .await
        .map_err(during("counting rows to re-encrypt"))
}

/// The next page of vault rows not sealed under `version` in the current format, after
/// `after`, with their analysts' row's user.
pub async fn vault_not_at(
    pool: &PgPool,
    job: JobId,
    version: i32,
    after: &str,
    limit: i64,
) -> Result<Vec<SealedRow>, StoreError> {
    job_vault_rows(pool, job, Filter::NotSealedAt(version), after, limit)
        .await
        .map_err(during("reading vault rows to re-encrypt"))
}

/// Writes re-sealed vault values; a row changed meanwhile (other version) is left alone.
/// (A format-only move keeps the version: re-running it re-seals once more, harmlessly.)
pub async fn reseal_vault(tx: &mut Tx<'_>, rows: &[Resealed]) -> Result<u64, StoreError> {
    let result = sqlx::query(
        "UPDATE vault.login_pii p SET key_version = x.to_version, ip_sealed = x.ip, device_id_sealed = x.dev
         FROM UNNEST($1::text[], $2::int4[], $3::int4[], $4::bytea[], $5::bytea[]) AS x(id, from_version, to_version, ip, dev)
         WHERE p.message_id = x.id AND p.key_version = x.from_version",
    )
    .bind(rows.iter().map(|r| r.message_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.from_version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.to_version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.ip_sealed.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.device_id_sealed.as_deref()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .map_err(during("writing re-encrypted vault rows"))?;
    Ok(result.rows_affected())
}

/// The next page of quarantined bodies not sealed under `version` in the current format.
pub async fn quarantine_not_at(
    pool: &PgPool,
    job: JobId,
    version: i32,
    after: &str,
    limit: i64,
) -> Result<Vec<SealedBody>, StoreError> {
    sqlx::query_as(
        "SELECT message_id, received_at, key_version, body_sealed
         FROM vault.job_quarantine_rows($1, NULL, $2, $3, $4)",
    )
    .bind(job.0)
    .bind(version)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(during("reading quarantine rows to re-encrypt"))
}

/// Writes re-sealed quarantined bodies: (message id, from version, to version, body).
pub async fn reseal_quarantine(tx: &mut Tx<'_>, rows: &[ResealedBody]) -> Result<u64, StoreError> {
    let result = sqlx::query(
        "UPDATE etl.quarantine q
         SET key_version = x.to_version, body_sealed = x.body, user_tags = string_to_array(x.tags, ',')
         FROM UNNEST($1::text[], $2::int4[], $3::int4[], $4::bytea[], $5::text[])
           AS x(id, from_version, to_version, body, tags)
         WHERE q.message_id = x.id AND q.key_version = x.from_version",
    )
    .bind(rows.iter().map(|r| r.message_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.from_version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.to_version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.body_sealed.as_slice()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.user_tags.join(",")).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .map_err(during("writing re-encrypted quarantine rows"))?;
    Ok(result.rows_affected())
}

/// Analysts' rows (with a vault row) whose new-version token is not staged yet.
pub async fn count_unstaged(pool: &PgPool) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM user_logins u JOIN vault.login_pii p USING (message_id)
         WHERE NOT EXISTS (SELECT 1 FROM etl.token_next n WHERE n.message_id = u.message_id)",
    )
    .fetch_one(pool)
    .await
    .map_err(during("counting rows to re-tokenize"))
}

/// Rows not staged yet, with their sealed originals (the swap's final pass, under lock).
pub async fn unstaged<'c, E: Executor<'c, Database = Postgres>>(
    executor: E,
    job: JobId,
    after: &str,
    limit: i64,
) -> Result<Vec<SealedRow>, StoreError> {
    job_vault_rows(executor, job, Filter::Unstaged, after, limit)
        .await
        .map_err(during("reading rows to re-tokenize"))
}

/// The next page of vault rows after `after`, in `message_id` order (a plain index range).
pub async fn vault_page(
    pool: &PgPool,
    job: JobId,
    after: &str,
    limit: i64,
) -> Result<Vec<SealedRow>, StoreError> {
    job_vault_rows(pool, job, Filter::All, after, limit)
        .await
        .map_err(during("reading vault rows to re-tokenize"))
}

/// Which vault rows a job page holds (`vault.job_vault_rows()`'s filter).
enum Filter {
    All,
    NotSealedAt(i32),
    Unstaged,
}

/// One page of a job's vault rows, with the analysts' row's user and tokens.
async fn job_vault_rows<'c, E, R>(
    executor: E,
    job: JobId,
    filter: Filter,
    after: &str,
    limit: i64,
) -> Result<Vec<R>, sqlx::Error>
where
    E: Executor<'c, Database = Postgres>,
    R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let (name, version) = match filter {
        Filter::All => ("all", None),
        Filter::NotSealedAt(v) => ("not_sealed_at", Some(v)),
        Filter::Unstaged => ("unstaged", None),
    };
    sqlx::query_as(
        "SELECT message_id, user_id, login_user_id, key_version, ip_sealed, device_id_sealed,
                masked_ip, masked_device_id, token_version
         FROM vault.job_vault_rows($1, $2, $3, $4, $5)",
    )
    .bind(job.0)
    .bind(name)
    .bind(version)
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// The highest staged message id: staging runs in id order, so a re-run resumes after it.
pub async fn last_staged(pool: &PgPool) -> Result<Option<String>, StoreError> {
    sqlx::query_scalar("SELECT max(message_id) FROM etl.token_next")
        .fetch_one(pool)
        .await
        .map_err(during("reading the staged tokens"))
}

/// Stages new-version tokens: (message id, masked ip, masked device id).
pub async fn stage_tokens(
    tx: &mut Tx<'_>,
    version: i32,
    rows: &[(String, Option<String>, Option<String>)],
) -> Result<u64, StoreError> {
    let result = sqlx::query(
        "INSERT INTO etl.token_next (message_id, token_version, masked_ip, masked_device_id)
         SELECT x.id, $1, x.ip, x.dev FROM UNNEST($2::text[], $3::varchar[], $4::varchar[]) AS x(id, ip, dev)
         ON CONFLICT (message_id) DO UPDATE
           SET token_version = EXCLUDED.token_version, masked_ip = EXCLUDED.masked_ip,
               masked_device_id = EXCLUDED.masked_device_id",
    )
    .bind(version)
    .bind(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2.as_deref()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .map_err(during("staging new tokens"))?;
    Ok(result.rows_affected())
}

/// Drops staged tokens of another version (a pending key that was replaced).
pub async fn discard_stale_staged(pool: &PgPool, version: i32) -> Result<u64, StoreError> {
    let result = sqlx::query("DELETE FROM etl.token_next WHERE token_version <> $1")
        .bind(version)
        .execute(pool)
        .await
        .map_err(during("clearing stale staged tokens"))?;
    Ok(result.rows_affected())
}

/// Blocks writers of the analysts' table until the transaction ends (they wait, not fail).
pub async fn lock_user_logins(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    sqlx::query("SELECT vault.lock_for_key_job('user_logins')")
        .execute(&mut **tx)
        .await
        .map_err(during("locking user_logins for the token swap"))?;
    Ok(())
}

/// Swaps every staged token into `user_logins` and empties the staging table.
pub async fn apply_staged(tx: &mut Tx<'_>) -> Result<u64, StoreError> {
    let result = sqlx::query(
        "UPDATE user_logins u SET masked_ip = n.masked_ip, masked_device_id = n.masked_device_id,
             token_version = n.token_version
         FROM etl.token_next n WHERE n.message_id = u.message_id",
    )
    .execute(&mut **tx)
    .await
    .map_err(during("swapping in the new tokens"))?;
    sqlx::query("DELETE FROM etl.token_next")
        .execute(&mut **tx)
        .await
        .map_err(during("clearing the staged tokens"))?;
    Ok(result.rows_affected())
}

/// The next page of vault rows with their analysts' tokens.
pub async fn vault_with_tokens(
    pool: &PgPool,
    job: JobId,
    after: &str,
    limit: i64,
) -> Result<Vec<VerifyRow>, StoreError> {
    job_vault_rows(pool, job, Filter::All, after, limit)
        .await
        .map_err(during("reading vault rows to verify"))
}

/// Blocks writers of sealed values until the transaction ends, and waits for those in flight
/// (for `keys rotate --purpose seal`: after it commits, no batch can commit under the old key).
pub async fn lock_sealed_rows(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    sqlx::query("SELECT vault.lock_for_key_job('sealed')")
        .execute(&mut **tx)
        .await
        .map_err(during("locking the sealed tables"))?;
    Ok(())
}

/// Blocks every writer of protected rows until the transaction ends (for `keys retire`).
pub async fn lock_protected_rows(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    sqlx::query("SELECT vault.lock_for_key_job('protected')")
        .execute(&mut **tx)
        .await
        .map_err(during("locking the protected tables"))?;
    Ok(())
}

/// Rows still protected by one key version.
pub async fn rows_using(tx: &mut Tx<'_>, purpose: &str, version: i32) -> Result<i64, StoreError> {
    let sql = match purpose {
        "seal" => {
            "SELECT (SELECT count(*) FROM vault.login_pii WHERE key_version = $1)
                  + (SELECT count(*) FROM etl.quarantine WHERE key_version = $1)"
        }
        _ => {
            "SELECT (SELECT count(*) FROM user_logins WHERE token_version = $1)
                  + (SELECT count(*) FROM etl.token_next WHERE token_version = $1)"
        }
    };
    sqlx::query_scalar(sql)
        .bind(version)
        .fetch_one(&mut **tx)
        .await
        .map_err(during("counting rows that use a key"))
}

/// Rolls back unless the seal key being moved to is still active: a job never writes under a
/// superseded (or retired) key. Checked after the update, so it cannot deadlock with `retire`.
async fn commit_if_active(tx: Tx<'_>, version: i32) -> Result<(), StoreError> {
    let mut tx = tx;
    let version = KeyVersion(version as u32);
    if super::keys::state(&mut tx, Purpose::Seal, version).await? != Some(KeyState::Active) {
        return Err(StoreError::Stale {
            what: "keys reencrypt",
        });
    }
    tx.commit()
        .await
        .map_err(during("committing re-encrypted rows"))
}

/// [`reseal_vault`] in its own committed transaction (owned arguments: it can run as a task).
pub async fn commit_resealed_vault(
    pool: PgPool,
    version: i32,
    rows: Vec<Resealed>,
) -> Result<u64, StoreError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(during("starting a transaction"))?;
    let n = reseal_vault(&mut tx, &rows).await?;
    commit_if_active(tx, version).await?;
    Ok(n)
}

/// [`reseal_quarantine`] in its own committed transaction.
pub async fn commit_resealed_quarantine(
    pool: PgPool,
    version: i32,
    rows: Vec<ResealedBody>,
) -> Result<u64, StoreError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(during("starting a transaction"))?;
    let n = reseal_quarantine(&mut tx, &rows).await?;
    commit_if_active(tx, version).await?;
    Ok(n)
}

/// [`stage_tokens`] in its own committed transaction.
pub async fn commit_staged(
    pool: PgPool,
    version: i32,
    rows: Vec<(String, Option<String>, Option<String>)>,
) -> Result<u64, StoreError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(during("starting a transaction"))?;
    let n = stage_tokens(&mut tx, version, &rows).await?;
    tx.commit()
        .await
        .map_err(during("committing staged tokens"))?;
    Ok(n)
}
