//! `etl keys reencrypt`: move every vault value and quarantined body sealed under an older seal
//! version to the active one. One transaction per batch; each row is updated only if it still
//! has the version it was read with, so a re-run after a kill continues without double work.

use std::time::Instant;

use serde_json::json;

use super::progress::Progress;
use super::write_behind::WriteBehind;
use crate::commands::{Context, print_line};
use crate::crypto::{Field, Purpose, Sealed};
use crate::error::Error;
use crate::protect::reseal;
use crate::store::rotation::{self, Resealed};

/// Re-seals in batches of `batch` rows.
pub async fn run(ctx: &Context, batch: i64) -> Result<(), Error> {
    let started = Instant::now();
    let pool = ctx.pool(2).await?;
    let keys = ctx.keyring(&pool).await?;
    let to = keys.active_seal().ok_or(Error::NoKeys(Purpose::Seal))?;
    let version = to.version().0 as i32;
    let (vault_total, quarantine_total) = rotation::count_not_sealed_at(&pool, version).await?;
    let mut progress = Progress::new("reencrypt", (vault_total + quarantine_total) as u64);
    let mut failed = 0u64;
    let mut vault_writes = WriteBehind::default();

    let mut after = String::new();
    loop {
        let rows = rotation::vault_not_at(&pool, version, &after, batch).await?;
        let Some(last) = rows.last() else { break };
        after = last.message_id.clone();
        let mut resealed = Vec::with_capacity(rows.len());
        for row in &rows {
            let field = |f, v: &Option<Vec<u8>>| {
                v.as_ref()
                    .map(|b| {
                        reseal(
                            &keys,
                            to,
                            &row.message_id,
                            f,
                            &Sealed::from_bytes(b.clone()),
                        )
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
                    failed += 1;
                    eprintln!("error: {e}");
                }
            }
        }
        vault_writes
            .submit(rotation::commit_resealed_vault(pool.clone(), resealed))
            .await?;
        progress.add(rows.len() as u64);
    }

    let vault = vault_writes.finish().await?;
    let mut quarantine_writes = WriteBehind::default();
    let mut after = String::new();
    loop {
        let rows = rotation::quarantine_not_at(&pool, version, &after, batch).await?;
        let Some(last) = rows.last() else { break };
        after = last.message_id.clone();
        let mut resealed = Vec::with_capacity(rows.len());
        for row in &rows {
            match reseal(
                &keys,
                to,
                &row.message_id,
                Field::Body,
                &Sealed::from_bytes(row.body_sealed.clone()),
            ) {
                Ok(body) => resealed.push((
                    row.message_id.clone(),
                    row.key_version,
                    version,
                    body.into_bytes(),
                )),
                Err(e) => {
                    failed += 1;
                    eprintln!("error: {e}");
                }
            }
        }
        quarantine_writes
            .submit(rotation::commit_resealed_quarantine(pool.clone(), resealed))
            .await?;
        progress.add(rows.len() as u64);
    }
    let quarantine = quarantine_writes.finish().await?;
    progress.finish();
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
