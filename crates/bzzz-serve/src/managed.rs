//! Managed backends: one server process per model placed on this node,
//! started from a command template (`{model_path}`, `{port}`, `{ctx}`),
//! ready once its health check answers, restarted with backoff when it
//! dies, stopped when the model is no longer wanted here or the node
//! stops. Every process is a task on the node's tracker.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// How a managed backend is started.
#[derive(Debug, Clone)]
pub struct ManagedConfig {
    /// argv; `{model_path}`, `{port}` and `{ctx}` are replaced.
    pub command: Vec<String>,
    pub ctx: u32,
    /// How long a start may take until `/health` answers 200.
    pub start_timeout: Duration,
    /// Where each backend's output goes (`<name>.log`).
    pub log_dir: PathBuf,
}

/// A model this node should serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// Registry name (`NAME:TAG`).
    pub model: String,
    /// Manifest digest: a new version restarts the backend.
    pub digest: String,
    /// The GGUF file (the model layer's blob).
    pub model_path: PathBuf,
}

/// A backend's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Ready,
    Failed,
}

/// What the API and the models page show.
#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    pub model: String,
    pub digest: String,
    pub port: u16,
    pub state: State,
    pub restarts: u32,
    /// The server process (while it runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Requests this node sent to it.
    pub requests: u64,
    /// Requests being answered now.
    pub in_flight: u32,
    /// Why it last failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A request in flight on a backend (see [`Supervisor::served`]).
#[derive(Debug)]
pub struct Busy(Arc<Proc>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut s = lock(&self.0.status);
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

#[derive(Debug)]
struct Proc {
    want: Want,
    stop: CancellationToken,
    status: Mutex<BackendStatus>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The managed backends of this node.
#[derive(Debug)]
pub struct Supervisor {
    cfg: ManagedConfig,
    procs: Mutex<HashMap<String, Arc<Proc>>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// Substitutes the placeholders of the command template.
pub fn argv(template: &[String], model_path: &str, port: u16, ctx: u32) -> Vec<String> {
    template
        .iter()
        .map(|a| {
            a.replace("{model_path}", model_path)
                .replace("{port}", &port.to_string())
                .replace("{ctx}", &ctx.to_string())
        })
        .collect()
}

/// A free TCP port on 127.0.0.1 (bound, then released for the backend).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Supervisor {
    pub fn new(cfg: ManagedConfig, tracker: TaskTracker, cancel: CancellationToken) -> Arc<Self> {
        reap_orphans(&cfg);
        Arc::new(Self {
            cfg,
            procs: Mutex::new(HashMap::new()),
            tracker,
            cancel,
        })
    }

    /// Makes the running set follow `wants`: starts what is new (or
    /// changed version), stops what is no longer wanted.
    pub fn set_wanted(self: &Arc<Self>, wants: &[Want]) {
        let mut procs = lock(&self.procs);
        procs.retain(|model, p| {
            let keep = wants.iter().any(|w| *w == p.want);
            if !keep {
                info!(%model, "stopping its backend (no longer served here)");
                p.stop.cancel();
            }
            keep
        });
        for w in wants {
            if procs.contains_key(&w.model) {
                continue;
            }
            let p = Arc::new(Proc {
                want: w.clone(),
                stop: self.cancel.child_token(),
                status: Mutex::new(BackendStatus {
                    model: w.model.clone(),
                    digest: w.digest.clone(),
                    port: 0,
                    state: State::Starting,
                    restarts: 0,
                    pid: None,
                    requests: 0,
                    in_flight: 0,
                    error: None,
                }),
            });
            procs.insert(w.model.clone(), p.clone());
            let me = self.clone();
            self.tracker.spawn(async move { me.run(p).await });
        }
    }

    /// The port of a ready backend for `model`.
    pub fn ready_port(&self, model: &str) -> Option<u16> {
        let procs = lock(&self.procs);
        let s = lock(&procs.get(model)?.status).clone();
        (s.state == State::Ready).then_some(s.port)
    }

    /// Counts a request sent to `model`'s backend; it is in flight until
    /// the returned guard is dropped.
    pub fn served(&self, model: &str) -> Option<Busy> {
        let p = lock(&self.procs).get(model)?.clone();
        {
            let mut s = lock(&p.status);
            s.requests += 1;
            s.in_flight += 1;
        }
        Some(Busy(p))
    }

    pub fn list(&self) -> Vec<BackendStatus> {
        let mut v: Vec<_> = lock(&self.procs)
            .values()
            .map(|p| lock(&p.status).clone())
            .collect();
        v.sort_by(|a, b| a.model.cmp(&b.model));
        v
    }

    fn set(&self, p: &Proc, f: impl FnOnce(&mut BackendStatus)) {
        f(&mut lock(&p.status));
    }

    /// One backend: start, wait for health, watch, restart with backoff
    /// (1 s doubling to 30 s; reset after a minute of health), stop.
    async fn run(&self, p: Arc<Proc>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            if p.stop.is_cancelled() {
                return;
            }
            let started = Instant::now();
            let outcome = self.once(&p).await;
            if p.stop.is_cancelled() {
                return;
            }
            if started.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_secs(1);
            }
            warn!(model = %p.want.model, "backend ended ({outcome}); restarting in {backoff:?}");
            self.set(&p, |s| {
                s.state = State::Failed;
                s.error = Some(outcome);
                s.restarts += 1;
                s.pid = None;
            });
            tokio::select! {
                _ = p.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// Runs the process once; returns why it ended.
    async fn once(&self, p: &Proc) -> String {
        let port = match free_port() {
            Ok(p) => p,
            Err(e) => return format!("no free port: {e}"),
        };
        let path = p.want.model_path.to_string_lossy().into_owned();
        let args = argv(&self.cfg.command, &path, port, self.cfg.ctx);
        let Some((prog, rest)) = args.split_first() else {
            return "serve.managed.command is empty".into();
        };
        let _ = std::fs::create_dir_all(&self.cfg.log_dir);
        let log = self
            .cfg
            .log_dir
            .join(format!("{}.log", p.want.model.replace(['/', ':'], "_")));
        let out = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
        {
            Ok(f) => f,
            Err(e) => return format!("cannot open {}: {e}", log.display()),
        };
        let err = match out.try_clone() {
            Ok(f) => f,
            Err(e) => return e.to_string(),
        };
        let mut child = match tokio::process::Command::new(prog)
            .args(rest)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return format!("cannot start {prog}: {e}"),
        };
        let pid = child.id();
        let pidf = pid_file(&self.cfg, &p.want.model);
        if let Some(id) = pid {
            let _ = std::fs::write(&pidf, id.to_string());
        }
        let outcome = self.watch(p, &mut child, port).await;
        let _ = std::fs::remove_file(&pidf);
        outcome
    }

    async fn watch(&self, p: &Proc, child: &mut tokio::process::Child, port: u16) -> String {
        let pid = child.id();
        self.set(p, |s| {
            s.port = port;
            s.pid = pid;
            s.state = State::Starting;
        });
        info!(model = %p.want.model, port, pid = child.id(), "backend starting");
        // Health: GET /health answers 200.
        let url = format!("http://127.0.0.1:{port}/health");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + self.cfg.start_timeout;
        let healthy = loop {
            tokio::select! {
                _ = p.stop.cancelled() => { stop(child).await; return "stopped".into(); }
                r = child.wait() => return format!("exited while starting ({})", r.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())),
                r = client.get(&url).timeout(Duration::from_secs(2)).send() => {
                    if r.is_ok_and(|r| r.status().is_success()) {
                        break true;
                    }
                }
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if !healthy {
            stop(child).await;
            return format!("no health within {:?}", self.cfg.start_timeout);
        }
        self.set(p, |s| {
            s.state = State::Ready;
            s.error = None;
        });
        info!(model = %p.want.model, port, "backend ready");
        tokio::select! {
            _ = p.stop.cancelled() => { stop(child).await; "stopped".into() }
            r = child.wait() => format!("exited ({})", r.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())),
        }
    }
}

fn pid_file(cfg: &ManagedConfig, model: &str) -> PathBuf {
    cfg.log_dir
        .join(format!("{}.pid", model.replace(['/', ':'], "_")))
}

/// Backends left behind by an earlier run of this node that was killed
/// (SIGKILL gives it no chance to stop them): each pid file names one; a
/// process that still runs the configured program and whose parent is
/// gone (re-parented) gets SIGTERM.
fn reap_orphans(cfg: &ManagedConfig) {
    let Ok(rd) = std::fs::read_dir(&cfg.log_dir) else {
        return;
    };
    let Some(program) = cfg.command.first() else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "pid") {
            continue;
        }
        let pid = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let _ = std::fs::remove_file(&path);
        let Some(pid) = pid else { continue };
        // The same program with every fixed argument of the template (a
        // reused pid that runs something else is left alone).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let ours = argv.first().is_some_and(|a0| *a0 == program.as_bytes())
            && cfg
                .command
                .iter()
                .filter(|a| !a.contains('{'))
                .all(|a| argv.contains(&a.as_bytes()));
        if ours && let Some(p) = rustix::process::Pid::from_raw(pid) {
            warn!(pid, "stopping a backend left behind by an earlier run");
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
    }
}

/// SIGTERM, then SIGKILL after 5 s.
async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced() {
        let t: Vec<String> = [
            "python3",
            "s.py",
            "--model",
            "{model_path}",
            "--port",
            "{port}",
            "--ctx={ctx}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            argv(&t, "/m/blob", 4242, 2048),
            [
                "python3",
                "s.py",
                "--model",
                "/m/blob",
                "--port",
                "4242",
                "--ctx=2048"
            ]
        );
    }

    /// A fake backend (a shell script serving /health with a tiny HTTP
    /// responder would need more tools): `sleep` never answers health, so
    /// the start times out; a command that exits at once is restarted.
    #[tokio::test]
    async fn a_backend_that_dies_is_restarted_and_a_stopped_one_ends() {
        let dir = tempfile::tempdir().unwrap();
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let sup = Supervisor::new(
            ManagedConfig {
                command: vec!["false".into()],
                ctx: 0,
                start_timeout: Duration::from_secs(2),
                log_dir: dir.path().to_path_buf(),
            },
            tracker.clone(),
            cancel.clone(),
        );
        let w = Want {
            model: "m:1".into(),
            digest: "d".into(),
            model_path: "/nonexistent".into(),
        };
        sup.set_wanted(std::slice::from_ref(&w));
        let t0 = Instant::now();
        loop {
            let l = sup.list();
            if l[0].restarts >= 2 {
                assert_eq!(l[0].state, State::Failed);
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "{l:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(sup.ready_port("m:1"), None);
        sup.set_wanted(&[]);
        assert!(sup.list().is_empty());
        cancel.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .expect("every backend task ends");
    }
}
