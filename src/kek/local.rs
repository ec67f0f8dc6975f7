//! A key-encryption key in a local file: 32 random bytes, readable by its owner only.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{KekError, context};
use crate::crypto::{KeyVersion, Purpose, aead};

/// A local KEK, loaded and checked. Wraps with AES-256-GCM-SIV ([`aead`]), the context as AAD.
pub struct LocalKek {
    path: PathBuf,
    key: Zeroizing<[u8; 32]>,
}

impl LocalKek {
    /// Reads the key file; refuses one that group or others can read, or that is not 32 bytes.
    pub fn load(path: &Path) -> Result<LocalKek, KekError> {
        let shown = path.display().to_string();
        let read_error = |source| KekError::FileRead {
            path: shown.clone(),
            source,
        };
        let mode = std::fs::metadata(path)
            .map_err(read_error)?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(KekError::FileMode {
                path: shown,
                mode: mode & 0o777,
            });
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(read_error)?);
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != key.len() {
            return Err(KekError::FileLength {
                path: shown,
                len: bytes.len(),
            });
        }
        key.copy_from_slice(&bytes);
        Ok(LocalKek {
            path: path.to_owned(),
            key,
        })
    }

    /// The key file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn wrap(&self, purpose: Purpose, version: KeyVersion, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        aead::encrypt_into(&mut out, &self.key, &aad(purpose, version), plain);
        out
    }

    pub(super) fn unwrap(
        &self,
        purpose: Purpose,
        version: KeyVersion,
        wrapped: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        aead::decrypt(&self.key, &aad(purpose, version), wrapped)
    }
}

fn aad(purpose: Purpose, version: KeyVersion) -> Vec<u8> {
    let mut aad = Vec::new();
    for (name, value) in context(purpose, version) {
        aad.extend_from_slice(name.as_bytes());
        aad.push(b'=');
        aad.extend_from_slice(value.as_bytes());
        aad.push(0);
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path, mode: u32, len: usize) -> PathBuf {
        let path = dir.join("kek.bin");
        std::fs::write(&path, vec![5u8; len]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn refuses_readable_or_misshapen_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(dir.path(), 0o644, 32);
        let err = LocalKek::load(&path).err().unwrap();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        let path = key_file(dir.path(), 0o600, 31);
        assert!(matches!(
            LocalKek::load(&path),
            Err(KekError::FileLength { len: 31, .. })
        ));
        let missing = dir.path().join("none");
        assert!(matches!(
            LocalKek::load(&missing),
            Err(KekError::FileRead { .. })
        ));
    }

    #[test]
    fn wrap_is_bound_to_purpose_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let kek = LocalKek::load(&key_file(dir.path(), 0o600, 32)).unwrap();
        let wrapped = kek.wrap(Purpose::Seal, KeyVersion(1), &[9; 32]);
        assert_eq!(
            &kek.unwrap(Purpose::Seal, KeyVersion(1), &wrapped).unwrap()[..],
            &[9; 32]
        );
        assert!(
            kek.unwrap(Purpose::Token, KeyVersion(1), &wrapped)
                .is_none()
        );
        assert!(kek.unwrap(Purpose::Seal, KeyVersion(2), &wrapped).is_none());
    }
}
