//! `bzzz user add|ls|rm`, `bzzz apikey create|ls|revoke`, `bzzz audit
//! ls|verify` (SPEC §9). `audit verify` checks the chain itself, here,
//! with the nodes' public keys (taken from their ids): it trusts the
//! answering node for nothing but the bytes.

use std::time::Duration;

use anyhow::{Context, bail};
use bzzz_proto::access::{ApiKeyCreated, ApiKeyView, AuditHead, AuditRecord, UserView};
use bzzz_proto::cluster::WireSecret;
use serde::Deserialize;
use serde_json::json;

use super::client::{get, post, read_first_line, send};
use super::{
    ApiKeyCreateArgs, AuditLsArgs, AuditVerifyArgs, NameArgs, ReadArgs, UserAddArgs, UserPasswdArgs,
};

pub async fn user_add(a: &UserAddArgs) -> anyhow::Result<()> {
    let cred = a.op.credential()?;
    let pw = read_first_line(&a.password_file, "password")?;
    let body = json!({
        "name": a.name,
        "roles": a.roles,
        "password": WireSecret::new(pw.to_string()),
    });
    let r: serde_json::Value = post(&a.op.api, "/api/v1/users", &body, Some(&cred)).await?;
    if a.op.json {
        println!("{r}");
    } else {
        println!("user {} added with roles {}", a.name, a.roles.join(", "));
    }
    Ok(())
}

pub async fn user_ls(a: &ReadArgs) -> anyhow::Result<()> {
    let users: Vec<UserView> = get(&a.api, "/api/v1/users").await?;
    if a.json {
        println!("{}", serde_json::to_string(&users)?);
        return Ok(());
    }
    println!("{:<24} {:<40} created by", "USER", "ROLES");
    for u in users {
        println!("{:<24} {:<40} {}", u.name, u.roles.join(","), u.created_by);
    }
    Ok(())
}

async fn delete(a: &NameArgs, path: String, what: &str) -> anyhow::Result<()> {
    let cred = a.op.credential()?;
    let r: Option<serde_json::Value> = send(
        &a.op.api,
        reqwest::Method::DELETE,
        &path,
        None,
        Some(&cred),
        Duration::from_secs(30),
        false,
    )
    .await?;
    if a.op.json {
        println!("{}", r.unwrap_or_default());
    } else {
        println!("{what} {}", a.name);
    }
    Ok(())
}

pub async fn user_rm(a: &NameArgs) -> anyhow::Result<()> {
    delete(a, format!("/api/v1/users/{}", a.name), "removed user").await
}

pub async fn user_passwd(a: &UserPasswdArgs) -> anyhow::Result<()> {
    let cred = a.op.credential()?;
    let pw = read_first_line(&a.new_password_file, "new password")?;
    let body = json!({"password": WireSecret::new(pw.to_string())});
    let r: serde_json::Value = post(
        &a.op.api,
        &format!("/api/v1/users/{}/password", a.name),
        &body,
        Some(&cred),
    )
    .await?;
    if a.op.json {
        println!("{r}");
    } else {
        println!("password of user {} changed", a.name);
    }
    Ok(())
}

pub async fn apikey_create(a: &ApiKeyCreateArgs) -> anyhow::Result<()> {
    let cred = a.op.credential()?;
    let body = json!({
        "role": a.role,
        "user": a.user,
        "name": a.name,
        "ttl_secs": a.ttl.map(|t| t.as_secs()),
    });
    let r: ApiKeyCreated = post(&a.op.api, "/api/v1/apikeys", &body, Some(&cred)).await?;
    if a.op.json {
        println!(
            "{}",
            json!({"id": r.id, "secret": r.secret.expose(), "role": r.role, "user": r.user, "expires_at": r.expires_at})
        );
    } else {
        println!(
            "API key {} (role {}). The secret is shown this once:",
            r.id, r.role
        );
        println!("{}", r.secret.expose());
    }
    Ok(())
}

pub async fn apikey_ls(a: &ReadArgs) -> anyhow::Result<()> {
    let keys: Vec<ApiKeyView> = get(&a.api, "/api/v1/apikeys").await?;
    if a.json {
        println!("{}", serde_json::to_string(&keys)?);
        return Ok(());
    }
    println!(
        "{:<18} {:<8} {:<28} {:<16} name",
        "ID", "STATE", "ROLE", "USER"
    );
    for k in keys {
        println!(
            "{:<18} {:<8} {:<28} {:<16} {}",
            k.id,
            k.state,
            k.role,
            k.user.as_deref().unwrap_or("-"),
            k.name.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn apikey_revoke(a: &NameArgs) -> anyhow::Result<()> {
    delete(a, format!("/api/v1/apikeys/{}", a.name), "revoked API key").await
}

#[derive(Debug, Deserialize)]
struct AuditPage {
    node: String,
    head: AuditHead,
    entries: Vec<AuditRecord>,
    #[serde(default)]
    checkpoints: Vec<bzzz_proto::cluster::Signed>,
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    admin_public_key: String,
}

/// What a node holds of the audit log.
struct Fetched {
    node: String,
    head: AuditHead,
    entries: Vec<AuditRecord>,
    checkpoints: Vec<bzzz_proto::cluster::Signed>,
    cluster: String,
    admin_public_key: String,
}

/// Every entry after `since` (page by page), with the node, its head and
/// the checkpoints.
async fn fetch(api: &str, since: u64) -> anyhow::Result<Fetched> {
    let mut out = Vec::new();
    let mut after = since;
    loop {
        let page: AuditPage = get(api, &format!("/api/v1/audit?since={after}&limit=1000")).await?;
        let n = page.entries.len();
        if let Some(last) = page.entries.last() {
            after = last.seq;
        }
        out.extend(page.entries);
        if n < 1000 {
            return Ok(Fetched {
                node: page.node,
                head: page.head,
                entries: out,
                checkpoints: page.checkpoints,
                cluster: page.cluster,
                admin_public_key: page.admin_public_key,
            });
        }
        if out.len() > 10_000_000 {
            bail!("the audit log is longer than 10 million entries");
        }
    }
}

pub async fn audit_ls(a: &AuditLsArgs) -> anyhow::Result<()> {
    let entries = fetch(&a.read.api, a.since).await?.entries;
    if a.read.json {
        println!("{}", serde_json::to_string(&entries)?);
        return Ok(());
    }
    println!(
        "{:>6} {:<24} {:<22} {:<7} {:<40} outcome",
        "SEQ", "TIME", "PRINCIPAL", "ACTION", "RESOURCE"
    );
    for e in entries {
        let outcome = match (&e.refused, e.note.count) {
            (Some(why), _) => format!("refused: {why}"),
            (None, n) if n > 1 => format!("{} ×{n}", e.note.outcome),
            _ => e.note.outcome.clone(),
        };
        println!(
            "{:>6} {:<24} {:<22} {:<7} {:<40} {outcome}",
            e.seq, e.time, e.note.principal, e.note.action, e.note.resource
        );
    }
    Ok(())
}

/// Exit 0 when the chain, every signature and the head verify; an error
/// naming the first bad `seq` otherwise (exit 1).
pub async fn audit_verify(v: &AuditVerifyArgs) -> anyhow::Result<()> {
    let a = &v.read;
    let Fetched {
        node,
        head,
        entries,
        checkpoints,
        cluster,
        admin_public_key,
    } = fetch(&a.api, 0)
        .await
        .context("cannot read the audit log")?;
    let (key_hex, key_from) = match &v.admin_key {
        Some(k) => (k.trim().to_owned(), "given"),
        None => (
            admin_public_key,
            "reported by the node (unverified: pass --admin-key)",
        ),
    };
    let result =
        bzzz_control::audit::verify_to_head(&entries, &head, bzzz_net::signed::public_key_of)
            .map_err(|b| (b.seq, b.why))
            .and_then(|()| {
                if checkpoints.is_empty() {
                    return Ok(0);
                }
                let pk = bzzz_crypto::records::parse_public_key(&key_hex)
                    .map_err(|e| (0, format!("admin public key: {e}")))?;
                bzzz_control::audit::verify_checkpoints(&entries, &checkpoints, &pk, &cluster)
                    .map_err(|b| (b.seq, b.why))
            });
    // Given the admin key, the node's word is not enough: checkpoints must
    // cover the log up to the last `max_unchecked` entries, or a node
    // could serve a rewritten tail (or no checkpoint at all).
    let result = result.and_then(|inside| {
        if v.admin_key.is_none() {
            return Ok(inside);
        }
        bzzz_control::audit::verify_coverage(&head, &checkpoints, inside, v.max_unchecked)
            .map(|()| inside)
            .map_err(|b| (b.seq, b.why))
    });
    let result = result.map(|inside| (inside, checkpoints.len()));
    match result {
        Ok((inside, total)) => {
            if a.json {
                println!(
                    "{}",
                    json!({"ok": true, "node": node, "entries": entries.len(), "head": head,
                        "first_seq": entries.first().map(|e| e.seq),
                        "checkpoints": total, "checkpoints_checked": inside, "admin_key": key_from})
                );
            } else {
                println!(
                    "audit log of {node}: {} entries verify; head seq {} {}; {total} checkpoint(s) signed by the admin key ({key_from}), {inside} against entries held here",
                    entries.len(),
                    head.seq,
                    head.hash
                );
            }
            Ok(())
        }
        Err((seq, why)) => {
            if a.json {
                println!(
                    "{}",
                    json!({"ok": false, "node": node, "seq": seq, "error": why})
                );
            }
            bail!("audit log of {node}: entry seq {seq} does not verify: {why}")
        }
    }
}
