//! `etl keys`: the data-key lifecycle. One file per verb; key material is never printed.
//!
//! Rotation runbook (also `scripts/rotate-keys.sh`): `rotate` → `reencrypt` / `retokenize` →
//! `verify` → `retire` the old versions. `rewrap` moves every key under another KEK.

mod init;
mod reencrypt;
mod retire;
mod retokenize;
mod rewrap;
mod rotate;
mod status;
mod verify;
mod write_behind;

use clap::{Args, Subcommand, ValueEnum};

use super::Context;
use crate::crypto::Purpose;
use crate::error::Error;

/// `etl keys <verb>`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    verb: KeysVerb,
}

#[derive(Debug, Subcommand)]
enum KeysVerb {
    /// Create version 1 of the seal key and of the token key, wrapped by PIIVAULT_KEK.
    Init {
        /// When keys exist already, leave them and succeed (exit 0) instead of refusing (73):
        /// for set-up jobs that run on every deploy.
        #[arg(long)]
        if_missing: bool,
    },
    /// List keys: purpose, version, state, creation time, wrapping KEK.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t = status::Format::Table)]
        format: status::Format,
    },
    /// Add version N+1 of a key. Seal: active for new writes at once. Token: pending until
    /// `keys retokenize` has given every row the new token.
    Rotate {
        /// Which key.
        #[arg(long, value_enum)]
        purpose: PurposeArg,
    },
    /// Re-wrap every data key under another KEK (file:<path> or kms:<key>); data rows untouched.
    Rewrap {
        /// The new key-encryption key.
        #[arg(long, value_name = "URI")]
        to_kek: String,
    },
    /// Move every vault value and quarantined body sealed under an older seal key to the active one.
    Reencrypt {
        /// Rows per transaction.
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch_size: u32,
    },
    /// Give every row the pending token version's tokens, then switch all rows at once.
    Retokenize {
        /// Rows per transaction.
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch_size: u32,
    },
    /// Destroy an old key version (crypto-shredding); refused while any row uses it.
    Retire {
        /// Which key.
        #[arg(long, value_enum)]
        purpose: PurposeArg,
        /// Which version.
        #[arg(long)]
        version: u32,
    },
    /// Open every sealed value and recompute every token; non-zero exit on any mismatch.
    Verify {
        /// Rows per read.
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch_size: u32,
    },
}

/// `--purpose seal|token`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum PurposeArg {
    Seal,
    Token,
}

impl From<PurposeArg> for Purpose {
    fn from(p: PurposeArg) -> Purpose {
        match p {
            PurposeArg::Seal => Purpose::Seal,
            PurposeArg::Token => Purpose::Token,
        }
    }
}

/// Takes the lock that lets one `etl keys` job run at a time (held until dropped).
async fn job_lock(pool: &sqlx::PgPool) -> Result<crate::store::keys::JobLock, Error> {
    crate::store::keys::try_job_lock(pool)
        .await?
        .ok_or_else(|| {
            Error::Refused(
                "another `etl keys` job is running on this database; wait for it to finish.".into(),
            )
        })
}

/// Runs one `keys` verb.
pub async fn run(args: KeysArgs, ctx: &Context) -> Result<(), Error> {
    match args.verb {
        KeysVerb::Init { if_missing } => init::run(ctx, if_missing).await,
        KeysVerb::Status { format } => status::run(ctx, format).await,
        KeysVerb::Rotate { purpose } => rotate::run(ctx, purpose.into()).await,
        KeysVerb::Rewrap { to_kek } => rewrap::run(ctx, &to_kek).await,
        KeysVerb::Reencrypt { batch_size } => reencrypt::run(ctx, batch_size as i64).await,
        KeysVerb::Retokenize { batch_size } => retokenize::run(ctx, batch_size as i64).await,
        KeysVerb::Retire { purpose, version } => retire::run(ctx, purpose.into(), version).await,
        KeysVerb::Verify { batch_size } => verify::run(ctx, batch_size as i64).await,
    }
}
