//! `etl quarantine list|replay`: see rejected messages (never their bodies) and load the ones
//! that pass today's rules. A replayed message keeps its message id, and its row is written and
//! its quarantine entry removed in one transaction, so a replay loads each message exactly once.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::{Context, begin_job, output, print_line, report_open_failure};
use crate::crypto::{Place, Sealed};
use crate::error::Error;
use crate::keystore::WriterKeys;
use crate::protect::{self, Record};
use crate::source::{Body, Received};
use crate::store::{self, StoreError};

/// `etl quarantine <verb>`.
#[derive(Debug, Args)]
pub struct QuarantineArgs {
    #[command(subcommand)]
    verb: QuarantineVerb,
}

#[derive(Debug, Subcommand)]
enum QuarantineVerb {
    /// List quarantined messages: id, received, reason (never the body).
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Decode quarantined bodies again; load those that pass, keep the rest.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
    Replay {
        /// One message.
        #[arg(long)]
        id: Option<String>,
        /// Every quarantined message.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// Runs one `quarantine` verb (on `DATABASE_URL`; replay needs the admin role).
pub async fn run(args: QuarantineArgs, ctx: &Context) -> Result<(), Error> {
    let pool = ctx.pool(1).await?;
    match args.verb {
        QuarantineVerb::List { format } => {
            let entries = store::quarantine::list(&pool).await?;
            if let Format::Table = format {
                print_line(&format!(
                    "{:<46} {:<27} reason",
                    "message_id", "received_at"
                ))?;
            }
            for e in &entries {
                let at = e
                    .received_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                match format {
                    Format::Table => print_line(&format!(
                        "{:<46} {:<27} {}",
                        output::cell(&e.message_id),
                        at,
                        output::cell(&e.reason)
                    ))?,
                    Format::Json => print_line(
                        &json!({"message_id": e.message_id, "received_at": at, "reason": e.reason, "key_version": e.key_version})
                            .to_string(),
                    )?,
                }
            }
            Ok(())
        }
        QuarantineVerb::Replay { id, .. } => replay(ctx, &pool, id.as_deref()).await,
    }
}

async fn replay(ctx: &Context, pool: &sqlx::PgPool, only: Option<&str>) -> Result<(), Error> {
    // As `etl run` does: a key change after this point fails the commit that would write
    // tokens of a superseded version (or none in the slot analysts are switched to).
    let writer_keys = WriterKeys::load(pool, &ctx.kek().await?).await?;
    let keys = writer_keys.keyring();
    let write_keys = writer_keys.write_keys();
    let selector = match only {
        Some(id) => format!("message_id={id}"),
        None => "all quarantined bodies".to_owned(),
    };
    let job = begin_job(pool, "replay", &selector, "etl quarantine replay").await?;
    let (mut loaded, mut kept, mut failed) = (0u64, 0u64, 0u64);
    let mut after = String::new();
    loop {
        let page = store::quarantine::page(pool, job, only, &after, 500).await?;
        let Some(last) = page.last() else { break };
        after = last.message_id.clone();
        for entry in page {
            let body = match keys.open(
                &Place::body(&entry.message_id),
                &Sealed::from_bytes(entry.body_sealed),
            ) {
                // Not lossy: a body of invalid UTF-8 must stay quarantined, not load altered.
                Ok(plain) => Body::from_bytes(plain.to_vec()),
                Err(e) => {
                    failed += 1;
                    report_open_failure(&e);
                    continue;
                }
            };
            let message = Received {
                message_id: entry.message_id.clone(),
                receipt_handle: None,
                sent_at: entry.received_at,
                body,
            };
            match protect::protect(write_keys, &message, chrono::Utc::now()) {
                Record::Quarantine(still) => {
                    kept += 1;
                    store::quarantine::set_reason(pool, &entry.message_id, &still.reason).await?;
                }
                login @ Record::Login(_) => {
                    let mut tx = pool
                        .begin()
                        .await
                        .map_err(StoreError::during("starting a transaction"))?;
                    match store::writer::write_batch(
                        &mut tx,
                        std::slice::from_ref(&login),
                        writer_keys.slot,
                    )
                    .await
                    {
                        Ok(_) => {
                            store::quarantine::remove(&mut tx, &entry.message_id).await?;
                            if !writer_keys.still_current(&mut tx).await? {
                                return Err(Error::KeysChanging);
                            }
                            tx.commit()
                                .await
                                .map_err(StoreError::during("committing a replayed message"))?;
                            loaded += 1;
                        }
                        Err(StoreError::Rejected { code, .. }) => {
                            drop(tx);
                            kept += 1;
                            let reason = format!(
                                "the database refused the row ({})",
                                store::describe_sqlstate(&code)
                            );
                            store::quarantine::set_reason(pool, &entry.message_id, &reason).await?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }
    store::jobs::end(pool, job).await?;
    print_line(&json!({"loaded": loaded, "kept": kept, "failed": failed}).to_string())?;
    if failed > 0 {
        return Err(Error::Verify {
            failed,
            mismatched: 0,
        });
    }
    Ok(())
}
