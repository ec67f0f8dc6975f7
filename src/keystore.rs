//! Loading the keyring: wrapped rows from [`store::keys`], unwrapped by the [`Kek`], built into a
//! [`Keyring`]. Retired keys have no key material left and are skipped. Knows no SQL and no
//! cipher: it only connects the three.

use sqlx::PgPool;
use zeroize::Zeroizing;

use crate::crypto::{KeyState, KeyVersion, Keyring, Purpose, SealKey, TokenKey};
use crate::error::Error;
use crate::kek::Kek;
use crate::store::{self, keys::DataKeyRow};

/// One stored key, unwrapped.
pub struct Unwrapped {
    pub purpose: Purpose,
    pub version: KeyVersion,
    pub state: KeyState,
    pub plain: Zeroizing<Vec<u8>>,
}

/// Parses and unwraps one stored key; `None` for a retired one.
pub async fn unwrap_row(kek: &Kek, row: &DataKeyRow) -> Result<Option<Unwrapped>, Error> {
    let version = KeyVersion(row.version as u32);
    let bad = |purpose| Error::BadDataKey { purpose, version };
    let purpose: Purpose = row.purpose.parse().map_err(|_| bad(Purpose::Seal))?;
    let state: KeyState = row.state.parse().map_err(|_| bad(purpose))?;
    let Some(wrapped) = &row.wrapped else {
        return Ok(None);
    };
    let plain = kek.unwrap(purpose, version, wrapped, &row.kek_uri).await?;
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
        .filter(|r| purpose.is_none_or(|p| r.purpose == p.as_str()))
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
