//! `bzzz demo --nodes N`: a local cluster on 127.0.0.1 for a first look.
//!
//! Starts N child processes of this same binary (`bzzz node run`), each with
//! its own data dir and log file under one directory, mDNS off, every node
//! after the first bootstrapping to the first. Waits until every node sees
//! all others, prints their web/API addresses, and runs until Ctrl-C (or a
//! node dies), then stops every child (SIGTERM, then SIGKILL after a grace
//! period) and removes the directory unless `--keep`.
//!
//! With `--model-gguf FILE` ([`ai`]), the cluster also places and serves
//! the model, and every node runs an agent that works a sample task.

pub mod ai;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bzzz_proto::api::StatusResponse;
use tokio::process::{Child, Command};

use crate::cli::DemoArgs;
use crate::node::{RUNTIME_FILE, RuntimeInfo};

const START_DEADLINE: Duration = Duration::from_secs(20);
const FORM_DEADLINE: Duration = Duration::from_secs(30);

struct DemoNode {
    child: Child,
    data_dir: PathBuf,
    log: PathBuf,
    info: Option<RuntimeInfo>,
}

/// Kills what is left on every exit path, also on error or panic.
struct Children(Vec<DemoNode>);

impl Drop for Children {
    fn drop(&mut self) {
        for n in &mut self.0 {
            let _ = n.child.start_kill();
        }
    }
}

pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the bzzz binary to start nodes")?;
    // A directory the user named is never removed; a temporary one is
    // removed when `_tmp_guard` drops, unless `--keep` detached it.
    let keep = args.keep || args.dir.is_some();
    let (dir, _tmp_guard) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("bzzz-demo-")
                .tempdir()
                .context("cannot create a temporary directory")?;
            if keep {
                (t.keep(), None)
            } else {
                (t.path().to_path_buf(), Some(t))
            }
        }
    };
    let config = dir.join("demo.yaml");
    let mut yaml = String::from("# bzzz demo: the other settings come from flags\n");
    if args.model_gguf.is_some() {
        yaml.push_str(&ai::config(args, &dir)?);
    }
    std::fs::write(&config, yaml)?;

    let n = usize::from(args.nodes);
    eprintln!(
        "Starting {n} BZZZ node(s) on 127.0.0.1 (data and logs in {})…",
        dir.display()
    );
    let mut nodes = Children(Vec::with_capacity(n));
    let mut bootstrap: Option<String> = None;
    for i in 0..n {
        let port = if args.base_port == 0 {
            0
        } else {
            args.base_port
                .checked_add(i as u16)
                .context("--base-port too high")?
        };
        let node = spawn(&exe, &dir, &config, i, port, bootstrap.as_deref())?;
        nodes.0.push(node);
        if i == 0 {
            let info = wait_runtime(&mut nodes.0[0]).await?;
            bootstrap = info
                .listen_addrs
                .iter()
                .find(|a| a.contains("/tcp/"))
                .cloned()
                .or_else(|| info.listen_addrs.first().cloned());
        }
    }
    for node in &mut nodes.0 {
        wait_runtime(node).await?;
    }

    // Wait until every node sees every other one.
    let started = Instant::now();
    let mut last_report = 0;
    loop {
        let mut complete = 0;
        for node in &nodes.0 {
            let Some(info) = &node.info else { continue };
            let url = format!("http://{}", info.api_addr);
            if let Ok(s) = crate::cli::client::get::<StatusResponse>(&url, "/api/v1/status").await
                && s.peer_count + 1 >= n
            {
                complete += 1;
            }
        }
        if complete != last_report {
            eprintln!("  {complete}/{n} nodes see the whole cluster");
            last_report = complete;
        }
        if complete == n {
            break;
        }
        check_alive(&mut nodes.0)?;
        if started.elapsed() > FORM_DEADLINE {
            bail!(
                "the cluster did not form within {FORM_DEADLINE:?}; see the logs in {}",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let init = init_demo_cluster(&nodes.0, &dir).await?;

    let table: Vec<serde_json::Value> = nodes
        .0
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.info.as_ref().map(|info| (i, n, info)))
        .map(|(i, n, info)| {
            serde_json::json!({
                "index": i,
                "node_id": info.node_id,
                "url": format!("http://{}/", info.api_addr),
                "api": format!("http://{}", info.api_addr),
                "data_dir": n.data_dir,
                "log": n.log,
            })
        })
        .collect();
    if args.json {
        eprintln!("MASTER KEY (a demo key, shown once): {}", &*init.mnemonic);
        println!("{}", serde_json::to_string(&table)?);
    } else {
        println!(
            "\nBZZZ demo cluster is up ({n} nodes, formed in {:.1}s):\n",
            started.elapsed().as_secs_f64()
        );
        for row in &table {
            println!(
                "  node {}  {}  web/API {}",
                row["index"],
                row["node_id"].as_str().unwrap_or_default(),
                row["url"].as_str().unwrap_or_default()
            );
        }
        let first = table
            .first()
            .and_then(|r| r["api"].as_str())
            .unwrap_or_default();
        println!(
            "\nCluster 'demo' initialized; admin public key {}",
            init.admin_public_key
        );
        println!(
            "MASTER KEY (a demo key, shown once):\n  {}",
            &*init.mnemonic
        );
        println!(
            "Operator password: in {} (the demo directory; mode 0600)",
            init.password_file.display()
        );
        println!("\nTry:  bzzz peers --api {first}");
        println!("      bzzz keys status --api {first}");
        println!(
            "      bzzz token create --api {first} --operator-password-file {}",
            init.password_file.display()
        );
        println!("      bzzz status --api {first} --json");
        println!("Logs: {}/node-*.log", dir.display());
    }
    if args.model_gguf.is_some() {
        let first = table
            .first()
            .and_then(|r| r["api"].as_str())
            .unwrap_or_default()
            .to_owned();
        let last = table
            .last()
            .and_then(|r| r["api"].as_str())
            .unwrap_or_default()
            .to_owned();
        let ai = tokio::select! {
            r = ai::start(&exe, &first, &init.password_file, &dir, args) => r?,
            r = watch_children(&mut nodes.0) => {
                r?;
                bail!("a node stopped");
            }
        };
        let key = ai.api_key_file.display();
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "model": ai.model,
                    "served_in_s": ai.served_in,
                    "openai_base_url": format!("{last}/v1"),
                    "ollama_base_url": last,
                    "api_key_file": ai.api_key_file,
                    "repo": ai.repo,
                    "task_branch": "bzzz/task-hello",
                })
            );
        } else {
            println!(
                "\n{} is served by the cluster (ready in {:.0} s). Ask any node, e.g. the last one:",
                ai.model, ai.served_in
            );
            println!(
                "  curl -s {last}/v1/chat/completions -H \"Authorization: Bearer $(cat {key})\" \\\n    -d '{{\"model\":\"{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Why is the sky blue?\"}}]}}'",
                ai.model
            );
            println!(
                "  OpenAI base URL: {last}/v1    Ollama base URL: {last}    API key: in {key}"
            );
            println!(
                "\nAgents: every node runs one. They take tasks/hello.md from the sample repository\n  {}\nwork it with {} in a sandbox, and push the branch bzzz/task-hello.",
                ai.repo.display(),
                ai.model
            );
            println!(
                "  Watch:  {first}/tasks   or   bzzz task ls --api {first} --operator-password-file {}",
                init.password_file.display()
            );
            println!(
                "  Result: git -C {} show bzzz/task-hello:hello.txt",
                ai.repo.display()
            );
        }
    }
    if !args.json {
        println!("Press Ctrl-C to stop the cluster.");
    }

    let cancel = tokio_util::sync::CancellationToken::new();
    let outcome = tokio::select! {
        _ = crate::node::shutdown_signal(&cancel) => Ok(()),
        r = watch_children(&mut nodes.0) => r,
    };
    eprintln!("Stopping {n} node(s)…");
    stop_all(&mut nodes.0).await;
    if keep {
        eprintln!("Kept {}", dir.display());
    }
    outcome
}

fn spawn(
    exe: &Path,
    dir: &Path,
    config: &Path,
    i: usize,
    port: u16,
    bootstrap: Option<&str>,
) -> anyhow::Result<DemoNode> {
    let data_dir = dir.join(format!("node-{i}"));
    let log = dir.join(format!("node-{i}.log"));
    let _ = std::fs::remove_file(data_dir.join(RUNTIME_FILE));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(["node", "run", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--models-dir")
        .arg(data_dir.join("ollama"))
        .args(["--http", &format!("127.0.0.1:{port}")])
        .args([
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ])
        .arg("--no-mdns");
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BZZZ_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true);
    let child = cmd.spawn().context("cannot start a node process")?;
    Ok(DemoNode {
        child,
        data_dir,
        log,
        info: None,
    })
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

async fn wait_runtime(node: &mut DemoNode) -> anyhow::Result<RuntimeInfo> {
    if let Some(i) = &node.info {
        return Ok(i.clone());
    }
    let path = node.data_dir.join(RUNTIME_FILE);
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(info) = serde_json::from_str::<RuntimeInfo>(&text)
        {
            node.info = Some(info.clone());
            return Ok(info);
        }
        if let Some(status) = node.child.try_wait()? {
            bail!(
                "a node exited during start ({status}); last log lines of {}:\n{}",
                node.log.display(),
                log_tail(&node.log)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "a node did not start within {START_DEADLINE:?}; see {}",
                node.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn check_alive(nodes: &mut [DemoNode]) -> anyhow::Result<()> {
    for n in nodes {
        if let Some(status) = n.child.try_wait()? {
            bail!(
                "a node exited ({status}); last log lines of {}:\n{}",
                n.log.display(),
                log_tail(&n.log)
            );
        }
    }
    Ok(())
}

async fn watch_children(nodes: &mut [DemoNode]) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        check_alive(nodes)?;
    }
}

async fn stop_all(nodes: &mut [DemoNode]) {
    for n in nodes.iter() {
        if let Some(pid) = n
            .child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    for n in nodes.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(5), n.child.wait())
            .await
            .is_err()
        {
            let _ = n.child.kill().await;
        }
    }
}

struct DemoInit {
    admin_public_key: String,
    mnemonic: zeroize::Zeroizing<String>,
    password_file: std::path::PathBuf,
}

/// Initializes the demo cluster through the first node's API, as `bzzz init`
/// does unattended: every node gets a share, t = ⌊n/2⌋+1 (majority).
async fn init_demo_cluster(nodes: &[DemoNode], dir: &Path) -> anyhow::Result<DemoInit> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let Some(info) = nodes.first().and_then(|n| n.info.as_ref()) else {
        bail!("the first demo node has no address");
    };
    let api = format!("http://{}", info.api_addr);
    let mut raw = [0u8; 18];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("random number generator: {e}"))?;
    let password = zeroize::Zeroizing::new(hex::encode(raw));
    let password_file = dir.join("operator-password");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&password_file)?;
    writeln!(f, "{}", &*password)?;
    let started: bzzz_proto::api::SetupStarted = crate::cli::client::post(
        &api,
        "/api/v1/setup",
        // Every demo node is this run's own: each holds a share.
        &serde_json::json!({
            "cluster": "demo",
            "operator_password": &*password,
            "holders": nodes
                .iter()
                .skip(1)
                .filter_map(|n| n.info.as_ref().map(|i| i.node_id.to_string()))
                .collect::<Vec<_>>(),
        }),
        None,
    )
    .await?;
    let mnemonic = zeroize::Zeroizing::new(started.mnemonic.expose().to_owned());
    let done: bzzz_proto::api::SetupDone = crate::cli::client::post(
        &api,
        "/api/v1/setup/confirm",
        &bzzz_proto::api::SetupConfirm {
            setup_id: started.setup_id.clone(),
            words: started.confirmation_words(),
        },
        None,
    )
    .await?;
    if !done.undelivered.is_empty() {
        bail!(
            "setup could not reach every demo node: {:?}",
            done.undelivered
        );
    }
    Ok(DemoInit {
        admin_public_key: done.admin_public_key,
        mnemonic,
        password_file,
    })
}
