//! API keys and the audit chain's hashes (SPEC §9, §10).
//!
//! * An API key is `bzzz_` + 64 hex digits (256 random bits). Only its
//!   SHA-256 is stored: the secret has full entropy, so a slow hash adds
//!   nothing (GitHub and Stripe store keys the same way). Its id is `k`
//!   followed by the first 16 hex digits of that hash, so a presented key
//!   finds its record without a scan, and the full hash is then compared
//!   in constant time.
//! * An audit entry's hash is SHA-256 over a domain tag, the sequence
//!   number, the previous entry's hash and the signed note.

use bzzz_proto::access::{API_KEY_PREFIX, AuditNote};
use bzzz_proto::cluster::WireSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{CryptoError, SecretBytes32};

/// A fresh API key: the secret (shown once), its id and its hash.
pub fn new_api_key() -> Result<(WireSecret, String, String), CryptoError> {
    let raw = SecretBytes32::random()?;
    let secret = WireSecret::new(format!("{API_KEY_PREFIX}{}", hex::encode(raw.expose())));
    let (id, hash) = api_key_hash(secret.expose());
    Ok((secret, id, hash))
}

/// The id and SHA-256 (hex) of a presented key; `None` when it does not
/// have an API key's shape (so no lookup happens at all).
pub fn parse_api_key(secret: &str) -> Option<(String, String)> {
    let body = secret.strip_prefix(API_KEY_PREFIX)?;
    (body.len() == 64
        && body
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| api_key_hash(secret))
}

fn api_key_hash(secret: &str) -> (String, String) {
    let hash = hex::encode(Sha256::digest(secret.as_bytes()));
    (format!("k{}", &hash[..16]), hash)
}

/// The signing key an API key derives (its public half is in the key's
/// record).
pub fn api_key_signer(secret: &str) -> crate::NodeKey {
    let seed = blake3::derive_key("bzzz api key signing v1", secret.as_bytes());
    crate::NodeKey::from_seed(&SecretBytes32::from_bytes(seed))
}

/// The signing key a user's password derives: Argon2id (the default
/// parameters) under a salt from the user name, so the key is as hard to
/// guess as the password and differs from the verifier's hash.
pub fn user_signer(name: &str, password: &str) -> Result<crate::NodeKey, CryptoError> {
    let salt = blake3::derive_key("bzzz user signing salt v1", name.as_bytes());
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    argon2::Argon2::default()
        .hash_password_into(password.as_bytes(), &salt[..16], &mut *seed)
        .map_err(|e| CryptoError::Password(e.to_string()))?;
    Ok(crate::NodeKey::from_seed(&SecretBytes32::from_bytes(*seed)))
}

/// Checks that `public` is an Ed25519 public key in lowercase hex that
/// verification accepts (a point on the curve, not of small order).
pub fn check_public_hex(public: &str) -> Result<(), CryptoError> {
    if public.len() != 64
        || !public
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(CryptoError::InvalidKey(
            "public key (64 lowercase hex digits)",
        ));
    }
    let pk: [u8; 32] = hex::decode(public)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(CryptoError::InvalidKey("public key"))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&pk)
        .map_err(|_| CryptoError::InvalidKey("public key"))?;
    if key.is_weak() {
        return Err(CryptoError::InvalidKey("weak public key"));
    }
    Ok(())
}

/// Checks a principal's signature (hex) over `msg` with its public key
/// (hex).
pub fn verify_hex(public: &str, msg: &[u8], signature: &str) -> Result<(), CryptoError> {
    let pk: [u8; 32] = hex::decode(public)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(CryptoError::InvalidKey("public key"))?;
    let sig: [u8; 64] = hex::decode(signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(CryptoError::BadSignature)?;
    // Strict: no small-order keys, no malleable signatures (a record's
    // public key came from a node that could be hostile).
    let key = ed25519_dalek::VerifyingKey::from_bytes(&pk)
        .map_err(|_| CryptoError::InvalidKey("public key"))?;
    if key.is_weak() {
        return Err(CryptoError::InvalidKey("weak public key"));
    }
    key.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| CryptoError::BadSignature)
}

/// Constant-time comparison of two hex hashes.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The hash of the audit entry `seq` after `prev_hash` carrying `note`.
pub fn audit_hash(seq: u64, prev_hash: &str, note: &AuditNote) -> String {
    let mut h = Sha256::new();
    h.update(b"bzzz audit entry v1\0");
    h.update(seq.to_be_bytes());
    h.update(prev_hash.as_bytes());
    h.update(note.signed_bytes());
    h.update(note.signature.as_bytes());
    hex::encode(h.finalize())
}

/// Checks the accepting node's signature on a note.
pub fn verify_note(note: &AuditNote, public: &[u8; 32]) -> Result<(), CryptoError> {
    let sig: [u8; 64] = hex::decode(&note.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(CryptoError::BadSignature)?;
    crate::verify_ed25519(public, &note.signed_bytes(), &sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_prefix_and_hash_to_their_id() {
        let (secret, id, hash) = new_api_key().expect("key");
        assert!(secret.expose().starts_with("bzzz_"));
        assert_eq!(secret.expose().len(), 5 + 64);
        assert_eq!(
            parse_api_key(secret.expose()),
            Some((id.clone(), hash.clone()))
        );
        assert!(id.starts_with('k') && id.len() == 17);
        assert!(same_hash(&hash, &hash));
        assert!(parse_api_key("bzzz_short").is_none());
        assert!(parse_api_key(&secret.expose().to_uppercase()).is_none());
        assert!(!format!("{secret:?}").contains(&secret.expose()[5..]));
    }
}
