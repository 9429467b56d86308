//! Router overhead: `cargo bench -p bzzz --bench serve` (needs
//! `TEST_PYTHON` with xllamacpp and `TEST_SMOLLM2_GGUF`; `scripts/bench.sh
//! serve` sets both up). Prints a Markdown table.
//!
//! Three nodes on 127.0.0.1: A adds SmolLM2-135M, B (the only declared
//! GPU) serves it with a managed llama.cpp backend, C routes. The same
//! client, one script: `BENCH_REQUESTS` (default 30) streaming chat
//! requests straight to B's backend, then as many through C's
//! `/v1/chat/completions` (C → B's API → B's backend), alternating.
//! Time to first token = request sent → first `data:` event; tokens/s
//! from the stream's chunks and the time between the first and the last.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bzzz_testkit::{LocalCluster, LocalOpts, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";

/// (time to first token, tokens per second) of one streaming request.
fn one(addr: &str, path: &str) -> anyhow::Result<(Duration, f64)> {
    let body = r#"{"model":"smollm2:135m","messages":[{"role":"user","content":"Tell me about the sea."}],"max_tokens":32,"stream":true}"#;
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut first: Option<Duration> = None;
    let mut last = Duration::ZERO;
    let mut events = 0usize;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let now = t0.elapsed();
        let before = count(&seen);
        seen.extend_from_slice(&buf[..n]);
        let after = count(&seen);
        if after > before {
            first.get_or_insert(now);
            last = now;
            events = after;
        }
    }
    let first = first.ok_or_else(|| anyhow::anyhow!("no event from {path}"))?;
    let span = (last - first).as_secs_f64();
    let tps = if span > 0.0 {
        (events.saturating_sub(1)) as f64 / span
    } else {
        0.0
    };
    Ok((first, tps))
}

fn count(b: &[u8]) -> usize {
    b.windows(6).filter(|w| w == b"data: ").count()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let (Some(python), Some(gguf)) = (
        std::env::var_os("TEST_PYTHON").map(PathBuf::from),
        std::env::var_os("TEST_SMOLLM2_GGUF").map(PathBuf::from),
    ) else {
        eprintln!(
            "skipped: set TEST_PYTHON (with xllamacpp) and TEST_SMOLLM2_GGUF (scripts/bench.sh serve does)"
        );
        return Ok(());
    };
    let n: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/serve-llamacpp.py");
    let mut c = LocalCluster::start(Path::new(BIN), 1, &LocalOpts::default())?;
    let cfg = c.dir.path().join("b.yaml");
    std::fs::write(
        &cfg,
        format!(
            "capabilities:\n  declared:\n    gpus:\n      - vendor: nvidia\n        model: bench (declared)\n        vram_total_bytes: 8589934592\n\
             serve:\n  managed:\n    command: [{py:?}, {script:?}, --model, \"{{model_path}}\", --port, \"{{port}}\", --threads, \"1\", --ctx, \"{{ctx}}\"]\n    ctx: 2048\n",
            py = python.to_string_lossy(),
            script = script.to_string_lossy(),
        ),
    )?;
    let b = c.add_node(&LocalOpts {
        extra_args: vec!["--config".into(), cfg.to_string_lossy().into_owned()],
        ..Default::default()
    })?;
    let cn = c.add_node(&LocalOpts::default())?;
    c.wait_formed(Duration::from_secs(20))?;
    let pw = c.init(0, PASSWORD)?;
    c.add_model(0, &gguf, "smollm2:135m", &pw, &[]);
    let port = wait_until(
        "B's backend is ready",
        Duration::from_secs(180),
        Duration::from_millis(250),
        || {
            let v = c.nodes[b].get_json("/api/v1/serve/backends").ok()?;
            v.as_array()?
                .iter()
                .find(|x| x["model"] == "smollm2:135m" && x["state"] == "ready")
                .and_then(|x| x["port"].as_u64())
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let direct = format!("127.0.0.1:{port}");
    let routed = c.nodes[cn].api().trim_start_matches("http://").to_owned();
    // Warm up both paths (model pages, connections).
    for _ in 0..3 {
        one(&direct, "/v1/chat/completions")?;
        one(&routed, "/v1/chat/completions")?;
    }
    let (mut d_ttft, mut r_ttft, mut d_tps, mut r_tps) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut diffs = Vec::new();
    for _ in 0..n {
        let (dt, dtps) = one(&direct, "/v1/chat/completions")?;
        let (rt, rtps) = one(&routed, "/v1/chat/completions")?;
        diffs.push(rt.saturating_sub(dt));
        d_ttft.push(dt);
        r_ttft.push(rt);
        d_tps.push(dtps);
        r_tps.push(rtps);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (d50, r50) = (pct(&mut d_ttft, 0.5), pct(&mut r_ttft, 0.5));
    let (d95, r95) = (pct(&mut d_ttft, 0.95), pct(&mut r_ttft, 0.95));
    let overhead = r50.as_secs_f64() * 1e3 - d50.as_secs_f64() * 1e3;
    println!(
        "| {n} streaming requests, SmolLM2-135M Q4_1, 1 thread | direct to the backend | through another node's router | goal |"
    );
    println!("|---|---|---|---|");
    println!(
        "| time to first token p50 / p95 | {:.1} / {:.1} ms | {:.1} / {:.1} ms | overhead p50 ≤ 5 ms: **{overhead:.1} ms** |",
        d50.as_secs_f64() * 1e3,
        d95.as_secs_f64() * 1e3,
        r50.as_secs_f64() * 1e3,
        r95.as_secs_f64() * 1e3,
    );
    println!(
        "| tokens/s (median) | {:.1} | {:.1} | |",
        med(&mut d_tps),
        med(&mut r_tps)
    );
    println!(
        "| per-pair difference p50 (routed − direct, same moment) | | {:.1} ms | |",
        pct(&mut diffs, 0.5).as_secs_f64() * 1e3
    );
    Ok(())
}
