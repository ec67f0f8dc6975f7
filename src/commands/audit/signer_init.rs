//! `etl audit signer-init`: a local checkpoint signer for deployments without an asymmetric
//! KMS key. Its Ed25519 key is wrapped by `PIIVAULT_KEK` for this deployment.

use std::path::PathBuf;

use clap::Args;

use super::{configured_deployment, print_pem};
use crate::commands::Context;
use crate::error::Error;
use crate::kek::signer;

/// `etl audit signer-init --output PATH`.
#[derive(Debug, Args)]
pub struct SignerInitArgs {
    /// Where to write the signer file (mode 0600; never overwritten). Then set
    /// PIIVAULT_AUDIT_SIGNER=file:<PATH>.
    #[arg(long, value_name = "PATH")]
    output: PathBuf,
}

/// Writes the signer file and prints its public key (PEM) on stdout.
pub async fn run(args: SignerInitArgs, ctx: &Context) -> Result<(), Error> {
    if args.output.exists() {
        return Err(Error::Refused(format!(
            "{} already exists; signer-init never replaces a signer (checkpoints name its key).\nChoose another --output, or remove the old file once no checkpoint needs it.",
            args.output.display()
        )));
    }
    let kek = ctx.kek().await?;
    let deployment = configured_deployment(ctx).await?;
    let public_key = signer::create_file(&args.output, &kek, &deployment).await?;
    tracing::info!(
        "audit signer for deployment {deployment} written to {path}; set PIIVAULT_AUDIT_SIGNER=file:{path} and keep the public key (stdout) apart from this host",
        path = args.output.display()
    );
    print_pem(&public_key)
}
