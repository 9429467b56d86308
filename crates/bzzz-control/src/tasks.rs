//! Agent tasks in the replicated state (SPEC §10): exactly-once claims.
//!
//! A claim is a Raft command accepted only when the task has no live
//! claim. Its fencing token is the log index of the accepted entry: every
//! later step of the holder (renewing the lease, reporting the outcome)
//! names it and is refused once another claim replaced it, and the node
//! checks it again right before each side effect on the forge. Lease
//! expiry is decided from times the leader stamps into the entries (the
//! state's `clock_ms` only moves forward), never from the applying node's
//! wall clock, so every replica decides the same.
//!
//! The proposer (`by`) is stamped by the leader too: a node's claim,
//! renewal or outcome is its own, a peer cannot speak for it.

use std::collections::BTreeMap;

use bzzz_proto::NodeId;
use serde::{Deserialize, Serialize};

/// Failed attempts after which a task waits for a person (`needs-human`).
pub const MAX_ATTEMPTS: u32 = 3;
/// Most tasks the board keeps: when it is full, a new task's claim
/// drops the oldest finished one (done or waiting for a person), and is
/// refused only when every task is still open or held.
pub const MAX_TASKS: usize = 10_000;
/// Longest lease a claim may ask for.
pub const MAX_LEASE_MS: u64 = 60 * 60 * 1000;
/// Bounds on the text fields.
const MAX_KEY: usize = 512;
const MAX_TEXT: usize = 2048;

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskState {
    /// Nobody holds it (never claimed, or given back after a failure).
    Open,
    /// Claimed; the holder has not reported progress yet.
    Claimed,
    /// The holder renewed its lease at least once (work under way).
    Working,
    Done,
    /// The last attempt failed; it is open to a new claim.
    Failed,
    /// Failed [`MAX_ATTEMPTS`] times, or cancelled: waits for a person.
    NeedsHuman,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Claimed => "claimed",
            Self::Working => "working",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::NeedsHuman => "needs-human",
        }
    }
}

/// One task as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task's id in its repository.
    pub id: String,
    /// The repository (its URL as configured).
    pub repo: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub priority: i32,
    pub state: TaskState,
    /// The claim holder (while claimed or working), else the last one.
    pub node: Option<NodeId>,
    /// The fencing token of the current (or last) claim: its log index.
    pub fence: u64,
    /// Until when (cluster clock, Unix ms) the claim holds.
    pub lease_until_ms: u64,
    /// How many claims were ever accepted.
    pub claims: u32,
    /// Failed attempts so far.
    pub attempts: u32,
    pub branch: Option<String>,
    pub pr_url: Option<String>,
    /// Why it failed (or was cancelled).
    pub reason: Option<String>,
    /// Cluster clock of the last change.
    pub updated_ms: u64,
}

impl TaskRecord {
    /// Whether a claim holds it at `clock_ms`.
    pub fn live_claim(&self, clock_ms: u64) -> bool {
        matches!(self.state, TaskState::Claimed | TaskState::Working)
            && self.lease_until_ms > clock_ms
    }
}

/// What an agent node (or the operator) asks of the board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskOp {
    /// Take `key` for `lease_ms`; accepted when nobody holds it.
    Claim {
        key: String,
        repo: String,
        id: String,
        #[serde(default)]
        title: String,
        #[serde(default)]
        priority: i32,
        lease_ms: u64,
    },
    /// Extend the holder's lease (and mark it working).
    Renew {
        key: String,
        fence: u64,
        lease_ms: u64,
    },
    /// The holder's outcome.
    Finish {
        key: String,
        fence: u64,
        done: bool,
        branch: Option<String>,
        pr_url: Option<String>,
        reason: Option<String>,
    },
    /// Operator: open a failed or `needs-human` task again (attempts
    /// reset).
    Retry { key: String },
    /// Operator: stop a task (`needs-human`, reason "cancelled"); a live
    /// claim's holder is fenced out.
    Cancel { key: String },
}

impl TaskOp {
    pub fn key(&self) -> &str {
        match self {
            Self::Claim { key, .. }
            | Self::Renew { key, .. }
            | Self::Finish { key, .. }
            | Self::Retry { key }
            | Self::Cancel { key } => key,
        }
    }

    /// Whether only the operator (through the HTTP API, audited) may ask it.
    pub fn is_operator_op(&self) -> bool {
        matches!(self, Self::Retry { .. } | Self::Cancel { .. })
    }
}

/// Every task, by key (`repo` + `#` + id).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskBoard {
    pub tasks: BTreeMap<String, TaskRecord>,
    /// The cluster clock (Unix ms): the latest leader-stamped time of any
    /// task entry; it never moves back.
    pub clock_ms: u64,
}

/// Whether `u` is an `http://` or `https://` address without spaces or
/// control characters (safe to show as a link).
pub fn is_web_url(u: &str) -> bool {
    (u.starts_with("https://") || u.starts_with("http://"))
        && !u
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '<')
}

/// The key of task `id` of `repo`.
pub fn task_key(repo: &str, id: &str) -> String {
    format!("{repo}#{id}")
}

fn bounded(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("{what} is longer than {max} bytes"));
    }
    Ok(())
}

impl TaskBoard {
    /// Applies `op` proposed by `by` at leader time `now_ms`, in the entry
    /// at `log_index`. Returns the fence of an accepted claim.
    pub fn apply(
        &mut self,
        log_index: u64,
        by: &NodeId,
        now_ms: u64,
        op: TaskOp,
    ) -> Result<Option<String>, String> {
        self.clock_ms = self.clock_ms.max(now_ms);
        let now = self.clock_ms;
        let key = op.key().to_owned();
        if key.is_empty() {
            return Err("empty task key".into());
        }
        bounded("task key", &key, MAX_KEY)?;
        match op {
            TaskOp::Claim {
                repo,
                id,
                title,
                priority,
                lease_ms,
                ..
            } => {
                bounded("title", &title, MAX_TEXT)?;
                if key != task_key(&repo, &id) {
                    return Err("the key does not name the task".into());
                }
                if lease_ms == 0 || lease_ms > MAX_LEASE_MS {
                    return Err(format!("a lease is 1 ms to {MAX_LEASE_MS} ms"));
                }
                if !self.tasks.contains_key(&key) && self.tasks.len() >= MAX_TASKS {
                    // Deterministic on every replica: the oldest finished.
                    let oldest = self
                        .tasks
                        .iter()
                        .filter(|(_, t)| matches!(t.state, TaskState::Done | TaskState::NeedsHuman))
                        .min_by(|a, b| a.1.updated_ms.cmp(&b.1.updated_ms).then(a.0.cmp(b.0)))
                        .map(|(k, _)| k.clone());
                    match oldest {
                        Some(k) => {
                            self.tasks.remove(&k);
                        }
                        None => {
                            return Err(format!(
                                "the board is full ({MAX_TASKS} tasks open or held)"
                            ));
                        }
                    }
                }
                let t = self.tasks.entry(key.clone()).or_insert_with(|| TaskRecord {
                    id,
                    repo,
                    title: title.clone(),
                    priority,
                    state: TaskState::Open,
                    node: None,
                    fence: 0,
                    lease_until_ms: 0,
                    claims: 0,
                    attempts: 0,
                    branch: None,
                    pr_url: None,
                    reason: None,
                    updated_ms: now,
                });
                match t.state {
                    TaskState::Done => return Err(format!("{key} is done")),
                    TaskState::NeedsHuman => {
                        return Err(format!("{key} waits for a person (needs-human)"));
                    }
                    _ if t.live_claim(now) => {
                        return Err(format!(
                            "{key} is claimed by {} until {}",
                            t.node.as_ref().map_or("?", |n| n.as_str()),
                            t.lease_until_ms
                        ));
                    }
                    _ => {}
                }
                t.title = title;
                t.priority = priority;
                t.state = TaskState::Claimed;
                t.node = Some(by.clone());
                t.fence = log_index;
                t.lease_until_ms = now.saturating_add(lease_ms);
                t.claims = t.claims.saturating_add(1);
                t.updated_ms = now;
                Ok(Some(log_index.to_string()))
            }
            TaskOp::Renew {
                fence, lease_ms, ..
            } => {
                let t = self.holder(&key, by, fence)?;
                if lease_ms == 0 || lease_ms > MAX_LEASE_MS {
                    return Err(format!("a lease is 1 ms to {MAX_LEASE_MS} ms"));
                }
                // A lapsed lease nobody took over still holds: the fence is
                // what decides.
                t.state = TaskState::Working;
                t.lease_until_ms = now.saturating_add(lease_ms);
                t.updated_ms = now;
                Ok(None)
            }
            TaskOp::Finish {
                fence,
                done,
                branch,
                pr_url,
                reason,
                ..
            } => {
                for (what, v) in [
                    ("branch", &branch),
                    ("pr_url", &pr_url),
                    ("reason", &reason),
                ] {
                    if let Some(v) = v {
                        bounded(what, v, MAX_TEXT)?;
                    }
                }
                // Shown as a link in the console: a web address only.
                if let Some(u) = &pr_url
                    && !is_web_url(u)
                {
                    return Err("pr_url is not an http(s) address".into());
                }
                let t = self.holder(&key, by, fence)?;
                t.branch = branch.or(t.branch.take());
                t.pr_url = pr_url.or(t.pr_url.take());
                t.reason = reason;
                t.lease_until_ms = 0;
                t.updated_ms = now;
                if done {
                    t.state = TaskState::Done;
                } else {
                    t.attempts = t.attempts.saturating_add(1);
                    t.state = if t.attempts >= MAX_ATTEMPTS {
                        TaskState::NeedsHuman
                    } else {
                        TaskState::Failed
                    };
                }
                Ok(None)
            }
            TaskOp::Retry { .. } => {
                let t = self
                    .tasks
                    .get_mut(&key)
                    .ok_or_else(|| format!("no task {key}"))?;
                if t.live_claim(now) {
                    return Err(format!("{key} is being worked; cancel it first"));
                }
                t.state = TaskState::Open;
                t.attempts = 0;
                t.reason = None;
                t.updated_ms = now;
                Ok(None)
            }
            TaskOp::Cancel { .. } => {
                let t = self
                    .tasks
                    .get_mut(&key)
                    .ok_or_else(|| format!("no task {key}"))?;
                if t.state == TaskState::Done {
                    return Err(format!("{key} is done"));
                }
                t.state = TaskState::NeedsHuman;
                t.reason = Some("cancelled by the operator".into());
                t.lease_until_ms = 0;
                // Fence the holder out: its next step names an old fence.
                t.fence = log_index;
                t.updated_ms = now;
                Ok(None)
            }
        }
    }

    /// The task `key` when `by` holds its claim under `fence`.
    fn holder(&mut self, key: &str, by: &NodeId, fence: u64) -> Result<&mut TaskRecord, String> {
        let t = self
            .tasks
            .get_mut(key)
            .ok_or_else(|| format!("no task {key}"))?;
        if t.fence != fence
            || t.node.as_ref() != Some(by)
            || !matches!(t.state, TaskState::Claimed | TaskState::Working)
        {
            return Err(format!(
                "fenced: the claim {fence} of {key} is no longer current (now {})",
                t.fence
            ));
        }
        Ok(t)
    }

    /// Whether `by` still holds `key` under `fence` (for a side effect
    /// about to happen).
    pub fn is_current(&self, key: &str, by: &NodeId, fence: u64) -> bool {
        self.tasks.get(key).is_some_and(|t| {
            t.fence == fence
                && t.node.as_ref() == Some(by)
                && matches!(t.state, TaskState::Claimed | TaskState::Working)
        })
    }
}

/// Stamps a task command (also inside an audited one) with its proposer
/// and the leader's clock; called by the leader on every proposal it
/// takes, so that a peer can neither speak for another node nor move the
/// cluster clock.
pub fn stamp(cmd: &mut crate::raft::Command, proposer: &NodeId, leader_now_ms: u64) {
    use crate::raft::Command;
    match cmd {
        Command::Task { by, now_ms, .. } => {
            *by = proposer.clone();
            *now_ms = leader_now_ms;
        }
        Command::Audited { cmd: Some(c), .. } => stamp(c, proposer, leader_now_ms),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(c: char) -> NodeId {
        NodeId::parse(&format!("12D3KooW{}", c.to_string().repeat(44))).expect("id")
    }

    fn claim(key_id: &str, lease_ms: u64) -> TaskOp {
        TaskOp::Claim {
            key: task_key("r", key_id),
            repo: "r".into(),
            id: key_id.into(),
            title: String::new(),
            priority: 0,
            lease_ms,
        }
    }

    #[test]
    fn one_live_claim_and_fencing() {
        let mut b = TaskBoard::default();
        let (a, c) = (node('A'), node('C'));
        let k = task_key("r", "t1");
        assert_eq!(
            b.apply(10, &a, 1_000, claim("t1", 500)).expect("claim"),
            Some("10".into())
        );
        let e = b.apply(11, &c, 1_100, claim("t1", 500)).expect_err("held");
        assert!(e.contains("claimed by"), "{e}");
        // Another node cannot renew or finish A's claim, even with its fence.
        let renew = |fence| TaskOp::Renew {
            key: k.clone(),
            fence,
            lease_ms: 500,
        };
        assert!(b.apply(12, &c, 1_200, renew(10)).is_err());
        b.apply(13, &a, 1_300, renew(10)).expect("renew");
        assert_eq!(b.tasks[&k].state, TaskState::Working);
        // The lease lapses (leader time, not the replica's): C takes over.
        assert_eq!(
            b.apply(14, &c, 1_900, claim("t1", 500)).expect("take over"),
            Some("14".into())
        );
        assert_eq!(b.tasks[&k].claims, 2);
        // A's late outcome is fenced out.
        let finish = |fence| TaskOp::Finish {
            key: k.clone(),
            fence,
            done: true,
            branch: Some("bzzz/task-t1".into()),
            pr_url: None,
            reason: None,
        };
        let e = b.apply(15, &a, 1_950, finish(10)).expect_err("fenced");
        assert!(e.contains("fenced"), "{e}");
        assert!(!b.is_current(&k, &a, 10));
        assert!(b.is_current(&k, &c, 14));
        b.apply(16, &c, 2_000, finish(14)).expect("done");
        assert_eq!(b.tasks[&k].state, TaskState::Done);
        assert!(
            b.apply(17, &a, 9_000, claim("t1", 500)).is_err(),
            "done stays done"
        );
    }

    #[test]
    fn the_clock_never_moves_back() {
        let mut b = TaskBoard::default();
        let a = node('A');
        b.apply(1, &a, 5_000, claim("t", 1_000)).expect("claim");
        // An entry stamped earlier (a new leader with a slow clock) does
        // not make the lease lapse sooner or later than the board's clock.
        assert!(b.apply(2, &node('B'), 100, claim("t", 1_000)).is_err());
        assert_eq!(b.clock_ms, 5_000);
    }

    #[test]
    fn three_failures_need_a_human_and_retry_reopens() {
        let mut b = TaskBoard::default();
        let a = node('A');
        let k = task_key("r", "t");
        let mut t = 0;
        for i in 0..MAX_ATTEMPTS {
            t += 10;
            let idx = u64::from(i) * 2 + 1;
            b.apply(idx, &a, t, claim("t", 5)).expect("claim");
            b.apply(
                idx + 1,
                &a,
                t,
                TaskOp::Finish {
                    key: k.clone(),
                    fence: idx,
                    done: false,
                    branch: None,
                    pr_url: None,
                    reason: Some("step cap".into()),
                },
            )
            .expect("finish");
        }
        assert_eq!(b.tasks[&k].state, TaskState::NeedsHuman);
        assert!(b.apply(50, &a, 100, claim("t", 5)).is_err());
        b.apply(51, &a, 100, TaskOp::Retry { key: k.clone() })
            .expect("retry");
        b.apply(52, &a, 100, claim("t", 5)).expect("claim again");
        // Cancel fences the holder out.
        b.apply(53, &a, 101, TaskOp::Cancel { key: k.clone() })
            .expect("cancel");
        assert!(!b.is_current(&k, &a, 52));
    }

    #[test]
    fn links_are_web_addresses_and_a_full_board_drops_the_oldest_finished() {
        let mut b = TaskBoard::default();
        let a = node('A');
        b.apply(1, &a, 10, claim("t", 100)).expect("claim");
        let finish = |url: &str| TaskOp::Finish {
            key: task_key("r", "t"),
            fence: 1,
            done: true,
            branch: None,
            pr_url: Some(url.into()),
            reason: None,
        };
        assert!(b.apply(2, &a, 11, finish("javascript:alert(1)")).is_err());
        b.apply(3, &a, 12, finish("https://forge/acme/app/pulls/1"))
            .expect("done");
        // Fill the board: the done task makes room for a new one.
        let open = TaskRecord {
            state: TaskState::Open,
            ..b.tasks[&task_key("r", "t")].clone()
        };
        for i in 0..MAX_TASKS - 1 {
            b.tasks.insert(format!("r#x{i}"), open.clone());
        }
        assert_eq!(b.tasks.len(), MAX_TASKS);
        b.apply(4, &a, 13, claim("new", 100)).expect("room made");
        assert!(!b.tasks.contains_key(&task_key("r", "t")));
        let e = b.apply(5, &a, 14, claim("newer", 100)).expect_err("full");
        assert!(e.contains("full"), "{e}");
    }

    #[test]
    fn bad_claims_are_refused() {
        let mut b = TaskBoard::default();
        let a = node('A');
        assert!(b.apply(1, &a, 1, claim("t", 0)).is_err());
        assert!(b.apply(1, &a, 1, claim("t", MAX_LEASE_MS + 1)).is_err());
        let mut wrong = claim("t", 10);
        if let TaskOp::Claim { key, .. } = &mut wrong {
            *key = "other#t".into();
        }
        assert!(b.apply(1, &a, 1, wrong).is_err());
    }
}
