//! Agents with a real model: `cargo bench -p bzzz --bench agents`.
//! Prints a Markdown table for `docs/benchmarks.md`.
//!
//! One node places and serves SmolLM2-135M (the cluster's own model
//! distribution and managed llama.cpp backend; needs `TEST_PYTHON` with
//! xllamacpp and `TEST_SMOLLM2_GGUF`, as `scripts/test.sh` sets up) and
//! works trivial tasks from a repository served by `git http-backend`,
//! asking the model through its own inference router with an API key.
//! Each task's result is checked on the pushed branch. `BENCH_PER_KIND`
//! (default 7) tasks of each kind: create a file with given content,
//! append a line, replace a word, each kind in three wordings and with
//! varied words.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bzzz_testkit::forge::GitServer;
use bzzz_testkit::{LocalCluster, LocalOpts, wait_until};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";
const MODEL: &str = "smollm2:135m";

/// A task: its text, seed files (path, content), the path to check and
/// the content expected there.
type Made = (String, Vec<(String, String)>, String, String);

struct Kind {
    name: &'static str,
    make: fn(usize) -> Made,
}

/// A word for task `i` (the tasks vary in wording and content).
fn word(i: usize) -> &'static str {
    [
        "hello", "sunny", "seven", "apple", "green", "quiet", "north",
    ][i % 7]
}

const KINDS: [Kind; 3] = [
    Kind {
        name: "create a file with given content",
        make: |i| {
            let (p, w) = (format!("notes/c{i}.txt"), word(i));
            let text = match i % 3 {
                0 => format!("Create the file {p} containing exactly the text: {w} {i}"),
                1 => format!("Make a new file {p} whose whole content is: {w} {i}"),
                _ => format!("Write the text `{w} {i}` into a new file named {p}."),
            };
            (text, vec![], p, format!("{w} {i}"))
        },
    },
    Kind {
        name: "append a line",
        make: |i| {
            let (p, w) = (format!("list/a{i}.txt"), word(i));
            let text = match i % 3 {
                0 => format!(
                    "Append the line: {w} {i}\nto the end of the file {p} (keep its first line)."
                ),
                1 => format!("Add the line `{w} {i}` at the end of {p}."),
                _ => format!("{p} needs one more line at its end: {w} {i}"),
            };
            (
                text,
                vec![(p.clone(), "alpha\n".into())],
                p,
                format!("alpha\n{w} {i}"),
            )
        },
    },
    Kind {
        name: "replace a word",
        make: |i| {
            let p = format!("words/r{i}.txt");
            let (o, n) = [
                ("cat", "dog"),
                ("sun", "moon"),
                ("red", "blue"),
                ("fox", "wolf"),
                ("tea", "milk"),
                ("old", "new"),
                ("big", "small"),
            ][i % 7];
            let text = match i % 3 {
                0 => format!("In the file {p}, replace the word {o} with the word {n}."),
                1 => format!("Change every {o} to {n} in {p}."),
                _ => format!("In {p}, the word {o} should read {n} instead."),
            };
            (
                text,
                vec![(p.clone(), format!("The {o} sat on mat {i}.\n"))],
                p,
                format!("The {n} sat on mat {i}."),
            )
        },
    },
];

fn main() {
    let (Some(python), Some(gguf)) = (
        std::env::var_os("TEST_PYTHON").map(PathBuf::from),
        std::env::var_os("TEST_SMOLLM2_GGUF").map(PathBuf::from),
    ) else {
        eprintln!("skipped: set TEST_PYTHON (with xllamacpp) and TEST_SMOLLM2_GGUF");
        return;
    };
    if let Err(e) = bzzz_agents::sandbox::check_tools() {
        eprintln!("skipped: {e}");
        return;
    }
    let per_kind: usize = std::env::var("BENCH_PER_KIND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let root = tempfile::tempdir().expect("git root");
    let git = GitServer::start(root.path()).expect("git server");
    let mut files: Vec<(String, String)> = Vec::new();
    let mut expect = Vec::new();
    for (k, kind) in KINDS.iter().enumerate() {
        for i in 0..per_kind {
            let id = format!("k{k}-{i}");
            let (text, seeds, path, want) = (kind.make)(i);
            files.push((
                format!("tasks/{id}.md"),
                format!("---\nid: {id}\n---\n{text}\n"),
            ));
            files.extend(seeds);
            expect.push((id, k, path, want));
        }
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    git.create("real", &refs).expect("repo");

    let key_file = tempfile::NamedTempFile::new().expect("key file");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/serve-llamacpp.py");
    let mut c = LocalCluster::start(Path::new(BIN), 0, &LocalOpts::default()).expect("start");
    let opts = c
        .config(
            "agent",
            &format!(
                "capabilities:\n  declared:\n    gpus:\n      - vendor: nvidia\n        model: L4 (declared)\n        vram_total_bytes: 8589934592\n\
                 serve:\n  managed:\n    command: [{py:?}, {script:?}, --model, \"{{model_path}}\", --port, \"{{port}}\", --threads, \"2\", --ctx, \"{{ctx}}\"]\n    ctx: 4096\n\
                 agents:\n  enabled: true\n  max_tasks: 1\n  model: {MODEL}\n  api_key_file: {key:?}\n  lease: 1m\n  poll_every: 1s\n  command_timeout: 20s\n",
                py = python.to_string_lossy(),
                script = script.to_string_lossy(),
                key = key_file.path().to_string_lossy(),
            ),
        )
        .expect("config");
    c.add_node(&opts).expect("node");
    c.wait_formed(Duration::from_secs(30)).expect("formed");
    let pw = c.init(0, PASSWORD).expect("init");
    let api = c.nodes[0].api();
    c.add_model(0, &gguf, MODEL, &pw, &[]);
    wait_until(
        "the backend is ready",
        Duration::from_secs(300),
        Duration::from_millis(500),
        || {
            let v = c.nodes[0].get_json("/api/v1/serve/backends").ok()?;
            v.as_array()?
                .iter()
                .any(|x| x["model"] == MODEL && x["state"] == "ready")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // The agent's own API key (`infer` on the model).
    let key = wait_until(
        "an API key",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let out = bzzz_testkit::cli(
                BIN,
                &[
                    "apikey",
                    "create",
                    "--role",
                    "backend_developer",
                    "--api",
                    &api,
                    "--json",
                ],
            );
            out.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&out.stdout).ok())
                .flatten()
                .and_then(|v| v["secret"].as_str().map(str::to_owned))
        },
    )
    .expect("key");
    std::fs::write(key_file.path(), key).expect("write key");
    let url = git.url("real");
    let started = Instant::now();
    wait_until(
        "the repository is added",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            bzzz_testkit::cli(
                BIN,
                &[
                    "repo",
                    "add",
                    &url,
                    "--kind",
                    "git",
                    "--max-steps",
                    "8",
                    "--api",
                    &api,
                    "--operator-password-file",
                    &pw,
                ],
            )
            .status
            .success()
            .then_some(())
        },
    )
    .expect("repo add");
    let total = expect.len();
    let board = wait_until(
        "every task ended",
        Duration::from_secs(3600),
        Duration::from_secs(2),
        || {
            let out = bzzz_testkit::cli(BIN, &["task", "ls", "--api", &api, "--json"]);
            let v: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
            (v.len() == total
                && v.iter()
                    .all(|t| t["state"] == "done" || t["state"] == "needs-human"))
            .then_some(v)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let elapsed = started.elapsed();
    let mut first = [0usize; 3];
    let mut any = [0usize; 3];
    for (id, k, path, want) in &expect {
        let t = board.iter().find(|t| t["id"] == id.as_str()).expect("task");
        let got = git
            .show("real", &format!("bzzz/task-{id}"), path)
            .unwrap_or_default();
        let ok = t["state"] == "done" && got.trim_end() == want;
        if ok {
            any[*k] += 1;
            if t["claims"] == 1 {
                first[*k] += 1;
            }
        } else {
            eprintln!("{id}: {} -> {got:?} (want {want:?})", t["state"]);
        }
    }
    println!("\n| task kind | first attempt | within 3 attempts |\n|---|---|---|");
    for (k, kind) in KINDS.iter().enumerate() {
        println!(
            "| {} | {}/{per_kind} | {}/{per_kind} |",
            kind.name, first[k], any[k]
        );
    }
    println!(
        "| all | {}/{total} | {}/{total} |\n\n{total} tasks in {:.0} s",
        first.iter().sum::<usize>(),
        any.iter().sum::<usize>(),
        elapsed.as_secs_f64()
    );
}
