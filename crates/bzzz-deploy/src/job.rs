//! One deploy run: every host in parallel (bounded), each through
//! connect → host key → authenticate → preflight → upload → install →
//! start → joined, with an [`Event`] at every step.
//!
//! The remote side is the installer itself (`install.sh`, embedded in the
//! binary and piped to `sh -s`): the preflight is its `--check`, the service
//! install is its normal run. So a deployed host and a hand-installed one
//! are the same, and re-running either is idempotent in the same way.
//!
//! One host failing never stops the others. Every failure carries a
//! [`Cause`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::ssh::{Credential, HostKeyPolicy, KeyTrust, Session, SshError, Target, shell_quote};

/// The installer, run remotely for preflight, install and uninstall.
pub const INSTALLER: &str = include_str!("../../../install.sh");

/// Where a host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Connecting,
    Authenticated,
    Preflight,
    /// Already deployed: same binary, running, a member; nothing changed.
    Verified,
    Uploading,
    Installing,
    Joining,
    Joined,
    Removing,
    Removed,
    Failed,
}

/// Why a host failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    Connect,
    HostKey,
    Auth,
    Ssh,
    Preflight,
    Upload,
    Token,
    Install,
    Start,
    JoinTimeout,
    Uninstall,
    /// The node running the deploy shut down before this host finished.
    Cancelled,
}

/// A progress event (one JSON line in `bzzz deploy --json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub host: String,
    pub state: State,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust: Option<KeyTrust>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// On `joined`/`removed`: whether this run changed the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// Milliseconds since the run started.
    pub elapsed_ms: u64,
}

impl Event {
    /// An event with only a host, a state and the time since the run started.
    pub fn new(host: &str, state: State, elapsed_ms: u64) -> Self {
        Event {
            host: host.to_owned(),
            state,
            message: String::new(),
            cause: None,
            fingerprint: None,
            trust: None,
            node_id: None,
            changed: None,
            elapsed_ms,
        }
    }
}

/// The last event of a run's stream (`event: done`): every host's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Done {
    /// Every host made it.
    pub ok: bool,
    pub outcomes: Vec<Outcome>,
}

/// Receives events (called from several tasks).
pub type Sink = Arc<dyn Fn(Event) + Send + Sync>;

/// What to deploy where.
#[derive(Debug, Clone)]
pub struct Spec {
    pub hosts: Vec<String>,
    pub ssh_port: u16,
    pub user: String,
    pub credential: Credential,
    pub policy: Arc<HostKeyPolicy>,
    /// Remote `--prefix`; `None`: the installer's default (system paths as
    /// root, `~/.bzzz` otherwise).
    pub prefix: Option<String>,
    pub http_port: u16,
    pub p2p_port: u16,
    pub mdns: bool,
    /// Hosts handled at once.
    pub parallel: usize,
    pub uninstall: bool,
    pub connect_timeout: Duration,
    pub join_timeout: Duration,
}

/// The binary to install (this node's own).
pub struct Payload {
    /// Shared bytes: every download and upload refers to the same buffer.
    pub binary: bytes::Bytes,
    pub sha256: String,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload")
            .field("bytes", &self.binary.len())
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl Payload {
    pub fn new(binary: Vec<u8>) -> Self {
        let sha256 = hex::encode(Sha256::digest(&binary));
        Payload {
            binary: binary.into(),
            sha256,
        }
    }
}

/// What only the running cluster knows.
pub trait Cluster: Send + Sync + 'static {
    /// A join token for one host of this run: single-use, a fresh one at
    /// each call (a shared k-use token would let one target admit nodes of
    /// its own).
    fn join_token(&self) -> impl Future<Output = Result<Zeroizing<String>, String>> + Send;
    /// Whether `node_id` is a certified member in this node's view.
    fn is_member(&self, node_id: &str) -> bool;
    /// Waits until `node_id` is a member, at most `timeout`.
    fn wait_joined(
        &self,
        node_id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Pins a host key accepted on first use (`host:port` → fingerprint).
    fn pin(&self, host_port: &str, fingerprint: &str) -> impl Future<Output = ()> + Send;
    /// A URL where a host can fetch the binary from this node, given this
    /// node's address on the host's SSH connection; `None`: upload over SSH.
    fn binary_url(&self, local_ip: std::net::IpAddr) -> Option<String>;
}

/// The result for one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub host: String,
    pub ok: bool,
    pub changed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

struct Ctx<C> {
    spec: Arc<Spec>,
    payload: Arc<Payload>,
    cluster: Arc<C>,
    sink: Sink,
    started: Instant,
}

impl<C> Ctx<C> {
    fn event(&self, host: &str, state: State) -> Event {
        Event::new(host, state, self.started.elapsed().as_millis() as u64)
    }
    fn emit(&self, e: Event) {
        (self.sink)(e);
    }
    fn say(&self, host: &str, state: State, message: impl Into<String>) {
        let mut e = self.event(host, state);
        e.message = message.into();
        self.emit(e);
    }
}

struct Fail {
    cause: Cause,
    message: String,
    fingerprint: Option<String>,
}

fn fail(cause: Cause, message: impl Into<String>) -> Fail {
    Fail {
        cause,
        message: message.into(),
        fingerprint: None,
    }
}

/// Runs a deploy (or an uninstall) over every host; returns per-host
/// outcomes in host order.
pub async fn run<C: Cluster>(
    spec: Arc<Spec>,
    payload: Arc<Payload>,
    cluster: Arc<C>,
    sink: Sink,
) -> Vec<Outcome> {
    let ctx = Arc::new(Ctx {
        spec: spec.clone(),
        payload,
        cluster,
        sink,
        started: Instant::now(),
    });
    for h in &spec.hosts {
        ctx.say(h, State::Queued, "");
    }
    let limit = Arc::new(Semaphore::new(spec.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, host) in spec.hosts.iter().enumerate() {
        let ctx = ctx.clone();
        let limit = limit.clone();
        let host = host.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let r = if ctx.spec.uninstall {
                uninstall_host(&ctx, &host).await
            } else {
                deploy_host(&ctx, &host).await
            };
            let outcome = match r {
                Ok(changed) => Outcome {
                    host: host.clone(),
                    ok: true,
                    changed,
                    cause: None,
                },
                Err(f) => {
                    let mut e = ctx.event(&host, State::Failed);
                    e.cause = Some(f.cause);
                    e.message = f.message;
                    e.fingerprint = f.fingerprint;
                    ctx.emit(e);
                    Outcome {
                        host: host.clone(),
                        ok: false,
                        changed: false,
                        cause: Some(f.cause),
                    }
                }
            };
            (i, outcome)
        });
    }
    let mut out: Vec<Option<Outcome>> = vec![None; spec.hosts.len()];
    while let Some(r) = tasks.join_next().await {
        if let Ok((i, o)) = r {
            out[i] = Some(o);
        }
    }
    out.into_iter()
        .zip(&spec.hosts)
        .map(|(o, h)| {
            o.unwrap_or_else(|| Outcome {
                host: h.clone(),
                ok: false,
                changed: false,
                cause: Some(Cause::Ssh),
            })
        })
        .collect()
}

async fn connect<C: Cluster>(ctx: &Ctx<C>, host: &str) -> Result<Session, Fail> {
    ctx.say(
        host,
        State::Connecting,
        format!("{}@{host}:{}", ctx.spec.user, ctx.spec.ssh_port),
    );
    let target = Target {
        host: host.to_owned(),
        port: ctx.spec.ssh_port,
        user: ctx.spec.user.clone(),
        credential: ctx.spec.credential.clone(),
        connect_timeout: ctx.spec.connect_timeout,
    };
    let s = Session::connect(&target, ctx.spec.policy.clone())
        .await
        .map_err(|e| match e {
            SshError::Connect(m) => fail(Cause::Connect, m),
            SshError::HostKey {
                fingerprint,
                reason,
            } => Fail {
                cause: Cause::HostKey,
                message: reason,
                fingerprint: Some(fingerprint),
            },
            e @ SshError::Auth { .. } => fail(Cause::Auth, e.to_string()),
            SshError::Protocol(m) => fail(Cause::Ssh, m),
            e @ SshError::Timeout(_) => fail(Cause::Ssh, e.to_string()),
        })?;
    if s.trust == KeyTrust::AcceptedNew {
        ctx.cluster
            .pin(&format!("{host}:{}", ctx.spec.ssh_port), &s.fingerprint)
            .await;
    }
    let mut e = ctx.event(host, State::Authenticated);
    e.fingerprint = Some(s.fingerprint.clone());
    e.trust = Some(s.trust);
    e.message = match s.trust {
        KeyTrust::AcceptedNew => "new host key accepted on first use and pinned".into(),
        KeyTrust::Pinned => "host key matches its pin".into(),
        KeyTrust::KnownHosts => "host key listed in known_hosts".into(),
        KeyTrust::Confirmed => "host key confirmed by the operator".into(),
    };
    ctx.emit(e);
    Ok(s)
}

/// The installer's options shared by every remote call.
fn common_args(spec: &Spec) -> String {
    let mut a = format!(
        " --http-port {} --p2p-port {}",
        spec.http_port, spec.p2p_port
    );
    if let Some(p) = &spec.prefix {
        a.push_str(" --prefix ");
        a.push_str(&shell_quote(p));
    }
    if !spec.mdns {
        a.push_str(" --no-mdns");
    }
    a
}

/// Installer output: `check\tNAME\tSTATUS\tMESSAGE` and `fact\tNAME\tVALUE`.
#[derive(Debug, Default)]
struct Report {
    failed: Vec<String>,
    facts: BTreeMap<String, String>,
}

fn parse_report(text: &str) -> Report {
    let mut r = Report::default();
    for line in text.lines() {
        let f: Vec<&str> = line.splitn(4, '\t').collect();
        match f.as_slice() {
            ["check", name, "fail", msg] => r.failed.push(format!("{name}: {msg}")),
            ["fact", name, value] => {
                r.facts.insert((*name).to_owned(), (*value).to_owned());
            }
            _ => {}
        }
    }
    r
}

/// Creates the private temporary directory `$d` on the host.
const MKTEMP: &str =
    "umask 077 && d=$(mktemp -d \"${TMPDIR:-/tmp}/bzzz-deploy.XXXXXX\") && echo \"$d\"";
/// Makes `$d/bzzz` executable (its checksum is checked by the installer).
const CHECKSUM: &str = "chmod 700 \"$d/bzzz\"";

/// The directory a successful transfer printed.
fn placed(out: &crate::ssh::Output) -> Option<String> {
    let text = out.stdout_text();
    let dir = text.lines().next()?.trim().to_owned();
    (out.success() && dir.starts_with('/')).then_some(dir)
}

/// Removes the temporary directory a failed transfer may have created.
fn cleanup_of(stdout: &str) -> String {
    match stdout.lines().next().map(str::trim) {
        Some(d) if d.starts_with('/') && d.contains("bzzz-deploy.") => {
            format!("rm -rf {}", shell_quote(d))
        }
        _ => "true".into(),
    }
}

/// Step 3: the binary, into a private temporary directory on the host (its
/// checksum is checked by the installer): fetched over HTTP from this node
/// when the host can (plain TCP costs a tenth of SSH's CPU, which bounds
/// an upload to several hosts at once), else uploaded over SSH. Returns
/// the directory.
async fn transfer<C: Cluster>(
    ctx: &Ctx<C>,
    host: &str,
    s: &Session,
    fetch_tool: &str,
) -> Result<String, Fail> {
    let ssh = |e: SshError| fail(Cause::Ssh, e.to_string());
    let url = s.local_ip.and_then(|ip| ctx.cluster.binary_url(ip));
    let fetched = match (&url, fetch_tool) {
        (Some(url), tool @ ("curl" | "wget")) => {
            ctx.say(
                host,
                State::Uploading,
                format!(
                    "{} bytes over HTTP from this node ({tool}), sha256 {}",
                    ctx.payload.binary.len(),
                    ctx.payload.sha256
                ),
            );
            let get = if tool == "curl" {
                format!(
                    "curl -fsS --max-time 120 -o \"$d/bzzz\" {}",
                    shell_quote(url)
                )
            } else {
                format!("wget -q -T 120 -O \"$d/bzzz\" {}", shell_quote(url))
            };
            let out = s
                .exec(&format!("{MKTEMP} && {get} && {CHECKSUM}"), b"")
                .await
                .map_err(ssh)?;
            match placed(&out) {
                Some(placed) => Some(placed),
                None => {
                    // Not reachable from there (firewall, another route):
                    // fall back to SSH.
                    let _ = s.exec(&cleanup_of(&out.stdout_text()), b"").await;
                    None
                }
            }
        }
        _ => None,
    };
    let dir = match fetched {
        Some(p) => p,
        None => {
            ctx.say(
                host,
                State::Uploading,
                format!(
                    "{} bytes over SSH, sha256 {}",
                    ctx.payload.binary.len(),
                    ctx.payload.sha256
                ),
            );
            let out = s
                .exec(
                    &format!("{MKTEMP} && cat > \"$d/bzzz\" && {CHECKSUM}"),
                    &ctx.payload.binary,
                )
                .await
                .map_err(|e| fail(Cause::Upload, e.to_string()))?;
            placed(&out).ok_or_else(|| {
                fail(
                    Cause::Upload,
                    format!("upload failed: {}", out.stderr_tail()),
                )
            })?
        }
    };
    Ok(dir)
}

async fn deploy_host<C: Cluster>(ctx: &Ctx<C>, host: &str) -> Result<bool, Fail> {
    let s = connect(ctx, host).await?;
    let r = deploy_on(ctx, host, &s).await;
    s.close().await;
    r
}

async fn deploy_on<C: Cluster>(ctx: &Ctx<C>, host: &str, s: &Session) -> Result<bool, Fail> {
    let spec = &ctx.spec;
    let ssh = |e: SshError| fail(Cause::Ssh, e.to_string());

    // 1. Preflight: the installer's own checks.
    let out = s
        .exec(
            &format!("sh -s -- --check --report kv{}", common_args(spec)),
            INSTALLER.as_bytes(),
        )
        .await
        .map_err(ssh)?;
    let report = parse_report(&out.stdout_text());
    if !out.success() {
        let why = if report.failed.is_empty() {
            format!("the installer's check failed: {}", out.stderr_tail())
        } else {
            report.failed.join("; ")
        };
        return Err(fail(Cause::Preflight, why));
    }
    let fact = |k: &str| report.facts.get(k).map(String::as_str).unwrap_or("");
    ctx.say(
        host,
        State::Preflight,
        format!(
            "{} {}, {} cores, {} MiB memory, {} MiB free, {} GPU(s), init {}",
            fact("distro"),
            fact("arch"),
            fact("cpus"),
            fact("memory_mb"),
            fact("disk_free_mb"),
            fact("gpus"),
            fact("init"),
        ),
    );

    // 2. Already there? Same binary, running, a member: nothing to do.
    let node_id = fact("node_id");
    let member = !node_id.is_empty() && ctx.cluster.is_member(node_id);
    if fact("installed_sha256") == ctx.payload.sha256 && fact("running") == "yes" && member {
        let mut e = ctx.event(host, State::Verified);
        e.message = "already deployed: same binary, running, a member; nothing changed".into();
        e.node_id = Some(node_id.to_owned());
        ctx.emit(e);
        let mut e = ctx.event(host, State::Joined);
        e.node_id = Some(node_id.to_owned());
        e.changed = Some(false);
        e.message = "nothing changed".into();
        ctx.emit(e);
        return Ok(false);
    }

    // 3. The binary, and (for a node that is not a member yet) a join
    //    token, created while the binary travels.
    let needs_token = !member;
    let (dir, token) = tokio::join!(transfer(ctx, host, s, fact("fetch")), async {
        match needs_token {
            true => Some(ctx.cluster.join_token().await),
            false => None,
        }
    });
    let dir = dir?;
    let cleanup = format!("rm -rf {}", shell_quote(&dir));

    // 4. The token goes to the installer inside its script (stdin), never
    //    on a command line; the installer stores it with mode 600.
    let mut script = String::new();
    match token {
        Some(Ok(t))
            if t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-+/=~".contains(&b)) =>
        {
            script.push_str(&format!("_bzzz_join_token='{}'\n", t.as_str()));
        }
        Some(Ok(_)) => {
            let _ = s.exec(&cleanup, b"").await;
            return Err(fail(
                Cause::Token,
                "the join token has unexpected characters",
            ));
        }
        Some(Err(e)) => {
            let _ = s.exec(&cleanup, b"").await;
            return Err(fail(
                Cause::Token,
                format!("cannot create a join token: {e}"),
            ));
        }
        None => {}
    }
    script.push_str(INSTALLER);
    let script = Zeroizing::new(script);

    // 5. Install and start (the installer stops an older version first).
    ctx.say(
        host,
        State::Installing,
        "installing the service and starting the node",
    );
    let cmd = format!(
        "sh -s -- --yes --report kv --binary {bin} --sha256 {sha}{common}; rc=$?; {cleanup}; exit $rc",
        bin = shell_quote(&format!("{dir}/bzzz")),
        sha = ctx.payload.sha256,
        common = common_args(spec),
    );
    let out = s.exec(&cmd, script.as_bytes()).await.map_err(ssh)?;
    let report = parse_report(&out.stdout_text());
    match out.status {
        Some(0) => {}
        Some(2) => return Err(fail(Cause::Preflight, report.failed.join("; "))),
        Some(3) => {
            return Err(fail(
                Cause::Start,
                format!("the node did not start: {}", out.stderr_tail()),
            ));
        }
        // The transferred binary is not the one sent (the expected checksum
        // went over SSH; the installer compares).
        Some(4) => return Err(fail(Cause::Upload, out.stderr_tail())),
        _ => {
            return Err(fail(
                Cause::Install,
                format!("the installer failed: {}", out.stderr_tail()),
            ));
        }
    }
    let node_id = report.facts.get("node_id").cloned().unwrap_or_default();
    if node_id.is_empty() {
        return Err(fail(
            Cause::Start,
            "the installer did not report the node id",
        ));
    }

    // 6. Wait until it is a member of the mesh.
    let mut e = ctx.event(host, State::Joining);
    e.node_id = Some(node_id.clone());
    ctx.emit(e);
    ctx.cluster
        .wait_joined(&node_id, spec.join_timeout)
        .await
        .map_err(|e| fail(Cause::JoinTimeout, e))?;
    // The token has served: delete it on the host.
    let etc = match report.facts.get("prefix").map(String::as_str) {
        Some("/") | None => "/etc/bzzz".to_owned(),
        Some(p) => format!("{p}/etc"),
    };
    let _ = s
        .exec(
            &format!("rm -f {}", shell_quote(&format!("{etc}/join-token"))),
            b"",
        )
        .await;
    let mut e = ctx.event(host, State::Joined);
    e.node_id = Some(node_id);
    e.changed = Some(true);
    ctx.emit(e);
    Ok(true)
}

async fn uninstall_host<C: Cluster>(ctx: &Ctx<C>, host: &str) -> Result<bool, Fail> {
    let s = connect(ctx, host).await?;
    ctx.say(host, State::Removing, "stopping and removing the node");
    let out = s
        .exec(
            &format!(
                "sh -s -- --uninstall --yes --report kv{}",
                common_args(&ctx.spec)
            ),
            INSTALLER.as_bytes(),
        )
        .await;
    s.close().await;
    let out = out.map_err(|e| fail(Cause::Ssh, e.to_string()))?;
    if !out.success() {
        return Err(fail(
            Cause::Uninstall,
            format!("the installer failed: {}", out.stderr_tail()),
        ));
    }
    let mut e = ctx.event(host, State::Removed);
    e.message = "node stopped and removed (its data directory is kept)".into();
    e.changed = Some(true);
    ctx.emit(e);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installer_report_is_parsed_by_field() {
        let r = parse_report(
            "check\tos\tok\tLinux\ncheck\thttp\tfail\t8080/tcp is in use\tby x\nfact\tnode_id\t12D3Koo\ninfo\thello\ngarbage\n",
        );
        assert_eq!(r.failed, ["http: 8080/tcp is in use\tby x"]);
        assert_eq!(r.facts.get("node_id").map(String::as_str), Some("12D3Koo"));
    }

    #[test]
    fn events_serialize_with_host_and_state() {
        let e = Event {
            host: "10.0.0.1".into(),
            state: State::Joined,
            message: String::new(),
            cause: None,
            fingerprint: None,
            trust: None,
            node_id: Some("12D3".into()),
            changed: Some(false),
            elapsed_ms: 5,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["host"], "10.0.0.1");
        assert_eq!(v["state"], "joined");
        assert_eq!(v["changed"], false);
        assert!(v.get("cause").is_none());
    }

    #[test]
    fn the_embedded_installer_is_the_posix_script() {
        assert!(INSTALLER.starts_with("#!/bin/sh"));
        assert!(INSTALLER.contains("printf 'fact\\t%s\\t%s\\n'"));
    }
}
