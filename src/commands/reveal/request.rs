//! `etl reveal request`: ask for a reveal under the two-person rule. The database records the
//! request as an audit row and keeps it pending; nothing is revealed until another login
//! approves it and this login executes it (`etl reveal --request ID`).

use clap::Args;
use serde_json::json;

use super::Selection;
use crate::audit::os_user;
use crate::commands::{Context, print_line};
use crate::error::Error;
use crate::store;

/// `etl reveal request (--user-id ID | --message-id ID | --token T) --purpose P --reason TEXT`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    #[command(flatten)]
    selection: Selection,
}

/// Records the request; prints `{"request_id":N,"expires_in_hours":H}`.
pub async fn run(args: RequestArgs, ctx: &Context) -> Result<(), Error> {
    let actor = os_user();
    let request = args.selection.request(&actor)?;
    let pool = ctx.auditor_pool().await?;
    let id = store::governance::ask(&pool, &request).await?;
    let policy = store::governance::policy(&pool).await?;
    tracing::info!(
        request_id = id,
        "reveal request recorded; another login must approve it"
    );
    print_line(&json!({"request_id": id, "expires_in_hours": policy.request_ttl_hours}).to_string())
}
