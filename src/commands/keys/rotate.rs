//! `etl keys rotate --purpose seal|token`: add version N+1 of a data key.
//!
//! Seal: the new version is active at once (writers reload their keyring at their next batch);
//! `keys reencrypt` moves old values. Token: the new version is *pending* — writers fill its
//! token slot for new rows, `keys retokenize` for older ones, and analysts keep seeing the
//! active version until the switch.

use serde_json::json;

use crate::commands::{Context, print_line};
use crate::crypto::{KeyState, Purpose, new_key_material};
use crate::error::Error;
use crate::kek::WrapContext;
use crate::store::{self, StoreError};
use crate::{key_lifecycle, keystore};

/// Adds the next version.
pub async fn run(ctx: &Context, purpose: Purpose) -> Result<(), Error> {
    let kek = ctx.kek().await?;
    let pool = ctx.pool(2).await?;
    let _job = super::job_lock(&pool).await?;
    let (mut tx, rows) = store::keys::begin_locked(&pool).await?;
    let plan = key_lifecycle::plan_rotation(&store::keys::statuses(&rows), purpose)?;
    let active = rows
        .iter()
        .find(|r| r.purpose == purpose && r.version == plan.current)
        .ok_or(Error::NoKeys(purpose))?;
    // The new key must be readable by every instance: PIIVAULT_KEK has to be the KEK the current
    // keys are wrapped under (after a `keys rewrap`, an operator may still hold the old one), and
    // PIIVAULT_DEPLOYMENT the deployment they belong to.
    keystore::unwrap_row(&kek, active).await?;
    let deployment = keystore::deployment(&kek, &active.database);
    let material = new_key_material();
    let context = WrapContext {
        purpose,
        version: plan.next,
        deployment: Some(deployment),
    };
    let wrapped = kek.wrap(&context, material.as_ref()).await?;
    let kek_uri = kek.uri().to_string();
    if plan.demote_now {
        // Waits for batches in flight and holds new ones until the new key is committed:
        // afterwards no batch can commit under the old key (writers re-check, then reload).
        store::rotation::lock_sealed_rows(&mut tx).await?;
        store::keys::set_state(&mut tx, purpose, plan.current, KeyState::Previous).await?;
    } else {
        // The same fence for the pending key: every batch that commits after this one carries
        // its tokens too, so retokenize only ever has to fill rows that exist now.
        store::rotation::lock_user_logins(&mut tx).await?;
    }
    store::keys::insert(
        &mut tx, purpose, plan.next, plan.state, &kek_uri, deployment, &wrapped,
    )
    .await?;
    tx.commit()
        .await
        .map_err(StoreError::during("committing the new key"))?;
    let (version, state) = (plan.next.0, plan.state.as_str());
    tracing::info!(%purpose, version, state, deployment, "rotated");
    print_line(&json!({"purpose": purpose.as_str(), "version": version, "state": state, "previous": plan.current.0}).to_string())
}
