//! Mesh benchmark: `cargo bench -p bzzz --bench mesh` (prints a Markdown table).
//!
//! * idle RSS and CPU of a node in a formed 4-node loopback cluster;
//! * join: a new node's process start → listed by all 4 others;
//! * leave after `kill -9` → dropped by all others;
//! * in the namespace lab (root only): a host cut off the bridge (no FIN/RST)
//!   → dropped by the others, and healed → listed again.
//!
//! Environment: `BENCH_TRIALS` (default 5), `BENCH_IDLE_SECS` (default 20).

use std::path::Path;
use std::time::{Duration, Instant};

use bzzz_testkit::lab::{self, Lab};
use bzzz_testkit::{LocalCluster, LocalOpts, NodeProc, idle_usage, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const POLL: Duration = Duration::from_millis(10);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

use bzzz_testkit::latency_summary as stats;

fn all_list(nodes: &[&NodeProc], id: &str, present: bool) -> bool {
    nodes
        .iter()
        .all(|n| n.peer_ids().unwrap_or_default().iter().any(|p| p == id) == present)
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo test --benches` asks for a list; nothing to list
    }
    let trials = env_num("BENCH_TRIALS", 5) as usize;
    let idle_secs = env_num("BENCH_IDLE_SECS", 20);
    let bin = Path::new(BIN);
    println!("## Mesh benchmark ({} trials, binary {})\n", trials, BIN);

    let mut c = LocalCluster::start(bin, 4, &LocalOpts::default())?;
    c.wait_formed(Duration::from_secs(10))?;

    // Idle footprint.
    std::thread::sleep(Duration::from_secs(3));
    let pids: Vec<u32> = c.nodes.iter().filter_map(NodeProc::pid).collect();
    let usage = idle_usage(&pids, Duration::from_secs(idle_secs))?;
    let rss_max = usage.iter().map(|u| u.0).max().unwrap_or(0);
    let cpu_max = usage.iter().map(|u| u.1).fold(0f64, f64::max);
    println!("| measure | result | target |\n|---|---|---|");
    println!(
        "| idle node RSS (max of 4, 4-node cluster) | {:.1} MiB | < 30 MiB |",
        rss_max as f64 / 1024.0
    );
    println!("| idle node CPU (max of 4, over {idle_secs}s) | {cpu_max:.2} % of a core | < 1 % |");

    // Join and leave on loopback.
    let mut joins = Vec::new();
    let mut leaves = Vec::new();
    for _ in 0..trials {
        let t = Instant::now();
        let i = c.add_node(&LocalOpts::default())?;
        let id = c.nodes[i].node_id().to_owned();
        let others: Vec<&NodeProc> = c.nodes[..4].iter().collect();
        wait_until("join", Duration::from_secs(15), POLL, || {
            all_list(&others, &id, true).then_some(())
        })?;
        joins.push(t.elapsed());
        let t = Instant::now();
        c.nodes[i].kill9();
        let others: Vec<&NodeProc> = c.nodes[..4].iter().collect();
        wait_until("leave", Duration::from_secs(15), POLL, || {
            all_list(&others, &id, false).then_some(())
        })?;
        leaves.push(t.elapsed());
        c.nodes.pop();
    }
    println!(
        "| new node appears in all 4 views (from process start) | {} | < 2 s |",
        stats(joins)
    );
    println!(
        "| killed node (kill -9) leaves all 4 views | {} | < 5 s |",
        stats(leaves)
    );
    drop(c);

    // Partition in the namespace lab.
    if !lab::available() {
        println!("\n(namespace lab skipped: needs root)");
        return Ok(());
    }
    let mut lab = Lab::new(bin, 5)?;
    lab.start_nodes(&[1, 2, 3, 4, 5], &[])?;
    let t = Instant::now();
    // The lab is only reachable from inside its namespaces (the root namespace
    // blackholes it), so views are read with the real CLI run inside each host;
    // one poll of 4 hosts costs ~4 process starts, which bounds the resolution.
    let lists = |lab: &Lab, hosts: &[usize], id: &str, present: bool| {
        hosts.iter().all(|&i| {
            lab.cli_peer_ids(i)
                .unwrap_or_default()
                .iter()
                .any(|p| p == id)
                == present
        })
    };
    wait_until("mDNS formation", Duration::from_secs(15), POLL, || {
        (1..=5)
            .all(|i| lab.cli_peer_ids(i).unwrap_or_default().len() == 4)
            .then_some(())
    })?;
    println!(
        "| 5 namespace hosts, mDNS only, all see all (after all started) | {:.0} ms | < 5 s |",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let mut cut = Vec::new();
    let mut heal = Vec::new();
    for k in 0..trials {
        let victim = 1 + (k % 5);
        let id = lab.node(victim).node_id().to_owned();
        let others: Vec<usize> = (1..=5).filter(|i| *i != victim).collect();
        let t = Instant::now();
        lab.cut(victim)?;
        wait_until("partition leave", Duration::from_secs(20), POLL, || {
            lists(&lab, &others, &id, false).then_some(())
        })?;
        cut.push(t.elapsed());
        let t = Instant::now();
        lab.heal(victim)?;
        wait_until("heal", Duration::from_secs(30), POLL, || {
            lists(&lab, &others, &id, true).then_some(())
        })?;
        heal.push(t.elapsed());
    }
    println!(
        "| host cut off (no FIN/RST) leaves all 4 views | {} | < 5 s |",
        stats(cut)
    );
    println!("| healed host back in all 4 views | {} | — |", stats(heal));
    Ok(())
}
