//! `etl audit verify`: recompute the hash chain and check it ends at the server's head.

use clap::Args;
use serde_json::json;

use crate::audit;
use crate::commands::{Context, print_line};
use crate::error::Error;
use crate::store;

/// `etl audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {}

/// Prints `{"rows","unchained","broken","head"}`; exit 65 when the chain is broken.
pub async fn run(_args: VerifyArgs, ctx: &Context) -> Result<(), Error> {
    let pool = ctx.auditor_pool().await?;
    let (rows, (head_id, head_hash)) = store::audit::chain(&pool).await?;
    let report = audit::verify(&rows, Some((head_id, &head_hash)));
    for (id, why) in &report.broken {
        tracing::error!(audit_id = id, "audit row {id}: {why}");
    }
    let broken = report.broken.len();
    print_line(
        &json!({"rows": report.rows, "unchained": report.unchained, "broken": broken, "head": report.head})
            .to_string(),
    )?;
    if broken > 0 {
        return Err(Error::AuditBroken(broken));
    }
    Ok(())
}
