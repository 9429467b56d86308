//! SSH deployment from a running node (SPEC §4): the API, the live event
//! stream and the web page. The SSH work itself is `bzzz-deploy`.
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
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bzzz_crypto::operator::OperatorPassword;
use bzzz_deploy::job::{self, Cluster, Event, Outcome, Payload, Spec};
use bzzz_deploy::ssh::{Credential, HostKeyPolicy};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{OnceCell, watch};
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::node::AppState;
use crate::setup_ui::{
    authorize, bad_request, json_ok, no_store, operator_json, page, see_other, web_credential,
};

type S = State<Arc<AppState>>;

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
    events: Mutex<Vec<Event>>,
    outcomes: Mutex<Option<Vec<Outcome>>>,
    tick: watch::Sender<usize>,
    /// The binary, served to the run's hosts until the run ends.
    payload: Mutex<Option<Arc<Payload>>>,
    /// Random; required to download the binary (hex, 32 digits).
    download_token: String,
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
    fn get(&self, id: &str) -> Option<Arc<Run>> {
        lock(&self.runs)
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, r)| r.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the deploy job asks of this node.
struct NodeCluster {
    st: Arc<AppState>,
    password: OperatorPassword,
    uses: u32,
    token: OnceCell<Zeroizing<String>>,
    /// `/api/v1/deploy/{id}/binary?token=…`
    binary_path: String,
}

impl NodeCluster {
    fn member(&self, id: &str) -> bool {
        let snap = self.st.net.snapshot();
        snap.peers
            .iter()
            .any(|p| p.announcement.node_id.as_str() == id && p.announcement.membership.is_some())
    }
}

impl Cluster for NodeCluster {
    async fn join_token(&self) -> Result<Zeroizing<String>, String> {
        self.token
            .get_or_try_init(|| async {
                let (t, body) = self
                    .st
                    .keys
                    .create_token(Duration::from_secs(3600), self.uses, &self.password)
                    .await
                    .map_err(|e| e.message)?;
                info!(token_id = %body.id, uses = self.uses, "join token created for a deploy");
                Ok::<_, String>(Zeroizing::new(t))
            })
            .await
            .cloned()
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

fn pinned(st: &AppState) -> BTreeMap<String, String> {
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

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/deploy", post(api_deploy))
        .route("/api/v1/deploy/scan", post(api_scan))
        .route("/api/v1/deploy/{id}/events", get(api_events))
        .route("/api/v1/deploy/{id}/binary", get(api_binary))
        .route("/deploy", get(deploy_page))
}

fn validate(req: &DeployRequest) -> Result<Vec<String>, String> {
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

async fn api_deploy(
    State(st): S,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (password, req): (_, DeployRequest) =
        match operator_json(&st, &peer, &headers, &body, "deploy request").await {
            Ok(v) => v,
            Err(r) => return r,
        };
    let hosts = match validate(&req) {
        Ok(h) => h,
        Err(e) => return bad_request(e),
    };
    if !req.uninstall && !st.keys.is_initialized() {
        return json_ok(
            StatusCode::CONFLICT,
            json!({"error": "this node is not in a cluster yet: finish /setup first"}),
        );
    }
    let credential = match (&req.ssh_key, &req.ssh_password) {
        (Some(k), _) => {
            match Credential::from_key_text(k, req.ssh_key_passphrase.as_ref().map(|p| p.as_str()))
            {
                Ok(c) => c,
                Err(e) => return bad_request(e),
            }
        }
        (None, Some(p)) => Credential::password(p.to_string()),
        (None, None) => return bad_request("give ssh_key or ssh_password"),
    };
    // known_hosts text → a private file for russh's parser.
    let known_hosts = match &req.known_hosts {
        Some(text) => {
            let dir = std::env::temp_dir().join(format!("bzzz-deploy-{}", std::process::id()));
            let path = dir.join(format!("known_hosts-{}", random_id()));
            if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, text))
            {
                return bad_request(format!("cannot store known_hosts: {e}"));
            }
            Some(path)
        }
        None => None,
    };
    let policy = Arc::new(HostKeyPolicy {
        known_hosts,
        pinned: pinned(&st),
        confirmed: req.confirmed_fingerprints.clone(),
        accept_new: req.accept_new_host_keys,
    });
    let payload = match st.deploys.payload().await {
        Ok(p) => p,
        Err(e) => {
            return json_ok(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": format!("cannot read this node's binary: {e}")}),
            );
        }
    };
    let spec = Arc::new(Spec {
        hosts: hosts.clone(),
        ssh_port: req.ssh_port,
        user: req.ssh_user.clone(),
        credential,
        policy: policy.clone(),
        prefix: req.prefix.clone(),
        http_port: req.http_port,
        p2p_port: req.p2p_port,
        mdns: req.mdns,
        parallel: req.parallel,
        uninstall: req.uninstall,
        connect_timeout: Duration::from_secs(10),
        join_timeout: Duration::from_secs(req.join_timeout_secs),
    });
    let id = random_id();
    let (tick, _) = watch::channel(0);
    let download_token = format!("{}{}", random_id(), random_id());
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
        uses: hosts.len().min(100) as u32,
        token: OnceCell::new(),
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
    let run2 = run.clone();
    let id2 = id.clone();
    tokio::spawn(async move {
        let outcomes = job::run(spec, payload, cluster, sink).await;
        let ok = outcomes.iter().filter(|o| o.ok).count();
        info!(run = %id2, ok, failed = outcomes.len() - ok, "deploy finished");
        *lock(&run2.outcomes) = Some(outcomes);
        // The binary is no longer served.
        *lock(&run2.payload) = None;
        let n = lock(&run2.events).len();
        run2.tick.send_replace(n + 1);
        if let Some(p) = &policy.known_hosts {
            let _ = std::fs::remove_file(p);
        }
    });
    json_ok(
        StatusCode::ACCEPTED,
        json!({"id": id, "hosts": hosts, "events": format!("/api/v1/deploy/{id}/events")}),
    )
}

fn random_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

async fn api_events(
    State(st): S,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&st, &peer, &headers).await {
        return r;
    }
    let Some(run) = st.deploys.get(&id) else {
        return json_ok(
            StatusCode::NOT_FOUND,
            json!({"error": "no such deploy run"}),
        );
    };
    let stream = futures::stream::unfold((run, 0usize, false), |(run, next, done)| async move {
        if done {
            return None;
        }
        let mut rx = run.tick.subscribe();
        loop {
            let batch: Vec<Event> = lock(&run.events)[next..].to_vec();
            if !batch.is_empty() {
                let n = next + batch.len();
                let evs: Vec<Result<SseEvent, Infallible>> = batch
                    .iter()
                    .map(|e| {
                        Ok(SseEvent::default().data(serde_json::to_string(e).unwrap_or_default()))
                    })
                    .collect();
                return Some((futures::stream::iter(evs), (run, n, false)));
            }
            let outcomes = lock(&run.outcomes).clone();
            if let Some(outcomes) = outcomes {
                let ok = outcomes.iter().all(|o| o.ok);
                let ev = SseEvent::default()
                    .event("done")
                    .data(json!({"ok": ok, "outcomes": outcomes}).to_string());
                return Some((futures::stream::iter(vec![Ok(ev)]), (run, next, true)));
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    });
    let stream = futures::StreamExt::flatten(stream);
    no_store(
        Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
            .into_response(),
    )
}

#[derive(Deserialize)]
struct BinaryQuery {
    token: String,
}

/// The binary for a run's hosts (they fetch it with curl or wget and check
/// its SHA-256, received over SSH). Authorized by the run's random token,
/// served only while the run lasts. The binary is not secret; the token
/// keeps the endpoint from serving tens of megabytes to anyone who asks.
async fn api_binary(
    State(st): S,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<BinaryQuery>,
) -> Response {
    let run = st.deploys.get(&id);
    let payload = run.as_ref().and_then(|r| {
        use subtle::ConstantTimeEq as _;
        let ok = bool::from(q.token.as_bytes().ct_eq(r.download_token.as_bytes()));
        if ok { lock(&r.payload).clone() } else { None }
    });
    match payload {
        Some(p) => no_store(
            (
                [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
                axum::body::Bytes::copy_from_slice(&p.binary),
            )
                .into_response(),
        ),
        None => json_ok(
            StatusCode::NOT_FOUND,
            json!({"error": "no such deploy run, or it has ended"}),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanRequest {
    hosts: String,
    #[serde(default = "default_ssh_port")]
    ssh_port: u16,
}

async fn api_scan(
    State(st): S,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, req): (_, ScanRequest) =
        match operator_json(&st, &peer, &headers, &body, "scan request").await {
            Ok(v) => v,
            Err(r) => return r,
        };
    let hosts = match bzzz_deploy::parse_hosts(&req.hosts) {
        Ok(h) => h,
        Err(e) => return bad_request(format!("hosts: {e}")),
    };
    let pins = pinned(&st);
    let scans = hosts.iter().map(|h| {
        let h = h.clone();
        let pin = pins.get(&format!("{h}:{}", req.ssh_port)).cloned();
        async move {
            match bzzz_deploy::ssh::scan_host_key(&h, req.ssh_port, Duration::from_secs(5)).await {
                Ok(fp) => json!({"host": h, "fingerprint": fp, "pinned": pin.as_deref() == Some(fp.as_str()),
                    "changed": pin.as_ref().is_some_and(|p| *p != fp)}),
                Err(e) => json!({"host": h, "error": e.to_string()}),
            }
        }
    });
    let results = futures::future::join_all(scans).await;
    json_ok(StatusCode::OK, json!({"hosts": results}))
}

async fn deploy_page(State(st): S, headers: HeaderMap) -> Response {
    if web_credential(&st, &headers).is_none() {
        return see_other("/login");
    }
    page(StatusCode::OK, "Deploy nodes over SSH", DEPLOY_BODY)
}

/// The deploy page: a form, a fingerprint confirmation step, a live table.
/// Its script talks to the JSON API with the session cookie.
const DEPLOY_BODY: &str = r##"<p>BZZZ logs in to each host over SSH, checks it, uploads this node's binary, installs the service and waits until the node has joined. <a href="/">Overview</a> · <a href="/admin">Administration</a></p>
<form id="deploy-form" onsubmit="return false">
<label for="hosts">Hosts (IPs, names, ranges such as 10.0.0.5-9, one per line or comma-separated)</label>
<textarea id="hosts" rows="3" cols="50" required></textarea>
<label for="ssh-user">SSH user</label><input id="ssh-user" value="root" required>
<label for="ssh-port">SSH port</label><input id="ssh-port" type="number" value="22" min="1" max="65535">
<label for="ssh-key">SSH private key (OpenSSH text; or leave empty and give a password)</label>
<textarea id="ssh-key" rows="4" cols="50" spellcheck="false"></textarea>
<label for="ssh-password">SSH password</label><input id="ssh-password" type="password" autocomplete="off">
<label for="prefix">Install prefix on the hosts (optional)</label><input id="prefix" placeholder="/opt/bzzz">
<label for="http-port">HTTP port / P2P port on the hosts</label><input id="http-port" type="number" value="8080"> <input id="p2p-port" type="number" value="4140">
<p><button id="scan" type="button">1. Read host keys</button></p>
</form>
<div id="keys" hidden><h2>Host keys</h2><p>Compare each fingerprint with the host's own (<code>ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub</code>) and tick the ones you trust. Changed keys are refused.</p>
<table id="key-table"><thead><tr><th>Host</th><th>Fingerprint</th><th>Trust</th></tr></thead><tbody></tbody></table>
<p><button id="start" type="button">2. Deploy</button></p></div>
<div id="progress" hidden><h2>Progress</h2><table id="hosts-table"><thead><tr><th>Host</th><th>State</th><th>Detail</th></tr></thead><tbody></tbody></table>
<p id="summary"></p></div>
<p class="err" id="error" hidden></p>
<script>
const $ = (id) => document.getElementById(id);
function fail(msg) { const e = $("error"); e.textContent = msg; e.hidden = false; }
async function post(path, body) {
  const r = await fetch(path, {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body), credentials: "same-origin"});
  const v = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(v.error || ("HTTP " + r.status));
  return v;
}
function cell(tr, text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); return td; }
$("scan").onclick = async () => {
  $("error").hidden = true;
  try {
    const v = await post("/api/v1/deploy/scan", {hosts: $("hosts").value, ssh_port: Number($("ssh-port").value)});
    const tb = document.querySelector("#key-table tbody"); tb.textContent = "";
    for (const h of v.hosts) {
      const tr = document.createElement("tr"); tr.dataset.host = h.host;
      cell(tr, h.host);
      cell(tr, h.fingerprint || h.error, h.fingerprint ? "fp" : "err");
      const td = cell(tr, "");
      if (h.fingerprint && !h.changed) {
        const cb = document.createElement("input"); cb.type = "checkbox"; cb.className = "trust";
        cb.dataset.host = h.host; cb.dataset.fp = h.fingerprint; cb.checked = h.pinned; cb.disabled = h.pinned;
        td.appendChild(cb); if (h.pinned) td.append(" pinned");
      } else if (h.changed) { td.textContent = "CHANGED: refused"; }
      tb.appendChild(tr);
    }
    $("keys").hidden = false;
  } catch (e) { fail(e.message); }
};
$("start").onclick = async () => {
  $("error").hidden = true;
  const confirmed = {};
  for (const cb of document.querySelectorAll("input.trust")) if (cb.checked) confirmed[cb.dataset.host] = cb.dataset.fp;
  const body = {hosts: $("hosts").value, ssh_user: $("ssh-user").value, ssh_port: Number($("ssh-port").value),
    http_port: Number($("http-port").value), p2p_port: Number($("p2p-port").value), confirmed_fingerprints: confirmed};
  if ($("ssh-key").value.trim()) body.ssh_key = $("ssh-key").value; else body.ssh_password = $("ssh-password").value;
  if ($("prefix").value.trim()) body.prefix = $("prefix").value.trim();
  let run;
  try { run = await post("/api/v1/deploy", body); } catch (e) { fail(e.message); return; }
  $("start").disabled = true;
  const tb = document.querySelector("#hosts-table tbody"); tb.textContent = "";
  const rows = {};
  for (const h of run.hosts) {
    const tr = document.createElement("tr"); tr.dataset.host = h;
    cell(tr, h); rows[h] = [cell(tr, "queued", "state"), cell(tr, "")]; tb.appendChild(tr);
  }
  $("progress").hidden = false;
  const es = new EventSource(run.events);
  es.onmessage = (m) => {
    const e = JSON.parse(m.data); const r = rows[e.host]; if (!r) return;
    r[0].textContent = e.state; r[0].parentNode.dataset.state = e.state;
    r[1].textContent = (e.cause ? e.cause + ": " : "") + (e.message || e.node_id || "");
  };
  es.addEventListener("done", (m) => {
    es.close(); const v = JSON.parse(m.data);
    const ok = v.outcomes.filter((o) => o.ok).length;
    $("summary").textContent = ok + " of " + v.outcomes.length + " hosts joined" + (v.ok ? "." : "; see the failures above.");
    $("summary").dataset.done = v.ok ? "ok" : "failed";
    $("start").disabled = false;
  });
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) fail("the event stream closed"); };
};
</script>"##;

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: serde_json::Value) -> Result<DeployRequest, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn requests_are_validated_before_anything_runs() {
        let ok =
            req(json!({"hosts": "10.0.0.1-2", "ssh_user": "root", "ssh_password": "x"})).unwrap();
        assert_eq!(validate(&ok).unwrap(), ["10.0.0.1", "10.0.0.2"]);
        for (bad, why) in [
            (
                json!({"hosts": "", "ssh_user": "root", "ssh_password": "x"}),
                "hosts",
            ),
            (
                json!({"hosts": "h", "ssh_user": "-oProxyCommand=x", "ssh_password": "x"}),
                "ssh_user",
            ),
            (
                json!({"hosts": "h", "ssh_user": "root"}),
                "ssh_key or ssh_password",
            ),
            (
                json!({"hosts": "h", "ssh_user": "root", "ssh_password": "x", "prefix": "rel"}),
                "prefix",
            ),
            (
                json!({"hosts": "h", "ssh_user": "root", "ssh_password": "x", "http_port": 4140}),
                "differ",
            ),
        ] {
            let e = validate(&req(bad).unwrap()).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        assert!(req(json!({"hosts": "h", "ssh_user": "root", "bogus": 1})).is_err());
    }
}
