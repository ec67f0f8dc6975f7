//! Key-encryption keys: wrap and unwrap data keys. The only module that reads key files or calls KMS.
//!
//! `PIIVAULT_KEK=file:<path>` (32 random bytes, mode 0600; development or single-host use) or
//! `PIIVAULT_KEK=kms:<key-id|alias|arn>` (AWS KMS; the SDK's usual configuration chain applies).
//! Every wrap is bound to its context `{app: piivault, purpose, version, deployment}` (a
//! [`WrapContext`]), so a wrapped key copied into another deployment's database does not unwrap
//! there even when both share the KEK. Keys wrapped before deployments were bound carry the
//! legacy context `{app, purpose, version}` (`vault.data_keys.deployment` NULL) until
//! `etl keys rewrap` moves them.

mod kms;
mod local;
pub mod signer;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use zeroize::Zeroizing;

use crate::crypto::{KeyVersion, Purpose};
use crate::error::classify::Fault;

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
        "cannot unwrap the {purpose} key v{version} ({bound}) with PIIVAULT_KEK={kek}: wrong key-encryption key, \
         wrong context (a key copied from another deployment?), or the wrapped key was altered.\nThe key was wrapped under {stored}; set PIIVAULT_KEK to that key."
    )]
    Unwrap {
        purpose: Purpose,
        version: KeyVersion,
        /// The deployment the row claims, as shown: `deployment X` or `legacy context`.
        bound: String,
        kek: String,
        stored: String,
    },
    /// A stored key was wrapped for another deployment than the one this process serves.
    #[error(
        "vault.data_keys belongs to deployment {stored}; this etl is configured for {configured} ({how}).\n\
         The {purpose} key v{version} was wrapped for {stored}. If this database is {stored}'s, set \
         PIIVAULT_DEPLOYMENT={stored}; otherwise the keys were copied from {stored} and must not be used here."
    )]
    WrongDeployment {
        purpose: Purpose,
        version: KeyVersion,
        stored: String,
        configured: String,
        /// Where the configured name came from.
        how: &'static str,
    },
    /// KMS could not be reached, throttled the call or failed on its side: a failure that may
    /// pass, which a running `etl run` waits out.
    #[error(
        "AWS KMS {} ({operation} on {key}): {detail}.\n{}",
        fault.what(),
        kms_advice(*fault)
    )]
    KmsUnavailable {
        operation: &'static str,
        key: String,
        /// Unreachable, throttled or a server error (never [`Fault::Refused`]).
        fault: Fault,
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
    /// The audit signer file cannot be read or is not one `etl audit signer-init` wrote.
    #[error(
        "cannot use the audit signer file {path}: {detail}.\nCreate a signer with `etl audit signer-init --output {path}`, or point PIIVAULT_AUDIT_SIGNER at the right file."
    )]
    SignerFile { path: String, detail: String },
    /// The signer file was made for another deployment.
    #[error(
        "the audit signer file {path} belongs to deployment {stored}; this etl serves {configured}.\nUse that deployment's signer file, or create one for {configured} with `etl audit signer-init`."
    )]
    SignerDeployment {
        path: String,
        stored: String,
        configured: String,
    },
    /// The signer file's key does not unwrap under this KEK.
    #[error(
        "the audit signer file {path} does not unwrap with PIIVAULT_KEK={kek}: another key-encryption key, or the file was altered.\nSet PIIVAULT_KEK to the key the signer was created under."
    )]
    SignerUnwrap { path: String, kek: String },
    /// The KMS key cannot sign checkpoints.
    #[error(
        "the KMS key {key} is a {spec} key for {usage}; an audit signer must be an ECC_NIST_P256 key for SIGN_VERIFY.\nCreate one with `aws kms create-key --key-spec ECC_NIST_P256 --key-usage SIGN_VERIFY` and set PIIVAULT_AUDIT_SIGNER=kms:<its id>."
    )]
    SignerKeySpec {
        key: String,
        spec: String,
        usage: String,
    },
}

/// What one wrapped data key is bound to: KMS `EncryptionContext`, local AAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrapContext<'a> {
    /// Seal or token.
    pub purpose: Purpose,
    /// The key's version.
    pub version: KeyVersion,
    /// The deployment the key is wrapped for; `None` for the legacy context of keys wrapped
    /// before deployments were bound (`vault.data_keys.deployment` NULL).
    pub deployment: Option<&'a str>,
}

impl WrapContext<'_> {
    /// The context as ordered pairs: `app`, `purpose`, `version`, then `deployment` when bound.
    /// The legacy context is exactly the first three, as wrapped before deployments existed.
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![
            ("app", "piivault".to_owned()),
            ("purpose", self.purpose.as_str().to_owned()),
            ("version", self.version.to_string()),
        ];
        if let Some(deployment) = self.deployment {
            pairs.push(("deployment", deployment.to_owned()));
        }
        pairs
    }

    /// How error messages name the binding.
    fn describe(&self) -> String {
        match self.deployment {
            Some(d) => format!("deployment {d}"),
            None => "legacy context, no deployment".to_owned(),
        }
    }
}

enum Backend {
    Local(LocalKek),
    Kms(KmsKek),
}

/// An opened key-encryption key, and the deployment it serves (`PIIVAULT_DEPLOYMENT`).
pub struct Kek {
    backend: Backend,
    deployment: Option<String>,
}

impl Kek {
    /// Opens the KEK a URI names: reads and checks a key file, or prepares a KMS client. It
    /// serves the default deployment (the database's name) until [`Kek::for_deployment`].
    pub async fn open(uri: &KekUri) -> Result<Kek, KekError> {
        let backend = match uri {
            KekUri::File(path) => Backend::Local(LocalKek::load(path)?),
            KekUri::Kms(key) => Backend::Kms(KmsKek::new(key.clone()).await),
        };
        Ok(Kek {
            backend,
            deployment: None,
        })
    }

    /// The same KEK serving an explicitly named deployment (`None`: the database's name).
    pub fn for_deployment(mut self, deployment: Option<String>) -> Kek {
        self.deployment = deployment;
        self
    }

    /// The deployment named in the configuration, if any (else the database's name applies).
    pub fn deployment(&self) -> Option<&str> {
        self.deployment.as_deref()
    }

    /// Wraps the local audit signer's seed for `deployment` (context
    /// `{app, purpose: audit-signer, deployment}`: it never unwraps as a data key).
    pub async fn wrap_signer_seed(
        &self,
        deployment: &str,
        seed: &[u8],
    ) -> Result<Vec<u8>, KekError> {
        self.wrap_pairs(&signer_pairs(deployment), seed).await
    }

    /// Unwraps a signer seed wrapped by [`Kek::wrap_signer_seed`]; `None` when it does not open.
    pub async fn unwrap_signer_seed(
        &self,
        deployment: &str,
        wrapped: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>, KekError> {
        self.unwrap_pairs(&signer_pairs(deployment), wrapped).await
    }

    /// The URI recorded next to keys this KEK wraps.
    pub fn uri(&self) -> KekUri {
        match &self.backend {
            Backend::Local(k) => KekUri::File(k.path().to_owned()),
            Backend::Kms(k) => KekUri::Kms(k.key_id().to_owned()),
        }
    }

    /// Wraps one data key, bound to `context`.
    pub async fn wrap(&self, context: &WrapContext<'_>, plain: &[u8]) -> Result<Vec<u8>, KekError> {
        self.wrap_pairs(&context.pairs(), plain).await
    }

    async fn wrap_pairs(
        &self,
        pairs: &[(&'static str, String)],
        plain: &[u8],
    ) -> Result<Vec<u8>, KekError> {
        match &self.backend {
            Backend::Local(k) => Ok(k.wrap(pairs, plain)),
            Backend::Kms(k) => k.wrap(pairs, plain).await,
        }
    }

    async fn unwrap_pairs(
        &self,
        pairs: &[(&'static str, String)],
        wrapped: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>, KekError> {
        match &self.backend {
            Backend::Local(k) => Ok(k.unwrap(pairs, wrapped)),
            Backend::Kms(k) => k.unwrap(pairs, wrapped).await,
        }
    }

    /// Unwraps one data key under the context it was wrapped with; `stored` is the KEK URI
    /// recorded with it (for the error message).
    pub async fn unwrap(
        &self,
        context: &WrapContext<'_>,
        wrapped: &[u8],
        stored: &str,
    ) -> Result<Zeroizing<Vec<u8>>, KekError> {
        let unwrap_error = || KekError::Unwrap {
            purpose: context.purpose,
            version: context.version,
            bound: context.describe(),
            kek: self.uri().to_string(),
            stored: stored.to_owned(),
        };
        self.unwrap_pairs(&context.pairs(), wrapped)
            .await?
            .ok_or_else(unwrap_error)
    }
}

/// The wrap context of the audit signer's seed.
fn signer_pairs(deployment: &str) -> Vec<(&'static str, String)> {
    vec![
        ("app", "piivault".to_owned()),
        ("purpose", "audit-signer".to_owned()),
        ("deployment", deployment.to_owned()),
    ]
}

/// What to do about a KMS failure that may pass.
fn kms_advice(fault: Fault) -> &'static str {
    match fault {
        Fault::Throttled => {
            "KMS's request quota is exhausted: lower the request rate or ask AWS for a higher quota; retry later."
        }
        Fault::ServerError => {
            "The fault is on KMS's side (see the AWS Health Dashboard); retry later."
        }
        Fault::Unreachable | Fault::Refused => {
            "Check AWS_ENDPOINT_URL / AWS_REGION and the network, then retry."
        }
    }
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

    #[test]
    fn the_legacy_context_is_the_old_three_pairs_and_a_deployment_adds_a_fourth() {
        let legacy = WrapContext {
            purpose: Purpose::Seal,
            version: KeyVersion(3),
            deployment: None,
        };
        let names = |c: &WrapContext| c.pairs().into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(&legacy), ["app", "purpose", "version"]);
        let bound = WrapContext {
            deployment: Some("prod-eu1"),
            ..legacy
        };
        assert_eq!(names(&bound), ["app", "purpose", "version", "deployment"]);
        assert_eq!(bound.pairs()[3].1, "prod-eu1");
        assert_eq!(bound.pairs()[2].1, "3");
    }
}
