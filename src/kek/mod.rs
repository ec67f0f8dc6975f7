//! Key-encryption keys: wrap and unwrap data keys. The only module that reads key files or calls KMS.
//!
//! `PIIVAULT_KEK=file:<path>` (32 random bytes, mode 0600; development or single-host use) or
//! `PIIVAULT_KEK=kms:<key-id|alias|arn>` (AWS KMS; the SDK's usual configuration chain applies).
//! Every wrap is bound to its context `{app: piivault, purpose, version}`.

mod kms;
mod local;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use zeroize::Zeroizing;

use crate::crypto::{KeyVersion, Purpose};

pub use kms::KmsKek;
pub use local::LocalKek;

/// Where the key-encryption key lives, as written in `PIIVAULT_KEK` and `vault.data_keys.kek_uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KekUri {
    /// A local key file.
    File(PathBuf),
    /// An AWS KMS key id, alias or ARN.
    Kms(String),
}

impl FromStr for KekUri {
    type Err = KekError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("file", path)) if !path.is_empty() => Ok(KekUri::File(PathBuf::from(path))),
            Some(("kms", key)) if !key.is_empty() => Ok(KekUri::Kms(key.to_owned())),
            _ => Err(KekError::BadUri(match s.split_once(':') {
                Some((scheme, _)) if scheme.len() <= 8 => format!("{scheme}:"),
                _ => "none".to_owned(),
            })),
        }
    }
}

impl fmt::Display for KekUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KekUri::File(path) => write!(f, "file:{}", path.display()),
            KekUri::Kms(key) => write!(f, "kms:{key}"),
        }
    }
}

/// Failures of the key-encryption layer. Messages name the key and what to do; never key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    /// `PIIVAULT_KEK` unset.
    #[error(
        "PIIVAULT_KEK is not set.\nSet it to file:<path> (a 32-byte key file, mode 0600) or kms:<key-id|alias|arn>."
    )]
    Missing,
    /// `PIIVAULT_KEK` not of either form. Only the scheme is shown: the value might be a
    /// mistakenly pasted key.
    #[error(
        "PIIVAULT_KEK (scheme {0:?}) is not a key-encryption key URI.\nUse file:<path> or kms:<key-id|alias|arn>."
    )]
    BadUri(String),
    /// The key file cannot be read.
    #[error(
        "cannot read the key-encryption key file {path}: {source}.\nCreate one with `(umask 077; head -c 32 /dev/urandom > {path})`."
    )]
    FileRead {
        path: String,
        source: std::io::Error,
    },
    /// The key file is readable by group or others.
    #[error(
        "the key-encryption key file {path} is readable by group or others (mode {mode:03o}).\nRun `chmod 600 {path}`."
    )]
    FileMode { path: String, mode: u32 },
    /// The key file is not 32 bytes.
    #[error(
        "the key-encryption key file {path} holds {len} bytes; it must hold exactly 32 random bytes."
    )]
    FileLength { path: String, len: usize },
    /// A wrapped data key did not unwrap under this KEK.
    #[error(
        "cannot unwrap the {purpose} key v{version} with PIIVAULT_KEK={kek}: wrong key-encryption key, \
         wrong context, or the wrapped key was altered.\nThe key was wrapped under {stored}; set PIIVAULT_KEK to that key."
    )]
    Unwrap {
        purpose: Purpose,
        version: KeyVersion,
        kek: String,
        stored: String,
    },
    /// KMS could not be reached.
    #[error(
        "AWS KMS is unreachable ({operation} on {key}): {detail}.\nCheck AWS_ENDPOINT_URL / AWS_REGION and the network, then retry."
    )]
    KmsUnavailable {
        operation: &'static str,
        key: String,
        detail: String,
    },
    /// KMS answered with an error.
    #[error(
        "AWS KMS refused {operation} on {key}: {detail}.\nCheck the key id and that this identity may call kms:{operation}."
    )]
    KmsRefused {
        operation: &'static str,
        key: String,
        detail: String,
    },
}

/// An opened key-encryption key.
pub enum Kek {
    /// Local key file.
    Local(LocalKek),
    /// AWS KMS key.
    Kms(KmsKek),
}

impl Kek {
    /// Opens the KEK a URI names: reads and checks a key file, or prepares a KMS client.
    pub async fn open(uri: &KekUri) -> Result<Kek, KekError> {
        Ok(match uri {
            KekUri::File(path) => Kek::Local(LocalKek::load(path)?),
            KekUri::Kms(key) => Kek::Kms(KmsKek::new(key.clone()).await),
        })
    }

    /// The URI recorded next to keys this KEK wraps.
    pub fn uri(&self) -> KekUri {
        match self {
            Kek::Local(k) => KekUri::File(k.path().to_owned()),
            Kek::Kms(k) => KekUri::Kms(k.key_id().to_owned()),
        }
    }

    /// Wraps one data key.
    pub async fn wrap(
        &self,
        purpose: Purpose,
        version: KeyVersion,
        plain: &[u8],
    ) -> Result<Vec<u8>, KekError> {
        match self {
            Kek::Local(k) => Ok(k.wrap(purpose, version, plain)),
            Kek::Kms(k) => k.wrap(purpose, version, plain).await,
        }
    }

    /// Unwraps one data key; `stored` is the KEK URI recorded with it (for the error message).
    pub async fn unwrap(
        &self,
        purpose: Purpose,
        version: KeyVersion,
        wrapped: &[u8],
        stored: &str,
    ) -> Result<Zeroizing<Vec<u8>>, KekError> {
        let unwrap_error = || KekError::Unwrap {
            purpose,
            version,
            kek: self.uri().to_string(),
            stored: stored.to_owned(),
        };
        match self {
            Kek::Local(k) => k.unwrap(purpose, version, wrapped).ok_or_else(unwrap_error),
            Kek::Kms(k) => k
                .unwrap(purpose, version, wrapped)
                .await?
                .ok_or_else(unwrap_error),
        }
    }
}

/// The wrap context as ordered pairs (KMS encryption context; local AAD).
fn context(purpose: Purpose, version: KeyVersion) -> [(&'static str, String); 3] {
    [
        ("app", "piivault".to_owned()),
        ("purpose", purpose.as_str().to_owned()),
        ("version", version.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_uri_forms() {
        assert_eq!(
            "file:/k/kek.bin".parse::<KekUri>().unwrap(),
            KekUri::File("/k/kek.bin".into())
        );
        assert_eq!(
            "kms:alias/x".parse::<KekUri>().unwrap(),
            KekUri::Kms("alias/x".into())
        );
        assert_eq!(
            "kms:alias/x".parse::<KekUri>().unwrap().to_string(),
            "kms:alias/x"
        );
        for bad in ["", "file:", "kms:", "/k/kek.bin", "vault:x"] {
            assert!(
                matches!(bad.parse::<KekUri>(), Err(KekError::BadUri(_))),
                "{bad}"
            );
        }
    }
}
