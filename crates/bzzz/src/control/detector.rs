//! Failure detection on every node: a silent leader is replaced by one
//! designated successor; a node whose log is behind stands down.

use super::*;

impl Control {
    /// A node whose log is behind a voter's cannot win an election; if it
    /// keeps standing it keeps raising the term past the others', and every
    /// up-to-date candidate is then refused for its lower term and has to
    /// wait out a timeout: the cluster can go without a leader for seconds.
    /// So such a node stops calling elections until it hears a leader (an
    /// AppendEntries re-enables them, see `handle`) or, failing that, for a
    /// few leases (every other voter may be behind too).
    pub(super) fn stand_down_if_behind(self: &Arc<Self>) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.behind.swap(false, Relaxed) || !self.elect_enabled.swap(false, Relaxed) {
            return;
        }
        self.raft.runtime_config().elect(false);
        info!("a voter's log is ahead of this node's: no elections until a leader is heard");
        let me = self.clone();
        let quiet = self.settings.lease() * 4;
        self.spawn(async move {
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
    pub(super) async fn detect_leader_loss(self: Arc<Self>, cancel: CancellationToken) {
        let hb = Duration::from_millis(self.settings.raft.heartbeat_interval);
        let mut done: Option<u64> = None;
        loop {
            // Wake when the leader, heard last at `heard`, would count as
            // silent (three heartbeats later); each heartbeat moves that
            // moment, so a healthy cluster wakes this task about every
            // two heartbeats instead of on a fixed fast tick.
            let silent_at =
                lock(&self.last_append).map_or(Instant::now() + hb * 3, |h| h.1 + hb * 3);
            let wake = silent_at.max(Instant::now() + hb / 2);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            self.stand_down_if_behind();
            // The cheap test first: no copy of the metrics unless the
            // leader has gone quiet.
            let leader = {
                let m = self.raft.metrics();
                let m = m.borrow();
                match m.current_leader {
                    Some(l)
                        if m.state == ServerState::Follower
                            && l != self.id
                            && done != Some(m.current_term) =>
                    {
                        l
                    }
                    _ => continue,
                }
            };
            let Some(heard) = *lock(&self.last_append) else {
                continue;
            };
            if heard.0 != leader || heard.1.elapsed() < hb * 3 {
                continue;
            }
            let m = self.raft.metrics().borrow().clone();
            if m.current_leader != Some(leader) {
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
            let scores: BTreeMap<NodeId, f64> = self.sm.with_state(|state| {
                state
                    .nodes
                    .iter()
                    .filter(|(_, r)| r.healthy)
                    .map(|(n, r)| (n.clone(), r.score))
                    .collect()
            });
            let score = |n: &NodeId| scores.get(n).copied().unwrap_or(0.0);
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
            // 50 ms more of slack keeps a loaded machine (late heartbeats)
            // from calling elections it does not need.
            let at = heard.1 + self.settings.lease() + hb + Duration::from_millis(60);
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
