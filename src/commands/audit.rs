//! `etl audit list|verify`: read the reveal/erase trail (never revealed values) and check its
//! hash chain.

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::output::cell;
use super::{Context, print_line};
use crate::audit;
use crate::error::Error;
use crate::store;

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
    List {
        /// Only entries at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Recompute the hash chain; exit 65 if a row was deleted, edited or reordered.
    Verify,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

/// Runs one `audit` verb (on the auditor's connection).
pub async fn run(args: AuditArgs, ctx: &Context) -> Result<(), Error> {
    let pool = ctx.auditor_pool().await?;
    match args.verb {
        AuditVerb::List { since, format } => {
            let rows = store::audit::list(&pool, since).await?;
            if let ListFormat::Table = format {
                print_line(&format!(
                    "{:>6}  {:<27} {:<16} {:<12} {:<14} {:<20} {:>7} {:>7}  {:<14} reason / selector / note",
                    "id",
                    "at",
                    "db_role",
                    "actor",
                    "action",
                    "purpose",
                    "request",
                    "records",
                    "ticket"
                ))?;
            }
            for r in &rows {
                let at = r.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                match format {
                    ListFormat::Json => print_line(
                        &json!({"id": r.id, "at": at, "db_role": r.db_role, "actor": r.actor, "action": r.action,
                                "selector": r.selector, "purpose": r.purpose, "request_id": r.request_id,
                                "ticket": r.ticket, "reason": r.reason, "records": r.records, "note": r.note})
                        .to_string(),
                    )?,
                    ListFormat::Table => print_line(&format!(
                        "{:>6}  {:<27} {:<16} {:<12} {:<14} {:<20} {:>7} {:>7}  {:<14} {} / {} / {}",
                        r.id,
                        at,
                        cell(&r.db_role),
                        cell(&r.actor),
                        cell(&r.action),
                        r.purpose.as_deref().map_or_else(|| "-".to_owned(), cell),
                        r.request_id.map_or_else(|| "-".to_owned(), |id| id.to_string()),
                        r.records,
                        r.ticket.as_deref().map_or_else(|| "-".to_owned(), cell),
                        cell(&r.reason),
                        r.selector.as_deref().map_or_else(|| "-".to_owned(), cell),
                        r.note.as_deref().map_or_else(|| "-".to_owned(), cell)
                    ))?,
                }
            }
            Ok(())
        }
        AuditVerb::Verify => {
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
    }
}
