//! Idle benchmark: `cargo bench -p bzzz --bench idle` (prints a Markdown
//! table). An initialized 5-node loopback cluster (setup through the CLI,
//! 3-of-5 admin key, Raft with 5 voters), left alone once a leader is
//! agreed: the CPU each node uses (user + system, from /proc) over the
//! window, leader marked. Target: every node under 1 % of a core.
//!
//! Environment: `BENCH_IDLE_SECS` (default 30), `BENCH_BIN` (another
//! `bzzz` binary to measure, e.g. an older release build for a before/after
//! figure), `BENCH_CONFIG` (a config file every node gets, e.g. to compare
//! heartbeat periods), `BENCH_SETUP=0` (the mesh alone: no setup, no Raft).

use std::path::PathBuf;
use std::time::Duration;

use bzzz_testkit::{LocalCluster, LocalOpts, NodeProc, idle_usage, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let secs: u64 = std::env::var("BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let bin = std::env::var("BENCH_BIN").map_or_else(|_| PathBuf::from(BIN), PathBuf::from);
    println!(
        "## Idle benchmark (5 nodes, initialized, {secs} s, binary {})\n",
        bin.display()
    );
    let opts = LocalOpts {
        extra_args: std::env::var("BENCH_CONFIG")
            .map(|f| vec!["--config".to_owned(), f])
            .unwrap_or_default(),
        ..Default::default()
    };
    let mut c = LocalCluster::start(&bin, 5, &opts)?;
    c.wait_formed(Duration::from_secs(20))?;
    if std::env::var("BENCH_SETUP").is_ok_and(|v| v == "0") {
        // The mesh alone (no setup, no Raft): for comparison.
        std::thread::sleep(Duration::from_secs(5));
        let pids: Vec<u32> = c.nodes.iter().filter_map(NodeProc::pid).collect();
        let usage = idle_usage(&pids, Duration::from_secs(secs))?;
        for (rss, cpu) in usage {
            println!(
                "| - | mesh only | {cpu:.2} % | {:.1} MiB |",
                rss as f64 / 1024.0
            );
        }
        return Ok(());
    }
    let pw = c.dir.path().join("operator-password");
    std::fs::write(&pw, format!("{PASSWORD}\n"))?;
    bzzz_testkit::act_as_operator(&pw, PASSWORD);
    let (api, pw) = (c.nodes[0].api(), pw.to_string_lossy().into_owned());
    let holders = c.holder_args(0);
    let mut args = vec![
        "init",
        "--api",
        &api,
        "--cluster",
        "idle",
        "--threshold",
        "3",
        "--shares",
        "5",
        "--operator-password-file",
        &pw,
        "--json",
    ];
    args.extend(holders.iter().map(String::as_str));
    let out = bzzz_testkit::cli(&bin.to_string_lossy(), &args);
    anyhow::ensure!(out.status.success(), "init failed: {out:?}");
    // One leader agreed by all, with 5 voters and the inventory recorded.
    let leader = wait_until(
        "a settled leader",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let views: Vec<serde_json::Value> = c
                .nodes
                .iter()
                .filter_map(|n| n.get_json("/api/v1/leader").ok())
                .collect();
            let first = views.first()?.get("leader")?.as_str()?.to_owned();
            (views.len() == 5
                && views.iter().all(|v| {
                    v["leader"].as_str() == Some(first.as_str())
                        && v["voters"].as_array().is_some_and(|a| a.len() == 5)
                }))
            .then_some(first)
        },
    )?;
    std::thread::sleep(Duration::from_secs(5));
    let pids: Vec<u32> = c.nodes.iter().filter_map(NodeProc::pid).collect();
    let usage = idle_usage(&pids, Duration::from_secs(secs))?;
    println!("| node | role | CPU (% of a core, mean over {secs} s) | RSS |\n|---|---|---|---|");
    let mut max = 0f64;
    for (i, (rss, cpu)) in usage.iter().copied().enumerate() {
        max = max.max(cpu);
        let role = if c.nodes[i].node_id() == leader {
            "leader"
        } else {
            "follower"
        };
        println!(
            "| {} | {role} | {cpu:.2} % | {:.1} MiB |",
            &c.nodes[i].node_id()[..12.min(c.nodes[i].node_id().len())],
            rss as f64 / 1024.0
        );
    }
    println!("\nmax {max:.2} % of a core (target < 1 %)");
    Ok(())
}
