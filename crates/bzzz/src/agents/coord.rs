//! Coordination between agents on gossip (SPEC §10): one topic per
//! claimed task (`bzzz/coord/task/HASH`). Its holder publishes each step,
//! so every node's tasks page shows the live log whichever node works the
//! task, and, when stuck ([`worker::HELP_AFTER`] failed steps in a row),
//! one help request per attempt. Nodes whose agents are idle answer with
//! the action their own model would take next; the worker shows the
//! answers to its model as suggestions.
//!
//! Bounded: a node joins at most [`bzzz_net::MAX_COORD_TOPICS`] topics
//! (those of live claims), a worker takes at most [`MAX_HELPERS`] answers
//! within [`HELP_WAIT`], a node answers one request at a time and each
//! request once, and answers are not relayed as new requests (one hop:
//! gossipsub carries each message to the topic's members and no further).
//! Only members in the view are heard (bzzz-net), a step or help request
//! only from the node that holds the task's live claim.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bzzz_agents::worker::{self, HelpRequest, Helpers, Step, Suggestion};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::debug;

use crate::config::AgentSettings;
use crate::state::AppState;

/// Most answers a stuck worker takes.
pub const MAX_HELPERS: usize = 2;
/// How long it waits for them.
pub const HELP_WAIT: Duration = Duration::from_secs(20);
/// How long after the first answer it waits for more.
const MORE_WAIT: Duration = Duration::from_secs(3);
/// How often the joined topics follow the task board.
const SYNC_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum Msg {
    Step {
        task: String,
        fence: u64,
        step: Step,
    },
    Help {
        task: String,
        fence: u64,
        id: u64,
        req: HelpRequest,
    },
    Answer {
        task: String,
        id: u64,
        action: String,
    },
}

/// The coordination topic of a task.
pub fn topic(key: &str) -> String {
    format!("{}task/{}", bzzz_net::COORD_PREFIX, super::slug(key))
}

/// Answers waited for, by help request id.
#[derive(Debug, Default)]
pub struct Waiting(std::sync::Mutex<HashMap<u64, (String, mpsc::Sender<Suggestion>)>>);

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (String, mpsc::Sender<Suggestion>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Publishes a task's steps on its topic, in order (best effort).
pub fn step_publisher(st: &Arc<AppState>, key: &str, fence: u64) -> mpsc::Sender<Step> {
    let (tx, mut rx) = mpsc::channel::<Step>(64);
    let net = st.net.clone();
    let (topic, task) = (topic(key), key.to_owned());
    st.tasks.tracker.spawn(async move {
        while let Some(step) = rx.recv().await {
            let msg = Msg::Step {
                task: task.clone(),
                fence,
                step,
            };
            if let Ok(b) = serde_json::to_vec(&msg) {
                let _ = net.publish(&topic, b).await;
            }
        }
    });
    tx
}

/// The other agents of the cluster, asked on the task's topic.
#[derive(Debug)]
pub struct GossipHelpers {
    pub st: Arc<AppState>,
    pub key: String,
    pub fence: u64,
}

impl Helpers for GossipHelpers {
    fn ask(&self, req: HelpRequest) -> futures::future::BoxFuture<'_, Vec<Suggestion>> {
        Box::pin(async move {
            let mut raw = [0u8; 8];
            if getrandom::fill(&mut raw).is_err() {
                return Vec::new();
            }
            let id = u64::from_le_bytes(raw);
            let (tx, mut rx) = mpsc::channel(MAX_HELPERS);
            self.st
                .agents
                .waiting
                .lock()
                .insert(id, (self.key.clone(), tx));
            let msg = Msg::Help {
                task: self.key.clone(),
                fence: self.fence,
                id,
                req,
            };
            let mut got = Vec::new();
            let deadline = tokio::time::Instant::now() + HELP_WAIT;
            // Peers join a task's topic within a few seconds of its claim:
            // until one has, publishing finds nobody and is tried again.
            let sent = loop {
                let r = match serde_json::to_vec(&msg) {
                    Ok(b) => self.st.net.publish(&topic(&self.key), b).await,
                    Err(e) => break Err(bzzz_net::NetError::Topic(e.to_string())),
                };
                if r.is_ok() || tokio::time::Instant::now() + Duration::from_millis(500) > deadline
                {
                    break r;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            match sent {
                Err(e) => debug!(key = self.key, "help request not sent: {e}"),
                Ok(()) => {
                    let mut until = deadline;
                    while got.len() < MAX_HELPERS {
                        match tokio::time::timeout_at(until, rx.recv()).await {
                            Ok(Some(s)) => got.push(s),
                            _ => break,
                        }
                        // After the first answer, a little longer for more.
                        until = until.min(tokio::time::Instant::now() + MORE_WAIT);
                    }
                }
            }
            self.st.agents.waiting.lock().remove(&id);
            got
        })
    }
}

/// Who holds the live claim of `key` (none: no live claim).
fn holder(st: &AppState, key: &str) -> Option<(String, u64)> {
    let c = st.control.get()?;
    c.with_state(|s| {
        let r = s.tasks.tasks.get(key)?;
        let clock = s.tasks.clock_ms.max(crate::control::now_ms());
        r.live_claim(clock)
            .then(|| Some((r.node.as_ref()?.to_string(), r.fence)))
            .flatten()
    })
}

/// Follows the task board's live claims with the joined topics and
/// handles what arrives on them, until cancelled. Every node runs it (its
/// tasks page shows every live log); only nodes whose agents are enabled
/// answer help requests.
pub async fn run(st: Arc<AppState>, cfg: AgentSettings) {
    let mut rx = st.net.gossip();
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut joined: BTreeSet<String> = BTreeSet::new();
    let mut answered: VecDeque<u64> = VecDeque::new();
    let answering = Arc::new(AtomicBool::new(false));
    let cancel = st.tasks.cancel.clone();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => sync(&st, &mut joined).await,
            m = rx.recv() => match m {
                Ok(g) => on_message(&st, &cfg, g, &mut answered, &answering),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    debug!("{n} coordination messages dropped (slow reader)");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

async fn sync(st: &AppState, joined: &mut BTreeSet<String>) {
    let Some(c) = st.control.get() else { return };
    let mut live: Vec<(u64, String)> = c.with_state(|s| {
        let clock = s.tasks.clock_ms.max(crate::control::now_ms());
        s.tasks
            .tasks
            .iter()
            .filter(|(_, r)| r.live_claim(clock))
            .map(|(k, r)| (r.fence, topic(k)))
            .collect()
    });
    // The newest claims first, within the bound.
    live.sort_unstable_by_key(|x| std::cmp::Reverse(x.0));
    let want: BTreeSet<String> = live
        .into_iter()
        .map(|(_, t)| t)
        .take(bzzz_net::MAX_COORD_TOPICS)
        .collect();
    for t in joined.difference(&want).cloned().collect::<Vec<_>>() {
        st.net.leave(&t).await;
        joined.remove(&t);
    }
    for t in want.difference(joined).cloned().collect::<Vec<_>>() {
        match st.net.join(&t).await {
            Ok(()) => {
                joined.insert(t);
            }
            Err(e) => debug!(topic = t, "cannot join: {e}"),
        }
    }
}

fn on_message(
    st: &Arc<AppState>,
    cfg: &AgentSettings,
    g: bzzz_net::Gossip,
    answered: &mut VecDeque<u64>,
    answering: &Arc<AtomicBool>,
) {
    let Ok(msg) = serde_json::from_slice::<Msg>(&g.data) else {
        debug!(from = %g.from, "unreadable coordination message");
        return;
    };
    let from = g.from.to_string();
    match msg {
        Msg::Step { task, fence, step } => {
            if g.topic != topic(&task)
                || holder(st, &task) != Some((from, fence))
                || st.agents.running().contains(&task)
            {
                return;
            }
            st.agents.step(&task, step);
        }
        Msg::Help {
            task,
            fence,
            id,
            req,
        } => {
            if g.topic != topic(&task)
                || holder(st, &task) != Some((from, fence))
                || !cfg.enabled
                || st.agents.availability().state != "ready"
                || answered.contains(&id)
                || answering.swap(true, Ordering::SeqCst)
            {
                return;
            }
            answered.push_back(id);
            if answered.len() > 256 {
                answered.pop_front();
            }
            let (st, cfg, answering) = (st.clone(), cfg.clone(), answering.clone());
            st.tasks.tracker.clone().spawn(async move {
                let answer = match super::llm_for(&st, &cfg, None) {
                    Ok(llm) => worker::suggest(&req, &llm, Duration::from_secs(60)).await,
                    Err(e) => Err(e),
                };
                match answer {
                    Ok(action) => {
                        let msg = Msg::Answer {
                            task: task.clone(),
                            id,
                            action,
                        };
                        if let Ok(b) = serde_json::to_vec(&msg) {
                            let _ = st.net.publish(&topic(&task), b).await;
                        }
                    }
                    Err(e) => debug!(task, "no suggestion: {e}"),
                }
                answering.store(false, Ordering::SeqCst);
            });
        }
        Msg::Answer { task, id, action } => {
            let tx = match st.agents.waiting.lock().get(&id) {
                Some((key, tx)) if *key == task && g.topic == topic(&task) => tx.clone(),
                _ => return,
            };
            if action.len() <= 4096 {
                let _ = tx.try_send(Suggestion { from, action });
            }
        }
    }
}
