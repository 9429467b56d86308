//! `bzzz repo add|ls`, `bzzz task ls|show|retry|cancel` (SPEC §10).

use bzzz_agents::repo::{Kind, Repo};
use serde_json::Value;

use super::client::{get, post};
use super::{ReadArgs, RepoAddArgs, TaskArgs, TaskOpArgs};

pub async fn repo_add(a: &RepoAddArgs) -> anyhow::Result<()> {
    let kind = Kind::parse(&a.kind).map_err(|e| anyhow::anyhow!("--kind: {e}"))?;
    if a.token_file.is_some() {
        anyhow::bail!(
            "--token-file: forge tokens (sealed to the agent nodes) are not supported yet; plain Git repositories (--kind git) need none"
        );
    }
    let repo = Repo {
        url: a.url.clone(),
        kind,
        label: a.label.clone(),
        model: a.model.clone(),
        max_steps: a.max_steps,
    };
    repo.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let password = a.op.credential()?;
    let list: Vec<Repo> = post(&a.op.api, "/api/v1/repos", &repo, Some(&password)).await?;
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
    let list: Vec<Repo> = get(&a.api, "/api/v1/repos").await?;
    if a.json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    println!("{:<6} {:<20} URL", "KIND", "MODEL");
    for r in list {
        println!(
            "{:<6} {:<20} {}",
            r.kind.as_str(),
            r.model.as_deref().unwrap_or("-"),
            r.url
        );
    }
    Ok(())
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
        let s = |k: &str| t[k].as_str().unwrap_or("-").to_owned();
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
            println!("    {r}");
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
    println!("{}", serde_json::to_string_pretty(&t)?);
    if let Some(Value::Array(steps)) = log {
        for s in steps {
            println!(
                "{:>3} {:<11} {:<3} {} {}",
                s["n"],
                s["tool"].as_str().unwrap_or(""),
                if s["ok"] == true { "ok" } else { "ERR" },
                s["detail"].as_str().unwrap_or(""),
                s["result"].as_str().unwrap_or("")
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
