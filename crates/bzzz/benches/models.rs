//! Model distribution benchmark: `cargo bench -p bzzz --bench models`
//! (root: network-namespace lab). Prints a Markdown table.
//!
//! One script, one lab: 5 hosts, every link capped at 200 Mbit/s both ways
//! (`tc tbf`, ENGINEERING.md §4); host 1 adds the models (no GPU: it is
//! only the source), hosts 2–5 declare a 24 GiB GPU. Default control
//! settings (heartbeat 100 ms, election 250–300 ms: the failover
//! benchmark's).
//! 1. iperf3, host 1 → host 2, 10 s: the link's real rate B.
//! 2. One receiver from one holder: a `BENCH_SINGLE_MIB` (256) MiB model
//!    pinned to host 2; rate = size / (time from `model add` returning to
//!    `ready`); goal ≥ 90 % of iperf3.
//! 3. Fan-out: a `BENCH_MIB` (512) MiB model, 4 copies (hosts 2–5); time
//!    until every copy is `ready`; goal ≤ 1.3 × S/B; the source's upload
//!    (its `model_bytes_uploaded`) ≤ 1.5 × S; Raft's term before and after
//!    (an election during the transfer would raise it).
//! 4. Baselines from host 1 with the same file: scp to hosts 2–5 one after
//!    another, and all four at once (sshd per host, key login).
//! 5. Robustness (printed, not timed): a third model to hosts 2–5; at about
//!    a third of the way a receiver (host 3) is killed and another
//!    (host 4) restarted: the others finish; host 4 resumes (its
//!    `model_pieces_resumed`) and fetches only what it lacked.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bzzz_testkit::lab::{self, Lab};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";
const RATE: &str = "200mbit";

fn env_mib(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A GGUF-headed file of `mib` MiB of pseudo-random data (incompressible).
fn make_model(path: &Path, mib: u64, seed: u64) -> anyhow::Result<()> {
    use bzzz_models::gguf::{Value as V, synthetic_header};
    use std::io::Write as _;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let head = synthetic_header(
        &[
            ("general.architecture", V::Str("llama".into())),
            ("general.file_type", V::Int(15)),
        ],
        &[("w", vec![1024, 1024])],
    );
    f.write_all(&head)?;
    let mut x = seed | 1;
    let mut left = mib * 1024 * 1024 - head.len() as u64;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn cli(lab: &Lab, i: usize, args: &[&str]) -> anyhow::Result<Output> {
    let bin = lab.bin.to_string_lossy().into_owned();
    let mut a = vec![bin.as_str()];
    a.extend_from_slice(args);
    lab.exec(i, &a)
}

fn add(lab: &Lab, file: &Path, name: &str, extra: &[&str]) -> anyhow::Result<Value> {
    let api = format!("http://{}:8080", lab.host(1).ip);
    let pw = lab.dir.path().join("operator-password");
    let file = file.to_string_lossy().into_owned();
    let pw = pw.to_string_lossy().into_owned();
    let mut args = vec![
        "model",
        "add",
        &file,
        "--name",
        name,
        "--api",
        &api,
        "--operator-password-file",
        &pw,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = cli(lab, 1, &args)?;
    anyhow::ensure!(
        out.status.success(),
        "model add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn ready_nodes(lab: &Lab, name: &str) -> Vec<String> {
    lab.get_json(1, &format!("/api/v1/models/{name}"))
        .and_then(|s| {
            s["nodes"].as_array().map(|a| {
                a.iter()
                    .filter(|n| n["state"] == "ready")
                    .filter_map(|n| n["node_id"].as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn wait_ready(
    lab: &Lab,
    name: &str,
    ids: &[String],
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let trace = std::env::var_os("BENCH_DEBUG").is_some();
    let mut last_trace = Instant::now();
    loop {
        if trace && last_trace.elapsed() >= Duration::from_secs(1) {
            last_trace = Instant::now();
            let p: Vec<String> = ids
                .iter()
                .map(|id| format!("{:.0}%", progress(lab, name, id) * 100.0))
                .collect();
            eprintln!(
                "  {:>5.1} s {name}: {}",
                t0.elapsed().as_secs_f64(),
                p.join(" ")
            );
        }
        let r = ready_nodes(lab, name);
        if ids.iter().all(|id| r.contains(id)) {
            return Ok(t0.elapsed());
        }
        anyhow::ensure!(
            t0.elapsed() < deadline,
            "{name} not ready on all of {ids:?} in {deadline:?}; ready: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric(lab: &Lab, i: usize, name: &str) -> u64 {
    lab.http(i, "GET", "/metrics", &[], "")
        .ok()
        .and_then(|(_, body)| {
            body.lines()
                .find_map(|l| l.strip_prefix(&format!("bzzz_{name}_total ")))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn term(lab: &Lab, i: usize) -> u64 {
    lab.get_json(i, "/api/v1/leader")
        .and_then(|v| v["term"].as_u64())
        .unwrap_or(0)
}

fn progress(lab: &Lab, name: &str, id: &str) -> f64 {
    lab.get_json(1, &format!("/api/v1/models/{name}"))
        .and_then(|s| {
            s["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["node_id"] == id)
                .map(|n| {
                    n["bytes_done"].as_f64().unwrap_or(0.0)
                        / n["bytes_total"].as_f64().unwrap_or(1.0)
                })
        })
        .unwrap_or(0.0)
}

fn iperf3(lab: &Lab) -> anyhow::Result<f64> {
    let ip = lab.host(2).ip.clone();
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.host(2).ns,
            "iperf3",
            "-s",
            "-1",
            "-B",
            &ip,
        ])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let out = lab.exec(1, &["iperf3", "-c", &ip, "-t", "10", "-J"])?;
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("iperf3: {}", String::from_utf8_lossy(&out.stdout)))
}

fn scp(lab: &Lab, file: &Path, targets: &[usize]) -> anyhow::Result<Duration> {
    let key = lab.dir.path().join("id_ed25519");
    let t0 = Instant::now();
    let kids: Vec<_> = targets
        .iter()
        .map(|&i| {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &lab.host(1).ns,
                    "scp",
                    "-O",
                    "-q",
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "LogLevel=ERROR",
                    "-i",
                ])
                .arg(&key)
                .arg(file)
                .arg(format!(
                    "root@{}:{}/copy.bin",
                    lab.host(i).ip,
                    lab::SSH_PREFIX
                ))
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut k in kids {
        anyhow::ensure!(k.wait()?.success(), "scp failed");
    }
    Ok(t0.elapsed())
}

fn main() -> anyhow::Result<()> {
    if !lab::available() {
        eprintln!("skipped: the models benchmark needs root (network namespaces)");
        return Ok(());
    }
    let single_mib = env_mib("BENCH_SINGLE_MIB", 256);
    let mib = env_mib("BENCH_MIB", 512);
    let mut lab = Lab::new(Path::new(BIN), 5)?;
    for i in 1..=5 {
        lab.cap_bandwidth(i, RATE)?;
    }
    let gpu = lab.dir.path().join("gpu.yaml");
    std::fs::write(
        &gpu,
        "capabilities:\n  declared:\n    gpus:\n      - vendor: nvidia\n        model: bench GPU (declared)\n        vram_total_bytes: 25769803776\n",
    )?;
    let gpu = gpu.to_string_lossy().into_owned();
    lab.start_node(1, &[])?;
    for i in 2..=5 {
        lab.start_node(i, &["--config", &gpu])?;
    }
    lab.wait_mesh(&[1, 2, 3, 4, 5], Duration::from_secs(30))?;
    lab.init_cluster(1, "bench", PASSWORD)?;
    let ids: Vec<String> = (1..=5).map(|i| lab.node(i).node_id().to_owned()).collect();
    // The control plane is up when every node names a leader.
    let t0 = Instant::now();
    while !(1..=5).all(|i| {
        lab.get_json(i, "/api/v1/leader")
            .is_some_and(|v| v["leader"].is_string())
    }) {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(30), "no leader");
        std::thread::sleep(Duration::from_millis(100));
    }

    let bps = iperf3(&lab)?;
    eprintln!("iperf3 host 1 → host 2: {:.1} Mbit/s", bps / 1e6);

    // 2. One receiver from one holder.
    let single = lab.dir.path().join("single.gguf");
    make_model(&single, single_mib, 7)?;
    let added = add(&lab, &single, "single:1", &["--pin", &ids[1]])?;
    let size1 = added["size_bytes"].as_f64().unwrap_or(0.0);
    let t_single = wait_ready(&lab, "single:1", &ids[1..2], Duration::from_secs(600))?;
    let single_bps = size1 * 8.0 / t_single.as_secs_f64();
    if std::env::var_os("BENCH_DEBUG").is_some() {
        for i in [1, 2] {
            let log = std::fs::read_to_string(&lab.node(i).log).unwrap_or_default();
            for l in log
                .lines()
                .filter(|l| l.contains("single") || l.contains("bzzz::models"))
            {
                eprintln!("  h{i}: {l}");
            }
        }
    }
    if std::env::var_os("BENCH_ONLY_SINGLE").is_some() {
        return Ok(());
    }
    eprintln!(
        "one receiver: {:.1} s, {:.1} Mbit/s ({:.0} % of iperf3)",
        t_single.as_secs_f64(),
        single_bps / 1e6,
        single_bps / bps * 100.0
    );

    // 3. Fan-out to 4.
    let fan = lab.dir.path().join("fan.gguf");
    make_model(&fan, mib, 11)?;
    let term0 = term(&lab, 1);
    let up0 = metric(&lab, 1, "model_bytes_uploaded");
    let added = add(&lab, &fan, "fan:1", &["--replicas", "4"])?;
    let size = added["size_bytes"].as_f64().unwrap_or(0.0);
    let t_fan = wait_ready(&lab, "fan:1", &ids[1..5], Duration::from_secs(900))?;
    let up = metric(&lab, 1, "model_bytes_uploaded") - up0;
    let term1 = term(&lab, 1);
    let one_copy = size * 8.0 / bps;
    eprintln!(
        "fan-out to 4: {:.1} s = {:.2} × S/B ({:.1} s); source uploaded {:.2} × S; term {term0} → {term1}",
        t_fan.as_secs_f64(),
        t_fan.as_secs_f64() / one_copy,
        one_copy,
        up as f64 / size
    );

    // 4. scp baselines.
    let keyfile = lab.dir.path().join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&keyfile)
        .status()?;
    anyhow::ensure!(st.success(), "ssh-keygen");
    let pubkey = lab.dir.path().join("id_ed25519.pub");
    for i in 2..=5 {
        lab.start_sshd(i, &pubkey, false)?;
    }
    let mut seq = Duration::ZERO;
    for i in 2..=5 {
        seq += scp(&lab, &fan, &[i])?;
    }
    let par = scp(&lab, &fan, &[2, 3, 4, 5])?;
    eprintln!(
        "scp sequential {:.1} s, parallel {:.1} s",
        seq.as_secs_f64(),
        par.as_secs_f64()
    );
    for i in 2..=5 {
        lab.stop_sshd(i);
    }

    // 5. Robustness: a receiver killed, another restarted mid-transfer.
    let rob = lab.dir.path().join("rob.gguf");
    make_model(&rob, mib, 13)?;
    let resumed0 = metric(&lab, 4, "model_pieces_resumed");
    add(&lab, &rob, "rob:1", &["--replicas", "4"])?;
    let t0 = Instant::now();
    while progress(&lab, "rob:1", &ids[3]) < 0.33 {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(300),
            "no progress on host 4"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = progress(&lab, "rob:1", &ids[3]);
    lab.node_mut(3).kill9();
    lab.node_mut(4).kill9();
    lab.start_node(4, &["--config", &gpu])?;
    let survivors = [ids[1].clone(), ids[3].clone(), ids[4].clone()];
    let t_rob = wait_ready(&lab, "rob:1", &survivors, Duration::from_secs(600))?;
    let resumed = metric(&lab, 4, "model_pieces_resumed").max(resumed0);
    let fetched_after = metric(&lab, 4, "model_bytes_fetched");
    let blob = lab.node(4).data_dir.join("ollama/blobs");
    let ok = std::fs::read_dir(&blob)?.count() >= 2;
    eprintln!(
        "robustness: host 3 killed and host 4 restarted at {:.0} %; survivors ready {:.1} s later; host 4 resumed {resumed} pieces, fetched {:.0} MiB after the restart; blobs in place: {ok}",
        before * 100.0,
        t_rob.as_secs_f64(),
        fetched_after as f64 / 1048576.0
    );

    println!("| measurement | figure | goal |");
    println!("|---|---|---|");
    println!(
        "| iperf3, one 200 Mbit/s link | {:.1} Mbit/s | |",
        bps / 1e6
    );
    println!(
        "| one receiver from one holder ({single_mib} MiB) | {:.1} s, {:.1} Mbit/s = {:.0} % of iperf3 | ≥ 90 % |",
        t_single.as_secs_f64(),
        single_bps / 1e6,
        single_bps / bps * 100.0
    );
    println!(
        "| BZZZ fan-out, 1 → 4 ({mib} MiB), every copy ready | {:.1} s = {:.2} × S/B (S/B = {:.1} s) | ≤ 1.3 × |",
        t_fan.as_secs_f64(),
        t_fan.as_secs_f64() / one_copy,
        one_copy
    );
    println!(
        "| source upload during the fan-out | {:.2} × S | ≤ 1.5 × |",
        up as f64 / size
    );
    println!("| Raft term before → after the fan-out | {term0} → {term1} | unchanged |");
    println!("| scp sequential, 1 → 4 | {:.1} s | |", seq.as_secs_f64());
    println!("| scp parallel, 1 → 4 | {:.1} s | |", par.as_secs_f64());
    println!(
        "| receiver killed + receiver restarted at {:.0} % | survivors ready after {:.1} s; {resumed} pieces resumed, {:.0} MiB fetched after the restart | finish; no refetch |",
        before * 100.0,
        t_rob.as_secs_f64(),
        fetched_after as f64 / 1048576.0
    );
    Ok(())
}
