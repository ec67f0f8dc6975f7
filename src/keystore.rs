//! Loading the keyring: wrapped rows from [`store::keys`], unwrapped by the [`Kek`], built into a
//! [`Keyring`]. Retired keys have no key material left and are skipped. Knows no SQL and no
//! cipher: it only connects the three.
//!
//! Deployments: a key is unwrapped under the context its row records (`deployment`, or the
//! legacy context when NULL), but only after checking that the row belongs to the deployment
//! this process serves ([`deployment`]); a key copied in from another deployment is refused by
//! name, before any KEK call.

use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::PgPool;
use zeroize::Zeroizing;

use crate::crypto::{KeyState, KeyVersion, Keyring, Purpose, SealKey, TokenKey};
use crate::error::Error;
use crate::kek::{Kek, KekError, WrapContext};
use crate::protect::WriteKeys;
use crate::store::keys::TokenSlot;
use crate::store::{self, keys::DataKeyRow};

/// The deployment a process serves: `PIIVAULT_DEPLOYMENT` as held by the KEK, else the name of
/// the database it is connected to.
pub fn deployment<'a>(kek: &'a Kek, database: &'a str) -> &'a str {
    kek.deployment().unwrap_or(database)
}

/// Refuses a key wrapped for another deployment than the one this process serves.
fn check_deployment(kek: &Kek, row: &DataKeyRow, purpose: Purpose) -> Result<(), KekError> {
    let Some(stored) = row.deployment.as_deref() else {
        return Ok(()); // legacy: see `warn_legacy`
    };
    let configured = deployment(kek, &row.database);
    if stored == configured {
        return Ok(());
    }
    Err(KekError::WrongDeployment {
        purpose,
        version: row.version,
        stored: stored.to_owned(),
        configured: configured.to_owned(),
        how: match kek.deployment() {
            Some(_) => "PIIVAULT_DEPLOYMENT",
            None => "PIIVAULT_DEPLOYMENT unset: the database's name",
        },
    })
}

/// Once per process: keys under the legacy context still open, but are not bound to a deployment.
fn warn_legacy(kek: &Kek, row: &DataKeyRow) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            purpose = %row.purpose,
            version = row.version.0,
            deployment = deployment(kek, &row.database),
            "vault.data_keys holds keys wrapped before deployments were bound (deployment NULL): \
             a copy of them would unwrap in any deployment sharing the KEK. Run \
             `etl keys rewrap --to-kek <the current PIIVAULT_KEK>` to bind them to this deployment."
        );
    }
}

/// One stored key, unwrapped.
pub struct Unwrapped {
    pub purpose: Purpose,
    pub version: KeyVersion,
    pub state: KeyState,
    pub plain: Zeroizing<Vec<u8>>,
}

/// Parses and unwraps one stored key; `None` for a retired one. Refuses (exit 78) a key wrapped
/// for another deployment than the one `kek` serves.
pub async fn unwrap_row(kek: &Kek, row: &DataKeyRow) -> Result<Option<Unwrapped>, Error> {
    let (purpose, version, state) = (row.purpose, row.version, row.state);
    let Some(wrapped) = &row.wrapped else {
        return Ok(None);
    };
    check_deployment(kek, row, purpose)?;
    if row.deployment.is_none() {
        warn_legacy(kek, row);
    }
    let context = WrapContext {
        purpose,
        version,
        deployment: row.deployment.as_deref(),
    };
    let plain = kek.unwrap(&context, wrapped, &row.kek_uri).await?;
    Ok(Some(Unwrapped {
        purpose,
        version,
        state,
        plain,
    }))
}

/// Unwraps every usable stored key (once per process, or again after a rotation).
pub async fn load(pool: &PgPool, kek: &Kek) -> Result<Keyring, Error> {
    load_only(pool, kek, None).await
}

/// What a writer (`etl run`, `quarantine replay`) writes with: the keyring, the key states it
/// was loaded under, and the active token key's slot of `etl.logins`.
pub struct WriterKeys {
    keys: Keyring,
    fingerprint: String,
    /// Where the active tokens go (the pending key's go to the other slot).
    pub slot: TokenSlot,
}

impl WriterKeys {
    /// Loads them; an active seal and token key are required.
    pub async fn load(pool: &PgPool, kek: &Kek) -> Result<WriterKeys, Error> {
        // Fingerprint first: a change that lands while the keys load is noticed at the commit.
        let fingerprint = store::keys::fingerprint(pool).await?;
        let keys = load(pool, kek).await?;
        keys.active_seal().ok_or(Error::NoKeys(Purpose::Seal))?;
        keys.active_token().ok_or(Error::NoKeys(Purpose::Token))?;
        let slot = store::keys::active_token_slot(pool).await?;
        Ok(WriterKeys {
            keys,
            fingerprint,
            slot,
        })
    }

    /// Every usable key (to open what older versions sealed).
    pub fn keyring(&self) -> &Keyring {
        &self.keys
    }

    /// The keys new rows are protected with.
    pub fn write_keys(&self) -> WriteKeys<'_> {
        WriteKeys {
            seal: self.keys.active_seal().expect("checked on load"),
            token: self.keys.active_token().expect("checked on load"),
            pending_token: self.keys.pending_token(),
        }
    }

    /// Whether the key states are still those these keys were loaded under, read in the
    /// writer's transaction after its inserts: a key change commits either before (and this
    /// is false: roll back, reload) or after this transaction (its fence waits for it).
    pub async fn still_current(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<bool, store::StoreError> {
        Ok(store::keys::fingerprint(&mut **tx).await? == self.fingerprint)
    }
}

/// Unwraps the usable keys of one purpose (or all): an auditor's reveal needs only seal keys, so
/// its KMS policy can be limited to the `purpose = seal` encryption context.
pub async fn load_only(
    pool: &PgPool,
    kek: &Kek,
    purpose: Option<Purpose>,
) -> Result<Keyring, Error> {
    let mut ring = Keyring::default();
    let rows = store::keys::list(pool).await?;
    for row in rows
        .iter()
        .filter(|r| purpose.is_none_or(|p| r.purpose == p))
    {
        let Some(key) = unwrap_row(kek, row).await? else {
            continue;
        };
        let bad = || Error::BadDataKey {
            purpose: key.purpose,
            version: key.version,
        };
        match key.purpose {
            Purpose::Seal => ring.add_seal(
                SealKey::from_unwrapped(key.version, &key.plain).ok_or_else(bad)?,
                key.state,
            ),
            Purpose::Token => ring.add_token(
                TokenKey::from_unwrapped(key.version, &key.plain).ok_or_else(bad)?,
                key.state,
            ),
        }
    }
    Ok(ring)
}
