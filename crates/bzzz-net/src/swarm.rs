//! The swarm task: owns the `Swarm`, the live view and the announcer.
//!
//! Takes: swarm events, [`Command`]s, changes of [`LocalInfo`], two timers
//! (announce, maintenance). Sends: gossip announcements, dials, and a new
//! [`Snapshot`] on every change of the view. Stops on cancellation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bzzz_proto::api::{ANNOUNCEMENT_VERSION, Announcement, MAX_ANNOUNCED_ADDRS};

use futures::StreamExt;

use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, connection_limits, gossipsub, identify, identity,
    kad, mdns, noise, ping, tcp, yamux,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::service::{Frame, Rr, Service, Services};
use crate::{
    Command, Inbound, JOIN_GRACE, LocalInfo, NetConfig, NetCounters, NetError, NetHandle, PeerView,
    Snapshot, signed,
};

/// Gossip topic of capability announcements.
pub const CAPS_TOPIC: &str = "bzzz/caps/v1";
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/bzzz/kad/1.0.0");
const IDENTIFY_PROTOCOL: &str = "/bzzz/id/1.0.0";
const MAINTENANCE: Duration = Duration::from_millis(250);
const BOOTSTRAP_BACKOFF_MAX: Duration = Duration::from_secs(30);
const REDIAL_BACKOFF_MIN: Duration = Duration::from_secs(1);
const REDIAL_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A known peer not heard of for this long is forgotten (no more redials).
const FORGET_AFTER: Duration = Duration::from_secs(3600);
const KAD_BOOTSTRAP_EVERY: Duration = Duration::from_secs(60);
/// Minimum spacing of announcements triggered by events (not the timer).
const ANNOUNCE_MIN_GAP: Duration = Duration::from_millis(200);
const COMMAND_QUEUE: usize = 64;
/// After a peer's last connection closes, how long a new one may take to
/// replace it before the peer leaves the view. Connection limits apply on
/// each side separately, so during simultaneous dials (TCP and QUIC, both
/// directions) one side can close a connection the other already counted;
/// that is churn, not death.
const LEAVE_GRACE: Duration = Duration::from_millis(300);

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    kad: kad::Behaviour<crate::store::DiskStore>,
    gossipsub: gossipsub::Behaviour,
    // One field per request-response service (see `service`).
    keys: Rr,
    raft: Rr,
    models: Rr,
    dht: Rr,
}

impl Behaviour {
    fn service(&mut self, s: Service) -> &mut Rr {
        match s {
            Service::Keys => &mut self.keys,
            Service::Raft => &mut self.raft,
            Service::Models => &mut self.models,
            Service::Dht => &mut self.dht,
        }
    }
}

struct Bootstrap {
    addr: Multiaddr,
    peer: Option<PeerId>,
    next_try: Instant,
    backoff: Duration,
}

struct Entry {
    ann: Announcement,
    last_seen: Instant,
    /// Entered before this node gained membership and not proven since:
    /// leaves at this instant unless it re-announces with a certificate.
    prove_by: Option<Instant>,
}

/// Address book entry: a peer we have known, redialed while disconnected.
struct Known {
    addrs: Vec<Multiaddr>,
    last_heard: Instant,
    next_try: Instant,
    backoff: Duration,
}

pub(crate) struct Node {
    swarm: Swarm<Behaviour>,
    topic: gossipsub::IdentTopic,
    /// Joined coordination topics, by hash.
    coord: HashMap<gossipsub::TopicHash, String>,
    gossip_tx: tokio::sync::broadcast::Sender<crate::Gossip>,
    key: identity::Keypair,
    local_peer: PeerId,
    local_id: bzzz_proto::NodeId,
    cfg: NetConfig,
    local: watch::Receiver<LocalInfo>,
    cmd_rx: mpsc::Receiver<Command>,
    snapshot_tx: watch::Sender<Arc<Snapshot>>,
    view: HashMap<PeerId, Entry>,
    listen_addrs: Vec<Multiaddr>,
    bootstraps: Vec<Bootstrap>,
    bootstrap_dials: HashMap<ConnectionId, usize>,
    known: HashMap<PeerId, Known>,
    /// Peers whose last connection closed, with when and why.
    closing: HashMap<PeerId, (Instant, String)>,
    /// Last successful ping per connected peer (link liveness).
    last_pong: HashMap<PeerId, Instant>,
    seq: u64,
    started: Instant,
    last_announce: Option<Instant>,
    announce_due: bool,
    last_kad_bootstrap: Option<Instant>,
    counters: NetCounters,
    dirty: bool,
    services: Services,
    /// Boot id each connection's peer reported (identify), to close the
    /// connections of a peer's previous process when it restarts.
    boots: HashMap<ConnectionId, (PeerId, String)>,
    /// Connected peers not (yet) proven members, with when they connected.
    unproven: HashMap<PeerId, Instant>,
    /// Peers already reported as refused (log once).
    refused_logged: HashSet<PeerId>,
    /// DHT lookups and stores in progress.
    dht_queries: HashMap<kad::QueryId, DhtQuery>,
    put_groups: HashMap<u64, PutGroup>,
    next_put_group: u64,
}

/// A put of several records: answered when every one is done.
struct PutGroup {
    left: usize,
    error: Option<String>,
    reply: tokio::sync::oneshot::Sender<Result<(), NetError>>,
}

enum DhtQuery {
    /// One record of a [`PutGroup`].
    Part(u64),
    Get {
        want: usize,
        found: Vec<crate::Found>,
        reply: Option<tokio::sync::oneshot::Sender<Result<Vec<crate::Found>, NetError>>>,
    },
    Fire,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

impl Node {
    pub(crate) fn new(
        seed: &bzzz_crypto::SecretBytes32,
        cfg: NetConfig,
        local: watch::Receiver<LocalInfo>,
    ) -> Result<(Self, NetHandle, Inbound), NetError> {
        let mut seed_copy = zeroize::Zeroizing::new(*seed.expose());
        let key = identity::Keypair::ed25519_from_bytes(seed_copy.as_mut())
            .map_err(|e| NetError::Key(e.to_string()))?;
        let local_peer = key.public().to_peer_id();
        let local_id = signed::node_id(&local_peer).map_err(|e| NetError::Key(e.to_string()))?;

        let transport_err = |e: &dyn std::fmt::Display| NetError::Transport(e.to_string());
        // This process's boot id, sent in identify's agent version: a peer
        // that sees a new boot id on a new connection knows the older
        // connections lead to a process that is gone.
        let boot = {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| NetError::Transport(e.to_string()))?;
            hex::encode(b)
        };
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| transport_err(&e))?
            // A LAN handshake takes milliseconds; a dial to a stale QUIC port
            // should give up well before the next redial.
            .with_quic_config(|mut c| {
                c.handshake_timeout = Duration::from_secs(3);
                c
            })
            .with_behaviour(|key| build_behaviour(key, &cfg, &boot))
            .map_err(|e| transport_err(&e))?
            .with_swarm_config(|c| {
                // Liveness is decided by ping and announcements, not by idleness:
                // gossipsub keeps only mesh members busy, and we want every peer.
                c.with_idle_connection_timeout(Duration::from_secs(3600))
            })
            .build();

        swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
        let topic = gossipsub::IdentTopic::new(CAPS_TOPIC);
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(|e| NetError::Transport(e.to_string()))?;

        for addr in &cfg.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }

        let now = Instant::now();
        let bootstraps = cfg
            .bootstrap
            .iter()
            .map(|addr| Bootstrap {
                addr: addr.clone(),
                peer: peer_of(addr),
                next_try: now,
                backoff: Duration::from_secs(1),
            })
            .collect();

        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let snapshot = Arc::new(Snapshot {
            local_id: local_id.clone(),
            listen_addrs: vec![],
            connected_peers: 0,
            peers: vec![],
            mdns: cfg.mdns,
            counters: NetCounters::default(),
        });
        let (snapshot_tx, snapshot_rx) = watch::channel(snapshot);
        let (gossip_tx, _) = tokio::sync::broadcast::channel(256);
        let (services, mut receivers) = Services::new();
        let node = Node {
            coord: HashMap::new(),
            gossip_tx: gossip_tx.clone(),
            swarm,
            topic,
            key,
            local_peer,
            local_id: local_id.clone(),
            cfg,
            local,
            cmd_rx,
            snapshot_tx,
            view: HashMap::new(),
            listen_addrs: vec![],
            bootstraps,
            bootstrap_dials: HashMap::new(),
            known: HashMap::new(),
            closing: HashMap::new(),
            last_pong: HashMap::new(),
            seq: 0,
            started: now,
            last_announce: None,
            announce_due: true,
            last_kad_bootstrap: None,
            counters: NetCounters::default(),
            dirty: true,
            services,
            boots: HashMap::new(),
            unproven: HashMap::new(),
            refused_logged: HashSet::new(),
            dht_queries: HashMap::new(),
            put_groups: HashMap::new(),
            next_put_group: 0,
        };
        let handle = NetHandle {
            local_id,
            cmd: cmd_tx,
            snapshot: snapshot_rx,
            gossip: gossip_tx,
        };
        let mut take = |s: Service| {
            receivers
                .remove(&s)
                .ok_or_else(|| NetError::Transport(format!("no queue for {s:?}")))
        };
        let inbound = Inbound {
            keys: take(Service::Keys)?,
            raft: take(Service::Raft)?,
            models: take(Service::Models)?,
            dht: take(Service::Dht)?,
        };
        Ok((node, handle, inbound))
    }

    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        info!(node_id = %self.local_peer, "network started");
        let mut announce = tokio::time::interval(self.cfg.announce_interval);
        announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut maintenance = tokio::time::interval(MAINTENANCE);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                Some(cmd) = self.cmd_rx.recv() => self.on_command(cmd),
                Ok(()) = self.local.changed() => self.on_local_change(),
                Some((service, answer)) = self.services.next_answer() => {
                    if let Some((channel, payload)) = answer {
                        let _ = self.swarm.behaviour_mut().service(service).send_response(channel, Frame(payload));
                    }
                }
                _ = announce.tick() => self.announce(),
                _ = maintenance.tick() => self.maintain(),
            }
            if self.dirty {
                self.publish_snapshot();
            }
        }
        info!("network stopping");
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial { addr, reply } => {
                let r = self.swarm.dial(addr.clone()).map_err(|e| NetError::Dial {
                    addr,
                    reason: e.to_string(),
                });
                let _ = reply.send(r);
            }
            Command::Request {
                service,
                peer,
                payload,
                reply,
            } => {
                let rr = self.swarm.behaviour_mut().service(service);
                self.services.request(rr, service, &peer, payload, reply);
            }
            Command::DhtPut {
                records,
                quorum,
                reply,
            } => self.dht_put(records, quorum, reply),
            Command::DhtClosest { key, reply } => {
                let peers = self
                    .closest_members(&kad::RecordKey::new(&key))
                    .map(|v| v.iter().filter_map(|p| signed::node_id(p).ok()).collect());
                let _ = reply.send(peers);
            }
            Command::DhtPutTo { key, value, peers } => {
                let peers: Vec<PeerId> = peers
                    .iter()
                    .filter_map(|p| p.as_str().parse().ok())
                    .collect();
                if !peers.is_empty() {
                    let record = kad::Record::new(kad::RecordKey::new(&key), value);
                    let id = self.swarm.behaviour_mut().kad.put_record_to(
                        record,
                        peers.into_iter(),
                        kad::Quorum::One,
                    );
                    self.dht_queries.insert(id, DhtQuery::Fire);
                }
            }
            Command::Join { topic, reply } => {
                let r = if self.coord.len() >= crate::MAX_COORD_TOPICS
                    && !self.coord.values().any(|t| *t == topic)
                {
                    Err(NetError::Topic(format!(
                        "at most {} coordination topics at once",
                        crate::MAX_COORD_TOPICS
                    )))
                } else {
                    let t = gossipsub::IdentTopic::new(topic.clone());
                    self.coord.insert(t.hash(), topic);
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .subscribe(&t)
                        .map(|_| ())
                        .map_err(|e| NetError::Topic(e.to_string()))
                };
                let _ = reply.send(r);
            }
            Command::Leave { topic } => {
                let t = gossipsub::IdentTopic::new(topic);
                if self.coord.remove(&t.hash()).is_some() {
                    self.swarm.behaviour_mut().gossipsub.unsubscribe(&t);
                }
            }
            Command::Publish { topic, data, reply } => {
                let r = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(gossipsub::IdentTopic::new(topic), data)
                    .map(|_| ())
                    .map_err(|e| NetError::Topic(e.to_string()));
                let _ = reply.send(r);
            }
            Command::DhtGet { key, want, reply } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_record(kad::RecordKey::new(&key));
                self.dht_queries.insert(
                    id,
                    DhtQuery::Get {
                        want: want.max(1),
                        found: vec![],
                        reply: Some(reply),
                    },
                );
            }
        }
    }

    /// The `replication` members closest to `key`, when the routing table
    /// knows every member in the view (then the local answer is the exact
    /// one and the iterative lookup of a Kademlia put can be skipped: one
    /// round trip instead of three). `None`: look them up.
    fn closest_members(&mut self, key: &kad::RecordKey) -> Option<Vec<PeerId>> {
        let members: HashSet<PeerId> = self
            .view
            .keys()
            .filter(|p| self.swarm.is_connected(p))
            .copied()
            .collect();
        if members.is_empty() {
            return None;
        }
        let kad = &mut self.swarm.behaviour_mut().kad;
        let mut known = 0;
        for b in kad.kbuckets() {
            known += b
                .iter()
                .filter(|e| members.contains(e.node.key.preimage()))
                .count();
        }
        if known < members.len() {
            return None;
        }
        let target = kad::KBucketKey::new(key.clone());
        Some(
            kad.get_closest_local_peers(&target)
                .map(|k| *k.preimage())
                .filter(|p| members.contains(p))
                .take(self.cfg.dht.replication.max(1))
                .collect(),
        )
    }

    /// Sends records to the closest members: straight to them when the
    /// routing table knows every member, else by Kademlia's lookup (which
    /// also stores here: the same value again costs a read).
    fn dht_put(
        &mut self,
        records: Vec<(Vec<u8>, Vec<u8>)>,
        quorum: usize,
        reply: tokio::sync::oneshot::Sender<Result<(), NetError>>,
    ) {
        let q = match std::num::NonZeroUsize::new(quorum) {
            Some(n) => kad::Quorum::N(n),
            None => kad::Quorum::One,
        };
        let group = self.next_put_group;
        self.next_put_group += 1;
        let mut left = 0;
        for (key, value) in records {
            let mut record = kad::Record::new(kad::RecordKey::new(&key), value);
            record.publisher = Some(self.local_peer);
            let id = match self.closest_members(&record.key) {
                Some(peers) => {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .put_record_to(record, peers.into_iter(), q)
                }
                None => match self.swarm.behaviour_mut().kad.put_record(record, q) {
                    Ok(id) => id,
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Dht(format!(
                            "this node refuses the record ({e:?}); see its log"
                        ))));
                        return;
                    }
                },
            };
            let part = if quorum == 0 {
                DhtQuery::Fire
            } else {
                DhtQuery::Part(group)
            };
            self.dht_queries.insert(id, part);
            left += 1;
        }
        if quorum == 0 || left == 0 {
            let _ = reply.send(Ok(()));
            return;
        }
        self.put_groups.insert(
            group,
            PutGroup {
                left,
                error: None,
                reply,
            },
        );
    }

    /// A step of a DHT query: answers its caller when it is done (or, for
    /// a lookup, once enough values are in).
    fn on_kad_progress(&mut self, id: kad::QueryId, result: kad::QueryResult, last: bool) {
        match result {
            kad::QueryResult::PutRecord(r) => {
                if let Some(DhtQuery::Part(g)) = self.dht_queries.remove(&id) {
                    let done = match self.put_groups.get_mut(&g) {
                        Some(group) => {
                            group.left -= 1;
                            if let Err(e) = r {
                                group.error.get_or_insert(match e {
                                    kad::PutRecordError::QuorumFailed { success, quorum, .. } => format!(
                                        "stored at {} node(s), {quorum} needed (the others refused it or did not answer)",
                                        success.len()
                                    ),
                                    kad::PutRecordError::Timeout { success, quorum, .. } => format!(
                                        "timed out: stored at {} node(s), {quorum} needed",
                                        success.len()
                                    ),
                                });
                            }
                            group.left == 0
                        }
                        None => false,
                    };
                    if done && let Some(group) = self.put_groups.remove(&g) {
                        let _ = group.reply.send(match group.error {
                            Some(e) => Err(NetError::Dht(e)),
                            None => Ok(()),
                        });
                    }
                } else if !last {
                    return;
                }
            }
            kad::QueryResult::GetRecord(r) => {
                let mut finish = last;
                if let Some(DhtQuery::Get { want, found, reply }) = self.dht_queries.get_mut(&id) {
                    if let Ok(kad::GetRecordOk::FoundRecord(pr)) = r {
                        let who = pr.peer.and_then(|p| signed::node_id(&p).ok());
                        if found.len() < 64 {
                            found.push((who, pr.record.value));
                        }
                        if found.len() >= *want {
                            finish = true;
                        }
                    }
                    if finish && let Some(reply) = reply.take() {
                        let _ = reply.send(Ok(std::mem::take(found)));
                    }
                }
                if finish {
                    self.dht_queries.remove(&id);
                    if !last && let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        q.finish();
                    }
                }
                return;
            }
            _ => {}
        }
        if last {
            self.dht_queries.remove(&id);
        }
    }

    /// The node's own info changed: announce it; and when membership was
    /// just gained (or changed), peers in the view that cannot prove theirs
    /// get two announcement intervals to re-announce with a certificate
    /// (at setup, every node present receives one within milliseconds),
    /// then leave.
    fn on_local_change(&mut self) {
        self.announce_due = true;
        let (membership, revoked) = {
            let l = self.local.borrow();
            (l.membership.clone(), l.revoked.clone())
        };
        if let Some(m) = membership {
            let deadline = Instant::now() + self.cfg.announce_interval * 2;
            for e in self.view.values_mut() {
                if e.prove_by.is_none()
                    && member_error(&m.admin_public_key, &revoked, &e.ann).is_some()
                {
                    e.prove_by = Some(deadline);
                }
            }
        }
        // Removed members leave at once; their links close after the join
        // grace (time enough to be told, with the signed removal, why).
        let gone: Vec<PeerId> = self
            .view
            .iter()
            .filter(|(_, e)| revoked.contains(&e.ann.node_id))
            .map(|(p, _)| *p)
            .collect();
        for p in gone {
            self.leave(&p, "removed from the cluster");
            self.known.remove(&p);
            if self.swarm.is_connected(&p) {
                self.unproven.entry(p).or_insert_with(Instant::now);
            }
        }
    }

    fn announce(&mut self) {
        let info = self.local.borrow_and_update().clone();
        let mut addrs: Vec<&Multiaddr> = self
            .listen_addrs
            .iter()
            .filter(|a| !is_loopback(a))
            .collect();
        if addrs.is_empty() {
            addrs = self.listen_addrs.iter().collect();
        }
        self.seq = self.seq.saturating_add(1).max(now_ms());
        let ann = Announcement {
            v: ANNOUNCEMENT_VERSION,
            node_id: self.local_id.clone(),
            seq: self.seq,
            addrs: addrs
                .iter()
                .take(MAX_ANNOUNCED_ADDRS)
                .map(|a| a.to_string())
                .collect(),
            api_addr: info.api_addr,
            uptime_secs: self.started.elapsed().as_secs(),
            capabilities: info.capabilities,
            age_recipient: info.age_recipient,
            membership: info.membership.map(|m| m.cert),
            share: info.share,
        };
        self.announce_due = false;
        self.last_announce = Some(Instant::now());
        let bytes = match signed::seal(&self.key, &ann) {
            Ok(b) => b,
            Err(e) => {
                warn!("cannot sign announcement: {e}");
                return;
            }
        };
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), bytes)
        {
            Ok(_) => {
                self.counters.announcements_sent += 1;
                self.dirty = true;
            }
            // Alone, or peers not subscribed yet: the next event retries.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => debug!("announcement not published: {e}"),
        }
    }

    fn maintain(&mut self) {
        let now = Instant::now();
        if self.announce_due
            && self
                .last_announce
                .is_none_or(|t| now.duration_since(t) >= ANNOUNCE_MIN_GAP)
        {
            self.announce();
        }

        // Expire nodes that stopped announcing. A node we hold a connection
        // to leaves when the link dies (close or failed ping) or after
        // `peer_timeout` of silence. A node without a direct connection (not
        // dialed yet, or unreachable: e.g. it died while we were dialing)
        // has only its announcements to prove it is alive, so it must repeat
        // them: it leaves after two missed announcements.
        let timeout = self.cfg.peer_timeout;
        let unconnected_timeout = timeout.min(self.cfg.announce_interval * 2);
        let swarm = &self.swarm;
        let stale: Vec<PeerId> = self
            .view
            .iter()
            .filter(|(p, e)| {
                let limit = if swarm.is_connected(p) {
                    timeout
                } else {
                    unconnected_timeout
                };
                now.duration_since(e.last_seen) > limit
            })
            .map(|(p, _)| *p)
            .collect();
        for p in stale {
            self.leave(&p, "no announcement within the peer timeout");
        }
        let unproven: Vec<PeerId> = self
            .view
            .iter()
            .filter(|(_, e)| e.prove_by.is_some_and(|t| now >= t))
            .map(|(p, _)| *p)
            .collect();
        for p in unproven {
            self.leave(&p, "no valid membership certificate");
            self.known.remove(&p);
            if self.swarm.is_connected(&p) {
                self.unproven.entry(p).or_insert_with(Instant::now);
            }
        }
        let closed: Vec<(PeerId, String)> = self
            .closing
            .iter()
            .filter(|(_, (t, _))| now.duration_since(*t) >= LEAVE_GRACE)
            .map(|(p, (_, why))| (*p, why.clone()))
            .collect();
        for (p, why) in closed {
            self.closing.remove(&p);
            if !self.swarm.is_connected(&p) {
                self.leave(&p, &why);
            }
        }

        // Dead links: libp2p-ping forgives the first failure and then waits
        // for a substream upgrade timeout (10 s) on a dead link, so failures
        // arrive late. A link without a successful ping for two intervals
        // plus one timeout is closed instead.
        let dead_after = self.cfg.ping_interval * 2 + self.cfg.ping_timeout;
        let dead: Vec<PeerId> = self
            .last_pong
            .iter()
            .filter(|(_, t)| now.duration_since(**t) > dead_after)
            .map(|(p, _)| *p)
            .collect();
        for p in dead {
            debug!(peer = %p, "no ping answer for {dead_after:?}; closing the link");
            self.last_pong.remove(&p);
            let _ = self.swarm.disconnect_peer_id(p);
        }

        // Peers that have not proven membership in time are disconnected.
        if self.local.borrow().membership.is_some() {
            let late: Vec<PeerId> = self
                .unproven
                .iter()
                .filter(|(_, t)| now.duration_since(**t) > JOIN_GRACE)
                .map(|(p, _)| *p)
                .collect();
            for p in late {
                self.unproven.remove(&p);
                if !self.view.contains_key(&p) {
                    info!(peer = %p, "disconnecting peer without a membership certificate");
                    let _ = self.swarm.disconnect_peer_id(p);
                }
            }
        }

        // Bootstrap addresses: keep a connection to each, with backoff.
        for i in 0..self.bootstraps.len() {
            let b = &self.bootstraps[i];
            if b.peer.is_some_and(|p| self.swarm.is_connected(&p)) || now < b.next_try {
                continue;
            }
            // `Disconnected`, not `DisconnectedAndNotDialing`: a configured
            // bootstrap address is authoritative and must not wait behind a
            // redial of stale addresses (e.g. the peer restarted on a new
            // QUIC port and a dial to the old one hangs until its timeout).
            let opts = match b.peer {
                Some(p) => DialOpts::peer_id(p)
                    .addresses(vec![without_p2p(&b.addr)])
                    .condition(PeerCondition::Disconnected)
                    .build(),
                None => DialOpts::unknown_peer_id().address(b.addr.clone()).build(),
            };
            let id = opts.connection_id();
            let b = &mut self.bootstraps[i];
            b.next_try = now + b.backoff;
            b.backoff = (b.backoff * 2).min(BOOTSTRAP_BACKOFF_MAX);
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.bootstrap_dials.insert(id, i);
                }
                Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {}
                Err(e) => warn!(addr = %self.bootstraps[i].addr, "cannot dial bootstrap: {e}"),
            }
        }

        // Known nodes without a connection (never connected, or lost it):
        // redial with backoff until they answer or are forgotten.
        self.known
            .retain(|_, k| now.duration_since(k.last_heard) < FORGET_AFTER);
        let max = self.cfg.max_peers as usize;
        let connected = self.swarm.connected_peers().count();
        let mut dials = Vec::new();
        for (p, k) in self.known.iter_mut() {
            if connected + dials.len() >= max {
                break;
            }
            if self.swarm.is_connected(p) || now < k.next_try {
                continue;
            }
            k.next_try = now + k.backoff;
            k.backoff = (k.backoff * 2).min(REDIAL_BACKOFF_MAX);
            dials.push((*p, k.addrs.clone()));
        }
        for (p, addrs) in dials {
            self.dial_peer(p, addrs);
        }

        // Periodic Kademlia refresh once we know anyone.
        if self.swarm.connected_peers().next().is_some()
            && self
                .last_kad_bootstrap
                .is_none_or(|t| now.duration_since(t) >= KAD_BOOTSTRAP_EVERY)
        {
            self.last_kad_bootstrap = Some(now);
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
    }

    fn dial_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == self.local_peer || self.swarm.is_connected(&peer) {
            return;
        }
        if self.swarm.connected_peers().count() >= self.cfg.max_peers as usize {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts)
            && !matches!(e, libp2p::swarm::DialError::DialPeerConditionFalse(_))
        {
            debug!(%peer, "dial failed: {e}");
        }
    }

    /// Records addresses of a peer for redialing.
    fn remember(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        if peer == self.local_peer || addrs.is_empty() {
            return;
        }
        if self.known.len() >= (self.cfg.max_peers as usize) * 4 && !self.known.contains_key(&peer)
        {
            return;
        }
        let now = Instant::now();
        let k = self.known.entry(peer).or_insert_with(|| Known {
            addrs: vec![],
            last_heard: now,
            next_try: now,
            backoff: REDIAL_BACKOFF_MIN,
        });
        k.last_heard = now;
        for a in addrs.iter().take(MAX_ANNOUNCED_ADDRS) {
            if !k.addrs.contains(a) {
                k.addrs.push(a.clone());
            }
        }
        k.addrs.truncate(MAX_ANNOUNCED_ADDRS);
    }

    fn leave(&mut self, peer: &PeerId, why: &str) {
        if self.view.remove(peer).is_some() {
            info!(%peer, "node left the view: {why}");
            self.counters.peers_left += 1;
            self.dirty = true;
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address);
                }
                self.announce_due = true;
                self.dirty = true;
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
                self.dirty = true;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                num_established,
                ..
            } => {
                self.counters.connections_established += 1;
                if let Some(i) = self.bootstrap_dials.remove(&connection_id) {
                    let b = &mut self.bootstraps[i];
                    if b.peer.is_none() {
                        info!(addr = %b.addr, peer = %peer_id, "connected to bootstrap");
                    }
                    b.peer = Some(peer_id);
                    b.backoff = Duration::from_secs(1);
                }
                if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, without_p2p(address));
                }
                if num_established.get() == 1 {
                    debug!(peer = %peer_id, "connected");
                    if !self.view.contains_key(&peer_id) {
                        self.unproven.insert(peer_id, Instant::now());
                    }
                    self.closing.remove(&peer_id);
                    self.last_pong.insert(peer_id, Instant::now());
                    if let Some(k) = self.known.get_mut(&peer_id) {
                        k.backoff = REDIAL_BACKOFF_MIN;
                        k.last_heard = Instant::now();
                    }
                    self.announce_due = true;
                }
                self.dirty = true;
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                self.counters.connections_closed += 1;
                self.boots.remove(&connection_id);
                if num_established == 0 {
                    self.last_pong.remove(&peer_id);
                    self.unproven.remove(&peer_id);
                    let why = match cause {
                        Some(e) => format!("connection closed ({e})"),
                        None => "connection closed".to_owned(),
                    };
                    if self.view.contains_key(&peer_id) {
                        self.closing.insert(peer_id, (Instant::now(), why));
                    }
                }
                self.dirty = true;
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                peer_id,
            } => {
                if let Some(i) = self.bootstrap_dials.remove(&connection_id) {
                    let b = &self.bootstraps[i];
                    warn!(
                        addr = %b.addr,
                        retry_in = ?b.next_try.saturating_duration_since(Instant::now()),
                        "bootstrap peer unreachable: {error}"
                    );
                } else {
                    debug!(peer = ?peer_id, "dial failed: {error}");
                }
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(ev),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let verdict = if message.topic == self.topic.hash() {
                    let v = self.on_announcement(&message);
                    if v == gossipsub::MessageAcceptance::Reject {
                        self.counters.announcements_rejected += 1;
                    }
                    v
                } else {
                    self.on_coordination(&message)
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
            }
            BehaviourEvent::Keys(ev) => self.services.on_event(Service::Keys, ev, &self.local_id),
            BehaviourEvent::Raft(ev) => self.services.on_event(Service::Raft, ev, &self.local_id),
            BehaviourEvent::Models(ev) => {
                self.services.on_event(Service::Models, ev, &self.local_id)
            }
            BehaviourEvent::Dht(ev) => self.services.on_event(Service::Dht, ev, &self.local_id),
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, .. }) => {
                debug!(peer = %peer_id, "peer subscribed to announcements");
                self.announce_due = true;
            }
            BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                connection_id,
            }) => {
                if let Some(boot) = info.agent_version.split(" boot/").nth(1) {
                    let boot = boot.chars().take(32).collect::<String>();
                    // Connections to the same peer id with another boot id
                    // lead to a process that has since restarted (a killed
                    // process leaves QUIC connections open): close them.
                    let stale: Vec<ConnectionId> = self
                        .boots
                        .iter()
                        .filter(|(c, (p, b))| **c != connection_id && *p == peer_id && *b != boot)
                        .map(|(c, _)| *c)
                        .collect();
                    for c in stale {
                        debug!(peer = %peer_id, "closing a connection to the peer's previous process");
                        self.boots.remove(&c);
                        self.swarm.close_connection(c);
                    }
                    self.boots.insert(connection_id, (peer_id, boot));
                }
                for addr in info.listen_addrs.into_iter().take(MAX_ANNOUNCED_ADDRS) {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    debug!(%peer, "discovered via mDNS");
                    self.remember(peer, &addrs);
                    self.dial_peer(peer, addrs);
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            }) => self.on_kad_progress(id, result, step.last),
            BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer, addresses, ..
            }) => {
                let addrs = addresses.iter().cloned().collect();
                self.dial_peer(peer, addrs);
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(_),
                ..
            }) => {
                if let Some(t) = self.last_pong.get_mut(&peer) {
                    *t = Instant::now();
                }
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Err(e),
                ..
            }) => {
                // libp2p leaves dead links open; closing it lets the view and
                // the redial logic react.
                debug!(%peer, "ping failed ({e}); closing the link");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            _ => {}
        }
    }

    /// A coordination message: passed on (and relayed) only when its
    /// author is in the view and the topic is one this node joined.
    fn on_coordination(&mut self, message: &gossipsub::Message) -> gossipsub::MessageAcceptance {
        use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
        let Some(topic) = self.coord.get(&message.topic).cloned() else {
            return Ignore;
        };
        let Some(author) = message.source else {
            return Reject;
        };
        if message.data.len() > crate::MAX_COORD_BYTES {
            return Reject;
        }
        if author == self.local_peer {
            return Ignore;
        }
        // A proven member only (the rule of `PeerView::proven`): this node
        // is a member, the peer's certificate was checked against its
        // admin key (`prove_by` unset after the check).
        let member = self.local.borrow().membership.is_some();
        let Some(entry) = self
            .view
            .get(&author)
            .filter(|e| member && e.prove_by.is_none() && e.ann.membership.is_some())
        else {
            // Not (yet) a proven peer in view: neither believed nor relayed.
            return Ignore;
        };
        let _ = self.gossip_tx.send(crate::Gossip {
            topic,
            from: entry.ann.node_id.clone(),
            data: message.data.clone(),
        });
        Accept
    }

    fn on_announcement(&mut self, message: &gossipsub::Message) -> gossipsub::MessageAcceptance {
        use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
        let (signer, ann) = match signed::open(&message.data) {
            Ok(x) => x,
            Err(e) => {
                warn!(source = ?message.source, "refused announcement: {e}");
                return Reject;
            }
        };
        // The gossip author (verified by gossipsub's strict signing) must be
        // the node the record describes.
        if message.source != Some(signer) {
            warn!(source = ?message.source, %signer, "refused announcement relayed under another author");
            return Reject;
        }
        if signer == self.local_peer {
            return Ignore;
        }
        let (required, revoked) = {
            let l = self.local.borrow();
            (
                l.membership
                    .as_ref()
                    .map(|m| m.admin_public_key)
                    .or(l.joining),
                l.revoked.contains(&ann.node_id),
            )
        };
        if revoked {
            if self.refused_logged.insert(signer) {
                warn!(peer = %signer, "refused peer: removed from the cluster");
            }
            self.known.remove(&signer);
            self.unproven.entry(signer).or_insert_with(Instant::now);
            return Reject;
        }
        if let Some(pk) = required
            && let Some(why) = member_error(&pk, &Default::default(), &ann)
        {
            // A peer that was in the view before this node gained
            // membership gets until its `prove_by` to re-announce with a
            // certificate (it is probably being given one right now).
            if let Some(e) = self.view.get_mut(&signer) {
                let deadline = Instant::now() + self.cfg.announce_interval * 2;
                e.prove_by.get_or_insert(deadline);
                return Ignore;
            }
            if self.refused_logged.insert(signer) {
                warn!(peer = %signer, "refused peer: {why}");
            }
            if self.refused_logged.len() > 4096 {
                self.refused_logged.clear();
            }
            self.known.remove(&signer);
            return Reject;
        }
        self.unproven.remove(&signer);
        let now = Instant::now();
        let addrs: Vec<Multiaddr> = ann.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        self.remember(signer, &addrs);
        match self.view.get_mut(&signer) {
            Some(e) if ann.seq <= e.ann.seq => return Ignore, // replay or duplicate
            Some(e) => {
                e.ann = ann;
                e.last_seen = now;
                e.prove_by = None;
            }
            None => {
                if self.view.len() >= self.cfg.max_peers as usize {
                    return Ignore;
                }
                info!(peer = %signer, "node joined the view");
                self.counters.peers_joined += 1;
                let addrs: Vec<Multiaddr> =
                    ann.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                self.view.insert(
                    signer,
                    Entry {
                        ann,
                        last_seen: now,
                        prove_by: None,
                    },
                );
                self.dial_peer(signer, addrs);
            }
        }
        self.counters.announcements_received += 1;
        self.dirty = true;
        Accept
    }

    fn publish_snapshot(&mut self) {
        self.dirty = false;
        let checking = {
            let l = self.local.borrow();
            l.membership.is_some() || l.joining.is_some()
        };
        let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
        let mut peers: Vec<PeerView> = self
            .view
            .iter()
            .map(|(p, e)| PeerView {
                announcement: e.ann.clone(),
                last_seen: e.last_seen,
                connected: connected.contains(p),
                // Certificates are checked against the admin key once this
                // node has one (or a join token's); an entry from before
                // that is proven only after the check (`prove_by` unset).
                proven: checking && e.prove_by.is_none() && e.ann.membership.is_some(),
            })
            .collect();
        peers.sort_by(|a, b| a.announcement.node_id.cmp(&b.announcement.node_id));
        let snap = Snapshot {
            local_id: self.local_id.clone(),
            listen_addrs: self
                .listen_addrs
                .iter()
                .map(|a| a.clone().with(Protocol::P2p(self.local_peer)).to_string())
                .collect(),
            connected_peers: connected.len(),
            peers,
            mdns: self.cfg.mdns,
            counters: self.counters.clone(),
        };
        self.snapshot_tx.send_replace(Arc::new(snap));
    }
}

fn build_behaviour(
    key: &identity::Keypair,
    cfg: &NetConfig,
    boot: &str,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer = key.public().to_peer_id();
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(cfg.max_peers.saturating_mul(2)))
        .with_max_established_per_peer(Some(2))
        .with_max_pending_incoming(Some(64))
        .with_max_pending_outgoing(Some(64));
    let gossip_cfg = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_secs(1))
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(signed::MAX_ENVELOPE_BYTES)
        .build()
        .map_err(|e| e.to_string())?;
    let gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip_cfg,
    )?;
    let mdns = if cfg.mdns {
        let mcfg = mdns::Config {
            ttl: Duration::from_secs(60),
            query_interval: Duration::from_secs(10),
            enable_ipv6: false,
        };
        Some(mdns::tokio::Behaviour::new(mcfg, peer)?)
    } else {
        None
    };
    let mut kcfg = kad::Config::new(KAD_PROTOCOL);
    kcfg.set_query_timeout(Duration::from_secs(30));
    let d = &cfg.dht;
    // Records of up to 256 KiB of payload (sealed, encoded, signed) plus
    // the message framing; the default 16 KiB would refuse them.
    kcfg.set_max_packet_size(crate::store::MAX_RECORD_VALUE + 64 * 1024);
    kcfg.set_replication_factor(
        std::num::NonZeroUsize::new(d.replication.max(1)).unwrap_or(std::num::NonZeroUsize::MIN),
    );
    kcfg.set_record_ttl(None);
    kcfg.set_provider_record_ttl(None);
    kcfg.set_replication_interval(Some(d.replicate_every));
    kcfg.set_publication_interval(Some(d.republish_every));
    // A dead peer (a killed process can look connected over QUIC) must not
    // hold a lookup for long.
    kcfg.set_substreams_timeout(Duration::from_secs(3));
    kcfg.set_caching(kad::Caching::Disabled);
    let store = match &d.store {
        Some(s) => s.clone(),
        None => crate::store::DiskStore::in_memory(std::sync::Arc::new(crate::store::AcceptAll))
            .map_err(|e| e.to_string())?,
    };
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(limits),
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                .with_agent_version(format!("bzzz/{} boot/{boot}", bzzz_proto::VERSION)),
        ),
        ping: ping::Behaviour::new(
            ping::Config::new()
                .with_interval(cfg.ping_interval)
                .with_timeout(cfg.ping_timeout),
        ),
        mdns: mdns.into(),
        kad: kad::Behaviour::with_config(peer, store, kcfg),
        gossipsub,
        keys: Service::Keys.behaviour(),
        raft: Service::Raft.behaviour(),
        models: Service::Models.behaviour(),
        dht: Service::Dht.behaviour(),
    })
}

/// Why an announcement does not prove membership of our cluster, if it
/// does not.
fn member_error(
    admin_public_key: &[u8; 32],
    revoked: &std::collections::BTreeSet<bzzz_proto::NodeId>,
    ann: &Announcement,
) -> Option<String> {
    if revoked.contains(&ann.node_id) {
        return Some("removed from the cluster".into());
    }
    let Some(cert) = &ann.membership else {
        return Some("no membership certificate".into());
    };
    match bzzz_crypto::records::open_cert(cert, admin_public_key, Some(&ann.node_id)) {
        Ok(_) => None,
        Err(e) => Some(format!("invalid membership certificate: {e}")),
    }
}
