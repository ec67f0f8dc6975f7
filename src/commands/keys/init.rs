//! `etl keys init`: seal key v1 and token key v1, separate random material, wrapped by the KEK
//! for this deployment (`PIIVAULT_DEPLOYMENT`, default the database's name).

use serde_json::json;

use crate::commands::{Context, print_line};
use crate::crypto::{KeyState, KeyVersion, Purpose, new_key_material};
use crate::error::Error;
use crate::kek::WrapContext;
use crate::keystore;
use crate::store::{self, StoreError};

/// Creates the first keys; when any key exists, refuses — or, with `if_missing`, says so and
/// succeeds.
pub async fn run(ctx: &Context, if_missing: bool) -> Result<(), Error> {
    let kek = ctx.kek().await?;
    let pool = ctx.pool(1).await?;
    let (mut tx, rows) = store::keys::begin_locked(&pool).await?;
    let existing = rows.len();
    if existing > 0 && if_missing {
        // A deploy job must not report success when `etl run` would fail: each purpose needs an
        // active key, and PIIVAULT_KEK must open it.
        for purpose in [Purpose::Seal, Purpose::Token] {
            let active = rows
                .iter()
                .find(|r| r.purpose == purpose && r.state == KeyState::Active)
                .ok_or(Error::NoKeys(purpose))?;
            keystore::unwrap_row(&kek, active).await?;
        }
        tracing::info!(
            existing,
            "keys exist already and PIIVAULT_KEK opens them; nothing created"
        );
        return print_line(&json!({"created": [], "existing": existing}).to_string());
    }
    if existing > 0 {
        return Err(Error::KeysExist(existing as i64));
    }
    let database = store::keys::database_name(&mut tx).await?;
    let deployment = keystore::deployment(&kek, &database);
    if kek.deployment().is_none() {
        tracing::warn!(
            deployment,
            "PIIVAULT_DEPLOYMENT is not set: binding the keys to the database's name; \
             name the deployment explicitly (e.g. prod-eu1) and pin it in the KMS key policy"
        );
    }
    let kek_uri = kek.uri().to_string();
    for purpose in [Purpose::Seal, Purpose::Token] {
        let material = new_key_material();
        let context = WrapContext {
            purpose,
            version: KeyVersion(1),
            deployment: Some(deployment),
        };
        let wrapped = kek.wrap(&context, material.as_ref()).await?;
        store::keys::insert(
            &mut tx,
            purpose,
            KeyVersion(1),
            KeyState::Active,
            &kek_uri,
            deployment,
            &wrapped,
        )
        .await?;
    }
    tx.commit()
        .await
        .map_err(StoreError::during("committing new keys"))?;
    tracing::info!(kek = %kek_uri, deployment, "created seal and token keys v1");
    print_line(
        &json!({"created": [{"purpose": "seal", "version": 1}, {"purpose": "token", "version": 1}], "kek": kek_uri, "deployment": deployment})
            .to_string(),
    )
}
