//! The operator credential: a password chosen at setup.
//!
//! The password derives the operator's Ed25519 key (Argon2id, see
//! [`OPERATOR_KEY_MEMORY`]); only the public half is stored (in the
//! genesis record, then in admin-signed changes). The node the operator
//! logs into derives the key and signs an [`auth_bytes`] authorization for
//! each admin signature; the threshold signers check that signature and
//! never see the password (issue #22). Older clusters stored a PHC
//! verifier instead ([`OperatorPassword::verifier`], still used for users).

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use zeroize::Zeroizing;

use crate::CryptoError;

/// Shortest accepted operator password.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest accepted operator password (bounds the hashing work).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// An operator password. Zeroizes, never prints.
#[derive(Clone)]
pub struct OperatorPassword(Zeroizing<String>);

impl fmt::Debug for OperatorPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OperatorPassword(..)")
    }
}

impl OperatorPassword {
    /// Accepts a password for checking (any length up to the maximum).
    pub fn new(s: String) -> Result<Self, CryptoError> {
        let s = Zeroizing::new(s);
        if s.len() > MAX_PASSWORD_LEN {
            return Err(CryptoError::Password(format!(
                "longer than {MAX_PASSWORD_LEN} bytes"
            )));
        }
        Ok(Self(s))
    }

    /// Accepts a password chosen at setup: at least 12 characters.
    pub fn new_for_setup(s: String) -> Result<Self, CryptoError> {
        let p = Self::new(s)?;
        if p.0.chars().count() < MIN_PASSWORD_LEN {
            return Err(CryptoError::Password(format!(
                "must be at least {MIN_PASSWORD_LEN} characters"
            )));
        }
        Ok(p)
    }

    /// Reads a password file: the first line, without its line ending.
    pub fn from_file_contents(contents: Zeroizing<String>) -> Result<Self, CryptoError> {
        let line = contents.lines().next().unwrap_or("");
        Self::new(line.to_owned())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The Argon2id PHC string (random salt, default parameters).
    pub fn verifier(&self) -> Result<String, CryptoError> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| CryptoError::Rng(e.to_string()))?;
        let salt =
            SaltString::encode_b64(&salt).map_err(|e| CryptoError::Password(e.to_string()))?;
        argon2::Argon2::default()
            .hash_password(self.0.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| CryptoError::Password(e.to_string()))
    }

    /// Whether this password matches a PHC verifier (false when the
    /// verifier does not parse).
    pub fn matches(&self, verifier: &str) -> bool {
        PasswordHash::new(verifier).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(self.0.as_bytes(), &h)
                .is_ok()
        })
    }

    /// [`OperatorPassword::matches`] with the Argon2 working memory given
    /// by the caller and reused across calls: a process that checks many
    /// passwords keeps one buffer instead of letting the allocator keep a
    /// fresh 19 MiB block per thread. False when the verifier does not
    /// parse, is not Argon2, or asks for more than [`MAX_ARGON2_MEMORY`].
    pub fn matches_with(&self, verifier: &str, memory: &mut ArgonMemory) -> bool {
        use subtle::ConstantTimeEq as _;
        let Ok(hash) = PasswordHash::new(verifier) else {
            return false;
        };
        let (Ok(algorithm), Ok(params), Some(expected), Some(salt)) = (
            argon2::Algorithm::try_from(hash.algorithm),
            argon2::Params::try_from(&hash),
            hash.hash,
            hash.salt,
        ) else {
            return false;
        };
        if params.block_count() * argon2::Block::SIZE > MAX_ARGON2_MEMORY {
            return false;
        }
        let version = match hash.version.map(argon2::Version::try_from) {
            None => argon2::Version::default(),
            Some(Ok(v)) => v,
            Some(Err(_)) => return false,
        };
        let mut salt_buf = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
            return false;
        };
        if memory.0.len() < params.block_count() {
            memory
                .0
                .resize(params.block_count(), argon2::Block::default());
        }
        let mut out = Zeroizing::new(vec![0u8; expected.len()]);
        let ok = argon2::Argon2::new(algorithm, version, params.clone())
            .hash_password_into_with_memory(
                self.0.as_bytes(),
                salt,
                &mut out,
                &mut memory.0[..params.block_count()],
            )
            .is_ok();
        ok && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
    }
}

/// Argon2id memory of the operator's key derivation: 64 MiB, with 3
/// passes and one lane, RFC 9106's second recommended setting (the
/// argon2 crate's default, 19 MiB and 2 passes, is OWASP's minimum).
/// Only the node the operator logs into runs it, once per login.
pub const OPERATOR_KEY_MEMORY_KIB: u32 = 64 * 1024;
/// Passes of the operator's key derivation.
pub const OPERATOR_KEY_PASSES: u32 = 3;

impl OperatorPassword {
    /// The operator's signing key for `cluster`: Argon2id
    /// ([`OPERATOR_KEY_MEMORY_KIB`], [`OPERATOR_KEY_PASSES`]) of the
    /// password under a salt from the cluster name, so one password gives
    /// different keys in different clusters. Its 64 MiB of working memory
    /// is allocated for the call and freed after (above glibc's largest
    /// mmap threshold, so it goes back to the system at once).
    pub fn operator_key(&self, cluster: &str) -> Result<crate::NodeKey, CryptoError> {
        let mut memory = ArgonMemory::default();
        let params = argon2::Params::new(OPERATOR_KEY_MEMORY_KIB, OPERATOR_KEY_PASSES, 1, Some(32))
            .map_err(|e| CryptoError::Password(e.to_string()))?;
        let salt = blake3::derive_key("bzzz operator signing salt v1", cluster.as_bytes());
        if memory.0.len() < params.block_count() {
            memory
                .0
                .resize(params.block_count(), argon2::Block::default());
        }
        let blocks = params.block_count();
        let mut seed = Zeroizing::new([0u8; 32]);
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password_into_with_memory(
                self.0.as_bytes(),
                &salt[..16],
                &mut *seed,
                &mut memory.0[..blocks],
            )
            .map_err(|e| CryptoError::Password(e.to_string()))?;
        Ok(crate::NodeKey::from_seed(
            &crate::SecretBytes32::from_bytes(*seed),
        ))
    }
}

/// What the operator's key signs to authorize one threshold signature:
/// the cluster, the purpose's kind, the time (unix seconds), a fresh
/// nonce, and the SHA-256 of the exact bytes the admin key will sign.
/// A signer that records it can only have that same message signed again,
/// within the time window, and each signer takes a nonce once.
pub fn auth_bytes(cluster: &str, kind: &str, time: u64, nonce: &str, target: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    let mut out = b"bzzz/operator-auth/v1\0".to_vec();
    for part in [cluster, kind, nonce] {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(&time.to_be_bytes());
    out.extend_from_slice(&sha2::Sha256::digest(target));
    out
}

/// Largest Argon2 working memory a verifier may ask for (the default is
/// 19 MiB).
pub const MAX_ARGON2_MEMORY: usize = 256 << 20;

/// Reusable Argon2 working memory (see [`OperatorPassword::matches_with`]).
#[derive(Default)]
pub struct ArgonMemory(Vec<argon2::Block>);

impl fmt::Debug for ArgonMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArgonMemory({} blocks)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_accepts_only_the_password() {
        let p = OperatorPassword::new_for_setup("correct horse battery".into()).expect("ok");
        let v = p.verifier().expect("hash");
        assert!(v.starts_with("$argon2id$"));
        assert!(!v.contains("correct horse"));
        assert!(p.matches(&v));
        assert!(
            !OperatorPassword::new("correct horse batterY".into())
                .expect("ok")
                .matches(&v)
        );
        assert!(!p.matches("garbage"));
        let mut mem = ArgonMemory::default();
        let other = OperatorPassword::new("correct horse batterY".into()).expect("ok");
        for _ in 0..2 {
            assert!(p.matches_with(&v, &mut mem));
            assert!(!other.matches_with(&v, &mut mem));
        }
        assert!(!p.matches_with("garbage", &mut mem));
        assert!(OperatorPassword::new_for_setup("short".into()).is_err());
        assert_eq!(format!("{p:?}"), "OperatorPassword(..)");
    }

    #[test]
    fn the_operator_key_depends_on_password_and_cluster() {
        let p = OperatorPassword::new("correct horse battery".into()).expect("ok");
        let q = OperatorPassword::new("correct horse batterY".into()).expect("ok");
        let a = p.operator_key("lab").expect("key").public();
        assert_eq!(a, p.operator_key("lab").expect("key").public());
        assert_ne!(a, q.operator_key("lab").expect("key").public());
        assert_ne!(a, p.operator_key("lab2").expect("key").public());
        let b = auth_bytes("lab", "admin_change", 1, "n", b"msg");
        assert_ne!(b, auth_bytes("lab", "admin_change", 1, "n", b"msg2"));
        assert_ne!(b, auth_bytes("lab", "admin_change", 2, "n", b"msg"));
        assert_ne!(b, auth_bytes("lab", "message", 1, "n", b"msg"));
        assert_ne!(b, auth_bytes("la", "badmin_change", 1, "n", b"msg"));
    }
}
