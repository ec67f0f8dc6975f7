//! `etl keys retokenize`: fill the pending token key's slot, then switch analysts to it.
//!
//! Fill (batched, resumable, safe to kill): each vault row whose analysts' row lacks the pending
//! version in the pending key's slot is opened, and its new tokens are written there in a short
//! transaction of its own; writers have filled that slot for new rows since `keys rotate`.
//! Analysts see the active slot only. Switch (one short transaction): the pending key becomes
//! active, and a trigger on the key table checks that every row carries it and points the
//! analysts' view at its slot (one row of `vault.token_view`). Neither phase makes a writer or
//! an analysts' query wait, nor waits for one. Without a pending key this is a no-op.

use std::time::Instant;

use serde_json::json;

use super::write_behind::WriteBehind;
use crate::commands::progress::Progress;
use crate::commands::{Context, begin_job, print_line, report_open_failure};
use crate::crypto::{KeyState, Keyring, Purpose, Sealed, Token, TokenKey};
use crate::error::Error;
use crate::key_lifecycle;
use crate::protect::{SealedLogin, tokens_of};
use crate::store::keys::TokenSlot;
use crate::store::rotation::{self, FilledRow, SealedRow};
use crate::store::{self, StoreError};

/// Fill passes before giving up: the first fills every row that existed at `keys rotate`; a
/// second only finds rows a process without the fence wrote (none, unless keys were edited by
/// hand).
const PASSES: usize = 3;

/// Fills, then switches, in batches of `batch` rows.
pub async fn run(ctx: &Context, batch: i64) -> Result<(), Error> {
    let started = Instant::now();
    let pool = ctx.pool(3).await?;
    let _job = super::job_lock(&pool).await?;
    let keys = ctx.keyring(&pool).await?;
    let Some(pending) = keys.pending_token() else {
        tracing::info!("no pending token key: nothing to re-tokenize");
        return print_line(&json!({"retokenized": 0, "token_version": null}).to_string());
    };
    let version = pending.version().0 as i32;
    let slot = store::keys::active_token_slot(&pool).await?.other();
    let job = begin_job(
        &pool,
        "retokenize",
        "all vault values",
        "etl keys retokenize",
    )
    .await?;
    let copied = rotation::copy_unversioned(&pool, slot).await?;
    let mut missing = rotation::count_missing(&pool, slot, version).await?;
    let mut progress = Progress::new("retokenize", missing as u64);
    let mut filled = 0u64;
    for _ in 0..PASSES {
        if missing == 0 {
            break;
        }
        filled += fill(&pool, &keys, pending, job, slot, batch, &mut progress).await?;
        missing = rotation::count_missing(&pool, slot, version).await?;
    }
    progress.finish();
    let fill_seconds = started.elapsed().as_secs_f64();
    if missing > 0 {
        let orphans = rotation::count_without_vault_row(&pool).await?;
        return Err(Error::Refused(format!(
            "{missing} row(s) still lack token key v{version} after {PASSES} passes \
             ({orphans} row(s) of user_logins have no vault row to re-tokenize from: only the \
             tables' owner can repair or remove those). Otherwise a writer wrote without the \
             key fence: run `etl keys retokenize` again."
        )));
    }
    switch(&pool, pending).await?;
    tracing::info!(
        filled,
        version,
        "token key active; analysts now see its tokens; the old version can be retired"
    );
    let round = |s: f64| (s * 100.0).round() / 100.0;
    let seconds = started.elapsed().as_secs_f64();
    print_line(
        &json!({"retokenized": filled, "copied": copied, "token_version": version,
                "seconds": round(seconds), "fill_seconds": round(fill_seconds),
                "switch_seconds": round(seconds - fill_seconds)})
        .to_string(),
    )
}

/// One pass over the vault in message-id order, one write in flight; returns rows filled.
async fn fill(
    pool: &sqlx::PgPool,
    keys: &Keyring,
    pending: &TokenKey,
    job: store::jobs::JobId,
    slot: TokenSlot,
    batch: i64,
    progress: &mut Progress,
) -> Result<u64, Error> {
    let version = pending.version().0 as i32;
    let mut failed = 0u64;
    let mut writes = WriteBehind::default();
    let mut after = String::new();
    loop {
        let rows = rotation::unfilled_page(pool, job, version, &after, batch).await?;
        let Some(last) = rows.last() else { break };
        after = last.message_id.clone();
        let tokens = tokens(keys, pending, &rows, &mut failed);
        writes
            .submit(rotation::commit_filled(pool.clone(), slot, version, tokens))
            .await?;
        progress.add(rows.len() as u64);
    }
    let filled = writes.finish().await?;
    if failed > 0 {
        return Err(Error::Verify {
            failed,
            mismatched: 0,
        });
    }
    Ok(filled)
}

/// Makes the pending key active; the key-table trigger refuses unless every row carries it,
/// and switches the view.
async fn switch(pool: &sqlx::PgPool, pending: &TokenKey) -> Result<(), Error> {
    let mut tx = pool
        .begin()
        .await
        .map_err(StoreError::during("starting a transaction"))?;
    store::keys::lock(&mut tx).await?;
    // States as committed now (under the key-table lock), not as loaded at the start.
    let rows = store::keys::list_in(&mut tx).await?;
    let swap = key_lifecycle::plan_token_swap(&store::keys::statuses(&rows), pending.version())?;
    for active in swap.demote {
        store::keys::set_state(&mut tx, Purpose::Token, active, KeyState::Previous).await?;
    }
    store::keys::set_state(&mut tx, Purpose::Token, swap.activate, KeyState::Active).await?;
    tx.commit()
        .await
        .map_err(StoreError::during("committing the token switch"))?;
    Ok(())
}

fn tokens(
    keys: &Keyring,
    token: &TokenKey,
    rows: &[SealedRow],
    failed: &mut u64,
) -> Vec<FilledRow> {
    let mut filled = Vec::with_capacity(rows.len());
    for row in rows {
        let sealed = |v: &Option<Vec<u8>>| v.clone().map(Sealed::from_bytes);
        let (ip, device) = (sealed(&row.ip_sealed), sealed(&row.device_id_sealed));
        let login = SealedLogin {
            message_id: &row.message_id,
            user_id: &row.user_id,
            ip: ip.as_ref(),
            device_id: device.as_ref(),
        };
        match tokens_of(keys, token, login) {
            Ok((ip, device)) => filled.push((
                row.message_id.clone(),
                ip.map(Token::into_string),
                device.map(Token::into_string),
            )),
            Err(e) => {
                *failed += 1;
                report_open_failure(&e);
            }
        }
    }
    filled
}
