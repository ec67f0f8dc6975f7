//! `etl keys rewrap --to-kek URI`: re-wrap every data key under another KEK, for the deployment
//! this process serves. Touches only `vault.data_keys` (cost grows with the number of keys, not
//! rows); every new wrap is checked to unwrap before the transaction commits.
//!
//! With the current KEK as `--to-kek` it moves keys wrapped before deployments were bound
//! (deployment NULL, legacy context) to the deployment's context. Keys of another deployment are
//! refused (exit 78), as everywhere.

use serde_json::json;

use crate::commands::{Context, print_line};
use crate::error::Error;
use crate::kek::{Kek, KekUri, WrapContext};
use crate::keystore;
use crate::store::{self, StoreError};

/// Re-wraps all keys; afterwards set `PIIVAULT_KEK` to the new URI everywhere.
pub async fn run(ctx: &Context, to: &str) -> Result<(), Error> {
    let from = ctx.kek().await?;
    let to = Kek::open(&to.parse::<KekUri>()?)
        .await?
        .for_deployment(ctx.settings.deployment()?);
    let to_uri = to.uri().to_string();
    let pool = ctx.pool(2).await?;
    let _job = super::job_lock(&pool).await?;
    let (mut tx, rows) = store::keys::begin_locked(&pool).await?;
    let database = store::keys::database_name(&mut tx).await?;
    let deployment = keystore::deployment(&to, &database);
    let mut rewrapped = 0;
    let mut bound = 0;
    for row in rows {
        let Some(key) = keystore::unwrap_row(&from, &row).await? else {
            continue; // retired: nothing left to wrap
        };
        let context = WrapContext {
            purpose: key.purpose,
            version: key.version,
            deployment: Some(deployment),
        };
        let wrapped = to.wrap(&context, &key.plain).await?;
        let check = to.unwrap(&context, &wrapped, &to_uri).await?;
        if check.as_slice() != key.plain.as_slice() {
            return Err(Error::BadDataKey {
                purpose: key.purpose,
                version: key.version,
            });
        }
        store::keys::rewrap(
            &mut tx,
            row.purpose,
            row.version,
            &to_uri,
            deployment,
            &wrapped,
        )
        .await?;
        rewrapped += 1;
        if row.deployment.is_none() {
            bound += 1;
        }
    }
    // Leave no key wrapped under the old KEK in the table's pages.
    store::keys::rewrite(&mut tx).await?;
    tx.commit()
        .await
        .map_err(StoreError::during("committing re-wrapped keys"))?;
    tracing::info!(rewrapped, bound, kek = %to_uri, deployment, "re-wrapped; set PIIVAULT_KEK to the new KEK");
    print_line(
        &json!({
            "rewrapped": rewrapped, "from": from.uri().to_string(), "kek": to_uri,
            "deployment": deployment, "bound_legacy": bound,
        })
        .to_string(),
    )
}
