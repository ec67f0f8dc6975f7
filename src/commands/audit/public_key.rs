//! `etl audit public-key`: the signer's public key, to verify checkpoints with offline.

use clap::Args;

use super::{configured_deployment, open_signer, print_pem};
use crate::commands::Context;
use crate::error::Error;

/// `etl audit public-key`.
#[derive(Debug, Args)]
pub struct PublicKeyArgs {}

/// Prints the PEM of `PIIVAULT_AUDIT_SIGNER`'s public key.
pub async fn run(_args: PublicKeyArgs, ctx: &Context) -> Result<(), Error> {
    let signer = open_signer(ctx, &configured_deployment(ctx).await?).await?;
    print_pem(signer.public_key())
}
