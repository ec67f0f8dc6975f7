//! `etl keys status`: purpose, version, state, dates, KEK and deployment of every key; never key
//! material. A key wrapped before deployments were bound shows deployment `legacy` (JSON null).

use clap::ValueEnum;
use serde_json::json;

use crate::commands::{Context, print_line};
use crate::error::Error;
use crate::store;

/// Output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Lists the keys.
pub async fn run(ctx: &Context, format: Format) -> Result<(), Error> {
    let pool = ctx.pool(1).await?;
    let rows = store::keys::list(&pool).await?;
    match format {
        Format::Json => {
            for row in &rows {
                print_line(
                    &json!({
                        "purpose": row.purpose.as_str(), "version": row.version.0, "state": row.state.as_str(),
                        "created_at": row.created_at.to_rfc3339(), "kek": row.kek_uri,
                        "retired_at": row.retired_at.map(|t| t.to_rfc3339()),
                        "deployment": row.deployment,
                    })
                    .to_string(),
                )?;
            }
        }
        Format::Table => {
            let width = rows
                .iter()
                .filter_map(|r| r.deployment.as_deref())
                .map(str::len)
                .max()
                .unwrap_or(0)
                .max("deployment".len());
            print_line(&format!(
                "{:<8} {:>7}  {:<8} {:<21} {:<width$} {}",
                "purpose", "version", "state", "created_at", "deployment", "kek"
            ))?;
            for row in &rows {
                print_line(&format!(
                    "{:<8} {:>7}  {:<8} {:<21} {:<width$} {}",
                    row.purpose.as_str(),
                    row.version.0,
                    row.state.as_str(),
                    row.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    row.deployment.as_deref().unwrap_or("legacy"),
                    row.kek_uri
                ))?;
            }
        }
    }
    if rows.is_empty() {
        tracing::warn!("no data keys yet; run `etl keys init`");
    }
    Ok(())
}
