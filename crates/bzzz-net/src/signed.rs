//! The signed envelope around a capability announcement.
//!
//! ```json
//! {"v":1, "public_key":"<hex of the 32-byte Ed25519 key>",
//!  "body":"<JSON of bzzz_proto::api::Announcement>", "sig":"<hex, 64 bytes>"}
//! ```
//!
//! The signature covers `DOMAIN || body`, so it can never be confused with a
//! signature the node makes for any other purpose. The envelope is
//! self-contained: anyone holding it can check that the body was written by
//! the node it names, without trusting the transport that carried it.

use bzzz_proto::NodeId;
use bzzz_proto::api::Announcement;
use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey, ed25519};
use serde::{Deserialize, Serialize};

/// Domain separation prefix of announcement signatures.
pub const DOMAIN: &[u8] = b"bzzz/announce/v1\0";

/// Version of the envelope encoding.
pub const ENVELOPE_VERSION: u32 = 1;

/// Largest accepted envelope, bytes (also the gossip `max_transmit_size`).
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    v: u32,
    public_key: String,
    body: String,
    sig: String,
}

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("envelope larger than {MAX_ENVELOPE_BYTES} bytes")]
    TooLarge,
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("unsupported envelope version {0}")]
    Version(u32),
    #[error("signature does not verify")]
    BadSignature,
    #[error("announcement names node {named} but was signed by {signer}")]
    WrongSigner { named: String, signer: String },
    #[error("invalid announcement: {0}")]
    Invalid(String),
}

/// Signs `ann` with the node's keypair.
pub fn seal(key: &Keypair, ann: &Announcement) -> Result<Vec<u8>, EnvelopeError> {
    let body = serde_json::to_string(ann).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    let mut msg = DOMAIN.to_vec();
    msg.extend_from_slice(body.as_bytes());
    let sig = key
        .sign(&msg)
        .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    let public = key
        .public()
        .try_into_ed25519()
        .map_err(|_| EnvelopeError::Malformed("node key is not Ed25519".into()))?;
    let env = Envelope {
        v: ENVELOPE_VERSION,
        public_key: hex::encode(public.to_bytes()),
        body,
        sig: hex::encode(&sig),
    };
    serde_json::to_vec(&env).map_err(|e| EnvelopeError::Malformed(e.to_string()))
}

/// Verifies an envelope and returns the announcement with the signer's id.
pub fn open(bytes: &[u8]) -> Result<(PeerId, Announcement), EnvelopeError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(EnvelopeError::TooLarge);
    }
    let env: Envelope =
        serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    if env.v != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version(env.v));
    }
    let pk_bytes = hex::decode(&env.public_key)
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| EnvelopeError::Malformed("public_key must be 64 hex characters".into()))?;
    let sig = hex::decode(&env.sig)
        .ok()
        .filter(|b| b.len() == 64)
        .ok_or_else(|| EnvelopeError::Malformed("sig must be 128 hex characters".into()))?;
    let public: PublicKey = ed25519::PublicKey::try_from_bytes(&pk_bytes)
        .map_err(|_| EnvelopeError::Malformed("public_key is not an Ed25519 key".into()))?
        .into();
    let mut msg = DOMAIN.to_vec();
    msg.extend_from_slice(env.body.as_bytes());
    if !public.verify(&msg, &sig) {
        return Err(EnvelopeError::BadSignature);
    }
    let signer = public.to_peer_id();
    let ann: Announcement =
        serde_json::from_str(&env.body).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    if ann.node_id.as_str() != signer.to_base58() {
        return Err(EnvelopeError::WrongSigner {
            named: ann.node_id.to_string(),
            signer: signer.to_base58(),
        });
    }
    ann.validate()
        .map_err(|e| EnvelopeError::Invalid(e.to_string()))?;
    Ok((signer, ann))
}

/// The Ed25519 public key a node id names (node ids are identity-hashed
/// Ed25519 peer ids), `None` for anything else.
pub fn public_key_of(id: &NodeId) -> Option<[u8; 32]> {
    let peer: PeerId = id.as_str().parse().ok()?;
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(pk.try_into_ed25519().ok()?.to_bytes())
}

/// The [`NodeId`] of a libp2p peer id.
pub fn node_id(peer: &PeerId) -> Result<NodeId, bzzz_proto::NodeIdError> {
    NodeId::parse(&peer.to_base58())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bzzz_proto::Capabilities;

    fn ann(key: &Keypair) -> Announcement {
        Announcement {
            v: bzzz_proto::api::ANNOUNCEMENT_VERSION,
            node_id: node_id(&key.public().to_peer_id()).expect("id"),
            seq: 1,
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            api_addr: None,
            uptime_secs: 3,
            capabilities: Capabilities {
                memory_total_bytes: 10,
                memory_free_bytes: 5,
                version: "0.1.0".into(),
                ..Default::default()
            },
            age_recipient: None,
            membership: None,
            share: None,
        }
    }

    #[test]
    fn node_ids_name_their_public_key() {
        let key = Keypair::generate_ed25519();
        let id = node_id(&key.public().to_peer_id()).expect("id");
        let pk = key.public().try_into_ed25519().expect("ed").to_bytes();
        assert_eq!(public_key_of(&id), Some(pk));
    }

    #[test]
    fn sealed_announcements_open_with_their_signer() {
        let key = Keypair::generate_ed25519();
        let bytes = seal(&key, &ann(&key)).expect("seal");
        let (signer, back) = open(&bytes).expect("open");
        assert_eq!(signer, key.public().to_peer_id());
        assert_eq!(back, ann(&key));
    }

    #[test]
    fn tampered_body_or_foreign_identity_is_refused() {
        let key = Keypair::generate_ed25519();
        let bytes = seal(&key, &ann(&key)).expect("seal");
        let text = String::from_utf8(bytes).expect("utf8");
        let tampered = text.replace("\\\"uptime_secs\\\":3", "\\\"uptime_secs\\\":4");
        assert_ne!(tampered, text);
        assert_eq!(open(tampered.as_bytes()), Err(EnvelopeError::BadSignature));

        // A node signing a record that names another node.
        let other = Keypair::generate_ed25519();
        let forged = seal(&key, &ann(&other)).expect("seal");
        assert!(matches!(
            open(&forged),
            Err(EnvelopeError::WrongSigner { .. })
        ));

        assert!(matches!(open(b"{}"), Err(EnvelopeError::Malformed(_))));
        assert_eq!(
            open(&vec![b' '; MAX_ENVELOPE_BYTES + 1]),
            Err(EnvelopeError::TooLarge)
        );
    }

    #[test]
    fn invalid_capabilities_are_refused_even_when_signed() {
        let key = Keypair::generate_ed25519();
        let mut a = ann(&key);
        a.capabilities.memory_free_bytes = 11;
        let bytes = seal(&key, &a).expect("seal");
        assert!(matches!(open(&bytes), Err(EnvelopeError::Invalid(_))));
    }

    proptest::proptest! {
        #[test]
        fn open_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = open(&bytes);
        }

        #[test]
        fn open_never_panics_on_mutated_envelopes(pos in 0usize..4096, byte in proptest::num::u8::ANY) {
            let key = Keypair::generate_ed25519();
            let mut bytes = seal(&key, &ann(&key)).expect("seal");
            let i = pos % bytes.len();
            bytes[i] = byte;
            if let Ok((signer, _)) = open(&bytes) {
                // A mutation that still opens must not change who signed it.
                proptest::prop_assert_eq!(signer, key.public().to_peer_id());
            }
        }
    }
}
