//! SSH deployment from a running node (SPEC §4): runs, their events, what
//! the job asks of this node (join token, membership, pins). The SSH work
//! itself is `bzzz-deploy`; the routes are `http::deploy`, the page
//! `ui::deploy`.
//!
//! - `POST /api/v1/deploy` (operator) starts a run → `202 {id}`.
//! - `GET /api/v1/deploy/{id}/events` (operator) streams its events as
//!   Server-Sent Events: every event so far, then live ones; each `data:`
//!   is one JSON object with `host` and `state`; the stream ends with
//!   `event: done` carrying the per-host outcomes.
//! - `POST /api/v1/deploy/scan` (operator) reads hosts' SSH host-key
//!   fingerprints (no login), for the operator to confirm.
//! - `GET /deploy` is the page (web login).
//!
//! The uploaded binary is this node's own executable. Host keys accepted on
//! first use are pinned in cluster state (registry key
//! `deploy/hostkey/HOST:PORT`), so a later run refuses a changed key even
//! without a known_hosts file. Runs are kept in memory (the last 16).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bzzz_deploy::job::{self, Cause, Cluster, Event, Outcome, Payload, Spec};
use bzzz_deploy::ssh::{Credential, HostKeyPolicy};
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::state::AppState;

/// Registry prefix of pinned host keys.
pub const PIN_PREFIX: &str = "deploy/hostkey/";
const KEEP_RUNS: usize = 16;

/// A deploy request (`POST /api/v1/deploy`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// Host list: names, IPs, ranges (`10.0.0.5-9`), CIDR blocks.
    pub hosts: String,
    pub ssh_user: String,
    #[serde(default = "default_ssh_port")]
    pub ssh_port: u16,
    /// OpenSSH private key text.
    #[serde(default)]
    pub ssh_key: Option<Zeroizing<String>>,
    #[serde(default)]
    pub ssh_key_passphrase: Option<Zeroizing<String>>,
    #[serde(default)]
    pub ssh_password: Option<Zeroizing<String>>,
    /// known_hosts text (OpenSSH format).
    #[serde(default)]
    pub known_hosts: Option<String>,
    #[serde(default)]
    pub accept_new_host_keys: bool,
    /// host → fingerprint the operator confirmed (from `/scan`).
    #[serde(default)]
    pub confirmed_fingerprints: BTreeMap<String, String>,
    /// Remote install prefix (default: system paths as root, else ~/.bzzz).
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default = "default_http_port")]
    pub http_port: u16,
    #[serde(default = "default_p2p_port")]
    pub p2p_port: u16,
    #[serde(default = "yes")]
    pub mdns: bool,
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    #[serde(default)]
    pub uninstall: bool,
    #[serde(default = "default_join_timeout")]
    pub join_timeout_secs: u64,
}

impl std::fmt::Debug for DeployRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials never print.
        f.debug_struct("DeployRequest")
            .field("hosts", &self.hosts)
            .field("ssh_user", &self.ssh_user)
            .field("ssh_port", &self.ssh_port)
            .field("uninstall", &self.uninstall)
            .finish_non_exhaustive()
    }
}

fn default_ssh_port() -> u16 {
    22
}
fn default_http_port() -> u16 {
    8080
}
fn default_p2p_port() -> u16 {
    4140
}
fn yes() -> bool {
    true
}
fn default_parallel() -> usize {
    8
}
fn default_join_timeout() -> u64 {
    90
}

/// One run: its events so far and its outcome.
pub struct Run {
    pub(crate) events: Mutex<Vec<Event>>,
    pub(crate) outcomes: Mutex<Option<Vec<Outcome>>>,
    pub(crate) tick: watch::Sender<usize>,
    /// The binary, served to the run's hosts until the run ends.
    pub(crate) payload: Mutex<Option<Arc<Payload>>>,
    /// Random; required to download the binary (hex, 32 digits).
    pub(crate) download_token: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run").finish_non_exhaustive()
    }
}

/// The runs of this node.
#[derive(Debug, Default)]
pub struct Deployments {
    runs: Mutex<Vec<(String, Arc<Run>)>>,
    /// This node's binary and its checksum, read once (keyed by the file's
    /// length and modification time, so an upgraded file is read again).
    binary: Mutex<Option<(FileStamp, Arc<Payload>)>>,
}

/// A file's length and modification time.
type FileStamp = (u64, std::time::SystemTime);

impl Deployments {
    /// This node's own executable as a deploy payload (read and hashed on a
    /// blocking thread, then kept).
    async fn payload(self: &Arc<Self>) -> std::io::Result<Arc<Payload>> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let exe = std::env::current_exe()?;
            let meta = std::fs::metadata(&exe)?;
            let key = (meta.len(), meta.modified()?);
            if let Some((k, p)) = lock(&me.binary).as_ref()
                && *k == key
            {
                return Ok(p.clone());
            }
            let p = Arc::new(Payload::new(std::fs::read(&exe)?));
            *lock(&me.binary) = Some((key, p.clone()));
            Ok(p)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

impl Deployments {
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Run>> {
        lock(&self.runs)
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, r)| r.clone())
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the deploy job asks of this node.
struct NodeCluster {
    st: Arc<AppState>,
    password: bzzz_keys::OperatorKey,
    /// `/api/v1/deploy/{id}/binary?token=…`
    binary_path: String,
}

impl NodeCluster {
    fn member(&self, id: &str) -> bool {
        let snap = self.st.net.snapshot();
        snap.peers
            .iter()
            .any(|p| p.announcement.node_id.as_str() == id && p.proven)
    }
}

impl Cluster for NodeCluster {
    /// A fresh single-use token for one host (issue #22): a run used to
    /// hand one k-use token to all k targets, and one malicious target
    /// could spend the other uses on nodes of its own (sybils that end up
    /// holding shares). The signers count the use and bind it to the node
    /// that redeems it.
    async fn join_token(&self) -> Result<Zeroizing<String>, String> {
        let (t, body) = self
            .st
            .keys
            .create_token(Duration::from_secs(3600), 1, &self.password)
            .await
            .map_err(|e| e.message)?;
        info!(token_id = %body.id, uses = body.uses, "join token created for one deploy target");
        Ok(Zeroizing::new(t))
    }

    fn is_member(&self, node_id: &str) -> bool {
        self.member(node_id)
    }

    async fn wait_joined(&self, node_id: &str, timeout: Duration) -> Result<(), String> {
        let mut view = self.st.net.watch();
        let wait = async {
            loop {
                if self.member(node_id) {
                    return;
                }
                if view.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            format!("node {node_id} started but did not join the mesh within {timeout:?} (firewall between the hosts? see its log)")
        })
    }

    fn binary_url(&self, local_ip: std::net::IpAddr) -> Option<String> {
        let bound = self.st.api_addr;
        let ip = if bound.ip().is_unspecified() || bound.ip() == local_ip {
            local_ip
        } else if bound.ip().is_loopback() {
            return None;
        } else {
            bound.ip()
        };
        let addr = std::net::SocketAddr::new(ip, bound.port());
        Some(format!("http://{addr}{}", self.binary_path))
    }

    async fn pin(&self, host_port: &str, fingerprint: &str) {
        let Some(c) = self.st.control.get() else {
            warn!(
                host = host_port,
                "cannot pin the host key: the control plane is not running"
            );
            return;
        };
        let cmd = bzzz_control::raft::Command::Set {
            key: format!("{PIN_PREFIX}{host_port}"),
            value: fingerprint.to_owned(),
        };
        match c.propose(cmd).await {
            Ok(_) => info!(
                host = host_port,
                fingerprint, "host key pinned in cluster state"
            ),
            Err(e) => warn!(host = host_port, "cannot pin the host key: {e}"),
        }
    }
}

pub(crate) fn pinned(st: &AppState) -> BTreeMap<String, String> {
    st.control
        .get()
        .map(|c| {
            c.state()
                .kv
                .range(PIN_PREFIX.to_owned()..)
                .take_while(|(k, _)| k.starts_with(PIN_PREFIX))
                .map(|(k, v)| (k[PIN_PREFIX.len()..].to_owned(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn validate(req: &DeployRequest) -> Result<Vec<String>, String> {
    let hosts = bzzz_deploy::parse_hosts(&req.hosts).map_err(|e| format!("hosts: {e}"))?;
    if req.ssh_user.is_empty()
        || req.ssh_user.len() > 64
        || !req
            .ssh_user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        || req.ssh_user.starts_with('-')
    {
        return Err("ssh_user: letters, digits, '.', '_' and '-' only".into());
    }
    if req.ssh_port == 0 || req.http_port == 0 || req.p2p_port == 0 {
        return Err("ports must be between 1 and 65535".into());
    }
    if req.http_port == req.p2p_port {
        return Err("http_port and p2p_port must differ".into());
    }
    if let Some(p) = &req.prefix
        && (!p.starts_with('/') || p.contains("..") || p.len() > 200 || p.contains('\n'))
    {
        return Err("prefix: an absolute path without '..'".into());
    }
    if !(1..=64).contains(&req.parallel) {
        return Err("parallel: between 1 and 64".into());
    }
    if !(5..=3600).contains(&req.join_timeout_secs) {
        return Err("join_timeout_secs: between 5 and 3600".into());
    }
    if req.ssh_key.is_none() && req.ssh_password.is_none() {
        return Err("give ssh_key or ssh_password".into());
    }
    if req.known_hosts.as_ref().is_some_and(|k| k.len() > 1 << 20) {
        return Err("known_hosts: at most 1 MiB".into());
    }
    Ok(hosts)
}

/// Writes the operator's known_hosts text to a fresh private file (random
/// name, created exclusively, mode 0600) for russh's parser; it is removed
/// when the returned handle drops (at the end of the run). Never a
/// predictable path another local user could create first.
pub(crate) fn write_known_hosts(text: &str) -> std::io::Result<tempfile::NamedTempFile> {
    use std::io::Write as _;
    let mut f = tempfile::Builder::new()
        .prefix("bzzz-known-hosts-")
        .tempfile()?;
    f.write_all(text.as_bytes())?;
    f.flush()?;
    Ok(f)
}

/// 16 random hex digits.
pub(crate) fn random_id() -> Result<String, String> {
    random_id_from(getrandom::fill)
}

/// [`random_id`] from a given source: a failing source is an error, never
/// an id of zeros (which once made the binary's download token guessable).
fn random_id_from(
    fill: impl FnOnce(&mut [u8]) -> Result<(), getrandom::Error>,
) -> Result<String, String> {
    let mut b = [0u8; 8];
    fill(&mut b).map_err(|e| format!("random number generator: {e}"))?;
    Ok(hex::encode(b))
}

/// Why a run could not start.
#[derive(Debug)]
pub enum StartError {
    /// The request is wrong (the message names the field).
    Invalid(String),
    /// This node is not in a cluster yet.
    NotInitialized,
    /// A local failure (reading the binary, random numbers).
    Internal(String),
}

/// A started run: its id and hosts.
#[derive(Debug)]
pub struct Started {
    pub id: String,
    pub hosts: Vec<String>,
}

/// Starts a deploy run on the node's task tracker. Shutdown cancels it:
/// every host that had not finished is reported `failed` with cause
/// `cancelled`, and its temporary files are removed.
pub async fn start(
    st: Arc<AppState>,
    password: bzzz_keys::OperatorKey,
    req: DeployRequest,
) -> Result<Started, StartError> {
    let hosts = validate(&req).map_err(StartError::Invalid)?;
    if !req.uninstall && !st.keys.is_initialized() {
        return Err(StartError::NotInitialized);
    }
    let credential = match (&req.ssh_key, &req.ssh_password) {
        (Some(k), _) => {
            Credential::from_key_text(k, req.ssh_key_passphrase.as_ref().map(|p| p.as_str()))
                .map_err(StartError::Invalid)?
        }
        (None, Some(p)) => Credential::password(p.to_string()),
        (None, None) => return Err(StartError::Invalid("give ssh_key or ssh_password".into())),
    };
    let known_hosts = match &req.known_hosts {
        Some(text) => Some(
            write_known_hosts(text)
                .map_err(|e| StartError::Internal(format!("cannot store known_hosts: {e}")))?,
        ),
        None => None,
    };
    let policy = Arc::new(HostKeyPolicy {
        known_hosts: known_hosts.as_ref().map(|f| f.path().to_owned()),
        pinned: pinned(&st),
        confirmed: req.confirmed_fingerprints.clone(),
        accept_new: req.accept_new_host_keys,
    });
    let payload = st
        .deploys
        .payload()
        .await
        .map_err(|e| StartError::Internal(format!("cannot read this node's binary: {e}")))?;
    let spec = Arc::new(Spec {
        hosts: hosts.clone(),
        ssh_port: req.ssh_port,
        user: req.ssh_user.clone(),
        credential,
        policy,
        prefix: req.prefix.clone(),
        http_port: req.http_port,
        p2p_port: req.p2p_port,
        mdns: req.mdns,
        parallel: req.parallel,
        uninstall: req.uninstall,
        connect_timeout: Duration::from_secs(10),
        join_timeout: Duration::from_secs(req.join_timeout_secs),
    });
    let id = random_id().map_err(StartError::Internal)?;
    let download_token = format!(
        "{}{}",
        random_id().map_err(StartError::Internal)?,
        random_id().map_err(StartError::Internal)?
    );
    let (tick, _) = watch::channel(0);
    let run = Arc::new(Run {
        events: Mutex::new(Vec::new()),
        outcomes: Mutex::new(None),
        tick,
        payload: Mutex::new(Some(payload.clone())),
        download_token: download_token.clone(),
    });
    {
        let mut runs = lock(&st.deploys.runs);
        runs.push((id.clone(), run.clone()));
        let excess = runs.len().saturating_sub(KEEP_RUNS);
        runs.drain(..excess);
    }
    let cluster = Arc::new(NodeCluster {
        st: st.clone(),
        password,
        binary_path: format!("/api/v1/deploy/{id}/binary?token={download_token}"),
    });
    let sink_run = run.clone();
    let sink: job::Sink = Arc::new(move |e: Event| {
        let n = {
            let mut ev = lock(&sink_run.events);
            ev.push(e);
            ev.len()
        };
        sink_run.tick.send_replace(n);
    });
    info!(run = %id, hosts = hosts.len(), uninstall = req.uninstall, "deploy started");
    let cancel = st.tasks.cancel.clone();
    let all_hosts = hosts.clone();
    let id2 = id.clone();
    st.tasks.tracker.spawn(async move {
        let outcomes = tokio::select! {
            o = job::run(spec, payload, cluster, sink.clone()) => o,
            _ = cancel.cancelled() => cancelled(&run, &all_hosts, &sink),
        };
        let ok = outcomes.iter().filter(|o| o.ok).count();
        info!(run = %id2, ok, failed = outcomes.len() - ok, "deploy finished");
        *lock(&run.outcomes) = Some(outcomes);
        // The binary is no longer served; known_hosts goes with its handle.
        *lock(&run.payload) = None;
        drop(known_hosts);
        let n = lock(&run.events).len();
        run.tick.send_replace(n + 1);
    });
    Ok(Started { id, hosts })
}

/// The outcome of a run stopped by shutdown: hosts that had finished keep
/// their result; the others fail with [`Cause::Cancelled`] (an event each).
fn cancelled(run: &Run, hosts: &[String], sink: &job::Sink) -> Vec<Outcome> {
    let last: BTreeMap<String, Event> = lock(&run.events)
        .iter()
        .map(|e| (e.host.clone(), e.clone()))
        .collect();
    hosts
        .iter()
        .map(|h| {
            let done = last.get(h).filter(|e| {
                matches!(
                    e.state,
                    job::State::Joined | job::State::Removed | job::State::Failed
                )
            });
            match done {
                Some(e) => Outcome {
                    host: h.clone(),
                    ok: e.state != job::State::Failed,
                    changed: e.changed.unwrap_or(false),
                    cause: e.cause,
                },
                None => {
                    let was = last
                        .get(h)
                        .map(|e| format!("{:?}", e.state).to_lowercase())
                        .unwrap_or_else(|| "queued".into());
                    warn!(host = %h, was, "deploy cancelled by shutdown");
                    sink(Event {
                        message: format!("the node running the deploy shut down (host was {was})"),
                        cause: Some(Cause::Cancelled),
                        ..Event::new(
                            h,
                            job::State::Failed,
                            last.get(h).map_or(0, |e| e.elapsed_ms),
                        )
                    });
                    Outcome {
                        host: h.clone(),
                        ok: false,
                        changed: false,
                        cause: Some(Cause::Cancelled),
                    }
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
