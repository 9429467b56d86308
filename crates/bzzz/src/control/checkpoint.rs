//! Audit checkpoints (SPEC §10): every `control.audit_checkpoint_every`
//! entries, and `control.audit_checkpoint_interval` after the last
//! checkpoint when there are newer entries, the leader asks the share
//! holders to sign the chain's head with the threshold admin key. Each
//! signer signs only an entry its own copy holds (the witness set here),
//! so a checkpoint is t nodes' word; the state machine checks the
//! signature when it commits it, and `bzzz audit verify` checks every
//! checkpoint against the entries. A node that rewrites its copy of the
//! history, however consistently, no longer matches the checkpoints.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bzzz_control::raft::Command;
use bzzz_keys::Keys;
use tracing::{debug, info};

use super::{Control, lock};

/// A failed or running attempt holds the next one off this long.
const RETRY: Duration = Duration::from_secs(10);

impl Control {
    /// This node's signer checks checkpoints against this copy of the
    /// chain.
    pub(super) fn witness_audit(self: &Arc<Self>, keys: &Keys) {
        let weak = Arc::downgrade(self);
        keys.set_audit_witness(Arc::new(move |seq, hash| {
            weak.upgrade()
                .is_some_and(|c| c.with_state(|s| s.holds_audit_entry(seq, hash)))
        }));
    }

    /// Leader: when a checkpoint is due, has the head signed and commits it
    /// (in the background; one attempt at a time).
    pub(super) fn maybe_checkpoint(self: &Arc<Self>, keys: &Arc<Keys>, created_at_secs: u64) {
        let (head, last, cluster) = self.sm.with_state(|s| {
            (
                s.audit_head.clone(),
                s.last_checkpoint(),
                s.cluster.as_ref().map(|c| c.name.clone()),
            )
        });
        let Some(cluster) = cluster else {
            return;
        };
        let last_seq = last.as_ref().map_or(0, |c| c.seq);
        if head.seq <= last_seq {
            return;
        }
        let now_ms = crate::access::now_ms();
        let since_ms = last
            .as_ref()
            .map_or(created_at_secs.saturating_mul(1000), |c| c.time_ms);
        let interval =
            u64::try_from(self.settings.audit_checkpoint_interval.as_millis()).unwrap_or(u64::MAX);
        let due = head.seq - last_seq >= self.settings.audit_checkpoint_every
            || now_ms.saturating_sub(since_ms) >= interval;
        if !due {
            return;
        }
        {
            let mut busy = lock(&self.checkpointing);
            if busy.is_some_and(|t| t.elapsed() < RETRY) {
                return;
            }
            *busy = Some(Instant::now());
        }
        let cp = bzzz_proto::access::AuditCheckpoint {
            v: bzzz_proto::cluster::RECORD_VERSION,
            cluster,
            seq: head.seq,
            hash: head.hash,
            time_ms: now_ms,
        };
        let (me, keys) = (self.clone(), keys.clone());
        self.spawn(async move {
            let r = match keys.sign_audit_checkpoint(&cp).await {
                Ok(record) => me
                    .write_local(Command::AuditCheckpoint { record })
                    .await
                    .and_then(|r| r.rejected.map_or(Ok(()), Err)),
                Err(e) => Err(e.to_string()),
            };
            match r {
                Ok(()) => {
                    info!(seq = cp.seq, "audit checkpoint signed by the admin key");
                    *lock(&me.checkpointing) = None;
                }
                Err(e) => debug!(seq = cp.seq, "audit checkpoint not made yet: {e}"),
            }
        });
    }
}
