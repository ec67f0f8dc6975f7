//! Batch reads and writes for the key jobs (`keys reencrypt | retokenize | verify | retire`).
//! Pages are keyset-paginated by `message_id`, so every job is resumable and makes progress even
//! past rows it cannot process. Sealed values are read through the definer functions of
//! migration 0011, for an open [`JobId`]: the admin role cannot select them itself.

use sqlx::{Executor, PgPool, Postgres, Transaction};

use super::StoreError;
use super::jobs::JobId;
use super::keys::TokenSlot;
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

/// Which vault rows a job page holds (`vault.job_vault_rows()`'s filter).
enum Filter {
    All,
    NotSealedAt(i32),
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

/// Rows that do not carry token key `version` in `slot` yet, as the database counts them
/// (`vault.rows_missing_slot()`, the same rule that lets the key become active).
pub async fn count_missing(
    pool: &PgPool,
    slot: TokenSlot,
    version: i32,
) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT vault.rows_missing_slot($1, $2)")
        .bind(slot.as_str())
        .bind(version)
        .fetch_one(pool)
        .await
        .map_err(during("counting rows to re-tokenize"))
}

/// Analysts' rows written by piivault (with a message id) that have no vault row: nothing to
/// re-tokenize them from.
pub async fn count_without_vault_row(pool: &PgPool) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM etl.logins l WHERE l.message_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM vault.login_pii p WHERE p.message_id = l.message_id)",
    )
    .fetch_one(pool)
    .await
    .map_err(during("counting rows without a vault row"))
}

/// The next page of vault rows whose analysts' row lacks the pending key `version` in its slot.
pub async fn unfilled_page(
    pool: &PgPool,
    job: JobId,
    version: i32,
    after: &str,
    limit: i64,
) -> Result<Vec<SealedRow>, StoreError> {
    sqlx::query_as(
        "SELECT message_id, user_id, key_version, ip_sealed, device_id_sealed
         FROM vault.job_token_fill_rows($1, $2, $3, $4)",
    )
    .bind(job.0)
    .bind(version)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(during("reading rows to re-tokenize"))
}

/// Tokens of one row under the pending key: (message id, ip token, device id token).
pub type FilledRow = (String, Option<String>, Option<String>);

/// Writes pending-key tokens into `slot` of each row, in its own committed transaction (a
/// short one: writers of new rows never wait for it).
pub async fn commit_filled(
    pool: PgPool,
    slot: TokenSlot,
    version: i32,
    rows: Vec<FilledRow>,
) -> Result<u64, StoreError> {
    let sql = match slot {
        TokenSlot::A => {
            "UPDATE etl.logins l SET ip_token_a = x.ip, device_token_a = x.dev, token_version_a = $1
             FROM UNNEST($2::text[], $3::varchar[], $4::varchar[]) AS x(id, ip, dev)
             WHERE l.message_id = x.id"
        }
        TokenSlot::B => {
            "UPDATE etl.logins l SET ip_token_b = x.ip, device_token_b = x.dev, token_version_b = $1
             FROM UNNEST($2::text[], $3::varchar[], $4::varchar[]) AS x(id, ip, dev)
             WHERE l.message_id = x.id"
        }
    };
    let result = sqlx::query(sql)
        .bind(version)
        .bind(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.as_deref()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2.as_deref()).collect::<Vec<_>>())
        .execute(&pool)
        .await
        .map_err(during("writing new tokens"))?;
    Ok(result.rows_affected())
}

/// Rows loaded before piivault (no token version, no vault row) keep their masked values in
/// `slot` too: they cannot be re-tokenized, and analysts must not lose them at the switch.
pub async fn copy_unversioned(pool: &PgPool, slot: TokenSlot) -> Result<u64, StoreError> {
    let sql = match slot {
        TokenSlot::A => {
            "UPDATE etl.logins SET ip_token_a = ip_token_b, device_token_a = device_token_b
             WHERE token_version_b IS NULL AND token_version_a IS NULL
               AND (ip_token_a IS DISTINCT FROM ip_token_b OR device_token_a IS DISTINCT FROM device_token_b)"
        }
        TokenSlot::B => {
            "UPDATE etl.logins SET ip_token_b = ip_token_a, device_token_b = device_token_a
             WHERE token_version_a IS NULL AND token_version_b IS NULL
               AND (ip_token_b IS DISTINCT FROM ip_token_a OR device_token_b IS DISTINCT FROM device_token_a)"
        }
    };
    let result = sqlx::query(sql)
        .execute(pool)
        .await
        .map_err(during("copying tokens of rows loaded before piivault"))?;
    Ok(result.rows_affected())
}

/// Clears, in the next page of rows after `after` (by message id), the tokens of a superseded
/// version left in `slot`; returns the page's last message id (`None`: no rows left).
pub async fn clear_page(
    pool: &PgPool,
    slot: TokenSlot,
    version: i32,
    after: &str,
    limit: i64,
) -> Result<Option<String>, StoreError> {
    // The page is a plain range of the message-id index; only its rows of that version change.
    let sql = match slot {
        TokenSlot::A => {
            "WITH page AS (SELECT message_id FROM etl.logins WHERE message_id > $2
                           ORDER BY message_id LIMIT $3),
                  cleared AS (UPDATE etl.logins l SET ip_token_a = NULL, device_token_a = NULL, token_version_a = NULL
                              FROM page WHERE l.message_id = page.message_id AND l.token_version_a = $1)
             SELECT max(message_id) FROM page"
        }
        TokenSlot::B => {
            "WITH page AS (SELECT message_id FROM etl.logins WHERE message_id > $2
                           ORDER BY message_id LIMIT $3),
                  cleared AS (UPDATE etl.logins l SET ip_token_b = NULL, device_token_b = NULL, token_version_b = NULL
                              FROM page WHERE l.message_id = page.message_id AND l.token_version_b = $1)
             SELECT max(message_id) FROM page"
        }
    };
    sqlx::query_scalar(sql)
        .bind(version)
        .bind(after)
        .bind(limit)
        .fetch_one(pool)
        .await
        .map_err(during("clearing superseded tokens"))
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

/// How long one attempt at a writers' fence may wait. A LOCK that waits queues every later
/// writer behind it, so waiting out a long batch would stall all writers for as long; an attempt
/// gives up after this, lets writers through for [`FENCE_PAUSE`], and tries again.
const FENCE_WAIT_MS: u64 = 300;
/// Writers' time between two attempts.
const FENCE_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);
/// Attempts before the rotation gives up (about a minute of writers never pausing).
const FENCE_ATTEMPTS: u32 = 120;

/// Blocks writers of the analysts' rows until the transaction ends, and waits for those in
/// flight (for `keys rotate --purpose token`: after it commits, every batch that commits carries
/// the pending key's tokens too; writers re-check the key states, then reload). Never holds
/// writers back for more than [`FENCE_WAIT_MS`] while it waits.
pub async fn lock_user_logins(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    fence(
        tx,
        "user_logins",
        "locking user_logins for a token rotation",
    )
    .await
}

/// Blocks writers of sealed values until the transaction ends, and waits for those in flight
/// (for `keys rotate --purpose seal`: after it commits, no batch can commit under the old key).
/// Bounded like [`lock_user_logins`].
pub async fn lock_sealed_rows(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    fence(tx, "sealed", "locking the sealed tables").await
}

/// `vault.lock_for_key_job(what)` under a short `lock_timeout`, in a savepoint retried until it
/// is granted; then the login's own `lock_timeout` again for the rest of the transaction.
async fn fence(tx: &mut Tx<'_>, what: &str, doing: &'static str) -> Result<(), StoreError> {
    let previous: String = sqlx::query_scalar("SELECT current_setting('lock_timeout')")
        .fetch_one(&mut **tx)
        .await
        .map_err(during(doing))?;
    let mut attempt = 1;
    loop {
        let mut savepoint = sqlx::Connection::begin(&mut **tx)
            .await
            .map_err(during(doing))?;
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(format!("{FENCE_WAIT_MS}ms"))
            .execute(&mut *savepoint)
            .await
            .map_err(during(doing))?;
        match sqlx::query("SELECT vault.lock_for_key_job($1)")
            .bind(what)
            .execute(&mut *savepoint)
            .await
        {
            Ok(_) => {
                savepoint.commit().await.map_err(during(doing))?;
                break;
            }
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("55P03") && attempt < FENCE_ATTEMPTS =>
            {
                savepoint.rollback().await.map_err(during(doing))?;
                attempt += 1;
                tokio::time::sleep(FENCE_PAUSE).await;
            }
            Err(e) => return Err(during(doing)(e)),
        }
    }
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(previous)
        .execute(&mut **tx)
        .await
        .map_err(during(doing))?;
    Ok(())
}

/// Rows still protected by one key version: sealed under it, or carrying its tokens in either
/// slot. A scan, not an index lookup, and no lock: once a version is neither active nor pending
/// no writer or job gives it to a row again, so a count of 0 stays 0.
pub async fn rows_using(pool: &PgPool, purpose: Purpose, version: i32) -> Result<i64, StoreError> {
    let sql = match purpose {
        Purpose::Seal => {
            "SELECT (SELECT count(*) FROM vault.login_pii WHERE key_version = $1)
                  + (SELECT count(*) FROM etl.quarantine WHERE key_version = $1)"
        }
        Purpose::Token => {
            "SELECT count(*) FROM etl.logins WHERE token_version_a = $1 OR token_version_b = $1"
        }
    };
    sqlx::query_scalar(sql)
        .bind(version)
        .fetch_one(pool)
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
