//! `etl reveal`: record who looked and why, then open the originals of the selected records.
//!
//! Sealed values are readable only through `vault.reveal_request()` (or, under the two-person
//! rule, `vault.reveal_execute()` of an approved request), which commits the audit row — or the
//! policy's refusal — and then `vault.reveal_rows()`, which serves only a committed grant: if the
//! audit cannot be written, nothing is revealed, whatever client is used. Requests, approvals
//! and the list of pending requests are the subcommands ([`request`], [`approve`], [`requests`]).

mod approve;
mod request;
mod requests;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::{Context, output, print_line, report_open_failure};
use crate::audit::{check_reason, os_user};
use crate::crypto::{Field, Keyring, OpenFailed, Place, Purpose, Sealed};
use crate::error::Error;
use crate::governance::AccessPurpose;
use crate::keystore;
use crate::store;
use crate::store::vault::{Granted, RevealRequest, Selector, VaultRow};

/// `etl reveal (--user-id ID | --message-id ID | --token T) --purpose P --reason TEXT [--ticket T]`,
/// `etl reveal --request ID`, or a subcommand.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RevealArgs {
    #[command(subcommand)]
    action: Option<RevealAction>,
    #[command(flatten)]
    selection: Selection,
    /// Execute an approved request (two-person rule) made by this login: once, before it expires.
    #[arg(long, value_name = "ID", conflicts_with_all = ["user_id", "message_id", "token", "purpose", "reason", "ticket"])]
    request: Option<i64>,
    /// Output: one JSON object per line, an aligned table, or CSV with a header.
    #[arg(long, value_enum, default_value_t = RevealFormat::Json)]
    format: RevealFormat,
}

/// What to reveal, and why: shared by a direct reveal and `etl reveal request`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("selector").args(["user_id", "message_id", "token"])))]
pub struct Selection {
    /// Every record of one user.
    #[arg(long)]
    user_id: Option<String>,
    /// One message.
    #[arg(long)]
    message_id: Option<String>,
    /// Every record behind one masked_ip or masked_device_id (a duplicate investigation).
    #[arg(long)]
    token: Option<String>,
    /// Why, from a fixed list (stored in the audit trail; a deployment may allow fewer).
    #[arg(long, value_enum)]
    purpose: Option<AccessPurpose>,
    /// Why, in words (at least 8 characters, 40 with --purpose other; stored verbatim).
    #[arg(long)]
    reason: Option<String>,
    /// Ticket or case reference, stored in the audit trail.
    #[arg(long)]
    ticket: Option<String>,
}

#[derive(Debug, Subcommand)]
enum RevealAction {
    /// Ask for a reveal under the two-person rule; prints the request id. Reveals nothing.
    Request(request::RequestArgs),
    /// Approve another login's request (as an approver or auditor): audited.
    Approve(approve::ApproveArgs),
    /// List pending requests (not executed, not expired).
    Requests(requests::RequestsArgs),
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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RevealFormat {
    Json,
    Table,
    Csv,
}

impl Selection {
    /// The request the database records: selector, purpose and reason are all required.
    fn request<'a>(&'a self, actor: &'a str) -> Result<RevealRequest<'a>, Error> {
        let selector = match (&self.user_id, &self.message_id, &self.token) {
            (Some(u), _, _) => Selector::User(u),
            (_, Some(m), _) => Selector::Message(m),
            (_, _, Some(t)) => Selector::Token(t),
            _ => {
                return Err(Error::Usage(
                    "say which records: --user-id, --message-id or --token (or --request ID)."
                        .into(),
                ));
            }
        };
        let (Some(purpose), Some(reason)) = (self.purpose, self.reason.as_deref()) else {
            return Err(Error::Usage(
                "a reveal needs --purpose and --reason (see etl reveal --help).".into(),
            ));
        };
        check_reason(reason)?;
        purpose.check_reason(reason)?;
        Ok(RevealRequest {
            selector,
            purpose,
            reason,
            ticket: self.ticket.as_deref(),
            actor,
        })
    }
}

/// Reveals through the database (which audits and commits first), then opens and prints; or
/// runs a subcommand.
pub async fn run(args: RevealArgs, ctx: &Context) -> Result<(), Error> {
    match args.action {
        Some(RevealAction::Request(a)) => return request::run(a, ctx).await,
        Some(RevealAction::Approve(a)) => return approve::run(a, ctx).await,
        Some(RevealAction::Requests(a)) => return requests::run(a, ctx).await,
        None => {}
    }
    let actor = os_user();
    // Arguments first: a bad command line fails before any connection is made.
    let direct = match args.request {
        Some(_) => None,
        None => Some(args.selection.request(&actor)?),
    };
    let pool = ctx.auditor_pool().await?;
    // Seal keys only: the auditor's KMS grant can exclude the token keys.
    let keys = keystore::load_only(&pool, &ctx.kek().await?, Some(Purpose::Seal)).await?;
    let granted = match (&direct, args.request) {
        (Some(request), _) => store::vault::reveal(&pool, request).await?,
        (None, Some(id)) => store::vault::execute(&pool, id, &actor).await?,
        (None, None) => unreachable!("a direct reveal or a request"),
    };
    let (audit_id, rows) = match granted {
        Granted::Rows { audit_id, rows } => (audit_id, rows),
        Granted::Refused { audit_id, why } => return Err(Error::RevealRefused { audit_id, why }),
    };
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
