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

// ---- deploy ------------------------------------------------------------------

fn read_first_line(
    path: &std::path::Path,
    what: &str,
) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the {what} file {}", path.display()))?,
    );
    Ok(zeroize::Zeroizing::new(
        text.lines().next().unwrap_or("").to_owned(),
    ))
}

/// `bzzz deploy`: starts a run on the node at `--api`, follows its event
/// stream, and returns whether every host made it. With `--json`, stdout
/// gets each event as one JSON line (`host`, `state`, …); otherwise a live
/// line per host (indicatif) and a summary.
pub async fn deploy(a: &crate::cli::DeployArgs) -> anyhow::Result<bool> {
    use std::io::IsTerminal;
    let password = read_password_file(&a.op.operator_password_file, false)?;
    let hosts = match a.hosts.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the host file {file}"))?,
        None => a.hosts.clone(),
    };
    // Check the list here too, for an early, local error.
    bzzz_deploy::parse_hosts(&hosts).map_err(|e| anyhow::anyhow!("--hosts: {e}"))?;
    let mut body = serde_json::json!({
        "hosts": hosts,
        "ssh_user": a.ssh_user,
        "ssh_port": a.ssh_port,
        "accept_new_host_keys": a.accept_new_host_keys,
        "http_port": a.http_port,
        "p2p_port": a.p2p_port,
        "mdns": !a.no_mdns,
        "parallel": a.parallel,
        "uninstall": a.uninstall,
        "join_timeout_secs": Duration::from(a.join_timeout).as_secs().max(5),
    });
    if let Some(p) = &a.prefix {
        body["prefix"] = p.clone().into();
    }
    if let Some(k) = &a.ssh_key {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(k)
                .with_context(|| format!("cannot read the SSH key {}", k.display()))?,
        );
        // Decode here: a wrong passphrase or a public key fails before anything runs.
        let pass = match &a.ssh_key_passphrase_file {
            Some(p) => Some(read_first_line(p, "passphrase")?),
            None => None,
        };
        bzzz_deploy::ssh::Credential::from_key_text(&text, pass.as_ref().map(|p| p.as_str()))
            .map_err(|e| anyhow::anyhow!("{}: {e}", k.display()))?;
        body["ssh_key"] = text.as_str().into();
        if let Some(p) = pass {
            body["ssh_key_passphrase"] = p.as_str().into();
        }
    }
    if let Some(p) = &a.ssh_password_file {
        body["ssh_password"] = read_first_line(p, "SSH password")?.as_str().into();
    }
    if let Some(k) = &a.known_hosts {
        body["known_hosts"] = std::fs::read_to_string(k)
            .with_context(|| format!("cannot read {}", k.display()))?
            .into();
    }
    let started: anyhow::Result<serde_json::Value> =
        post(&a.op.api, "/api/v1/deploy", &body, Some(&password)).await;
    drop(body);
    let started = started?;
    let id = started["id"].as_str().unwrap_or_default().to_owned();
    let host_list: Vec<String> = started["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h.as_str().map(str::to_owned))
        .collect();

    // Follow the event stream (SSE).
    let base = api_base(&a.op.api)?;
    let sse = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
        .context("cannot build an HTTP client")?;
    let mut resp = sse
        .get(format!("{base}/api/v1/deploy/{id}/events"))
        .header(
            reqwest::header::AUTHORIZATION,
            basic_auth(&password).as_str(),
        )
        .send()
        .await
        .with_context(|| format!("cannot follow the deploy at {base}"))?;
    if !resp.status().is_success() {
        bail!("deploy events: {}", resp.status());
    }
    let fancy = !a.op.json && std::io::stderr().is_terminal();
    let multi = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template("{spinner} {prefix:<18} {wide_msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    let bars: std::collections::BTreeMap<String, indicatif::ProgressBar> = if fancy {
        host_list
            .iter()
            .map(|h| {
                let b = multi.add(indicatif::ProgressBar::new_spinner());
                b.set_style(style.clone());
                b.set_prefix(h.clone());
                b.enable_steady_tick(Duration::from_millis(120));
                (h.clone(), b)
            })
            .collect()
    } else {
        Default::default()
    };
    let mut buf = String::new();
    let mut event_name = String::new();
    let mut done: Option<serde_json::Value> = None;
    while done.is_none() {
        let Some(chunk) = resp
            .chunk()
            .await
            .context("the deploy event stream broke")?
        else {
            break;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(nl) = buf.find('\n') {
            let line = buf[..nl].trim_end_matches('\r').to_owned();
            buf.drain(..=nl);
            if let Some(e) = line.strip_prefix("event:") {
                event_name = e.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                let v: serde_json::Value = serde_json::from_str(d.trim()).unwrap_or_default();
                if event_name == "done" {
                    done = Some(v);
                } else if a.op.json {
                    println!("{v}");
                } else {
                    let host = v["host"].as_str().unwrap_or("");
                    let state = v["state"].as_str().unwrap_or("");
                    let mut msg = state.to_owned();
                    if let Some(c) = v["cause"].as_str() {
                        msg.push_str(&format!(" ({c})"));
                    }
                    if let Some(m) = v["message"].as_str() {
                        msg.push_str(": ");
                        msg.push_str(m);
                    }
                    if let (Some(fp), "authenticated") = (v["fingerprint"].as_str(), state) {
                        msg.push_str(&format!(" [{fp}]"));
                    }
                    match bars.get(host) {
                        Some(b) if matches!(state, "joined" | "failed" | "removed") => {
                            b.finish_with_message(msg)
                        }
                        Some(b) => b.set_message(msg),
                        None => eprintln!("{host:<18} {msg}"),
                    }
                }
            } else if line.is_empty() {
                event_name.clear();
            }
        }
    }
    for b in bars.values() {
        if !b.is_finished() {
            b.abandon();
        }
    }
    let Some(done) = done else {
        bail!(
            "the deploy event stream ended early; run `bzzz deploy` again to see (it is idempotent)"
        );
    };
    let outcomes = done["outcomes"].as_array().cloned().unwrap_or_default();
    let ok = outcomes.iter().filter(|o| o["ok"] == true).count();
    let changed = outcomes.iter().filter(|o| o["changed"] == true).count();
    let verb = if a.uninstall {
        "removed from"
    } else {
        "joined"
    };
    eprintln!(
        "{ok} of {} hosts {verb}; {changed} changed, {} unchanged, {} failed.",
        outcomes.len(),
        ok - changed.min(ok),
        outcomes.len() - ok
    );
    if ok == outcomes.len() && changed == 0 && !a.uninstall {
        eprintln!("Nothing changed: every host was already deployed.");
    }
    for o in outcomes.iter().filter(|o| o["ok"] != true) {
        eprintln!(
            "  {} failed: {}",
            o["host"].as_str().unwrap_or("?"),
            o["cause"].as_str().unwrap_or("unknown")
        );
    }
    Ok(ok == outcomes.len() && !outcomes.is_empty())
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
