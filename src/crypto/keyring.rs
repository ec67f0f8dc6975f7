//! Data-key versions and the in-memory keyring. Key bytes are zeroized on drop and never printed.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use zeroize::Zeroizing;

/// Length of every data key (AES-256 and HMAC-SHA256 keys alike).
pub const KEY_LEN: usize = 32;

/// What a data key is for. Seal and token keys are separate key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Purpose {
    /// AES-256-GCM-SIV key sealing originals.
    Seal,
    /// HMAC-SHA256 key computing deterministic tokens.
    Token,
}

impl Purpose {
    /// Name stored in `vault.data_keys.purpose` and used in KMS encryption contexts.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Seal => "seal",
            Purpose::Token => "token",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A purpose name that is neither `seal` nor `token`.
#[derive(Debug, thiserror::Error)]
#[error("unknown key purpose {0:?} (expected seal or token)")]
pub struct UnknownPurpose(pub String);

impl FromStr for Purpose {
    type Err = UnknownPurpose;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "seal" => Ok(Purpose::Seal),
            "token" => Ok(Purpose::Token),
            other => Err(UnknownPurpose(other.to_owned())),
        }
    }
}

/// Version of a data key; 1 for the keys `etl keys init` creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyVersion(pub u32);

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Fresh random key material for a new data key.
pub fn new_key_material() -> Zeroizing<[u8; KEY_LEN]> {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    getrandom::fill(bytes.as_mut()).expect("the operating system's random source failed");
    bytes
}

fn key_bytes(plain: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    (plain.len() == KEY_LEN).then(|| {
        bytes.copy_from_slice(plain);
        bytes
    })
}

/// AES-256-GCM-SIV key of one version. Memory only; wiped on drop.
pub struct SealKey {
    pub(super) version: KeyVersion,
    pub(super) bytes: Zeroizing<[u8; KEY_LEN]>,
}

/// HMAC-SHA256 token key of one version. Memory only; wiped on drop.
pub struct TokenKey {
    pub(super) version: KeyVersion,
    pub(super) bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl SealKey {
    /// Takes unwrapped key material; `None` unless it is exactly 32 bytes.
    pub fn from_unwrapped(version: KeyVersion, plain: &[u8]) -> Option<SealKey> {
        Some(SealKey {
            version,
            bytes: key_bytes(plain)?,
        })
    }

    /// The version values sealed with this key carry.
    pub fn version(&self) -> KeyVersion {
        self.version
    }
}

impl TokenKey {
    /// Takes unwrapped key material; `None` unless it is exactly 32 bytes.
    pub fn from_unwrapped(version: KeyVersion, plain: &[u8]) -> Option<TokenKey> {
        Some(TokenKey {
            version,
            bytes: key_bytes(plain)?,
        })
    }

    /// The version tokens made with this key carry.
    pub fn version(&self) -> KeyVersion {
        self.version
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealKey")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Lifecycle of a data key (`vault.data_keys.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Used for new writes (one per purpose).
    Active,
    /// Superseded: still opens (seal) or verifies (token) old rows until they are moved off it.
    Previous,
    /// A token key being prepared by `keys retokenize`; becomes active when every row has it.
    Pending,
    /// Destroyed: its wrapped bytes are gone (crypto-shredded).
    Retired,
}

impl KeyState {
    /// Name stored in `vault.data_keys.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Previous => "previous",
            KeyState::Pending => "pending",
            KeyState::Retired => "retired",
        }
    }
}

/// A state name not among active, previous, pending, retired.
#[derive(Debug, thiserror::Error)]
#[error("unknown key state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for KeyState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(KeyState::Active),
            "previous" => Ok(KeyState::Previous),
            "pending" => Ok(KeyState::Pending),
            "retired" => Ok(KeyState::Retired),
            other => Err(UnknownState(other.to_owned())),
        }
    }
}

/// Every unwrapped data key a process holds, and which versions are active (new writes) or
/// pending (token rotation in progress).
#[derive(Debug, Default)]
pub struct Keyring {
    seal: BTreeMap<KeyVersion, SealKey>,
    token: BTreeMap<KeyVersion, TokenKey>,
    active_seal: Option<KeyVersion>,
    active_token: Option<KeyVersion>,
    pending_token: Option<KeyVersion>,
}

impl Keyring {
    /// Adds a seal key in a state (`Active` makes it the one new values are sealed with).
    pub fn add_seal(&mut self, key: SealKey, state: KeyState) {
        if state == KeyState::Active {
            self.active_seal = Some(key.version);
        }
        self.seal.insert(key.version, key);
    }

    /// Adds a token key in a state.
    pub fn add_token(&mut self, key: TokenKey, state: KeyState) {
        match state {
            KeyState::Active => self.active_token = Some(key.version),
            KeyState::Pending => self.pending_token = Some(key.version),
            _ => {}
        }
        self.token.insert(key.version, key);
    }

    /// The seal key new values are sealed with.
    pub fn active_seal(&self) -> Option<&SealKey> {
        self.seal.get(&self.active_seal?)
    }

    /// The token key new tokens are computed with.
    pub fn active_token(&self) -> Option<&TokenKey> {
        self.token.get(&self.active_token?)
    }

    /// The token key `keys retokenize` is moving rows to, if a token rotation is in progress.
    pub fn pending_token(&self) -> Option<&TokenKey> {
        self.token.get(&self.pending_token?)
    }

    /// The seal key of one version, for opening.
    pub fn seal_key(&self, version: KeyVersion) -> Option<&SealKey> {
        self.seal.get(&version)
    }

    /// Every seal key held, oldest first (erasure tags a user id under each).
    pub fn seal_keys(&self) -> impl Iterator<Item = &SealKey> {
        self.seal.values()
    }

    /// The token key of one version, for verifying.
    pub fn token_key(&self, version: KeyVersion) -> Option<&TokenKey> {
        self.token.get(&version)
    }
}
