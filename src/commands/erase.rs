//! `etl erase --user-id ID --reason TEXT`: the right to erasure. Deletes the user's sealed
//! originals (`vault.login_pii`), their rows in `user_logins`, and every quarantined message whose
//! body names them, in one transaction with its audit row. Rows are deleted, not nulled: the
//! analysts' rows carry the user id itself.

use clap::Args;
use serde_json::json;

use super::reveal::{check_reason, os_user};
use super::{Context, begin_job, print_line};
use crate::audit::{self, Entry};
use crate::crypto::{Place, Purpose, Sealed, chain};
use crate::error::Error;
use crate::store::{self, StoreError};
use crate::{event, keystore};

/// Quarantine rows read per page while looking for the user's bodies.
const PAGE: i64 = 1000;

/// `etl erase --user-id ID --reason TEXT [--ticket T]`.
#[derive(Debug, Args)]
pub struct EraseArgs {
    /// Whose data to erase.
    #[arg(long)]
    user_id: String,
    /// Why (at least 8 characters; audited verbatim). Required.
    #[arg(long)]
    reason: String,
    /// Ticket or request reference, stored in the audit trail.
    #[arg(long)]
    ticket: Option<String>,
}

/// Erases and audits in one transaction (on `DATABASE_URL`, an admin login).
pub async fn run(args: EraseArgs, ctx: &Context) -> Result<(), Error> {
    check_reason(&args.reason)?;
    let pool = ctx.pool(1).await?;
    // Seal keys open quarantined bodies to find the ones naming this user.
    let keys = keystore::load_only(&pool, &ctx.kek().await?, Some(Purpose::Seal)).await?;
    // Finding the user's quarantined bodies opens them: audited (and committed) first.
    let scan = format!(
        "user_id={}: quarantined bodies naming the user",
        args.user_id
    );
    let job = begin_job(&pool, "erase", &scan, &args.reason).await?;
    let mut tx = pool
        .begin()
        .await
        .map_err(StoreError::during("starting a transaction"))?;
    let (vault, logins) = store::vault::erase_user(&mut tx, &args.user_id).await?;
    let mut theirs = Vec::new();
    let mut after = String::new();
    loop {
        let page = store::quarantine::page(&mut *tx, job, None, &after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.message_id.clone();
        for row in page {
            let (message_id, body) = (row.message_id, row.body_sealed);
            let Ok(plain) = keys.open(&Place::body(&message_id), &Sealed::from_bytes(body)) else {
                continue; // cannot tell whose it is; `keys verify` reports such rows
            };
            let named = std::str::from_utf8(&plain).ok().and_then(event::user_id_of);
            if named.as_deref() == Some(args.user_id.as_str()) {
                theirs.push(message_id);
            }
        }
    }
    let quarantine = store::quarantine::remove_all(&mut tx, &theirs).await?;
    let selector = format!("user_id={}", args.user_id);
    let subjects = [args.user_id.clone()];
    let digest = chain::records_digest(vault.iter().chain(&theirs).map(String::as_str));
    let entry = Entry {
        actor: &os_user(),
        action: "erase",
        selector: &selector,
        user_id: Some(&args.user_id),
        ticket: args.ticket.as_deref(),
        reason: &args.reason,
        records: (vault.len() as u64 + quarantine) as i32,
        subjects: Some(&subjects),
        records_digest: Some(&digest),
    };
    let audit_id = audit::append(&mut tx, &entry).await?;
    tx.commit()
        .await
        .map_err(StoreError::during("committing the erasure"))?;
    store::jobs::end(&pool, job).await?;
    tracing::info!(audit_id, "erasure committed");
    print_line(&json!({"erased": {"user_logins": logins, "vault": vault.len(), "quarantine": quarantine}, "audit_id": audit_id}).to_string())
}
