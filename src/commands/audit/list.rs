//! `etl audit list`: who, when, what, why — never a revealed value.

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};

use super::row_json;
use crate::commands::output::cell;
use crate::commands::{Context, print_line};
use crate::error::Error;
use crate::store;

/// `etl audit list [--since T] [--format table|json]`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only entries at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

/// Prints the entries, oldest first.
pub async fn run(args: ListArgs, ctx: &Context) -> Result<(), Error> {
    let pool = ctx.auditor_pool().await?;
    let rows = store::audit::list(&pool, args.since).await?;
    if let ListFormat::Table = args.format {
        print_line(&format!(
            "{:>6}  {:<27} {:<16} {:<12} {:<14} {:<20} {:>7} {:>7}  {:<14} reason / selector / note",
            "id", "at", "db_role", "actor", "action", "purpose", "request", "records", "ticket"
        ))?;
    }
    let dash = || "-".to_owned();
    for r in &rows {
        let at = crate::audit::timestamp(&r.at);
        match args.format {
            ListFormat::Json => print_line(&row_json(r).to_string())?,
            ListFormat::Table => print_line(&format!(
                "{:>6}  {:<27} {:<16} {:<12} {:<14} {:<20} {:>7} {:>7}  {:<14} {} / {} / {}",
                r.id,
                at,
                cell(&r.db_role),
                cell(&r.actor),
                cell(&r.action),
                r.purpose.as_deref().map_or_else(dash, cell),
                r.request_id.map_or_else(dash, |id| id.to_string()),
                r.records,
                r.ticket.as_deref().map_or_else(dash, cell),
                cell(&r.reason),
                r.selector.as_deref().map_or_else(dash, cell),
                r.note.as_deref().map_or_else(dash, cell)
            ))?,
        }
    }
    Ok(())
}
