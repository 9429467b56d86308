//! Ollama detection. Ollama itself cannot be installed here, so its HTTP API
//! is played by `FakeOllama` (named as a fake: it serves the two endpoints
//! BZZZ reads, with bodies shaped like Ollama's). The model-store path uses a
//! real directory in Ollama's on-disk layout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bzzz_testkit::{LocalCluster, LocalOpts, wait_until};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");

/// A fake Ollama API on 127.0.0.1 (answers forever). While `up` is false
/// it answers 503, like an Ollama that is still starting.
struct FakeOllama {
    addr: String,
    up: Arc<AtomicBool>,
}

impl FakeOllama {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let up = Arc::new(AtomicBool::new(true));
        let up2 = up.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let mut s = s;
                let mut line = String::new();
                let _ = BufReader::new(&s).read_line(&mut line);
                if !up2.load(Ordering::SeqCst) {
                    let _ = write!(
                        s,
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    continue;
                }
                let body = if line.contains("/api/tags") {
                    r#"{"models":[{"name":"smollm2:135m","model":"smollm2:135m","size":101000000,"digest":"4d2396b16114aa6f3d5fd1b4c3c5c3a8a4f8d6e1a0b2c3d4e5f60718293a4b5c"}]}"#
                } else if line.contains("/api/version") {
                    r#"{"version":"0.9.0-fake"}"#
                } else {
                    "{}"
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeOllama { addr, up }
    }
}

fn node_with_config(yaml: &str) -> (tempfile::TempDir, LocalCluster) {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, yaml).expect("write");
    let opts = LocalOpts {
        extra_args: vec!["--config".into(), cfg.to_string_lossy().into_owned()],
        ..Default::default()
    };
    let c = LocalCluster::start(std::path::Path::new(BIN), 1, &opts).expect("start");
    (dir, c)
}

#[test]
fn ollama_models_are_read_from_its_http_api() {
    let fake = FakeOllama::start();
    let (_d, c) = node_with_config(&format!(
        "capabilities:\n  ollama_url: http://{}\n",
        fake.addr
    ));
    let s = c.nodes[0].get_json("/api/v1/status").expect("status");
    let o = &s["capabilities"]["ollama"];
    assert_eq!(o["present"], true);
    assert_eq!(o["api_reachable"], true);
    assert_eq!(o["version"], "0.9.0-fake");
    assert_eq!(o["models"][0]["name"], "smollm2:135m");
    assert!(
        o["models"][0]["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
}

#[test]
fn ollama_models_are_read_from_its_store_when_the_api_is_down() {
    let store = tempfile::tempdir().expect("tmp");
    let m = store
        .path()
        .join("manifests/registry.ollama.ai/library/smollm2");
    std::fs::create_dir_all(&m).expect("mkdir");
    std::fs::write(
        m.join("135m"),
        r#"{"schemaVersion":2,"config":{"size":487},"layers":[{"size":100000000}]}"#,
    )
    .expect("write");
    // Port 9: nothing answers, so the store is the only source.
    let (_d, c) = node_with_config(&format!(
        "capabilities:\n  ollama_url: http://127.0.0.1:9\n  ollama_models_dir: {}\n",
        store.path().display()
    ));
    let n = &c.nodes[0];
    let s = n.get_json("/api/v1/status").expect("status");
    let o = &s["capabilities"]["ollama"];
    assert_eq!(o["present"], true);
    assert_eq!(o["api_reachable"], false);
    assert_eq!(o["models"][0]["name"], "smollm2:135m");
    assert_eq!(o["models"][0]["size_bytes"], 100000487u64);
}

#[test]
fn a_node_without_ollama_says_absent() {
    let empty = tempfile::tempdir().expect("tmp");
    let (_d, c) = node_with_config(&format!(
        "capabilities:\n  ollama_url: http://127.0.0.1:9\n  ollama_models_dir: {}/nothing\n",
        empty.path().display()
    ));
    let s = c.nodes[0].get_json("/api/v1/status").expect("status");
    assert_eq!(s["capabilities"]["ollama"]["present"], false);
}

#[test]
fn a_capability_change_reaches_the_peers_without_a_restart() {
    let fake = FakeOllama::start();
    fake.up.store(false, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!("capabilities:\n  ollama_url: http://{}\n  refresh_interval: 1s\n  ollama_models_dir: /nonexistent\n", fake.addr),
    )
    .expect("write");
    let mut c =
        LocalCluster::start(std::path::Path::new(BIN), 1, &LocalOpts::default()).expect("start");
    c.add_node(&LocalOpts {
        extra_args: vec!["--config".into(), cfg.to_string_lossy().into_owned()],
        ..Default::default()
    })
    .expect("ollama node");
    c.wait_formed(Duration::from_secs(10)).expect("formed");
    let present = |c: &LocalCluster| {
        c.nodes[0]
            .get_json("/api/v1/peers")
            .ok()
            .map(|p| p[0]["capabilities"]["ollama"]["present"] == true)
    };
    assert_eq!(present(&c), Some(false));
    fake.up.store(true, Ordering::SeqCst); // "Ollama finished starting"
    wait_until(
        "the peer to see Ollama appear",
        Duration::from_secs(8),
        Duration::from_millis(100),
        || present(&c).filter(|p| *p),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}
