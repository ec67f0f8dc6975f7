//! `etl keys retokenize`: give every analysts' row the pending token version, then switch.
//!
//! Phase 1 (batched, resumable): each vault row's originals are opened and its new tokens are
//! staged in `etl.token_next`; analysts still see the active version only. Phase 2
//! (one transaction): writers of `user_logins` are held back, rows added meanwhile are staged,
//! every staged token replaces the old one and the pending key becomes active. Duplicate
//! queries therefore never mix token versions. Without a pending key this is a no-op.

use std::time::Instant;

use serde_json::json;

use super::write_behind::WriteBehind;
use crate::commands::progress::Progress;
use crate::commands::{Context, begin_job, print_line, report_open_failure};
use crate::crypto::{KeyState, Keyring, Purpose, Sealed, Token, TokenKey};
use crate::error::Error;
use crate::key_lifecycle;
use crate::protect::{SealedLogin, tokens_of};
use crate::store::rotation::{self, SealedRow};
use crate::store::{self, StoreError};

type Staged = (String, Option<String>, Option<String>);

/// Stages, then swaps, in batches of `batch` rows.
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
    rotation::discard_stale_staged(&pool, version).await?;
    let job = begin_job(
        &pool,
        "retokenize",
        "all vault values",
        "etl keys retokenize",
    )
    .await?;
    let mut progress = Progress::new("retokenize", rotation::count_unstaged(&pool).await? as u64);
    let mut failed = 0u64;
    let mut writes = WriteBehind::default();
    // Staging runs in message_id order, one write in flight: the staged ids form a prefix, so a
    // re-run resumes after the last one. Rows a writer adds behind that point meanwhile are
    // caught by the swap's final pass.
    let mut after = rotation::last_staged(&pool).await?.unwrap_or_default();
    loop {
        let rows = rotation::vault_page(&pool, job, &after, batch).await?;
        let Some(last) = rows.last() else { break };
        after = last.message_id.clone();
        let staged = stage(&keys, pending, &rows, &mut failed);
        writes
            .submit(rotation::commit_staged(pool.clone(), version, staged))
            .await?;
        progress.add(rows.len() as u64);
    }
    let mut staged_rows = writes.finish().await?;
    progress.finish();
    let staged_seconds = started.elapsed().as_secs_f64();
    if failed > 0 {
        return Err(Error::Verify {
            failed,
            mismatched: 0,
        });
    }

    let mut tx = pool
        .begin()
        .await
        .map_err(StoreError::during("starting a transaction"))?;
    rotation::lock_user_logins(&mut tx).await?;
    store::keys::lock(&mut tx).await?;
    let stragglers = rotation::unstaged(&mut *tx, job, "", i64::MAX).await?;
    let staged = stage(&keys, pending, &stragglers, &mut failed);
    if failed > 0 {
        return Err(Error::Verify {
            failed,
            mismatched: 0,
        });
    }
    staged_rows += rotation::stage_tokens(&mut tx, version, &staged).await?;
    // States as committed now (under the key-table lock), not as loaded at the start.
    let rows = store::keys::list_in(&mut tx).await?;
    let swap = key_lifecycle::plan_token_swap(&store::keys::statuses(&rows), pending.version())?;
    let swapped = rotation::apply_staged(&mut tx).await?;
    for active in swap.demote {
        store::keys::set_state(&mut tx, Purpose::Token, active, KeyState::Previous).await?;
    }
    store::keys::set_state(&mut tx, Purpose::Token, swap.activate, KeyState::Active).await?;
    tx.commit()
        .await
        .map_err(StoreError::during("committing the token swap"))?;
    tracing::info!(
        swapped,
        version,
        "token key active; old version can be retired"
    );
    let round = |s: f64| (s * 100.0).round() / 100.0;
    let seconds = started.elapsed().as_secs_f64();
    // swap_seconds is how long writers of user_logins were held back.
    print_line(
        &json!({"retokenized": swapped, "staged": staged_rows, "token_version": version, "seconds": round(seconds),
                "stage_seconds": round(staged_seconds), "swap_seconds": round(seconds - staged_seconds)})
        .to_string(),
    )
}

fn stage(keys: &Keyring, token: &TokenKey, rows: &[SealedRow], failed: &mut u64) -> Vec<Staged> {
    let mut staged = Vec::with_capacity(rows.len());
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
            Ok((ip, device)) => staged.push((
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
    staged
}
