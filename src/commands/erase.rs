//! `etl erase --user-id ID --reason TEXT`: the right to erasure. Deletes the user's sealed
//! originals (`vault.login_pii`), their rows in `user_logins`, and every quarantined message whose
//! body names them (found by the user tags stored at quarantine time, or, for bodies quarantined
//! before tags existed, by opening them in an audited job). The deletions and the audit row are
//! one statement, `vault.erase_user()`: the admin role has no DELETE of its own on the vault or
//! the analysts' table. Rows are deleted, not nulled: the
//! analysts' rows carry the user id itself.

use clap::Args;
use serde_json::json;

use super::{Context, begin_job, print_line};
use crate::audit::{check_reason, os_user};
use crate::crypto::{Place, Purpose, Sealed};
use crate::error::Error;
use crate::store;
use crate::store::vault::EraseRequest;
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
    let (mut found, mut unreadable, mut job) = (Vec::new(), 0u64, None);
    let untagged = store::quarantine::count_untagged(&pool).await?;
    if untagged > 0 {
        let scan = format!("user_id={user}: {untagged} quarantined bodies without user tags");
        let id = begin_job(&pool, "erase", &scan, &args.reason).await?;
        job = Some(id);
        let mut after = String::new();
        loop {
            let page = store::quarantine::untagged_page(&pool, id, &after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.message_id.clone();
            for row in page {
                let body = Sealed::from_bytes(row.body_sealed);
                let Ok(plain) = keys.open(&Place::body(&row.message_id), &body) else {
                    unreadable += 1;
                    continue;
                };
                let named = user_ids::user_ids_in(&String::from_utf8_lossy(&plain));
                if named.iter().any(|id| id == user) {
                    found.push(row.message_id);
                }
            }
        }
    }
    let note =
        (unreadable > 0).then(|| format!("{unreadable} quarantined bodies could not be opened"));
    let actor = os_user();
    let request = EraseRequest {
        user_id: user,
        tags: &tags,
        found: &found,
        note: note.as_deref(),
        reason: &args.reason,
        ticket: args.ticket.as_deref(),
        actor: &actor,
    };
    let erased = store::vault::erase_user(&pool, &request).await?;
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
    tracing::info!(audit_id = erased.audit_id, "erasure committed");
    print_line(
        &json!({"erased": {"user_logins": erased.login_rows, "vault": erased.vault_rows,
                           "quarantine": erased.quarantine_rows},
                "unreadable_bodies": unreadable, "audit_id": erased.audit_id,
                "until_vacuum": "deleted rows stay in the tables' files until VACUUM reclaims them; VACUUM FULL (as owner) removes them now"})
        .to_string(),
    )
}
