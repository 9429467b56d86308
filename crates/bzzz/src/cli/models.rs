//! `bzzz model add|ls|status|rm`.
//!
//! `add` reads the model where the CLI runs (a GGUF file, a directory in
//! Ollama's layout, or the local Ollama store), uploads the blobs the node
//! lacks (with progress), then registers the manifest; with `--wait` it
//! follows the copies until every placed one is ready.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bzzz_models::ollama::{self, Prepared, Source};
use bzzz_proto::NodeId;
use bzzz_proto::models::{AddModel, AddedModel, BlobStored, ModelName, ModelStatus, ReplicaState};
use futures::StreamExt as _;
use reqwest::Method;

use super::client::{get, send};
use super::{ModelAddArgs, ModelNameArgs, ModelRmArgs, ReadArgs};

fn encode_name(n: &ModelName) -> String {
    n.full().replace('/', "%2F")
}

fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:<10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b.set_prefix(what.to_owned());
    b
}

/// Hashes a file (sha256) with a progress bar.
fn hash_file(path: &Path) -> anyhow::Result<(String, u64)> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata()?.len();
    let b = bar(len, "hashing");
    let m = bzzz_models::pieces::hash_blob(
        std::io::BufReader::with_capacity(1 << 20, f),
        |n| b.set_position(n),
        len,
    )?;
    b.finish_and_clear();
    Ok((m.blob, m.size))
}

fn prepare(a: &ModelAddArgs) -> anyhow::Result<(ModelName, Prepared)> {
    if let Some(src) = &a.from_ollama {
        let src = ModelName::parse(src).map_err(|e| anyhow::anyhow!("--from-ollama: {e}"))?;
        let dir = a.ollama_dir.clone().unwrap_or_else(ollama::default_dir);
        let name = match &a.name {
            Some(n) => ModelName::parse(n).map_err(|e| anyhow::anyhow!("--name: {e}"))?,
            None => src.clone(),
        };
        return Ok((name, ollama::from_store(&dir, &src)?));
    }
    let Some(path) = &a.path else {
        bail!("give a GGUF file, a directory in Ollama's layout, or --from-ollama NAME:TAG");
    };
    let Some(name) = &a.name else {
        bail!("--name NAME:TAG is required with a file or directory");
    };
    let name = ModelName::parse(name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        return Ok((name.clone(), ollama::from_store(path, &name)?));
    }
    let (sha, size) = hash_file(path)?;
    Ok((name, ollama::from_gguf(path, &sha, size)?))
}

async fn upload(
    api: &str,
    pw: &super::client::Credential,
    layer: &ollama::Layer,
    src: &Source,
    json: bool,
) -> anyhow::Result<()> {
    let path = format!("/api/v1/models/blobs/{}", layer.digest);
    let have: Option<BlobStored> = send(
        api,
        Method::GET,
        &path,
        None,
        Some(pw),
        Duration::from_secs(30),
        true,
    )
    .await?;
    if have.is_some_and(|h| h.size == layer.size) {
        return Ok(());
    }
    let body = match src {
        Source::Bytes(b) => reqwest::Body::from(b.clone()),
        Source::File(p) => {
            let f = tokio::fs::File::open(p)
                .await
                .with_context(|| format!("cannot open {}", p.display()))?;
            let b = if json {
                indicatif::ProgressBar::hidden()
            } else {
                bar(layer.size, "uploading")
            };
            let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).map(move |c| {
                if let Ok(c) = &c {
                    b.inc(c.len() as u64);
                }
                c
            });
            reqwest::Body::wrap_stream(stream)
        }
    };
    let _: Option<BlobStored> = send(
        api,
        Method::PUT,
        &format!("{path}?size={}", layer.size),
        Some(body),
        Some(pw),
        Duration::from_secs(6 * 3600),
        false,
    )
    .await?;
    Ok(())
}

pub async fn add(a: &ModelAddArgs) -> anyhow::Result<()> {
    let pw = a.op.credential()?;
    let (name, prep) = prepare(a)?;
    for (layer, src) in &prep.blobs {
        upload(&a.op.api, &pw, layer, src, a.op.json).await?;
    }
    let manifest = String::from_utf8(prep.manifest).context("the manifest is not UTF-8")?;
    let parse_ids = |v: &[String]| -> anyhow::Result<Vec<NodeId>> {
        v.iter()
            .map(|s| NodeId::parse(s).map_err(|e| anyhow::anyhow!("{s}: {e}")))
            .collect()
    };
    let req = AddModel {
        name: name.full(),
        manifest,
        replicas: a.replicas,
        spread_zones: !a.no_spread,
        pinned: parse_ids(&a.pin)?,
        excluded: parse_ids(&a.exclude)?,
    };
    let body = reqwest::Body::from(serde_json::to_vec(&req)?);
    let added: AddedModel = send(
        &a.op.api,
        Method::POST,
        "/api/v1/models",
        Some(body),
        Some(&pw),
        Duration::from_secs(600),
        false,
    )
    .await?
    .context("no answer")?;
    if a.wait {
        wait_ready(&a.op.api, &name, a.op.json).await?;
    }
    if a.op.json {
        println!("{}", serde_json::to_string(&added)?);
    } else {
        println!(
            "{} added: {} ({} bytes, about {} of VRAM), {} {}",
            added.name,
            added.digest,
            added.size_bytes,
            human(added.vram_bytes),
            added.replicas,
            if added.replicas == 1 {
                "copy"
            } else {
                "copies"
            }
        );
    }
    Ok(())
}

/// Follows a model until every placed copy is ready.
async fn wait_ready(api: &str, name: &ModelName, quiet: bool) -> anyhow::Result<()> {
    let path = format!("/api/v1/models/{}", encode_name(name));
    let mut last = String::new();
    loop {
        let s: ModelStatus = get(api, &path).await?;
        let placed: Vec<_> = s
            .nodes
            .iter()
            .filter(|n| n.state != ReplicaState::Extra)
            .collect();
        let ready = placed
            .iter()
            .filter(|n| n.state == ReplicaState::Ready)
            .count();
        let line = format!(
            "{ready}/{} ready: {}",
            placed.len(),
            placed
                .iter()
                .map(|n| format!(
                    "{}={}%",
                    short(&n.node_id),
                    pct(n.bytes_done, n.bytes_total)
                ))
                .collect::<Vec<_>>()
                .join(" ")
        );
        if !quiet && line != last {
            eprintln!("{line}");
            last = line;
        }
        if !placed.is_empty() && ready == placed.len() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn pct(done: u64, total: u64) -> u64 {
    (done * 100).checked_div(total).unwrap_or(100)
}

fn short(id: &NodeId) -> String {
    let s = id.as_str();
    s[s.len().saturating_sub(8)..].to_owned()
}

fn human(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else {
        format!("{:.0} MB", b / 1e6)
    }
}

fn print_status(s: &ModelStatus) {
    println!(
        "{}  {}  {}  {} wanted, {} ready  {} {}",
        s.name,
        &s.digest[..19.min(s.digest.len())],
        human(s.size_bytes),
        s.replicas,
        s.ready,
        s.facts.architecture.as_deref().unwrap_or("-"),
        s.facts.quantization.as_deref().unwrap_or("-"),
    );
    for n in &s.nodes {
        println!(
            "  {:<54} {:<9} {:>4}%{}{}",
            n.node_id.as_str(),
            format!("{:?}", n.state).to_lowercase(),
            pct(n.bytes_done, n.bytes_total),
            if n.cpu_only { "  cpu" } else { "" },
            if n.stale { "  (no answer)" } else { "" }
        );
    }
}

pub async fn status(a: &ModelNameArgs) -> anyhow::Result<()> {
    let name = ModelName::parse(&a.name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let s: ModelStatus = get(
        &a.read.api,
        &format!("/api/v1/models/{}", encode_name(&name)),
    )
    .await?;
    if a.read.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        print_status(&s);
    }
    Ok(())
}

pub async fn ls(a: &ReadArgs) -> anyhow::Result<()> {
    let list: Vec<ModelStatus> = get(&a.api, "/api/v1/models").await?;
    if a.json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no models (add one with `bzzz model add`)");
    }
    for s in &list {
        print_status(s);
    }
    Ok(())
}

pub async fn rm(a: &ModelRmArgs) -> anyhow::Result<()> {
    let pw = a.op.credential()?;
    let name = ModelName::parse(&a.name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let r: serde_json::Value = send(
        &a.op.api,
        Method::DELETE,
        &format!("/api/v1/models/{}", encode_name(&name)),
        None,
        Some(&pw),
        Duration::from_secs(30),
        false,
    )
    .await?
    .context("no answer")?;
    if a.op.json {
        println!("{r}");
    } else {
        println!("{} removed; every node deletes its copy", name.full());
    }
    Ok(())
}
