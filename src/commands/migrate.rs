//! `etl migrate`: apply the embedded migrations (idempotent; keeps an existing `user_logins`).

use clap::Args;

use super::Context;
use crate::error::Error;
use crate::store;

/// `etl migrate` takes no options.
#[derive(Debug, Args)]
pub struct MigrateArgs {}

/// Applies pending migrations.
pub async fn run(_args: MigrateArgs, ctx: &Context) -> Result<(), Error> {
    let pool = ctx.pool(1).await?;
    store::migrate(&pool).await?;
    tracing::info!("database schema is up to date");
    Ok(())
}
