//! `bzzz demo`: forms a local cluster, prints its nodes, and cleans up on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");

#[test]
fn demo_forms_a_cluster_and_cleans_up_on_ctrl_c() {
    let dir = run_demo_until_ctrl_c(&[]);
    assert!(!dir.exists(), "{} should be removed", dir.display());
}

#[test]
fn demo_keep_leaves_the_directory_with_the_logs() {
    let dir = run_demo_until_ctrl_c(&["--keep"]);
    assert!(
        dir.join("node-0.log").is_file(),
        "{} should be kept",
        dir.display()
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// Runs a 3-node demo, checks it formed, stops it with SIGINT, checks every
/// node stopped; returns the demo directory.
fn run_demo_until_ctrl_c(extra: &[&str]) -> std::path::PathBuf {
    let mut child = Command::new(BIN)
        .args(["demo", "--nodes", "3", "--base-port", "0", "--json"])
        .args(extra)
        .env_remove("BZZZ_API")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(40)) {
        Ok(l) => l,
        Err(e) => {
            let _ = child.kill();
            panic!("demo printed no node table: {e}");
        }
    };
    let table: serde_json::Value = serde_json::from_str(&line).expect("one JSON line");
    let nodes = table.as_array().expect("array");
    assert_eq!(nodes.len(), 3);
    let dir = std::path::PathBuf::from(nodes[0]["data_dir"].as_str().expect("dir"))
        .parent()
        .expect("demo dir")
        .to_path_buf();
    for n in nodes {
        let api = n["api"]
            .as_str()
            .expect("api")
            .trim_start_matches("http://");
        let peers = bzzz_testkit::http::get_json(api, "/api/v1/peers").expect("peers");
        assert_eq!(peers.as_array().map(Vec::len), Some(2), "{peers}");
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("ctrl-c");
    let st = bzzz_testkit::wait_until(
        "demo exit",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || child.try_wait().ok().flatten(),
    )
    .expect("demo stops");
    assert!(st.success(), "{st}");
    for n in nodes {
        let api = n["api"]
            .as_str()
            .expect("api")
            .trim_start_matches("http://");
        assert!(
            bzzz_testkit::http::get(api, "/api/v1/status").is_err(),
            "node {api} still running"
        );
    }
    dir
}
