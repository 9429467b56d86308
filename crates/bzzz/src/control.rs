//! The control plane in the node: openraft over the libp2p mesh, leadership
//! by score, and the leader's SLURP planners (SPEC §6).
//!
//! Tasks (owned by the node's tracker, stopped by its token):
//!
//! | task | takes | sends |
//! |---|---|---|
//! | [`serve`] | [`RaftInbound`] messages from the swarm | answers (Raft RPCs, hand-offs, forwarded proposals) |
//! | [`run`] | membership (waits for it), the cluster view, Raft metrics | Raft membership changes, planner commands, hand-offs |
//! | `detect_leader_loss` (spawned by `run`) | Raft metrics, time of the last AppendEntries | an early election by the designated successor |
//!
//! Raft starts once the node is a member of an initialized cluster: the
//! setup ceremony decides who belongs, so the control plane never runs
//! open. Every setup share holder initializes Raft with the same voters
//! (the first holders by share index, an odd number, at most
//! `max_voters`); openraft accepts identical initial memberships on several
//! nodes, so no single coordinator must survive. Joiners are added by the
//! leader as learners; the membership planner promotes the best.
//!
//! Leadership: the leader computes [`preferred_leader`] every tick. When
//! another voter should lead (a clearly better score after the minimum
//! tenure, or this leader degraded or is shutting down), it hands off:
//! it stops its heartbeats and tells the successor, which calls an election
//! as soon as the followers' leader leases run out (openraft 0.9 has no
//! transfer call). When the leader falls silent for three heartbeats, the
//! best-scored reachable voter calls its election the moment the
//! followers' lease allows, instead of waiting out a random timeout (one
//! designated successor: no split votes; see `detect_leader_loss`).
//!
//! A restarted node first listens: its elections stay off until it hears a
//! leader (or a few leases pass), so its stale term never disrupts a
//! working cluster (openraft 0.9 has no pre-vote).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bzzz_control::leadership::{Incumbent, preferred_leader};
use bzzz_control::raft::{Command, NodeIdU64, Raft, Response, StateMachine, TypeConfig, raft_id};
use bzzz_control::slurp::{self, Observed, ObservedNode};
use bzzz_control::store::{DiskLog, RaftDb};
use bzzz_control::wire::{self, Reply, Rpc};
use bzzz_net::{LocalInfo, NetHandle, RaftInbound};
use bzzz_proto::NodeId;
use openraft::error::{NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, ServerState};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::ControlSettings;

/// Raft writes (planner commands, membership changes) give up after this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// The running control plane of this node.
pub struct Control {
    pub raft: Raft,
    pub node_id: NodeId,
    pub id: NodeIdU64,
    sm: StateMachine,
    net: NetHandle,
    settings: ControlSettings,
    /// When this node last heard an AppendEntries, and from whom.
    last_append: Mutex<Option<(NodeIdU64, Instant)>>,
    /// False while a restarted node waits to hear the current leader before
    /// it may call elections (it would otherwise disrupt the cluster with a
    /// stale, higher term: openraft 0.9 has no pre-vote).
    elect_enabled: std::sync::atomic::AtomicBool,
    /// Raised by the network when a voter refused this node's candidacy
    /// because its log is ahead (see `stand_down_if_behind`).
    behind: Arc<std::sync::atomic::AtomicBool>,
    /// The last share-risk verdict logged (log on change only).
    last_risk: Mutex<Option<String>>,
    /// Planner writes pause while a hand-off is under way.
    handing_off: Mutex<Option<Instant>>,
    /// Each member's last live score and when it was last seen healthy
    /// (a voter out of sight keeps its seat for `voter_grace`).
    last_seen: Mutex<BTreeMap<NodeId, (f64, Instant)>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Control({})", self.node_id)
    }
}

/// Where the control plane lives once started (set once).
pub type ControlCell = Arc<OnceLock<Arc<Control>>>;

// ---- the network ----------------------------------------------------------

/// Raft's network over the mesh. `behind` is raised when a voter refuses
/// this node's candidacy because its log is more up to date (see
/// [`Control::stand_down_if_behind`]).
#[derive(Clone)]
struct Net(NetHandle, Arc<std::sync::atomic::AtomicBool>);

struct Conn {
    net: NetHandle,
    target: NodeIdU64,
    peer: Option<NodeId>,
    behind: Arc<std::sync::atomic::AtomicBool>,
}

impl RaftNetworkFactory<TypeConfig> for Net {
    type Network = Conn;
    async fn new_client(&mut self, target: NodeIdU64, node: &BasicNode) -> Conn {
        Conn {
            net: self.0.clone(),
            target,
            peer: NodeId::parse(&node.addr).ok(),
            behind: self.1.clone(),
        }
    }
}

fn net_err<E: std::error::Error>(e: impl std::fmt::Display) -> RPCError<NodeIdU64, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
}

impl Conn {
    async fn call<E: std::error::Error>(
        &self,
        rpc: &Rpc,
        ttl: Duration,
    ) -> Result<Reply, RPCError<NodeIdU64, BasicNode, E>> {
        let peer = self
            .peer
            .as_ref()
            .ok_or_else(|| net_err(format!("node {} has no valid address", self.target)))?;
        let sent = tokio::time::timeout(ttl, self.net.raft_request(peer, wire::encode(rpc))).await;
        let bytes = match sent {
            Err(_) => return Err(net_err(format!("no answer from {peer} within {ttl:?}"))),
            Ok(Err(e)) => {
                return Err(RPCError::Unreachable(Unreachable::new(
                    &std::io::Error::other(e.to_string()),
                )));
            }
            Ok(Ok(b)) => b,
        };
        wire::decode::<Reply>(&bytes).map_err(net_err)
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        AppendEntriesResponse<NodeIdU64>,
        RPCError<NodeIdU64, BasicNode, RaftError<NodeIdU64>>,
    > {
        match self.call(&Rpc::Append(rpc), option.hard_ttl()).await? {
            Reply::Append(Ok(r)) => Ok(r),
            Reply::Append(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(net_err(format!("unexpected answer {other:?}"))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeIdU64>,
        RPCError<NodeIdU64, BasicNode, RaftError<NodeIdU64, openraft::error::InstallSnapshotError>>,
    > {
        match self.call(&Rpc::Snapshot(rpc), option.hard_ttl()).await? {
            Reply::Snapshot(Ok(r)) => Ok(r),
            Reply::Snapshot(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(net_err(format!("unexpected answer {other:?}"))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeIdU64>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeIdU64>, RPCError<NodeIdU64, BasicNode, RaftError<NodeIdU64>>> {
        let mine = rpc.last_log_id;
        match self.call(&Rpc::Vote(rpc), option.hard_ttl()).await? {
            Reply::Vote(Ok(r)) => {
                // Refused by a voter whose log is ahead of ours: we cannot
                // win, and standing again would only keep raising the term
                // (openraft 0.9's voters do not adopt the term of a
                // candidate they refuse by log; there is no pre-vote).
                if !r.vote_granted && r.last_log_id > mine {
                    self.behind
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(r)
            }
            Reply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(net_err(format!("unexpected answer {other:?}"))),
        }
    }
}

// ---- inbound --------------------------------------------------------------

/// Answers control-plane messages from peers; each is handled on its own
/// task so that a slow disk write never delays a vote. Until the control
/// plane runs, messages are answered "refused" (Raft retries).
pub async fn serve(
    cell: ControlCell,
    mut rx: mpsc::Receiver<RaftInbound>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let cell = cell.clone();
        tracker.spawn(async move {
            let reply = match cell.get() {
                Some(c) => c.handle(&msg.peer, &msg.payload).await,
                None => Reply::Refused("the control plane is not running yet".into()),
            };
            let _ = msg.respond.send(wire::encode(&reply));
        });
    }
}

impl Control {
    /// Whether `peer` may talk to this node's control plane: a member of the
    /// Raft configuration, or a peer that proved its cluster membership
    /// (certificate) in the mesh.
    fn admits(&self, peer: &NodeId) -> bool {
        let id = raft_id(peer);
        let in_raft = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .any(|(n, node)| *n == id && node.addr == peer.as_str());
        in_raft
            || self
                .net
                .snapshot()
                .peers
                .iter()
                .any(|p| &p.announcement.node_id == peer)
    }

    async fn handle(self: &Arc<Self>, peer: &NodeId, payload: &[u8]) -> Reply {
        if !self.admits(peer) {
            debug!(%peer, "control message from a non-member; refused");
            return Reply::Refused("not a member of this cluster".into());
        }
        let rpc: Rpc = match wire::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                debug!(%peer, "malformed control message: {e}");
                return Reply::Refused(e.to_string());
            }
        };
        match rpc {
            Rpc::Append(req) => {
                *lock(&self.last_append) = Some((raft_id(peer), Instant::now()));
                if !self
                    .elect_enabled
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    // Heard a leader: this node may stand for election again.
                    self.raft.runtime_config().elect(true);
                }
                Reply::Append(self.raft.append_entries(req).await)
            }
            Rpc::Vote(req) => Reply::Vote(self.raft.vote(req).await),
            Rpc::Snapshot(req) => Reply::Snapshot(self.raft.install_snapshot(req).await),
            Rpc::HandOff { term } => {
                let m = self.raft.metrics().borrow().clone();
                let ok = m.current_term == term
                    && m.current_leader == Some(raft_id(peer))
                    && m.membership_config
                        .membership()
                        .voter_ids()
                        .any(|v| v == self.id);
                if ok {
                    info!(from = %peer, term, "leadership handed to this node");
                    let me = self.clone();
                    tokio::spawn(async move { me.take_over(term).await });
                }
                Reply::HandOff { accepted: ok }
            }
            Rpc::Propose(cmd) => {
                if matches!(
                    cmd,
                    Command::Genesis { .. }
                        | Command::Inventory { .. }
                        | Command::ShareHolders { .. }
                ) {
                    return Reply::Refused("only the leader's planners write that".into());
                }
                Reply::Proposed(self.write_local(cmd).await)
            }
        }
    }

    /// Calls elections until this node leads or another leader of a newer
    /// term appears (the old leader's lease must first run out).
    async fn take_over(&self, term: u64) {
        let lease = self.settings.lease();
        tokio::time::sleep(lease + Duration::from_millis(20)).await;
        for _ in 0..5 {
            let m = self.raft.metrics().borrow().clone();
            if m.current_term > term && m.current_leader.is_some() {
                return;
            }
            if m.state == ServerState::Leader {
                return;
            }
            if let Err(e) = self.raft.trigger().elect().await {
                warn!("cannot call an election: {e}");
                return;
            }
            tokio::time::sleep(lease / 2).await;
        }
    }

    async fn write_local(&self, cmd: Command) -> Result<Response, String> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(cmd)).await {
            Err(_) => Err("the write did not commit in time (no quorum?)".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(r)) => Ok(r.data),
        }
    }

    /// Commits a command through the leader, wherever it is.
    pub async fn propose(&self, cmd: Command) -> Result<Response, String> {
        let m = self.raft.metrics().borrow().clone();
        let Some(leader) = m.current_leader else {
            return Err("no leader right now; retry in a moment".into());
        };
        if leader == self.id {
            return self.write_local(cmd).await;
        }
        let peer = m
            .membership_config
            .membership()
            .get_node(&leader)
            .and_then(|n| NodeId::parse(&n.addr).ok())
            .ok_or("the leader has no address")?;
        let bytes = tokio::time::timeout(
            WRITE_TIMEOUT,
            self.net
                .raft_request(&peer, wire::encode(&Rpc::Propose(cmd))),
        )
        .await
        .map_err(|_| "the leader did not answer in time".to_owned())?
        .map_err(|e| e.to_string())?;
        match wire::decode::<Reply>(&bytes).map_err(|e| e.to_string())? {
            Reply::Proposed(r) => r,
            Reply::Refused(why) => Err(why),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// A copy of the applied cluster state.
    pub fn state(&self) -> bzzz_control::raft::ClusterState {
        self.sm.state()
    }

    /// Reads the applied state in place, without copying it.
    pub fn with_state<R>(&self, f: impl FnOnce(&bzzz_control::raft::ClusterState) -> R) -> R {
        self.sm.with_state(f)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---- leader view ------------------------------------------------------------

/// `GET /api/v1/leader` and `bzzz leader --json`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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
    pub scores: BTreeMap<String, f64>,
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

fn addr_of(m: &openraft::Membership<NodeIdU64, BasicNode>, id: NodeIdU64) -> Option<String> {
    m.get_node(&id).map(|n| n.addr.clone())
}

/// This node's view of leadership.
pub fn leader_info(
    cell: &ControlCell,
    net: &NetHandle,
    local: &LocalInfo,
    started: Instant,
    settings: &ControlSettings,
) -> LeaderInfo {
    let observed = observe(net, local, started);
    let mut scores: BTreeMap<String, f64> = observed
        .scores(&settings.context.weights)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let Some(c) = cell.get() else {
        return LeaderInfo {
            leader: None,
            term: 0,
            voters: vec![],
            learners: vec![],
            scores,
            state: "not_started".into(),
            last_applied: None,
            node_id: net.local_id().to_string(),
        };
    };
    let m = c.raft.metrics().borrow().clone();
    let mem = m.membership_config.membership();
    let voters: Vec<String> = mem.voter_ids().filter_map(|v| addr_of(mem, v)).collect();
    let learners: Vec<String> = mem.learner_ids().filter_map(|v| addr_of(mem, v)).collect();
    let state = c.state();
    // The replicated scores (0 for members out of sight), so that every
    // node shows the same figures.
    for (id, r) in &state.nodes {
        scores.insert(id.to_string(), if r.healthy { r.score } else { 0.0 });
    }
    // Only members: scores of Raft members and inventory entries.
    scores.retain(|k, _| {
        voters.contains(k) || learners.contains(k) || state.nodes.keys().any(|n| n.as_str() == k)
    });
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Follower => "follower",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    LeaderInfo {
        leader: m.current_leader.and_then(|l| addr_of(mem, l)),
        term: m.current_term,
        voters,
        learners,
        scores,
        state: role.into(),
        last_applied: m.last_applied.map(|l| l.index),
        node_id: c.node_id.to_string(),
    }
}

/// The members in this node's view (the view holds proven members only once
/// the node is one), plus this node.
fn observe(net: &NetHandle, local: &LocalInfo, started: Instant) -> Observed {
    let snap = net.snapshot();
    let mut o = Observed::default();
    // The share index a member's certificate grants (checked again here:
    // the view admits certified peers only, but this is cheap).
    let share_of = |cert: Option<&bzzz_proto::cluster::Signed>, id: &NodeId| {
        let m = local.membership.as_ref()?;
        bzzz_crypto::records::open_cert(cert?, &m.admin_public_key, Some(id))
            .ok()?
            .share_index
    };
    o.nodes.insert(
        snap.local_id.clone(),
        ObservedNode {
            capabilities: local.capabilities.clone(),
            uptime_secs: started.elapsed().as_secs(),
            healthy: true,
            share_index: share_of(local.membership.as_ref().map(|m| &m.cert), &snap.local_id),
        },
    );
    if local.membership.is_some() {
        for p in &snap.peers {
            let a = &p.announcement;
            o.nodes.insert(
                a.node_id.clone(),
                ObservedNode {
                    capabilities: a.capabilities.clone(),
                    uptime_secs: a.uptime_secs,
                    healthy: p.connected,
                    share_index: share_of(a.membership.as_ref(), &a.node_id),
                },
            );
        }
    }
    o
}

// ---- the control task -------------------------------------------------------

/// Initial voters from the genesis record: the first holders by share
/// index, an odd number, at most `max_voters`. Every holder computes the
/// same set.
pub fn initial_voters(genesis: &bzzz_proto::cluster::Genesis, max_voters: usize) -> Vec<NodeId> {
    let mut holders = genesis.holders.clone();
    holders.sort_by_key(|h| h.index);
    let mut k = holders.len().min(max_voters.max(1));
    if k > 1 && k.is_multiple_of(2) {
        k -= 1;
    }
    holders.into_iter().take(k).map(|h| h.node_id).collect()
}

fn raft_node(id: &NodeId) -> (NodeIdU64, BasicNode) {
    (raft_id(id), BasicNode::new(id.to_string()))
}

/// Waits for membership, starts Raft, then runs the planners (leader) and
/// the leader-loss watch (followers) until cancelled; on the way out a
/// leader hands off first.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    settings: ControlSettings,
    data_dir: std::path::PathBuf,
    keys: Arc<crate::keys::Keys>,
    net: NetHandle,
    mut local: watch::Receiver<LocalInfo>,
    started: Instant,
    cell: ControlCell,
    cancel: CancellationToken,
) {
    // 1. Wait until this node is a member.
    let cluster = loop {
        if let Some(c) = keys.cluster() {
            break c;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = local.changed() => if r.is_err() { return },
        }
    };
    let control = match start(&settings, &data_dir, &cluster, &net).await {
        Ok(c) => c,
        Err(e) => {
            warn!("the control plane cannot start: {e:#}");
            return;
        }
    };
    // A node that already belongs to a Raft cluster (a restart) first
    // listens: elections stay off until it hears a leader, or for a few
    // leases at most (the whole cluster may be restarting).
    if !control
        .elect_enabled
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        let c = control.clone();
        let quiet = settings.lease() * 4 + Duration::from_millis(500);
        tokio::spawn(async move {
            tokio::time::sleep(quiet).await;
            if !c
                .elect_enabled
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                c.raft.runtime_config().elect(true);
            }
        });
    }
    let _ = cell.set(control.clone());
    info!(raft_id = control.id, "control plane started");
    tokio::spawn(control.clone().detect_leader_loss(cancel.clone()));

    // 2. Setup holders initialize Raft with the same voters.
    let is_holder = cluster
        .genesis
        .holders
        .iter()
        .any(|h| h.node_id == control.node_id);
    if is_holder && !control.raft.is_initialized().await.unwrap_or(true) {
        let voters: BTreeMap<NodeIdU64, BasicNode> =
            initial_voters(&cluster.genesis, settings.context.policy.max_voters)
                .iter()
                .map(raft_node)
                .collect();
        match control.raft.initialize(voters).await {
            Ok(()) => info!("Raft initialized with the setup voters"),
            Err(e) => debug!("Raft initialize: {e}"),
        }
    }

    // 3. Loop.
    let mut tick = tokio::time::interval(settings.planner_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut metrics = control.raft.metrics();
    let mut view = net.watch();
    let mut leader_since: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
            r = metrics.changed() => if r.is_err() { break },
            r = view.changed() => if r.is_err() { break },
        }
        let m = control.raft.metrics().borrow().clone();
        if m.state == ServerState::Leader {
            match leader_since {
                Some((t, _)) if t == m.current_term => {}
                _ => {
                    info!(term = m.current_term, "this node leads");
                    leader_since = Some((m.current_term, Instant::now()));
                }
            }
        } else {
            leader_since = None;
        }
        let l = local.borrow().clone();
        // Every node keeps the members' last live scores, so a new leader
        // knows who was there before it.
        control.voter_scores(&observe(&net, &l, started));
        if let Some((_, since)) = leader_since {
            control.lead(&l, started, since.elapsed(), &cluster).await;
        }
    }

    // 4. Shutdown (the node called `step_down` first, while the network
    // still ran).
    if let Err(e) = control.raft.shutdown().await {
        warn!("Raft did not stop cleanly: {e}");
    }
    info!("control plane stopped");
}

async fn start(
    settings: &ControlSettings,
    data_dir: &Path,
    cluster: &crate::keys::Cluster,
    net: &NetHandle,
) -> anyhow::Result<Arc<Control>> {
    // One database per cluster: a node recovered into a new cluster starts
    // a fresh log.
    let dir = data_dir.join("raft");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!(
        "{}.redb",
        &cluster.genesis.admin_public_key[..16.min(cluster.genesis.admin_public_key.len())]
    ));
    let db = tokio::task::spawn_blocking(move || RaftDb::open(&path))
        .await?
        .context("cannot open the Raft store")?;
    let sm = StateMachine::open(db.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let node_id = net.local_id().clone();
    let id = raft_id(&node_id);
    let behind = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let raft = Raft::new(
        id,
        Arc::new(settings.raft.clone()),
        Net(net.clone(), behind.clone()),
        DiskLog::new(db),
        sm.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot start Raft: {e}"))?;
    // Restarted (state on disk): no elections until a leader is heard or a
    // few leases pass (see `run`).
    let restarted = raft.is_initialized().await.unwrap_or(false);
    if restarted {
        raft.runtime_config().elect(false);
    }
    Ok(Arc::new(Control {
        raft,
        node_id,
        id,
        sm,
        net: net.clone(),
        settings: settings.clone(),
        last_append: Mutex::new(None),
        elect_enabled: std::sync::atomic::AtomicBool::new(!restarted),
        behind,
        handing_off: Mutex::new(None),
        last_risk: Mutex::new(None),
        last_seen: Mutex::new(BTreeMap::new()),
    }))
}

/// Graceful shutdown, before the network stops: a leader hands leadership
/// to the best-scored other voter and waits (at most `limit`) for it.
pub async fn step_down(cell: &ControlCell, local: &LocalInfo, started: Instant, limit: Duration) {
    let Some(control) = cell.get() else {
        return;
    };
    let state = control.raft.metrics().borrow().state;
    if state != ServerState::Leader {
        debug!(?state, "shutting down (not the leader)");
        return;
    }
    let observed = observe(&control.net, local, started);
    let scores = control.voter_scores(&observed);
    let voters: BTreeSet<NodeId> = control.voters();
    let successor = scores
        .iter()
        .filter(|(n, s)| **n != control.node_id && voters.contains(*n) && **s > 0.0)
        .max_by(|a, b| a.1.total_cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(n, _)| n.clone());
    match successor {
        Some(s) => {
            info!(to = %s, "shutting down: handing leadership over");
            let _ = tokio::time::timeout(limit, control.hand_off(&s)).await;
        }
        None => warn!(
            ?scores,
            ?voters,
            "shutting down: no voter to hand leadership to"
        ),
    }
}

impl Control {
    fn voters(&self) -> BTreeSet<NodeId> {
        let m = self.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership();
        mem.voter_ids()
            .filter_map(|v| addr_of(mem, v))
            .filter_map(|a| NodeId::parse(&a).ok())
            .collect()
    }

    /// Scores for voter decisions: live ones, and for members out of sight
    /// for less than `voter_grace`, their last live score (so a restart or
    /// a short partition never shuffles seats).
    fn voter_scores(&self, observed: &Observed) -> BTreeMap<NodeId, f64> {
        let live = observed.scores(&self.settings.context.weights);
        let mut seen = lock(&self.last_seen);
        let now = Instant::now();
        for (id, s) in &live {
            if *s > 0.0 {
                seen.insert(id.clone(), (*s, now));
            }
        }
        // Members recorded in the inventory but never seen live by this node
        // (it just started, or just became leader): the grace starts now.
        for (id, r) in &self.sm.state().nodes {
            seen.entry(id.clone()).or_insert((r.score, now));
        }
        let mut out = live;
        for (id, (score, at)) in seen.iter() {
            if out.get(id).is_none_or(|s| *s <= 0.0) {
                let s = if now.duration_since(*at) < self.settings.voter_grace {
                    *score
                } else {
                    0.0
                };
                out.insert(id.clone(), s);
            }
        }
        out
    }

    /// One leader tick: genesis, Raft membership, planners, leadership.
    async fn lead(
        self: &Arc<Self>,
        local: &LocalInfo,
        started: Instant,
        tenure: Duration,
        cluster: &crate::keys::Cluster,
    ) {
        if lock(&self.handing_off).is_some_and(|until| Instant::now() < until) {
            return;
        }
        let state = self.sm.state();
        if state.cluster.is_none() {
            let cmd = Command::Genesis {
                record: cluster.genesis_signed.clone(),
            };
            if let Err(e) = self.write_local(cmd).await {
                debug!("genesis entry: {e}");
            }
            return;
        }
        let observed = observe(&self.net, local, started);

        // Raft membership.
        let m = self.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership().clone();
        let as_nodes = |ids: &mut dyn Iterator<Item = NodeIdU64>| -> BTreeSet<NodeId> {
            ids.filter_map(|v| addr_of(&mem, v))
                .filter_map(|a| NodeId::parse(&a).ok())
                .collect()
        };
        let voters = as_nodes(&mut mem.voter_ids());
        let learners = as_nodes(&mut mem.learner_ids());
        let healthy: BTreeSet<NodeId> = observed
            .nodes
            .iter()
            .filter(|(_, n)| n.healthy)
            .map(|(id, _)| id.clone())
            .collect();
        let scores = self.voter_scores(&observed);
        let plan = slurp::plan_membership(
            &healthy,
            &voters,
            &learners,
            &scores,
            &self.settings.context.policy,
        );
        for n in &plan.add_learners {
            let (id, node) = raft_node(n);
            match tokio::time::timeout(WRITE_TIMEOUT, self.raft.add_learner(id, node, false)).await
            {
                Ok(Ok(_)) => info!(node = %n, "added as a learner"),
                Ok(Err(e)) => debug!(node = %n, "add learner: {e}"),
                Err(_) => debug!(node = %n, "add learner timed out"),
            }
        }
        if let Some(v) = plan.voters
            && m.membership_config.membership().get_joint_config().len() == 1
        {
            let ids: BTreeSet<NodeIdU64> = v.iter().map(raft_id).collect();
            info!(voters = ?v.iter().map(NodeId::short).collect::<Vec<_>>(), "changing voters");
            match tokio::time::timeout(WRITE_TIMEOUT, self.raft.change_membership(ids, true)).await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => debug!("change voters: {e}"),
                Err(_) => debug!("change voters timed out"),
            }
        }

        // Planners.
        {
            let risk = self.sm.state().share_risk();
            let mut last = lock(&self.last_risk);
            if risk != *last {
                match &risk {
                    Some(r) => warn!("admin key at risk: {r}"),
                    None if last.is_some() => info!("admin key share holders healthy again"),
                    None => {}
                }
                *last = risk;
            }
        }
        for p in slurp::planners() {
            for cmd in p.plan(&self.sm.state(), &observed, &self.settings.context) {
                if let Err(e) = self.write_local(cmd).await {
                    debug!(planner = p.name(), "write: {e}");
                }
            }
        }

        // Leadership.
        let voters = self.voters();
        let incumbent = Incumbent {
            id: self.node_id.clone(),
            tenure,
        };
        let live = observed.scores(&self.settings.context.weights);
        if let Some(best) = preferred_leader(
            &live,
            &voters,
            Some(&incumbent),
            &self.settings.context.policy,
        ) && best != self.node_id
        {
            info!(to = %best, "a better-scored voter should lead; handing off");
            self.hand_off(&best).await;
        }
    }

    /// Stops heartbeats and asks `to` to take over; resumes if nobody took
    /// over after a few leases.
    async fn hand_off(&self, to: &NodeId) {
        let term = self.raft.metrics().borrow().current_term;
        let lease = self.settings.lease();
        *lock(&self.handing_off) = Some(Instant::now() + lease * 6);
        self.raft.runtime_config().heartbeat(false);
        let accepted = match tokio::time::timeout(
            lease,
            self.net
                .raft_request(to, wire::encode(&Rpc::HandOff { term })),
        )
        .await
        {
            Ok(Ok(b)) => matches!(
                wire::decode::<Reply>(&b),
                Ok(Reply::HandOff { accepted: true })
            ),
            _ => false,
        };
        if accepted {
            let _ = self
                .raft
                .wait(Some(lease * 5))
                .metrics(|m| m.current_term > term, "a new term")
                .await;
        }
        self.raft.runtime_config().heartbeat(true);
        *lock(&self.handing_off) = None;
        let m = self.raft.metrics().borrow().clone();
        if m.state == ServerState::Leader {
            debug!(to = %to, "hand-off did not happen; still leading");
        }
    }

    /// A node whose log is behind a voter's cannot win an election; if it
    /// keeps standing it keeps raising the term past the others', and every
    /// up-to-date candidate is then refused for its lower term and has to
    /// wait out a timeout: the cluster can go without a leader for seconds.
    /// So such a node stops calling elections until it hears a leader (an
    /// AppendEntries re-enables them, see `handle`) or, failing that, for a
    /// few leases (every other voter may be behind too).
    fn stand_down_if_behind(self: &Arc<Self>) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.behind.swap(false, Relaxed) || !self.elect_enabled.swap(false, Relaxed) {
            return;
        }
        self.raft.runtime_config().elect(false);
        info!("a voter's log is ahead of this node's: no elections until a leader is heard");
        let me = self.clone();
        let quiet = self.settings.lease() * 4;
        tokio::spawn(async move {
            tokio::time::sleep(quiet).await;
            if !me.elect_enabled.swap(true, Relaxed) {
                me.raft.runtime_config().elect(true);
            }
        });
    }

    /// Failure detector (a task on every node). A follower that has heard
    /// nothing from its leader for three heartbeats, and is the
    /// best-scored voter it can reach, calls an election the moment the
    /// followers' leader lease has run out, rather than after the random
    /// timeout: one designated successor, so no split vote, and failover
    /// takes about one lease. Anyone else waits for the normal timers.
    async fn detect_leader_loss(self: Arc<Self>, cancel: CancellationToken) {
        let hb = Duration::from_millis(self.settings.raft.heartbeat_interval);
        let mut tick = tokio::time::interval(hb / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut done: Option<u64> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.stand_down_if_behind();
            let m = self.raft.metrics().borrow().clone();
            let Some(leader) = m.current_leader else {
                continue;
            };
            if m.state != ServerState::Follower || leader == self.id || done == Some(m.current_term)
            {
                continue;
            }
            let Some(heard) = *lock(&self.last_append) else {
                continue;
            };
            if heard.0 != leader || heard.1.elapsed() < hb * 3 {
                continue;
            }
            let mem = m.membership_config.membership();
            if !mem.voter_ids().any(|v| v == self.id) {
                continue;
            }
            // The successor: the best-scored reachable voter but the leader
            // (ties by id), the same choice on every node that sees the same.
            let snap = self.net.snapshot();
            let connected = |n: &NodeId| {
                snap.peers
                    .iter()
                    .any(|p| &p.announcement.node_id == n && p.connected)
            };
            let state = self.sm.state();
            let score = |n: &NodeId| {
                state
                    .nodes
                    .get(n)
                    .filter(|r| r.healthy)
                    .map_or(0.0, |r| r.score)
            };
            let successor = mem
                .voter_ids()
                .filter(|v| *v != leader)
                .filter_map(|v| addr_of(mem, v).and_then(|a| NodeId::parse(&a).ok()))
                .filter(|n| *n == self.node_id || connected(n))
                .max_by(|a, b| score(a).total_cmp(&score(b)).then_with(|| b.cmp(a)));
            if successor.as_ref() != Some(&self.node_id) {
                continue;
            }
            done = Some(m.current_term);
            // The leader may have died between two followers' heartbeats:
            // others may have heard it up to one heartbeat after this node;
            // one more heartbeat of slack keeps a loaded machine (late
            // heartbeats) from calling elections it does not need.
            let at = heard.1 + self.settings.lease() + hb * 2 + Duration::from_millis(10);
            tokio::time::sleep(at.saturating_duration_since(Instant::now())).await;
            let now = self.raft.metrics().borrow().clone();
            let still_silent = lock(&self.last_append).is_some_and(|h| h.1 == heard.1);
            if still_silent
                && now.current_term == m.current_term
                && now.state == ServerState::Follower
            {
                info!(
                    term = m.current_term,
                    "the leader is silent; this node stands for election"
                );
                let _ = self.raft.trigger().elect().await;
            }
        }
    }
}
