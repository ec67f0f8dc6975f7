//! `etl audit checkpoint`: sign the chain's head so a later deletion of the newest rows shows.

use clap::Args;

use super::{deployment, log_breaks, open_signer};
use crate::audit::{self, ChainCheck};
use crate::commands::{Context, print_line};
use crate::crypto::checkpoint::{Checkpoint, SignedCheckpoint};
use crate::error::Error;
use crate::store;

/// `etl audit checkpoint`.
#[derive(Debug, Args)]
pub struct CheckpointArgs {}

/// Verifies the chain (a broken one is never signed), signs its head and prints the line.
pub async fn run(_args: CheckpointArgs, ctx: &Context) -> Result<(), Error> {
    let pool = ctx.auditor_pool().await?;
    let mut check = ChainCheck::default();
    let head = store::audit::chain(&pool, |row| check.push(row)).await?;
    let report = check.finish(Some((head.head_id, &head.head_hash)));
    if !report.broken.is_empty() {
        log_breaks(&report);
        return Err(Error::AuditBroken(report.broken.len()));
    }
    let deployment = deployment(ctx, head.database)?;
    let signer = open_signer(ctx, &deployment).await?;
    let checkpoint = Checkpoint {
        deployment,
        head_id: head.head_id,
        head_hash: head.head_hash,
        at: audit::timestamp(&head.at),
    };
    let signature = signer.sign(&checkpoint.message()).await?;
    tracing::info!(
        head_id = checkpoint.head_id,
        "signed a checkpoint of {} audit rows; keep the line somewhere this database's owner cannot write",
        report.rows
    );
    let signed = SignedCheckpoint {
        checkpoint,
        signer: signer.uri().to_string(),
        public_key: signer.public_key().clone(),
        signature,
    };
    print_line(&signed.to_line())
}
