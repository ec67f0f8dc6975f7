//! `etl audit <verb>`: read the audit trail (never revealed values) and check its hash chain.
//! One file per verb.

mod list;
mod verify;

use clap::{Args, Subcommand};

use super::Context;
use crate::error::Error;

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
    /// Recompute the hash chain; exit 65 if a row was deleted, edited or reordered.
    Verify(verify::VerifyArgs),
}

/// Runs one `audit` verb (on the auditor's connection).
pub async fn run(args: AuditArgs, ctx: &Context) -> Result<(), Error> {
    match args.verb {
        AuditVerb::List(a) => list::run(a, ctx).await,
        AuditVerb::Verify(a) => verify::run(a, ctx).await,
    }
}
