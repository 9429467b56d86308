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

/// `bzzz demo --model-gguf`: the cluster places and serves SmolLM2-135M
/// (a real model; `TEST_SMOLLM2_GGUF`, `TEST_PYTHON` with xllamacpp and
/// `openai`), the OpenAI Python SDK gets an answer through the base URL
/// the demo prints, and an agent takes the sample task, works it with the
/// served model, and pushes its branch to the sample repository.
#[test]
fn demo_serves_a_model_and_an_agent_delivers_the_sample_task() {
    let (Some(gguf), Some(python)) = (
        std::env::var_os("TEST_SMOLLM2_GGUF"),
        std::env::var_os("TEST_PYTHON"),
    ) else {
        eprintln!("skipped: set TEST_SMOLLM2_GGUF and TEST_PYTHON (scripts/test.sh does)");
        return;
    };
    if bzzz_agents::sandbox::check_tools().is_err() {
        eprintln!("skipped: the agents' sandbox (bubblewrap) is missing");
        return;
    }
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/serve-llamacpp.py");
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--nodes",
            "2",
            "--base-port",
            "0",
            "--json",
            "--model-gguf",
        ])
        .arg(&gguf)
        .arg("--python")
        .arg(&python)
        .arg("--serve-script")
        .arg(&script)
        .env_remove("BZZZ_API")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::sync_channel(2);
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        for _ in 0..2 {
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
        }
    });
    let mut next = |what: &str, secs| match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(l) => serde_json::from_str::<serde_json::Value>(&l)
            .unwrap_or_else(|e| panic!("{what}: {e}: {l:?}")),
        Err(e) => {
            let _ = child.kill();
            panic!("the demo printed no {what}: {e}");
        }
    };
    let table = next("node table", 60);
    let ai = next("model line", 600);
    let first = table[0]["api"].as_str().expect("api").to_owned();
    let password_file = std::path::Path::new(table[0]["data_dir"].as_str().expect("dir"))
        .parent()
        .expect("demo dir")
        .join("operator-password");
    let key = std::fs::read_to_string(ai["api_key_file"].as_str().expect("key file"))
        .expect("key")
        .trim()
        .to_owned();
    // The OpenAI SDK through the base URL the demo printed.
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys, openai\n\
c = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2])\n\
r = c.chat.completions.create(model=sys.argv[3], messages=[{'role': 'user', 'content': 'Say hello.'}], max_tokens=16)\n\
print(r.choices[0].message.content)",
        ])
        .arg(ai["openai_base_url"].as_str().expect("base url"))
        .arg(&key)
        .arg(ai["model"].as_str().expect("model"))
        .output()
        .expect("python");
    assert!(
        out.status.success() && !out.stdout.trim_ascii().is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The agent delivers the sample task.
    let task = bzzz_testkit::wait_until(
        "the sample task ends",
        Duration::from_secs(300),
        Duration::from_millis(500),
        || {
            let o = Command::new(BIN)
                .args([
                    "task",
                    "ls",
                    "--api",
                    &first,
                    "--json",
                    "--operator-password-file",
                ])
                .arg(&password_file)
                .output()
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
            v.as_array()?
                .iter()
                .find(|t| {
                    t["id"] == "hello"
                        && ["done", "failed", "needs-human"]
                            .contains(&t["state"].as_str().unwrap_or_default())
                })
                .cloned()
        },
    )
    .unwrap_or_else(|e| {
        let _ = child.kill();
        panic!("{e}")
    });
    assert_eq!(task["state"], "done", "{task}");
    let repo = ai["repo"].as_str().expect("repo");
    let shown = Command::new("git")
        .args(["-C", repo, "show", "bzzz/task-hello:hello.txt"])
        .output()
        .expect("git");
    let hello = String::from_utf8_lossy(&shown.stdout);
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("ctrl-c");
    let st = bzzz_testkit::wait_until(
        "demo exit",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || child.try_wait().ok().flatten(),
    )
    .expect("demo stops");
    assert!(st.success(), "{st}");
    assert_eq!(hello.trim_end(), "Hello from BZZZ", "{task}");
}
