//! `etl report duplicates`: masked values shared by several users — the analysts' duplicate
//! question answered without SQL. Tokens and counts only; nothing is revealed. Answers come
//! from the shared-token summary, rebuilt first when it is older than `--max-age-secs`;
//! `etl report refresh` rebuilds it (a CronJob's command).

use std::time::Duration;

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
        /// Rebuild the summary first (one scan of user_logins) when it is older than this, or
        /// of a token key version analysts no longer see; 0 always rebuilds.
        #[arg(long, default_value_t = 600)]
        max_age_secs: u64,
    },
    /// Rebuild the shared-token summary now (one scan of user_logins); prints what it built.
    Refresh,
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
    let pool = ctx.pool(1).await?;
    let (by, min_users, limit, format, max_age_secs) = match args.report {
        Report::Refresh => return refresh(&pool).await,
        Report::Duplicates {
            by,
            min_users,
            limit,
            format,
            max_age_secs,
        } => (by, min_users, limit, format, max_age_secs),
    };
    if report::refresh_summary(&pool, Some(Duration::from_secs(max_age_secs))).await? {
        tracing::info!(
            "rebuilt the shared-token summary: it was missing, older than --max-age-secs, or of an earlier token key"
        );
    }
    if let Some(state) = report::summary_state(&pool).await? {
        tracing::info!(
            as_of = %state.refreshed_at.format("%Y-%m-%d %H:%M:%S UTC"),
            "duplicate groups as of the summary's last build"
        );
    }
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

/// `etl report refresh`: one rebuild, reported as one JSON line.
async fn refresh(pool: &sqlx::PgPool) -> Result<(), Error> {
    report::refresh_summary(pool, None).await?;
    let state = report::summary_state(pool).await?;
    let line = match state {
        Some(s) => json!({
            "refreshed_at": s.refreshed_at.to_rfc3339(),
            "token_version": s.token_version,
            "groups": s.groups,
            "seconds": (s.seconds * 1000.0).round() / 1000.0,
        }),
        None => json!({}),
    };
    print_line(&line.to_string())
}
