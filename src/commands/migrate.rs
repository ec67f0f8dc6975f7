//! `etl migrate`: apply the embedded migrations (idempotent; keeps an existing `user_logins`),
//! then make sure no role may create objects in schema `public`.

use clap::Args;

use super::Context;
use crate::error::Error;
use crate::store::{self, PublicSchema};

/// `etl migrate` takes no options.
#[derive(Debug, Args)]
pub struct MigrateArgs {}

/// Applies pending migrations and closes schema `public` to PUBLIC.
pub async fn run(_args: MigrateArgs, ctx: &Context) -> Result<(), Error> {
    let pool = ctx.pool(1).await?;
    store::migrate(&pool).await?;
    tracing::info!("database schema is up to date");
    // Checked on every run: a cluster upgraded from before PostgreSQL 15, or a DBA, may grant it
    // again, and a role that may create in `public` can plant look-alike functions and operators.
    match store::close_public_schema(&pool).await? {
        PublicSchema::AlreadyClosed => {}
        PublicSchema::Closed => tracing::warn!(
            "revoked CREATE on schema public from PUBLIC: any role could create objects there, \
             which lets it shadow functions other roles call"
        ),
        PublicSchema::StillOpen => tracing::warn!(
            "every role may still CREATE in schema public and this login cannot revoke it; \
             run `REVOKE CREATE ON SCHEMA public FROM PUBLIC` as the schema's owner"
        ),
    }
    Ok(())
}
