//! Node identity and secret types.
//!
//! * [`NodeKey`]: the node's Ed25519 identity key. It names the node (its
//!   libp2p peer id is derived from the public half), authenticates its
//!   connections (Noise) and signs what it announces. It zeroizes on drop and
//!   never prints.
//! * [`keyfile`]: the versioned on-disk format of that key, written with mode
//!   0600 and replaced atomically.
//!
//! * [`threshold`]: the master key (BIP39), the cluster admin key derived
//!   from it, its t-of-n FROST sharing, threshold signing and reconstruction.
//! * [`seal`]: age envelope encryption to a node.
//! * [`records`]: signing and checking cluster records and join tokens.
//! * [`operator`]: the operator credential (Argon2id).
//!
//! Every secret is a distinct type that zeroizes on drop and whose `Debug`
//! prints `(..)`.

pub mod access;
pub mod ca;
pub mod keyfile;
pub mod operator;
pub mod records;
pub mod seal;
pub mod threshold;

use std::fmt;

use ed25519_dalek::{Signer, Verifier};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("random number generator failed: {0}")]
    Rng(String),
    #[error("invalid key material: {0}")]
    InvalidKey(&'static str),
    #[error("signature does not verify")]
    BadSignature,
    #[error("threshold key: {0}")]
    Threshold(String),
    #[error("invalid share: {0}")]
    BadShare(String),
    #[error("envelope: {0}")]
    Seal(String),
    #[error("operator password: {0}")]
    Password(String),
    #[error("record: {0}")]
    Record(String),
    #[error("{0}")]
    Token(String),
    #[error("key file {path}: {problem}")]
    KeyFile { path: String, problem: String },
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// 32 secret bytes that zeroize on drop and never print.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes32([u8; 32]);

impl SecretBytes32 {
    /// Fresh bytes from the operating system's CSPRNG.
    pub fn random() -> Result<Self, CryptoError> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| CryptoError::Rng(e.to_string()))?;
        Ok(Self(b))
    }

    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// Borrow the secret. Callers must not copy it into non-zeroizing storage.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes32(..)")
    }
}

/// A node's Ed25519 identity key.
#[derive(Clone)]
pub struct NodeKey {
    // ed25519-dalek's SigningKey zeroizes on drop (feature `zeroize`).
    signing: ed25519_dalek::SigningKey,
}

impl NodeKey {
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self::from_seed(&SecretBytes32::random()?))
    }

    pub fn from_seed(seed: &SecretBytes32) -> Self {
        Self {
            signing: ed25519_dalek::SigningKey::from_bytes(seed.expose()),
        }
    }

    /// The 32-byte seed (secret), e.g. to build the libp2p keypair.
    pub fn seed(&self) -> SecretBytes32 {
        SecretBytes32(self.signing.to_bytes())
    }

    pub fn public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey(public={}, ..)", hex::encode(self.public()))
    }
}

/// Verifies a plain Ed25519 signature.
pub fn verify_ed25519(public: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> Result<(), CryptoError> {
    let vk = ed25519_dalek::VerifyingKey::from_bytes(public)
        .map_err(|_| CryptoError::InvalidKey("not an Ed25519 public key"))?;
    vk.verify(msg, &ed25519_dalek::Signature::from_bytes(sig))
        .map_err(|_| CryptoError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let k = NodeKey::generate().expect("rng");
        let seed_hex = hex::encode(k.seed().expose());
        let shown = format!("{k:?} {:?}", k.seed());
        assert!(!shown.contains(&seed_hex), "{shown}");
        assert!(shown.contains("(..)"));
    }

    #[test]
    fn signatures_verify_and_tampering_is_detected() {
        let k = NodeKey::generate().expect("rng");
        let sig = k.sign(b"hello");
        verify_ed25519(&k.public(), b"hello", &sig).expect("verifies");
        assert!(verify_ed25519(&k.public(), b"hellO", &sig).is_err());
        let other = NodeKey::generate().expect("rng");
        assert!(verify_ed25519(&other.public(), b"hello", &sig).is_err());
    }

    #[test]
    fn seed_round_trip_gives_the_same_key() {
        let k = NodeKey::generate().expect("rng");
        let k2 = NodeKey::from_seed(&k.seed());
        assert_eq!(k.public(), k2.public());
    }
}
