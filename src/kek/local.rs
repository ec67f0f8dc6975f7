//! A key-encryption key in a local file: 32 random bytes, readable by its owner only.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::KekError;
use crate::crypto::aead;

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

    /// Wraps with the context pairs ([`super::WrapContext`]) as AAD.
    pub(super) fn wrap(&self, context: &[(&str, String)], plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        aead::encrypt_into(&mut out, &self.key, &aad(context), plain);
        out
    }

    pub(super) fn unwrap(
        &self,
        context: &[(&str, String)],
        wrapped: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        aead::decrypt(&self.key, &aad(context), wrapped)
    }
}

/// `name=value\0` for each pair in order. Names are fixed; values never hold NUL (purposes,
/// numbers, and deployment names checked in `config`), so the encoding is unambiguous. Without a
/// deployment pair this is byte for byte the AAD of keys wrapped before deployments were bound.
fn aad(context: &[(&str, String)]) -> Vec<u8> {
    let mut aad = Vec::new();
    for (name, value) in context {
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
    use crate::crypto::{KeyVersion, Purpose};
    use crate::kek::WrapContext;

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

    fn pairs(
        purpose: Purpose,
        version: u32,
        deployment: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        WrapContext {
            purpose,
            version: KeyVersion(version),
            deployment,
        }
        .pairs()
    }

    #[test]
    fn wrap_is_bound_to_purpose_version_and_deployment() {
        let dir = tempfile::tempdir().unwrap();
        let kek = LocalKek::load(&key_file(dir.path(), 0o600, 32)).unwrap();
        let prod = pairs(Purpose::Seal, 1, Some("prod-a"));
        let wrapped = kek.wrap(&prod, &[9; 32]);
        assert_eq!(&kek.unwrap(&prod, &wrapped).unwrap()[..], &[9; 32]);
        for other in [
            pairs(Purpose::Token, 1, Some("prod-a")),
            pairs(Purpose::Seal, 2, Some("prod-a")),
            pairs(Purpose::Seal, 1, Some("staging-b")),
            pairs(Purpose::Seal, 1, None),
        ] {
            assert!(kek.unwrap(&other, &wrapped).is_none(), "{other:?}");
        }
        let legacy = kek.wrap(&pairs(Purpose::Seal, 1, None), &[7; 32]);
        assert!(kek.unwrap(&prod, &legacy).is_none());
        assert_eq!(
            &kek.unwrap(&pairs(Purpose::Seal, 1, None), &legacy).unwrap()[..],
            &[7; 32]
        );
    }

    #[test]
    fn the_legacy_aad_is_unchanged() {
        assert_eq!(
            aad(&pairs(Purpose::Token, 2, None)),
            b"app=piivault\0purpose=token\0version=2\0"
        );
        assert_eq!(
            aad(&pairs(Purpose::Token, 2, Some("prod-eu1"))),
            b"app=piivault\0purpose=token\0version=2\0deployment=prod-eu1\0"
        );
    }
}
