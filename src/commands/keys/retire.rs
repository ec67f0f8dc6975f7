//! `etl keys retire --purpose P --version V`: destroy an old key version (crypto-shredding).
//! Refused for the active or pending version and while any row still uses it; retiring an
//! already retired version is a no-op, so the rotation runbook can be re-run.

use serde_json::json;

use crate::commands::{Context, print_line};
use crate::crypto::{KeyVersion, Purpose};
use crate::error::Error;
use crate::key_lifecycle::{self, Retirement};
use crate::store::{self, StoreError};

/// Shreds one version's wrapped key.
pub async fn run(ctx: &Context, purpose: Purpose, version: u32) -> Result<(), Error> {
    let pool = ctx.pool(2).await?;
    let _job = super::job_lock(&pool).await?;
    let mut tx = pool
        .begin()
        .await
        .map_err(StoreError::during("starting a transaction"))?;
    // Writers wait while we check and shred: no row can start using the version meanwhile.
    store::rotation::lock_protected_rows(&mut tx).await?;
    store::keys::lock(&mut tx).await?;
    let rows = store::keys::list_in(&mut tx).await?;
    let name = purpose.as_str();
    let version = KeyVersion(version);
    if key_lifecycle::plan_retirement(&store::keys::statuses(&rows), purpose, version)?
        == Retirement::Already
    {
        return print_line(
            &json!({"retired": {"purpose": name, "version": version.0}, "already": true})
                .to_string(),
        );
    }
    let in_use = store::rotation::rows_using(&mut tx, name, version.0 as i32).await?;
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
