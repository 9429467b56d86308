//! Re-deal benchmark: `cargo bench -p bzzz --bench redeal` (prints a
//! Markdown table). For each holder count (5 and 15 by default) a loopback
//! cluster is set up (majority policy), then the key policy is switched
//! between `fixed:2` and `majority` `BENCH_TRIALS` times through one
//! node's API: each switch is a whole re-deal (t dealers, n new holders,
//! the epoch record threshold-signed, committed through Raft, adopted by
//! the API node). Figures: wall time of the request, p50 and max.
//!
//! Environment: `BENCH_TRIALS` (default 5), `BENCH_HOLDERS` (default
//! `5,15`).

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bzzz_testkit::{LocalCluster, LocalOpts, http, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let trials = std::env::var("BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize);
    let sizes: Vec<usize> = std::env::var("BENCH_HOLDERS")
        .unwrap_or_else(|_| "5,15".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!("## Re-deal benchmark ({trials} switches per size, binary {BIN})\n");
    println!("| holders | switch | re-deal + commit p50 | max |");
    println!("|---|---|---|---|");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("operator:{PASSWORD}"))
    );
    for n in sizes {
        let mut c = LocalCluster::start(Path::new(BIN), n, &LocalOpts::default())?;
        c.wait_formed(Duration::from_secs(60))?;
        c.init(0, PASSWORD)?;
        let addr = c.nodes[0].api().trim_start_matches("http://").to_owned();
        wait_until(
            "every node initialized",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let all_valid = c.nodes.iter().all(|p| {
                    p.get_json("/api/v1/keys")
                        .is_ok_and(|s| s["share_state"] == "valid")
                });
                // Node 0 (the coordinator) sees every member proven.
                let in_sight = c.nodes[0].get_json("/api/v1/members").is_ok_and(|m| {
                    m.as_array()
                        .is_some_and(|a| a.iter().filter(|v| v["state"] == "member").count() == n)
                });
                (all_valid && in_sight).then_some(())
            },
        )?;
        let mut times = Vec::new();
        for k in 0..trials {
            let policy = if k % 2 == 0 { "fixed:2" } else { "majority" };
            let t = Instant::now();
            let (code, text) = http::request(
                &addr,
                "POST",
                "/api/v1/keys/policy",
                &[("Authorization", basic.as_str())],
                &format!(r#"{{"policy":"{policy}"}}"#),
            )?;
            anyhow::ensure!(code == 200, "policy {policy}: {code} {text}");
            times.push(t.elapsed());
        }
        times.sort();
        let p50 = times[times.len() / 2];
        let max = times[times.len() - 1];
        println!(
            "| {n} | majority ↔ fixed:2 | {:.0} ms | {:.0} ms |",
            p50.as_secs_f64() * 1000.0,
            max.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
