//! SLURP (Service Layer Unified Resource Protocol): the leader's
//! orchestration loops, as planners.
//!
//! A planner is a pure function of the replicated [`ClusterState`] and what
//! the leader observes now ([`Observed`]) to [`Command`]s. The leader runs
//! every planner each tick and commits what they return through Raft; every
//! node applies the commands in log order. Adding a duty (model placement,
//! task assignment) is one more [`Planner`] in [`planners`].
//!
//! Planners must be idempotent: given a state that already reflects the
//! observation, they return nothing (so a quiet cluster writes no log).

use std::collections::{BTreeMap, BTreeSet};

use bzzz_proto::{Capabilities, NodeId};

use crate::leadership::{Policy, choose_voters};
use crate::raft::{ClusterState, Command, NodeRecord};
use crate::score::{Input, Weights, score};

/// One member as the leader sees it now.
#[derive(Debug, Clone)]
pub struct ObservedNode {
    pub capabilities: Capabilities,
    pub uptime_secs: u64,
    /// Connected (or the leader itself).
    pub healthy: bool,
    /// The admin-key share index its membership certificate grants.
    pub share_index: Option<u16>,
}

/// What the leader observes now: the members in its view.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub nodes: BTreeMap<NodeId, ObservedNode>,
}

impl Observed {
    /// Every observed node's score.
    pub fn scores(&self, w: &Weights) -> BTreeMap<NodeId, f64> {
        self.nodes
            .iter()
            .map(|(id, n)| (id.clone(), node_score(n, w)))
            .collect()
    }
}

pub fn node_score(n: &ObservedNode, w: &Weights) -> f64 {
    score(
        &Input {
            capabilities: &n.capabilities,
            uptime_secs: n.uptime_secs,
            rtt_ms: None,
            healthy: n.healthy,
        },
        w,
    )
}

/// Settings every planner may read.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub weights: Weights,
    pub policy: Policy,
}

/// A leader duty.
pub trait Planner: Send + Sync {
    fn name(&self) -> &'static str;
    fn plan(&self, state: &ClusterState, observed: &Observed, ctx: &Context) -> Vec<Command>;
}

/// The planners the leader runs, in order.
pub fn planners() -> Vec<Box<dyn Planner>> {
    vec![
        Box::new(Inventory),
        Box::new(ShareHolders),
        Box::new(ModelPlacement),
    ]
}

/// Model placement ([`crate::placement`]): a `ModelPlace` command for each
/// model whose placement should change.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelPlacement;

impl Planner for ModelPlacement {
    fn name(&self) -> &'static str {
        "model_placement"
    }

    fn plan(&self, state: &ClusterState, observed: &Observed, ctx: &Context) -> Vec<Command> {
        let reg = &state.models;
        if reg.models.is_empty() {
            return vec![];
        }
        let nodes = observed
            .nodes
            .iter()
            .map(|(id, n)| {
                let c = &n.capabilities;
                (
                    id.clone(),
                    crate::placement::Node {
                        healthy: n.healthy,
                        vram_total: c.gpus.iter().map(|g| g.vram_total_bytes).sum(),
                        vram_free: c
                            .gpus
                            .iter()
                            .map(|g| g.vram_free_bytes.unwrap_or(g.vram_total_bytes))
                            .sum(),
                        ram_total: c.memory_total_bytes,
                        ram_free: c.memory_free_bytes,
                        zone: c.labels.zone.clone(),
                        score: node_score(n, &ctx.weights),
                    },
                )
            })
            .collect();
        let mut next = crate::placement::place(reg, &nodes);
        let mut out = Vec::new();
        for (name, e) in &reg.models {
            if e.removed {
                continue;
            }
            let new = next.remove(name).unwrap_or_default();
            let old = reg.placements.get(name).cloned().unwrap_or_default();
            if new != old {
                out.push(Command::ModelPlace {
                    name: name.clone(),
                    nodes: new,
                });
            }
        }
        out
    }
}

/// Resource inventory: every member's resources and score, and cluster
/// totals. Members out of sight stay listed as unhealthy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inventory;

fn record(n: &ObservedNode, w: &Weights) -> NodeRecord {
    let c = &n.capabilities;
    NodeRecord {
        score: node_score(n, w),
        healthy: n.healthy,
        cpu_cores: c.cpu.cores,
        memory_total_bytes: c.memory_total_bytes,
        memory_free_bytes: c.memory_free_bytes,
        disk_free_bytes: c.disk_free_bytes,
        vram_total_bytes: c.gpus.iter().map(|g| g.vram_total_bytes).sum(),
        vram_free_bytes: c
            .gpus
            .iter()
            .map(|g| g.vram_free_bytes.unwrap_or(g.vram_total_bytes))
            .sum(),
        gpus: u32::try_from(c.gpus.len()).unwrap_or(u32::MAX),
    }
}

/// Differs enough to be worth a log entry: health, totals, a score by more
/// than 5 % (and at least 1 point), or free memory/disk/VRAM by more than 10 % of the total.
fn material(old: &NodeRecord, new: &NodeRecord) -> bool {
    let moved = |a: u64, b: u64, total: u64| a.abs_diff(b) as f64 > total.max(1) as f64 * 0.10;
    old.healthy != new.healthy
        || old.cpu_cores != new.cpu_cores
        || old.memory_total_bytes != new.memory_total_bytes
        || old.vram_total_bytes != new.vram_total_bytes
        || old.gpus != new.gpus
        || (old.score - new.score).abs() > (old.score.abs() * 0.05).max(1.0)
        || moved(
            old.memory_free_bytes,
            new.memory_free_bytes,
            new.memory_total_bytes,
        )
        || moved(
            old.disk_free_bytes,
            new.disk_free_bytes,
            new.disk_free_bytes.max(old.disk_free_bytes),
        )
        || moved(
            old.vram_free_bytes,
            new.vram_free_bytes,
            new.vram_total_bytes,
        )
}

impl Planner for Inventory {
    fn name(&self) -> &'static str {
        "inventory"
    }

    fn plan(&self, state: &ClusterState, observed: &Observed, ctx: &Context) -> Vec<Command> {
        let mut next = state.nodes.clone();
        let mut changed = false;
        for (id, n) in &observed.nodes {
            let r = record(n, &ctx.weights);
            match next.get(id) {
                Some(old) if !material(old, &r) => {}
                _ => {
                    next.insert(id.clone(), r);
                    changed = true;
                }
            }
        }
        // Out of sight: unhealthy, out of the totals; the last score stays
        // (voter choice gives a short absence a grace period).
        for (id, r) in next.iter_mut() {
            if r.healthy && !observed.nodes.contains_key(id) {
                r.healthy = false;
                changed = true;
            }
        }
        if changed {
            vec![Command::Inventory { nodes: next }]
        } else {
            vec![]
        }
    }
}

/// Admin-key share distribution at genesis (epoch 0): records which member
/// holds which share index (from the members' certificates), so every node
/// sees the same holder table, and [`ClusterState::share_risk`] can tell
/// when too few holders are alive to sign. Past genesis the committed key
/// epoch (`Command::KeyEpoch`) writes the table and this planner is idle.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShareHolders;

impl Planner for ShareHolders {
    fn name(&self) -> &'static str {
        "share_holders"
    }

    fn plan(&self, state: &ClusterState, observed: &Observed, _ctx: &Context) -> Vec<Command> {
        // Past genesis, the committed key epoch names the holders.
        if state.key_epoch.is_some() {
            return vec![];
        }
        let mut next = state.share_holders.clone();
        for (id, n) in &observed.nodes {
            if let Some(i) = n.share_index {
                next.insert(i, id.clone());
            }
        }
        if next == state.share_holders {
            vec![]
        } else {
            vec![Command::ShareHolders { holders: next }]
        }
    }
}

/// A change of the Raft membership the leader should make.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipPlan {
    /// Members to add as learners (they follow the log without voting).
    pub add_learners: Vec<NodeId>,
    /// The new voter set, when it should change.
    pub voters: Option<BTreeSet<NodeId>>,
    /// Learners to drop from Raft (removed or evicted members; a voter
    /// among them is first demoted by the voter change).
    pub remove: BTreeSet<NodeId>,
}

/// Raft membership from the members present: every healthy member not in
/// Raft joins as a learner; the voters are [`choose_voters`] among the Raft
/// members (with its hysteresis), `scores` giving each one's standing
/// (callers keep a voter that vanished only briefly at its last score, so a
/// restart does not shuffle seats).
///
/// `gone`: members removed by the operator or out of sight longer than
/// `control.evict_after`: they leave Raft (voters first become learners,
/// then learners are dropped) and are never added back while gone.
pub fn plan_membership(
    healthy_members: &BTreeSet<NodeId>,
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
    scores: &BTreeMap<NodeId, f64>,
    gone: &BTreeSet<NodeId>,
    policy: &Policy,
) -> MembershipPlan {
    let add_learners = healthy_members
        .iter()
        .filter(|m| !voters.contains(*m) && !learners.contains(*m) && !gone.contains(*m))
        .cloned()
        .collect();
    let in_raft: BTreeMap<NodeId, f64> = scores
        .iter()
        .filter(|(n, _)| (voters.contains(*n) || learners.contains(*n)) && !gone.contains(*n))
        .map(|(n, s)| (n.clone(), *s))
        .collect();
    let remove = learners.intersection(gone).cloned().collect();
    let want = choose_voters(&in_raft, voters, policy);
    // Changing voters needs a quorum of the old set alive: never plan a
    // change when most voters are gone (it could not commit) or to nobody.
    let alive = voters
        .iter()
        .filter(|v| scores.get(*v).is_some_and(|s| *s > 0.0))
        .count();
    let voters_change =
        (!want.is_empty() && want != *voters && alive * 2 > voters.len()).then_some(want);
    MembershipPlan {
        add_learners,
        voters: voters_change,
        remove,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bzzz_proto::{CpuInfo, GpuInfo};

    fn id(i: u8) -> NodeId {
        // Any valid peer id string works; derive distinct ones.
        let key = libp2p_like_id(i);
        NodeId::parse(&key).expect("node id")
    }

    fn libp2p_like_id(i: u8) -> String {
        // Ed25519 peer ids are "12D3KooW" + 44 base58 chars.
        let alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
        let c = alphabet
            .chars()
            .nth(usize::from(i) % alphabet.len())
            .unwrap_or('1');
        format!("12D3KooW{}", c.to_string().repeat(44))
    }

    fn node(vram_gib: u64, healthy: bool) -> ObservedNode {
        ObservedNode {
            capabilities: Capabilities {
                cpu: CpuInfo {
                    cores: 8,
                    ..CpuInfo::default()
                },
                memory_total_bytes: 16 << 30,
                memory_free_bytes: 8 << 30,
                disk_free_bytes: 100 << 30,
                gpus: (vram_gib > 0)
                    .then(|| GpuInfo {
                        vendor: "nvidia".into(),
                        model: "test".into(),
                        vram_total_bytes: vram_gib << 30,
                        ..GpuInfo::default()
                    })
                    .into_iter()
                    .collect(),
                ..Capabilities::default()
            },
            uptime_secs: 60,
            healthy,
            share_index: None,
        }
    }

    #[test]
    fn share_holders_are_recorded_and_risk_is_reported() {
        let ctx = Context::default();
        let mut obs = Observed::default();
        for i in 1..=3u8 {
            let mut n = node(0, true);
            n.share_index = Some(u16::from(i));
            obs.nodes.insert(id(i), n);
        }
        obs.nodes.insert(id(4), node(0, true)); // no share
        let mut state = ClusterState {
            cluster: Some(crate::raft::ClusterInfo {
                name: "lab".into(),
                admin_public_key: "00".repeat(32),
                threshold: 2,
            }),
            ..ClusterState::default()
        };
        let mut idx = 0;
        let mut apply = |state: &mut ClusterState, obs: &Observed| {
            for p in planners() {
                for c in p.plan(state, obs, &ctx) {
                    idx += 1;
                    state.apply_command(idx, c);
                }
            }
        };
        apply(&mut state, &obs);
        assert_eq!(state.share_holders.len(), 3);
        assert_eq!(state.share_holders[&2], id(2));
        assert_eq!(state.share_risk(), None, "3 live holders, t = 2");
        assert!(
            ShareHolders.plan(&state, &obs, &ctx).is_empty(),
            "idempotent"
        );
        // Two holders gone: 1 live holder < t = 2.
        obs.nodes.remove(&id(2));
        obs.nodes.remove(&id(3));
        apply(&mut state, &obs);
        assert_eq!(
            state.share_holders.len(),
            3,
            "a departed holder keeps its entry"
        );
        let risk = state.share_risk().expect("at risk");
        assert!(risk.contains("1 of 3"), "{risk}");
    }

    #[test]
    fn inventory_records_members_once_and_totals_them() {
        let ctx = Context::default();
        let mut obs = Observed::default();
        obs.nodes.insert(id(1), node(0, true));
        obs.nodes.insert(id(2), node(24, true));
        let mut state = ClusterState::default();
        let cmds = Inventory.plan(&state, &obs, &ctx);
        assert_eq!(cmds.len(), 1);
        for c in cmds {
            state.apply_command(1, c);
        }
        assert_eq!(state.nodes.len(), 2);
        assert_eq!(state.totals.nodes, 2);
        assert_eq!(state.totals.vram_total_bytes, 24 << 30);
        assert_eq!(state.totals.cpu_cores, 16);
        // Idempotent: the same observation plans nothing.
        assert!(Inventory.plan(&state, &obs, &ctx).is_empty());
        // A member out of sight becomes unhealthy and leaves the totals.
        obs.nodes.remove(&id(2));
        let cmds = Inventory.plan(&state, &obs, &ctx);
        assert_eq!(cmds.len(), 1);
        for c in cmds {
            state.apply_command(2, c);
        }
        assert!(!state.nodes[&id(2)].healthy);
        assert_eq!(state.totals.nodes, 1);
        assert_eq!(state.totals.vram_total_bytes, 0);
    }

    #[test]
    fn small_changes_write_nothing() {
        let ctx = Context::default();
        let mut obs = Observed::default();
        obs.nodes.insert(id(1), node(8, true));
        let mut state = ClusterState::default();
        for c in Inventory.plan(&state, &obs, &ctx) {
            state.apply_command(1, c);
        }
        let n = obs.nodes.get_mut(&id(1)).expect("node");
        n.capabilities.memory_free_bytes -= 100 << 20; // 100 MiB of 16 GiB
        n.uptime_secs += 30;
        assert!(Inventory.plan(&state, &obs, &ctx).is_empty());
    }

    #[test]
    fn membership_adds_learners_and_keeps_voters_odd() {
        let p = Policy::default();
        let all: BTreeSet<NodeId> = (1..=4).map(id).collect();
        let voters: BTreeSet<NodeId> = [id(1)].into();
        let scores: BTreeMap<NodeId, f64> = (1..=4).map(|i| (id(i), 10.0)).collect();
        let plan = plan_membership(
            &all,
            &voters,
            &BTreeSet::new(),
            &scores,
            &BTreeSet::new(),
            &p,
        );
        assert_eq!(plan.add_learners, vec![id(2), id(3), id(4)]);
        // Not in Raft yet: no voter change until they are learners.
        assert_eq!(plan.voters, None);
        let learners: BTreeSet<NodeId> = (2..=4).map(id).collect();
        let plan = plan_membership(&all, &voters, &learners, &scores, &BTreeSet::new(), &p);
        assert!(plan.add_learners.is_empty());
        let v = plan.voters.expect("voters grow");
        assert_eq!(v.len(), 3);
        assert!(v.contains(&id(1)), "the sitting voter keeps its seat");
    }

    #[test]
    fn gone_members_leave_raft_and_are_not_added_back() {
        let p = Policy::default();
        let voters: BTreeSet<NodeId> = (1..=3).map(id).collect();
        let learners: BTreeSet<NodeId> = (4..=5).map(id).collect();
        let scores: BTreeMap<NodeId, f64> = (1..=5).map(|i| (id(i), 10.0)).collect();
        let all: BTreeSet<NodeId> = (1..=5).map(id).collect();
        let gone: BTreeSet<NodeId> = [id(2), id(5)].into();
        let plan = plan_membership(&all, &voters, &learners, &scores, &gone, &p);
        let v = plan.voters.expect("the removed voter is replaced");
        assert!(!v.contains(&id(2)), "{v:?}");
        assert_eq!(plan.remove, [id(5)].into(), "the gone learner is dropped");
        // Once demoted, the removed voter is dropped too; nobody re-adds it.
        let learners: BTreeSet<NodeId> = [id(2), id(4), id(5)].into();
        let plan = plan_membership(&all, &v, &learners, &scores, &gone, &p);
        assert_eq!(plan.remove, [id(2), id(5)].into());
        let outside: BTreeSet<NodeId> = [id(1)].into();
        let plan = plan_membership(&all, &outside, &BTreeSet::new(), &scores, &gone, &p);
        assert!(!plan.add_learners.contains(&id(2)) && !plan.add_learners.contains(&id(5)));
    }

    #[test]
    fn no_voter_change_without_a_live_quorum() {
        let p = Policy::default();
        let voters: BTreeSet<NodeId> = (1..=3).map(id).collect();
        let learners: BTreeSet<NodeId> = (4..=5).map(id).collect();
        let scores: BTreeMap<NodeId, f64> = [(id(1), 10.0), (id(4), 10.0), (id(5), 10.0)].into();
        let all: BTreeSet<NodeId> = [id(1), id(4), id(5)].into();
        let plan = plan_membership(&all, &voters, &learners, &scores, &BTreeSet::new(), &p);
        assert_eq!(plan.voters, None);
    }
}
