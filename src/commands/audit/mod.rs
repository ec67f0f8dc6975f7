//! `etl audit <verb>`: read the audit trail (never revealed values), check its hash chain, and
//! sign checkpoints of it. One file per verb.

mod checkpoint;
mod export;
mod list;
mod public_key;
mod report;
mod signer_init;
mod verify;

use clap::{Args, Subcommand};

use super::Context;
use crate::audit::ChainReport;
use crate::config::ConfigError;
use crate::crypto::checkpoint::PublicKey;
use crate::error::Error;
use crate::kek::signer::{AuditSigner, SignerUri};
use crate::store;
use crate::store::audit::AuditRow;

/// `etl audit <verb>`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    verb: AuditVerb,
}

#[derive(Debug, Subcommand)]
enum AuditVerb {
    /// Print audit entries: who, when, what selector, purpose and reason, how many records,
    /// the two-person request and the server's note (why refused).
    List(list::ListArgs),
    /// Recompute the hash chain, and check signed checkpoints against it; exit 65 if a row was
    /// deleted, edited or reordered, or a checkpoint does not hold.
    Verify(verify::VerifyArgs),
    /// Stream audit rows as JSON lines for a SIEM, oldest first; resume with --after-id.
    Export(export::ExportArgs),
    /// Who looked at what: reveals, records, distinct users, refusals, requests and approvals
    /// per login or purpose.
    Report(report::ReportArgs),
    /// Verify the chain, then sign its head with PIIVAULT_AUDIT_SIGNER and print the signed
    /// checkpoint as one JSON line, to keep off this host.
    Checkpoint(checkpoint::CheckpointArgs),
    /// Create a local signer file (an Ed25519 key wrapped by PIIVAULT_KEK) and print its public key.
    SignerInit(signer_init::SignerInitArgs),
    /// Print the public key of PIIVAULT_AUDIT_SIGNER (PEM), to verify checkpoints with.
    PublicKey(public_key::PublicKeyArgs),
}

/// Runs one `audit` verb.
pub async fn run(args: AuditArgs, ctx: &Context) -> Result<(), Error> {
    match args.verb {
        AuditVerb::List(a) => list::run(a, ctx).await,
        AuditVerb::Verify(a) => verify::run(a, ctx).await,
        AuditVerb::Export(a) => export::run(a, ctx).await,
        AuditVerb::Report(a) => report::run(a, ctx).await,
        AuditVerb::Checkpoint(a) => checkpoint::run(a, ctx).await,
        AuditVerb::SignerInit(a) => signer_init::run(a, ctx).await,
        AuditVerb::PublicKey(a) => public_key::run(a, ctx).await,
    }
}

/// Opens `PIIVAULT_AUDIT_SIGNER` for `deployment` (a file signer needs `PIIVAULT_KEK` too).
async fn open_signer(ctx: &Context, deployment: &str) -> Result<AuditSigner, Error> {
    let uri = ctx
        .settings
        .audit_signer()?
        .ok_or(ConfigError::Missing {
            var: "PIIVAULT_AUDIT_SIGNER",
            hint: "Set it to kms:<key-id> (an ECC_NIST_P256 SIGN_VERIFY key) or file:<path> (made by `etl audit signer-init --output <path>`).",
        })?;
    let kek = match uri {
        SignerUri::File(_) => Some(ctx.kek().await?),
        SignerUri::Kms(_) => None,
    };
    Ok(AuditSigner::open(&uri, kek.as_ref(), deployment).await?)
}

/// The deployment a trail belongs to: `PIIVAULT_DEPLOYMENT`, else the database's name.
fn deployment(ctx: &Context, database: String) -> Result<String, Error> {
    Ok(ctx.settings.deployment()?.unwrap_or(database))
}

/// The deployment, asking the database for its name only when `PIIVAULT_DEPLOYMENT` is unset.
async fn configured_deployment(ctx: &Context) -> Result<String, Error> {
    match ctx.settings.deployment()? {
        Some(name) => Ok(name),
        None => Ok(store::audit::database_name(&ctx.auditor_pool().await?).await?),
    }
}

/// Prints a public key as PEM on stdout.
fn print_pem(key: &PublicKey) -> Result<(), Error> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(key.to_pem().as_bytes())?;
    out.flush()?;
    Ok(())
}

/// One audit row as JSON (`list --format json`, `export`): every field, hashes in hex; no row
/// ever holds a revealed value.
fn row_json(r: &AuditRow) -> serde_json::Value {
    serde_json::json!({
        "id": r.id, "at": crate::audit::timestamp(&r.at), "db_role": r.db_role, "actor": r.actor,
        "action": r.action, "selector": r.selector, "user_id": r.user_id, "purpose": r.purpose,
        "request_id": r.request_id, "ticket": r.ticket, "reason": r.reason, "records": r.records,
        "subjects": r.subjects, "records_digest": r.records_digest.as_deref().map(hex::encode),
        "note": r.note, "chain_format": r.chain_format,
        "prev_hash": r.prev_hash.as_deref().map(hex::encode), "hash": r.hash.as_deref().map(hex::encode),
    })
}

/// Logs each break of the chain (one line per row).
fn log_breaks(report: &ChainReport) {
    for (id, why) in &report.broken {
        tracing::error!(audit_id = id, "audit row {id}: {why}");
    }
}
