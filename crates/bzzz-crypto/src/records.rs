//! Signing and checking cluster records ([`bzzz_proto::cluster::Signed`]).
//!
//! The signed bytes are `domain || 0x00 || body`, where the domain names the
//! record kind, so a signature on one kind can never pass as another.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bzzz_proto::cluster::{Genesis, JoinTokenBody, MembershipCert, RECORD_VERSION, Signed};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::CryptoError;

/// Record kinds and their signature domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    Genesis,
    MembershipCert,
    JoinToken,
    OperatorMessage,
    AdminChange,
    KeyEpoch,
    /// A DHT record body (node-signed; records of the admin role are
    /// operator messages over these bytes, threshold-signed).
    DhtRecord,
    /// A checkpoint of the audit chain (threshold-signed).
    AuditCheckpoint,
}

impl Domain {
    fn tag(self) -> &'static [u8] {
        match self {
            Domain::Genesis => b"bzzz/genesis/v1",
            Domain::MembershipCert => b"bzzz/member-cert/v1",
            Domain::JoinToken => b"bzzz/join-token/v1",
            Domain::OperatorMessage => b"bzzz/operator-message/v1",
            Domain::AdminChange => b"bzzz/admin-change/v1",
            Domain::KeyEpoch => b"bzzz/key-epoch/v1",
            Domain::DhtRecord => b"bzzz/dht-record/v1",
            Domain::AuditCheckpoint => b"bzzz/audit-checkpoint/v1",
        }
    }
}

/// The exact bytes a signature covers.
pub fn signing_bytes(domain: Domain, body: &[u8]) -> Vec<u8> {
    let tag = domain.tag();
    let mut out = Vec::with_capacity(tag.len() + 1 + body.len());
    out.extend_from_slice(tag);
    out.push(0);
    out.extend_from_slice(body);
    out
}

/// Serializes a record body to the JSON text that gets signed.
pub fn body_text<T: Serialize>(body: &T) -> Result<String, CryptoError> {
    serde_json::to_string(body).map_err(|e| CryptoError::Record(e.to_string()))
}

/// Wraps a body and a signature made over [`signing_bytes`].
pub fn signed(body: String, signature: &[u8; 64]) -> Signed {
    Signed {
        body,
        signature: hex::encode(signature),
    }
}

/// Parses an admin public key (hex).
pub fn parse_public_key(hexed: &str) -> Result<[u8; 32], CryptoError> {
    let b = hex::decode(hexed).map_err(|_| CryptoError::InvalidKey("public key is not hex"))?;
    b.try_into()
        .map_err(|_| CryptoError::InvalidKey("public key is not 32 bytes"))
}

fn signature_bytes(hexed: &str) -> Result<[u8; 64], CryptoError> {
    let b = hex::decode(hexed).map_err(|_| CryptoError::BadSignature)?;
    b.try_into().map_err(|_| CryptoError::BadSignature)
}

/// Checks a record's signature under `admin_public_key`, then parses it.
pub fn open<T: DeserializeOwned>(
    record: &Signed,
    domain: Domain,
    admin_public_key: &[u8; 32],
) -> Result<T, CryptoError> {
    if record.body.len() > 64 * 1024 {
        return Err(CryptoError::Record("record larger than 64 KiB".into()));
    }
    let sig = signature_bytes(&record.signature)?;
    crate::verify_ed25519(
        admin_public_key,
        &signing_bytes(domain, record.body.as_bytes()),
        &sig,
    )?;
    serde_json::from_str(&record.body).map_err(|e| CryptoError::Record(e.to_string()))
}

/// Checks an audit checkpoint: signed by `admin_public_key` under the
/// checkpoint domain, a known version, for `cluster`, well formed.
pub fn open_checkpoint(
    record: &Signed,
    admin_public_key: &[u8; 32],
    cluster: &str,
) -> Result<bzzz_proto::access::AuditCheckpoint, CryptoError> {
    let c: bzzz_proto::access::AuditCheckpoint =
        open(record, Domain::AuditCheckpoint, admin_public_key)?;
    if c.v != RECORD_VERSION {
        return Err(CryptoError::Record(format!(
            "checkpoint version {} unknown",
            c.v
        )));
    }
    if c.cluster != cluster {
        return Err(CryptoError::Record("checkpoint of another cluster".into()));
    }
    c.validate().map_err(CryptoError::Record)?;
    Ok(c)
}

/// Checks an admin change: signed by `admin_public_key` under the admin
/// change domain, a known version, for `cluster`, with a valid action.
pub fn open_admin_change(
    record: &Signed,
    admin_public_key: &[u8; 32],
    cluster: &str,
) -> Result<bzzz_proto::cluster::AdminChange, CryptoError> {
    let c: bzzz_proto::cluster::AdminChange = open(record, Domain::AdminChange, admin_public_key)?;
    if c.v != RECORD_VERSION {
        return Err(CryptoError::Record(format!(
            "admin change version {} unknown",
            c.v
        )));
    }
    if c.cluster != cluster {
        return Err(CryptoError::Record(
            "admin change is for another cluster".into(),
        ));
    }
    if let bzzz_proto::cluster::AdminAction::PutRole { role } = &c.action {
        role.validate().map_err(CryptoError::Record)?;
    }
    Ok(c)
}

/// Checks a key epoch record: signed by `admin_public_key` under the key
/// epoch domain, for `cluster` and that key, well formed, and its
/// commitment keeps the admin public key with the record's threshold.
pub fn open_epoch(
    record: &Signed,
    admin_public_key: &[u8; 32],
    cluster: &str,
) -> Result<bzzz_proto::cluster::KeyEpoch, CryptoError> {
    let e: bzzz_proto::cluster::KeyEpoch = open(record, Domain::KeyEpoch, admin_public_key)?;
    if e.v != RECORD_VERSION {
        return Err(CryptoError::Record(format!(
            "key epoch version {} unknown",
            e.v
        )));
    }
    if e.cluster != cluster || parse_public_key(&e.admin_public_key)? != *admin_public_key {
        return Err(CryptoError::Record(
            "key epoch is for another cluster".into(),
        ));
    }
    e.validate().map_err(CryptoError::Record)?;
    let group = crate::threshold::GroupKey::from_commitment_hex(&e.commitment, e.threshold)?;
    if group.public() != *admin_public_key {
        return Err(CryptoError::Record(
            "key epoch commitment does not keep the admin public key".into(),
        ));
    }
    Ok(e)
}

/// Opens a genesis record that names its own admin key (self-signed), and
/// checks that key is `expected` when one is given.
pub fn open_genesis(record: &Signed, expected: Option<&[u8; 32]>) -> Result<Genesis, CryptoError> {
    let unverified: Genesis =
        serde_json::from_str(&record.body).map_err(|e| CryptoError::Record(e.to_string()))?;
    let pk = parse_public_key(&unverified.admin_public_key)?;
    if let Some(expected) = expected
        && *expected != pk
    {
        return Err(CryptoError::Record(
            "genesis is for a different cluster admin key".into(),
        ));
    }
    let g: Genesis = open(record, Domain::Genesis, &pk)?;
    if g.v != RECORD_VERSION {
        return Err(CryptoError::Record(format!(
            "genesis version {} unknown",
            g.v
        )));
    }
    Ok(g)
}

/// Checks a membership certificate: signed by `admin_public_key`, naming
/// that key, for `node_id` when given.
pub fn open_cert(
    record: &Signed,
    admin_public_key: &[u8; 32],
    node_id: Option<&bzzz_proto::NodeId>,
) -> Result<MembershipCert, CryptoError> {
    let c: MembershipCert = open(record, Domain::MembershipCert, admin_public_key)?;
    if parse_public_key(&c.admin_public_key)? != *admin_public_key {
        return Err(CryptoError::Record(
            "certificate names another admin key".into(),
        ));
    }
    if let Some(id) = node_id
        && c.node_id != *id
    {
        return Err(CryptoError::Record(format!(
            "certificate is for node {}, not {id}",
            c.node_id
        )));
    }
    Ok(c)
}

/// Prefix of join tokens.
pub const TOKEN_PREFIX: &str = "bzzzjoin1.";

/// Encodes a signed join token as one string: `bzzzjoin1.<body>.<sig>`.
pub fn encode_token(record: &Signed) -> Result<String, CryptoError> {
    let sig = signature_bytes(&record.signature)?;
    Ok(format!(
        "{TOKEN_PREFIX}{}.{}",
        B64.encode(record.body.as_bytes()),
        B64.encode(sig)
    ))
}

/// Decodes a token string without checking its signature (that needs the
/// cluster's admin key: see [`check_token`]). Errors say what is wrong.
pub fn decode_token(token: &str) -> Result<(Signed, JoinTokenBody), CryptoError> {
    let bad = |m: &str| CryptoError::Token(m.to_owned());
    let rest = token
        .trim()
        .strip_prefix(TOKEN_PREFIX)
        .ok_or_else(|| bad("not a BZZZ join token (it must start with 'bzzzjoin1.')"))?;
    if rest.len() > 16 * 1024 {
        return Err(bad("join token is too long"));
    }
    let (body, sig) = rest
        .split_once('.')
        .ok_or_else(|| bad("join token is truncated"))?;
    let body = B64
        .decode(body)
        .map_err(|_| bad("join token body is not base64url"))?;
    let sig = B64
        .decode(sig)
        .map_err(|_| bad("join token signature is not base64url"))?;
    let body = String::from_utf8(body).map_err(|_| bad("join token body is not text"))?;
    let parsed: JoinTokenBody =
        serde_json::from_str(&body).map_err(|_| bad("join token body does not parse"))?;
    if sig.len() != 64 {
        return Err(bad("join token signature has the wrong length"));
    }
    Ok((
        Signed {
            body,
            signature: hex::encode(sig),
        },
        parsed,
    ))
}

/// Why a join token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("{0}")]
    Malformed(String),
    #[error(
        "join token is not signed by this cluster's admin key (forged or from another cluster)"
    )]
    Forged,
    #[error("join token expired at {expires_at} (unix seconds); it is now {now}")]
    Expired { expires_at: u64, now: u64 },
}

/// Checks a join token against a cluster's admin key and the clock.
pub fn check_token(
    token: &str,
    admin_public_key: &[u8; 32],
    now: u64,
) -> Result<JoinTokenBody, TokenRefusal> {
    let (record, _) = decode_token(token).map_err(|e| TokenRefusal::Malformed(e.to_string()))?;
    let body: JoinTokenBody =
        open(&record, Domain::JoinToken, admin_public_key).map_err(|_| TokenRefusal::Forged)?;
    if parse_public_key(&body.admin_public_key).ok() != Some(*admin_public_key) {
        return Err(TokenRefusal::Forged);
    }
    if now >= body.expires_at {
        return Err(TokenRefusal::Expired {
            expires_at: body.expires_at,
            now,
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threshold::MasterKey;

    fn token(master: &MasterKey, expires_at: u64) -> String {
        let admin = master.admin_key();
        let body = JoinTokenBody {
            v: 1,
            cluster: "lab".into(),
            admin_public_key: hex::encode(admin.public()),
            id: "00".into(),
            expires_at,
            bootstrap: vec!["/ip4/127.0.0.1/tcp/1".into()],
            uses: 1,
        };
        let text = body_text(&body).expect("json");
        let sig = admin.sign(&signing_bytes(Domain::JoinToken, text.as_bytes()));
        encode_token(&signed(text, &sig)).expect("encode")
    }

    #[test]
    fn tokens_are_checked_for_signature_cluster_and_expiry() {
        let m = MasterKey::generate().expect("rng");
        let pk = m.admin_key().public();
        let t = token(&m, 1000);
        assert_eq!(check_token(&t, &pk, 999).expect("valid").cluster, "lab");
        assert!(matches!(
            check_token(&t, &pk, 1000),
            Err(TokenRefusal::Expired { .. })
        ));
        let other = MasterKey::generate().expect("rng");
        assert_eq!(
            check_token(&token(&other, 1000), &pk, 1),
            Err(TokenRefusal::Forged)
        );
        // Editing the body (say, the expiry) breaks the signature.
        let (rec, mut body) = decode_token(&t).expect("decodes");
        body.expires_at = u64::MAX;
        let forged = encode_token(&signed(
            body_text(&body).expect("json"),
            &signature_bytes(&rec.signature).expect("sig"),
        ))
        .expect("encode");
        assert_eq!(check_token(&forged, &pk, 1), Err(TokenRefusal::Forged));
        assert!(matches!(
            check_token("hello", &pk, 1),
            Err(TokenRefusal::Malformed(_))
        ));
    }

    #[test]
    fn a_signature_for_one_record_kind_does_not_pass_as_another() {
        let m = MasterKey::generate().expect("rng");
        let admin = m.admin_key();
        let text = "{}".to_string();
        let sig = admin.sign(&signing_bytes(Domain::OperatorMessage, text.as_bytes()));
        let rec = signed(text, &sig);
        assert!(open::<serde_json::Value>(&rec, Domain::OperatorMessage, &admin.public()).is_ok());
        assert!(open::<serde_json::Value>(&rec, Domain::MembershipCert, &admin.public()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn token_decoder_never_panics(s in "\\PC{0,300}") {
            let _ = decode_token(&s);
            let _ = decode_token(&format!("{TOKEN_PREFIX}{s}"));
        }
    }
}
