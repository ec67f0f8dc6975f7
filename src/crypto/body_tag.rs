//! Keyed tags of the user ids a quarantined body names, stored beside the sealed body so that
//! erasure finds a user's rejected messages by tag, without opening a single body.
//!
//! The tag key is derived from the seal key that sealed the body (HMAC-SHA256 as a PRF over a
//! fixed label), so a tag moves with its body: `keys reencrypt` recomputes both, and retiring the
//! seal version leaves no tag anyone can recompute.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::keyring::SealKey;

/// Label deriving the tag key from a seal key.
const LABEL: &[u8] = b"piivault-body-tag-1";

/// `"v<seal version>:" + base64url(HMAC-SHA256(HMAC-SHA256(seal key, label), user_id))`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BodyTag(String);

impl BodyTag {
    /// The text stored in `etl.quarantine.user_tags`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Takes the stored text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl SealKey {
    /// The tag of one user id, for a body sealed with this key.
    pub fn body_tag(&self, user_id: &str) -> BodyTag {
        let mut derive = Hmac::<Sha256>::new_from_slice(self.bytes.as_ref())
            .expect("HMAC accepts keys of any length");
        derive.update(LABEL);
        let mut tag_key = Zeroizing::new([0u8; 32]);
        tag_key.copy_from_slice(&derive.finalize().into_bytes());
        let mut mac = Hmac::<Sha256>::new_from_slice(tag_key.as_slice())
            .expect("HMAC accepts keys of any length");
        mac.update(user_id.as_bytes());
        BodyTag(format!(
            "v{}:{}",
            self.version.0,
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyVersion;

    #[test]
    fn tags_are_deterministic_per_key_and_never_the_token_or_the_value() {
        let a = SealKey::from_unwrapped(KeyVersion(1), &[1; 32]).unwrap();
        let b = SealKey::from_unwrapped(KeyVersion(2), &[2; 32]).unwrap();
        assert_eq!(a.body_tag("victim"), a.body_tag("victim"));
        assert_ne!(a.body_tag("victim"), a.body_tag("victim2"));
        assert_ne!(a.body_tag("victim"), b.body_tag("victim"));
        assert!(a.body_tag("victim").as_str().starts_with("v1:"));
        assert!(!a.body_tag("victim").as_str().contains("victim"));
    }
}
