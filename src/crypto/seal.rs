//! AES-256-GCM-SIV sealing bound to its place: table, message, user, field and key version.
//!
//! Two stored forms exist, told apart by a marker, never guessed:
//! - format 2 (everything sealed since issue 14): `0xFF 0x02 || version (4 bytes, big-endian) ||
//!   nonce (12) || ciphertext+tag`, AAD = length-prefixed `piivault-seal-2, table, message_id,
//!   user_id, field, version`;
//! - format 1 (before): `version (4 bytes) || nonce || ciphertext+tag`, AAD = `message_id 0x00
//!   field 0x00 version`. Its first byte is 0x00 for any version below 2^24, so the marker cannot
//!   collide. Still opened; `etl keys reencrypt` moves such values to format 2.
//!
//! A sealed value copied to another row, field or user, or relabelled with another version,
//! fails to open.

use std::fmt;

use zeroize::Zeroizing;

use super::aead;
use super::keyring::{KeyVersion, Keyring, SealKey};

const VERSION_LEN: usize = 4;

/// The first bytes of every format-2 value. Key jobs find older values by their absence (the
/// migrations repeat the marker: `vault.job_vault_rows()`, `count_not_sealed_at()`).
pub const FORMAT_2_PREFIX: [u8; 2] = [0xFF, 0x02];

/// Domain tag opening every format-2 AAD.
const AAD_TAG: &str = "piivault-seal-2";

/// Which value of a message a sealed value holds; part of the AAD (and of token input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The login's `ip`.
    Ip,
    /// The login's `device_id`.
    DeviceId,
    /// A quarantined message's whole raw body.
    Body,
}

impl Field {
    /// Name bound into AAD and tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Ip => "ip",
            Field::DeviceId => "device_id",
            Field::Body => "body",
        }
    }

    /// The table values of this field are stored in, bound into the AAD.
    fn table(self) -> &'static str {
        match self {
            Field::Ip | Field::DeviceId => "vault.login_pii",
            Field::Body => "etl.quarantine",
        }
    }
}

/// Where a sealed value belongs; all of it is bound into the AAD.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    /// The message (row) it belongs to.
    pub message_id: &'a str,
    /// The user it belongs to; empty for a quarantined body, whose user is not known.
    pub user_id: &'a str,
    /// Which value of the message.
    pub field: Field,
}

impl<'a> Place<'a> {
    /// A value of a login's vault row.
    pub fn login(message_id: &'a str, user_id: &'a str, field: Field) -> Place<'a> {
        Place {
            message_id,
            user_id,
            field,
        }
    }

    /// A quarantined message's raw body.
    pub fn body(message_id: &'a str) -> Place<'a> {
        Place {
            message_id,
            user_id: "",
            field: Field::Body,
        }
    }
}

/// How a stored value is laid out (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealFormat {
    /// Before issue 14: AAD without table and user.
    V1,
    /// AAD binds table, message, user, field and version.
    V2,
}

/// A sealed value as stored in a `bytea` column.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(Vec<u8>);

impl Sealed {
    /// Wraps bytes read from the database.
    pub fn from_bytes(bytes: Vec<u8>) -> Sealed {
        Sealed(bytes)
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Takes the bytes to store.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The layout of this value, from its marker.
    pub fn format(&self) -> SealFormat {
        if self.0.starts_with(&FORMAT_2_PREFIX) {
            SealFormat::V2
        } else {
            SealFormat::V1
        }
    }

    /// The version field and everything after it.
    fn body(&self) -> &[u8] {
        match self.format() {
            SealFormat::V2 => &self.0[FORMAT_2_PREFIX.len()..],
            SealFormat::V1 => &self.0,
        }
    }

    /// The seal key version this value claims (authenticated through the AAD).
    pub fn version(&self) -> Option<KeyVersion> {
        let prefix: [u8; VERSION_LEN] = self.body().get(..VERSION_LEN)?.try_into().ok()?;
        Some(KeyVersion(u32::from_be_bytes(prefix)))
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

/// A sealed value did not open: wrong row, field, version or key, or tampered bytes.
#[derive(Debug, thiserror::Error)]
#[error(
    "integrity error: the sealed {field} of message {message_id} (key v{key_version}) does not open; \
     it was altered, moved from another row, or its key is missing"
)]
pub struct OpenFailed {
    /// The row whose value failed.
    pub message_id: String,
    /// The field name.
    pub field: &'static str,
    /// The version the value claims (0 if unreadable).
    pub key_version: u32,
}

/// Format-1 AAD, for opening values sealed before format 2.
fn aad_v1(message_id: &str, field: Field, version: KeyVersion) -> Vec<u8> {
    let mut aad = Vec::with_capacity(message_id.len() + 16);
    aad.extend_from_slice(message_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(field.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(version.0.to_string().as_bytes());
    aad
}

/// Format-2 AAD: every part length-prefixed, so no two places encode alike.
fn aad_v2(place: &Place<'_>, version: KeyVersion) -> Vec<u8> {
    let version = version.0.to_string();
    let parts = [
        AAD_TAG,
        place.field.table(),
        place.message_id,
        place.user_id,
        place.field.as_str(),
        version.as_str(),
    ];
    let mut aad = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for part in parts {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

impl SealKey {
    /// Seals one value for its place under a fresh random nonce (always format 2).
    pub fn seal(&self, place: &Place<'_>, plaintext: &[u8]) -> Sealed {
        let mut out = Vec::with_capacity(
            FORMAT_2_PREFIX.len() + VERSION_LEN + aead::NONCE_LEN + plaintext.len() + aead::TAG_LEN,
        );
        out.extend_from_slice(&FORMAT_2_PREFIX);
        out.extend_from_slice(&self.version.0.to_be_bytes());
        aead::encrypt_into(
            &mut out,
            &self.bytes,
            &aad_v2(place, self.version),
            plaintext,
        );
        Sealed(out)
    }

    /// Opens a value sealed by this key for this place, in either format.
    fn open(&self, place: &Place<'_>, sealed: &Sealed) -> Option<Zeroizing<Vec<u8>>> {
        let rest = sealed.body().get(VERSION_LEN..)?;
        let aad = match sealed.format() {
            SealFormat::V2 => aad_v2(place, self.version),
            SealFormat::V1 => aad_v1(place.message_id, place.field, self.version),
        };
        aead::decrypt(&self.bytes, &aad, rest)
    }
}

impl Keyring {
    /// Opens a sealed value with the key version it names.
    pub fn open(
        &self,
        place: &Place<'_>,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, OpenFailed> {
        let version = sealed.version();
        version
            .and_then(|v| self.seal_key(v))
            .and_then(|key| key.open(place, sealed))
            .ok_or_else(|| OpenFailed {
                message_id: place.message_id.to_owned(),
                field: place.field.as_str(),
                key_version: version.map_or(0, |v| v.0),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyState;

    fn ring(byte: u8, version: u32) -> Keyring {
        let mut ring = Keyring::default();
        ring.add_seal(
            SealKey::from_unwrapped(KeyVersion(version), &[byte; 32]).unwrap(),
            KeyState::Active,
        );
        ring
    }

    const M1_IP: Place<'static> = Place {
        message_id: "m1",
        user_id: "u1",
        field: Field::Ip,
    };

    #[test]
    fn round_trip_and_fresh_nonces() {
        let ring = ring(7, 2);
        let key = ring.active_seal().unwrap();
        let a = key.seal(&M1_IP, b"1.2.3.4");
        let b = key.seal(&M1_IP, b"1.2.3.4");
        assert_ne!(a, b, "nonces must differ");
        assert_eq!(a.format(), SealFormat::V2);
        assert_eq!(a.version(), Some(KeyVersion(2)));
        assert_eq!(a.as_bytes().len(), 2 + 4 + 12 + 7 + 16);
        assert_eq!(&ring.open(&M1_IP, &a).unwrap()[..], b"1.2.3.4");
    }

    #[test]
    fn moved_or_tampered_values_do_not_open() {
        let ring = ring(7, 1);
        let sealed = ring.active_seal().unwrap().seal(&M1_IP, b"1.2.3.4");
        let elsewhere = [
            (
                "other row",
                Place {
                    message_id: "m2",
                    ..M1_IP
                },
            ),
            (
                "other user",
                Place {
                    user_id: "u2",
                    ..M1_IP
                },
            ),
            (
                "other field",
                Place {
                    field: Field::DeviceId,
                    ..M1_IP
                },
            ),
            (
                "other table",
                Place {
                    field: Field::Body,
                    user_id: "",
                    ..M1_IP
                },
            ),
            // Length prefixes: moving a character between message and user changes the AAD.
            (
                "shifted",
                Place {
                    message_id: "m1u",
                    user_id: "1",
                    ..M1_IP
                },
            ),
        ];
        for (what, place) in elsewhere {
            assert!(ring.open(&place, &sealed).is_err(), "{what}");
        }
        let mut bytes = sealed.clone().into_bytes();
        *bytes.last_mut().unwrap() ^= 1;
        assert!(
            ring.open(&M1_IP, &Sealed::from_bytes(bytes)).is_err(),
            "flipped bit"
        );
        let mut relabelled = sealed.clone().into_bytes();
        relabelled[5] = 9;
        let err = ring
            .open(&M1_IP, &Sealed::from_bytes(relabelled))
            .unwrap_err();
        assert_eq!(err.key_version, 9);
        assert!(
            ring.open(&M1_IP, &Sealed::from_bytes(vec![0xFF, 2, 0]))
                .is_err(),
            "short"
        );
        assert!(Keyring::default().open(&M1_IP, &sealed).is_err(), "no key");
        let other = self::ring(8, 1);
        assert!(other.open(&M1_IP, &sealed).is_err(), "other key");
    }

    /// A format-1 value, built exactly as piivault sealed before format 2.
    fn seal_v1(byte: u8, version: u32, message_id: &str, field: Field, plain: &[u8]) -> Sealed {
        let mut out = version.to_be_bytes().to_vec();
        aead::encrypt_into(
            &mut out,
            &[byte; 32],
            &aad_v1(message_id, field, KeyVersion(version)),
            plain,
        );
        Sealed(out)
    }

    #[test]
    fn format_1_values_still_open_by_their_marker_not_by_a_guess() {
        let ring = ring(7, 3);
        let old = seal_v1(7, 3, "m1", Field::Ip, b"10.0.0.1");
        assert_eq!(old.format(), SealFormat::V1);
        assert_eq!(old.version(), Some(KeyVersion(3)));
        assert_eq!(&ring.open(&M1_IP, &old).unwrap()[..], b"10.0.0.1");
        // Format 1 never bound the user: that is what re-encryption to format 2 adds.
        assert!(
            ring.open(
                &Place {
                    user_id: "u9",
                    ..M1_IP
                },
                &old
            )
            .is_ok()
        );
        assert!(
            ring.open(
                &Place {
                    message_id: "m2",
                    ..M1_IP
                },
                &old
            )
            .is_err()
        );
        // A format-1 value presented as format 2 (marker added) does not open.
        let mut marked = FORMAT_2_PREFIX.to_vec();
        marked.extend_from_slice(old.as_bytes());
        assert!(ring.open(&M1_IP, &Sealed::from_bytes(marked)).is_err());
    }
}
