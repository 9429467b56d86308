//! Key custody in the node (SPEC §3): every node adopts committed key
//! epochs and removals from the Raft state; the Raft leader re-deals the
//! admin key whenever the holder set or the threshold should change
//! (`bzzz_keys::redeal`); a removed node stops with a clear message.
//!
//! | takes | sends |
//! |---|---|
//! | the Raft state (`key_epoch`, `removed`; woken by `watch_keys`), a 1 s tick | `adopt_epoch`, `set_removed` (→ the swarm refuses removed ids), re-deals and `KeyEpoch` commits (leader), the fatal channel (removed) |

use std::sync::Arc;
use std::time::{Duration, Instant};

use bzzz_control::raft::Command;
use bzzz_keys::{Keys, Standing};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Control, ControlCell};

impl Control {
    /// Wakes when key custody changes in the state.
    pub fn watch_keys(&self) -> watch::Receiver<u64> {
        self.sm.watch_keys()
    }

    /// Whether this node leads Raft now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Commits a signed key epoch and adopts it here at once.
    pub async fn commit_epoch(
        &self,
        keys: &Keys,
        record: bzzz_proto::cluster::Signed,
    ) -> Result<(), String> {
        // A leader change may be under way (right after setup the first
        // leader hands off to the best-scored voter): the signed record
        // stays valid for this epoch, so retry for a few seconds.
        let until = Instant::now() + Duration::from_secs(5);
        let r = loop {
            match self
                .propose(Command::KeyEpoch {
                    record: record.clone(),
                })
                .await
            {
                Ok(r) => break r,
                Err(e) if Instant::now() < until => {
                    tracing::debug!("key epoch not committed yet ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        if let Some(why) = r.rejected {
            // A retry after a lost answer: the first proposal committed it.
            let ours =
                self.with_state(|s| s.key_epoch.as_ref().is_some_and(|k| k.record == record));
            if !ours {
                return Err(why);
            }
        }
        keys.adopt_epoch(&record)?;
        Ok(())
    }
}

/// What custody sees of the view: the connected, proven members and
/// their share reports (`None` once the view is gone).
async fn view_changed(
    rx: &mut Option<watch::Receiver<Arc<bzzz_net::Snapshot>>>,
) -> Option<Vec<(bzzz_proto::NodeId, Option<bzzz_proto::api::ShareReport>)>> {
    let Some(r) = rx else {
        return std::future::pending().await;
    };
    if r.changed().await.is_err() {
        *rx = None;
        return None;
    }
    let snap = r.borrow_and_update().clone();
    Some(
        snap.peers
            .iter()
            .filter(|p| p.connected && p.proven)
            .map(|p| (p.announcement.node_id.clone(), p.announcement.share))
            .collect(),
    )
}

/// How often a member re-asks peers whether it still belongs.
const STANDING_EVERY: Duration = Duration::from_secs(15);

async fn changed(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                *rx = None;
            }
        }
        None => std::future::pending().await,
    }
}

/// Runs key custody until cancelled; sends the reason on `fatal` when this
/// node learns it was removed.
pub async fn custody(
    keys: Arc<Keys>,
    cell: ControlCell,
    fatal: mpsc::Sender<String>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rx: Option<watch::Receiver<u64>> = None;
    // The view wakes the loop too (a joiner's certificate appears, a
    // holder announces a lost share), but only when what custody looks at
    // changed: members in reach and their share reports.
    let mut view = keys.watch_net();
    let mut last_view = None;
    // Standing: asked at start until a member answers, then every 15 s (a
    // node removed while it could not apply the removal itself, e.g.
    // already dropped from Raft, learns it this way).
    let mut next_standing = Instant::now();
    let mut backoff = Duration::from_secs(1);
    let mut not_before = Instant::now();
    let mut last_problem = String::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            _ = changed(&mut rx) => {}
            v = view_changed(&mut view) => {
                if v.is_some() && v == last_view {
                    continue;
                }
                last_view = v;
            }
        }
        if !keys.is_initialized() {
            continue;
        }
        // A node removed while it was away is told so by the first member
        // it reaches (with the signed removal).
        if Instant::now() >= next_standing {
            match keys.check_standing().await {
                Standing::Member => next_standing = Instant::now() + STANDING_EVERY,
                Standing::Removed(r) => {
                    let _ = fatal.send(r.message).await;
                    return;
                }
                Standing::Unknown => next_standing = Instant::now() + Duration::from_secs(1),
            }
        }
        let Some(control) = cell.get() else {
            continue;
        };
        if rx.is_none() {
            rx = Some(control.watch_keys());
        }
        let (epoch, removed, approved, operator) = control.with_state(|s| {
            (
                s.key_epoch.clone(),
                s.removed.clone(),
                s.approved.clone(),
                s.operator_change.clone(),
            )
        });
        // Both checked against the admin key by the keys service: the
        // state alone (a snapshot from any leader) is not trusted.
        keys.set_approved(&approved);
        if let Some(rec) = operator
            && let Err(e) = keys.adopt_operator_change(&rec)
        {
            warn!("the state names an operator key change this node refuses: {e}");
        }
        if let Some(r) = keys.set_removed(removed) {
            let _ = fatal.send(r.message).await;
            return;
        }
        if let Some(e) = epoch
            && keys.cluster().is_some_and(|c| c.epoch < e.epoch)
            && let Err(why) = keys.adopt_epoch(&e.record)
        {
            warn!("cannot adopt key epoch {}: {why}", e.epoch);
        }
        if !control.is_leader() || Instant::now() < not_before {
            continue;
        }
        let outcome = match keys.next_plan(None) {
            Ok(None) => Ok(false),
            Ok(Some(plan)) => {
                info!(
                    epoch = plan.epoch,
                    holders = plan.holders.len(),
                    threshold = plan.threshold,
                    "custody changed: re-dealing the admin key"
                );
                let started = Instant::now();
                let (n, t) = (plan.holders.len(), plan.threshold);
                match keys.run_redeal(plan, None).await {
                    Ok(record) => control.commit_epoch(&keys, record).await.map(|()| {
                        info!(
                            holders = n,
                            threshold = t,
                            ms = started.elapsed().as_millis() as u64,
                            "admin key re-dealt and the new key epoch committed"
                        );
                        true
                    }),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(_) => {
                backoff = Duration::from_secs(1);
                last_problem.clear();
            }
            Err(why) => {
                if why != last_problem {
                    warn!("key custody: re-deal not done: {why}");
                    last_problem = why;
                }
                not_before = Instant::now() + backoff;
                backoff = (backoff * 2).min(Duration::from_secs(15));
            }
        }
    }
}
