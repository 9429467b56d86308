//! `bzzz member ls|remove|approve`, `bzzz keys policy`.

use std::time::Duration;

use bzzz_proto::api::{KeysStatus, MemberView, PolicyRequest};

use super::client::{get, post, send};
use super::{MemberRemoveArgs, PolicyArgs, ReadArgs};

pub async fn ls(a: &ReadArgs) -> anyhow::Result<()> {
    let list: Vec<MemberView> = get(&a.api, "/api/v1/members").await?;
    if a.json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    println!(
        "{:<54} {:<8} {:<6} {:<8} note",
        "NODE", "STATE", "SHARE", "RAFT"
    );
    for m in list {
        let note = match (m.this_node, m.gone_secs) {
            (true, _) => "this node".to_owned(),
            (_, Some(s)) => format!("gone for {}", human(s)),
            _ => String::new(),
        };
        println!(
            "{:<54} {:<8} {:<6} {:<8} {note}",
            m.node_id.as_str(),
            m.state,
            m.share_index.map_or("-".into(), |i| i.to_string()),
            m.raft
        );
    }
    Ok(())
}

fn human(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

pub async fn remove(a: &MemberRemoveArgs) -> anyhow::Result<()> {
    member_change(
        a,
        reqwest::Method::DELETE,
        &format!("/api/v1/members/{}", a.node_id),
        "removed",
        "removed: every node refuses it, Raft drops it, and the admin key is re-dealt without it.",
    )
    .await
}

pub async fn approve(a: &MemberRemoveArgs) -> anyhow::Result<()> {
    member_change(
        a,
        reqwest::Method::POST,
        &format!("/api/v1/members/{}/approve", a.node_id),
        "approved",
        "approved: the admin key is re-dealt to it (bzzz member ls shows its share index once done).",
    )
    .await
}

/// An operator change to one member; prints the answer (`{already}`).
async fn member_change(
    a: &MemberRemoveArgs,
    method: reqwest::Method,
    path: &str,
    verb: &str,
    done: &str,
) -> anyhow::Result<()> {
    let password = a.op.credential()?;
    let body = (method == reqwest::Method::POST).then(|| reqwest::Body::from("{}"));
    let r: Option<serde_json::Value> = send(
        &a.op.api,
        method,
        path,
        body,
        Some(&password),
        Duration::from_secs(60),
        false,
    )
    .await?;
    let r = r.unwrap_or_default();
    if a.op.json {
        println!("{r}");
    } else if r["already"] == true {
        println!("{} was already {verb}.", a.node_id);
    } else {
        println!("{} {done}", a.node_id);
    }
    Ok(())
}

pub async fn policy(a: &PolicyArgs) -> anyhow::Result<()> {
    let password = a.op.credential()?;
    let s: KeysStatus = post(
        &a.op.api,
        "/api/v1/keys/policy",
        &PolicyRequest {
            policy: a.policy.clone(),
        },
        Some(&password),
    )
    .await?;
    if a.op.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "key policy {}: {} of {} (key epoch {})",
            s.policy.unwrap_or_default(),
            s.threshold.unwrap_or(0),
            s.shares.unwrap_or(0),
            s.epoch.unwrap_or(0)
        );
    }
    Ok(())
}
