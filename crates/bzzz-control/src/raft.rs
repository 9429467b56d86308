//! openraft 0.9 wiring: the type configuration and the cluster state
//! machine (the log lives in [`crate::store`]).
//!
//! The network is supplied by the caller ([`openraft::RaftNetworkFactory`]):
//! the node uses a libp2p request-response protocol (messages in
//! [`crate::wire`]), tests an in-process router.
//!
//! Who may change what (SPEC §6, "Leader and Admin are separate"):
//! * [`Command::Genesis`] binds the state to a cluster admin key, once: the
//!   record must be self-signed by that key; any later one is refused.
//! * [`Command::Inventory`] is operations: the leader's SLURP planners
//!   write it, unsigned.
//! * [`Command::Admin`] (roles, permissions, membership rules) is oversight:
//!   every node checks the cluster admin (threshold) signature when it
//!   applies the entry, and refuses it — changing nothing — without one,
//!   so a leader cannot forge it. Replays are refused by `seq`.

// openraft's storage traits fix the error type (`StorageError`, 224 bytes);
// the helpers here return it too rather than converting back and forth.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use bzzz_proto::NodeId;
use bzzz_proto::cluster::{AdminAction, RoleDef, Signed};
use bzzz_proto::models::{ModelEntry, Placed, Registry};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

/// A change to the replicated cluster state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Set a key in the cluster's key-value registry (operations data).
    Set { key: String, value: String },
    /// Binds the state to the cluster (first one wins; later ones must
    /// name the same admin key and are no-ops).
    Genesis { record: Signed },
    /// The inventory planner's view: every member's resources and score.
    Inventory { nodes: BTreeMap<NodeId, NodeRecord> },
    /// An admin change ([`AdminChange`]), signed by the cluster admin key.
    Admin { change: Signed },
    /// The share planner's table: share index → holder.
    ShareHolders { holders: BTreeMap<u16, NodeId> },
    /// Adds or replaces a model in the registry (`bzzz model add`).
    ModelPut { entry: Box<ModelEntry> },
    /// Marks a model removed (`bzzz model rm`).
    ModelRemove { name: String },
    /// The placement planner's decision for one model.
    ModelPlace { name: String, nodes: Vec<Placed> },
    /// A node reports the manifest digest it holds of a model (`None`:
    /// none any more).
    ModelHeld {
        name: String,
        node: NodeId,
        digest: Option<String>,
    },
    /// Commits a key epoch ([`bzzz_proto::cluster::KeyEpoch`], signed by
    /// the admin key): the next epoch of share custody.
    KeyEpoch { record: Signed },
    /// Hands an existing role key epoch to nodes that may read it now
    /// (members added after it was made). Any member may propose it: only
    /// nodes that are readers of the chain by the admin-signed registry
    /// are accepted, and each checks that what it opens matches the
    /// epoch's public key.
    RoleKeyGrant {
        chain: String,
        epoch: u32,
        grants: BTreeMap<NodeId, String>,
    },
    /// Audit entries, committed with the change they record (both or
    /// neither): `cmd` is applied as `notes[0]`'s principal, and each
    /// note becomes one entry of the chain. Without `cmd`: entries for
    /// actions outside the state (a DHT write, a deploy, a signature) or
    /// aggregated refusals.
    Audited {
        notes: Vec<bzzz_proto::access::AuditNote>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cmd: Option<Box<Command>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        access: Option<crate::access::AccessChange>,
        /// With `access`: the principal's signature over
        /// `bzzz_proto::access::proof_bytes(notes[0], access)`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proof: Option<String>,
    },
    /// A checkpoint of the audit chain signed by the threshold admin key
    /// ([`bzzz_proto::access::AuditCheckpoint`]): accepted when the
    /// signature verifies, it names an entry the chain has, and it is
    /// newer than the last one.
    AuditCheckpoint { record: Signed },
    /// An agent task operation ([`crate::tasks`]). `by` (the proposer)
    /// and `now_ms` (the leader's clock) are stamped by the leader; what
    /// the proposer wrote there is replaced.
    Task {
        by: NodeId,
        now_ms: u64,
        op: crate::tasks::TaskOp,
    },
}

/// Checkpoints kept in the state (the newest; older entries may be
/// compacted away anyway).
pub const MAX_CHECKPOINTS: usize = 1024;

/// The result of applying a command.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub previous: Option<String>,
    /// Set when the state machine refused the command (nothing changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

/// A member's resources as the inventory planner last saw them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub score: f64,
    /// Seen alive by the leader when recorded.
    pub healthy: bool,
    pub cpu_cores: u32,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    pub disk_free_bytes: u64,
    pub vram_total_bytes: u64,
    pub vram_free_bytes: u64,
    pub gpus: u32,
}

/// Cluster totals (healthy members only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub nodes: u32,
    pub cpu_cores: u64,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    pub disk_free_bytes: u64,
    pub vram_total_bytes: u64,
    pub vram_free_bytes: u64,
    pub gpus: u32,
}

impl Totals {
    pub fn of(nodes: &BTreeMap<NodeId, NodeRecord>) -> Self {
        let mut t = Totals::default();
        for r in nodes.values().filter(|r| r.healthy) {
            t.nodes += 1;
            t.cpu_cores += u64::from(r.cpu_cores);
            t.memory_total_bytes += r.memory_total_bytes;
            t.memory_free_bytes += r.memory_free_bytes;
            t.disk_free_bytes += r.disk_free_bytes;
            t.vram_total_bytes += r.vram_total_bytes;
            t.vram_free_bytes += r.vram_free_bytes;
            t.gpus += r.gpus;
        }
        t
    }
}

/// The cluster the state belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    /// Hex.
    pub admin_public_key: String,
    pub threshold: u16,
}

/// One applied admin change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub log_index: u64,
    pub seq: u64,
    pub issued_at: u64,
    pub summary: String,
}

/// Audit entries kept in the state (older ones stay in snapshots' history
/// only as far back as this).
pub const AUDIT_KEEP: usize = 1000;
/// Most keys in the registry (with values of at most [`MAX_KV_LEN`], at
/// most 160 MiB in all; every node holds it in memory).
pub const MAX_KV_KEYS: usize = 10_000;
/// Longest registry value.
pub const MAX_KV_LEN: usize = 16 * 1024;

openraft::declare_raft_types!(
    /// BZZZ's Raft types: node ids are 64-bit digests of libp2p peer ids; a
    /// node's address is its peer id.
    pub TypeConfig:
        D = Command,
        R = Response,
);

pub type NodeIdU64 = u64;
pub type Raft = openraft::Raft<TypeConfig>;

fn io_err(e: impl std::error::Error + 'static) -> StorageError<NodeIdU64> {
    StorageIOError::write(&e).into()
}

/// The replicated cluster state (every field defaults, so snapshots of
/// older versions load).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterState {
    pub last_applied: Option<LogId<NodeIdU64>>,
    pub membership: StoredMembership<NodeIdU64, BasicNode>,
    pub kv: BTreeMap<String, String>,
    pub cluster: Option<ClusterInfo>,
    /// Inventory: members' resources and scores.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub totals: Totals,
    /// Role registry (admin changes only).
    pub roles: BTreeMap<String, RoleDef>,
    /// Membership rules (admin changes only).
    pub rules: BTreeMap<String, String>,
    /// `seq` of the last applied admin change.
    pub admin_seq: u64,
    pub audit: std::collections::VecDeque<AuditEntry>,
    /// Commands refused by the state machine so far.
    pub rejected: u64,
    /// Admin-key share index → the member holding it.
    pub share_holders: BTreeMap<u16, NodeId>,
    /// The model registry: entries, placements, holders (SPEC §8).
    #[serde(default)]
    pub models: Registry,
    /// The committed key epoch after genesis (`None`: epoch 0, the
    /// genesis sharing).
    pub key_epoch: Option<CommittedEpoch>,
    /// Removed members: node → the admin-signed removal (handed to the
    /// removed node as proof when it comes back).
    pub removed: BTreeMap<NodeId, Signed>,
    /// Key chains (a role's, or the members' chain): every epoch, oldest
    /// first, with its secret sealed to each reader (ciphertext only).
    pub role_keys: BTreeMap<String, Vec<bzzz_proto::dht::RoleKey>>,
    /// Users (SPEC §9), by name (the operator, `admin`, is not here).
    pub users: BTreeMap<String, bzzz_proto::access::UserRecord>,
    /// API keys by id (hashes only).
    pub api_keys: BTreeMap<String, bzzz_proto::access::ApiKeyRecord>,
    /// The audit chain's head.
    pub audit_head: bzzz_proto::access::AuditHead,
    /// Threshold-signed checkpoints of the chain, oldest first (at most
    /// [`MAX_CHECKPOINTS`]).
    #[serde(default)]
    pub audit_checkpoints: Vec<Signed>,
    /// The latest admin change that replaced the operator password
    /// (`AdminAction::SetOperatorKey`, signed; `None`: the genesis key).
    /// The keys service checks its signature itself: a snapshot from a
    /// hostile leader cannot name another operator key.
    #[serde(default)]
    pub operator_change: Option<Signed>,
    /// Members the operator approved as share holders (admitted by a
    /// multi-use token: pending until then), each with its signed
    /// approval (checked again by the keys service).
    #[serde(default)]
    pub approved: BTreeMap<NodeId, Signed>,
    /// Agent tasks and their claims (SPEC §10).
    #[serde(default)]
    pub tasks: crate::tasks::TaskBoard,
    /// The latest time (Unix ms) any applied audit entry named: the
    /// cluster's clock for key expiry in the state machine.
    pub audit_clock_ms: u64,
    /// Each principal's last proven change to users and keys (Unix ms of
    /// its note): older or equal ones are replays.
    pub last_change_ms: BTreeMap<String, u64>,
    /// Records appended since the state machine last took them (for the
    /// audit file; never in snapshots).
    #[serde(skip)]
    pub audit_out: Vec<bzzz_proto::access::AuditRecord>,
    /// The last [`RECENT_HASHES`] entries' (seq, hash), newest last, so a
    /// checkpoint signer checks what it holds without reading its file
    /// (memory only: empty after a restart until new entries apply).
    #[serde(skip)]
    pub audit_recent: std::collections::VecDeque<(u64, String)>,
}

/// Entries whose hashes [`ClusterState::audit_recent`] keeps.
pub const RECENT_HASHES: usize = 512;

/// A committed key epoch: the signed record and what it says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommittedEpoch {
    pub record: Signed,
    pub epoch: u64,
    pub threshold: u16,
    pub policy: String,
    pub holders: BTreeMap<u16, NodeId>,
}

impl ClusterState {
    /// The cluster's admin public key and name, for checking an
    /// admin-signed record (`what` names it in the refusal).
    fn admin_key(&self, what: &str) -> Result<([u8; 32], String), String> {
        let c = self
            .cluster
            .as_ref()
            .ok_or_else(|| format!("{what}: no genesis applied yet"))?;
        let pk = bzzz_crypto::records::parse_public_key(&c.admin_public_key)
            .map_err(|e| e.to_string())?;
        Ok((pk, c.name.clone()))
    }

    /// The newest checkpoint (unverified here: every one in the state was
    /// checked when it was applied).
    pub fn last_checkpoint(&self) -> Option<bzzz_proto::access::AuditCheckpoint> {
        self.audit_checkpoints
            .last()
            .and_then(|r| serde_json::from_str(&r.body).ok())
    }

    /// The members: Raft's voters and learners, nodes in the inventory and
    /// share holders, less the removed ones. (Right after setup only Raft's
    /// membership names everyone; the inventory follows a moment later.)
    pub fn members(&self) -> std::collections::BTreeSet<NodeId> {
        let raft = self
            .membership
            .membership()
            .nodes()
            .filter_map(|(_, n)| NodeId::parse(&n.addr).ok());
        self.nodes
            .keys()
            .chain(self.share_holders.values())
            .cloned()
            .chain(raft)
            .filter(|n| !self.removed.contains_key(n))
            .collect()
    }

    /// Removed members, as a set.
    pub fn removed_set(&self) -> std::collections::BTreeSet<NodeId> {
        self.removed.keys().cloned().collect()
    }

    /// The nodes that may read `chain` now.
    pub fn chain_readers(&self, chain: &str) -> std::collections::BTreeSet<NodeId> {
        bzzz_proto::dht::readers(chain, &self.roles, &self.members(), &self.removed_set())
    }

    /// The newest key of `chain`.
    pub fn current_key(&self, chain: &str) -> Option<&bzzz_proto::dht::RoleKey> {
        self.role_keys.get(chain).and_then(|v| v.last())
    }

    /// Chains whose newest key was given to a node that may no longer read
    /// them (a role member removed, a member removed from the cluster):
    /// the next admin change must bring their next key.
    pub fn chains_to_rotate(&self) -> Vec<String> {
        let removed = self.removed_set();
        self.role_keys
            .iter()
            .filter_map(|(chain, keys)| {
                let cur = keys.last()?;
                let lost = if chain == bzzz_proto::dht::MEMBERS_CHAIN {
                    cur.readers.iter().any(|n| removed.contains(n))
                } else {
                    // A deleted role takes no more writes: nothing to rotate.
                    let now = self.chain_readers(chain);
                    self.roles.contains_key(chain) && cur.readers.iter().any(|n| !now.contains(n))
                };
                lost.then(|| chain.clone())
            })
            .collect()
    }

    /// Adds the keys an admin change brings, then checks that no chain
    /// is left with a key a former reader holds.
    fn apply_role_keys(
        &mut self,
        keys: BTreeMap<String, bzzz_proto::dht::RoleKey>,
    ) -> Result<(), String> {
        if keys.len() > 1024 {
            return Err("too many role keys".into());
        }
        for (chain, key) in keys {
            let is_chain =
                chain == bzzz_proto::dht::MEMBERS_CHAIN || self.roles.contains_key(&chain);
            if !is_chain {
                return Err(format!("a key for {chain:?}, which is no role"));
            }
            let next = self.current_key(&chain).map_or(1, |k| k.epoch + 1);
            if key.epoch != next {
                return Err(format!(
                    "key epoch {} of {chain:?} is not the next ({next})",
                    key.epoch
                ));
            }
            bzzz_crypto::seal::parse_recipient(&key.public).map_err(|e| e.to_string())?;
            let now = self.chain_readers(&chain);
            if let Some(n) = key.readers.iter().find(|n| !now.contains(*n)) {
                return Err(format!("key of {chain:?} names {n}, which may not read it"));
            }
            if key.sealed.keys().any(|n| !key.readers.contains(n)) {
                return Err(format!(
                    "key of {chain:?} is sealed to a node it does not name"
                ));
            }
            self.role_keys.entry(chain).or_default().push(key);
        }
        if let Some(chain) = self.chains_to_rotate().first() {
            return Err(format!(
                "the change takes readers from {chain:?} without bringing its next key"
            ));
        }
        Ok(())
    }

    /// Why the admin key is at risk, if it is: fewer than `t + 1` share
    /// holders healthy in the inventory (one more loss and no admin
    /// signature is possible).
    pub fn share_risk(&self) -> Option<String> {
        let t = usize::from(self.cluster.as_ref()?.threshold);
        if self.share_holders.is_empty() {
            return None;
        }
        let live = self
            .share_holders
            .values()
            .filter(|n| self.nodes.get(*n).is_some_and(|r| r.healthy))
            .count();
        (live <= t).then(|| {
            format!(
                "{live} of {} share holders are healthy and {t} are needed to sign",
                self.share_holders.len()
            )
        })
    }

    /// Applies one command at `log_index`; refusals change nothing but the
    /// `rejected` counter.
    pub fn apply_command(&mut self, log_index: u64, cmd: Command) -> Response {
        let r = self.try_apply(log_index, cmd);
        match r {
            Ok(previous) => Response {
                previous,
                rejected: None,
            },
            Err(why) => {
                self.rejected += 1;
                Response {
                    previous: None,
                    rejected: Some(why),
                }
            }
        }
    }

    fn try_apply(&mut self, log_index: u64, cmd: Command) -> Result<Option<String>, String> {
        match cmd {
            Command::Set { key, value } => {
                if key.is_empty() || key.len() > 256 || value.len() > MAX_KV_LEN {
                    return Err("key or value out of bounds".into());
                }
                if !self.kv.contains_key(&key) && self.kv.len() >= MAX_KV_KEYS {
                    return Err(format!(
                        "the registry is full ({MAX_KV_KEYS} keys); existing keys can still change"
                    ));
                }
                Ok(self.kv.insert(key, value))
            }
            Command::Genesis { record } => {
                let g = bzzz_crypto::records::open_genesis(&record, None)
                    .map_err(|e| format!("genesis refused: {e}"))?;
                match &self.cluster {
                    Some(c) if c.admin_public_key == g.admin_public_key => Ok(None),
                    Some(_) => Err("genesis refused: the state belongs to another cluster".into()),
                    None => {
                        self.cluster = Some(ClusterInfo {
                            name: g.cluster,
                            admin_public_key: g.admin_public_key,
                            threshold: g.threshold,
                        });
                        Ok(None)
                    }
                }
            }
            Command::Task { by, now_ms, op } => self.tasks.apply(log_index, &by, now_ms, op),
            Command::AuditCheckpoint { record } => {
                let (pk, name) = self.admin_key("checkpoint refused")?;
                let cp = bzzz_crypto::records::open_checkpoint(&record, &pk, &name)
                    .map_err(|e| format!("checkpoint refused: {e}"))?;
                if cp.seq > self.audit_head.seq {
                    return Err(format!(
                        "checkpoint refused: entry {} is beyond the head {}",
                        cp.seq, self.audit_head.seq
                    ));
                }
                if let Some(last) = self.last_checkpoint()
                    && cp.seq <= last.seq
                {
                    return Err(format!(
                        "checkpoint refused: entry {} is not after the last checkpoint ({})",
                        cp.seq, last.seq
                    ));
                }
                if self.audit_checkpoints.len() >= MAX_CHECKPOINTS {
                    self.audit_checkpoints.remove(0);
                }
                self.audit_checkpoints.push(record);
                Ok(None)
            }
            Command::ShareHolders { holders } => {
                if holders.len() > 10_000 {
                    return Err("share table too large".into());
                }
                self.share_holders = holders;
                Ok(None)
            }
            Command::Inventory { nodes } => {
                if nodes.len() > 10_000 {
                    return Err("inventory too large".into());
                }
                if nodes
                    .values()
                    .any(|r| !r.score.is_finite() || r.score < 0.0)
                {
                    return Err("inventory has an invalid score".into());
                }
                self.totals = Totals::of(&nodes);
                self.nodes = nodes;
                Ok(None)
            }
            Command::ModelPut { entry } => self.models.put(*entry).map_err(|e| e.0),
            Command::ModelRemove { name } => {
                self.models.remove(&name).map(|()| None).map_err(|e| e.0)
            }
            Command::ModelPlace { name, nodes } => self
                .models
                .place(&name, nodes)
                .map(|()| None)
                .map_err(|e| e.0),
            Command::ModelHeld { name, node, digest } => self
                .models
                .set_held(&name, node, digest)
                .map(|()| None)
                .map_err(|e| e.0),
            Command::KeyEpoch { record } => {
                let (pk, name) = self.admin_key("key epoch refused")?;
                let e = bzzz_crypto::records::open_epoch(&record, &pk, &name)
                    .map_err(|e| format!("key epoch refused: {e}"))?;
                let current = self.key_epoch.as_ref().map_or(0, |k| k.epoch);
                if e.epoch != current + 1 {
                    return Err(format!(
                        "key epoch refused: epoch {} does not follow {current}",
                        e.epoch
                    ));
                }
                if let Some(h) = e
                    .holders
                    .iter()
                    .find(|h| self.removed.contains_key(&h.node_id))
                {
                    return Err(format!(
                        "key epoch refused: holder {} was removed",
                        h.node_id
                    ));
                }
                if let Some(cl) = self.cluster.as_mut() {
                    cl.threshold = e.threshold;
                }
                self.share_holders = e.holder_map();
                self.key_epoch = Some(CommittedEpoch {
                    record,
                    epoch: e.epoch,
                    threshold: e.threshold,
                    policy: e.policy.to_string(),
                    holders: e.holder_map(),
                });
                Ok(None)
            }
            Command::RoleKeyGrant {
                chain,
                epoch,
                grants,
            } => {
                let readers = self.chain_readers(&chain);
                let key = self
                    .role_keys
                    .get_mut(&chain)
                    .and_then(|v| v.iter_mut().find(|k| k.epoch == epoch))
                    .ok_or_else(|| format!("grant refused: no key epoch {epoch} of {chain:?}"))?;
                let mut added = 0;
                for (node, sealed) in grants.into_iter().take(4096) {
                    if readers.contains(&node)
                        && !key.sealed.contains_key(&node)
                        && sealed.len() <= 4096
                    {
                        key.readers.insert(node.clone());
                        key.sealed.insert(node, sealed);
                        added += 1;
                    }
                }
                if added == 0 {
                    return Err(
                        "grant refused: no node in it may read the chain or lacks the key".into(),
                    );
                }
                Ok(None)
            }
            Command::Audited {
                notes,
                cmd,
                access,
                proof,
            } => {
                if notes.is_empty() || notes.len() > crate::access::MAX_NOTES {
                    return Err("an audited command carries 1 to 256 notes".into());
                }
                for n in &notes {
                    crate::access::check_note(n)?;
                }
                if matches!(cmd.as_deref(), Some(Command::Audited { .. })) {
                    return Err("audited commands do not nest".into());
                }
                if cmd.is_some() && access.is_some() {
                    return Err("an audited command carries a change or a command, not both".into());
                }
                let principal = notes[0].principal.clone();
                let mut result = Ok(None);
                if let Some(change) = access {
                    result = self
                        .check_proof(&notes[0], &change, proof.as_deref())
                        .and_then(|()| self.apply_access(&principal, change));
                    if result.is_ok() {
                        self.proven_change(&principal, notes[0].time_ms);
                    }
                }
                let latest = notes.iter().map(|n| n.time_ms).max().unwrap_or(0);
                self.audit_clock_ms = self.audit_clock_ms.max(latest);
                if let (Some(cmd), Ok(_)) = (cmd, &result) {
                    result = self.try_apply(log_index, *cmd);
                }
                let refused = result.as_ref().err().cloned();
                for n in notes {
                    self.append_audit(log_index, n, refused.clone());
                }
                result
            }
            Command::Admin { change } => {
                let (pk, name) = self.admin_key("admin change refused")?;
                let ch = bzzz_crypto::records::open_admin_change(&change, &pk, &name)
                    .map_err(|e| format!("admin change refused: {e}"))?;
                if ch.seq <= self.admin_seq {
                    return Err(format!(
                        "admin change refused: seq {} is not after {} (replay or stale)",
                        ch.seq, self.admin_seq
                    ));
                }
                let summary = ch.action.summary();
                let before = (self.roles.clone(), self.removed.clone(), self.nodes.clone());
                let before_keys = self.role_keys.clone();
                let before_operator = (self.operator_change.clone(), self.approved.clone());
                match ch.action {
                    AdminAction::PutRole { role } => {
                        self.roles.insert(role.name.clone(), role);
                    }
                    AdminAction::RemoveRole { name } => {
                        if self.roles.remove(&name).is_none() {
                            return Err(format!("admin change refused: no role {name:?}"));
                        }
                    }
                    AdminAction::SetRule { name, value } => {
                        if name.is_empty() || name.len() > 128 {
                            return Err("admin change refused: bad rule name".into());
                        }
                        match value {
                            Some(v) => self.rules.insert(name, v),
                            None => self.rules.remove(&name),
                        };
                    }
                    AdminAction::RemoveMember { node_id } => {
                        if self.removed.len() >= 10_000 {
                            return Err("admin change refused: too many removals".into());
                        }
                        self.nodes.remove(&node_id);
                        self.removed.insert(node_id, change.clone());
                    }
                    AdminAction::RoleKeys {} => {}
                    AdminAction::SetOperatorKey { public_key } => {
                        bzzz_crypto::access::check_public_hex(&public_key)
                            .map_err(|e| format!("admin change refused: new operator key: {e}"))?;
                        self.operator_change = Some(change.clone());
                    }
                    AdminAction::ApproveMember { node_id } => {
                        if self.approved.len() >= 10_000 {
                            return Err("admin change refused: too many approvals".into());
                        }
                        self.approved.insert(node_id, change.clone());
                    }
                    AdminAction::Access { change } => {
                        if let Err(why) = self.apply_access(bzzz_proto::access::ADMIN_USER, change)
                        {
                            return Err(format!("admin change refused: {why}"));
                        }
                    }
                }
                if let Err(why) = self.apply_role_keys(ch.role_keys) {
                    (self.roles, self.removed, self.nodes) = before;
                    self.role_keys = before_keys;
                    (self.operator_change, self.approved) = before_operator;
                    return Err(format!("admin change refused: {why}"));
                }
                self.admin_seq = ch.seq;
                self.audit.push_back(AuditEntry {
                    log_index,
                    seq: ch.seq,
                    issued_at: ch.issued_at,
                    summary,
                });
                while self.audit.len() > AUDIT_KEEP {
                    self.audit.pop_front();
                }
                Ok(None)
            }
        }
    }
}

#[derive(Debug, Default)]
struct SmInner {
    state: ClusterState,
    snapshot: Option<(SnapshotMeta<NodeIdU64, BasicNode>, Vec<u8>)>,
    snapshot_seq: u64,
    /// Where snapshots are kept (none: memory only).
    db: Option<crate::store::RaftDb>,
    /// Where audit records go (none: dropped).
    audit: Option<crate::audit::AuditFile>,
}

type StoredSnapshot = (SnapshotMeta<NodeIdU64, BasicNode>, Vec<u8>);

/// The state machine (cloneable handle; reads see the applied state).
#[derive(Debug, Clone)]
pub struct StateMachine(
    Arc<Mutex<SmInner>>,
    Arc<tokio::sync::watch::Sender<u64>>,
    Arc<tokio::sync::watch::Sender<u64>>,
);

impl Default for StateMachine {
    fn default() -> Self {
        Self(
            Arc::default(),
            Arc::new(tokio::sync::watch::Sender::new(0)),
            Arc::new(tokio::sync::watch::Sender::new(0)),
        )
    }
}

impl StateMachine {
    fn inner(&self) -> std::sync::MutexGuard<'_, SmInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes when the model registry changes (an applied `Model*` command
    /// or a snapshot): the model agent and the placement planner react at
    /// once instead of on their next tick.
    pub fn watch_models(&self) -> tokio::sync::watch::Receiver<u64> {
        self.1.subscribe()
    }

    fn models_changed(&self) {
        self.1.send_modify(|v| *v += 1);
    }

    /// Wakes when key custody changes: a key epoch committed, a member
    /// removed, or a snapshot installed.
    pub fn watch_keys(&self) -> tokio::sync::watch::Receiver<u64> {
        self.2.subscribe()
    }

    fn keys_changed(&self) {
        self.2.send_modify(|v| *v += 1);
    }

    /// A copy of the applied state.
    pub fn state(&self) -> ClusterState {
        self.inner().state.clone()
    }

    /// Reads the applied state in place (no copy): keep `f` short, the
    /// state machine waits for it.
    pub fn with_state<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.inner().state)
    }

    /// A state machine whose snapshots persist in `db`, starting from the
    /// stored snapshot (openraft re-applies the committed log after it).
    pub fn open(db: crate::store::RaftDb) -> Result<Self, StorageError<NodeIdU64>> {
        let stored: Option<StoredSnapshot> = match db.get_meta("snapshot")? {
            Some(b) => Some(serde_json::from_slice(&b).map_err(io_err)?),
            None => None,
        };
        let mut inner = SmInner {
            db: Some(db),
            ..SmInner::default()
        };
        if let Some((meta, data)) = stored {
            inner.state = serde_json::from_slice(&data).map_err(io_err)?;
            inner.snapshot = Some((meta, data));
        }
        Ok(Self(
            Arc::new(Mutex::new(inner)),
            Arc::new(tokio::sync::watch::Sender::new(0)),
            Arc::new(tokio::sync::watch::Sender::new(0)),
        ))
    }

    /// Sends audit records to the file at `path` (see [`crate::audit`]).
    pub fn set_audit_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        let f = crate::audit::AuditFile::open(path)?;
        self.inner().audit = Some(f);
        Ok(())
    }

    /// The audit file, if any.
    pub fn audit_path(&self) -> Option<std::path::PathBuf> {
        self.inner().audit.as_ref().map(|f| f.path().to_owned())
    }

    fn persist_snapshot(i: &SmInner) -> Result<(), StorageError<NodeIdU64>> {
        if let (Some(db), Some(snap)) = (&i.db, &i.snapshot) {
            db.put_meta("snapshot", &serde_json::to_vec(snap).map_err(io_err)?)?;
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeIdU64>> {
        let mut i = self.inner();
        let data = serde_json::to_vec(&i.state).map_err(io_err)?;
        i.snapshot_seq += 1;
        let meta = SnapshotMeta {
            last_log_id: i.state.last_applied,
            last_membership: i.state.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                i.state.last_applied.map_or(0, |l| l.index),
                i.snapshot_seq
            ),
        };
        i.snapshot = Some((meta.clone(), data.clone()));
        StateMachine::persist_snapshot(&i)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeIdU64>>,
            StoredMembership<NodeIdU64, BasicNode>,
        ),
        StorageError<NodeIdU64>,
    > {
        let i = self.inner();
        Ok((i.state.last_applied, i.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeIdU64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut i = self.inner();
        let mut out = Vec::new();
        let mut models = false;
        let mut keys = false;
        for e in entries {
            i.state.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Response::default()),
                EntryPayload::Normal(cmd) => {
                    let inner = match &cmd {
                        Command::Audited { cmd: Some(c), .. } => c.as_ref(),
                        c => c,
                    };
                    models |= matches!(
                        inner,
                        Command::ModelPut { .. }
                            | Command::ModelRemove { .. }
                            | Command::ModelPlace { .. }
                            | Command::ModelHeld { .. }
                    );
                    keys |= matches!(
                        cmd,
                        Command::KeyEpoch { .. }
                            | Command::Admin { .. }
                            | Command::RoleKeyGrant { .. }
                            | Command::Audited { .. }
                    );
                    let r = i.state.apply_command(e.log_id.index, cmd);
                    out.push(r);
                    let recs = std::mem::take(&mut i.state.audit_out);
                    if let Some(f) = i.audit.as_mut() {
                        // An entry that cannot be kept on disk stops the
                        // state machine (openraft then stops this node):
                        // never an action without its record.
                        f.append(&recs).map_err(io_err)?;
                    }
                }
                EntryPayload::Membership(m) => {
                    i.state.membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(Response::default());
                }
            }
        }
        drop(i);
        if models {
            self.models_changed();
        }
        if keys {
            self.keys_changed();
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeIdU64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeIdU64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeIdU64>> {
        let data = snapshot.into_inner();
        let state: ClusterState = serde_json::from_slice(&data).map_err(io_err)?;
        let mut i = self.inner();
        i.state = state;
        i.snapshot = Some((meta.clone(), data));
        StateMachine::persist_snapshot(&i)?;
        drop(i);
        self.models_changed();
        self.keys_changed();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeIdU64>> {
        Ok(self.inner().snapshot.clone().map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// A node's Raft id: the first 8 bytes of BLAKE3 of its node id (peer id
/// string). The node's [`BasicNode`] address is the node id itself.
pub fn raft_id(node: &NodeId) -> NodeIdU64 {
    let h = blake3::derive_key("bzzz raft node id v1", node.as_str().as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    u64::from_be_bytes(b)
}

/// The Raft settings BZZZ uses, from its timing knobs (milliseconds).
pub fn raft_config(
    heartbeat_ms: u64,
    election_min_ms: u64,
    election_max_ms: u64,
) -> Result<openraft::Config, String> {
    openraft::Config {
        cluster_name: "bzzz".into(),
        heartbeat_interval: heartbeat_ms,
        election_timeout_min: election_min_ms,
        election_timeout_max: election_max_ms,
        // Snapshots go in chunks well under the transport's message limit.
        snapshot_max_chunk_size: 256 * 1024,
        install_snapshot_timeout: 5_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1_000),
        max_in_snapshot_log_to_keep: 200,
        ..Default::default()
    }
    .validate()
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_is_bounded() {
        let mut st = ClusterState::default();
        let set = |k: &str| Command::Set {
            key: k.into(),
            value: "v".into(),
        };
        for i in 0..MAX_KV_KEYS {
            assert!(
                st.apply_command(1, set(&format!("k{i}")))
                    .rejected
                    .is_none()
            );
        }
        let r = st.apply_command(2, set("one-too-many"));
        assert!(r.rejected.is_some_and(|w| w.contains("full")));
        assert_eq!(st.kv.len(), MAX_KV_KEYS);
        // An existing key may still change.
        assert!(st.apply_command(3, set("k0")).rejected.is_none());
        let long = Command::Set {
            key: "x".into(),
            value: "v".repeat(MAX_KV_LEN + 1),
        };
        assert!(st.apply_command(4, long).rejected.is_some());
    }

    #[test]
    fn key_epochs_follow_one_another_and_are_checked_on_apply() {
        use bzzz_crypto::records::{self, Domain};
        use bzzz_proto::cluster::{
            AdminAction, AdminChange, Genesis, KeyEpoch, KeyPolicy, RECORD_VERSION, ShareHolder,
        };
        let master = bzzz_crypto::threshold::MasterKey::generate().expect("rng");
        let admin = master.admin_key();
        let pk = hex::encode(admin.public());
        let sign = |domain: Domain, body: String| {
            let sig = admin.sign(&records::signing_bytes(domain, body.as_bytes()));
            records::signed(body, &sig)
        };
        let ids: Vec<NodeId> = [
            "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xa",
            "12D3KooWKhW5Lm3ZJqzgY6NvbsVfNrHzxJbd3fUrtRzS8Jr4zrzv",
            "12D3KooWRBkuSNu3z5yCQMxLTxcvr2SWfj6g1dJUNvHccQyq2cst",
        ]
        .iter()
        .map(|s| NodeId::parse(s).expect("id"))
        .collect();
        let sharing = admin.split(1, 1).expect("split");
        let genesis = Genesis {
            v: RECORD_VERSION,
            cluster: "lab".into(),
            admin_public_key: pk.clone(),
            threshold: 1,
            shares: 1,
            holders: vec![ShareHolder {
                index: 1,
                node_id: ids[0].clone(),
            }],
            policy: Some(KeyPolicy::Majority),
            commitment: sharing.commitment,
            operator_verifier: "x".into(),
            operator_public_key: None,
            created_at: 1,
            ca_cert: None,
        };
        let mut st = ClusterState::default();
        let g = sign(Domain::Genesis, records::body_text(&genesis).expect("json"));
        assert!(
            st.apply_command(1, Command::Genesis { record: g })
                .rejected
                .is_none()
        );
        let epoch = |n: u64, holders: &[usize], t: u16| {
            let c = admin.split(t, holders.len() as u16).expect("split");
            KeyEpoch {
                v: RECORD_VERSION,
                cluster: "lab".into(),
                admin_public_key: pk.clone(),
                epoch: n,
                policy: KeyPolicy::Majority,
                threshold: t,
                holders: holders
                    .iter()
                    .map(|i| ShareHolder {
                        index: *i as u16 + 1,
                        node_id: ids[*i].clone(),
                    })
                    .collect(),
                commitment: c.commitment,
                dealt_by: [(1, "00".to_owned())].into(),
                issued_at: 2,
            }
        };
        let cmd = |e: &KeyEpoch| Command::KeyEpoch {
            record: sign(Domain::KeyEpoch, records::body_text(e).expect("json")),
        };
        // Not the next epoch.
        let r = st.apply_command(2, cmd(&epoch(2, &[0, 1], 2)));
        assert!(r.rejected.is_some_and(|w| w.contains("does not follow 0")));
        // A threshold the policy does not give (2 of 3 is majority; 3 is not).
        assert!(
            st.apply_command(3, cmd(&epoch(1, &[0, 1, 2], 3)))
                .rejected
                .is_some()
        );
        // Signed under another domain, or edited: refused.
        let e1 = epoch(1, &[0, 1, 2], 2);
        let wrong_domain = sign(Domain::AdminChange, records::body_text(&e1).expect("json"));
        assert!(
            st.apply_command(
                4,
                Command::KeyEpoch {
                    record: wrong_domain
                }
            )
            .rejected
            .is_some()
        );
        let mut edited = match cmd(&e1) {
            Command::KeyEpoch { record } => record,
            _ => unreachable!(),
        };
        edited.body = edited.body.replace("\"threshold\":2", "\"threshold\":1");
        assert!(
            st.apply_command(5, Command::KeyEpoch { record: edited })
                .rejected
                .is_some()
        );
        assert!(st.key_epoch.is_none());
        // The next epoch applies: holders and threshold follow it.
        assert!(st.apply_command(6, cmd(&e1)).rejected.is_none());
        assert_eq!(st.key_epoch.as_ref().map(|k| k.epoch), Some(1));
        assert_eq!(st.share_holders.len(), 3);
        assert_eq!(st.cluster.as_ref().map(|c| c.threshold), Some(2));
        // The same epoch again (a racing coordinator): refused.
        assert!(
            st.apply_command(7, cmd(&epoch(1, &[0, 1], 2)))
                .rejected
                .is_some()
        );
        // A removed member cannot hold a share of a later epoch.
        let removal = AdminChange {
            v: RECORD_VERSION,
            cluster: "lab".into(),
            seq: 1,
            issued_at: 3,
            action: AdminAction::RemoveMember {
                node_id: ids[2].clone(),
            },
            role_keys: BTreeMap::new(),
        };
        let removal = sign(
            Domain::AdminChange,
            records::body_text(&removal).expect("json"),
        );
        assert!(
            st.apply_command(8, Command::Admin { change: removal })
                .rejected
                .is_none()
        );
        assert!(st.removed.contains_key(&ids[2]));
        let r = st.apply_command(9, cmd(&epoch(2, &[0, 1, 2], 2)));
        assert!(r.rejected.is_some_and(|w| w.contains("was removed")));
        assert!(
            st.apply_command(10, cmd(&epoch(2, &[0, 1], 2)))
                .rejected
                .is_none()
        );
    }

    #[test]
    fn model_commands_are_validated_and_survive_a_snapshot() {
        let entry = |name: &str, replicas: u16| ModelEntry::sample(name, 1, replicas);
        let mut st = ClusterState::default();
        let put = |e: ModelEntry| Command::ModelPut { entry: Box::new(e) };
        // Not canonical, zero replicas: refused, nothing changes.
        assert!(
            st.apply_command(1, put(entry("Big:1", 1)))
                .rejected
                .is_some()
        );
        assert!(st.apply_command(2, put(entry("m:1", 0))).rejected.is_some());
        assert!(st.models.models.is_empty());
        assert!(st.apply_command(3, put(entry("m:1", 1))).rejected.is_none());
        let node = NodeId::parse("12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xa").unwrap();
        let place = |n: usize| Command::ModelPlace {
            name: "m:1".into(),
            nodes: vec![
                Placed {
                    node: node.clone(),
                    cpu_only: false
                };
                n
            ],
        };
        assert!(
            st.apply_command(4, place(2)).rejected.is_some(),
            "more copies than wanted"
        );
        assert!(st.apply_command(5, place(1)).rejected.is_none());
        let held = Command::ModelHeld {
            name: "m:1".into(),
            node: node.clone(),
            digest: Some(format!("sha256:{}", "a".repeat(64))),
        };
        assert!(st.apply_command(6, held).rejected.is_none());
        assert_eq!(st.models.ready("m:1"), 1);
        let back: ClusterState = serde_json::from_slice(&serde_json::to_vec(&st).unwrap()).unwrap();
        assert_eq!(back.models, st.models);
        // Removal keeps a tombstone until the holder reports its copy gone.
        assert!(
            st.apply_command(7, Command::ModelRemove { name: "m:1".into() })
                .rejected
                .is_none()
        );
        assert!(st.models.models["m:1"].removed);
        let gone = Command::ModelHeld {
            name: "m:1".into(),
            node,
            digest: None,
        };
        assert!(st.apply_command(8, gone).rejected.is_none());
        assert!(st.models.models.is_empty());
    }
}
