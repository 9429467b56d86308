//! Multi-host lab: hosts in network namespaces on one bridge.
//!
//! Layout for lab number `X` (allocated per run, 1..=250):
//! * namespace `bzlXsw` holds bridge `br0` and one veth `pN` per host;
//! * namespace `bzlXhN` is host N with `eth0` = `10.77.X.N/24`, `lo` up, and
//!   a multicast route so mDNS works on the lab link only;
//! * the root namespace gets `blackhole 10.77.X.0/24`, so lab traffic can
//!   never leave this machine.
//!
//! Allocation is atomic (`ip netns add bzlXsw` fails if taken). A lab whose
//! owning process died (pid file in `/run/bzzz-lab/`) is cleaned up and
//! reused. [`Lab`] tears everything down on drop, also when a test panics, and
//! then prints the hosts' log tails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::NodeProc;

const PID_DIR: &str = "/run/bzzz-lab";

/// Whether namespace tests can run here. Without root they are skipped with
/// a message, except under CI (`CI` set), where that is a failure.
pub fn available() -> bool {
    let root = rustix::process::geteuid().is_root();
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && ip {
        return true;
    }
    let why = if !root {
        "root"
    } else {
        "the `ip` command (iproute2)"
    };
    if std::env::var_os("CI").is_some() {
        panic!("network-namespace tests need {why}, and CI must run them");
    }
    eprintln!("SKIPPED: network-namespace tests need {why}");
    false
}

fn run(args: &[&str]) -> anyhow::Result<Output> {
    let mut c = Command::new(args[0]);
    c.args(&args[1..]);
    // bzzz commands act as the operator once the lab set one.
    if let Some((file, _)) = crate::operator() {
        c.env("BZZZ_OPERATOR_PASSWORD_FILE", file);
    }
    let out = c
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    Ok(out)
}

fn must(args: &[&str]) -> anyhow::Result<()> {
    let out = run(args)?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One lab host.
#[derive(Debug, Clone)]
pub struct Host {
    /// 1-based index.
    pub index: usize,
    /// Namespace name.
    pub ns: String,
    pub ip: String,
}

/// A running lab; see the module docs.
#[derive(Debug)]
pub struct Lab {
    pub id: u8,
    pub sw: String,
    pub hosts: Vec<Host>,
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Option<NodeProc>>,
    route: bool,
    sshd: Vec<(usize, std::process::Child)>,
}

/// The install prefix that is private to each host with an sshd (see
/// [`Lab::start_sshd`]).
pub const SSH_PREFIX: &str = "/run/bzzz-lab/prefix";

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn delete_lab_namespaces(id: u8) {
    let prefix = format!("bzl{id}");
    if let Ok(out) = run(&["ip", "netns", "list"]) {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(&prefix) && name[prefix.len()..].starts_with(['h', 's']) {
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
    }
    let _ = run(&[
        "ip",
        "route",
        "del",
        "blackhole",
        &format!("10.77.{id}.0/24"),
    ]);
}

impl Lab {
    /// Creates `n` hosts (1..=200) for `bin`.
    pub fn new(bin: &Path, n: usize) -> anyhow::Result<Lab> {
        anyhow::ensure!((1..=200).contains(&n), "a lab has 1 to 200 hosts");
        std::fs::create_dir_all(PID_DIR)?;
        let me = std::process::id();
        let mut id = None;
        for x in 1..=250u8 {
            let sw = format!("bzl{x}sw");
            if run(&["ip", "netns", "add", &sw])?.status.success() {
                id = Some(x);
                break;
            }
            // Taken: reclaim it if its owner is gone.
            let pidfile = format!("{PID_DIR}/{x}.pid");
            let owner = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            if owner.is_some_and(|p| !pid_alive(p)) {
                delete_lab_namespaces(x);
                let _ = std::fs::remove_file(&pidfile);
                if run(&["ip", "netns", "add", &sw])?.status.success() {
                    id = Some(x);
                    break;
                }
            }
        }
        let id = id.context("no free lab number (250 labs in use?)")?;
        std::fs::write(format!("{PID_DIR}/{id}.pid"), me.to_string())?;
        let mut lab = Lab {
            id,
            sw: format!("bzl{id}sw"),
            hosts: Vec::new(),
            bin: bin.to_path_buf(),
            dir: tempfile::Builder::new()
                .prefix(&format!("bzzz-lab{id}-"))
                .tempdir()?,
            nodes: Vec::new(),
            route: false,
            sshd: Vec::new(),
        };
        // From here on, Drop cleans up whatever exists.
        let net = format!("10.77.{id}.0/24");
        let r = run(&["ip", "route", "add", "blackhole", &net])?;
        lab.route = r.status.success();
        let sw = lab.sw.clone();
        must(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        must(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
        for i in 1..=n {
            let ns = format!("bzl{id}h{i}");
            let ip = format!("10.77.{id}.{i}");
            must(&["ip", "netns", "add", &ns])?;
            lab.hosts.push(Host {
                index: i,
                ns: ns.clone(),
                ip: ip.clone(),
            });
            lab.nodes.push(None);
            let p = format!("p{i}");
            must(&[
                "ip", "-n", &sw, "link", "add", &p, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            must(&["ip", "-n", &sw, "link", "set", &p, "master", "br0", "up"])?;
            must(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ])?;
            must(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            must(&[
                "ip",
                "-n",
                &ns,
                "route",
                "add",
                "224.0.0.0/4",
                "dev",
                "eth0",
            ])?;
        }
        Ok(lab)
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i - 1]
    }

    /// Runs a command inside host `i`'s namespace.
    pub fn exec(&self, i: usize, args: &[&str]) -> anyhow::Result<Output> {
        let ns = &self.host(i).ns;
        let mut full = vec!["ip", "netns", "exec", ns.as_str()];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Starts `bzzz node run` on host `i` with the defaults (mDNS on, P2P on
    /// 0.0.0.0:4140) and HTTP on the host's IP, plus `extra` arguments.
    pub fn start_node(&mut self, i: usize, extra: &[&str]) -> anyhow::Result<()> {
        self.start_nodes(&[i], extra)
    }

    /// Starts nodes on several hosts at once (all spawned, then all awaited).
    pub fn start_nodes(&mut self, hosts: &[usize], extra: &[&str]) -> anyhow::Result<()> {
        for &i in hosts {
            self.spawn_node(i, extra)?;
        }
        for &i in hosts {
            self.node_mut(i).wait_ready(Duration::from_secs(20))?;
        }
        Ok(())
    }

    fn spawn_node(&mut self, i: usize, extra: &[&str]) -> anyhow::Result<()> {
        let h = self.host(i).clone();
        let data_dir = self.dir.path().join(format!("h{i}"));
        let log = self.dir.path().join(format!("h{i}.log"));
        let mut args: Vec<String> = vec![
            "node".into(),
            "run".into(),
            "--data-dir".into(),
            data_dir.to_string_lossy().into_owned(),
            "--http".into(),
            format!("{}:8080", h.ip),
            "--models-dir".into(),
            data_dir.join("ollama").to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let prefix = vec!["ip".to_owned(), "netns".into(), "exec".into(), h.ns.clone()];
        let p = NodeProc::spawn(&format!("h{i}"), &self.bin, &prefix, args, data_dir, log)?;
        self.nodes[i - 1] = Some(p);
        Ok(())
    }

    pub fn node(&self, i: usize) -> &NodeProc {
        self.nodes[i - 1].as_ref().expect("node started")
    }

    pub fn node_mut(&mut self, i: usize) -> &mut NodeProc {
        self.nodes[i - 1].as_mut().expect("node started")
    }

    /// Node ids host `i` lists, asked through the real CLI inside the host.
    pub fn cli_peer_ids(&self, i: usize) -> anyhow::Result<Vec<String>> {
        let api = format!("http://{}:8080", self.host(i).ip);
        let bin = self.bin.to_string_lossy().into_owned();
        let out = self.exec(i, &[&bin, "peers", "--json", "--api", &api])?;
        if !out.status.success() {
            bail!(
                "bzzz peers on h{i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v.as_array()
            .context("peers is not an array")?
            .iter()
            .filter_map(|p| p["node_id"].as_str().map(str::to_owned))
            .collect())
    }

    /// An HTTP request to host `i`'s API (`IP:8080`), made from inside its
    /// namespace (a thread that joins it), so no process is spawned.
    pub fn http(
        &self,
        i: usize,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> anyhow::Result<(u16, String)> {
        self.http_port(i, 8080, method, path, headers, body)
    }

    /// [`Lab::http`] to another port of host `i` (e.g. a baseline service).
    pub fn http_port(
        &self,
        i: usize,
        port: u16,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> anyhow::Result<(u16, String)> {
        let ip = self.host(i).ip.clone();
        self.run_in(i, || {
            crate::http::request(&format!("{ip}:{port}"), method, path, headers, body)
        })?
    }

    /// Runs `f` on a thread inside host `i`'s network namespace: every
    /// socket it opens is the host's (e.g. a WebDriver client talking to a
    /// chromedriver started in that host).
    pub fn run_in<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let ns = self.host(i).ns.clone();
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = std::fs::File::open(format!("/var/run/netns/{ns}"))
                    .with_context(|| format!("open namespace {ns}"))?;
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&file),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .with_context(|| format!("enter namespace {ns}"))?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in host {i} panicked"))?
        })
    }

    /// A JSON GET through [`Lab::http`]; `None` unless 200 with JSON.
    pub fn get_json(&self, i: usize, path: &str) -> Option<serde_json::Value> {
        match self.http(i, "GET", path, &[], "") {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// Drops all traffic between the hosts of `a` and those of `b` (both
    /// ways, inside each host's namespace): a partition where each side
    /// still talks among itself.
    pub fn partition(&self, a: &[usize], b: &[usize]) -> anyhow::Result<()> {
        for (side, other) in [(a, b), (b, a)] {
            for &i in side {
                for &j in other {
                    let ip = self.host(j).ip.clone();
                    let out =
                        self.exec(i, &["iptables", "-A", "INPUT", "-s", &ip, "-j", "DROP"])?;
                    if !out.status.success() {
                        bail!(
                            "iptables in h{i}: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes every partition rule.
    pub fn unpartition(&self) -> anyhow::Result<()> {
        for h in &self.hosts {
            let out = self.exec(h.index, &["iptables", "-F", "INPUT"])?;
            if !out.status.success() {
                bail!(
                    "iptables -F in h{}: {}",
                    h.index,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// Waits until every host in `hosts` lists all the others (real CLI).
    pub fn wait_mesh(&self, hosts: &[usize], deadline: Duration) -> anyhow::Result<()> {
        crate::wait_until(
            "every host in the mesh",
            deadline,
            Duration::from_millis(100),
            || {
                hosts
                    .iter()
                    .all(|&i| {
                        self.cli_peer_ids(i)
                            .is_ok_and(|p| p.len() == hosts.len() - 1)
                    })
                    .then_some(())
            },
        )
    }

    /// `bzzz init` through host `i`'s API (inside its namespace), with the
    /// operator password written to a file in the lab dir; every peer in
    /// host `i`'s view holds a share.
    pub fn init_cluster(&self, i: usize, cluster: &str, password: &str) -> anyhow::Result<()> {
        let pw = self.dir.path().join("operator-password");
        std::fs::write(&pw, format!("{password}\n"))?;
        crate::act_as_operator(&pw, password);
        let api = format!("http://{}:8080", self.host(i).ip);
        let bin = self.bin.to_string_lossy().into_owned();
        let pw = pw.to_string_lossy().into_owned();
        // The lab trusts every node of its own in view to hold a share.
        let peers = self.cli_peer_ids(i)?;
        let mut args = vec![
            bin.as_str(),
            "init",
            "--api",
            &api,
            "--cluster",
            cluster,
            "--operator-password-file",
            &pw,
            "--json",
        ];
        for p in &peers {
            args.extend(["--holder", p.as_str()]);
        }
        let out = self.exec(i, &args)?;
        if !out.status.success() {
            bail!("bzzz init: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Cuts host `i` off the bridge (no FIN, no RST: a real partition).
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        must(&[
            "ip",
            "-n",
            &self.sw,
            "link",
            "set",
            &format!("p{i}"),
            "down",
        ])
    }

    /// Reconnects host `i`.
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        must(&["ip", "-n", &self.sw, "link", "set", &format!("p{i}"), "up"])?;
        let ns = &self.host(i).ns;
        must(&[
            "ip",
            "-n",
            ns,
            "route",
            "replace",
            "224.0.0.0/4",
            "dev",
            "eth0",
        ])
    }

    /// Caps host `i`'s bandwidth in both directions (e.g. `"200mbit"`).
    pub fn cap_bandwidth(&self, i: usize, rate: &str) -> anyhow::Result<()> {
        let tbf = [
            "root", "tbf", "rate", rate, "burst", "256kbit", "latency", "50ms",
        ];
        let p = format!("p{i}");
        let mut a = vec![
            "ip",
            "netns",
            "exec",
            self.sw.as_str(),
            "tc",
            "qdisc",
            "replace",
            "dev",
            p.as_str(),
        ];
        a.extend_from_slice(&tbf);
        must(&a)?;
        let ns = self.host(i).ns.clone();
        let mut b = vec![
            "ip",
            "netns",
            "exec",
            ns.as_str(),
            "tc",
            "qdisc",
            "replace",
            "dev",
            "eth0",
        ];
        b.extend_from_slice(&tbf);
        must(&b)
    }

    /// Starts a real `sshd` on host `i` (port 22 on its IP) that accepts the
    /// public key in `authorized_keys` for root. It runs in its own mount
    /// namespace where [`SSH_PREFIX`] is a private directory of this host
    /// (`<lab dir>/root-hN`), so deploys into that prefix stay per host
    /// although the hosts share one file system. A host key is created on
    /// first start and kept across restarts unless `new_host_key`.
    pub fn start_sshd(
        &mut self,
        i: usize,
        authorized_keys: &Path,
        new_host_key: bool,
    ) -> anyhow::Result<()> {
        self.stop_sshd(i);
        let h = self.host(i).clone();
        let dir = self.dir.path().join(format!("sshd-h{i}"));
        let root = self.dir.path().join(format!("root-h{i}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all("/run/sshd")?;
        std::fs::create_dir_all(SSH_PREFIX)?;
        let key = dir.join("ssh_host_ed25519_key");
        if new_host_key {
            let _ = std::fs::remove_file(&key);
            let _ = std::fs::remove_file(dir.join("ssh_host_ed25519_key.pub"));
        }
        if !key.exists() {
            must(&[
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                &key.to_string_lossy(),
            ])?;
        }
        std::fs::copy(authorized_keys, dir.join("authorized_keys"))?;
        let cfg = dir.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "Port 22\nListenAddress {ip}\nHostKey {key}\nAuthorizedKeysFile {ak}\nPidFile {pid}\n\
                 UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nMaxStartups 100\nMaxSessions 100\nLogLevel ERROR\n",
                ip = h.ip,
                key = key.display(),
                ak = dir.join("authorized_keys").display(),
                pid = dir.join("sshd.pid").display(),
            ),
        )?;
        let script = format!(
            "mount --bind '{root}' '{SSH_PREFIX}' && exec /usr/sbin/sshd -D -e -f '{cfg}'",
            root = root.display(),
            cfg = cfg.display()
        );
        let log = std::fs::File::create(dir.join("sshd.log"))?;
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &h.ns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
            ])
            .args(["sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start sshd")?;
        self.sshd.push((i, child));
        // Ready when port 22 accepts connections.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let probe = self.exec(i, &["bash", "-c", &format!("exec 3<>/dev/tcp/{}/22", h.ip)]);
            if probe.is_ok_and(|o| o.status.success()) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "sshd on host {i} did not start: {}",
                    std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `bzzz deploy --json` inside host `seed` (whose node was
    /// initialized with [`Lab::init_cluster`]) to `targets`, logging in as
    /// root with the key `<lab dir>/id_ed25519` and installing into
    /// [`SSH_PREFIX`]; `extra` arguments are appended.
    pub fn deploy(&self, seed: usize, targets: &[usize], extra: &[&str]) -> anyhow::Result<Output> {
        let key = self.dir.path().join("id_ed25519");
        let pw = self.dir.path().join("operator-password");
        let hosts: Vec<String> = targets.iter().map(|i| self.host(*i).ip.clone()).collect();
        let api = format!("http://{}:8080", self.host(seed).ip);
        let bin = self.bin.to_string_lossy().into_owned();
        let (key, pw, hosts) = (
            key.to_string_lossy().into_owned(),
            pw.to_string_lossy().into_owned(),
            hosts.join(","),
        );
        let mut args = vec![
            bin.as_str(),
            "deploy",
            "--api",
            &api,
            "--operator-password-file",
            &pw,
            "--hosts",
            &hosts,
            "--ssh-user",
            "root",
            "--ssh-key",
            &key,
            "--prefix",
            SSH_PREFIX,
            "--json",
        ];
        args.extend_from_slice(extra);
        self.exec(seed, &args)
    }

    /// Stops host `i`'s sshd (sessions and what they started keep running).
    pub fn stop_sshd(&mut self, i: usize) {
        self.sshd.retain_mut(|(h, c)| {
            if *h == i {
                let _ = c.kill();
                let _ = c.wait();
                false
            } else {
                true
            }
        });
    }

    /// Kills every process in host `i`'s namespace (nodes started by a
    /// deploy, sshd sessions).
    pub fn kill_all_in(&self, i: usize) {
        if let Ok(out) = run(&["ip", "netns", "pids", &self.host(i).ns]) {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(p) = pid.parse::<i32>()
                    && let Some(p) = rustix::process::Pid::from_raw(p)
                {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
        }
    }

    /// Every started node's log tail.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .flatten()
            .map(|n| format!("--- {} ({}) ---\n{}", n.name, n.node_id(), n.log_tail(15)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("lab {} logs:\n{}", self.id, self.logs());
        }
        for n in self.nodes.iter_mut().flatten() {
            n.kill9();
        }
        for (_, c) in &mut self.sshd {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 1..=self.hosts.len() {
            self.kill_all_in(i);
        }
        for h in &self.hosts {
            let _ = run(&["ip", "netns", "del", &h.ns]);
        }
        let _ = run(&["ip", "netns", "del", &self.sw]);
        if self.route {
            let _ = run(&[
                "ip",
                "route",
                "del",
                "blackhole",
                &format!("10.77.{}.0/24", self.id),
            ]);
        }
        let _ = std::fs::remove_file(format!("{PID_DIR}/{}.pid", self.id));
    }
}
