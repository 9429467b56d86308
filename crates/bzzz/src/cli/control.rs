//! `bzzz leader`, `bzzz role create|ls`.

use bzzz_proto::api::{Applied, LeaderInfo};

use super::client::{get, post};
use super::{ReadArgs, RoleArgs};

pub async fn leader(a: &ReadArgs) -> anyhow::Result<()> {
    let l: LeaderInfo = get(&a.api, "/api/v1/leader").await?;
    if a.json {
        println!("{}", serde_json::to_string(&l)?);
        return Ok(());
    }
    println!("leader  {}", l.leader.as_deref().unwrap_or("none"));
    println!("term    {}", l.term);
    println!("this    {} ({})", l.node_id, l.state);
    println!("{:<54} {:<8} {:>9}", "MEMBER", "ROLE", "SCORE");
    for (id, score) in &l.scores {
        let role = l.role_of(id);
        println!("{id:<54} {role:<8} {score:>9.1}");
    }
    Ok(())
}

pub async fn role_create(a: &RoleArgs) -> anyhow::Result<()> {
    let password = a.op.credential()?;
    let authority: bzzz_proto::cluster::Authority = a
        .authority
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--authority: {e}"))?;
    let members = a
        .members
        .iter()
        .map(|m| bzzz_proto::NodeId::parse(m).map_err(|e| anyhow::anyhow!("--member {m}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let role = bzzz_proto::cluster::RoleDef {
        name: a.name.clone(),
        authority,
        permissions: a.permissions.clone(),
        reads: a.reads.clone(),
        members,
    };
    role.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let r: Applied = post(&a.op.api, "/api/v1/roles", &role, Some(&password)).await?;
    if a.op.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("role {} saved (signed by the cluster admin key)", role.name);
    }
    Ok(())
}

pub async fn role_ls(a: &ReadArgs) -> anyhow::Result<()> {
    let roles: std::collections::BTreeMap<String, bzzz_proto::cluster::RoleDef> =
        get(&a.api, "/api/v1/roles").await?;
    if a.json {
        println!("{}", serde_json::to_string(&roles)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<13} {:>5} {:>7}",
        "ROLE", "AUTHORITY", "PERMS", "MEMBERS"
    );
    for r in roles.values() {
        let auth = serde_json::to_value(r.authority)?;
        println!(
            "{:<24} {:<13} {:>5} {:>7}",
            r.name,
            auth.as_str().unwrap_or(""),
            r.permissions.len(),
            r.members.len()
        );
    }
    Ok(())
}
