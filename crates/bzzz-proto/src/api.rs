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
