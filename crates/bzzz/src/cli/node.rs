//! `bzzz status`, `bzzz peers`: this node and its view, from the API.

use bzzz_proto::api::{PeerInfo, StatusResponse};

use super::ReadArgs;
use super::client::get;

fn gib(b: u64) -> String {
    format!("{:.1}G", b as f64 / (1u64 << 30) as f64)
}

pub async fn status(args: &ReadArgs) -> anyhow::Result<()> {
    let s: StatusResponse = get(&args.api, "/api/v1/status").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let c = &s.capabilities;
    println!("node id:      {}", s.node_id);
    println!("version:      {}", s.version);
    println!("uptime:       {}s", s.uptime_secs);
    println!("api:          {}", s.api_addr);
    println!(
        "peers:        {} live, {} connected, mDNS {}",
        s.peer_count,
        s.connected_peers,
        if s.mdns { "on" } else { "off" }
    );
    for a in &s.listen_addrs {
        println!("listen:       {a}");
    }
    println!(
        "cpu:          {} × {} (load {:.2})",
        c.cpu.cores, c.cpu.model, c.cpu.load_1m
    );
    println!(
        "memory:       {} free of {}",
        gib(c.memory_free_bytes),
        gib(c.memory_total_bytes)
    );
    println!(
        "disk:         {} free of {}",
        gib(c.disk_free_bytes),
        gib(c.disk_total_bytes)
    );
    if c.gpus.is_empty() {
        println!("gpus:         none");
    }
    for g in &c.gpus {
        println!(
            "gpu:          {} {} {}{}",
            g.vendor,
            g.model,
            gib(g.vram_total_bytes),
            if g.declared { " (declared)" } else { "" }
        );
    }
    println!(
        "ollama:       {}",
        if c.ollama.present {
            format!(
                "present, {} model(s)",
                c.ollama.model_count.unwrap_or(c.ollama.models.len())
            )
        } else {
            "absent".into()
        }
    );
    Ok(())
}

pub async fn peers(args: &ReadArgs) -> anyhow::Result<()> {
    let peers: Vec<PeerInfo> = get(&args.api, "/api/v1/peers").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&peers)?);
        return Ok(());
    }
    print!("{}", peers_table(&peers));
    Ok(())
}

/// Human table of peers.
pub fn peers_table(peers: &[PeerInfo]) -> String {
    let mut rows = vec![[
        "NODE".to_owned(),
        "CPU".into(),
        "LOAD".into(),
        "MEM FREE/TOTAL".into(),
        "GPUS".into(),
        "VRAM".into(),
        "OLLAMA".into(),
        "ZONE".into(),
        "LINK".into(),
        "SEEN".into(),
    ]];
    for p in peers {
        let c = &p.capabilities;
        rows.push([
            p.node_id.to_string(),
            c.cpu.cores.to_string(),
            format!("{:.2}", c.cpu.load_1m),
            format!("{}/{}", gib(c.memory_free_bytes), gib(c.memory_total_bytes)),
            c.gpus.len().to_string(),
            gib(c.vram_total_bytes()),
            if c.ollama.present {
                format!(
                    "{} models",
                    c.ollama.model_count.unwrap_or(c.ollama.models.len())
                )
            } else {
                "-".into()
            },
            c.labels.zone.clone().unwrap_or_else(|| "-".into()),
            if p.connected {
                "direct".into()
            } else {
                "relayed".into()
            },
            format!("{:.1}s ago", p.last_seen_ms_ago as f64 / 1000.0),
        ]);
    }
    let mut widths = [0usize; 10];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if peers.is_empty() {
        out.push_str("(no other live nodes)\n");
    }
    out
}
