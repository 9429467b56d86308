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
use bzzz_net::{LocalInfo, NetHandle, ServiceRequest as RaftInbound};
use bzzz_proto::NodeId;
use openraft::error::{NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, ServerState};
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
    /// This node's audit notes (the setup entry with the genesis).
    access: Arc<crate::access::Access>,
    /// When the running (or last failed) checkpoint attempt started.
    checkpointing: Mutex<Option<Instant>>,
    /// The node's tracker and token: every task the control plane starts
    /// runs there and stops on cancel.
    tasks: crate::state::Tasks,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Control({})", self.node_id)
    }
}

/// Where the control plane lives once started (set once).
pub type ControlCell = Arc<OnceLock<Arc<Control>>>;

mod checkpoint;
mod custody;
mod detector;
mod inbound;
mod leader;
mod network;
mod view;

pub use custody::custody;
pub use inbound::serve;
pub use leader::{initial_voters, run, step_down};
use network::Net;
pub use view::{LeaderInfo, leader_info};
use view::{addr_of, observe};

impl Control {
    /// Runs `f` on the node's tracker until it ends or the node stops.
    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let cancel = self.tasks.cancel.clone();
        self.tasks.tracker.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = f => {}
            }
        });
    }

    pub(super) async fn write_local(&self, cmd: Command) -> Result<Response, String> {
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
            let mut cmd = cmd;
            bzzz_control::tasks::stamp(&mut cmd, self.net.local_id(), now_ms());
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

    /// This node's audit file (see `bzzz_control::audit`).
    pub fn audit_path(&self) -> Option<std::path::PathBuf> {
        self.sm.audit_path()
    }

    /// Wakes when the model registry changes.
    pub fn watch_models(&self) -> watch::Receiver<u64> {
        self.sm.watch_models()
    }

    /// Reads the applied state in place, without copying it.
    pub fn with_state<R>(&self, f: impl FnOnce(&bzzz_control::raft::ClusterState) -> R) -> R {
        self.sm.with_state(f)
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// This node's clock, Unix ms (stamped into task commands by the leader).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
