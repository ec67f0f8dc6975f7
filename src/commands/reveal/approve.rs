//! `etl reveal approve ID --reason TEXT`: the second person of the two-person rule. The
//! database checks that this login (`session_user`) is not the requester and holds the
//! approver or auditor role; a refusal is audited like the approval.

use clap::Args;
use serde_json::json;

use crate::audit::{check_reason, os_user};
use crate::commands::{Context, print_line};
use crate::error::Error;
use crate::store;

/// `etl reveal approve ID --reason TEXT`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The request id `etl reveal request` printed (see `etl reveal requests`).
    id: i64,
    /// Why this access is justified (at least 8 characters; audited verbatim).
    #[arg(long)]
    reason: String,
}

/// Approves; prints `{"request_id":N,"approved":true,"audit_id":A}`.
pub async fn run(args: ApproveArgs, ctx: &Context) -> Result<(), Error> {
    check_reason(&args.reason)?;
    let pool = ctx.auditor_pool().await?;
    let (audit_id, refused) =
        store::governance::approve(&pool, args.id, &args.reason, &os_user()).await?;
    if let Some(why) = refused {
        return Err(Error::RevealRefused { audit_id, why });
    }
    tracing::info!(request_id = args.id, audit_id, "reveal request approved");
    print_line(&json!({"request_id": args.id, "approved": true, "audit_id": audit_id}).to_string())
}
