//! `etl audit report`: who looked at what — per login or purpose, from the trail alone.

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::commands::{Context, output, print_line};
use crate::error::Error;
use crate::store;
use crate::store::audit::AccessBy;

/// `etl audit report --by login|purpose [--since T] [--format table|json|csv]`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Group by the database login that acted, or by access purpose.
    #[arg(long, value_enum)]
    by: By,
    /// Only rows at or after this time (RFC 3339); default: the whole trail.
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum By {
    Login,
    Purpose,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

/// Prints one line per login or purpose, busiest first.
pub async fn run(args: ReportArgs, ctx: &Context) -> Result<(), Error> {
    let pool = ctx.auditor_pool().await?;
    let (by, key) = match args.by {
        By::Login => (AccessBy::Login, "login"),
        By::Purpose => (AccessBy::Purpose, "purpose"),
    };
    let groups = store::audit::access(&pool, by, args.since).await?;
    let header = [
        key,
        "reveals",
        "records",
        "users",
        "refusals",
        "requests",
        "approvals",
    ];
    let rows: Vec<[String; 7]> = groups
        .iter()
        .map(|g| {
            [
                g.key.clone(),
                g.reveals.to_string(),
                g.records.to_string(),
                g.users.to_string(),
                g.refusals.to_string(),
                g.requests.to_string(),
                g.approvals.to_string(),
            ]
        })
        .collect();
    match args.format {
        Format::Table => output::print_table(header, &rows),
        Format::Csv => output::print_csv(header, &rows),
        Format::Json => {
            for g in &groups {
                print_line(
                    &json!({key: g.key, "reveals": g.reveals, "records": g.records, "users": g.users,
                            "refusals": g.refusals, "requests": g.requests, "approvals": g.approvals})
                    .to_string(),
                )?;
            }
            Ok(())
        }
    }
}
