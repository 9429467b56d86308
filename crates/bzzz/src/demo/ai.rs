//! The AI part of `bzzz demo --model-gguf FILE`: the model placed and
//! served by the cluster, an API key for the user and one for the agents,
//! and a sample Git repository with one task that the nodes' agents take,
//! work with the served model, and deliver as a branch.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::cli::DemoArgs;

/// How long the model may take to be placed, fetched and loaded.
const SERVE_DEADLINE: Duration = Duration::from_secs(600);

/// The file (under the demo directory) the agents read their API key from.
pub const AGENT_KEY_FILE: &str = "agent-api-key";

/// The sample task: small enough for SmolLM2-135M.
pub const SAMPLE_TASK: &str = "---\nid: hello\ntitle: Say hello\n---\n\
Create the file hello.txt containing exactly the text: Hello from BZZZ\n";

/// What the AI part set up.
#[derive(Debug)]
pub struct DemoAi {
    pub model: String,
    /// The user's API key (mode 0600).
    pub api_key_file: PathBuf,
    /// The sample repository the agents push their branch to.
    pub repo: PathBuf,
    /// Seconds from `model add` until the model answered.
    pub served_in: f64,
}

/// The config lines (YAML) every demo node gets when a model is served.
pub fn config(args: &DemoArgs, dir: &Path) -> anyhow::Result<String> {
    let script = args.serve_script.canonicalize().with_context(|| {
        format!(
            "the serving script {} is missing (run the demo from the source tree, or pass --serve-script)",
            args.serve_script.display()
        )
    })?;
    let gguf = args.model_gguf.as_deref().unwrap_or(Path::new(""));
    if !gguf.is_file() {
        bail!("--model-gguf {}: no such file", gguf.display());
    }
    let q = |p: &Path| serde_json::to_string(&p.to_string_lossy()).unwrap_or_default();
    Ok(format!(
        "serve:\n  managed:\n    command: [{py}, {script}, --model, \"{{model_path}}\", --port, \"{{port}}\", --threads, \"2\", --ctx, \"{{ctx}}\"]\n    ctx: 4096\n\
agents:\n  enabled: true\n  max_tasks: 1\n  model: {model}\n  api_key_file: {key}\n  poll_every: 2s\n",
        py = q(&args.python),
        script = q(&script),
        model = serde_json::to_string(&args.model_name)?,
        key = q(&dir.join(AGENT_KEY_FILE)),
    ))
}

/// Runs this binary's CLI against the first node; its stdout (JSON).
async fn cli(exe: &Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("cannot run bzzz {}", args[0]))?;
    if !out.status.success() {
        bail!("bzzz {} failed ({})", args.join(" "), out.status);
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bzzz {} printed no JSON", args.join(" ")))
}

fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{secret}")?;
    Ok(())
}

async fn api_key(exe: &Path, api: &str, pw: &str, name: &str, file: &Path) -> anyhow::Result<()> {
    let v = cli(
        exe,
        &[
            "apikey",
            "create",
            "--role",
            "backend_developer",
            "--name",
            name,
            "--api",
            api,
            "--operator-password-file",
            pw,
            "--json",
        ],
    )
    .await?;
    let secret = v["secret"]
        .as_str()
        .context("bzzz apikey create printed no secret")?;
    write_secret(file, secret)
}

/// Makes the sample repository (one task) with `git`.
fn sample_repo(dir: &Path) -> anyhow::Result<PathBuf> {
    let repo = dir.join("sample-repo");
    std::fs::create_dir_all(repo.join("tasks"))?;
    std::fs::write(repo.join("tasks/hello.md"), SAMPLE_TASK)?;
    std::fs::write(
        repo.join("README.md"),
        "# A sample repository for the BZZZ demo\n\nTasks live under tasks/.\n",
    )?;
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "."],
        &["commit", "-q", "-m", "A sample task for the BZZZ agents"],
    ] {
        let st = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=BZZZ demo",
                "-c",
                "user.email=demo@bzzz.invalid",
            ])
            .args(args)
            .current_dir(&repo)
            .stdout(Stdio::null())
            .status()
            .context("git is needed for the demo's sample repository")?;
        if !st.success() {
            bail!("git {} failed in {}", args.join(" "), repo.display());
        }
    }
    Ok(repo)
}

/// Places and serves the model, makes the keys, waits until the model
/// answers through the first node, then adds the sample repository.
pub async fn start(
    exe: &Path,
    api: &str,
    password_file: &Path,
    dir: &Path,
    args: &DemoArgs,
) -> anyhow::Result<DemoAi> {
    let pw = password_file.to_string_lossy().into_owned();
    let gguf = args
        .model_gguf
        .as_deref()
        .context("no model")?
        .to_string_lossy()
        .into_owned();
    let started = Instant::now();
    eprintln!("Adding {} to the cluster ({gguf})…", args.model_name);
    cli(
        exe,
        &[
            "model",
            "add",
            &gguf,
            "--name",
            &args.model_name,
            "--replicas",
            "1",
            "--api",
            api,
            "--operator-password-file",
            &pw,
            "--json",
        ],
    )
    .await?;
    let api_key_file = dir.join("api-key");
    api_key(exe, api, &pw, "demo user", &api_key_file).await?;
    api_key(exe, api, &pw, "demo agents", &dir.join(AGENT_KEY_FILE)).await?;
    let key = std::fs::read_to_string(&api_key_file)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    eprintln!(
        "Waiting for the cluster to place, fetch and load it (the first time takes a minute)…"
    );
    let mut last = Instant::now();
    loop {
        let r = client
            .post(format!("{api}/v1/chat/completions"))
            .bearer_auth(key.trim())
            .json(&serde_json::json!({
                "model": args.model_name,
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8,
            }))
            .send()
            .await;
        if r.as_ref().is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if started.elapsed() > SERVE_DEADLINE {
            let why = match r {
                Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            bail!(
                "{} was not served within {SERVE_DEADLINE:?} (last answer: {why}); see the logs in {}",
                args.model_name,
                dir.display()
            );
        }
        if last.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "  still loading ({:.0} s)…",
                started.elapsed().as_secs_f64()
            );
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let served_in = started.elapsed().as_secs_f64();
    let repo = sample_repo(dir)?;
    cli(
        exe,
        &[
            "repo",
            "add",
            &repo.to_string_lossy(),
            "--kind",
            "git",
            "--max-steps",
            "8",
            "--api",
            api,
            "--operator-password-file",
            &pw,
            "--json",
        ],
    )
    .await?;
    Ok(DemoAi {
        model: args.model_name.clone(),
        api_key_file,
        repo,
        served_in,
    })
}
