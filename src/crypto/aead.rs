//! AES-256-GCM-SIV under a fresh random nonce, stored as `nonce (12 bytes) || ciphertext+tag`.
//! The one AEAD routine behind sealed values and local key wrapping.

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use rand::Rng;
use zeroize::Zeroizing;

/// Nonce length (96 bits).
pub const NONCE_LEN: usize = 12;
/// Authentication tag length.
pub const TAG_LEN: usize = 16;

/// Appends `nonce || ciphertext+tag` of `plaintext` to `out`.
pub fn encrypt_into(out: &mut Vec<u8>, key: &[u8; 32], aad: &[u8], plaintext: &[u8]) {
    // MUST be unique per value, even for SIV. The thread's CSPRNG (ChaCha12, seeded and
    // periodically reseeded from the OS) instead of a getrandom syscall per value: half the cost
    // of sealing a short field.
    let mut bytes = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut bytes);
    let nonce = Nonce::from(bytes);
    let ciphertext = Aes256GcmSiv::new(key.into())
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("AES-GCM-SIV encryption of an in-memory buffer cannot fail");
    out.reserve(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(nonce.as_slice());
    out.extend_from_slice(&ciphertext);
}

/// Opens `nonce || ciphertext+tag`; `None` for a wrong key, wrong AAD or altered bytes.
pub fn decrypt(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    Aes256GcmSiv::new(key.into())
        .decrypt(
            &Nonce::try_from(nonce).ok()?,
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}
