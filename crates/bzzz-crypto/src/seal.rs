//! Envelope encryption to a node (age, X25519).
//!
//! Each node has an age identity derived from its identity seed with a
//! domain-separated hash, so no second secret file exists; its public
//! recipient (`age1…`) travels in the node's signed announcement. Shares are
//! sealed to it in transit and stay sealed at rest.

use std::fmt;
use std::str::FromStr;

use bech32::ToBase32;
use zeroize::Zeroizing;

use crate::{CryptoError, NodeKey};

const AGE_KEY_CONTEXT: &str = "bzzz 2026-11 node age identity v1";

/// A node's age identity. Zeroizes (inside age), never prints.
pub struct AgeIdentity(age::x25519::Identity);

impl fmt::Debug for AgeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgeIdentity({}, ..)", self.recipient())
    }
}

impl AgeIdentity {
    /// The identity derived from a node key.
    pub fn derive(node: &NodeKey) -> Result<Self, CryptoError> {
        let seed = node.seed();
        let key = Zeroizing::new(blake3::derive_key(AGE_KEY_CONTEXT, seed.expose()));
        let encoded = Zeroizing::new(
            bech32::encode("age-secret-key-", key.to_base32(), bech32::Variant::Bech32)
                .map_err(|_| CryptoError::InvalidKey("age identity encoding"))?
                .to_uppercase(),
        );
        let id = age::x25519::Identity::from_str(&encoded)
            .map_err(|_| CryptoError::InvalidKey("age identity"))?;
        Ok(Self(id))
    }

    /// The public recipient, `age1…`.
    pub fn recipient(&self) -> String {
        self.0.to_public().to_string()
    }

    /// Opens what [`seal`] sealed to this identity.
    pub fn open(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        age::decrypt(&self.0, sealed)
            .map(Zeroizing::new)
            .map_err(|e| CryptoError::Seal(format!("cannot open: {e}")))
    }
}

/// A role key (one epoch of a key chain): an age X25519 identity made at
/// random. Its secret only ever leaves sealed to a reader's node
/// identity. Zeroizes (inside age), never prints.
pub struct RoleSecret(age::x25519::Identity);

impl fmt::Debug for RoleSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoleSecret({}, ..)", self.public())
    }
}

impl RoleSecret {
    /// A fresh key.
    pub fn generate() -> Self {
        Self(age::x25519::Identity::generate())
    }

    /// The public recipient, `age1…`.
    pub fn public(&self) -> String {
        self.0.to_public().to_string()
    }

    /// The secret sealed to a node's `age1…` recipient.
    pub fn seal_to(&self, recipient: &str) -> Result<Vec<u8>, CryptoError> {
        use age::secrecy::ExposeSecret as _;
        let text = self.0.to_string();
        seal(recipient, text.expose_secret().as_bytes())
    }

    /// Opens a sealed secret with this node's identity and checks it is
    /// the key of `public`.
    pub fn open(node: &AgeIdentity, sealed: &[u8], public: &str) -> Result<Self, CryptoError> {
        let text = node.open(sealed)?;
        let s = std::str::from_utf8(&text).map_err(|_| CryptoError::InvalidKey("role key"))?;
        let id = age::x25519::Identity::from_str(s.trim())
            .map_err(|_| CryptoError::InvalidKey("role key"))?;
        let me = Self(id);
        if me.public() != public {
            return Err(CryptoError::InvalidKey(
                "role key does not match its public key",
            ));
        }
        Ok(me)
    }

    /// Opens what [`seal`] sealed to this key's recipient.
    pub fn decrypt(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        age::decrypt(&self.0, sealed)
            .map(Zeroizing::new)
            .map_err(|e| CryptoError::Seal(format!("cannot open: {e}")))
    }
}

/// Checks an `age1…` recipient string.
pub fn parse_recipient(recipient: &str) -> Result<(), CryptoError> {
    age::x25519::Recipient::from_str(recipient)
        .map(|_| ())
        .map_err(|_| CryptoError::InvalidKey("not an age X25519 recipient"))
}

/// Encrypts `plaintext` to an `age1…` recipient.
pub fn seal(recipient: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let r = age::x25519::Recipient::from_str(recipient)
        .map_err(|_| CryptoError::InvalidKey("not an age X25519 recipient"))?;
    age::encrypt(&r, plaintext).map_err(|e| CryptoError::Seal(e.to_string()))
}

/// Seals `plaintext` to several age X25519 recipients at once (one file
/// key, wrapped for each): any one of them opens it with
/// [`AgeIdentity::open`].
pub fn seal_many(recipients: &[String], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    use std::io::Write as _;
    let rs = recipients
        .iter()
        .map(|r| age::x25519::Recipient::from_str(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| CryptoError::InvalidKey("not an age X25519 recipient"))?;
    let enc = age::Encryptor::with_recipients(rs.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| CryptoError::Seal(e.to_string()))?;
    let mut out = Vec::with_capacity(plaintext.len() + 64 * rs.len() + 128);
    let mut w = enc
        .wrap_output(&mut out)
        .map_err(|e| CryptoError::Seal(e.to_string()))?;
    w.write_all(plaintext)
        .map_err(|e| CryptoError::Seal(e.to_string()))?;
    w.finish().map_err(|e| CryptoError::Seal(e.to_string()))?;
    Ok(out)
}

/// scrypt work factor (log2 N) of the at-rest passphrase layer: 2^16 with
/// age's r = 8 is 64 MiB and about 0.2 s, paid once per start and once per
/// re-deal.
pub const PASSPHRASE_LOG_N: u8 = 16;

/// Wraps already sealed bytes once more under a passphrase (age scrypt),
/// for shares at rest on a disk that also holds the node key.
pub fn passphrase_wrap(passphrase: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut r =
        age::scrypt::Recipient::new(age::secrecy::SecretString::from(passphrase.to_owned()));
    r.set_work_factor(PASSPHRASE_LOG_N);
    age::encrypt(&r, sealed).map_err(|e| CryptoError::Seal(e.to_string()))
}

/// Whether `bytes` look like [`passphrase_wrap`]'s output (an age file
/// whose first stanza is scrypt).
pub fn is_passphrase_wrapped(bytes: &[u8]) -> bool {
    bytes.starts_with(b"age-encryption.org/v1\n-> scrypt ")
}

/// Undoes [`passphrase_wrap`]; an error for a wrong passphrase or bytes
/// that are not passphrase-wrapped.
pub fn passphrase_unwrap(passphrase: &str, wrapped: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut id =
        age::scrypt::Identity::new(age::secrecy::SecretString::from(passphrase.to_owned()));
    id.set_max_work_factor(PASSPHRASE_LOG_N + 2);
    age::decrypt(&id, wrapped).map_err(|e| CryptoError::Seal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passphrase_layer_opens_only_with_its_passphrase() {
        let w = passphrase_wrap("correct horse battery", b"sealed share").expect("wrap");
        assert_eq!(
            passphrase_unwrap("correct horse battery", &w).expect("unwrap"),
            b"sealed share"
        );
        assert!(passphrase_unwrap("wrong horse battery", &w).is_err());
        assert!(passphrase_unwrap("correct horse battery", b"sealed share").is_err());
        assert!(is_passphrase_wrapped(&w));
        assert!(!is_passphrase_wrapped(b"sealed share"));
    }

    #[test]
    fn sealed_to_many_opens_with_each_and_no_other() {
        let ids: Vec<AgeIdentity> = (0..3)
            .map(|_| AgeIdentity::derive(&NodeKey::generate().expect("rng")).expect("age"))
            .collect();
        let to: Vec<String> = ids[..2].iter().map(AgeIdentity::recipient).collect();
        let sealed = seal_many(&to, b"for members").expect("seal");
        assert_eq!(&*ids[0].open(&sealed).expect("a"), b"for members");
        assert_eq!(&*ids[1].open(&sealed).expect("b"), b"for members");
        assert!(ids[2].open(&sealed).is_err());
        assert!(seal_many(&["junk".into()], b"x").is_err());
    }

    #[test]
    fn sealed_data_opens_only_with_the_right_node() {
        let a = NodeKey::generate().expect("rng");
        let b = NodeKey::generate().expect("rng");
        let ia = AgeIdentity::derive(&a).expect("derive");
        assert_eq!(
            ia.recipient(),
            AgeIdentity::derive(&a).expect("again").recipient()
        );
        let sealed = seal(&ia.recipient(), b"share").expect("seal");
        assert!(!sealed.windows(5).any(|w| w == b"share"));
        assert_eq!(&ia.open(&sealed).expect("opens")[..], b"share");
        let ib = AgeIdentity::derive(&b).expect("derive");
        assert!(ib.open(&sealed).is_err());
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(ia.open(&bad).is_err(), "tampering is detected");
        assert!(!format!("{ia:?}").contains("SECRET"));
    }

    #[test]
    fn role_keys_travel_sealed_and_check_their_public_key() {
        let a = AgeIdentity::derive(&NodeKey::generate().expect("rng")).expect("a");
        let b = AgeIdentity::derive(&NodeKey::generate().expect("rng")).expect("b");
        let k = RoleSecret::generate();
        let sealed = k.seal_to(&a.recipient()).expect("seal");
        let opened = RoleSecret::open(&a, &sealed, &k.public()).expect("opens");
        assert!(RoleSecret::open(&b, &sealed, &k.public()).is_err());
        let other = RoleSecret::generate();
        assert!(RoleSecret::open(&a, &sealed, &other.public()).is_err());
        let record = seal(&k.public(), b"payload").expect("seal");
        assert_eq!(&opened.decrypt(&record).expect("decrypt")[..], b"payload");
        assert!(other.decrypt(&record).is_err());
        assert!(!format!("{k:?}").contains("SECRET"));
    }
}
