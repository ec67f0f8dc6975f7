//! `etl audit verify`: recompute the hash chain, check it ends at the server's head, and check
//! signed checkpoints against it (`--checkpoint`). The trail is read a page at a time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use super::{deployment, log_breaks, open_signer};
use crate::audit::{self, ChainCheck};
use crate::commands::{Context, print_line};
use crate::crypto::checkpoint::{CheckpointError, PublicKey, SignedCheckpoint};
use crate::error::Error;
use crate::store;

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

/// One line of a checkpoint file: its number and what it parsed to.
type Line = (usize, Result<SignedCheckpoint, CheckpointError>);

/// Prints `{"rows","unchained","broken","head"}` (with `--checkpoint`, also `"checkpoints"` and
/// `"checkpoints_failed"`); exit 65 when the chain is broken or a checkpoint does not hold.
pub async fn run(args: VerifyArgs, ctx: &Context) -> Result<(), Error> {
    let lines = match &args.checkpoint {
        Some(path) => Some(read_lines(path)?),
        None => None,
    };
    // The hashes now stored at the rows the checkpoints name, gathered while the chain streams.
    let mut found: HashMap<i64, Option<Vec<u8>>> = lines
        .iter()
        .flatten()
        .filter_map(|(_, c)| c.as_ref().ok())
        .map(|c| (c.checkpoint.head_id, None))
        .collect();
    let pool = ctx.auditor_pool().await?;
    let mut check = ChainCheck::default();
    let head = store::audit::chain(&pool, |row| {
        check.push(row);
        if let Some(slot) = found.get_mut(&row.id) {
            *slot = row.hash.clone();
        }
    })
    .await?;
    let last_id = check.last_id();
    let report = check.finish(Some((head.head_id, &head.head_hash)));
    log_breaks(&report);
    let broken = report.broken.len();
    let mut summary = json!({"rows": report.rows, "unchained": report.unchained, "broken": broken, "head": report.head});
    let mut failed = (0, 0);
    if let Some(lines) = &lines {
        let deployment = deployment(ctx, head.database)?;
        let trusted = trusted_key(args.public_key.as_deref(), &deployment, ctx).await?;
        let bad = lines
            .iter()
            .filter(|(n, parsed)| {
                let outcome = parsed
                    .as_ref()
                    .map_err(|e| e.to_string())
                    .and_then(|c| check_one(c, &trusted, &deployment, &found, last_id));
                outcome
                    .map_err(|why| tracing::error!(line = n, "checkpoint on line {n}: {why}"))
                    .is_err()
            })
            .count();
        summary["checkpoints"] = json!(lines.len());
        summary["checkpoints_failed"] = json!(bad);
        failed = (bad, lines.len());
    }
    print_line(&summary.to_string())?;
    if broken > 0 {
        return Err(Error::AuditBroken(broken));
    }
    if failed.0 > 0 {
        return Err(Error::CheckpointFailed {
            failed: failed.0,
            total: failed.1,
        });
    }
    Ok(())
}

/// Reads and parses every non-blank line of a checkpoint file (signatures are checked later).
fn read_lines(path: &Path) -> Result<Vec<Line>, Error> {
    let lines: Vec<Line> = read(path, "--checkpoint")?
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, SignedCheckpoint::from_line(l)))
        .collect();
    if lines.is_empty() {
        return Err(Error::Usage(format!(
            "--checkpoint {} holds no checkpoint line.",
            path.display()
        )));
    }
    Ok(lines)
}

/// The key to trust: `--public-key`, else the configured signer's.
async fn trusted_key(
    public_key: Option<&Path>,
    deployment: &str,
    ctx: &Context,
) -> Result<PublicKey, Error> {
    if let Some(key_path) = public_key {
        return PublicKey::from_text(&read(key_path, "--public-key")?).map_err(|_| {
            Error::Usage(format!(
                "--public-key {} holds no Ed25519 or P-256 public key (PEM, or base64 of the DER).",
                key_path.display()
            ))
        });
    }
    if ctx.settings.audit_signer.is_none() {
        return Err(Error::Usage(
            "--checkpoint needs the key to trust: pass --public-key FILE or set PIIVAULT_AUDIT_SIGNER.".into(),
        ));
    }
    Ok(open_signer(ctx, deployment).await?.public_key().clone())
}

/// One checkpoint: signed by `trusted`, of this deployment, and its row still in the trail.
fn check_one(
    signed: &SignedCheckpoint,
    trusted: &PublicKey,
    deployment: &str,
    found: &HashMap<i64, Option<Vec<u8>>>,
    last_id: Option<i64>,
) -> Result<(), String> {
    signed.verify(trusted).map_err(|e| e.to_string())?;
    let c = &signed.checkpoint;
    if c.deployment != deployment {
        return Err(format!(
            "it is of deployment {}, this trail is {deployment}'s",
            c.deployment
        ));
    }
    let now = found.get(&c.head_id).and_then(|h| h.as_deref());
    audit::holds(now, last_id, c.head_id, &c.head_hash)
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
