//! `etl reveal requests`: the pending requests (not executed, not expired), for the requester
//! and the approvers. Shows selectors, purposes and reasons; never a revealed value.

use clap::{Args, ValueEnum};
use serde_json::json;

use crate::commands::{Context, output, print_line};
use crate::error::Error;
use crate::store;

/// `etl reveal requests [--format table|json]`.
#[derive(Debug, Args)]
pub struct RequestsArgs {
    /// Output: an aligned table or one JSON object per line.
    #[arg(long, value_enum, default_value_t = RequestsFormat::Table)]
    format: RequestsFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RequestsFormat {
    Table,
    Json,
}

/// Lists pending requests, oldest first.
pub async fn run(args: RequestsArgs, ctx: &Context) -> Result<(), Error> {
    let pool = ctx.auditor_pool().await?;
    let pending = store::governance::pending(&pool).await?;
    match args.format {
        RequestsFormat::Json => {
            for r in &pending {
                print_line(
                    &json!({
                        "id": r.id, "requested_by": r.requested_by, "selector": r.selector,
                        "value": r.value, "purpose": r.purpose, "reason": r.reason,
                        "ticket": r.ticket, "records": r.records,
                        "requested_at": r.requested_at.to_rfc3339(),
                        "expires_at": r.expires_at.to_rfc3339(),
                        "approved_by": r.approved_by,
                    })
                    .to_string(),
                )?;
            }
        }
        RequestsFormat::Table => {
            let rows: Vec<[String; 8]> = pending
                .iter()
                .map(|r| {
                    [
                        r.id.to_string(),
                        r.requested_by.clone(),
                        format!("{}={}", r.selector, r.value),
                        r.purpose.clone(),
                        r.records.to_string(),
                        r.expires_at.to_rfc3339(),
                        r.approved_by.clone().unwrap_or_else(|| "-".into()),
                        r.reason.clone(),
                    ]
                })
                .collect();
            output::print_table(
                [
                    "id",
                    "requested_by",
                    "selector",
                    "purpose",
                    "records",
                    "expires_at",
                    "approved_by",
                    "reason",
                ],
                &rows,
            )?;
        }
    }
    Ok(())
}
