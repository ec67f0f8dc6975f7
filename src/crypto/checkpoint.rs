//! Signed audit checkpoints: what is signed, how a checkpoint is written as one JSON line, and
//! how its signature is checked. Pure computation; the signing keys live in `kek::signer`.
//!
//! A checkpoint says "on deployment D at time T the audit trail ended at row N with hash H".
//! Kept off-host, it proves later that no row up to N was deleted — which the hash chain alone
//! cannot, since the table's owner can delete the newest rows and rewind the head.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{self, KeyPair};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The JSON line's `format`, and the domain tag that starts every signed message.
pub const FORMAT: &str = "piivault-audit-checkpoint-1";

/// DER prefix of a P-256 public key's SubjectPublicKeyInfo (id-ecPublicKey, prime256v1), before
/// the 65-byte uncompressed point.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// DER prefix of an Ed25519 public key's SubjectPublicKeyInfo, before the 32-byte key.
const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// What a checkpoint attests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The deployment whose trail this is (`PIIVAULT_DEPLOYMENT`, else the database's name).
    pub deployment: String,
    /// The last audit row's id.
    pub head_id: i64,
    /// That row's chain hash.
    pub head_hash: Vec<u8>,
    /// The database's time when the head was read, RFC 3339 (signed as written).
    pub at: String,
}

impl Checkpoint {
    /// The bytes signed: the domain tag, then each field length-prefixed, so no two different
    /// checkpoints (or any other piivault signature) share a message.
    pub fn message(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        for field in [
            FORMAT.as_bytes(),
            self.deployment.as_bytes(),
            &self.head_id.to_be_bytes(),
            &self.head_hash,
            self.at.as_bytes(),
        ] {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field);
        }
        out
    }
}

/// A signature algorithm piivault signs checkpoints with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Ed25519: the local signer (`file:`), its key wrapped by the KEK.
    Ed25519,
    /// ECDSA on P-256 with SHA-256, DER signature: an asymmetric KMS key (`ECC_NIST_P256`).
    EcdsaP256Sha256,
}

impl Algorithm {
    /// The name in the JSON line.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
        }
    }
}

/// A checkpoint that does not hold up. Messages say what failed; never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Not a checkpoint line this version reads.
    #[error("not a piivault checkpoint ({0})")]
    Malformed(String),
    /// A public key that is neither an Ed25519 nor a P-256 SubjectPublicKeyInfo.
    #[error("the public key is not an Ed25519 or P-256 key in SubjectPublicKeyInfo form")]
    UnknownKey,
    /// The checkpoint names another key than the one trusted.
    #[error("it was signed by another key than the trusted one")]
    OtherKey,
    /// The signature does not match the checkpoint's fields.
    #[error("its signature does not hold: the checkpoint was edited or forged")]
    BadSignature,
}

/// A public key in SubjectPublicKeyInfo (DER) form, of a known algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    algorithm: Algorithm,
    spki: Vec<u8>,
}

impl PublicKey {
    /// Reads a DER SubjectPublicKeyInfo (as KMS `GetPublicKey` returns it).
    pub fn from_spki(spki: &[u8]) -> Result<PublicKey, CheckpointError> {
        let algorithm =
            if spki.len() == P256_SPKI_PREFIX.len() + 65 && spki.starts_with(P256_SPKI_PREFIX) {
                Algorithm::EcdsaP256Sha256
            } else if spki.len() == ED25519_SPKI_PREFIX.len() + 32
                && spki.starts_with(ED25519_SPKI_PREFIX)
            {
                Algorithm::Ed25519
            } else {
                return Err(CheckpointError::UnknownKey);
            };
        Ok(PublicKey {
            algorithm,
            spki: spki.to_vec(),
        })
    }

    /// Reads a key written as PEM (`-----BEGIN PUBLIC KEY-----`) or as bare base64 of the DER.
    pub fn from_text(text: &str) -> Result<PublicKey, CheckpointError> {
        let body: String = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = STANDARD
            .decode(body.as_bytes())
            .map_err(|_| CheckpointError::UnknownKey)?;
        PublicKey::from_spki(&der)
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Base64 of the DER, as written in the JSON line.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.spki)
    }

    /// PEM, for `openssl` and for keeping next to the checkpoints.
    pub fn to_pem(&self) -> String {
        let b64 = self.to_base64();
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// Checks `signature` over `message`.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> Result<(), CheckpointError> {
        let (alg, raw): (&dyn signature::VerificationAlgorithm, &[u8]) = match self.algorithm {
            Algorithm::Ed25519 => (&signature::ED25519, &self.spki[ED25519_SPKI_PREFIX.len()..]),
            Algorithm::EcdsaP256Sha256 => (
                &signature::ECDSA_P256_SHA256_ASN1,
                &self.spki[P256_SPKI_PREFIX.len()..],
            ),
        };
        signature::UnparsedPublicKey::new(alg, raw)
            .verify(message, sig)
            .map_err(|_| CheckpointError::BadSignature)
    }
}

/// The local signer's private key: an Ed25519 seed (32 bytes), zeroized on drop.
pub struct SigningSeed(Zeroizing<[u8; 32]>);

impl SigningSeed {
    /// A new random seed.
    pub fn generate() -> SigningSeed {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut seed[..]).expect("the operating system's random source failed");
        SigningSeed(seed)
    }

    /// A seed from its 32 bytes (unwrapped from the signer file); `None` for another length.
    pub fn from_bytes(bytes: &[u8]) -> Option<SigningSeed> {
        let mut seed = Zeroizing::new([0u8; 32]);
        if bytes.len() != seed.len() {
            return None;
        }
        seed.copy_from_slice(bytes);
        Some(SigningSeed(seed))
    }

    /// The seed's bytes, to wrap.
    pub fn expose(&self) -> &[u8] {
        &self.0[..]
    }

    fn pair(&self) -> signature::Ed25519KeyPair {
        signature::Ed25519KeyPair::from_seed_unchecked(&self.0[..])
            .expect("any 32 bytes are an Ed25519 seed")
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(self.pair().public_key().as_ref());
        PublicKey {
            algorithm: Algorithm::Ed25519,
            spki,
        }
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair().sign(message).as_ref().to_vec()
    }
}

impl std::fmt::Debug for SigningSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSeed(***)")
    }
}

/// A checkpoint with its signature, as one JSON line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// What is attested.
    pub checkpoint: Checkpoint,
    /// Which signer made it (`kms:<key>` or `file:<path>`): informative, not trusted.
    pub signer: String,
    /// The key that signed, as the line claims it.
    pub public_key: PublicKey,
    /// The signature over [`Checkpoint::message`].
    pub signature: Vec<u8>,
}

/// The JSON line's fields.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    format: String,
    deployment: String,
    head_id: i64,
    head_hash: String,
    at: String,
    signer: String,
    algorithm: String,
    public_key: String,
    signature: String,
}

impl SignedCheckpoint {
    /// The JSON line.
    pub fn to_line(&self) -> String {
        let line = Line {
            format: FORMAT.to_owned(),
            deployment: self.checkpoint.deployment.clone(),
            head_id: self.checkpoint.head_id,
            head_hash: hex::encode(&self.checkpoint.head_hash),
            at: self.checkpoint.at.clone(),
            signer: self.signer.clone(),
            algorithm: self.public_key.algorithm.as_str().to_owned(),
            public_key: self.public_key.to_base64(),
            signature: STANDARD.encode(&self.signature),
        };
        serde_json::to_string(&line).expect("a checkpoint serializes")
    }

    /// Reads a JSON line; checks its shape, not its signature ([`SignedCheckpoint::verify`]).
    pub fn from_line(text: &str) -> Result<SignedCheckpoint, CheckpointError> {
        let bad = |what: &str| CheckpointError::Malformed(what.to_owned());
        let line: Line = serde_json::from_str(text).map_err(|e| {
            CheckpointError::Malformed(format!("not the checkpoint JSON: {}", json_error_class(&e)))
        })?;
        if line.format != FORMAT {
            return Err(bad("unknown format"));
        }
        let public_key = PublicKey::from_spki(
            &STANDARD
                .decode(&line.public_key)
                .map_err(|_| bad("public_key is not base64"))?,
        )?;
        if line.algorithm != public_key.algorithm.as_str() {
            return Err(bad("algorithm does not match the public key"));
        }
        Ok(SignedCheckpoint {
            checkpoint: Checkpoint {
                deployment: line.deployment,
                head_id: line.head_id,
                head_hash: hex::decode(&line.head_hash).map_err(|_| bad("head_hash is not hex"))?,
                at: line.at,
            },
            signer: line.signer,
            public_key,
            signature: STANDARD
                .decode(&line.signature)
                .map_err(|_| bad("signature is not base64"))?,
        })
    }

    /// Checks that `trusted` made the signature over these fields.
    pub fn verify(&self, trusted: &PublicKey) -> Result<(), CheckpointError> {
        if &self.public_key != trusted {
            return Err(CheckpointError::OtherKey);
        }
        trusted.verify(&self.checkpoint.message(), &self.signature)
    }
}

/// A short name of a serde_json error's class (its message may quote the input).
fn json_error_class(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "bad syntax",
        serde_json::error::Category::Data => "missing, unknown or mistyped fields",
        serde_json::error::Category::Eof => "cut short",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            deployment: "prod-eu1".into(),
            head_id: 42,
            head_hash: vec![7; 32],
            at: "2026-12-01T10:00:00.123456Z".into(),
        }
    }

    fn signed(seed: &SigningSeed) -> SignedCheckpoint {
        let checkpoint = checkpoint();
        SignedCheckpoint {
            signature: seed.sign(&checkpoint.message()),
            checkpoint,
            signer: "file:/k/signer.json".into(),
            public_key: seed.public_key(),
        }
    }

    #[test]
    fn a_signed_line_round_trips_and_verifies() {
        let seed = SigningSeed::generate();
        let line = signed(&seed).to_line();
        let back = SignedCheckpoint::from_line(&line).unwrap();
        assert_eq!(back, signed(&seed));
        back.verify(&seed.public_key()).unwrap();
        let pem = seed.public_key().to_pem();
        assert_eq!(PublicKey::from_text(&pem).unwrap(), seed.public_key());
    }

    #[test]
    fn any_edited_field_or_another_key_fails() {
        let seed = SigningSeed::generate();
        let good = signed(&seed);
        let trusted = seed.public_key();
        let mut edits = Vec::new();
        for edit in 0..4 {
            let mut c = good.clone();
            match edit {
                0 => c.checkpoint.head_id -= 1,
                1 => c.checkpoint.head_hash[0] ^= 1,
                2 => c.checkpoint.at = "2026-12-02T10:00:00.123456Z".into(),
                _ => c.checkpoint.deployment = "staging".into(),
            }
            edits.push(c);
        }
        for c in edits {
            assert_eq!(c.verify(&trusted), Err(CheckpointError::BadSignature));
        }
        let other = SigningSeed::generate();
        assert_eq!(
            good.verify(&other.public_key()),
            Err(CheckpointError::OtherKey)
        );
        // A forger who swaps in their own key and signature is caught by the trusted key.
        let forged = signed(&other);
        assert_eq!(forged.verify(&trusted), Err(CheckpointError::OtherKey));
    }

    #[test]
    fn fields_are_length_prefixed_so_boundaries_cannot_shift() {
        let a = Checkpoint {
            deployment: "ab".into(),
            ..checkpoint()
        };
        let b = Checkpoint {
            deployment: "a".into(),
            at: format!("b{}", checkpoint().at),
            ..checkpoint()
        };
        assert_ne!(a.message(), b.message());
    }

    #[test]
    fn a_kms_p256_key_is_read_and_its_der_signatures_checked() {
        // A P-256 key pair made here stands in for KMS: GetPublicKey returns this DER form and
        // Sign (ECDSA_SHA_256) an ASN.1 DER signature.
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .unwrap();
        let pair = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        let key = PublicKey::from_spki(&spki).unwrap();
        assert_eq!(key.algorithm(), Algorithm::EcdsaP256Sha256);
        let message = checkpoint().message();
        let sig = pair.sign(&rng, &message).unwrap();
        key.verify(&message, sig.as_ref()).unwrap();
        assert_eq!(
            key.verify(b"another message", sig.as_ref()),
            Err(CheckpointError::BadSignature)
        );
    }

    #[test]
    fn malformed_lines_and_keys_are_refused_without_echoing_them() {
        for bad in ["", "{}", "not json 10.1.2.3", r#"{"format":"x"}"#] {
            let err = SignedCheckpoint::from_line(bad).unwrap_err();
            assert!(matches!(err, CheckpointError::Malformed(_)), "{bad}: {err}");
            assert!(!err.to_string().contains("10.1.2.3"));
        }
        assert_eq!(
            PublicKey::from_spki(&[0x30, 0x00]),
            Err(CheckpointError::UnknownKey)
        );
        assert_eq!(format!("{:?}", SigningSeed::generate()), "SigningSeed(***)");
    }
}
