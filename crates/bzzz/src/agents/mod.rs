//! The node's agent runner (SPEC §10): reads the cluster's repositories
//! from the DHT, claims their open tasks through Raft (exactly once:
//! `bzzz_control::tasks`), works each in a sandbox with the model, and
//! delivers the branch only while its claim is still current. Agents
//! coordinate on gossip ([`coord`]).

pub mod coord;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bzzz_agents::forge::{Delivery, Forge, ForgeError, GitForge, IssueForge, Token};
use bzzz_agents::repo::{Kind, REPOS_ADDRESS, Repo};
use bzzz_agents::sandbox::{Limits, Sandbox};
use bzzz_agents::task::Task;
use bzzz_agents::worker::{self, Caps, Llm, Outcome, Step};
use bzzz_control::raft::Command;
use bzzz_control::tasks::{TaskOp, TaskState, task_key};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::AgentSettings;
use crate::state::AppState;

/// Steps kept per task for the live log, and tasks kept.
const STEPS_KEPT: usize = 200;
const TASKS_KEPT: usize = 256;

/// This node's agents: what runs now and the live step logs.
#[derive(Debug, Default)]
pub struct Agents {
    inner: Mutex<Inner>,
    /// Where the availability is announced (the node's capability record).
    publish: Option<tokio::sync::watch::Sender<bzzz_net::LocalInfo>>,
    /// Help requests of this node's workers, waiting for answers.
    waiting: coord::Waiting,
}

#[derive(Debug, Default)]
struct Inner {
    running: BTreeSet<String>,
    logs: BTreeMap<String, VecDeque<Step>>,
    order: VecDeque<String>,
    max: u32,
    enabled: bool,
}

/// This node's availability (the heartbeat in its capability record).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Availability {
    /// `ready`, `working` (some slots taken), `busy` (all taken), or
    /// `off` (agents not enabled).
    pub state: &'static str,
    pub current: u32,
    pub max: u32,
}

impl Agents {
    /// Agents that announce their availability through `publish`.
    pub fn new(publish: tokio::sync::watch::Sender<bzzz_net::LocalInfo>) -> Self {
        Self {
            inner: Mutex::default(),
            publish: Some(publish),
            waiting: coord::Waiting::default(),
        }
    }

    /// Announces the availability in the capability record (on change).
    fn publish(&self) {
        let Some(tx) = &self.publish else { return };
        let a = self.availability();
        let info = (a.state != "off").then(|| bzzz_proto::caps::AgentsInfo::new(a.current, a.max));
        tx.send_if_modified(|l| {
            if l.capabilities.agents == info {
                false
            } else {
                l.capabilities.agents = info;
                true
            }
        });
    }

    fn set_running(&self, key: &str, on: bool) {
        {
            let mut i = self.lock();
            if on {
                i.running.insert(key.to_owned());
            } else {
                i.running.remove(key);
            }
        }
        self.publish();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn availability(&self) -> Availability {
        let i = self.lock();
        let current = i.running.len() as u32;
        Availability {
            state: match (i.enabled, current) {
                (false, _) => "off",
                (true, 0) => "ready",
                (true, c) if c >= i.max => "busy",
                _ => "working",
            },
            current,
            max: i.max,
        }
    }

    /// The live step log of a task worked here.
    pub fn log(&self, key: &str) -> Option<Vec<Step>> {
        self.lock()
            .logs
            .get(key)
            .map(|v| v.iter().cloned().collect())
    }

    /// Tasks being worked here now.
    pub fn running(&self) -> Vec<String> {
        self.lock().running.iter().cloned().collect()
    }

    fn step(&self, key: &str, s: Step) {
        // A task worked here again after others: its log starts afresh
        // only when its first step comes (kept otherwise: the live log
        // of a task worked elsewhere arrives step by step).
        if s.n == 1 {
            self.lock().logs.remove(key);
        }
        let mut i = self.lock();
        if !i.logs.contains_key(key) {
            i.order.push_back(key.to_owned());
            while i.order.len() > TASKS_KEPT {
                if let Some(old) = i.order.pop_front() {
                    i.logs.remove(&old);
                }
            }
        }
        let log = i.logs.entry(key.to_owned()).or_default();
        log.push_back(s);
        while log.len() > STEPS_KEPT {
            log.pop_front();
        }
    }
}

/// Reads the configured repositories (none when the record is absent).
pub async fn repos(dht: &bzzz_dht::Dht) -> Result<Vec<Repo>, String> {
    let addr = REPOS_ADDRESS.parse().map_err(|e| format!("{e}"))?;
    match dht.get(&addr).await {
        Ok(v) => bzzz_agents::repo::parse_list(&String::from_utf8_lossy(&v.value)),
        Err(bzzz_dht::DhtError::NotFound(_)) => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

/// A short, path-safe name for `s`.
fn slug(s: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..8])
}

/// Whether this node meets a task's `needs`: `gpu` (a GPU here), `cpu`,
/// or a model this node holds.
fn meets(st: &AppState, needs: &[String]) -> bool {
    let me = st.net.local_id().clone();
    needs.iter().all(|n| match n.as_str() {
        "gpu" => !st.local.borrow().capabilities.gpus.is_empty(),
        "cpu" => true,
        model => st
            .control
            .get()
            .is_some_and(|c| c.with_state(|s| s.models.holders(model).contains(&me))),
    })
}

/// Runs the agents until cancelled (returns at once when not enabled).
pub async fn run(st: Arc<AppState>, cfg: AgentSettings, data_dir: PathBuf) {
    {
        let mut i = st.agents.lock();
        i.enabled = cfg.enabled;
        i.max = cfg.max_tasks;
    }
    st.agents.publish();
    if !cfg.enabled {
        return;
    }
    if let Err(e) = bzzz_agents::sandbox::check_tools() {
        warn!("agents are enabled but cannot run: {e}");
        return;
    }
    let root = data_dir.join("agents");
    // Work trees: where the sandbox user can reach them (the data
    // directory is the node's alone). Work left by a previous run is
    // dropped (its claims lapse or were finished).
    let work_root = cfg.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("bzzz-agents-{}", st.net.local_id().short()))
    });
    if let Err(e) = make_work_root(&work_root) {
        warn!("agents cannot use {}: {e}", work_root.display());
        return;
    }
    let cancel = st.tasks.cancel.clone();
    let mut tick = tokio::time::interval(cfg.poll_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: BTreeSet<String> = BTreeSet::new();
    info!(max_tasks = cfg.max_tasks, "agents enabled");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if st.keys.cluster().is_none() {
            continue;
        }
        let Some(control) = st.control.get().cloned() else {
            continue;
        };
        crate::dht::sync(&st.dht, &st.keys, &control);
        let list = match repos(&st.dht).await {
            Ok(l) => l,
            Err(e) => {
                debug!("cannot read the repositories: {e}");
                continue;
            }
        };
        for repo in list {
            if st.agents.lock().running.len() >= cfg.max_tasks as usize {
                break;
            }
            let cache = root.join("cache").join(slug(&repo.url));
            let forge: Arc<dyn Forge> = match repo.kind {
                Kind::Git => Arc::new(GitForge::new(&repo.url, cache, st.net.local_id().short())),
                Kind::Gitea | Kind::Github => {
                    let made = token_for(&st, &repo).and_then(|token| {
                        IssueForge::new(
                            &repo.url,
                            repo.kind == Kind::Github,
                            &repo.label,
                            token,
                            cache,
                            st.net.local_id().short(),
                        )
                        .map_err(|e| e.to_string())
                    });
                    match made {
                        Ok(f) => Arc::new(f),
                        Err(why) => {
                            if reported.insert(repo.url.clone()) {
                                warn!(url = %repo.url, "this node cannot work the repository: {why}");
                            }
                            continue;
                        }
                    }
                }
            };
            let (mut tasks, bad) = match forge.tasks().await {
                Ok(t) => t,
                Err(e) => {
                    debug!(url = %repo.url, "cannot read tasks: {e}");
                    continue;
                }
            };
            for (file, why) in bad {
                if reported.insert(format!("{}#{file}", repo.url)) {
                    warn!(url = %repo.url, file, "task file skipped: {why}");
                }
            }
            tasks.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
            let board = control.with_state(|s| s.tasks.clone());
            for t in tasks {
                if st.agents.lock().running.len() >= cfg.max_tasks as usize {
                    break;
                }
                let key = task_key(&repo.url, &t.id);
                if let Some(r) = board.tasks.get(&key)
                    && (matches!(r.state, TaskState::Done | TaskState::NeedsHuman)
                        || r.live_claim(board.clock_ms.max(crate::control::now_ms())))
                {
                    continue;
                }
                if !meets(&st, &t.needs) {
                    continue;
                }
                let r = control
                    .propose(Command::Task {
                        by: st.net.local_id().clone(),
                        now_ms: 0,
                        op: TaskOp::Claim {
                            key: key.clone(),
                            repo: repo.url.clone(),
                            id: t.id.clone(),
                            title: t.title.clone(),
                            priority: t.priority,
                            lease_ms: cfg.lease.as_millis() as u64,
                        },
                    })
                    .await;
                let fence = match r {
                    Ok(r) if r.rejected.is_none() => {
                        match r.previous.and_then(|p| p.parse::<u64>().ok()) {
                            Some(f) => f,
                            None => continue,
                        }
                    }
                    Ok(r) => {
                        debug!(key, "claim refused: {:?}", r.rejected);
                        continue;
                    }
                    Err(e) => {
                        debug!(key, "claim not committed: {e}");
                        continue;
                    }
                };
                info!(key, fence, "task claimed");
                st.agents.set_running(&key, true);
                let job = Job {
                    st: st.clone(),
                    cfg: cfg.clone(),
                    repo: repo.clone(),
                    forge: forge.clone(),
                    task: t,
                    key,
                    fence,
                    work: work_root.join(format!("{}-{fence}", slug(&repo.url))),
                };
                st.tasks.tracker.spawn(job.run());
            }
        }
    }
}

/// One claimed task.
struct Job {
    st: Arc<AppState>,
    cfg: AgentSettings,
    repo: Repo,
    forge: Arc<dyn Forge>,
    task: Task,
    key: String,
    fence: u64,
    work: PathBuf,
}

impl Job {
    /// Whether the claim is still this node's, asked of the leader (a
    /// renewal committed through Raft): this node's own view may be stale
    /// (it may have been paused past its lease while another node took
    /// the task over).
    async fn confirm(&self) -> bool {
        match self
            .propose(TaskOp::Renew {
                key: self.key.clone(),
                fence: self.fence,
                lease_ms: self.cfg.lease.as_millis() as u64,
            })
            .await
        {
            Ok(()) => true,
            Err(why) => {
                warn!(key = self.key, "not delivering: {why}");
                false
            }
        }
    }

    /// Commits `op`; a refusal is final, a commit that did not happen (no
    /// leader for a moment, an election) is tried again for up to one
    /// lease, so that an outcome is not lost to a blip (the task would be
    /// claimed and worked again).
    async fn propose(&self, op: TaskOp) -> Result<(), String> {
        let c = self
            .st
            .control
            .get()
            .ok_or("the control plane is not running")?;
        let until = std::time::Instant::now() + self.cfg.lease;
        loop {
            let r = c
                .propose(Command::Task {
                    by: self.st.net.local_id().clone(),
                    now_ms: 0,
                    op: op.clone(),
                })
                .await;
            match r {
                Ok(r) => {
                    return match r.rejected {
                        None => Ok(()),
                        Some(why) => Err(why),
                    };
                }
                Err(e) if std::time::Instant::now() >= until => return Err(e),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
    }

    async fn run(self) {
        let lost = CancellationToken::new();
        let renew = {
            let lost = lost.clone();
            let st = self.st.clone();
            let (key, fence, lease) = (self.key.clone(), self.fence, self.cfg.lease);
            let cancel = self.st.tasks.cancel.clone();
            async move {
                let mut tick = tokio::time::interval(lease / 3);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = lost.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let Some(c) = st.control.get() else { continue };
                    let r = c
                        .propose(Command::Task {
                            by: st.net.local_id().clone(),
                            now_ms: 0,
                            op: TaskOp::Renew {
                                key: key.clone(),
                                fence,
                                lease_ms: lease.as_millis() as u64,
                            },
                        })
                        .await;
                    match r {
                        Ok(r) if r.rejected.is_some() => {
                            warn!(key, "claim lost: {:?}", r.rejected);
                            lost.cancel();
                            return;
                        }
                        Ok(_) => {}
                        Err(e) => debug!(key, "renewal not committed: {e}"),
                    }
                }
            }
        };
        let renewer = tokio::spawn(renew);
        let outcome = tokio::select! {
            o = self.work_it() => o,
            _ = lost.cancelled() => Err("the claim was lost (fenced); stopped".into()),
            _ = self.st.tasks.cancel.cancelled() => Err("the node is stopping".into()),
        };
        renewer.abort();
        let result = match outcome {
            Ok((done, delivery, text)) => {
                let op = TaskOp::Finish {
                    key: self.key.clone(),
                    fence: self.fence,
                    done,
                    branch: delivery.as_ref().map(|d| d.branch.clone()),
                    pr_url: delivery.and_then(|d| d.pr_url),
                    reason: (!done).then(|| text.clone()),
                };
                self.propose(op).await.map(|()| (done, text))
            }
            Err(why) if lost.is_cancelled() || self.st.tasks.cancel.is_cancelled() => Err(why),
            Err(why) => self
                .propose(TaskOp::Finish {
                    key: self.key.clone(),
                    fence: self.fence,
                    done: false,
                    branch: None,
                    pr_url: None,
                    reason: Some(why.clone()),
                })
                .await
                .map(|()| (false, why)),
        };
        match result {
            Ok((true, _)) => info!(key = self.key, "task done"),
            Ok((false, why)) => {
                warn!(key = self.key, "task failed: {why}");
                self.escalate().await;
            }
            Err(e) => warn!(key = self.key, "task outcome not recorded: {e}"),
        }
        let _ = std::fs::remove_dir_all(&self.work);
        self.st.agents.set_running(&self.key, false);
    }

    /// Tells `agents.webhook` that the task failed (`failed`, open to a
    /// new claim) or waits for a person (`needs-human`). Best effort:
    /// 5 s, logged when it does not go through.
    async fn escalate(&self) {
        let Some(url) = &self.cfg.webhook else { return };
        let Some(t) = self
            .st
            .control
            .get()
            .and_then(|c| c.with_state(|s| s.tasks.tasks.get(&self.key).cloned()))
        else {
            return;
        };
        let body = serde_json::json!({
            "event": t.state.as_str(),
            "repo": t.repo,
            "task": t.id,
            "title": t.title,
            "reason": t.reason,
            "node": t.node,
            "attempts": t.attempts,
            "branch": t.branch,
        });
        let sent = reqwest::Client::new()
            .post(url)
            .timeout(std::time::Duration::from_secs(5))
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => warn!(
                key = self.key,
                "the escalation webhook answered {}",
                r.status()
            ),
            Err(e) => warn!(
                key = self.key,
                "the escalation webhook failed: {}",
                e.without_url()
            ),
        }
    }

    /// Checks out, works and delivers: `(done, delivery, summary or why)`.
    async fn work_it(&self) -> Result<(bool, Option<Delivery>, String), String> {
        if let Err(e) = self.forge.started(&self.task).await {
            warn!(key = self.key, "cannot mark the task in progress: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.work);
        if let Some(p) = self.work.parent() {
            std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
        }
        self.forge
            .checkout(&self.work)
            .await
            .map_err(|e| format!("checkout: {e}"))?;
        let model = self
            .task
            .model
            .clone()
            .or_else(|| self.repo.model.clone())
            .or_else(|| self.cfg.model.clone())
            .ok_or("no model: name one in the task, the repository or agents.model")?;
        let limits = Limits {
            wall: self.cfg.command_timeout,
            cpu_secs: self.cfg.command_timeout.as_secs().max(1),
            memory_bytes: self.cfg.memory_bytes,
            processes: self.cfg.processes,
            ..Limits::default()
        };
        let sb = Sandbox::new(&self.work, limits).map_err(|e| e.to_string())?;
        let llm = llm_for(&self.st, &self.cfg, Some(model))?;
        let caps = Caps {
            max_steps: self.repo.max_steps.unwrap_or(worker::DEFAULT_STEPS),
            wall: self.cfg.task_timeout,
            command: sb.limits().clone(),
            ..Caps::default()
        };
        let agents = self.st.agents.clone();
        let key = self.key.clone();
        // Coordination: the steps on the task's topic, and the other
        // agents to ask when stuck.
        if let Err(e) = self.st.net.join(&coord::topic(&key)).await {
            debug!(key, "cannot join the task's topic: {e}");
        }
        let steps = coord::step_publisher(&self.st, &key, self.fence);
        let helpers = coord::GossipHelpers {
            st: self.st.clone(),
            key: key.clone(),
            fence: self.fence,
        };
        let outcome = worker::work(&self.task, &sb, &llm, &caps, Some(&helpers), |s| {
            let _ = steps.try_send(s.clone());
            agents.step(&key, s);
        })
        .await;
        let (done, text) = match outcome {
            Outcome::Finished { summary } => (true, summary),
            Outcome::Failed { reason } => (false, reason),
        };
        // The work is delivered either way (a failure keeps its branch).
        let message = format!(
            "bzzz: task {} ({})\n\n{}{text}\n",
            self.task.id,
            self.task.title,
            if done { "" } else { "Failed: " }
        );
        let check = || -> futures::future::BoxFuture<'_, bool> { Box::pin(self.confirm()) };
        let (done, delivery, text) = match self
            .forge
            .deliver(&self.task, &self.work, &message, &check)
            .await
        {
            Ok(d) => (done, Some(d), text),
            Err(ForgeError::Fenced(why)) => return Err(why),
            Err(e) if done => (false, None, format!("delivery failed: {e}")),
            Err(e) => (false, None, format!("{text}; delivery failed: {e}")),
        };
        // The comment and labels on the task (forges), fenced too.
        match self
            .forge
            .finished(&self.task, done, &text, delivery.as_ref(), &check)
            .await
        {
            Ok(()) => {}
            Err(ForgeError::Fenced(why)) => return Err(why),
            Err(e) => warn!(
                key = self.key,
                "the outcome is not reported on the forge: {e}"
            ),
        }
        Ok((done, delivery, text))
    }
}

/// Where and as whom this node's agents ask the model: `agents.llm_url`,
/// by default this node's own router, with `agents.api_key_file`'s key;
/// `model`, else `agents.model`.
pub(crate) fn llm_for(
    st: &AppState,
    cfg: &AgentSettings,
    model: Option<String>,
) -> Result<Llm, String> {
    Ok(Llm {
        url: cfg.llm_url.clone().unwrap_or_else(|| {
            let a = st.api_addr;
            let host = if a.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                a.ip()
            };
            format!("http://{}/v1", std::net::SocketAddr::new(host, a.port()))
        }),
        api_key: read_key(cfg.api_key_file.as_deref())?,
        model: model
            .or_else(|| cfg.model.clone())
            .ok_or("no model: set agents.model")?,
    })
}

/// Creates the work root afresh, mode 0711, owned by this process: a
/// directory left there by anyone else (it may sit in a shared `/tmp`)
/// is refused, never reused.
fn make_work_root(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    if let Ok(m) = std::fs::symlink_metadata(root) {
        let me = std::fs::metadata("/proc/self")?.uid();
        if !m.is_dir() || m.file_type().is_symlink() || m.uid() != me {
            return Err(std::io::Error::other(
                "it exists and is not this node's directory (set agents.work_dir)",
            ));
        }
        std::fs::remove_dir_all(root)?;
    }
    if let Some(p) = root.parent() {
        std::fs::create_dir_all(p)?;
    }
    // `create`, not `create_all`: fails if someone made it meanwhile.
    std::fs::DirBuilder::new().mode(0o711).create(root)?;
    let m = std::fs::symlink_metadata(root)?;
    if m.file_type().is_symlink() || m.uid() != std::fs::metadata("/proc/self")?.uid() {
        return Err(std::io::Error::other("it was replaced while being made"));
    }
    Ok(())
}

/// The forge token sealed to this node, opened.
fn token_for(st: &AppState, repo: &Repo) -> Result<Token, String> {
    use base64::Engine as _;
    let me = st.net.local_id().to_string();
    let sealed = repo.token_sealed.get(&me).ok_or(
        "its token is not sealed to this node (it joined after `bzzz repo add`: run it again)",
    )?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .map_err(|_| "its sealed token is not base64")?;
    let plain = st.keys.open_sealed(&bytes)?;
    let text = std::str::from_utf8(&plain).map_err(|_| "its token is not text")?;
    Ok(Token::new(text))
}

fn read_key(path: Option<&Path>) -> Result<Option<String>, String> {
    let Some(p) = path else { return Ok(None) };
    let k = std::fs::read_to_string(p)
        .map_err(|e| format!("agents.api_key_file {}: {e}", p.display()))?;
    Ok(Some(k.trim().to_owned()))
}
