//! Leader failover benchmark: `cargo bench -p bzzz --bench control` (root:
//! network-namespace lab). Prints a Markdown table.
//!
//! One script, one topology, two systems: 5 hosts in network namespaces on
//! one bridge. For each system, the leader is killed with SIGKILL
//! `BENCH_KILLS` times (default 12); the figure is the time from the kill
//! until every surviving member names the same new leader (polled every
//! 10 ms over HTTP from inside the namespaces). The killed member is
//! restarted and rejoins, and the cluster settles for 2 s, before the next
//! kill.
//!
//! * BZZZ: `bzzz node run` on each host (defaults: heartbeat 100 ms,
//!   election timeout 250–300 ms), initialized with `bzzz init`; leader from
//!   `GET /api/v1/leader`.
//! * etcd (Debian `etcd-server` 3.4, default timeouts: heartbeat 100 ms,
//!   election 1000 ms): a 5-member static cluster; leader from
//!   `POST /v3/maintenance/status` on each member.
//!
//! Needs `etcd` on PATH for the baseline (`apt-get install etcd-server`);
//! without it only BZZZ is measured. `BENCH_BIN` measures another `bzzz`
//! binary (e.g. a release build while the harness runs from a test build).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bzzz_testkit::lab::{self, Lab};
use bzzz_testkit::wait_until;

const BIN_BUILT: &str = env!("CARGO_BIN_EXE_bzzz");

fn bin() -> std::path::PathBuf {
    std::env::var("BENCH_BIN").map_or_else(|_| BIN_BUILT.into(), Into::into)
}
const PASSWORD: &str = "a long operator password";
const N: usize = 5;
/// Pause after a killed member has rejoined, before the next kill: the
/// figure is the failover of a settled cluster (same for both systems).
const SETTLE: Duration = Duration::from_secs(2);

fn kills() -> usize {
    std::env::var("BENCH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12)
}

fn summary(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let p50 = v[v.len() / 2];
    let max = *v.last().unwrap_or(&Duration::ZERO);
    let min = v[0];
    (min, p50, max)
}

// ---- BZZZ -----------------------------------------------------------------

fn bzzz_leader(lab: &Lab, i: usize) -> Option<(String, u64)> {
    let v = lab.get_json(i, "/api/v1/leader")?;
    Some((v["leader"].as_str()?.to_owned(), v["term"].as_u64()?))
}

fn bzzz_agreed(lab: &Lab, hosts: &[usize]) -> Option<String> {
    let views: Vec<(String, u64)> = hosts
        .iter()
        .map(|i| bzzz_leader(lab, *i))
        .collect::<Option<_>>()?;
    views
        .iter()
        .all(|v| *v == views[0])
        .then(|| views[0].0.clone())
}

fn bench_bzzz() -> anyhow::Result<Vec<Duration>> {
    let mut lab = Lab::new(&bin(), N)?;
    let hosts: Vec<usize> = (1..=N).collect();
    lab.start_nodes(&hosts, &[])?;
    lab.wait_mesh(&hosts, Duration::from_secs(20))?;
    lab.init_cluster(1, "bench", PASSWORD)?;
    let mut times = vec![];
    for k in 0..kills() {
        let leader = wait_until(
            "a leader",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || bzzz_agreed(&lab, &hosts),
        )?;
        let li = (1..=N)
            .find(|i| lab.node(*i).node_id() == leader)
            .ok_or_else(|| anyhow::anyhow!("leader {leader} is not a lab node"))?;
        let alive: Vec<usize> = hosts.iter().copied().filter(|h| *h != li).collect();
        let t0 = Instant::now();
        lab.node_mut(li).kill9();
        wait_until(
            "a new leader",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || bzzz_agreed(&lab, &alive).filter(|l| *l != leader),
        )?;
        let dt = t0.elapsed();
        eprintln!("bzzz kill {k}: h{li} → new leader in {dt:?}");
        if dt > Duration::from_millis(700) && std::env::var_os("BENCH_DEBUG").is_some() {
            for i in &alive {
                let log = std::fs::read_to_string(&lab.node(*i).log).unwrap_or_default();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        !l.contains("DEBUG bzzz_net::swarm: dial failed")
                            && !l.contains("peer subscribed")
                    })
                    .collect();
                eprintln!(
                    "--- h{i}\n{}",
                    lines[lines.len().saturating_sub(25)..].join("\n")
                );
            }
        }
        times.push(dt);
        let bin = lab.bin.clone();
        lab.node_mut(li).restart(&bin)?;
        lab.node_mut(li).wait_ready(Duration::from_secs(20))?;
        // Rejoined: it follows the same leader as everyone; then the
        // cluster settles before the next kill (as for etcd).
        wait_until(
            "the restarted node to rejoin",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || bzzz_agreed(&lab, &hosts),
        )?;
        std::thread::sleep(SETTLE);
    }
    Ok(times)
}

// ---- etcd -----------------------------------------------------------------

struct Etcd {
    children: Vec<Option<Child>>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn etcd_spawn(lab: &Lab, i: usize, cluster: &str) -> anyhow::Result<Child> {
    let h = lab.host(i);
    let data = lab.dir.path().join(format!("etcd-{i}"));
    let log = std::fs::File::create(lab.dir.path().join(format!("etcd-{i}.log")))?;
    Ok(Command::new("ip")
        .args(["netns", "exec", &h.ns, "etcd"])
        .args(["--name", &format!("h{i}")])
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen-peer-urls", &format!("http://{}:2380", h.ip)])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://{}:2380", h.ip),
        ])
        .args(["--listen-client-urls", &format!("http://{}:2379", h.ip)])
        .args(["--advertise-client-urls", &format!("http://{}:2379", h.ip)])
        .args(["--initial-cluster", cluster])
        .args(["--initial-cluster-state", "new"])
        .args(["--initial-cluster-token", "bzzz-bench"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()?)
}

/// (member id, leader id) as member `i` reports them.
fn etcd_status(lab: &Lab, i: usize) -> Option<(String, String)> {
    let (code, body) = lab
        .http_port(i, 2379, "POST", "/v3/maintenance/status", &[], "{}")
        .ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let leader = v["leader"].as_str()?.to_owned();
    let me = v["header"]["member_id"].as_str()?.to_owned();
    (leader != "0").then_some((me, leader))
}

fn etcd_agreed(lab: &Lab, hosts: &[usize]) -> Option<(String, usize)> {
    let views: Vec<(usize, String, String)> = hosts
        .iter()
        .map(|i| etcd_status(lab, *i).map(|(me, l)| (*i, me, l)))
        .collect::<Option<_>>()?;
    let leader = views[0].2.clone();
    if !views.iter().all(|v| v.2 == leader) {
        return None;
    }
    let host = views.iter().find(|v| v.1 == leader)?.0;
    Some((leader, host))
}

fn bench_etcd() -> anyhow::Result<Vec<Duration>> {
    let lab = Lab::new(&bin(), N)?;
    let hosts: Vec<usize> = (1..=N).collect();
    let cluster = hosts
        .iter()
        .map(|i| format!("h{i}=http://{}:2380", lab.host(*i).ip))
        .collect::<Vec<_>>()
        .join(",");
    let mut etcd = Etcd {
        children: hosts
            .iter()
            .map(|i| etcd_spawn(&lab, *i, &cluster).map(Some))
            .collect::<anyhow::Result<_>>()?,
    };
    let mut times = vec![];
    for k in 0..kills() {
        let (leader, li) = wait_until(
            "an etcd leader",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || etcd_agreed(&lab, &hosts),
        )?;
        let alive: Vec<usize> = hosts.iter().copied().filter(|h| *h != li).collect();
        let t0 = Instant::now();
        if let Some(mut c) = etcd.children[li - 1].take() {
            c.kill()?; // SIGKILL
            c.wait()?;
        }
        wait_until(
            "a new etcd leader",
            Duration::from_secs(15),
            Duration::from_millis(10),
            || etcd_agreed(&lab, &alive).filter(|(l, _)| *l != leader),
        )?;
        let dt = t0.elapsed();
        eprintln!("etcd kill {k}: h{li} → new leader in {dt:?}");
        times.push(dt);
        etcd.children[li - 1] = Some(etcd_spawn(&lab, li, &cluster)?);
        wait_until(
            "the restarted etcd member to rejoin",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || etcd_agreed(&lab, &hosts),
        )?;
        std::thread::sleep(SETTLE);
    }
    Ok(times)
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    if !lab::available() {
        return Ok(());
    }
    let b = bench_bzzz()?;
    let have_etcd = Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let e = if have_etcd {
        Some(bench_etcd()?)
    } else {
        eprintln!("etcd not found: install etcd-server for the baseline");
        None
    };
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!(
        "\n### Leader failover after SIGKILL (5 hosts, namespace lab, {} kills)\n",
        b.len()
    );
    println!("| system | min | p50 | max |");
    println!("|---|---|---|---|");
    let (bmin, bp50, bmax) = summary(b);
    println!(
        "| BZZZ (openraft over libp2p) | {} | {} | {} |",
        ms(bmin),
        ms(bp50),
        ms(bmax)
    );
    if let Some(e) = e {
        let (emin, ep50, emax) = summary(e);
        println!(
            "| etcd 3.4 (default timeouts) | {} | {} | {} |",
            ms(emin),
            ms(ep50),
            ms(emax)
        );
        println!(
            "\nBZZZ p50 / etcd p50 = {:.2}",
            bp50.as_secs_f64() / ep50.as_secs_f64()
        );
    }
    Ok(())
}
