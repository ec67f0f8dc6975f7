//! The audit checkpoint signer, `PIIVAULT_AUDIT_SIGNER`: an asymmetric KMS key (`kms:<key>`,
//! `ECC_NIST_P256`, signed with `kms:Sign`, so the private key never leaves KMS), or a local
//! Ed25519 key in a file (`file:<path>`) whose seed is wrapped by the KEK for this deployment.
//! What is signed and how it is checked is `crypto::checkpoint`'s.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::kms::kms_error;
use super::{Kek, KekError};
use crate::aws::describe;
use crate::crypto::checkpoint::{PublicKey, SigningSeed};

/// The signer file's `format`.
const FILE_FORMAT: &str = "piivault-audit-signer-1";

/// Where the signer lives, as written in `PIIVAULT_AUDIT_SIGNER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerUri {
    /// An asymmetric KMS key id, alias or ARN.
    Kms(String),
    /// A signer file written by `etl audit signer-init`.
    File(PathBuf),
}

impl FromStr for SignerUri {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.split_once(':') {
            Some(("kms", key)) if !key.is_empty() => Ok(SignerUri::Kms(key.to_owned())),
            Some(("file", path)) if !path.is_empty() => Ok(SignerUri::File(PathBuf::from(path))),
            _ => Err(()),
        }
    }
}

impl std::fmt::Display for SignerUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignerUri::Kms(key) => write!(f, "kms:{key}"),
            SignerUri::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// The signer file: the wrapped seed and, for convenience, the public key (never trusted: the
/// key checkpoints are verified with is derived from the unwrapped seed).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignerFile {
    format: String,
    deployment: String,
    kek: String,
    public_key: String,
    wrapped_seed: String,
}

enum Backend {
    Kms {
        client: aws_sdk_kms::Client,
        key_id: String,
    },
    File(SigningSeed),
}

/// An opened signer and its public key.
pub struct AuditSigner {
    uri: SignerUri,
    public_key: PublicKey,
    backend: Backend,
}

impl AuditSigner {
    /// Opens the signer: asks KMS for the key's public half (and checks it can sign), or reads
    /// the signer file and unwraps its seed with `kek` for `deployment`.
    pub async fn open(
        uri: &SignerUri,
        kek: Option<&Kek>,
        deployment: &str,
    ) -> Result<AuditSigner, KekError> {
        match uri {
            SignerUri::Kms(key_id) => Self::open_kms(uri, key_id).await,
            SignerUri::File(path) => {
                let kek = kek.expect("a file signer is opened with the KEK");
                let seed = read_file(path, kek, deployment).await?;
                Ok(AuditSigner {
                    uri: uri.clone(),
                    public_key: seed.public_key(),
                    backend: Backend::File(seed),
                })
            }
        }
    }

    async fn open_kms(uri: &SignerUri, key_id: &str) -> Result<AuditSigner, KekError> {
        let client = aws_sdk_kms::Client::new(crate::aws::sdk_config().await);
        let out = client
            .get_public_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| kms_error("GetPublicKey", key_id, describe(&e)))?;
        // `KeySpec`, or its deprecated twin `CustomerMasterKeySpec` that older endpoints (and
        // the emulator) return alone.
        #[allow(deprecated)]
        let spec = match (&out.key_spec, &out.customer_master_key_spec) {
            (Some(spec), _) => spec.as_str().to_owned(),
            (None, Some(spec)) => spec.as_str().to_owned(),
            (None, None) => "unknown".to_owned(),
        };
        let usage = out.key_usage.clone();
        let unfit = || KekError::SignerKeySpec {
            key: key_id.to_owned(),
            spec: spec.clone(),
            usage: usage.as_ref().map_or("unknown", |u| u.as_str()).to_owned(),
        };
        if spec != KeySpec::EccNistP256.as_str() || usage != Some(KeyUsageType::SignVerify) {
            return Err(unfit());
        }
        let der = out.public_key.as_ref().ok_or_else(unfit)?;
        let public_key = PublicKey::from_spki(der.as_ref()).map_err(|_| unfit())?;
        Ok(AuditSigner {
            uri: uri.clone(),
            public_key,
            backend: Backend::Kms {
                client,
                key_id: key_id.to_owned(),
            },
        })
    }

    /// The signer as configured (`kms:<key>` or `file:<path>`), for the checkpoint line.
    pub fn uri(&self) -> &SignerUri {
        &self.uri
    }

    /// The public key checkpoints from this signer verify with.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// Signs `message` (ECDSA P-256 SHA-256 in KMS, or Ed25519 here).
    pub async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KekError> {
        match &self.backend {
            Backend::File(seed) => Ok(seed.sign(message)),
            Backend::Kms { client, key_id } => {
                let out = client
                    .sign()
                    .key_id(key_id)
                    .message(Blob::new(message))
                    .message_type(MessageType::Raw)
                    .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
                    .send()
                    .await
                    .map_err(|e| kms_error("Sign", key_id, describe(&e)))?;
                out.signature
                    .map(Blob::into_inner)
                    .ok_or_else(|| KekError::KmsRefused {
                        operation: "Sign",
                        key: key_id.clone(),
                        detail: "the answer held no signature".into(),
                    })
            }
        }
    }
}

/// Creates a signer file at `path` for `deployment`: a new Ed25519 seed wrapped by `kek`, mode
/// 0600. Never overwrites (older checkpoints name the old key). Returns the public key.
pub async fn create_file(path: &Path, kek: &Kek, deployment: &str) -> Result<PublicKey, KekError> {
    let seed = SigningSeed::generate();
    let public_key = seed.public_key();
    let wrapped = kek.wrap_signer_seed(deployment, seed.expose()).await?;
    let file = SignerFile {
        format: FILE_FORMAT.to_owned(),
        deployment: deployment.to_owned(),
        kek: kek.uri().to_string(),
        public_key: public_key.to_base64(),
        wrapped_seed: STANDARD.encode(wrapped),
    };
    let text = serde_json::to_string_pretty(&file).expect("a signer file serializes") + "\n";
    let file_error = |e: std::io::Error| KekError::SignerFile {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(file_error)?;
    out.write_all(text.as_bytes()).map_err(file_error)?;
    out.sync_all().map_err(file_error)?;
    Ok(public_key)
}

/// Reads a signer file and unwraps its seed; checks its deployment and public key.
async fn read_file(path: &Path, kek: &Kek, deployment: &str) -> Result<SigningSeed, KekError> {
    let shown = path.display().to_string();
    let bad = |detail: &str| KekError::SignerFile {
        path: shown.clone(),
        detail: detail.to_owned(),
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(&e.to_string()))?;
    let file: SignerFile = serde_json::from_str(&text)
        .map_err(|_| bad("not a signer file (unreadable JSON or unknown fields)"))?;
    if file.format != FILE_FORMAT {
        return Err(bad("unknown signer file format"));
    }
    if file.deployment != deployment {
        return Err(KekError::SignerDeployment {
            path: shown,
            stored: file.deployment,
            configured: deployment.to_owned(),
        });
    }
    let wrapped = STANDARD
        .decode(&file.wrapped_seed)
        .map_err(|_| bad("wrapped_seed is not base64"))?;
    let unwrap_error = || KekError::SignerUnwrap {
        path: shown.clone(),
        kek: kek.uri().to_string(),
    };
    let plain = kek
        .unwrap_signer_seed(deployment, &wrapped)
        .await?
        .ok_or_else(unwrap_error)?;
    let seed = SigningSeed::from_bytes(&plain).ok_or_else(unwrap_error)?;
    if seed.public_key().to_base64() != file.public_key {
        return Err(bad(
            "its public_key is not the wrapped key's: the file was edited",
        ));
    }
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kek::KekUri;
    use std::os::unix::fs::PermissionsExt;

    async fn file_kek(dir: &Path, byte: u8) -> Kek {
        let path = dir.join(format!("kek{byte}.bin"));
        std::fs::write(&path, [byte; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Kek::open(&KekUri::File(path)).await.unwrap()
    }

    #[test]
    fn parses_both_signer_forms() {
        assert_eq!(
            "kms:alias/audit".parse(),
            Ok(SignerUri::Kms("alias/audit".into()))
        );
        assert_eq!(
            "file:/k/s.json".parse::<SignerUri>().unwrap().to_string(),
            "file:/k/s.json"
        );
        for bad in ["", "kms:", "file:", "/k/s.json", "vault:x"] {
            assert!(bad.parse::<SignerUri>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_signer_file_opens_only_with_its_kek_and_deployment_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let kek = file_kek(dir.path(), 1).await;
        let path = dir.path().join("signer.json");
        let public_key = create_file(&path, &kek, "prod").await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let uri = SignerUri::File(path.clone());
        let signer = AuditSigner::open(&uri, Some(&kek), "prod").await.unwrap();
        assert_eq!(signer.public_key(), &public_key);
        let sig = signer.sign(b"m").await.unwrap();
        public_key.verify(b"m", &sig).unwrap();

        let other = file_kek(dir.path(), 2).await;
        assert!(matches!(
            AuditSigner::open(&uri, Some(&other), "prod").await,
            Err(KekError::SignerUnwrap { .. })
        ));
        assert!(matches!(
            AuditSigner::open(&uri, Some(&kek), "staging").await,
            Err(KekError::SignerDeployment { .. })
        ));
        assert!(matches!(
            create_file(&path, &kek, "prod").await,
            Err(KekError::SignerFile { .. })
        ));
        // A public key swapped into the file is noticed, not trusted.
        let text = std::fs::read_to_string(&path).unwrap();
        let forged = text.replace(
            &public_key.to_base64(),
            &SigningSeed::generate().public_key().to_base64(),
        );
        std::fs::write(&path, forged).unwrap();
        let err = AuditSigner::open(&uri, Some(&kek), "prod")
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("was edited"), "{err}");
    }
}
