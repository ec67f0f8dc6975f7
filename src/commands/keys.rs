//! `etl keys`: create and list data keys. Key material is never printed.
//! TODO(issue 5): rotate, rewrap, reencrypt, retokenize, retire, verify.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::{Context, print_line};
use crate::crypto::{KeyVersion, Purpose, new_key_material};
use crate::error::Error;
use crate::store;

/// `etl keys <verb>`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    verb: KeysVerb,
}

#[derive(Debug, Subcommand)]
enum KeysVerb {
    /// Create version 1 of the seal key and of the token key, wrapped by PIIVAULT_KEK.
    Init,
    /// List keys: purpose, version, state, creation time, wrapping KEK.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t = StatusFormat::Table)]
        format: StatusFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StatusFormat {
    Table,
    Json,
}

/// Runs one `keys` verb.
pub async fn run(args: KeysArgs, ctx: &Context) -> Result<(), Error> {
    match args.verb {
        KeysVerb::Init => init(ctx).await,
        KeysVerb::Status { format } => status(ctx, format).await,
    }
}

async fn init(ctx: &Context) -> Result<(), Error> {
    let kek = ctx.kek().await?;
    let pool = ctx.pool(1).await?;
    let mut tx = pool
        .begin()
        .await
        .map_err(store::StoreError::during("starting a transaction"))?;
    let existing = store::keys::count_locked(&mut tx).await?;
    if existing > 0 {
        return Err(Error::KeysExist(existing));
    }
    let version = KeyVersion(1);
    let kek_uri = kek.uri().to_string();
    for purpose in [Purpose::Seal, Purpose::Token] {
        let material = new_key_material();
        let wrapped = kek.wrap(purpose, version, material.as_ref()).await?;
        store::keys::insert(
            &mut tx,
            purpose.as_str(),
            version.0 as i32,
            &kek_uri,
            &wrapped,
        )
        .await?;
    }
    tx.commit()
        .await
        .map_err(store::StoreError::during("committing new keys"))?;
    tracing::info!(kek = %kek_uri, "created seal and token keys v1");
    print_line(&json!({"created": [{"purpose": "seal", "version": 1}, {"purpose": "token", "version": 1}], "kek": kek_uri}).to_string())
}

async fn status(ctx: &Context, format: StatusFormat) -> Result<(), Error> {
    let pool = ctx.pool(1).await?;
    let rows = store::keys::list(&pool).await?;
    match format {
        StatusFormat::Json => {
            for row in &rows {
                print_line(
                    &json!({
                        "purpose": row.purpose, "version": row.version, "state": row.state,
                        "created_at": row.created_at.to_rfc3339(), "kek": row.kek_uri,
                    })
                    .to_string(),
                )?;
            }
        }
        StatusFormat::Table => {
            print_line(&format!(
                "{:<8} {:>7}  {:<8} {:<25} {}",
                "purpose", "version", "state", "created_at", "kek"
            ))?;
            for row in &rows {
                print_line(&format!(
                    "{:<8} {:>7}  {:<8} {:<25} {}",
                    row.purpose,
                    row.version,
                    row.state,
                    row.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
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
