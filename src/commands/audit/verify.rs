//! `etl audit verify`: recompute the hash chain, check it ends at the server's head, and check
//! signed checkpoints against it (`--checkpoint`).

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use super::{deployment, log_breaks, open_signer};
use crate::audit;
use crate::commands::{Context, print_line};
use crate::crypto::checkpoint::{PublicKey, SignedCheckpoint};
use crate::error::Error;
use crate::store;
use crate::store::audit::ChainSnapshot;

/// `etl audit verify [--checkpoint FILE [--public-key FILE]]`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Signed checkpoints to check, one JSON line each (as `etl audit checkpoint` prints them):
    /// each must be signed by the trusted key and its row must still be in the trail.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// The signer's public key (PEM, or base64 of the DER) to trust; default: the key of
    /// PIIVAULT_AUDIT_SIGNER (KMS GetPublicKey, or the signer file unwrapped with PIIVAULT_KEK).
    #[arg(long, value_name = "FILE", requires = "checkpoint")]
    public_key: Option<PathBuf>,
}

/// Prints `{"rows","unchained","broken","head"}` (with `--checkpoint`, also `"checkpoints"` and
/// `"checkpoints_failed"`); exit 65 when the chain is broken or a checkpoint does not hold.
pub async fn run(args: VerifyArgs, ctx: &Context) -> Result<(), Error> {
    let pool = ctx.auditor_pool().await?;
    let snap = store::audit::chain(&pool).await?;
    let report = audit::verify(&snap.rows, Some((snap.head_id, &snap.head_hash)));
    log_breaks(&report);
    let broken = report.broken.len();
    let mut summary = json!({"rows": report.rows, "unchained": report.unchained, "broken": broken, "head": report.head});
    let mut failed = 0;
    if let Some(path) = &args.checkpoint {
        let (total, bad) = check_file(path, args.public_key.as_deref(), &snap, ctx).await?;
        summary["checkpoints"] = json!(total);
        summary["checkpoints_failed"] = json!(bad);
        failed = bad;
    }
    print_line(&summary.to_string())?;
    if broken > 0 {
        return Err(Error::AuditBroken(broken));
    }
    if failed > 0 {
        return Err(Error::CheckpointFailed {
            failed,
            total: summary["checkpoints"].as_u64().unwrap_or_default() as usize,
        });
    }
    Ok(())
}

/// Checks every checkpoint line of `path`; returns (checked, failed). Each failure is logged
/// with its line number.
async fn check_file(
    path: &Path,
    public_key: Option<&Path>,
    snap: &ChainSnapshot,
    ctx: &Context,
) -> Result<(usize, usize), Error> {
    let text = read(path, "--checkpoint")?;
    let deployment = deployment(ctx, snap.database.clone())?;
    let trusted = match public_key {
        Some(key_path) => PublicKey::from_text(&read(key_path, "--public-key")?).map_err(|_| {
            Error::Usage(format!(
                "--public-key {} holds no Ed25519 or P-256 public key (PEM, or base64 of the DER).",
                key_path.display()
            ))
        })?,
        None => {
            if ctx.settings.audit_signer.is_none() {
                return Err(Error::Usage(
                    "--checkpoint needs the key to trust: pass --public-key FILE or set PIIVAULT_AUDIT_SIGNER.".into(),
                ));
            }
            open_signer(ctx, &deployment).await?.public_key().clone()
        }
    };
    let (mut total, mut failed) = (0, 0);
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        total += 1;
        if let Err(why) = check_line(line, &trusted, &deployment, snap) {
            failed += 1;
            tracing::error!(line = n + 1, "checkpoint on line {}: {why}", n + 1);
        }
    }
    if total == 0 {
        return Err(Error::Usage(format!(
            "--checkpoint {} holds no checkpoint line.",
            path.display()
        )));
    }
    Ok((total, failed))
}

/// One checkpoint: well-formed, signed by `trusted`, of this deployment, and still in the trail.
fn check_line(
    line: &str,
    trusted: &PublicKey,
    deployment: &str,
    snap: &ChainSnapshot,
) -> Result<(), String> {
    let signed = SignedCheckpoint::from_line(line).map_err(|e| e.to_string())?;
    signed.verify(trusted).map_err(|e| e.to_string())?;
    let c = &signed.checkpoint;
    if c.deployment != deployment {
        return Err(format!(
            "it is of deployment {}, this trail is {deployment}'s",
            c.deployment
        ));
    }
    audit::holds(&snap.rows, c.head_id, &c.head_hash)
        .map_err(|why| format!("signed at {} for row {}, but {why}", c.at, c.head_id))
}

/// Reads a small file named on the command line.
fn read(path: &Path, flag: &'static str) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
        flag,
        path: path.display().to_string(),
        source,
    })
}
