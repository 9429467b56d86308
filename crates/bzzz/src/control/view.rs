//! The leader view (`GET /api/v1/leader`, `bzzz leader`) and what this node
//! observes of the cluster for the planners.

use super::*;

pub use bzzz_proto::api::LeaderInfo;

pub(super) fn addr_of(
    m: &openraft::Membership<NodeIdU64, BasicNode>,
    id: NodeIdU64,
) -> Option<String> {
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
        .scores(&settings.ctx().weights)
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
pub(super) fn observe(net: &NetHandle, local: &LocalInfo, started: Instant) -> Observed {
    let snap = net.snapshot();
    let mut o = Observed::default();
    // The share index a member's certificate grants. Certificates were
    // verified when they entered the view (`proven`) or when this node
    // loaded its own; this runs twice a second on every node, so it reads
    // the body without verifying the signature again (that was most of an
    // idle node's CPU).
    let share_of = |cert: Option<&bzzz_proto::cluster::Signed>, id: &NodeId| {
        local.membership.as_ref()?;
        let body: bzzz_proto::cluster::MembershipCert = serde_json::from_str(&cert?.body).ok()?;
        (&body.node_id == id).then_some(body.share_index)?
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
                    share_index: p
                        .proven
                        .then(|| share_of(a.membership.as_ref(), &a.node_id))
                        .flatten(),
                },
            );
        }
    }
    o
}
