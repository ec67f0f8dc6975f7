//! A key-encryption key in AWS KMS: data keys are wrapped with `Encrypt` and unwrapped with
//! `Decrypt`, both bound to the encryption context `{app, purpose, version, deployment}`
//! (`{app, purpose, version}` for keys wrapped before deployments were bound).

use aws_sdk_kms::primitives::Blob;
use zeroize::Zeroizing;

use super::KekError;
use crate::aws::{CallFailure, describe};
use crate::error::classify::Fault;

/// A KMS key (id, alias or ARN) and a client for it.
pub struct KmsKek {
    key_id: String,
    client: aws_sdk_kms::Client,
}

impl KmsKek {
    /// Prepares a client from the SDK's standard configuration chain.
    pub async fn new(key_id: String) -> KmsKek {
        let client = aws_sdk_kms::Client::new(crate::aws::sdk_config().await);
        KmsKek { key_id, client }
    }

    /// The key id, alias or ARN.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub(super) async fn wrap(
        &self,
        context: &[(&str, String)],
        plain: &[u8],
    ) -> Result<Vec<u8>, KekError> {
        let mut request = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(plain));
        for (name, value) in context {
            request = request.encryption_context(*name, value);
        }
        let output = request
            .send()
            .await
            .map_err(|e| self.error("Encrypt", describe(&e)))?;
        let blob = output.ciphertext_blob.ok_or_else(|| KekError::KmsRefused {
            operation: "Encrypt",
            key: self.key_id.clone(),
            detail: "the answer held no ciphertext".into(),
        })?;
        Ok(blob.into_inner())
    }

    /// `Ok(None)` when KMS says the ciphertext or context does not match this key.
    pub(super) async fn unwrap(
        &self,
        context: &[(&str, String)],
        wrapped: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>, KekError> {
        let mut request = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(wrapped));
        for (name, value) in context {
            request = request.encryption_context(*name, value);
        }
        match request.send().await {
            Ok(output) => Ok(output
                .plaintext
                .map(|blob| Zeroizing::new(blob.into_inner()))),
            Err(e) => {
                let failure = describe(&e);
                match failure.code.as_deref() {
                    Some("InvalidCiphertextException" | "IncorrectKeyException") => Ok(None),
                    _ => Err(self.error("Decrypt", failure)),
                }
            }
        }
    }

    fn error(&self, operation: &'static str, failure: CallFailure) -> KekError {
        kms_error(operation, &self.key_id, failure)
    }
}

/// A failed KMS call on `key` as a [`KekError`]: refused, or a failure that may pass.
pub(super) fn kms_error(operation: &'static str, key: &str, failure: CallFailure) -> KekError {
    let key = key.to_owned();
    let detail = failure.detail;
    match failure.fault {
        Fault::Refused => KekError::KmsRefused {
            operation,
            key,
            detail,
        },
        fault => KekError::KmsUnavailable {
            operation,
            key,
            fault,
            detail,
        },
    }
}
