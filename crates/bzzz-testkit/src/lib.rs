//! Test-only harness for BZZZ: real `bzzz` processes, on loopback or as
//! hosts in network namespaces. Never a normal dependency.
//!
//! * [`LocalCluster`]: N nodes as processes on 127.0.0.1 (mDNS off, bootstrap
//!   to the first), each with its own temporary data dir and log file.
//! * [`lab::Lab`]: N hosts in network namespaces on one bridge (ENGINEERING.md
//!   §4), each running the real binary; cut a host off, heal it, cap its
//!   bandwidth. Unique names per run; torn down on drop, also when a test
//!   fails.
//! * [`wait_until`]: poll a condition with a deadline (never sleep-as-sync).
//!
//! Everything here is synchronous (std processes, a tiny HTTP/1.1 GET), so
//! tests stay plain `#[test]` functions and can run in parallel.

pub mod browser;
pub mod forge;
pub mod http;
pub mod lab;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

/// Polls `f` every `every` until it returns `Some`, or fails after `deadline`
/// with `what` in the message.
pub fn wait_until<T>(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// Runs the `bzzz` binary `bin` with `args` (no `BZZZ_API` inherited).
pub fn cli(bin: &str, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(bin);
    c.args(args)
        .env_remove("BZZZ_API")
        .env_remove("BZZZ_API_KEY");
    match operator() {
        Some((file, _)) => c.env("BZZZ_OPERATOR_PASSWORD_FILE", file),
        None => c.env_remove("BZZZ_OPERATOR_PASSWORD_FILE"),
    };
    c.output().expect("run bzzz")
}

/// [`cli`] without any credential (no operator password file in the
/// environment): what an anonymous caller gets.
pub fn cli_anonymous(bin: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin)
        .args(args)
        .env_remove("BZZZ_API")
        .env_remove("BZZZ_API_KEY")
        .env_remove("BZZZ_OPERATOR_PASSWORD_FILE")
        .output()
        .expect("run bzzz")
}

/// The operator credential this test process acts with (set by
/// [`LocalCluster::init`] and the lab's `init_cluster`): the CLI gets it
/// as `BZZZ_OPERATOR_PASSWORD_FILE`, [`http`] as HTTP Basic (user admin).
static OPERATOR: std::sync::Mutex<Option<(PathBuf, String)>> = std::sync::Mutex::new(None);

/// Acts as the operator with this password (file and text) from now on.
pub fn act_as_operator(file: &Path, password: &str) {
    *OPERATOR.lock().unwrap_or_else(|p| p.into_inner()) =
        Some((file.to_path_buf(), password.to_owned()));
}

/// The operator credential set by [`act_as_operator`], if any.
pub fn operator() -> Option<(PathBuf, String)> {
    OPERATOR.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// [`cli`], which must succeed and print JSON (panics with its stderr).
pub fn cli_json(bin: &str, args: &[&str]) -> Value {
    let out = cli(bin, args);
    assert!(
        out.status.success(),
        "bzzz {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bzzz {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `<data_dir>/node.json`, written by a running node.
#[derive(Debug, Clone, Deserialize)]
pub struct RuntimeInfo {
    pub pid: u32,
    pub node_id: String,
    pub api_addr: String,
    pub listen_addrs: Vec<String>,
}

/// One `bzzz node run` process.
#[derive(Debug)]
pub struct NodeProc {
    pub name: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The command line (without the binary), to restart it the same way.
    pub args: Vec<String>,
    /// Prefix (e.g. `ip netns exec NS`) the node runs under.
    pub prefix: Vec<String>,
    /// Extra environment for the process.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    pub info: Option<RuntimeInfo>,
}

impl NodeProc {
    /// Starts `bin` with `args` (under `prefix`), stderr to `log`.
    pub fn spawn(
        name: &str,
        bin: &Path,
        prefix: &[String],
        args: Vec<String>,
        data_dir: PathBuf,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let mut p = NodeProc {
            name: name.to_owned(),
            data_dir,
            log,
            args,
            prefix: prefix.to_vec(),
            env: Vec::new(),
            child: None,
            info: None,
        };
        p.start(bin)?;
        Ok(p)
    }

    fn start(&mut self, bin: &Path) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(self.data_dir.join("node.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(&self.args)
            // `TEST_NODE_LOG` overrides the nodes' log filter when a test
            // needs more (e.g. `info,openraft::engine=info`).
            .env(
                "BZZZ_LOG",
                std::env::var("TEST_NODE_LOG").unwrap_or_else(|_| "info,bzzz_net=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("BZZZ_") && k != "BZZZ_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("spawn {}", bin.display()))?,
        );
        self.info = None;
        Ok(())
    }

    /// Restarts a stopped node with the same data dir and arguments.
    pub fn restart(&mut self, bin: &Path) -> anyhow::Result<()> {
        self.kill9();
        self.start(bin)
    }

    /// Waits until the node has written its runtime file.
    pub fn wait_ready(&mut self, deadline: Duration) -> anyhow::Result<RuntimeInfo> {
        let path = self.data_dir.join("node.json");
        let start = Instant::now();
        loop {
            if let Some(info) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<RuntimeInfo>(&t).ok())
            {
                self.info = Some(info.clone());
                return Ok(info);
            }
            if let Some(st) = self.try_wait() {
                bail!(
                    "{} exited during start ({st}):\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            if start.elapsed() > deadline {
                bail!(
                    "{} not ready within {deadline:?}:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn node_id(&self) -> &str {
        self.info.as_ref().map(|i| i.node_id.as_str()).unwrap_or("")
    }

    /// `http://IP:PORT` of the API.
    pub fn api(&self) -> String {
        self.info
            .as_ref()
            .map(|i| format!("http://{}", i.api_addr))
            .unwrap_or_default()
    }

    /// The first TCP listen address (with `/p2p/ID`).
    pub fn tcp_addr(&self) -> Option<String> {
        self.info
            .as_ref()
            .and_then(|i| i.listen_addrs.iter().find(|a| a.contains("/tcp/")).cloned())
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// SIGKILL, no chance to say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal and waits for exit; returns the status and the time it took.
    pub fn signal_and_wait(
        &mut self,
        sig: rustix::process::Signal,
        deadline: Duration,
    ) -> anyhow::Result<(ExitStatus, Duration)> {
        let c = self.child.as_mut().context("not running")?;
        let pid = rustix::process::Pid::from_raw(c.id() as i32).context("bad pid")?;
        let start = Instant::now();
        rustix::process::kill_process(pid, sig)?;
        loop {
            if let Some(st) = c.try_wait()? {
                self.child = None;
                return Ok((st, start.elapsed()));
            }
            if start.elapsed() > deadline {
                bail!(
                    "{} did not exit within {deadline:?} after {sig:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last `n` lines of the node's log.
    pub fn log_tail(&self, n: usize) -> String {
        let Ok(f) = std::fs::File::open(&self.log) else {
            return String::new();
        };
        let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The API's `IP:PORT` (for [`http`]); empty before the node is ready.
    pub fn api_addr(&self) -> String {
        self.info
            .as_ref()
            .map(|i| i.api_addr.clone())
            .unwrap_or_default()
    }

    /// GET a JSON document from the node's API (direct HTTP from this process).
    pub fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        anyhow::ensure!(self.info.is_some(), "node not ready");
        http::get_json(&self.api_addr(), path)
    }

    /// Node ids in this node's `/api/v1/peers`.
    pub fn peer_ids(&self) -> anyhow::Result<Vec<String>> {
        let v = self.get_json("/api/v1/peers")?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["node_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Options of a [`LocalCluster`] node.
#[derive(Debug, Clone, Default)]
pub struct LocalOpts {
    /// Extra arguments for every node (e.g. `--config FILE`).
    pub extra_args: Vec<String>,
    /// Extra environment variables (e.g. a test's fault hook).
    pub env: Vec<(String, String)>,
}

/// N nodes as processes on 127.0.0.1.
#[derive(Debug)]
pub struct LocalCluster {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
}

impl LocalCluster {
    /// Options that start a node with `yaml` as its config file (written
    /// to `<dir>/<name>.yaml`).
    pub fn config(&self, name: &str, yaml: &str) -> anyhow::Result<LocalOpts> {
        let p = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&p, yaml)?;
        Ok(LocalOpts {
            extra_args: vec!["--config".into(), p.to_string_lossy().into_owned()],
            ..Default::default()
        })
    }

    /// `bzzz init` (cluster `lab`) through node `i`, the operator password
    /// in a file in the cluster's directory; returns that file's path.
    pub fn init(&self, i: usize, password: &str) -> anyhow::Result<String> {
        let pw = self.dir.path().join("operator-password");
        std::fs::write(&pw, format!("{password}\n"))?;
        act_as_operator(&pw, password);
        let pw = pw.to_string_lossy().into_owned();
        let bin = self.bin.to_string_lossy().into_owned();
        let api = self.nodes[i].api();
        let mut args = vec![
            "init",
            "--api",
            &api,
            "--cluster",
            "lab",
            "--operator-password-file",
            &pw,
            "--json",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        args.extend(self.holder_args(i));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli_json(&bin, &args);
        Ok(pw)
    }

    /// `--holder ID` for every node but `i`: the harness trusts all its
    /// own nodes to hold shares when node `i` runs setup.
    pub fn holder_args(&self, i: usize) -> Vec<String> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, n)| ["--holder".to_owned(), n.node_id().to_owned()])
            .collect()
    }

    /// The node ids of every node but `i` (a setup's `holders`).
    pub fn holder_ids(&self, i: usize) -> Vec<String> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.node_id().to_owned())
            .collect()
    }

    /// `bzzz model add FILE --name NAME [extra…] --json` through node `i`.
    pub fn add_model(&self, i: usize, file: &Path, name: &str, pw: &str, extra: &[&str]) -> Value {
        let bin = self.bin.to_string_lossy().into_owned();
        let api = self.nodes[i].api();
        let file = file.to_string_lossy().into_owned();
        let mut args = vec!["model", "add", &file, "--name", name];
        args.extend_from_slice(extra);
        args.extend(["--api", &api, "--operator-password-file", pw, "--json"]);
        cli_json(&bin, &args)
    }

    /// Starts `n` nodes: mDNS off, each bootstrapping to the first.
    pub fn start(bin: &Path, n: usize, opts: &LocalOpts) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("bzzz-local-").tempdir()?;
        let mut c = LocalCluster {
            bin: bin.to_path_buf(),
            dir,
            nodes: Vec::new(),
        };
        for _ in 0..n {
            c.add_node(opts)?;
        }
        Ok(c)
    }

    /// The bootstrap address every node after the first uses.
    pub fn bootstrap_addr(&self) -> Option<String> {
        self.nodes.first().and_then(NodeProc::tcp_addr)
    }

    /// Adds (and starts) one more node; returns its index.
    pub fn add_node(&mut self, opts: &LocalOpts) -> anyhow::Result<usize> {
        let i = self.nodes.len();
        let data_dir = self.dir.path().join(format!("node-{i}"));
        let log = self.dir.path().join(format!("node-{i}.log"));
        let mut args: Vec<String> = [
            "node",
            "run",
            "--data-dir",
            &data_dir.to_string_lossy(),
            "--http",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--no-mdns",
            "--models-dir",
            &data_dir.join("ollama").to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(b) = self.bootstrap_addr() {
            args.extend(["--bootstrap".to_owned(), b]);
        }
        args.extend(opts.extra_args.iter().cloned());
        let mut p = NodeProc {
            name: format!("node-{i}"),
            data_dir,
            log,
            args,
            prefix: Vec::new(),
            env: opts.env.clone(),
            child: None,
            info: None,
        };
        p.start(&self.bin)?;
        p.wait_ready(Duration::from_secs(20))?;
        self.nodes.push(p);
        Ok(i)
    }

    /// Waits until every running node lists every other running node.
    pub fn wait_formed(&mut self, deadline: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_running())
            .collect();
        let ids: Vec<String> = alive
            .iter()
            .map(|i| self.nodes[*i].node_id().to_owned())
            .collect();
        let nodes = &self.nodes;
        wait_until(
            "the cluster to form",
            deadline,
            Duration::from_millis(50),
            || {
                alive
                    .iter()
                    .all(|i| {
                        let seen = nodes[*i].peer_ids().unwrap_or_default();
                        ids.iter()
                            .filter(|id| *id != nodes[*i].node_id())
                            .all(|id| seen.contains(id))
                    })
                    .then_some(())
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs()))?;
        Ok(start.elapsed())
    }

    /// Every node's log tail, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ({}) ---\n{}", n.name, n.node_id(), n.log_tail(15)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Every file under `dir`, recursively (tests that search data dirs for
/// secrets).
pub fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Resident set size (KiB) and total CPU time (user+system) of a process.
pub fn proc_usage(pid: u32) -> anyhow::Result<(u64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at ')'.
    let rest = stat.rsplit_once(')').context("bad stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
    let hz = rustix::param::clock_ticks_per_second();
    Ok((rss_kib, Duration::from_secs_f64(ticks as f64 / hz as f64)))
}

/// What each process uses while left alone for `window`: (RSS in KiB at
/// the end, CPU as % of one core over the window), in `pids` order.
pub fn idle_usage(pids: &[u32], window: Duration) -> anyhow::Result<Vec<(u64, f64)>> {
    let before: Vec<_> = pids
        .iter()
        .map(|p| proc_usage(*p))
        .collect::<Result<_, _>>()?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let wall = t0.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|(p, b)| {
            let a = proc_usage(*p)?;
            Ok((a.0, (a.1 - b.1).as_secs_f64() / wall * 100.0))
        })
        .collect()
}

/// `p50 … ms, max … ms (n=…)` of a set of latencies (benchmarks).
pub fn latency_summary(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "p50 {:.0} ms, max {:.0} ms (n={})",
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1]),
        v.len()
    )
}
