//! The control task: waits for membership, starts Raft, initializes it with
//! the setup voters, and while this node leads runs the membership plan, the
//! planners and the hand-off to a better-scored voter.

use super::*;

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

pub(super) fn raft_node(id: &NodeId) -> (NodeIdU64, BasicNode) {
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
    access: Arc<crate::access::Access>,
    tracker: TaskTracker,
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
    let tasks = crate::state::Tasks {
        tracker,
        cancel: cancel.clone(),
    };
    let control = match start(&settings, &data_dir, &cluster, &net, access, tasks).await {
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
        control.spawn(async move {
            tokio::time::sleep(quiet).await;
            if !c
                .elect_enabled
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                c.raft.runtime_config().elect(true);
            }
        });
    }
    control.witness_audit(&keys);
    let _ = cell.set(control.clone());
    info!(raft_id = control.id, "control plane started");
    control.spawn(control.clone().detect_leader_loss(cancel.clone()));

    // 2. Setup holders initialize Raft with the same voters.
    let is_holder = cluster
        .genesis
        .holders
        .iter()
        .any(|h| h.node_id == control.node_id);
    if is_holder && !control.raft.is_initialized().await.unwrap_or(true) {
        let voters: BTreeMap<NodeIdU64, BasicNode> =
            initial_voters(&cluster.genesis, settings.ctx().policy.max_voters)
                .iter()
                .map(raft_node)
                .collect();
        match control.raft.initialize(voters).await {
            Ok(()) => info!("Raft initialized with the setup voters"),
            Err(e) => debug!("Raft initialize: {e}"),
        }
    }

    // 3. Loop: on the planner tick, and at once when the node's Raft role,
    // vote, leader or membership changes (openraft's server metrics). Not
    // on every metrics update (the leader's replication progress changes
    // with each heartbeat response) nor on every view change (each
    // announcement): an idle cluster wakes this loop twice a second.
    let mut tick = tokio::time::interval(settings.planner_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut metrics = control.raft.server_metrics();
    // A model added or a node's copy reported: place at once.
    let mut models = control.watch_models();
    let mut leader_since: Option<(u64, Instant)> = None;
    let mut last_shape = None;
    loop {
        let ticked = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => true,
            r = metrics.changed() => if r.is_err() { break } else { false },
            r = models.changed() => if r.is_err() { break } else { true },
        };
        let (state, term) = {
            let m = metrics.borrow_and_update();
            let term = m.vote.leader_id().get_term();
            let shape = (m.state, term, m.current_leader);
            if !ticked && last_shape == Some(shape) {
                continue;
            }
            last_shape = Some(shape);
            (m.state, term)
        };
        if state == ServerState::Leader {
            match leader_since {
                Some((t, _)) if t == term => {}
                _ => {
                    info!(term, "this node leads");
                    leader_since = Some((term, Instant::now()));
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
            control.maybe_checkpoint(&keys, cluster.genesis.created_at);
        }
    }

    // 4. Shutdown (the node called `step_down` first, while the network
    // still ran).
    if let Err(e) = control.raft.shutdown().await {
        warn!("Raft did not stop cleanly: {e}");
    }
    info!("control plane stopped");
}

pub(super) async fn start(
    settings: &ControlSettings,
    data_dir: &Path,
    cluster: &crate::keys::Cluster,
    net: &NetHandle,
    access: Arc<crate::access::Access>,
    tasks: crate::state::Tasks,
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
    // The audit file sits beside the Raft database, one per cluster too.
    let audit = dir.join(format!(
        "{}.audit.jsonl",
        &cluster.genesis.admin_public_key[..16.min(cluster.genesis.admin_public_key.len())]
    ));
    sm.set_audit_file(&audit)
        .with_context(|| format!("cannot open the audit file {}", audit.display()))?;
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
        access,
        checkpointing: Mutex::new(None),
        tasks,
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
    pub(super) fn voters(&self) -> BTreeSet<NodeId> {
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
    pub(super) fn voter_scores(&self, observed: &Observed) -> BTreeMap<NodeId, f64> {
        let live = observed.scores(&self.settings.ctx().weights);
        let mut seen = lock(&self.last_seen);
        let now = Instant::now();
        for (id, s) in &live {
            if *s > 0.0 {
                seen.insert(id.clone(), (*s, now));
            }
        }
        // Members recorded in the inventory but never seen live by this node
        // (it just started, or just became leader): the grace starts now.
        self.sm.with_state(|state| {
            for (id, r) in &state.nodes {
                seen.entry(id.clone()).or_insert((r.score, now));
            }
        });
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

    /// Members that must leave Raft: removed by the operator (admin-signed,
    /// in the state), or out of sight longer than `control.evict_after`
    /// (operations; the member keeps its certificate and share). Time out
    /// of sight counts from when this leader last saw it, or from when it
    /// took office.
    pub(super) fn gone_members(
        &self,
        voters: &BTreeSet<NodeId>,
        learners: &BTreeSet<NodeId>,
    ) -> BTreeSet<NodeId> {
        let mut gone: BTreeSet<NodeId> =
            self.sm.with_state(|s| s.removed.keys().cloned().collect());
        let now = Instant::now();
        let mut seen = lock(&self.last_seen);
        for n in voters.iter().chain(learners) {
            if *n == self.node_id {
                continue;
            }
            let (_, at) = *seen.entry(n.clone()).or_insert((0.0, now));
            if now.duration_since(at) > self.settings.evict_after {
                if !gone.contains(n) {
                    debug!(node = %n, "out of sight longer than control.evict_after; evicted from Raft");
                }
                gone.insert(n.clone());
            }
        }
        gone
    }

    /// One leader tick: genesis, Raft membership, planners, leadership.
    pub(super) async fn lead(
        self: &Arc<Self>,
        local: &LocalInfo,
        started: Instant,
        tenure: Duration,
        cluster: &crate::keys::Cluster,
    ) {
        if lock(&self.handing_off).is_some_and(|until| Instant::now() < until) {
            return;
        }
        if self.sm.with_state(|s| s.cluster.is_none()) {
            // The chain's first entry records the setup ceremony: the
            // operator (`admin`) made the cluster; the leader that writes
            // the genesis signs the note (Raft starts after setup).
            let cmd = Command::Audited {
                notes: vec![self.access.note(
                    bzzz_proto::access::ADMIN_USER,
                    "setup",
                    &format!(
                        "cluster {} ({} of {} shares sign)",
                        cluster.genesis.cluster, cluster.genesis.threshold, cluster.genesis.shares
                    ),
                    "ok",
                    1,
                )],
                cmd: Some(Box::new(Command::Genesis {
                    record: cluster.genesis_signed.clone(),
                })),
                access: None,
                proof: None,
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
        let gone = self.gone_members(&voters, &learners);
        let plan = slurp::plan_membership(
            &healthy,
            &voters,
            &learners,
            &scores,
            &gone,
            &self.settings.ctx().policy,
        );
        if !plan.remove.is_empty() {
            let ids: BTreeSet<NodeIdU64> = plan.remove.iter().map(raft_id).collect();
            info!(nodes = ?plan.remove.iter().map(NodeId::short).collect::<Vec<_>>(), "dropping removed or evicted members from Raft");
            match tokio::time::timeout(
                WRITE_TIMEOUT,
                self.raft
                    .change_membership(openraft::ChangeMembers::RemoveNodes(ids), false),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => debug!("remove learners: {e}"),
                Err(_) => debug!("remove learners timed out"),
            }
        }
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
            let risk = self.sm.with_state(|s| s.share_risk());
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
            let cmds = self
                .sm
                .with_state(|s| p.plan(s, &observed, &self.settings.ctx()));
            for cmd in cmds {
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
        let live = observed.scores(&self.settings.ctx().weights);
        if let Some(best) = preferred_leader(
            &live,
            &voters,
            Some(&incumbent),
            &self.settings.ctx().policy,
        ) && best != self.node_id
        {
            info!(to = %best, "a better-scored voter should lead; handing off");
            self.hand_off(&best).await;
        }
    }

    /// Stops heartbeats and asks `to` to take over; resumes if nobody took
    /// over after a few leases.
    pub(super) async fn hand_off(&self, to: &NodeId) {
        let term = self.raft.metrics().borrow().current_term;
        let lease = self.settings.lease();
        *lock(&self.handing_off) = Some(Instant::now() + lease * 9);
        // Ask first, then fall silent: heartbeats go on while the request
        // is in flight, so a slow answer (a loaded machine) does not leave
        // the followers leaderless and racing the heir with their own
        // timers. The heir waits out the lease and retries its election,
        // so a heartbeat sent just before the answer costs it one retry.
        let accepted = match tokio::time::timeout(
            lease * 3,
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
            self.raft.runtime_config().heartbeat(false);
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
}
