//! The CLI side of the HTTP API: `bzzz status`, `bzzz peers`.

use std::time::Duration;

use anyhow::{Context, bail};
use bzzz_proto::api::{PeerInfo, StatusResponse};
use serde::de::DeserializeOwned;

use crate::cli::ReadArgs;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Checks and normalizes an `--api` URL.
pub fn api_base(url: &str) -> anyhow::Result<String> {
    let u = url.trim().trim_end_matches('/');
    if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() <= "http://".len() {
        bail!("--api {url:?} is not an http:// or https:// URL (example: http://127.0.0.1:8080)");
    }
    Ok(u.to_owned())
}

/// One HTTP client per process (connection pool shared by every call).
fn client() -> anyhow::Result<&'static reqwest::Client> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let c = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .context("cannot build an HTTP client")?;
    Ok(CLIENT.get_or_init(|| c))
}

pub async fn get<T: DeserializeOwned>(api: &str, path: &str) -> anyhow::Result<T> {
    let base = api_base(api)?;
    let url = format!("{base}{path}");
    let resp = client()?.get(&url).send().await.with_context(|| {
        format!("cannot reach the BZZZ API at {base} (is a node running there? set --api)")
    })?;
    let code = resp.status();
    if !code.is_success() {
        let body = resp.text().await.unwrap_or_default();
        bail!(
            "{url} answered {code}: {}",
            body.chars().take(500).collect::<String>()
        );
    }
    resp.json::<T>().await.with_context(|| {
        format!("{url} did not answer with the expected JSON (is it a BZZZ node?)")
    })
}

fn gib(b: u64) -> String {
    format!("{:.1}G", b as f64 / (1u64 << 30) as f64)
}

pub async fn status(args: &ReadArgs) -> anyhow::Result<()> {
    let s: StatusResponse = get(&args.api, "/api/v1/status").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let c = &s.capabilities;
    println!("node id:      {}", s.node_id);
    println!("version:      {}", s.version);
    println!("uptime:       {}s", s.uptime_secs);
    println!("api:          {}", s.api_addr);
    println!(
        "peers:        {} live, {} connected, mDNS {}",
        s.peer_count,
        s.connected_peers,
        if s.mdns { "on" } else { "off" }
    );
    for a in &s.listen_addrs {
        println!("listen:       {a}");
    }
    println!(
        "cpu:          {} × {} (load {:.2})",
        c.cpu.cores, c.cpu.model, c.cpu.load_1m
    );
    println!(
        "memory:       {} free of {}",
        gib(c.memory_free_bytes),
        gib(c.memory_total_bytes)
    );
    println!(
        "disk:         {} free of {}",
        gib(c.disk_free_bytes),
        gib(c.disk_total_bytes)
    );
    if c.gpus.is_empty() {
        println!("gpus:         none");
    }
    for g in &c.gpus {
        println!(
            "gpu:          {} {} {}{}",
            g.vendor,
            g.model,
            gib(g.vram_total_bytes),
            if g.declared { " (declared)" } else { "" }
        );
    }
    println!(
        "ollama:       {}",
        if c.ollama.present {
            format!("present, {} model(s)", c.ollama.models.len())
        } else {
            "absent".into()
        }
    );
    Ok(())
}

pub async fn peers(args: &ReadArgs) -> anyhow::Result<()> {
    let peers: Vec<PeerInfo> = get(&args.api, "/api/v1/peers").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&peers)?);
        return Ok(());
    }
    print!("{}", peers_table(&peers));
    Ok(())
}

/// Human table of peers.
pub fn peers_table(peers: &[PeerInfo]) -> String {
    let mut rows = vec![[
        "NODE".to_owned(),
        "CPU".into(),
        "LOAD".into(),
        "MEM FREE/TOTAL".into(),
        "GPUS".into(),
        "VRAM".into(),
        "OLLAMA".into(),
        "ZONE".into(),
        "LINK".into(),
        "SEEN".into(),
    ]];
    for p in peers {
        let c = &p.capabilities;
        rows.push([
            p.node_id.to_string(),
            c.cpu.cores.to_string(),
            format!("{:.2}", c.cpu.load_1m),
            format!("{}/{}", gib(c.memory_free_bytes), gib(c.memory_total_bytes)),
            c.gpus.len().to_string(),
            gib(c.vram_total_bytes()),
            if c.ollama.present {
                format!("{} models", c.ollama.models.len())
            } else {
                "-".into()
            },
            c.labels.zone.clone().unwrap_or_else(|| "-".into()),
            if p.connected {
                "direct".into()
            } else {
                "relayed".into()
            },
            format!("{:.1}s ago", p.last_seen_ms_ago as f64 / 1000.0),
        ]);
    }
    let mut widths = [0usize; 10];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if peers.is_empty() {
        out.push_str("(no other live nodes)\n");
    }
    out
}

// ---- keys, setup, tokens ---------------------------------------------------

/// Reads an operator password file (first line).
pub fn read_password_file(
    path: &std::path::Path,
    for_setup: bool,
) -> anyhow::Result<bzzz_crypto::operator::OperatorPassword> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the password file {}", path.display()))?,
    );
    let line = text.lines().next().unwrap_or("").to_owned();
    let p = if for_setup {
        bzzz_crypto::operator::OperatorPassword::new_for_setup(line)
    } else {
        bzzz_crypto::operator::OperatorPassword::new(line)
    };
    p.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// `Authorization: Basic` value for the operator.
pub fn basic_auth(p: &bzzz_crypto::operator::OperatorPassword) -> zeroize::Zeroizing<String> {
    use base64::Engine as _;
    zeroize::Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("operator:{}", p.expose()))
    ))
}

/// The words a started setup asks to confirm (`confirm_positions`, 1-based),
/// taken from `mnemonic`: for unattended confirmation, where the caller
/// already holds the words (`init --json`, `recover --api`, the demo).
pub fn confirmation_words(
    mnemonic: &str,
    started: &serde_json::Value,
) -> std::collections::BTreeMap<String, String> {
    let words: Vec<&str> = mnemonic.split(' ').collect();
    started["confirm_positions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let p = usize::try_from(p.as_u64()?).ok()?;
            let w = words.get(p.checked_sub(1)?)?;
            Some((p.to_string(), (*w).to_owned()))
        })
        .collect()
}

/// POSTs JSON; on an error status, fails with the API's message.
pub async fn post<T: DeserializeOwned>(
    api: &str,
    path: &str,
    body: &serde_json::Value,
    auth: Option<&bzzz_crypto::operator::OperatorPassword>,
) -> anyhow::Result<T> {
    let base = api_base(api)?;
    let url = format!("{base}{path}");
    let mut req = client()?
        .post(&url)
        .json(body)
        .timeout(Duration::from_secs(60));
    if let Some(p) = auth {
        req = req.header(reqwest::header::AUTHORIZATION, basic_auth(p).as_str());
    }
    let resp = req.send().await.with_context(|| {
        format!("cannot reach the BZZZ API at {base} (is a node running there? set --api)")
    })?;
    let code = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !code.is_success() {
        let msg = serde_json::from_str::<bzzz_proto::api::ApiError>(&text)
            .map(|e| e.error)
            .unwrap_or_else(|_| text.chars().take(500).collect());
        bail!("{path}: {code}: {msg}");
    }
    serde_json::from_str(&text)
        .with_context(|| format!("{url} did not answer with the expected JSON"))
}

pub async fn init(a: &crate::cli::InitArgs) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let password = read_password_file(&a.op.operator_password_file, true)?;
    let started: serde_json::Value = post(
        &a.op.api,
        "/api/v1/setup",
        &serde_json::json!({
            "cluster": a.cluster,
            "threshold": a.threshold,
            "shares": a.shares,
            "operator_password": password.expose(),
        }),
        None,
    )
    .await?;
    let field = |k: &str| {
        started
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned()
    };
    let mnemonic = zeroize::Zeroizing::new(field("mnemonic"));
    let words: Vec<String> = mnemonic.split(' ').map(str::to_owned).collect();
    let positions: Vec<usize> = started
        .get("confirm_positions")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let interactive = !a.op.json && !a.yes && std::io::stdin().is_terminal();
    let setup_id = field("setup_id");
    let confirm = |typed: std::collections::BTreeMap<String, String>| {
        let body = serde_json::json!({ "setup_id": setup_id, "words": typed });
        async move { post::<serde_json::Value>(&a.op.api, "/api/v1/setup/confirm", &body, None).await }
    };
    let done: serde_json::Value = if interactive {
        println!("MASTER KEY: write these 24 words down now, on paper. They are shown once.");
        println!("Anyone with them controls the cluster; without them it cannot be recovered.\n");
        for (i, w) in words.iter().enumerate() {
            print!(
                "{:>2}. {:<10}{}",
                i + 1,
                w,
                if i % 6 == 5 { "\n" } else { " " }
            );
        }
        println!("\n(hex: {})\n", field("master_key_hex"));
        let stdin = std::io::stdin();
        let mut attempt = 0;
        loop {
            let mut typed = std::collections::BTreeMap::new();
            for p in &positions {
                print!("Re-type word #{p}: ");
                std::io::stdout().flush().ok();
                let mut line = String::new();
                if stdin.lock().read_line(&mut line)? == 0 {
                    bail!("input closed before the words were confirmed; nothing was created");
                }
                typed.insert(p.to_string(), line.trim().to_owned());
            }
            match confirm(typed).await {
                Ok(d) => break d,
                Err(e) if attempt < 2 && e.to_string().contains("does not match") => {
                    attempt += 1;
                    println!("{e:#}\nTry again (check your written copy).");
                }
                Err(e) => return Err(e),
            }
        }
    } else {
        // Unattended: nobody to ask; the caller receives the words.
        confirm(confirmation_words(&mnemonic, &started)).await?
    };
    if a.op.json {
        let mut out = done.clone();
        out["mnemonic"] = serde_json::Value::String(mnemonic.to_string());
        out["master_key_hex"] = serde_json::Value::String(field("master_key_hex"));
        println!("{out}");
        return Ok(());
    }
    if !interactive {
        println!("MASTER KEY (shown once; write it down): {}", &*mnemonic);
        println!("hex: {}", field("master_key_hex"));
    }
    println!(
        "Cluster '{}' initialized. Admin public key: {}",
        done["cluster"].as_str().unwrap_or(""),
        done["admin_public_key"].as_str().unwrap_or("")
    );
    println!(
        "Admin signatures need {} of {} shares.",
        done["threshold"], done["shares"]
    );
    if let Some(u) = done["undelivered"].as_array()
        && !u.is_empty()
    {
        println!(
            "Warning: {} node(s) did not receive their records:",
            u.len()
        );
        for x in u {
            println!("  {} {}", x["node_id"], x["error"]);
        }
    }
    Ok(())
}

pub async fn recover(a: &crate::cli::RecoverArgs) -> anyhow::Result<()> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&a.mnemonic_file)
            .with_context(|| format!("cannot read {}", a.mnemonic_file.display()))?,
    );
    let master = bzzz_crypto::threshold::MasterKey::from_mnemonic(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.mnemonic_file.display()))?;
    let pk = hex::encode(master.admin_key().public());
    let Some(api) = &a.api else {
        if a.json {
            println!("{}", serde_json::json!({ "admin_public_key": pk }));
        } else {
            println!("Cluster admin public key: {pk}");
        }
        return Ok(());
    };
    let (Some(cluster), Some(pw_file)) = (&a.cluster, &a.operator_password_file) else {
        bail!("--api needs --cluster and --operator-password-file");
    };
    let password = read_password_file(pw_file, true)?;
    let started: serde_json::Value = post(
        api,
        "/api/v1/setup",
        &serde_json::json!({
            "cluster": cluster,
            "threshold": a.threshold,
            "shares": a.shares,
            "operator_password": password.expose(),
            "mnemonic": &*master.mnemonic(),
        }),
        None,
    )
    .await?;
    // The operator typed these words in; no need to make them re-type them.
    let typed = confirmation_words(&master.mnemonic(), &started);
    let done: serde_json::Value = post(
        api,
        "/api/v1/setup/confirm",
        &serde_json::json!({ "setup_id": started["setup_id"], "words": typed }),
        None,
    )
    .await?;
    if done["admin_public_key"].as_str() != Some(pk.as_str()) {
        bail!(
            "the rebuilt cluster has another admin key: {}",
            done["admin_public_key"]
        );
    }
    if a.json {
        println!("{done}");
    } else {
        println!(
            "Cluster '{cluster}' rebuilt with fresh shares ({} of {}); admin public key {pk}",
            done["threshold"], done["shares"]
        );
    }
    Ok(())
}

pub async fn keys_status(a: &ReadArgs) -> anyhow::Result<()> {
    let s: crate::keys::KeysStatus = get(&a.api, "/api/v1/keys").await?;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    if !s.initialized {
        println!("Not initialized: open /setup in a browser or run `bzzz init`.");
        return Ok(());
    }
    println!("cluster           {}", s.cluster.unwrap_or_default());
    println!(
        "admin public key  {}",
        s.admin_public_key.unwrap_or_default()
    );
    println!(
        "threshold         {} of {}",
        s.threshold.unwrap_or(0),
        s.shares.unwrap_or(0)
    );
    match s.share_index {
        Some(i) => println!("this node's share #{i} ({})", s.share_state),
        None => println!("this node's share none"),
    }
    if let Some(e) = s.share_error {
        println!("share problem     {e}");
    }
    Ok(())
}

pub async fn keys_sign(a: &crate::cli::SignArgs) -> anyhow::Result<()> {
    let password = read_password_file(&a.op.operator_password_file, false)?;
    let signers = (!a.signers.is_empty()).then(|| a.signers.clone());
    let r: serde_json::Value = post(
        &a.op.api,
        "/api/v1/keys/sign",
        &serde_json::json!({ "message": a.message, "signers": signers }),
        Some(&password),
    )
    .await?;
    if a.op.json {
        println!("{r}");
    } else {
        println!("signature  {}", r["signature"].as_str().unwrap_or(""));
        println!("signers    {}", r["signers"]);
        println!(
            "signed     hex {}",
            r["signed_bytes_hex"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn token_create(a: &crate::cli::TokenArgs) -> anyhow::Result<()> {
    let password = read_password_file(&a.op.operator_password_file, false)?;
    let ttl: Duration = a.ttl.into();
    let r: serde_json::Value = post(
        &a.op.api,
        "/api/v1/tokens",
        &serde_json::json!({ "ttl_secs": ttl.as_secs(), "uses": a.uses }),
        Some(&password),
    )
    .await?;
    if a.op.json {
        println!("{r}");
    } else {
        println!("{}", r["token"].as_str().unwrap_or(""));
        eprintln!(
            "Valid until unix time {}. On the new node: bzzz node run --join-token-file FILE",
            r["expires_at"]
        );
    }
    Ok(())
}

// ---- control plane -----------------------------------------------------------

pub async fn leader(a: &ReadArgs) -> anyhow::Result<()> {
    let l: crate::control::LeaderInfo = get(&a.api, "/api/v1/leader").await?;
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

pub async fn role_create(a: &crate::cli::RoleArgs) -> anyhow::Result<()> {
    let password = read_password_file(&a.op.operator_password_file, false)?;
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
    let r: serde_json::Value = post(
        &a.op.api,
        "/api/v1/roles",
        &serde_json::to_value(&role)?,
        Some(&password),
    )
    .await?;
    if a.op.json {
        println!("{r}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_are_checked() {
        assert_eq!(
            api_base("http://127.0.0.1:8080/").expect("ok"),
            "http://127.0.0.1:8080"
        );
        assert!(api_base("127.0.0.1:8080").is_err());
        assert!(api_base("ftp://x").is_err());
        assert!(api_base("http://").is_err());
    }
}
