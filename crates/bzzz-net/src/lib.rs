//! The BZZZ libp2p mesh (SPEC §5).
//!
//! One task owns the [`libp2p::Swarm`] (TCP and QUIC, Noise, Yamux,
//! identify, ping, mDNS, Kademlia, gossipsub, connection limits); everything
//! else talks to it through a cloneable [`NetHandle`] (rust-libp2p's
//! `file-sharing` pattern):
//!
//! * **takes** [`Command`]s over a bounded channel (each with a `oneshot`
//!   reply), and the node's own [`LocalInfo`] (capabilities, API address)
//!   through a `watch` channel: a change is announced at once;
//! * **sends** a fresh [`Snapshot`] of the live cluster view through a
//!   `watch` channel whenever it changes: readers never wait on the swarm.
//!
//! Request-response [`Service`]s (one mechanism, [`service`]): each on its
//! own protocol, opaque byte payloads the owning crate encodes, each
//! request on its own stream, so heartbeats never wait behind bulk data.
//! Keys requests (setup, threshold signing, joining) use
//! `/bzzz/keys/2.0.0`, control-plane (Raft) messages `/bzzz/raft/1.0.0`;
//! inbound ones arrive as [`ServiceRequest`]s on each service's bounded
//! queue (the services answer only members). Outbound: [`NetHandle::call`].
//!
//! Once the node is a member of an initialized cluster ([`Membership`]),
//! only peers whose announcements carry a membership certificate under the
//! same cluster admin key enter the view; others are refused, never
//! remembered for redials, and disconnected after [`JOIN_GRACE`].
//!
//! Capability announcements travel on one gossipsub topic inside a signed
//! envelope ([`signed`]). A node enters the view with its first valid
//! announcement and leaves it when its last connection closes, or when it has
//! not announced for `peer_timeout`. Bootstrap addresses are redialed with
//! backoff forever (an unreachable one is reported, never fatal), and so are
//! known peers that lost their connection.
//!
//! The task stops when the [`CancellationToken`] passed to [`start`] is
//! cancelled; dropping the swarm closes every connection, so peers see the
//! node leave at once.

pub mod service;
pub mod signed;
pub mod store;
mod swarm;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bzzz_proto::api::Announcement;

use bzzz_proto::{Capabilities, NodeId};
pub use libp2p::Multiaddr;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Settings of the mesh (validated by the caller's config layer).
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on (TCP and/or QUIC multiaddrs).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start and whenever the connection is lost.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the local link with mDNS.
    pub mdns: bool,
    /// Period of capability announcements.
    pub announce_interval: Duration,
    /// A node that has not announced for this long leaves the view.
    pub peer_timeout: Duration,
    /// Most peers to hold connections to.
    pub max_peers: u32,
    /// Ping period; a failed ping closes the connection (dead links).
    pub ping_interval: Duration,
    /// How long a ping may take. A link with no successful ping for
    /// `2 × ping_interval + ping_timeout` is closed as dead.
    pub ping_timeout: Duration,
    /// The Kademlia record store and how records replicate.
    pub dht: DhtSettings,
}

/// Kademlia record settings.
#[derive(Debug, Clone)]
pub struct DhtSettings {
    /// Where records live (`None`: in memory, accepting every record).
    pub store: Option<store::DiskStore>,
    /// Closest nodes that hold each record.
    pub replication: usize,
    /// How often every holder re-sends its records to the closest nodes
    /// (the steward: lost replicas come back within this, plus a lookup).
    pub replicate_every: Duration,
    /// How often the original publisher re-sends its own records.
    pub republish_every: Duration,
}

impl Default for DhtSettings {
    fn default() -> Self {
        Self {
            store: None,
            replication: 3,
            replicate_every: Duration::from_secs(20),
            republish_every: Duration::from_secs(300),
        }
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: vec![],
            bootstrap: vec![],
            mdns: true,
            announce_interval: Duration::from_secs(2),
            peer_timeout: Duration::from_secs(6),
            max_peers: 128,
            ping_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(1),
            dht: DhtSettings::default(),
        }
    }
}

/// What this node says about itself; updated by the capability collector
/// and by the keys service (membership).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalInfo {
    pub capabilities: Capabilities,
    pub api_addr: Option<String>,
    /// This node's age recipient, announced so that secrets can be sealed
    /// to it.
    pub age_recipient: Option<String>,
    /// Set once this node is a member of an initialized cluster. From then
    /// on, only peers with a certificate under the same admin key enter the
    /// view; the others are refused and disconnected after [`JOIN_GRACE`].
    pub membership: Option<Membership>,
    /// Set while joining with a token (before membership): only peers with
    /// a certificate under this cluster admin key enter the view.
    pub joining: Option<[u8; 32]>,
    /// Members removed from the cluster (admin-signed removals committed
    /// through Raft): refused and disconnected like strangers.
    pub revoked: std::collections::BTreeSet<NodeId>,
    /// This node's key epoch and share state, announced.
    pub share: Option<bzzz_proto::api::ShareReport>,
}

/// This node's membership: the cluster admin key and its certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    pub admin_public_key: [u8; 32],
    pub cert: bzzz_proto::cluster::Signed,
}

/// How long a peer without a valid membership certificate may stay
/// connected to a member (time enough to present a join token).
pub const JOIN_GRACE: Duration = Duration::from_secs(10);

pub use libp2p::kad::{Record, RecordKey};
pub use service::{Service, ServiceRequest};

/// The streams of inbound requests, one per service.
#[derive(Debug)]
pub struct Inbound {
    pub keys: mpsc::Receiver<ServiceRequest>,
    pub raft: mpsc::Receiver<ServiceRequest>,
    pub models: mpsc::Receiver<ServiceRequest>,
    pub dht: mpsc::Receiver<ServiceRequest>,
}

/// A live peer in the view.
#[derive(Debug, Clone)]
pub struct PeerView {
    /// Its latest verified announcement.
    pub announcement: Announcement,
    pub last_seen: Instant,
    /// A direct connection is open.
    pub connected: bool,
    /// Its membership certificate was verified against this node's
    /// cluster admin key: a proven member. Only then may it take part in
    /// keys or control-plane exchanges.
    pub proven: bool,
}

/// Counters since start (for `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub announcements_sent: u64,
    pub announcements_received: u64,
    pub announcements_rejected: u64,
    pub connections_established: u64,
    pub connections_closed: u64,
    pub peers_joined: u64,
    pub peers_left: u64,
}

/// The cluster as this node sees it, at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub local_id: NodeId,
    /// Addresses we listen on, each ending in `/p2p/<local id>`.
    pub listen_addrs: Vec<String>,
    /// Peers with at least one open connection (announced or not).
    pub connected_peers: usize,
    /// Other live nodes, sorted by id.
    pub peers: Vec<PeerView>,
    pub mdns: bool,
    pub counters: NetCounters,
}

/// Requests to the swarm task.
#[derive(Debug)]
pub enum Command {
    /// Dial an address now (reply: whether the dial was started).
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    /// Send a request of a service to a peer and await its answer.
    Request {
        service: Service,
        peer: NodeId,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    /// Send records to the closest nodes (this node stores its own copy
    /// with [`store::DiskStore::put_many`], meanwhile).
    DhtPut {
        records: Vec<(Vec<u8>, Vec<u8>)>,
        quorum: usize,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    /// The members closest to a key, when the routing table knows every
    /// member (`None`: ask Kademlia).
    DhtClosest {
        key: Vec<u8>,
        reply: oneshot::Sender<Option<Vec<NodeId>>>,
    },
    /// Store a record at the named nodes (read repair).
    DhtPutTo {
        key: Vec<u8>,
        value: Vec<u8>,
        peers: Vec<NodeId>,
    },
    /// Look a record up: the values found (with who held them, `None`:
    /// this node), once `want` are found or the lookup ends.
    DhtGet {
        key: Vec<u8>,
        want: usize,
        reply: oneshot::Sender<Result<Vec<Found>, NetError>>,
    },
    /// Join a coordination topic (its messages arrive on
    /// [`NetHandle::gossip`]).
    Join {
        topic: String,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    /// Leave a coordination topic.
    Leave { topic: String },
    /// Publish on a coordination topic (joined or not).
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
}

/// Coordination topics (agents' per-task topics, SPEC §10) start with
/// this; the capability topic is not one of them.
pub const COORD_PREFIX: &str = "bzzz/coord/";
/// Largest coordination message, bytes.
pub const MAX_COORD_BYTES: usize = 16 * 1024;
/// Most coordination topics a node joins at once.
pub const MAX_COORD_TOPICS: usize = 64;

/// A message on a coordination topic, from a node in the view (a proven
/// member once the cluster is initialized; gossipsub's strict signing
/// proves the author).
#[derive(Debug, Clone)]
pub struct Gossip {
    pub topic: String,
    pub from: NodeId,
    pub data: Vec<u8>,
}

/// Checks a coordination topic name: the prefix, then 1 to 128 of
/// `[A-Za-z0-9._/-]`.
pub fn check_topic(topic: &str) -> Result<(), NetError> {
    let rest = topic.strip_prefix(COORD_PREFIX).unwrap_or_default();
    if rest.is_empty()
        || rest.len() > 128
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
    {
        return Err(NetError::Topic(format!(
            "{topic:?}: a coordination topic is {COORD_PREFIX} and 1 to 128 of [A-Za-z0-9._/-]"
        )));
    }
    Ok(())
}

/// A value a DHT lookup found, with its holder (`None`: this node).
pub type Found = (Option<NodeId>, Vec<u8>);

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid node key: {0}")]
    Key(String),
    #[error("cannot build the network stack: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("cannot dial {addr}: {reason}")]
    Dial { addr: Multiaddr, reason: String },
    #[error("the network task has stopped")]
    Stopped,
    #[error("request to {peer} failed: {reason}")]
    Request { peer: NodeId, reason: String },
    #[error("DHT: {0}")]
    Dht(String),
    #[error("coordination: {0}")]
    Topic(String),
}

/// Cloneable handle to the swarm task.
#[derive(Debug, Clone)]
pub struct NetHandle {
    local_id: NodeId,
    cmd: mpsc::Sender<Command>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    gossip: tokio::sync::broadcast::Sender<Gossip>,
}

impl NetHandle {
    pub fn local_id(&self) -> &NodeId {
        &self.local_id
    }

    /// Messages of the joined coordination topics (a slow reader loses
    /// the oldest: coordination is best effort).
    pub fn gossip(&self) -> tokio::sync::broadcast::Receiver<Gossip> {
        self.gossip.subscribe()
    }

    /// Joins a coordination topic (at most [`MAX_COORD_TOPICS`]).
    pub async fn join(&self, topic: &str) -> Result<(), NetError> {
        check_topic(topic)?;
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Join {
                topic: topic.to_owned(),
                reply,
            })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Leaves a coordination topic.
    pub async fn leave(&self, topic: &str) {
        let _ = self
            .cmd
            .send(Command::Leave {
                topic: topic.to_owned(),
            })
            .await;
    }

    /// Publishes on a coordination topic (at most [`MAX_COORD_BYTES`]);
    /// an error when no peer has joined it.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), NetError> {
        check_topic(topic)?;
        if data.len() > MAX_COORD_BYTES {
            return Err(NetError::Topic(format!(
                "a coordination message is at most {MAX_COORD_BYTES} bytes"
            )));
        }
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Publish {
                topic: topic.to_owned(),
                data,
                reply,
            })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// The latest view (cheap: an `Arc` clone).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver that wakes on every change of the view.
    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Dial { addr, reply })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Sends a request of `service` and waits for the answer (bounded by
    /// the service's timeout; callers may add their own deadline).
    pub async fn call(
        &self,
        service: Service,
        peer: &NodeId,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Request {
                service,
                peer: peer.clone(),
                payload,
                reply,
            })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Sends records to the `replication` closest nodes; `Ok` once
    /// `quorum` of them stored each (0: at once, the copies go on). This
    /// node's own copy is the caller's ([`store::DiskStore::put_many`]).
    pub async fn dht_put(
        &self,
        records: Vec<(Vec<u8>, Vec<u8>)>,
        quorum: usize,
    ) -> Result<(), NetError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::DhtPut {
                records,
                quorum,
                reply,
            })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// The `replication` members closest to `key` when this node's
    /// routing table knows every member in the view (the exact answer,
    /// no lookup needed); `None` otherwise.
    pub async fn dht_closest(&self, key: Vec<u8>) -> Option<Vec<NodeId>> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::DhtClosest { key, reply })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    /// Sends a record to the named nodes (no answer awaited).
    pub async fn dht_put_to(&self, key: Vec<u8>, value: Vec<u8>, peers: Vec<NodeId>) {
        let _ = self.cmd.send(Command::DhtPutTo { key, value, peers }).await;
    }

    /// Looks a record up: every value found with its holder (`None`: this
    /// node), returned once `want` values are in or the lookup ends.
    pub async fn dht_get(&self, key: Vec<u8>, want: usize) -> Result<Vec<Found>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::DhtGet { key, want, reply })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// A control-plane message (see [`Service::Raft`]).
    pub async fn raft_request(&self, peer: &NodeId, payload: Vec<u8>) -> Result<Vec<u8>, NetError> {
        self.call(Service::Raft, peer, payload).await
    }
}

/// The node id that a node key (seed) gives.
pub fn node_id_of(seed: &bzzz_crypto::SecretBytes32) -> Result<NodeId, NetError> {
    let mut copy = zeroize::Zeroizing::new(*seed.expose());
    let key = libp2p::identity::Keypair::ed25519_from_bytes(copy.as_mut())
        .map_err(|e| NetError::Key(e.to_string()))?;
    signed::node_id(&key.public().to_peer_id()).map_err(|e| NetError::Key(e.to_string()))
}

/// Builds the swarm, starts listening, and spawns its task on `tracker`.
/// Returns the handle and the streams of inbound requests.
///
/// Fails (before spawning anything) when the key is unusable or an address
/// cannot be bound, so the caller can report it and exit.
pub fn start(
    seed: &bzzz_crypto::SecretBytes32,
    cfg: NetConfig,
    local: watch::Receiver<LocalInfo>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(NetHandle, Inbound), NetError> {
    let (node, handle, inbound) = swarm::Node::new(seed, cfg, local)?;
    tracker.spawn(node.run(cancel));
    Ok((handle, inbound))
}
