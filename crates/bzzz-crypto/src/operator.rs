//! The operator credential: a password chosen at setup, checked with
//! Argon2id. Only its PHC verifier is stored (in the signed genesis record).

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
}
