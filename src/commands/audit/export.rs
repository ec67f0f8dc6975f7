//! `etl audit export`: the trail as JSON lines for a SIEM, in pages, resumable by id.

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};

use super::row_json;
use crate::commands::{Context, print_line};
use crate::error::Error;
use crate::store;

/// Rows read per query: memory stays flat whatever the trail's length.
const PAGE: i64 = 1000;

/// `etl audit export [--since T] [--after-id N] [--format jsonl]`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only rows at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only rows after this id: the last id a previous export delivered (it is logged at the end).
    #[arg(long, default_value_t = 0)]
    after_id: i64,
    /// Output format: one JSON object per line.
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    format: ExportFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ExportFormat {
    Jsonl,
}

/// Prints every matching row, oldest first; logs the last id to resume from.
pub async fn run(args: ExportArgs, ctx: &Context) -> Result<(), Error> {
    let ExportFormat::Jsonl = args.format;
    let pool = ctx.auditor_pool().await?;
    let (mut last, mut exported) = (args.after_id, 0u64);
    loop {
        let rows = store::audit::page(&pool, last, args.since, PAGE).await?;
        for r in &rows {
            print_line(&row_json(r).to_string())?;
            last = r.id;
            exported += 1;
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    tracing::info!(
        exported,
        last_id = last,
        "exported {exported} audit rows; the next export resumes with --after-id {last}"
    );
    Ok(())
}
