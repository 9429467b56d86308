//! DHT benchmark: `cargo bench -p bzzz --bench dht` (prints a Markdown
//! table). For each cluster size (10 and 30 by default) a loopback
//! cluster is set up with one role every node is a member of; then
//! `BENCH_OPS` puts of 1 KiB values (through rotating nodes' APIs, an
//! operator session, so no password hashing per request) and as many gets
//! (through other nodes than the writer). Beside it, in the same process
//! and on the same machine, a 3-member etcd (Debian `etcd-server`) on
//! loopback takes the same puts and gets over its v3 JSON gateway
//! (linearizable reads, etcd's default). Each request is one HTTP/1.1
//! request on a new connection, for both.
//!
//! Environment: `BENCH_OPS` (default 200), `BENCH_NODES` (default
//! `10,30`).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bzzz_testkit::{LocalCluster, LocalOpts, http, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

/// `POST /login`; returns the session cookie.
fn login(addr: &str) -> anyhow::Result<String> {
    let body = format!(
        "password={}",
        serde_urlencoded::to_string([("", PASSWORD)])?.trim_start_matches('=')
    );
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "POST /login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    out.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("set-cookie")
                .then(|| v.trim().split(';').next().unwrap_or("").to_owned())
        })
        .filter(|c| c.starts_with("bzzz_session=") && c.len() > "bzzz_session=".len())
        .ok_or_else(|| anyhow::anyhow!("no session cookie: {out}"))
}

fn bench_bzzz(n: usize, ops: usize, value: &str) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let mut c = LocalCluster::start(Path::new(BIN), n, &LocalOpts::default())?;
    c.wait_formed(Duration::from_secs(120))?;
    // Setup needs every node in view at once; with 30 processes on a
    // small machine one may blink out of view meanwhile: start again.
    let pw = c.dir.path().join("operator-password");
    std::fs::write(&pw, format!("{PASSWORD}\n"))?;
    bzzz_testkit::act_as_operator(&pw, PASSWORD);
    let pw = pw.to_string_lossy().into_owned();
    let api0 = c.nodes[0].api();
    wait_until(
        "setup",
        Duration::from_secs(300),
        Duration::from_secs(2),
        || {
            let _ = c.wait_formed(Duration::from_secs(30));
            let holders = c.holder_args(0);
            let mut args = vec![
                "init",
                "--api",
                &api0,
                "--cluster",
                "lab",
                "--operator-password-file",
                &pw,
                "--json",
            ];
            args.extend(holders.iter().map(String::as_str));
            bzzz_testkit::cli(BIN, &args).status.success().then_some(())
        },
    )?;
    let ids: Vec<String> = (0..n).map(|i| c.nodes[i].node_id().to_owned()).collect();
    let mut args = vec!["role", "create", "bench", "--authority", "suggestion"];
    for id in &ids {
        args.extend(["--member", id]);
    }
    let api = c.nodes[0].api();
    args.extend(["--api", &api, "--operator-password-file", &pw]);
    wait_until(
        "the role",
        Duration::from_secs(60),
        Duration::from_millis(300),
        || bzzz_testkit::cli(BIN, &args).status.success().then_some(()),
    )?;
    let writers: Vec<usize> = (0..n.min(5)).collect();
    let cookies: Vec<String> = writers
        .iter()
        .map(|i| login(&c.nodes[*i].api_addr()))
        .collect::<anyhow::Result<_>>()?;
    let addr = |k: usize| format!("ucxl://bench:bench@bzzz:bench/*^/item/{k}");
    // Warm-up: the role's key is made at the first write.
    let body = serde_json::json!({"address": addr(999_999), "value": value}).to_string();
    wait_until(
        "the first write",
        Duration::from_secs(60),
        Duration::from_millis(300),
        || {
            let r = http::request(
                &c.nodes[0].api_addr(),
                "POST",
                "/api/v1/dht/put",
                &[("Cookie", &cookies[0])],
                &body,
            )
            .ok()?;
            (r.0 == 200).then_some(())
        },
    )?;
    let mut puts = Vec::with_capacity(ops);
    for k in 0..ops {
        let w = k % writers.len();
        let body = serde_json::json!({"address": addr(k % 50), "value": value}).to_string();
        let t = Instant::now();
        let (code, b) = http::request(
            &c.nodes[writers[w]].api_addr(),
            "POST",
            "/api/v1/dht/put",
            &[("Cookie", &cookies[w])],
            &body,
        )?;
        puts.push(t.elapsed());
        anyhow::ensure!(code == 200, "put: {code} {b}");
    }
    eprintln!(
        "{n} nodes: load average after the puts: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let mut gets = Vec::with_capacity(ops);
    for k in 0..ops {
        let reader = (k * 7 + 3) % n;
        let q = serde_urlencoded::to_string([("address", addr(k % 50))])?;
        let t = Instant::now();
        let (code, b) = http::get(&c.nodes[reader].api_addr(), &format!("/api/v1/dht/get?{q}"))?;
        gets.push(t.elapsed());
        anyhow::ensure!(code == 200, "get: {code} {b}");
    }
    Ok((puts, gets))
}

/// etcd's processes, and its data directory (removed on drop, after them).
struct Etcd {
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn bench_etcd(ops: usize, value: &str) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let dir = tempfile::Builder::new()
        .prefix("bzzz-bench-etcd-")
        .tempdir()?;
    let base = 23_000 + (std::process::id() % 500) as u16 * 10;
    let peer = |i: u16| format!("http://127.0.0.1:{}", base + 2 * i + 1);
    let client = |i: u16| format!("127.0.0.1:{}", base + 2 * i);
    let cluster = (0..3u16)
        .map(|i| format!("e{i}={}", peer(i)))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for i in 0..3u16 {
        let log = std::fs::File::create(dir.path().join(format!("etcd-{i}.log")))?;
        children.push(
            Command::new("etcd")
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("e{i}")))
                .args(["--listen-peer-urls", &peer(i)])
                .args(["--initial-advertise-peer-urls", &peer(i)])
                .args(["--listen-client-urls", &format!("http://{}", client(i))])
                .args(["--advertise-client-urls", &format!("http://{}", client(i))])
                .args(["--initial-cluster", &cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "bzzz-bench-dht"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()?,
        );
    }
    let etcd = Etcd {
        children,
        _dir: dir,
    };
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let put_body = |k: usize| {
        serde_json::json!({"key": b64(&format!("item/{k}")), "value": b64(value)}).to_string()
    };
    wait_until(
        "etcd to take writes",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let (code, _) =
                http::request(&client(0), "POST", "/v3/kv/put", &[], &put_body(999_999)).ok()?;
            (code == 200).then_some(())
        },
    )?;
    let mut puts = Vec::with_capacity(ops);
    for k in 0..ops {
        let t = Instant::now();
        let (code, b) = http::request(
            &client((k % 3) as u16),
            "POST",
            "/v3/kv/put",
            &[],
            &put_body(k % 50),
        )?;
        puts.push(t.elapsed());
        anyhow::ensure!(code == 200, "etcd put: {code} {b}");
    }
    let mut gets = Vec::with_capacity(ops);
    for k in 0..ops {
        let body = serde_json::json!({"key": b64(&format!("item/{}", k % 50))}).to_string();
        let t = Instant::now();
        let (code, b) = http::request(
            &client(((k + 1) % 3) as u16),
            "POST",
            "/v3/kv/range",
            &[],
            &body,
        )?;
        gets.push(t.elapsed());
        anyhow::ensure!(code == 200 && b.contains("\"kvs\""), "etcd get: {code} {b}");
    }
    drop(etcd);
    Ok((puts, gets))
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let ops = std::env::var("BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200usize);
    let sizes: Vec<usize> = std::env::var("BENCH_NODES")
        .unwrap_or_else(|_| "10,30".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let value = "x".repeat(1024);
    println!("## DHT benchmark ({ops} puts and {ops} gets of 1 KiB, binary {BIN})\n");
    println!("| system | put p50 | put p99 | get p50 | get p99 |");
    println!("|---|---|---|---|---|");
    let have_etcd = Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let etcd = if have_etcd {
        let (mut p, mut g) = bench_etcd(ops, &value)?;
        let row = (
            pct(&mut p, 0.5),
            pct(&mut p, 0.99),
            pct(&mut g, 0.5),
            pct(&mut g, 0.99),
        );
        println!(
            "| etcd 3.4, 3 members | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            row.0, row.1, row.2, row.3
        );
        Some(row)
    } else {
        eprintln!("etcd not found: install etcd-server for the baseline");
        None
    };
    let mut ratios = Vec::new();
    for n in sizes {
        let (mut p, mut g) = bench_bzzz(n, ops, &value)?;
        let row = (
            pct(&mut p, 0.5),
            pct(&mut p, 0.99),
            pct(&mut g, 0.5),
            pct(&mut g, 0.99),
        );
        println!(
            "| BZZZ DHT, {n} nodes, replication 3 | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            row.0, row.1, row.2, row.3
        );
        if let Some(e) = etcd {
            ratios.push(format!(
                "{n} nodes: put p50 {:.2}× etcd's (goal ≤ 3×), get p50 {:.2}× (goal ≤ 2×)",
                row.0 / e.0,
                row.2 / e.2
            ));
        }
    }
    println!();
    for r in ratios {
        println!("{r}");
    }
    Ok(())
}
