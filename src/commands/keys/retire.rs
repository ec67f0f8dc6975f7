//! `etl keys retire --purpose P --version V`: destroy an old key version (crypto-shredding).
//! Refused for the active or pending version and while any row is still sealed under it; an old
//! token version's tokens, left in the slot analysts were switched away from, are cleared first
//! (with the key gone they are still pseudonyms linking rows, and with a leaked key they would
//! be reversible by brute force over the address space). Retiring an already retired version is
//! a no-op, so the rotation runbook can be re-run. Writers never wait for it.

use serde_json::json;

use crate::commands::progress::Progress;
use crate::commands::{Context, print_line};
use crate::crypto::{KeyVersion, Purpose};
use crate::error::Error;
use crate::key_lifecycle::{self, Retirement};
use crate::store::keys::TokenSlot;
use crate::store::{self, StoreError};

/// Rows per clearing transaction.
const CLEAR_BATCH: i64 = 5_000;

/// Shreds one version's wrapped key.
pub async fn run(ctx: &Context, purpose: Purpose, version: u32) -> Result<(), Error> {
    let pool = ctx.pool(2).await?;
    let _job = super::job_lock(&pool).await?;
    let name = purpose.as_str();
    let version = KeyVersion(version);
    let already = || {
        print_line(
            &json!({"retired": {"purpose": name, "version": version.0}, "already": true})
                .to_string(),
        )
    };
    let rows = store::keys::list(&pool).await?;
    if key_lifecycle::plan_retirement(&store::keys::statuses(&rows), purpose, version)?
        == Retirement::Already
    {
        return already();
    }
    if purpose == Purpose::Token
        && let Some(slot) = store::keys::slot_of(&pool, version).await?
    {
        clear_slot(&pool, slot, version).await?;
    }
    // No lock: a version that is neither active nor pending is never given to a row again.
    let in_use = store::rotation::rows_using(&pool, purpose, version.0 as i32).await?;
    if in_use > 0 {
        let job = if purpose == Purpose::Seal {
            "reencrypt"
        } else {
            "retokenize"
        };
        return Err(Error::Refused(format!(
            "{name} key v{version} still protects {in_use} row(s); run `etl keys {job}` first."
        )));
    }
    let (mut tx, rows) = store::keys::begin_locked(&pool).await?;
    // Re-checked under the key-table lock: another process may have retired it meanwhile.
    if key_lifecycle::plan_retirement(&store::keys::statuses(&rows), purpose, version)?
        == Retirement::Already
    {
        return already();
    }
    store::keys::shred(&mut tx, purpose, version).await?;
    // An UPDATE leaves the old row version in the table's pages: rewrite the table in the same
    // transaction, or retire nothing.
    store::keys::rewrite(&mut tx).await?;
    tx.commit()
        .await
        .map_err(StoreError::during("committing the retirement"))?;
    tracing::info!(
        %purpose,
        version = version.0,
        "retired: wrapped key destroyed and gone from the key table's files \
         (WAL archives and backups keep it until they expire)"
    );
    print_line(
        &json!({"retired": {"purpose": name, "version": version.0}, "already": false}).to_string(),
    )
}

/// Clears the version's tokens from its slot, one message-id range at a time (resumable: a
/// re-run finds only what is left).
async fn clear_slot(
    pool: &sqlx::PgPool,
    slot: TokenSlot,
    version: KeyVersion,
) -> Result<(), Error> {
    let estimate = store::report::user_logins_estimate(pool).await?.max(0) as u64;
    let mut progress = Progress::new("clear old tokens", estimate);
    let mut after = String::new();
    while let Some(last) =
        store::rotation::clear_page(pool, slot, version.0 as i32, &after, CLEAR_BATCH).await?
    {
        after = last;
        progress.add(CLEAR_BATCH as u64);
    }
    progress.finish();
    Ok(())
}
