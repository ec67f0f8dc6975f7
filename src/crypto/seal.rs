//! AES-256-GCM-SIV sealing bound to its row: AAD = `message_id 0x00 field 0x00 key_version`.
//!
//! Stored form: `version (4 bytes, big-endian) || nonce (12 bytes) || ciphertext+tag`. A sealed
//! value copied to another row, another field or relabelled with another version fails to open.

use std::fmt;

use zeroize::Zeroizing;

use super::aead;
use super::keyring::{KeyVersion, Keyring, SealKey};

const VERSION_LEN: usize = 4;

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

    /// The seal key version this value claims (authenticated through the AAD).
    pub fn version(&self) -> Option<KeyVersion> {
        let prefix: [u8; VERSION_LEN] = self.0.get(..VERSION_LEN)?.try_into().ok()?;
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

fn aad(message_id: &str, field: Field, version: KeyVersion) -> Vec<u8> {
    let mut aad = Vec::with_capacity(message_id.len() + 16);
    aad.extend_from_slice(message_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(field.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(version.0.to_string().as_bytes());
    aad
}

impl SealKey {
    /// Seals one value of one message under a fresh random nonce.
    pub fn seal(&self, message_id: &str, field: Field, plaintext: &[u8]) -> Sealed {
        let mut out =
            Vec::with_capacity(VERSION_LEN + aead::NONCE_LEN + plaintext.len() + aead::TAG_LEN);
        out.extend_from_slice(&self.version.0.to_be_bytes());
        aead::encrypt_into(
            &mut out,
            &self.bytes,
            &aad(message_id, field, self.version),
            plaintext,
        );
        Sealed(out)
    }

    /// Opens a value sealed by this key for this message and field.
    fn open(&self, message_id: &str, field: Field, sealed: &Sealed) -> Option<Zeroizing<Vec<u8>>> {
        let rest = sealed.0.get(VERSION_LEN..)?;
        aead::decrypt(&self.bytes, &aad(message_id, field, self.version), rest)
    }
}

impl Keyring {
    /// Opens a sealed value with the key version it names.
    pub fn open(
        &self,
        message_id: &str,
        field: Field,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, OpenFailed> {
        let version = sealed.version();
        version
            .and_then(|v| self.seal_key(v))
            .and_then(|key| key.open(message_id, field, sealed))
            .ok_or_else(|| OpenFailed {
                message_id: message_id.to_owned(),
                field: field.as_str(),
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

    #[test]
    fn round_trip_and_fresh_nonces() {
        let ring = ring(7, 2);
        let key = ring.active_seal().unwrap();
        let a = key.seal("m1", Field::Ip, b"1.2.3.4");
        let b = key.seal("m1", Field::Ip, b"1.2.3.4");
        assert_ne!(a, b, "nonces must differ");
        assert_eq!(a.version(), Some(KeyVersion(2)));
        assert_eq!(a.as_bytes().len(), 4 + 12 + 7 + 16);
        assert_eq!(&ring.open("m1", Field::Ip, &a).unwrap()[..], b"1.2.3.4");
    }

    #[test]
    fn moved_or_tampered_values_do_not_open() {
        let ring = ring(7, 1);
        let sealed = ring
            .active_seal()
            .unwrap()
            .seal("m1", Field::Ip, b"1.2.3.4");
        assert!(ring.open("m2", Field::Ip, &sealed).is_err(), "other row");
        assert!(
            ring.open("m1", Field::DeviceId, &sealed).is_err(),
            "other field"
        );
        let mut bytes = sealed.clone().into_bytes();
        *bytes.last_mut().unwrap() ^= 1;
        assert!(
            ring.open("m1", Field::Ip, &Sealed::from_bytes(bytes))
                .is_err(),
            "flipped bit"
        );
        let mut relabelled = sealed.clone().into_bytes();
        relabelled[3] = 9;
        let err = ring
            .open("m1", Field::Ip, &Sealed::from_bytes(relabelled))
            .unwrap_err();
        assert_eq!(err.key_version, 9);
        assert!(
            ring.open("m1", Field::Ip, &Sealed::from_bytes(vec![0, 0]))
                .is_err(),
            "short"
        );
        assert!(
            super::super::Keyring::default()
                .open("m1", Field::Ip, &sealed)
                .is_err(),
            "no key"
        );
        let other = self::ring(8, 1);
        assert!(other.open("m1", Field::Ip, &sealed).is_err(), "other key");
    }
}
