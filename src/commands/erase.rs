//! `etl erase --user-id ID --reason TEXT`: the right to erasure. Deletes the user's sealed
//! originals (`vault.login_pii`), their rows in `user_logins`, and every quarantined message whose
//! body names them (found by the user tags stored at quarantine time, or, for bodies quarantined
//! before tags existed, by opening them in an audited job), in one transaction with its audit
//! row. Rows are deleted, not nulled: the
//! analysts' rows carry the user id itself.

use clap::Args;
use serde_json::json;

use super::{Context, begin_job, print_line};
use crate::audit::{self, Entry, check_reason, os_user};
use crate::crypto::{Place, Purpose, Sealed, chain};
use crate::error::Error;
use crate::store::{self, StoreError};
use crate::{keystore, user_ids};

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
    let user = args.user_id.as_str();
    let pool = ctx.pool(1).await?;
    // Seal keys tag the user id (quarantined bodies carry tags under the key that sealed them)
    // and open the bodies quarantined before tags existed.
    let keys = keystore::load_only(&pool, &ctx.kek().await?, Some(Purpose::Seal)).await?;
    let tags: Vec<String> = keys
        .seal_keys()
        .map(|key| key.body_tag(user).into_string())
        .collect();
    // Opening untagged bodies is audited (and committed) first; usually there are none.
    let job = match store::quarantine::count_untagged(&pool).await? {
        0 => None,
        n => {
            let scan = format!("user_id={user}: {n} quarantined bodies without user tags");
            Some(begin_job(&pool, "erase", &scan, &args.reason).await?)
        }
    };
    let mut tx = pool
        .begin()
        .await
        .map_err(StoreError::during("starting a transaction"))?;
    let (vault, logins) = store::vault::erase_user(&mut tx, user).await?;
    let mut theirs = store::quarantine::remove_tagged(&mut tx, &tags).await?;
    let mut unreadable = 0u64;
    if let Some(job) = job {
        let mut named = Vec::new();
        let mut after = String::new();
        loop {
            let page = store::quarantine::untagged_page(&mut *tx, job, &after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.message_id.clone();
            for row in page {
                let body = Sealed::from_bytes(row.body_sealed);
                let Ok(plain) = keys.open(&Place::body(&row.message_id), &body) else {
                    unreadable += 1;
                    continue;
                };
                if user_ids::user_ids_in(&String::from_utf8_lossy(&plain))
                    .iter()
                    .any(|id| id == user)
                {
                    named.push(row.message_id);
                }
            }
        }
        store::quarantine::remove_all(&mut tx, &named).await?;
        theirs.extend(named);
    }
    let selector = match unreadable {
        0 => format!("user_id={user}"),
        n => format!("user_id={user} ({n} quarantined bodies could not be opened)"),
    };
    let subjects = [args.user_id.clone()];
    let digest = chain::records_digest(vault.iter().chain(&theirs).map(String::as_str));
    let entry = Entry {
        actor: &os_user(),
        action: "erase",
        selector: &selector,
        user_id: Some(user),
        ticket: args.ticket.as_deref(),
        reason: &args.reason,
        records: (vault.len() + theirs.len()) as i32,
        subjects: Some(&subjects),
        records_digest: Some(&digest),
    };
    let audit_id = audit::append(&mut tx, &entry).await?;
    tx.commit()
        .await
        .map_err(StoreError::during("committing the erasure"))?;
    if let Some(job) = job {
        store::jobs::end(&pool, job).await?;
    }
    if unreadable > 0 {
        tracing::warn!(
            unreadable,
            "quarantined bodies without user tags could not be opened (their seal key is gone or \
             they were altered): they may still name this user; run `etl keys verify`"
        );
    }
    tracing::info!(audit_id, "erasure committed");
    print_line(
        &json!({"erased": {"user_logins": logins, "vault": vault.len(), "quarantine": theirs.len()},
                "unreadable_bodies": unreadable, "audit_id": audit_id,
                "until_vacuum": "deleted rows stay in the tables' files until VACUUM reclaims them; VACUUM FULL (as owner) removes them now"})
        .to_string(),
    )
}
