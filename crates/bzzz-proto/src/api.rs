//! Types of the HTTP API (`/api/v1/…`) and of the capability gossip.
//!
//! The API types are the contract the CLI (and outside scripts) rely on:
//! fields may be added, never renamed or removed.

use serde::{Deserialize, Serialize};

use crate::{Capabilities, NodeId};

/// Version of the announcement encoding on the gossip topic.
pub const ANNOUNCEMENT_VERSION: u32 = 1;

/// Most addresses a node may announce.
pub const MAX_ANNOUNCED_ADDRS: usize = 32;

/// Signed body of a capability announcement (the gossip payload).
///
/// The network layer wraps the JSON encoding of this value in a signed
/// envelope; `node_id` must match the key that signed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    /// Encoding version ([`ANNOUNCEMENT_VERSION`]).
    pub v: u32,
    pub node_id: NodeId,
    /// Strictly increasing per node (milliseconds since the epoch at the time
    /// of sending, bumped when the clock does not move): replays are ignored.
    pub seq: u64,
    /// Addresses the node listens on (multiaddr text), for direct dialing.
    pub addrs: Vec<String>,
    /// HTTP API address of the node, when it serves one.
    #[serde(default)]
    pub api_addr: Option<String>,
    /// Seconds since the node started.
    #[serde(default)]
    pub uptime_secs: u64,
    pub capabilities: Capabilities,
    /// The node's age recipient (`age1…`): secrets for it are sealed to it.
    #[serde(default)]
    pub age_recipient: Option<String>,
    /// The node's membership certificate, once the cluster is initialized.
    #[serde(default)]
    pub membership: Option<crate::cluster::Signed>,
    /// Its key epoch and the state of its share (a holder whose share is
    /// missing gets one in the next re-deal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<ShareReport>,
}

/// A node's key epoch and the state of its share of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareReport {
    pub epoch: u64,
    /// `valid`, `missing` (a holder without its share) or `invalid`
    /// (failed its check: reported, never replaced automatically), or
    /// `none` (not a holder).
    pub state: ShareCondition,
}

/// See [`ShareReport::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareCondition {
    Valid,
    Missing,
    Invalid,
    None,
}

/// Why an announcement body is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnouncementError {
    #[error("unsupported announcement version {0}")]
    Version(u32),
    #[error("too many addresses ({0})")]
    TooManyAddrs(usize),
    #[error("address too long")]
    AddrTooLong,
    #[error(transparent)]
    Caps(#[from] crate::caps::CapsError),
}

impl Announcement {
    pub fn validate(&self) -> Result<(), AnnouncementError> {
        if self.v != ANNOUNCEMENT_VERSION {
            return Err(AnnouncementError::Version(self.v));
        }
        if self.addrs.len() > MAX_ANNOUNCED_ADDRS {
            return Err(AnnouncementError::TooManyAddrs(self.addrs.len()));
        }
        let too_long = |a: &String| a.len() > 256;
        if self.addrs.iter().any(too_long) || self.api_addr.as_ref().is_some_and(too_long) {
            return Err(AnnouncementError::AddrTooLong);
        }
        self.capabilities.validate()?;
        Ok(())
    }
}

/// `GET /api/v1/status`: this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub node_id: NodeId,
    pub version: String,
    pub uptime_secs: u64,
    /// Multiaddrs the node listens on (with `/p2p/<node_id>` appended).
    pub listen_addrs: Vec<String>,
    /// HTTP API address actually bound.
    pub api_addr: String,
    /// Other live nodes in this node's view.
    pub peer_count: usize,
    /// Peers with an open connection (may include nodes that never announced).
    pub connected_peers: usize,
    pub mdns: bool,
    pub capabilities: Capabilities,
}

/// One entry of `GET /api/v1/peers`: another live node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub node_id: NodeId,
    pub addrs: Vec<String>,
    #[serde(default)]
    pub api_addr: Option<String>,
    /// A direct connection is open to it right now.
    pub connected: bool,
    /// Milliseconds since its last announcement arrived.
    pub last_seen_ms_ago: u64,
    pub uptime_secs: u64,
    pub capabilities: Capabilities,
}

/// Body of every API error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

// ---- keys (`/api/v1/setup…`, `/api/v1/keys…`, `/api/v1/tokens`) -----------

/// `POST /api/v1/setup` answer: the only time the master key leaves the
/// node (24 words and hex; zeroized on drop, never printed by `Debug`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetupStarted {
    pub setup_id: String,
    pub mnemonic: crate::cluster::WireSecret,
    pub master_key_hex: crate::cluster::WireSecret,
    pub admin_public_key: String,
    pub cluster: String,
    pub threshold: u16,
    pub shares: u16,
    /// 1-based positions of the words to re-type.
    pub confirm_positions: Vec<usize>,
    pub expires_in_secs: u64,
}

impl SetupStarted {
    /// The words at `confirm_positions` (position → word), taken from the
    /// mnemonic: for unattended confirmation by a caller that already holds
    /// the words (`init --json`, `recover --api`, the demo).
    pub fn confirmation_words(&self) -> std::collections::BTreeMap<String, String> {
        let words: Vec<&str> = self.mnemonic.expose().split(' ').collect();
        self.confirm_positions
            .iter()
            .filter_map(|p| Some((p.to_string(), (*words.get(p.checked_sub(1)?)?).to_owned())))
            .collect()
    }
}

/// `POST /api/v1/setup/confirm` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupConfirm {
    pub setup_id: String,
    /// Position (1 to 24, as text) → word.
    pub words: std::collections::BTreeMap<String, String>,
}

/// `POST /api/v1/setup/confirm` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetupDone {
    pub cluster: String,
    pub admin_public_key: String,
    pub threshold: u16,
    pub shares: u16,
    pub holders: Vec<crate::cluster::ShareHolder>,
    /// Nodes that could not be given their records (with the reason).
    pub undelivered: Vec<Undelivered>,
    /// The cluster CA: `SHA256:` and the hex of its certificate's DER
    /// digest (absent for clusters without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Undelivered {
    pub node_id: NodeId,
    pub error: String,
}

/// `GET /api/v1/keys`. Never secret material.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysStatus {
    pub initialized: bool,
    pub cluster: Option<String>,
    pub admin_public_key: Option<String>,
    pub threshold: Option<u16>,
    pub shares: Option<u16>,
    pub share_index: Option<u16>,
    /// `valid`, `invalid` or `none`.
    pub share_state: String,
    pub share_error: Option<String>,
    pub holders: Vec<crate::cluster::ShareHolder>,
    pub setup_pending: bool,
    /// The current key epoch (0: the sharing dealt at setup).
    #[serde(default)]
    pub epoch: Option<u64>,
    /// `majority` or `fixed:T`.
    #[serde(default)]
    pub policy: Option<String>,
    /// Warnings about the admin key's custody (e.g. only one node holds
    /// it).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// `POST /api/v1/keys/sign` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    pub message: String,
    #[serde(default)]
    pub signers: Option<Vec<String>>,
}

/// A threshold signature and who made it (`POST /api/v1/keys/sign`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThresholdSignature {
    pub signature: String,
    pub admin_public_key: String,
    pub signers: Vec<NodeId>,
    /// The exact bytes signed (domain tag, NUL, message), hex.
    pub signed_bytes_hex: String,
}

/// `POST /api/v1/tokens` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    #[serde(default)]
    pub uses: Option<u32>,
}

/// `POST /api/v1/tokens` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: crate::cluster::WireSecret,
    pub id: String,
    pub expires_at: u64,
    pub uses: u32,
    pub cluster: String,
}

// ---- control plane ------------------------------------------------------------

/// `GET /api/v1/leader` and `bzzz leader --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// Node id of the leader, if one is known.
    pub leader: Option<String>,
    pub term: u64,
    /// Voting members (node ids).
    pub voters: Vec<String>,
    /// Non-voting members (node ids).
    pub learners: Vec<String>,
    /// Node id → score (the replicated inventory; this node's own view for
    /// members not recorded yet).
    pub scores: std::collections::BTreeMap<String, f64>,
    /// This node's role: `leader`, `follower`, `candidate`, `learner`,
    /// `not_started` (not a cluster member yet).
    pub state: String,
    /// Index of the last applied log entry.
    pub last_applied: Option<u64>,
    pub node_id: String,
}

impl LeaderInfo {
    /// A member's role in this view: `leader`, `voter`, `learner` or `-`.
    pub fn role_of(&self, id: &str) -> &'static str {
        if self.leader.as_deref() == Some(id) {
            "leader"
        } else if self.voters.iter().any(|v| v == id) {
            "voter"
        } else if self.learners.iter().any(|v| v == id) {
            "learner"
        } else {
            "-"
        }
    }
}

/// `POST /api/v1/registry` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySet {
    pub key: String,
    pub value: String,
}

/// `POST /api/v1/roles` and `/api/v1/admin/changes` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    pub applied: bool,
}

// ---- deploy -------------------------------------------------------------------

/// `POST /api/v1/deploy` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployStarted {
    pub id: String,
    pub hosts: Vec<String>,
    /// Path of the run's event stream (Server-Sent Events).
    pub events: String,
}

/// One member as `GET /api/v1/members` lists it (`bzzz member ls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub node_id: NodeId,
    /// `member` (in sight), `pending` (in sight, admitted by a multi-use
    /// token and not yet approved as a share holder), `gone` (out of
    /// sight) or `removed`.
    pub state: String,
    /// Its share index in the current key epoch, if it holds one.
    pub share_index: Option<u16>,
    /// `leader`, `voter`, `learner` or `none` (not in Raft).
    pub raft: String,
    /// The node answering.
    pub this_node: bool,
    /// Seconds since the answering node last saw it (gone members).
    pub gone_secs: Option<u64>,
}

/// `POST /api/v1/keys/policy` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    /// `majority` or `fixed:T`.
    pub policy: String,
}
