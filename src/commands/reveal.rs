//! `etl reveal`: record who looked and why, then open one user's originals.
//!
//! The audit row and the vault read share one transaction, committed before anything is printed:
//! if the audit cannot be written, nothing is revealed.
//! TODO(issue 6): --message-id/--token selectors, --ticket, csv, hash-chained audit.

use clap::{Args, ValueEnum};
use serde_json::json;

use super::{Context, print_line};
use crate::crypto::{Field, Keyring, Purpose, Sealed};
use crate::error::Error;
use crate::keystore;
use crate::store::{self, StoreError, audit::AuditEntry, vault::VaultRow};

/// `etl reveal --user-id ID --reason TEXT [--format json|table]`.
#[derive(Debug, Args)]
pub struct RevealArgs {
    /// Whose originals to reveal.
    #[arg(long)]
    user_id: String,
    /// Why (stored verbatim in the audit trail). Required.
    #[arg(long)]
    reason: String,
    /// Output: one JSON object per line, or an aligned table.
    #[arg(long, value_enum, default_value_t = RevealFormat::Json)]
    format: RevealFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RevealFormat {
    Json,
    Table,
}

/// One opened record.
struct Revealed {
    message_id: String,
    user_id: String,
    ip: Option<String>,
    device_id: Option<String>,
    key_version: i32,
    created_at: String,
}

/// Audits, commits, then prints the opened records.
pub async fn run(args: RevealArgs, ctx: &Context) -> Result<(), Error> {
    if args.reason.trim().is_empty() {
        return Err(Error::Usage(
            "--reason must not be blank: say why you reveal (it is audited).".into(),
        ));
    }
    let (url, var) = match &ctx.settings.reveal_database_url {
        Some(url) => (url, "PIIVAULT_REVEAL_DATABASE_URL"),
        None => {
            tracing::warn!("PIIVAULT_REVEAL_DATABASE_URL is not set; revealing with DATABASE_URL");
            (ctx.settings.database_url()?, "DATABASE_URL")
        }
    };
    let pool = store::connect(url.expose(), var, 1).await?;
    // Seal keys only: the auditor's KMS grant can exclude the token keys.
    let keys = keystore::load_only(&pool, &ctx.kek().await?, Some(Purpose::Seal)).await?;
    let mut tx = pool
        .begin()
        .await
        .map_err(StoreError::during("starting a transaction"))?;
    let rows = store::vault::find_by_user(&mut tx, &args.user_id).await?;
    let actor = os_user();
    let entry = AuditEntry {
        actor: &actor,
        user_id: &args.user_id,
        reason: &args.reason,
        records: rows.len() as i32,
    };
    let audit_id = store::audit::append(&mut tx, &entry).await?;
    tx.commit()
        .await
        .map_err(StoreError::during("committing the reveal audit row"))?;
    tracing::info!(audit_id, records = rows.len(), "reveal audited");

    let total = rows.len();
    let mut opened = Vec::with_capacity(total);
    let mut failed = 0;
    for row in rows {
        match open(&keys, row) {
            Ok(record) => opened.push(record),
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    print(&opened, args.format)?;
    if failed > 0 {
        return Err(Error::Integrity { failed, total });
    }
    Ok(())
}

fn open(keys: &Keyring, row: VaultRow) -> Result<Revealed, crate::crypto::OpenFailed> {
    let open_field = |field: Field, sealed: Option<Vec<u8>>| {
        sealed
            .map(|bytes| {
                let plain = keys.open(&row.message_id, field, &Sealed::from_bytes(bytes))?;
                String::from_utf8(plain.to_vec()).map_err(|_| crate::crypto::OpenFailed {
                    message_id: row.message_id.clone(),
                    field: field.as_str(),
                    key_version: row.key_version as u32,
                })
            })
            .transpose()
    };
    let ip = open_field(Field::Ip, row.ip_sealed.clone())?;
    let device_id = open_field(Field::DeviceId, row.device_id_sealed.clone())?;
    Ok(Revealed {
        ip,
        device_id,
        key_version: row.key_version,
        created_at: row.created_at.to_rfc3339(),
        message_id: row.message_id,
        user_id: row.user_id,
    })
}

fn print(records: &[Revealed], format: RevealFormat) -> Result<(), Error> {
    match format {
        RevealFormat::Json => {
            for r in records {
                print_line(
                    &json!({
                        "message_id": r.message_id, "user_id": r.user_id, "ip": r.ip,
                        "device_id": r.device_id, "key_version": r.key_version, "created_at": r.created_at,
                    })
                    .to_string(),
                )?;
            }
        }
        RevealFormat::Table => {
            let cell = |v: &Option<String>| v.clone().unwrap_or_else(|| "NULL".into());
            let lines: Vec<[String; 6]> = records
                .iter()
                .map(|r| {
                    [
                        r.message_id.clone(),
                        r.user_id.clone(),
                        cell(&r.ip),
                        cell(&r.device_id),
                        r.key_version.to_string(),
                        r.created_at.clone(),
                    ]
                })
                .collect();
            let header = [
                "message_id",
                "user_id",
                "ip",
                "device_id",
                "key_version",
                "created_at",
            ]
            .map(String::from);
            let mut widths = header.clone().map(|h| h.chars().count());
            for line in &lines {
                for (w, c) in widths.iter_mut().zip(line) {
                    *w = (*w).max(c.chars().count());
                }
            }
            for line in std::iter::once(&header).chain(&lines) {
                let cells: Vec<String> = line
                    .iter()
                    .zip(widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                print_line(cells.join("  ").trim_end())?;
            }
        }
    }
    Ok(())
}

/// The OS account running the command, for the audit row (from the system, not `$USER`,
/// which the caller controls).
fn os_user() -> String {
    whoami::account().unwrap_or_else(|_| "unknown".into())
}
