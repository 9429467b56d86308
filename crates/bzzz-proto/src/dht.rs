//! DHT records under UCXL addresses (SPEC §7) and role keys (SPEC §9):
//! what travels and who may read it. Signing, sealing and checking are in
//! `bzzz-dht`.
//!
//! * A record is an [`Envelope`]: a signed [`RecordBody`] (address,
//!   version, author, time, the payload sealed with age to one key chain)
//!   plus the author's membership certificate.
//! * A *key chain* is a role's sequence of X25519 keys ([`RoleKey`]), one
//!   per epoch, each sealed to every node that may read the role. Records
//!   of the cluster configuration (`ucxl://…:admin@cluster:config/…`) use
//!   the chain [`MEMBERS_CHAIN`], which every member reads: every node
//!   applies the configuration.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::cluster::{RoleDef, Signed};
use crate::ucxl::{Address, Component};

/// Largest value a record carries (bytes, before sealing).
pub const MAX_VALUE: usize = 256 * 1024;
/// Version of [`RecordBody`].
pub const RECORD_BODY_VERSION: u32 = 1;
/// The key chain of the cluster configuration: every member reads it.
pub const MEMBERS_CHAIN: &str = "@members";
/// The role whose members read every role's records.
pub const ADMIN_ROLE: &str = "admin";
/// The project and task of the cluster configuration.
pub const CONFIG_PROJECT: &str = "cluster";
pub const CONFIG_TASK: &str = "config";

/// One epoch of a key chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKey {
    /// 1 for the first key; each rotation adds one.
    pub epoch: u32,
    /// The age recipient (`age1…`) records of this epoch are sealed to.
    pub public: String,
    /// The nodes this epoch was made for or granted to.
    pub readers: BTreeSet<NodeId>,
    /// Node → the secret key sealed to its age recipient (base64).
    pub sealed: BTreeMap<NodeId, String>,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: u64,
    /// The reader of the chain that generated this key (issue #22): a new
    /// key is made on a node that may read it, never on a node that only
    /// serves the operator's request (which may be the reader being shut
    /// out). `None` for keys sealed to nobody (no reader was in reach) and
    /// for keys made before this field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_by: Option<NodeId>,
}

/// Which key chain seals a record at `addr` (a role name, or
/// [`MEMBERS_CHAIN`] for the cluster configuration).
pub fn chain_of(addr: &Address) -> Option<String> {
    let Component::Name(role) = &addr.role else {
        return None;
    };
    let config = role == ADMIN_ROLE
        && addr.project == Component::Name(CONFIG_PROJECT.into())
        && addr.task == Component::Name(CONFIG_TASK.into());
    Some(if config {
        MEMBERS_CHAIN.to_owned()
    } else {
        role.clone()
    })
}

/// The roles whose members read records of `role`: the role itself, every
/// role whose `reads` names it, and admin.
pub fn reading_roles(role: &str, roles: &BTreeMap<String, RoleDef>) -> Vec<String> {
    let mut out = vec![role.to_owned()];
    for r in roles.values() {
        if r.reads.iter().any(|x| x == role) && !out.contains(&r.name) {
            out.push(r.name.clone());
        }
    }
    if !out.iter().any(|r| r == ADMIN_ROLE) {
        out.push(ADMIN_ROLE.to_owned());
    }
    out
}

/// The nodes that may read `chain` now: for a role, the members of its
/// reading roles; for [`MEMBERS_CHAIN`], every member in `members`.
/// Removed nodes never read.
pub fn readers(
    chain: &str,
    roles: &BTreeMap<String, RoleDef>,
    members: &BTreeSet<NodeId>,
    removed: &BTreeSet<NodeId>,
) -> BTreeSet<NodeId> {
    let all: BTreeSet<NodeId> = if chain == MEMBERS_CHAIN {
        members.clone()
    } else {
        reading_roles(chain, roles)
            .iter()
            .filter_map(|r| roles.get(r))
            .flat_map(|r| r.members.iter().cloned())
            .collect()
    };
    all.into_iter().filter(|n| !removed.contains(n)).collect()
}

/// The chains that exist for `roles`: every role and [`MEMBERS_CHAIN`].
pub fn chains(roles: &BTreeMap<String, RoleDef>) -> Vec<String> {
    let mut out: Vec<String> = roles.keys().cloned().collect();
    out.push(MEMBERS_CHAIN.to_owned());
    out
}

/// The signed content of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBody {
    pub v: u32,
    pub cluster: String,
    /// The canonical address without temporal segment, query, fragment.
    pub address: String,
    /// 1 for the first write of the address.
    pub version: u64,
    /// The node that wrote it.
    pub author: NodeId,
    /// Unix milliseconds (never before the previous version's).
    pub timestamp_ms: u64,
    /// The key chain and epoch the payload is sealed to.
    pub chain: String,
    pub key_epoch: u32,
    /// The value sealed with age (base64).
    pub payload: String,
}

/// Who signed a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SignedBy {
    /// The author node's key (records of every role but admin).
    #[default]
    Node,
    /// The cluster admin key, threshold-signed (records of the admin role).
    Admin,
}

/// A stored record: the body exactly as signed, the signature, and the
/// author's membership certificate (so any node can check it alone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub body: String,
    /// Ed25519, hex.
    pub signature: String,
    #[serde(default)]
    pub signed_by: SignedBy,
    /// The author's membership certificate.
    pub cert: Signed,
}

/// `POST /api/v1/dht/put`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutRequest {
    pub address: String,
    /// UTF-8 text, or…
    #[serde(default)]
    pub value: Option<String>,
    /// …any bytes, base64.
    #[serde(default)]
    pub value_base64: Option<String>,
}

/// The answer to a put.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutResult {
    /// The canonical address of the record (temporal `*^`).
    pub address: String,
    pub version: u64,
    /// Nodes that stored it, besides the author.
    #[serde(default)]
    pub stored_at: usize,
}

/// A record as a reader sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordView {
    pub address: String,
    pub version: u64,
    pub author: NodeId,
    /// RFC 3339.
    pub timestamp: String,
    pub timestamp_ms: u64,
    pub role: String,
    /// The roles whose members may read it.
    pub readable_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

/// One version in a record's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub author: NodeId,
    /// RFC 3339.
    pub timestamp: String,
    pub timestamp_ms: u64,
}

/// One record in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    /// Canonical, temporal `*^`.
    pub address: String,
    pub version: u64,
    #[serde(default)]
    pub author: Option<NodeId>,
    #[serde(default)]
    pub timestamp_ms: u64,
    #[serde(default)]
    pub role: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Authority;

    fn id(n: u8) -> NodeId {
        NodeId::parse(&format!("12D3KooW{}", (b'A' + n) as char).repeat(5)).expect("id")
    }

    fn role(name: &str, reads: &[&str], members: &[NodeId]) -> RoleDef {
        RoleDef {
            name: name.into(),
            authority: Authority::Suggestion,
            permissions: vec![],
            reads: reads.iter().map(|s| (*s).to_owned()).collect(),
            members: members.to_vec(),
        }
    }

    #[test]
    fn readers_follow_roles_reads_and_admin() {
        let roles: BTreeMap<String, RoleDef> = [
            role("backend_developer", &[], &[id(1)]),
            role(
                "senior_software_architect",
                &["backend_developer"],
                &[id(2)],
            ),
            role("observer", &[], &[id(3)]),
            role("admin", &[], &[id(4)]),
        ]
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect();
        let none = BTreeSet::new();
        let r = readers("backend_developer", &roles, &none, &none);
        assert_eq!(r, [id(1), id(2), id(4)].into_iter().collect());
        assert_eq!(
            readers("observer", &roles, &none, &none),
            [id(3), id(4)].into_iter().collect()
        );
        let removed = [id(2)].into_iter().collect();
        assert!(!readers("backend_developer", &roles, &none, &removed).contains(&id(2)));
        let all = [id(1), id(9)].into_iter().collect();
        assert_eq!(readers(MEMBERS_CHAIN, &roles, &all, &none), all);
        assert_eq!(
            reading_roles("backend_developer", &roles),
            ["backend_developer", "senior_software_architect", "admin"]
        );
    }

    #[test]
    fn config_records_use_the_members_chain() {
        let a: Address = "ucxl://any:admin@cluster:config/*^/control/weights"
            .parse()
            .expect("parse");
        assert_eq!(chain_of(&a).as_deref(), Some(MEMBERS_CHAIN));
        let b: Address = "ucxl://bob:admin@cluster:other/*^/x"
            .parse()
            .expect("parse");
        assert_eq!(chain_of(&b).as_deref(), Some("admin"));
        let c: Address = "ucxl://bob:any@cluster:other/*^/x".parse().expect("parse");
        assert_eq!(chain_of(&c), None);
    }
}
