//! Three real openraft nodes in one process, each with its log on redb (the
//! network is an in-process router; the libp2p transport replaces it in the node): one leader is
//! elected, a write is replicated to every state machine, and when the
//! leader stops a new one is elected and accepts writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bzzz_control::raft::{Command, NodeIdU64, Raft, StateMachine, TypeConfig};
use bzzz_control::store::{DiskLog, RaftDb};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config};

#[derive(Clone, Default)]
struct Router(Arc<Mutex<BTreeMap<NodeIdU64, Raft>>>);

impl Router {
    fn get(&self, id: NodeIdU64) -> Option<Raft> {
        self.0.lock().expect("router").get(&id).cloned()
    }
}

struct Conn {
    router: Router,
    target: NodeIdU64,
}

fn unreachable<E: std::error::Error>(target: NodeIdU64) -> RPCError<NodeIdU64, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
        "node {target} is down"
    ))))
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Conn;
    async fn new_client(&mut self, target: NodeIdU64, _node: &BasicNode) -> Conn {
        Conn {
            router: self.clone(),
            target,
        }
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        AppendEntriesResponse<NodeIdU64>,
        RPCError<NodeIdU64, BasicNode, RaftError<NodeIdU64>>,
    > {
        let r = self
            .router
            .get(self.target)
            .ok_or_else(|| unreachable(self.target))?;
        r.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeIdU64>,
        RPCError<NodeIdU64, BasicNode, RaftError<NodeIdU64, InstallSnapshotError>>,
    > {
        let r = self
            .router
            .get(self.target)
            .ok_or_else(|| unreachable(self.target))?;
        r.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeIdU64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeIdU64>, RPCError<NodeIdU64, BasicNode, RaftError<NodeIdU64>>> {
        let r = self
            .router
            .get(self.target)
            .ok_or_else(|| unreachable(self.target))?;
        r.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Waits (on Raft's metrics, no polling) until every node names the same
/// leader, other than `not`; returns it.
async fn wait_leader(nodes: &[(NodeIdU64, Raft)], not: Option<NodeIdU64>) -> NodeIdU64 {
    let m = nodes[0]
        .1
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.current_leader.is_some() && m.current_leader != not,
            "a leader",
        )
        .await
        .expect("a leader within 10 s");
    let leader = m.current_leader.expect("leader");
    for (_, r) in nodes {
        r.wait(Some(Duration::from_secs(10)))
            .current_leader(leader, "the same leader everywhere")
            .await
            .expect("agreement on the leader");
    }
    let all: BTreeSet<Option<NodeIdU64>> = nodes
        .iter()
        .map(|(_, r)| r.metrics().borrow().current_leader)
        .collect();
    assert_eq!(all.len(), 1, "two leaders: {all:?}");
    leader
}

/// Waits until every node has applied `index`.
async fn wait_applied(nodes: &[(NodeIdU64, Raft)], index: u64) {
    for (_, r) in nodes {
        r.wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(index), "applied everywhere")
            .await
            .expect("applied within 10 s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_and_fail_over() {
    let config = Arc::new(
        Config {
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            ..Default::default()
        }
        .validate()
        .expect("config"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let router = Router::default();
    let mut nodes = Vec::new();
    let mut machines = BTreeMap::new();
    for i in 1..=3u64 {
        let db = RaftDb::open(&dir.path().join(format!("raft-{i}.redb"))).expect("db");
        let sm = StateMachine::open(db.clone()).expect("sm");
        let raft = Raft::new(
            i,
            config.clone(),
            router.clone(),
            DiskLog::new(db),
            sm.clone(),
        )
        .await
        .expect("raft");
        router.0.lock().expect("router").insert(i, raft.clone());
        machines.insert(i, sm);
        nodes.push((i, raft));
    }
    let members: BTreeMap<NodeIdU64, BasicNode> = (1..=3)
        .map(|i| (i, BasicNode::new(format!("node-{i}"))))
        .collect();
    nodes[0].1.initialize(members).await.expect("initialize");

    let leader = wait_leader(&nodes, None).await;
    let lraft = router.get(leader).expect("leader");
    let w = lraft
        .client_write(Command::Set {
            key: "k".into(),
            value: "v1".into(),
        })
        .await
        .expect("write");
    // Every state machine applies it.
    wait_applied(&nodes, w.log_id.index).await;
    for m in machines.values() {
        assert_eq!(m.state().kv.get("k").map(String::as_str), Some("v1"));
    }

    // Stop the leader: the two others elect a new one and keep writing.
    router.0.lock().expect("router").remove(&leader);
    lraft.shutdown().await.expect("shutdown");
    let rest: Vec<(NodeIdU64, Raft)> = nodes.into_iter().filter(|(i, _)| *i != leader).collect();
    let new_leader = wait_leader(&rest, Some(leader)).await;
    assert_ne!(new_leader, leader);
    let r = router
        .get(new_leader)
        .expect("new leader")
        .client_write(Command::Set {
            key: "k".into(),
            value: "v2".into(),
        })
        .await
        .expect("write after failover");
    assert_eq!(
        r.data.previous.as_deref(),
        Some("v1"),
        "no committed write lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_redb_survives_a_full_restart() {
    let config = Arc::new(
        Config {
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            // Snapshot (and purge) early, so the restart also reads one.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(3),
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        }
        .validate()
        .expect("config"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let start = |router: Router| {
        let config = config.clone();
        let dir = dir.path().to_owned();
        async move {
            let mut nodes = Vec::new();
            let mut machines = BTreeMap::new();
            for i in 1..=3u64 {
                let db = RaftDb::open(&dir.join(format!("raft-{i}.redb"))).expect("db");
                let sm = StateMachine::open(db.clone()).expect("sm");
                let raft = Raft::new(
                    i,
                    config.clone(),
                    router.clone(),
                    DiskLog::new(db),
                    sm.clone(),
                )
                .await
                .expect("raft");
                router.0.lock().expect("router").insert(i, raft.clone());
                machines.insert(i, sm);
                nodes.push((i, raft));
            }
            (nodes, machines)
        }
    };

    let router = Router::default();
    let (nodes, machines) = start(router.clone()).await;
    let members: BTreeMap<NodeIdU64, BasicNode> = (1..=3)
        .map(|i| (i, BasicNode::new(format!("node-{i}"))))
        .collect();
    nodes[0].1.initialize(members).await.expect("initialize");
    let leader = wait_leader(&nodes, None).await;
    for n in 0..10 {
        router
            .get(leader)
            .expect("leader")
            .client_write(Command::Set {
                key: format!("k{n}"),
                value: format!("v{n}"),
            })
            .await
            .expect("write");
    }
    let term_before = nodes[0].1.metrics().borrow().current_term;
    // Stop everything (every handle to the databases goes away).
    router.0.lock().expect("router").clear();
    for (_, r) in &nodes {
        r.shutdown().await.expect("shutdown");
    }
    drop(nodes);
    drop(machines);

    let router = Router::default();
    let (nodes, machines) = start(router.clone()).await;
    let leader = wait_leader(&nodes, None).await;
    assert!(nodes[0].1.metrics().borrow().current_term >= term_before);
    let r = router
        .get(leader)
        .expect("leader")
        .client_write(Command::Set {
            key: "k9".into(),
            value: "after".into(),
        })
        .await
        .expect("write after restart");
    assert_eq!(
        r.data.previous.as_deref(),
        Some("v9"),
        "a committed write was lost"
    );
    wait_applied(&nodes, r.log_id.index).await;
    for m in machines.values() {
        let s = m.state();
        assert_eq!(s.kv.len(), 10, "state not rebuilt: {:?}", s.kv);
        assert_eq!(s.kv.get("k0").map(String::as_str), Some("v0"));
    }
}

/// The claim race (issue #23): ten claimers propose a claim for the same
/// task at once, 1000 times over (a new task each trial), through a real
/// three-voter Raft on redb: exactly one claim is accepted per task, every
/// replica agrees, and the winner's fence is its entry's log index.
/// Prints the figures (`docs/benchmarks.md`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_claimers_race_for_each_task_and_exactly_one_wins() {
    use bzzz_control::tasks::{TaskOp, TaskState, task_key};
    const TRIALS: usize = 1000;
    const CLAIMERS: usize = 10;
    let config = Arc::new(
        Config {
            heartbeat_interval: 100,
            election_timeout_min: 1000,
            election_timeout_max: 2000,
            ..Default::default()
        }
        .validate()
        .expect("config"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let router = Router::default();
    let mut nodes = Vec::new();
    let mut machines = BTreeMap::new();
    for i in 1..=3u64 {
        let db = RaftDb::open(&dir.path().join(format!("raft-{i}.redb"))).expect("db");
        let sm = StateMachine::open(db.clone()).expect("sm");
        let raft = Raft::new(
            i,
            config.clone(),
            router.clone(),
            DiskLog::new(db),
            sm.clone(),
        )
        .await
        .expect("raft");
        router.0.lock().expect("router").insert(i, raft.clone());
        machines.insert(i, sm);
        nodes.push((i, raft));
    }
    let members: BTreeMap<NodeIdU64, BasicNode> = (1..=3)
        .map(|i| (i, BasicNode::new(format!("node-{i}"))))
        .collect();
    nodes[0].1.initialize(members).await.expect("initialize");
    let leader = router.get(wait_leader(&nodes, None).await).expect("leader");
    let claimers: Vec<bzzz_proto::NodeId> = (0..CLAIMERS)
        .map(|i| {
            // Base58 letters (no I, O, l, 0).
            let c = char::from(b"ABCDEFGHJK"[i]);
            bzzz_proto::NodeId::parse(&format!("12D3KooW{}", c.to_string().repeat(44))).expect("id")
        })
        .collect();
    let started = std::time::Instant::now();
    let mut accepted_total = 0;
    let mut last_index = 0;
    let mut trial_ms = Vec::with_capacity(TRIALS);
    for trial in 0..TRIALS {
        let id = format!("t{trial}");
        let t0 = std::time::Instant::now();
        let writes = claimers.iter().map(|by| {
            let leader = leader.clone();
            let op = TaskOp::Claim {
                key: task_key("repo", &id),
                repo: "repo".into(),
                id: id.clone(),
                title: String::new(),
                priority: 0,
                lease_ms: 60_000,
            };
            let by = by.clone();
            let router = router.clone();
            async move {
                let cmd = Command::Task {
                    by,
                    now_ms: 1_000 + trial as u64,
                    op,
                };
                // A write refused by a node that is no longer the leader
                // was never appended: send it to the new one.
                let mut to = leader;
                for _ in 0..50 {
                    match to.client_write(cmd.clone()).await {
                        Ok(r) => return r,
                        Err(openraft::error::RaftError::APIError(
                            openraft::error::ClientWriteError::ForwardToLeader(f),
                        )) => {
                            if let Some(l) = f.leader_id.and_then(|l| router.get(l)) {
                                to = l;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("commit: {e}"),
                    }
                }
                panic!("no leader took the write")
            }
        });
        let results = futures::future::join_all(writes).await;
        trial_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        let winners: Vec<_> = results
            .iter()
            .filter(|r| r.data.rejected.is_none())
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "trial {trial}: {} claims accepted",
            winners.len()
        );
        let w = winners[0];
        assert_eq!(
            w.data.previous.as_deref(),
            Some(w.log_id.index.to_string().as_str()),
            "the fence is the entry's index"
        );
        accepted_total += winners.len();
        last_index = last_index.max(results.iter().map(|r| r.log_id.index).max().unwrap_or(0));
    }
    let elapsed = started.elapsed();
    wait_applied(&nodes, last_index).await;
    // Counted again from every replica's state: one claim per task.
    for (i, m) in &machines {
        let s = m.state();
        assert_eq!(s.tasks.tasks.len(), TRIALS, "node {i}");
        for (k, t) in &s.tasks.tasks {
            assert_eq!(t.claims, 1, "node {i}: {k} claimed {} times", t.claims);
            assert_eq!(t.state, TaskState::Claimed);
        }
    }
    trial_ms.sort_by(f64::total_cmp);
    println!(
        "claim race: {TRIALS} trials x {CLAIMERS} claimers at once: {accepted_total} accepted, 0 duplicates, {} refused; per trial p50 {:.1} ms, p99 {:.1} ms; {:.1} s in all",
        TRIALS * CLAIMERS - accepted_total,
        trial_ms[TRIALS / 2],
        trial_ms[TRIALS * 99 / 100],
        elapsed.as_secs_f64()
    );
}
