//! `etl report duplicates`: masked values shared by several users — the analysts' duplicate
//! question answered without SQL. Tokens and counts only; nothing is revealed.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::{Context, output, print_line};
use crate::error::Error;
use crate::store::report::{self, DuplicateBy};

/// `etl report <report>`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    report: Report,
}

#[derive(Debug, Subcommand)]
enum Report {
    /// Devices (or IPs) seen with several users: token, users, logins.
    Duplicates {
        /// Group by the masked device id or the masked IP.
        #[arg(long, value_enum, default_value_t = By::Device)]
        by: By,
        /// Only groups with at least this many distinct users (2 or more: a token one user
        /// has is not a duplicate, and the database never lists one).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i64).range(2..))]
        min_users: i64,
        /// At most this many groups, most users first (1 to 1,000, the database's bound).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum By {
    Device,
    Ip,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

/// Runs one report on `DATABASE_URL` (the analyst's role is enough).
pub async fn run(args: ReportArgs, ctx: &Context) -> Result<(), Error> {
    let Report::Duplicates {
        by,
        min_users,
        limit,
        format,
    } = args.report;
    let pool = ctx.pool(1).await?;
    let by = match by {
        By::Device => DuplicateBy::Device,
        By::Ip => DuplicateBy::Ip,
    };
    let groups = report::duplicate_groups(&pool, by, min_users, limit).await?;
    const HEADER: [&str; 3] = ["token", "users", "logins"];
    let rows: Vec<[String; 3]> = groups
        .iter()
        .map(|g| [g.token.clone(), g.users.to_string(), g.logins.to_string()])
        .collect();
    match format {
        Format::Table => output::print_table(HEADER, &rows),
        Format::Csv => output::print_csv(HEADER, &rows),
        Format::Json => {
            for g in &groups {
                print_line(
                    &json!({"token": g.token, "users": g.users, "logins": g.logins}).to_string(),
                )?;
            }
            Ok(())
        }
    }
}
