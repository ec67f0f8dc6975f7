//! `etl reveal`: record who looked and why, then open the originals of the selected records.
//!
//! Sealed values are readable only through `vault.reveal_request()`, which commits the audit
//! row, and then `vault.reveal_rows()`, which serves only a committed request: if the audit
//! cannot be written, nothing is revealed, whatever client is used.

use clap::{Args, ValueEnum};
use serde_json::json;

use super::{Context, output, print_line, report_open_failure};
use crate::audit::{check_reason, os_user};
use crate::crypto::{Field, Keyring, OpenFailed, Place, Purpose, Sealed};
use crate::error::Error;
use crate::keystore;
use crate::store;
use crate::store::vault::{RevealRequest, Selector, VaultRow};

/// `etl reveal (--user-id ID | --message-id ID | --token T) --reason TEXT [--ticket T] [--format F]`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("selector").required(true).args(["user_id", "message_id", "token"])))]
pub struct RevealArgs {
    /// Every record of one user.
    #[arg(long)]
    user_id: Option<String>,
    /// One message.
    #[arg(long)]
    message_id: Option<String>,
    /// Every record behind one masked_ip or masked_device_id (a duplicate investigation).
    #[arg(long)]
    token: Option<String>,
    /// Why (at least 8 characters; stored verbatim in the audit trail). Required.
    #[arg(long)]
    reason: String,
    /// Ticket or case reference, stored in the audit trail.
    #[arg(long)]
    ticket: Option<String>,
    /// Output: one JSON object per line, an aligned table, or CSV with a header.
    #[arg(long, value_enum, default_value_t = RevealFormat::Json)]
    format: RevealFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RevealFormat {
    Json,
    Table,
    Csv,
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

impl RevealArgs {
    fn selector(&self) -> Selector<'_> {
        match (&self.user_id, &self.message_id, &self.token) {
            (Some(u), _, _) => Selector::User(u),
            (_, Some(m), _) => Selector::Message(m),
            (_, _, Some(t)) => Selector::Token(t),
            _ => unreachable!("clap requires one selector"),
        }
    }
}

/// Reveals through the database (which audits and commits first), then opens and prints.
pub async fn run(args: RevealArgs, ctx: &Context) -> Result<(), Error> {
    check_reason(&args.reason)?;
    let pool = ctx.auditor_pool().await?;
    // Seal keys only: the auditor's KMS grant can exclude the token keys.
    let keys = keystore::load_only(&pool, &ctx.kek().await?, Some(Purpose::Seal)).await?;
    let actor = os_user();
    let request = RevealRequest {
        selector: args.selector(),
        reason: &args.reason,
        ticket: args.ticket.as_deref(),
        actor: &actor,
    };
    let (audit_id, rows) = store::vault::reveal(&pool, &request).await?;
    tracing::info!(audit_id, records = rows.len(), "reveal audited");

    let total = rows.len();
    let mut opened = Vec::with_capacity(total);
    let mut failed = 0;
    for row in rows {
        match open(&keys, row) {
            Ok(record) => opened.push(record),
            Err(e) => {
                failed += 1;
                report_open_failure(&e);
            }
        }
    }
    print(&opened, args.format)?;
    if failed > 0 {
        return Err(Error::Integrity { failed, total });
    }
    Ok(())
}

fn open(keys: &Keyring, row: VaultRow) -> Result<Revealed, OpenFailed> {
    let open_field = |field: Field, sealed: Option<Vec<u8>>| {
        sealed
            .map(|bytes| {
                let place = Place::login(&row.message_id, &row.user_id, field);
                let plain = keys.open(&place, &Sealed::from_bytes(bytes))?;
                String::from_utf8(plain.to_vec()).map_err(|_| OpenFailed {
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

const HEADER: [&str; 6] = [
    "message_id",
    "user_id",
    "ip",
    "device_id",
    "key_version",
    "created_at",
];

fn cells(r: &Revealed, null: &str) -> [String; 6] {
    let cell = |v: &Option<String>| v.clone().unwrap_or_else(|| null.to_owned());
    [
        r.message_id.clone(),
        r.user_id.clone(),
        cell(&r.ip),
        cell(&r.device_id),
        r.key_version.to_string(),
        r.created_at.clone(),
    ]
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
        RevealFormat::Csv => {
            let rows: Vec<[String; 6]> = records.iter().map(|r| cells(r, "")).collect();
            output::print_csv(HEADER, &rows)?;
        }
        RevealFormat::Table => {
            let rows: Vec<[String; 6]> = records.iter().map(|r| cells(r, "NULL")).collect();
            output::print_table(HEADER, &rows)?;
        }
    }
    Ok(())
}
