//! `bzzz init`, `bzzz recover`, `bzzz keys status|sign`, `bzzz token create`.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use bzzz_proto::api::{
    KeysStatus, SetupConfirm, SetupDone, SetupStarted, SignRequest, ThresholdSignature,
    TokenCreated, TokenRequest,
};
use serde_json::json;

use super::client::{get, post, read_password_file};
use super::{InitArgs, ReadArgs, RecoverArgs, SignArgs, TokenArgs};

/// Confirms a started setup with the given words.
async fn confirm(
    api: &str,
    started: &SetupStarted,
    words: std::collections::BTreeMap<String, String>,
) -> anyhow::Result<SetupDone> {
    let body = SetupConfirm {
        setup_id: started.setup_id.clone(),
        words,
    };
    post(api, "/api/v1/setup/confirm", &body, None).await
}

pub async fn init(a: &InitArgs) -> anyhow::Result<()> {
    let password = read_password_file(a.op.operator_password_path()?, true)?;
    let started: SetupStarted = post(
        &a.op.api,
        "/api/v1/setup",
        &json!({
            "cluster": a.cluster,
            "threshold": a.threshold,
            "shares": a.shares,
            "holders": a.holders,
            "operator_password": password.expose(),
        }),
        None,
    )
    .await?;
    let words: Vec<&str> = started.mnemonic.expose().split(' ').collect();
    let interactive = !a.op.json && !a.yes && std::io::stdin().is_terminal();
    let done = if interactive {
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
        println!("\n(hex: {})\n", started.master_key_hex.expose());
        let stdin = std::io::stdin();
        let mut attempt = 0;
        loop {
            let mut typed = std::collections::BTreeMap::new();
            for p in &started.confirm_positions {
                print!("Re-type word #{p}: ");
                std::io::stdout().flush().ok();
                let mut line = String::new();
                if stdin.lock().read_line(&mut line)? == 0 {
                    bail!("input closed before the words were confirmed; nothing was created");
                }
                typed.insert(p.to_string(), line.trim().to_owned());
            }
            match confirm(&a.op.api, &started, typed).await {
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
        confirm(&a.op.api, &started, started.confirmation_words()).await?
    };
    if a.op.json {
        let mut out = serde_json::to_value(&done)?;
        out["mnemonic"] = started.mnemonic.expose().into();
        out["master_key_hex"] = started.master_key_hex.expose().into();
        println!("{out}");
        return Ok(());
    }
    if !interactive {
        println!(
            "MASTER KEY (shown once; write it down): {}",
            started.mnemonic.expose()
        );
        println!("hex: {}", started.master_key_hex.expose());
    }
    println!(
        "Cluster '{}' initialized. Admin public key: {}",
        done.cluster, done.admin_public_key
    );
    println!(
        "Admin signatures need {} of {} shares.",
        done.threshold, done.shares
    );
    if !done.undelivered.is_empty() {
        println!(
            "Warning: {} node(s) did not receive their records:",
            done.undelivered.len()
        );
        for x in &done.undelivered {
            println!("  {} {}", x.node_id, x.error);
        }
    }
    Ok(())
}

pub async fn recover(a: &RecoverArgs) -> anyhow::Result<()> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&a.mnemonic_file)
            .with_context(|| format!("cannot read {}", a.mnemonic_file.display()))?,
    );
    let master = bzzz_crypto::threshold::MasterKey::from_mnemonic(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.mnemonic_file.display()))?;
    let pk = hex::encode(master.admin_key().public());
    let Some(api) = &a.api else {
        if a.json {
            println!("{}", json!({ "admin_public_key": pk }));
        } else {
            println!("Cluster admin public key: {pk}");
        }
        return Ok(());
    };
    let (Some(cluster), Some(pw_file)) = (&a.cluster, &a.operator_password_file) else {
        bail!("--api needs --cluster and --operator-password-file");
    };
    let password = read_password_file(pw_file, true)?;
    let started: SetupStarted = post(
        api,
        "/api/v1/setup",
        &json!({
            "cluster": cluster,
            "threshold": a.threshold,
            "shares": a.shares,
            "holders": a.holders,
            "operator_password": password.expose(),
            "mnemonic": &*master.mnemonic(),
        }),
        None,
    )
    .await?;
    // The operator typed these words in; no need to make them re-type them.
    let done = confirm(api, &started, started.confirmation_words()).await?;
    if done.admin_public_key != pk {
        bail!(
            "the rebuilt cluster has another admin key: {}",
            done.admin_public_key
        );
    }
    if a.json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        println!(
            "Cluster '{cluster}' rebuilt with fresh shares ({} of {}); admin public key {pk}",
            done.threshold, done.shares
        );
    }
    Ok(())
}

pub async fn keys_status(a: &ReadArgs) -> anyhow::Result<()> {
    let s: KeysStatus = get(&a.api, "/api/v1/keys").await?;
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
    println!(
        "key epoch         {} (policy {})",
        s.epoch.unwrap_or(0),
        s.policy.as_deref().unwrap_or("?")
    );
    match s.share_index {
        Some(i) => println!("this node's share #{i} ({})", s.share_state),
        None => println!("this node's share none"),
    }
    for w in &s.warnings {
        println!("warning           {w}");
    }
    if let Some(e) = s.share_error {
        println!("share problem     {e}");
    }
    Ok(())
}

pub async fn keys_sign(a: &SignArgs) -> anyhow::Result<()> {
    let password = a.op.credential()?;
    let body = SignRequest {
        message: a.message.clone(),
        signers: (!a.signers.is_empty()).then(|| a.signers.clone()),
    };
    let r: ThresholdSignature =
        post(&a.op.api, "/api/v1/keys/sign", &body, Some(&password)).await?;
    if a.op.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("signature  {}", r.signature);
        println!(
            "signers    {}",
            r.signers
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("signed     hex {}", r.signed_bytes_hex);
    }
    Ok(())
}

pub async fn token_create(a: &TokenArgs) -> anyhow::Result<()> {
    let password = a.op.credential()?;
    let ttl: Duration = a.ttl.into();
    let body = TokenRequest {
        ttl_secs: Some(ttl.as_secs()),
        uses: Some(a.uses),
    };
    let r: TokenCreated = post(&a.op.api, "/api/v1/tokens", &body, Some(&password)).await?;
    if a.op.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("{}", r.token.expose());
        eprintln!(
            "Valid until unix time {}. On the new node: bzzz node run --join-token-file FILE",
            r.expires_at
        );
    }
    Ok(())
}
