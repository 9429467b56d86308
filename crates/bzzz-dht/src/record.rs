//! Records: keys, sealing, signing, and the checks every storing node and
//! every reader makes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bzzz_crypto::records::{self, Domain};
use bzzz_proto::NodeId;
use bzzz_proto::cluster::{RoleDef, Signed};
use bzzz_proto::dht::{
    ADMIN_ROLE, Envelope, MAX_VALUE, RECORD_BODY_VERSION, RecordBody, RoleKey, SignedBy, chain_of,
};
use bzzz_proto::ucxl::{Address, Component, Temporal};
use sha2::{Digest, Sha256};

/// What the checks need from the replicated cluster state (a snapshot;
/// the runtime swaps in a new one on every change of roles or keys).
#[derive(Debug, Clone, Default)]
pub struct Authz {
    pub cluster: String,
    pub admin_public_key: [u8; 32],
    pub roles: BTreeMap<String, RoleDef>,
    pub role_keys: BTreeMap<String, Vec<RoleKey>>,
    pub removed: BTreeSet<NodeId>,
}

/// The shared, swappable snapshot.
pub type SharedAuthz = Arc<RwLock<Arc<Authz>>>;

/// The DHT key of an address's latest version.
pub fn head_key(addr: &Address) -> Vec<u8> {
    hash(&[b"bzzz/dht/head/v1\0", addr.key_text().as_bytes()])
}

/// The DHT key of one version of an address.
pub fn version_key(addr: &Address, version: u64) -> Vec<u8> {
    hash(&[
        b"bzzz/dht/version/v1\0",
        addr.key_text().as_bytes(),
        b"\0",
        &version.to_be_bytes(),
    ])
}

fn hash(parts: &[&[u8]]) -> Vec<u8> {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().to_vec()
}

/// The address a write stores (canonical, temporal `*^`, no query or
/// fragment).
pub fn write_address(addr: &Address) -> Address {
    Address {
        temporal: Temporal::Latest,
        query: None,
        fragment: None,
        ..addr.clone()
    }
}

/// The bytes a record's signature covers. Records of the admin role are
/// threshold-signed as operator messages over the same bytes.
pub fn signing_bytes(body: &str, by: SignedBy) -> Vec<u8> {
    let inner = records::signing_bytes(Domain::DhtRecord, body.as_bytes());
    match by {
        SignedBy::Node => inner,
        SignedBy::Admin => records::signing_bytes(Domain::OperatorMessage, &inner),
    }
}

/// A record that passed the checks.
#[derive(Debug, Clone)]
pub struct Checked {
    pub envelope: Envelope,
    pub body: RecordBody,
    pub address: Address,
}

impl Checked {
    pub fn role(&self) -> &str {
        match &self.address.role {
            Component::Name(r) => r,
            Component::Any => "any",
        }
    }
}

/// Parses and checks a stored record: well formed, for this cluster, its
/// key (when given) is its address's head or version key, sealed to a key
/// of the right chain, and authorized: signed by the author, a certified
/// member that is not removed and is a member of the address's ROLE; for
/// the admin role, signed by the cluster admin key (threshold).
pub fn check(authz: &Authz, key: Option<&[u8]>, raw: &[u8]) -> Result<Checked, String> {
    if raw.len() > bzzz_net::store::MAX_RECORD_VALUE {
        return Err("record too large".into());
    }
    let envelope: Envelope =
        serde_json::from_slice(raw).map_err(|e| format!("not a record: {e}"))?;
    let body: RecordBody =
        serde_json::from_str(&envelope.body).map_err(|e| format!("record body: {e}"))?;
    if body.v != RECORD_BODY_VERSION {
        return Err(format!("record version {} is not supported", body.v));
    }
    if body.cluster != authz.cluster {
        return Err(format!("record of cluster {:?}", body.cluster));
    }
    let address: Address = body.address.parse().map_err(|e| format!("{e}"))?;
    address.check_writable().map_err(|e| format!("{e}"))?;
    if address.to_string() != body.address || address.query.is_some() || address.fragment.is_some()
    {
        return Err("record address is not canonical".into());
    }
    if body.version == 0 {
        return Err("record version 0".into());
    }
    if body.version > MAX_VERSION {
        return Err(format!("record version above {MAX_VERSION}"));
    }
    // Versions cannot outrun the clock (issue #22): a writer stamps each
    // version at least 1 ms after the one before, so `version` never
    // exceeds `timestamp_ms`, and no timestamp is accepted far ahead of
    // this node's clock. A member of the role therefore cannot push an
    // address to its last version (or open a gap that a history walk
    // would pay for): versions advance at most one per millisecond.
    if body.version > body.timestamp_ms {
        return Err(format!(
            "record version {} is ahead of its timestamp ({} ms): versions advance at most one per millisecond",
            body.version, body.timestamp_ms
        ));
    }
    let now = now_ms();
    if body.timestamp_ms > now.saturating_add(MAX_CLOCK_AHEAD_MS) {
        return Err(format!(
            "record timestamp is {} s ahead of this node's clock (at most {} s are accepted; check the clocks)",
            (body.timestamp_ms - now) / 1000,
            MAX_CLOCK_AHEAD_MS / 1000
        ));
    }
    if let Some(k) = key
        && k != head_key(&address)
        && k != version_key(&address, body.version)
    {
        return Err("record stored under a key that is not its address's".into());
    }
    let chain = chain_of(&address).ok_or("record names no role")?;
    if body.chain != chain {
        return Err(format!("record sealed to {:?}, not {chain:?}", body.chain));
    }
    if !authz
        .role_keys
        .get(&chain)
        .is_some_and(|v| v.iter().any(|k| k.epoch == body.key_epoch))
    {
        return Err(format!(
            "record sealed to an unknown key ({chain} epoch {})",
            body.key_epoch
        ));
    }
    let role = match &address.role {
        Component::Name(r) => r.clone(),
        Component::Any => return Err("record names no role".into()),
    };
    // The author: a certified member, not removed.
    records::open_cert(&envelope.cert, &authz.admin_public_key, Some(&body.author))
        .map_err(|e| format!("author certificate: {e}"))?;
    if authz.removed.contains(&body.author) {
        return Err(format!(
            "author {} was removed from the cluster",
            body.author
        ));
    }
    let sig: [u8; 64] = hex::decode(&envelope.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("record signature is malformed")?;
    let msg = signing_bytes(&envelope.body, envelope.signed_by);
    if role == ADMIN_ROLE {
        if envelope.signed_by != SignedBy::Admin {
            return Err("records of the admin role need the cluster admin signature".into());
        }
        bzzz_crypto::verify_ed25519(&authz.admin_public_key, &msg, &sig)
            .map_err(|_| "bad admin signature".to_owned())?;
    } else {
        if envelope.signed_by != SignedBy::Node {
            return Err("records of a role are signed by their author".into());
        }
        let r = authz
            .roles
            .get(&role)
            .ok_or_else(|| format!("no role {role:?}"))?;
        if !r.members.contains(&body.author) {
            return Err(format!(
                "author {} is not a member of role {role}",
                body.author
            ));
        }
        let pk = bzzz_net::signed::public_key_of(&body.author).ok_or("author id names no key")?;
        bzzz_crypto::verify_ed25519(&pk, &msg, &sig)
            .map_err(|_| "bad author signature".to_owned())?;
    }
    Ok(Checked {
        envelope,
        body,
        address,
    })
}

/// The highest version a record may have (2^53: exact in every JSON
/// reader; a write never counts past it, so no version arithmetic
/// overflows, and no storer keeps a head at `u64::MAX` that would freeze
/// its address).
pub const MAX_VERSION: u64 = 1 << 53;

/// How far ahead of a node's clock a record's timestamp may be.
pub const MAX_CLOCK_AHEAD_MS: u64 = 5 * 60 * 1000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a storing node adds to [`check`]: a head only moves forward, to
/// the next version (head + 1), and a version, once stored, is never
/// replaced by another record.
///
/// The one exception heals a storer that missed versions (offline while
/// they were written, or new to the key): a head more than one version
/// ahead is taken when its timestamp is at least as many milliseconds
/// after the stored one as it skips versions. Honest writes always are
/// (each version is stamped at least 1 ms after the one before); a jump
/// an author makes up is not, unless it also moves its timestamp ahead,
/// which [`check`] bounds by the clock.
pub fn check_replace(new: &Checked, existing: &[u8]) -> Result<(), String> {
    let Ok(old) = serde_json::from_slice::<Envelope>(existing) else {
        return Ok(()); // unreadable: replace it
    };
    let Ok(old) = serde_json::from_str::<RecordBody>(&old.body) else {
        return Ok(());
    };
    // A stored record that breaks the version rules (kept from before
    // they existed) is replaced, never built on.
    if old.version > old.timestamp_ms
        || old.timestamp_ms > now_ms().saturating_add(MAX_CLOCK_AHEAD_MS)
    {
        return Ok(());
    }
    if old.version > new.body.version {
        return Err(format!(
            "stale: version {} is older than the stored {}",
            new.body.version, old.version
        ));
    }
    if old.version == new.body.version && old != new.body {
        return Err(format!(
            "a different record of version {} is stored",
            old.version
        ));
    }
    let step = new.body.version - old.version;
    if step > 1 && new.body.timestamp_ms.saturating_sub(old.timestamp_ms) < step {
        return Err(format!(
            "version {} does not follow the stored {} (only head + 1 is accepted)",
            new.body.version, old.version
        ));
    }
    Ok(())
}

/// The storing node's check, for the Kademlia store.
#[derive(Debug)]
pub struct StoreCheck(pub SharedAuthz);

impl bzzz_net::store::RecordCheck for StoreCheck {
    fn check(&self, key: &[u8], value: &[u8], existing: Option<&[u8]>) -> Result<(), String> {
        let authz = self.0.read().map_err(|_| "lock")?.clone();
        let c = check(&authz, Some(key), value)?;
        match existing {
            Some(e) => check_replace(&c, e),
            None => Ok(()),
        }
    }
}

/// Builds a record body for a write (signature added by the caller).
#[derive(Debug)]
pub struct Draft {
    pub body: RecordBody,
    pub address: Address,
}

/// Seals `value` to `key` and drafts the body.
#[allow(clippy::too_many_arguments)]
pub fn draft(
    cluster: &str,
    addr: &Address,
    version: u64,
    author: &NodeId,
    timestamp_ms: u64,
    chain: &str,
    key: &RoleKey,
    value: &[u8],
) -> Result<Draft, String> {
    if value.len() > MAX_VALUE {
        return Err(format!(
            "the value is {} bytes; records hold at most {MAX_VALUE} bytes (256 KiB)",
            value.len()
        ));
    }
    let sealed = bzzz_crypto::seal::seal(&key.public, value).map_err(|e| e.to_string())?;
    let address = write_address(addr);
    Ok(Draft {
        body: RecordBody {
            v: RECORD_BODY_VERSION,
            cluster: cluster.to_owned(),
            address: address.to_string(),
            version,
            author: author.clone(),
            timestamp_ms,
            chain: chain.to_owned(),
            key_epoch: key.epoch,
            payload: B64.encode(sealed),
        },
        address,
    })
}

/// Wraps a signed body.
pub fn envelope(body_text: String, signature: &[u8; 64], by: SignedBy, cert: Signed) -> Envelope {
    Envelope {
        body: body_text,
        signature: hex::encode(signature),
        signed_by: by,
        cert,
    }
}

/// Decodes a record's sealed payload.
pub fn payload(body: &RecordBody) -> Result<Vec<u8>, String> {
    B64.decode(&body.payload)
        .map_err(|_| "payload is not base64".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bzzz_crypto::NodeKey;
    use bzzz_crypto::seal::RoleSecret;
    use bzzz_proto::cluster::{Authority, MembershipCert};

    struct World {
        admin: NodeKey,
        authz: Authz,
        dev: (NodeKey, NodeId, Signed),
        other: (NodeKey, NodeId, Signed),
        key: RoleKey,
    }

    fn member(admin: &NodeKey, cluster: &str) -> (NodeKey, NodeId, Signed) {
        let k = NodeKey::generate().expect("rng");
        let id = bzzz_net::node_id_of(&k.seed()).expect("id");
        let cert = MembershipCert {
            v: 1,
            cluster: cluster.into(),
            admin_public_key: hex::encode(admin.public()),
            node_id: id.clone(),
            issued_at: 1,
            share_index: None,
            age_recipient: None,
            pending: false,
        };
        let body = records::body_text(&cert).expect("json");
        let sig = admin.sign(&records::signing_bytes(
            Domain::MembershipCert,
            body.as_bytes(),
        ));
        (k, id, records::signed(body, &sig))
    }

    fn world() -> World {
        let admin = NodeKey::generate().expect("rng");
        let dev = member(&admin, "lab");
        let other = member(&admin, "lab");
        let secret = RoleSecret::generate();
        let key = RoleKey {
            epoch: 1,
            public: secret.public(),
            readers: BTreeSet::new(),
            sealed: BTreeMap::new(),
            created_at: 0,
            made_by: None,
        };
        let role = |name: &str, m: &NodeId| RoleDef {
            name: name.into(),
            authority: Authority::Suggestion,
            permissions: vec![],
            reads: vec![],
            members: vec![m.clone()],
        };
        let authz = Authz {
            cluster: "lab".into(),
            admin_public_key: admin.public(),
            roles: [
                (
                    "backend_developer".to_owned(),
                    role("backend_developer", &dev.1),
                ),
                ("observer".to_owned(), role("observer", &other.1)),
            ]
            .into_iter()
            .collect(),
            role_keys: [
                ("backend_developer".to_owned(), vec![key.clone()]),
                ("observer".to_owned(), vec![key.clone()]),
            ]
            .into_iter()
            .collect(),
            removed: BTreeSet::new(),
        };
        World {
            admin,
            authz,
            dev,
            other,
            key,
        }
    }

    fn record(w: &World, who: &(NodeKey, NodeId, Signed), addr: &str, version: u64) -> Vec<u8> {
        record_at(w, who, addr, version, 1_000 + version)
    }

    fn record_at(
        w: &World,
        who: &(NodeKey, NodeId, Signed),
        addr: &str,
        version: u64,
        ts: u64,
    ) -> Vec<u8> {
        let a: Address = addr.parse().expect("addr");
        let chain = chain_of(&a).expect("chain");
        let d = draft("lab", &a, version, &who.1, ts, &chain, &w.key, b"secret").expect("draft");
        let text = serde_json::to_string(&d.body).expect("json");
        let sig = who.0.sign(&signing_bytes(&text, SignedBy::Node));
        serde_json::to_vec(&envelope(text, &sig, SignedBy::Node, who.2.clone())).expect("json")
    }

    const ADDR: &str = "ucxl://alice:backend_developer@bzzz:api/*^/notes";

    #[test]
    fn a_good_record_passes_storers_and_readers() {
        let w = world();
        let raw = record(&w, &w.dev, ADDR, 1);
        let a: Address = ADDR.parse().expect("addr");
        let c = check(&w.authz, Some(&head_key(&a)), &raw).expect("valid");
        assert_eq!(c.body.version, 1);
        check(&w.authz, Some(&version_key(&a, 1)), &raw).expect("valid at its version key");
        let store = StoreCheck(Arc::new(RwLock::new(Arc::new(w.authz.clone()))));
        use bzzz_net::store::RecordCheck as _;
        store.check(&head_key(&a), &raw, None).expect("stored");
        // Heads only move forward; a version is never replaced.
        let v2 = record(&w, &w.dev, ADDR, 2);
        store
            .check(&head_key(&a), &v2, Some(&raw))
            .expect("newer head");
        assert!(
            store.check(&head_key(&a), &raw, Some(&v2)).is_err(),
            "stale head"
        );
        let other_v1 = record(&w, &w.dev, ADDR, 1);
        assert!(
            store
                .check(&version_key(&a, 1), &other_v1, Some(&raw))
                .is_err()
        );
        // Under another key: refused.
        assert!(check(&w.authz, Some(&version_key(&a, 2)), &raw).is_err());
        // A version at u64::MAX (issue #22: it froze its address, the next
        // write overflowing) is refused by every storer and reader; the
        // last version allowed is MAX_VERSION.
        let top = record_at(&w, &w.dev, ADDR, u64::MAX, u64::MAX);
        let e = check(&w.authz, Some(&head_key(&a)), &top).expect_err("u64::MAX");
        assert!(e.contains("version above"), "{e}");
        // Nor can an author reach the last version with a timestamp to
        // match: timestamps ahead of the clock are refused.
        let last = record_at(&w, &w.dev, ADDR, MAX_VERSION, MAX_VERSION);
        let e = check(&w.authz, Some(&head_key(&a)), &last).expect_err("future");
        assert!(e.contains("ahead of this node's clock"), "{e}");
        // A version ahead of its own timestamp is refused.
        let fast = record_at(&w, &w.dev, ADDR, 5_000, 4_999);
        let e = check(&w.authz, Some(&head_key(&a)), &fast).expect_err("fast");
        assert!(e.contains("ahead of its timestamp"), "{e}");
    }

    #[test]
    fn storers_take_only_the_next_version_unless_the_clock_covers_the_gap() {
        let w = world();
        let a: Address = ADDR.parse().expect("addr");
        let store = StoreCheck(Arc::new(RwLock::new(Arc::new(w.authz.clone()))));
        use bzzz_net::store::RecordCheck as _;
        let v1 = record_at(&w, &w.dev, ADDR, 1, 10_000);
        // A jump over versions no one wrote, with a timestamp 1 ms later.
        let jump = record_at(&w, &w.dev, ADDR, 1_000, 10_001);
        let e = store
            .check(&head_key(&a), &jump, Some(&v1))
            .expect_err("a jump");
        assert!(e.contains("head + 1"), "{e}");
        let v2 = record_at(&w, &w.dev, ADDR, 2, 10_001);
        store
            .check(&head_key(&a), &v2, Some(&v1))
            .expect("head + 1");
        // A storer that missed versions 2 to 4 takes version 5 written
        // 4 ms or more later (how honest writers stamp versions).
        let v5 = record_at(&w, &w.dev, ADDR, 5, 10_004);
        store
            .check(&head_key(&a), &v5, Some(&v1))
            .expect("healing a storer that missed versions");
        let v5_early = record_at(&w, &w.dev, ADDR, 5, 10_003);
        assert!(store.check(&head_key(&a), &v5_early, Some(&v1)).is_err());
    }

    #[test]
    fn tampered_unsigned_non_member_and_wrong_role_records_are_refused() {
        let w = world();
        let raw = record(&w, &w.dev, ADDR, 1);
        let mut env: Envelope = serde_json::from_slice(&raw).expect("env");
        // Tampered: the body changed after signing.
        let mut t = env.clone();
        t.body = t.body.replace("\"version\":1", "\"version\":7");
        let e =
            check(&w.authz, None, &serde_json::to_vec(&t).expect("json")).expect_err("tampered");
        assert!(e.contains("signature"), "{e}");
        // Tampered payload.
        let mut body: RecordBody = serde_json::from_str(&env.body).expect("body");
        body.payload = format!("AAAA{}", body.payload);
        let mut t = env.clone();
        t.body = serde_json::to_string(&body).expect("json");
        assert!(check(&w.authz, None, &serde_json::to_vec(&t).expect("json")).is_err());
        // Unsigned.
        env.signature = String::new();
        let e =
            check(&w.authz, None, &serde_json::to_vec(&env).expect("json")).expect_err("unsigned");
        assert!(e.contains("signature"), "{e}");
        // A member of another role writes under backend_developer.
        let raw = record(&w, &w.other, ADDR, 1);
        let e = check(&w.authz, None, &raw).expect_err("wrong role");
        assert!(e.contains("not a member of role backend_developer"), "{e}");
        // A node with no certificate of this cluster.
        let stranger_admin = NodeKey::generate().expect("rng");
        let stranger = member(&stranger_admin, "lab");
        let raw = record(&w, &stranger, ADDR, 1);
        let e = check(&w.authz, None, &raw).expect_err("non-member");
        assert!(e.contains("certificate"), "{e}");
        // A removed member.
        let mut gone = w.authz.clone();
        gone.removed.insert(w.dev.1.clone());
        let e = check(&gone, None, &record(&w, &w.dev, ADDR, 1)).expect_err("removed");
        assert!(e.contains("removed"), "{e}");
        // The admin role needs the admin signature, not a node's.
        let admin_addr = "ucxl://any:admin@cluster:config/*^/control/weights";
        let mut with_members = w.authz.clone();
        with_members
            .role_keys
            .insert(bzzz_proto::dht::MEMBERS_CHAIN.into(), vec![w.key.clone()]);
        let e = check(&with_members, None, &record(&w, &w.dev, admin_addr, 1)).expect_err("admin");
        assert!(e.contains("admin signature"), "{e}");
        // …and passes with it.
        let a: Address = admin_addr.parse().expect("addr");
        let d = draft(
            "lab",
            &a,
            1,
            &w.dev.1,
            5,
            bzzz_proto::dht::MEMBERS_CHAIN,
            &w.key,
            b"{}",
        )
        .expect("draft");
        let text = serde_json::to_string(&d.body).expect("json");
        let sig = w.admin.sign(&signing_bytes(&text, SignedBy::Admin));
        let raw = serde_json::to_vec(&envelope(text, &sig, SignedBy::Admin, w.dev.2.clone()))
            .expect("json");
        check(&with_members, None, &raw).expect("admin-signed config record");
        // Garbage never panics.
        for junk in [&b""[..], b"{}", b"null", &[0xff; 64]] {
            assert!(check(&w.authz, None, junk).is_err());
        }
    }
}
