//! `etl policy show|set`: the deployment's reveal policy (allowed purposes, quotas, which
//! purposes need a second person, how long a request lives). Set by the key admin's login
//! (`piivault_admin`) through `vault.policy_set()`, which audits every change; auditors and
//! approvers may read it but never change it.

use clap::{Args, Subcommand};
use serde_json::json;

use super::{Context, print_line};
use crate::audit::{check_reason, os_user};
use crate::error::Error;
use crate::governance::AccessPurpose;
use crate::store;
use crate::store::governance::PolicyChange;

/// `etl policy show` or `etl policy set ... --reason TEXT`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    verb: PolicyVerb,
}

#[derive(Debug, Subcommand)]
enum PolicyVerb {
    /// Print the policy as one JSON line.
    Show,
    /// Change some settings (the others stay); audited with --reason.
    Set(SetArgs),
}

#[derive(Debug, Args)]
struct SetArgs {
    /// Purposes allowed in this deployment (comma-separated; at least one).
    #[arg(long, value_enum, value_delimiter = ',')]
    purposes: Option<Vec<AccessPurpose>>,
    /// Distinct users one login may reveal per window.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=1_000_000))]
    users_per_window: Option<i32>,
    /// The rolling window of that quota, in hours.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=8_760))]
    window_hours: Option<i32>,
    /// Records one reveal may return.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=10_000_000))]
    records_per_reveal: Option<i32>,
    /// Purposes that need a request approved by another login (comma-separated), or `none`.
    #[arg(long, value_name = "PURPOSES|none")]
    two_person: Option<String>,
    /// How long a request may wait for approval and execution, in hours.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=720))]
    request_ttl_hours: Option<i32>,
    /// Why the policy changes (at least 8 characters; audited verbatim).
    #[arg(long)]
    reason: String,
}

/// Shows or sets the policy.
pub async fn run(args: PolicyArgs, ctx: &Context) -> Result<(), Error> {
    match args.verb {
        PolicyVerb::Show => {
            let pool = ctx.pool(1).await?;
            let policy = store::governance::policy(&pool).await?;
            print_line(&serde_json::to_string(&policy).expect("a policy serialises"))
        }
        PolicyVerb::Set(set) => {
            check_reason(&set.reason)?;
            let change = PolicyChange {
                purposes: set.purposes.map(names),
                users_per_window: set.users_per_window,
                window_hours: set.window_hours,
                records_per_reveal: set.records_per_reveal,
                two_person: set.two_person.as_deref().map(two_person).transpose()?,
                request_ttl_hours: set.request_ttl_hours,
            };
            let pool = ctx.pool(1).await?;
            let audit_id =
                store::governance::set_policy(&pool, &change, &set.reason, &os_user()).await?;
            let policy = store::governance::policy(&pool).await?;
            tracing::info!(audit_id, "reveal policy changed");
            print_line(&json!({"audit_id": audit_id, "policy": policy}).to_string())
        }
    }
}

fn names(purposes: Vec<AccessPurpose>) -> Vec<String> {
    purposes.iter().map(|p| p.as_str().to_owned()).collect()
}

/// `none`, or a comma-separated list of known purposes.
fn two_person(text: &str) -> Result<Vec<String>, Error> {
    if text == "none" {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|name| {
            <AccessPurpose as clap::ValueEnum>::from_str(name.trim(), false)
                .map(|p| p.as_str().to_owned())
                .map_err(|_| {
                    Error::Usage(format!(
                        "--two-person takes purposes from the list in `etl reveal --help`, or none; {name:?} is not one."
                    ))
                })
        })
        .collect()
}
