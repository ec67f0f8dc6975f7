//! Tokens and sealed values. Pure computation: no I/O, no SQL, no key storage.
//!
//! Keys enter only as unwrapped bytes from [`crate::kek`] and leave only as tokens and ciphertexts.

pub mod aead;
mod body_tag;
pub mod chain;
pub mod checkpoint;
mod keyring;
mod seal;
mod token;

pub use body_tag::BodyTag;
pub use keyring::{
    KeyState, KeyVersion, Keyring, Purpose, SealKey, TokenKey, UnknownPurpose, new_key_material,
};
pub use seal::{FORMAT_2_PREFIX, Field, OpenFailed, Place, SealFormat, Sealed};
pub use token::Token;
