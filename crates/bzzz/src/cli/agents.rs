//! `bzzz repo add|ls`, `bzzz task ls|show|retry|cancel` (SPEC §10).

use bzzz_agents::repo::{Kind, Repo};
use serde_json::Value;

use super::client::{get, post};
use super::{ReadArgs, RepoAddArgs, TaskArgs, TaskOpArgs};

pub async fn repo_add(a: &RepoAddArgs) -> anyhow::Result<()> {
    let kind = Kind::parse(&a.kind).map_err(|e| anyhow::anyhow!("--kind: {e}"))?;
    let token = match (&a.token_file, kind) {
        (Some(_), Kind::Git) => {
            anyhow::bail!("--token-file: a plain Git repository (--kind git) takes no token")
        }
        (None, Kind::Gitea | Kind::Github) => anyhow::bail!(
            "--kind {}: give the forge's API token with --token-file F",
            kind.as_str()
        ),
        (Some(f), _) => {
            let t = zeroize::Zeroizing::new(
                std::fs::read_to_string(f)
                    .map_err(|e| anyhow::anyhow!("--token-file {}: {e}", f.display()))?,
            );
            let first = t.lines().next().unwrap_or_default().trim().to_owned();
            if first.is_empty() {
                anyhow::bail!("--token-file {}: the first line is empty", f.display());
            }
            Some(first)
        }
        (None, Kind::Git) => None,
    };
    let repo = Repo {
        url: a.url.clone(),
        kind,
        label: a.label.clone(),
        model: a.model.clone(),
        max_steps: a.max_steps,
        token_sealed: Default::default(),
    };
    repo.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let req = bzzz_agents::repo::RepoAdd {
        url: repo.url.clone(),
        kind,
        label: repo.label.clone(),
        model: repo.model.clone(),
        max_steps: repo.max_steps,
        token,
    };
    let password = a.op.credential()?;
    let list: Vec<Value> = post(&a.op.api, "/api/v1/repos", &req, Some(&password)).await?;
    if a.op.json {
        println!("{}", serde_json::to_string(&list)?);
    } else {
        println!(
            "{} added ({}); {} repositories in all.",
            repo.url,
            kind.as_str(),
            list.len()
        );
    }
    Ok(())
}

pub async fn repo_ls(a: &ReadArgs) -> anyhow::Result<()> {
    let list: Vec<Value> = get(&a.api, "/api/v1/repos").await?;
    if a.json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    println!("{:<7} {:<20} {:<6} URL", "KIND", "MODEL", "TOKEN");
    for r in list {
        println!(
            "{:<7} {:<20} {:<6} {}",
            r["kind"].as_str().unwrap_or("?"),
            r["model"].as_str().unwrap_or("-"),
            if r["token"] == true { "yes" } else { "-" },
            r["url"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// Text from the cluster (task reasons, step details come from models
/// and forges) without control characters, for a terminal.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

pub async fn task_ls(a: &ReadArgs) -> anyhow::Result<()> {
    let list: Vec<Value> = get(&a.api, "/api/v1/tasks").await?;
    if a.json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<12} {:<10} {:<7} {:<28} REPO",
        "ID", "STATE", "NODE", "CLAIMS", "BRANCH"
    );
    for t in list {
        let s = |k: &str| clean(t[k].as_str().unwrap_or("-"));
        let node = s("node");
        println!(
            "{:<24} {:<12} {:<10} {:<7} {:<28} {}",
            s("id"),
            s("state"),
            &node[node.len().saturating_sub(8)..],
            t["claims"].as_u64().unwrap_or(0),
            s("branch"),
            s("repo")
        );
        if let Some(r) = t["reason"].as_str() {
            println!("    {}", clean(r));
        }
    }
    Ok(())
}

/// The board's key for `task` (a key, or an id one repository has).
async fn resolve(api: &str, task: &str) -> anyhow::Result<Value> {
    let list: Vec<Value> = get(api, "/api/v1/tasks").await?;
    let hits: Vec<&Value> = list
        .iter()
        .filter(|t| t["key"] == task || t["id"] == task)
        .collect();
    match hits.as_slice() {
        [t] => Ok((*t).clone()),
        [] => anyhow::bail!("no task {task:?} (bzzz task ls lists them)"),
        _ => anyhow::bail!("{task:?} names tasks of several repositories: give REPO#ID"),
    }
}

pub async fn task_show(a: &TaskArgs) -> anyhow::Result<()> {
    let t = resolve(&a.read.api, &a.task).await?;
    let key = t["key"].as_str().unwrap_or_default();
    let q = serde_urlencoded::to_string([("key", key)])?;
    // The log lives on the node working the task; this node may be it.
    let log: Option<Value> = get(&a.read.api, &format!("/api/v1/tasks/log?{q}"))
        .await
        .ok();
    if a.read.json {
        println!("{}", serde_json::json!({"task": t, "log": log}));
        return Ok(());
    }
    // JSON escapes control characters itself.
    println!("{}", serde_json::to_string_pretty(&t)?);
    if let Some(Value::Array(steps)) = log {
        for s in steps {
            println!(
                "{:>3} {:<11} {:<3} {} {}",
                s["n"],
                clean(s["tool"].as_str().unwrap_or("")),
                if s["ok"] == true { "ok" } else { "ERR" },
                clean(s["detail"].as_str().unwrap_or("")),
                clean(s["result"].as_str().unwrap_or(""))
            );
        }
    }
    Ok(())
}

pub async fn task_op(a: &TaskOpArgs, op: &str) -> anyhow::Result<()> {
    let t = resolve(&a.op.api, &a.task).await?;
    let key = t["key"].as_str().unwrap_or_default().to_owned();
    let password = a.op.credential()?;
    let r: Value = post(
        &a.op.api,
        &format!("/api/v1/tasks/{op}"),
        &serde_json::json!({"key": key}),
        Some(&password),
    )
    .await?;
    if a.op.json {
        println!("{r}");
    } else {
        println!("{key}: {}", r["state"].as_str().unwrap_or("?"));
    }
    Ok(())
}
