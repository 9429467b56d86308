//! Nodes as real processes on 127.0.0.1 (mDNS off, one bootstrap address).

use std::time::Duration;

use bzzz_testkit::{LocalCluster, LocalOpts, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");

fn bin() -> &'static std::path::Path {
    std::path::Path::new(BIN)
}

#[test]
fn four_nodes_see_each_other_with_capabilities_and_drop_a_killed_one() {
    let mut c = LocalCluster::start(bin(), 4, &LocalOpts::default()).expect("start");
    let formed = c
        .wait_formed(Duration::from_secs(10))
        .expect("formed within 10s");
    eprintln!("formed in {formed:?}");

    // The contract: `bzzz peers --json` lists the 3 others with capabilities.
    for n in &c.nodes {
        let out = std::process::Command::new(BIN)
            .args(["peers", "--json", "--api", &n.api()])
            .output()
            .expect("run cli");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let peers: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let peers = peers.as_array().expect("array");
        assert_eq!(
            peers.len(),
            3,
            "{} lists {peers:?}\n{}",
            n.node_id(),
            c.logs()
        );
        for p in peers {
            assert!(p["node_id"].is_string());
            assert_ne!(p["node_id"], n.node_id());
            assert!(
                p["capabilities"]["memory_total_bytes"]
                    .as_u64()
                    .is_some_and(|m| m > 0)
            );
            assert!(
                p["capabilities"]["cpu"]["cores"]
                    .as_u64()
                    .is_some_and(|c| c > 0)
            );
        }
    }

    // Kill -9 the bootstrap node itself: the others must not depend on it.
    let victim = c.nodes[0].node_id().to_owned();
    c.nodes[0].kill9();
    let survivors = &c.nodes[1..];
    let took = std::time::Instant::now();
    wait_until(
        "the killed node to leave every view",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || {
            survivors
                .iter()
                .all(|n| {
                    let ids = n.peer_ids().unwrap_or_default();
                    !ids.contains(&victim) && ids.len() == 2
                })
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    eprintln!("dead node left all views in {:?}", took.elapsed());
}

#[test]
fn a_restarted_bootstrap_node_is_found_again() {
    let mut c = LocalCluster::start(bin(), 3, &LocalOpts::default()).expect("start");
    c.wait_formed(Duration::from_secs(10)).expect("formed");
    // Restart node 0 on the same P2P port so the others' bootstrap address holds.
    let tcp = c.nodes[0].tcp_addr().expect("tcp addr");
    let port = tcp
        .split("/tcp/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("port")
        .to_owned();
    let n0 = &mut c.nodes[0];
    for a in n0.args.iter_mut() {
        if a == "/ip4/127.0.0.1/tcp/0" {
            *a = format!("/ip4/127.0.0.1/tcp/{port}");
        }
    }
    let id = n0.node_id().to_owned();
    n0.restart(bin()).expect("restart");
    n0.wait_ready(Duration::from_secs(20)).expect("ready");
    assert_eq!(n0.node_id(), id, "identity persists across restarts");
    c.wait_formed(Duration::from_secs(20))
        .expect("re-formed after restart");
}

#[test]
fn status_metrics_openapi_and_web_page_are_served() {
    let c = LocalCluster::start(bin(), 1, &LocalOpts::default()).expect("start");
    let n = &c.nodes[0];
    let s = n.get_json("/api/v1/status").expect("status");
    assert_eq!(s["node_id"], n.node_id());
    assert!(
        s["capabilities"]["disk_total_bytes"]
            .as_u64()
            .is_some_and(|d| d > 0)
    );
    let doc = n.get_json("/api/v1/openapi.json").expect("openapi");
    assert_eq!(doc["openapi"], "3.1.0");
    let addr = &n.info.as_ref().expect("info").api_addr;
    let (code, metrics) = bzzz_testkit::http::get(addr, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("bzzz_peers 0"), "{metrics}");
    assert!(metrics.contains("bzzz_memory_total_bytes"), "{metrics}");
    let (code, page) = bzzz_testkit::http::get(addr, "/").expect("page");
    assert_eq!(code, 200);
    assert!(page.contains(n.node_id()));
    let (code, _) = bzzz_testkit::http::get(addr, "/api/v1/nope").expect("404");
    assert_eq!(code, 404);

    let out = std::process::Command::new(BIN)
        .args(["status", "--json", "--api", &n.api()])
        .output()
        .expect("cli");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["node_id"], n.node_id());
}

#[test]
fn sigterm_and_sigint_stop_a_node_cleanly_within_5s() {
    let mut c = LocalCluster::start(bin(), 2, &LocalOpts::default()).expect("start");
    c.wait_formed(Duration::from_secs(10)).expect("formed");
    for (i, sig) in [
        (1, rustix::process::Signal::TERM),
        (0, rustix::process::Signal::INT),
    ] {
        let (st, took) = c.nodes[i]
            .signal_and_wait(sig, Duration::from_secs(5))
            .expect("exits within 5s");
        assert!(st.success(), "{sig:?} -> {st}");
        eprintln!("{sig:?}: exit 0 in {took:?}");
    }
}

#[test]
fn declared_gpu_and_labels_reach_the_peers_marked_declared() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("gpu.yaml");
    std::fs::write(
        &cfg,
        "labels:\n  zone: lab-a\n  extra: {owner: tests}\ncapabilities:\n  declared:\n    gpus:\n      - {vendor: nvidia, model: H100, vram_total_bytes: 85899345920}\n",
    )
    .expect("write");
    let mut c = LocalCluster::start(bin(), 1, &LocalOpts::default()).expect("start");
    c.add_node(&LocalOpts {
        extra_args: vec!["--config".into(), cfg.to_string_lossy().into_owned()],
        ..Default::default()
    })
    .expect("gpu node");
    c.wait_formed(Duration::from_secs(10)).expect("formed");
    let peers = c.nodes[0].get_json("/api/v1/peers").expect("peers");
    let gpu_node = &peers[0]["capabilities"];
    assert_eq!(gpu_node["gpus"][0]["model"], "H100");
    assert_eq!(gpu_node["gpus"][0]["declared"], true);
    assert_eq!(gpu_node["gpus"][0]["vram_total_bytes"], 85899345920u64);
    assert_eq!(gpu_node["labels"]["zone"], "lab-a");
    assert_eq!(gpu_node["labels"]["extra"]["owner"], "tests");
}

#[test]
fn an_unreachable_bootstrap_is_reported_and_the_node_keeps_running() {
    // Port 9 on loopback: nothing listens there (connection refused).
    let opts = LocalOpts {
        extra_args: vec!["--bootstrap".into(), "/ip4/127.0.0.1/tcp/9".into()],
        ..Default::default()
    };
    let mut c = LocalCluster::start(bin(), 1, &opts).expect("start");
    let n = &mut c.nodes[0];
    wait_until(
        "the unreachable bootstrap to be logged",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            n.log_tail(200)
                .contains("bootstrap peer unreachable")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail(30)));
    assert!(n.is_running(), "the node must keep running");
    assert!(n.get_json("/api/v1/status").is_ok());
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let opts = LocalOpts {
        extra_args: vec!["--log-format".into(), "json".into()],
        ..Default::default()
    };
    let mut c = LocalCluster::start(bin(), 1, &opts).expect("start");
    let n = &mut c.nodes[0];
    n.signal_and_wait(rustix::process::Signal::TERM, Duration::from_secs(5))
        .expect("stops");
    let log = std::fs::read_to_string(&n.log).expect("log");
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "{log}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    assert!(log.contains("node started"));
}
