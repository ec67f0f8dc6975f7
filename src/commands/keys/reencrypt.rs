//! `etl keys reencrypt`: move every vault value and quarantined body sealed under an older seal
//! version, or in the older format (AAD without table and user), to the active key and format. One transaction per batch; each row is updated only if it still
//! has the version it was read with, so a re-run after a kill continues without double work.
//! A batch commits only while its target key is still active.

use std::time::Instant;

use serde_json::json;

use super::job_lock;
use super::write_behind::WriteBehind;
use crate::commands::progress::Progress;
use crate::commands::{Context, begin_job, print_line, report_open_failure};
use crate::crypto::{BodyTag, Field, Keyring, Place, Purpose, SealKey, Sealed};
use crate::error::Error;
use crate::protect::{reseal, reseal_body};
use crate::store;
use crate::store::jobs::JobId;
use crate::store::rotation::{self, Resealed, ResealedBody};
use sqlx::PgPool;

/// Passes over the tables: a second one only picks up rows that raced the first.
const PASSES: usize = 3;

/// Re-seals in batches of `batch` rows.
pub async fn run(ctx: &Context, batch: i64) -> Result<(), Error> {
    let started = Instant::now();
    let pool = ctx.pool(3).await?;
    let _job = job_lock(&pool).await?;
    let keys = ctx.keyring(&pool).await?;
    let to = keys.active_seal().ok_or(Error::NoKeys(Purpose::Seal))?;
    let version = to.version().0 as i32;
    let job = begin_job(
        &pool,
        "reencrypt",
        "all sealed values",
        "etl keys reencrypt",
    )
    .await?;
    let (mut vault, mut quarantine, mut failed) = (0u64, 0u64, 0u64);
    for _ in 0..PASSES {
        let (vault_left, quarantine_left) = rotation::count_not_sealed_at(&pool, version).await?;
        if vault_left + quarantine_left == failed as i64 {
            break; // only rows that do not open are left (reported below)
        }
        failed = 0;
        let mut progress = Progress::new("reencrypt", (vault_left + quarantine_left) as u64);
        vault += reseal_vault(&pool, job, &keys, to, batch, &mut progress, &mut failed).await?;
        quarantine +=
            reseal_quarantine(&pool, job, &keys, to, batch, &mut progress, &mut failed).await?;
        progress.finish();
    }
    store::jobs::end(&pool, job).await?;
    let seconds = (started.elapsed().as_secs_f64() * 100.0).round() / 100.0;
    print_line(
        &json!({"reencrypted": vault + quarantine, "vault": vault, "quarantine": quarantine,
                "to_version": version, "failed": failed, "seconds": seconds})
        .to_string(),
    )?;
    if failed > 0 {
        return Err(Error::Verify {
            failed,
            mismatched: 0,
        });
    }
    Ok(())
}

async fn reseal_vault(
    pool: &PgPool,
    job: JobId,
    keys: &Keyring,
    to: &SealKey,
    batch: i64,
    progress: &mut Progress,
    failed: &mut u64,
) -> Result<u64, Error> {
    let version = to.version().0 as i32;
    let mut writes = WriteBehind::default();
    let mut after = String::new();
    loop {
        let rows = rotation::vault_not_at(pool, job, version, &after, batch).await?;
        let Some(last) = rows.last() else { break };
        after = last.message_id.clone();
        let mut resealed = Vec::with_capacity(rows.len());
        for row in &rows {
            // Sealing binds the vault row's user: never bind one the analysts' row contradicts
            // (a swapped user_id would otherwise become authentic).
            if row
                .login_user_id
                .as_ref()
                .is_some_and(|u| *u != row.user_id)
            {
                *failed += 1;
                tracing::error!(
                    message_id = %row.message_id,
                    "message {}: the vault row's user_id differs from its user_logins row; \
                     not re-encrypted (run `etl keys verify`)",
                    row.message_id
                );
                continue;
            }
            let field = |f, v: &Option<Vec<u8>>| {
                v.as_ref()
                    .map(|b| {
                        let place = Place::login(&row.message_id, &row.user_id, f);
                        reseal(keys, to, &place, &Sealed::from_bytes(b.clone()))
                    })
                    .transpose()
            };
            match (
                field(Field::Ip, &row.ip_sealed),
                field(Field::DeviceId, &row.device_id_sealed),
            ) {
                (Ok(ip), Ok(device)) => resealed.push(Resealed {
                    message_id: row.message_id.clone(),
                    from_version: row.key_version,
                    to_version: version,
                    ip_sealed: ip.map(Sealed::into_bytes),
                    device_id_sealed: device.map(Sealed::into_bytes),
                }),
                (Err(e), _) | (_, Err(e)) => {
                    *failed += 1;
                    report_open_failure(&e);
                }
            }
        }
        writes
            .submit(rotation::commit_resealed_vault(
                pool.clone(),
                version,
                resealed,
            ))
            .await?;
        progress.add(rows.len() as u64);
    }
    writes.finish().await
}

async fn reseal_quarantine(
    pool: &PgPool,
    job: JobId,
    keys: &Keyring,
    to: &SealKey,
    batch: i64,
    progress: &mut Progress,
    failed: &mut u64,
) -> Result<u64, Error> {
    let version = to.version().0 as i32;
    let mut writes = WriteBehind::default();
    let mut after = String::new();
    loop {
        let rows = rotation::quarantine_not_at(pool, job, version, &after, batch).await?;
        let Some(last) = rows.last() else { break };
        after = last.message_id.clone();
        let mut resealed = Vec::with_capacity(rows.len());
        for row in &rows {
            match reseal_body(
                keys,
                to,
                &row.message_id,
                &Sealed::from_bytes(row.body_sealed.clone()),
            ) {
                Ok((body, tags)) => resealed.push(ResealedBody {
                    message_id: row.message_id.clone(),
                    from_version: row.key_version,
                    to_version: version,
                    body_sealed: body.into_bytes(),
                    user_tags: tags.into_iter().map(BodyTag::into_string).collect(),
                }),
                Err(e) => {
                    *failed += 1;
                    report_open_failure(&e);
                }
            }
        }
        writes
            .submit(rotation::commit_resealed_quarantine(
                pool.clone(),
                version,
                resealed,
            ))
            .await?;
        progress.add(rows.len() as u64);
    }
    writes.finish().await
}
