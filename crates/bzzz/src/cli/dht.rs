//! `bzzz dht put|get|history|ls` and `bzzz config migrate`.

use std::path::Path;

use anyhow::Context as _;
use bzzz_proto::dht::{HistoryEntry, ListEntry, PutRequest, PutResult, RecordView};

use super::client::{get, post};
use super::{DhtAddrArgs, DhtLsArgs, DhtPutArgs, MigrateArgs};

fn q(s: &str) -> String {
    serde_urlencoded::to_string([("address", s)]).unwrap_or_default()
}

pub async fn put(a: &DhtPutArgs) -> anyhow::Result<()> {
    let password = a.op.credential()?;
    let req = match (&a.value, &a.file) {
        (Some(v), None) => PutRequest {
            address: a.address.clone(),
            value: Some(v.clone()),
            value_base64: None,
        },
        (None, Some(f)) => {
            let meta =
                std::fs::metadata(f).with_context(|| format!("cannot read {}", f.display()))?;
            if meta.len() > bzzz_proto::dht::MAX_VALUE as u64 {
                anyhow::bail!(
                    "{} is {} bytes; records hold at most {} bytes (256 KiB)",
                    f.display(),
                    meta.len(),
                    bzzz_proto::dht::MAX_VALUE
                );
            }
            let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
            match String::from_utf8(bytes) {
                Ok(t) => PutRequest {
                    address: a.address.clone(),
                    value: Some(t),
                    value_base64: None,
                },
                Err(e) => {
                    use base64::Engine as _;
                    PutRequest {
                        address: a.address.clone(),
                        value: None,
                        value_base64: Some(
                            base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
                        ),
                    }
                }
            }
        }
        _ => anyhow::bail!("give exactly one of --value and --file"),
    };
    let r: PutResult = post(&a.op.api, "/api/v1/dht/put", &req, Some(&password)).await?;
    if a.op.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} version {} (stored at {} other node(s))",
            r.address, r.version, r.stored_at
        );
    }
    Ok(())
}

pub async fn get_cmd(a: &DhtAddrArgs) -> anyhow::Result<()> {
    let r: RecordView = get(&a.read.api, &format!("/api/v1/dht/get?{}", q(&a.address))).await?;
    if a.read.json {
        println!("{}", serde_json::to_string(&r)?);
    } else if let Some(v) = &r.value {
        print!("{v}");
        if !v.ends_with('\n') {
            println!();
        }
    } else {
        println!(
            "(binary, {} bytes base64) {}",
            r.value_base64.as_ref().map_or(0, String::len),
            r.value_base64.unwrap_or_default()
        );
    }
    Ok(())
}

pub async fn history(a: &DhtAddrArgs) -> anyhow::Result<()> {
    let h: Vec<HistoryEntry> = get(
        &a.read.api,
        &format!("/api/v1/dht/history?{}", q(&a.address)),
    )
    .await?;
    if a.read.json {
        println!("{}", serde_json::to_string(&h)?);
        return Ok(());
    }
    println!("{:<8} {:<26} AUTHOR", "VERSION", "TIME");
    for e in h {
        println!("{:<8} {:<26} {}", e.version, e.timestamp, e.author);
    }
    Ok(())
}

pub async fn ls(a: &DhtLsArgs) -> anyhow::Result<()> {
    let p = serde_urlencoded::to_string([("pattern", &a.pattern)]).unwrap_or_default();
    let l: Vec<ListEntry> = get(&a.read.api, &format!("/api/v1/dht/ls?{p}")).await?;
    if a.read.json {
        println!("{}", serde_json::to_string(&l)?);
        return Ok(());
    }
    for e in l {
        println!("{:<6} {}", e.version, e.address);
    }
    Ok(())
}

/// One step of the migration plan.
#[derive(Debug, serde::Serialize)]
struct Step {
    section: &'static str,
    address: &'static str,
    /// `put` (the DHT gets the local value), `keep` (the DHT already has
    /// a value; the local one is dropped), `none` (not set locally).
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// `bzzz config migrate`: moves the cluster-wide sections of the local
/// file into the DHT, then rewrites the file without them (a backup is
/// kept beside it). Idempotent: a section already in the DHT is not
/// written again; a file without them is left alone.
pub async fn migrate(a: &MigrateArgs) -> anyhow::Result<()> {
    let path = a.config.clone();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut tree: serde_norway::Value = if text.trim().is_empty() {
        serde_norway::Value::Mapping(Default::default())
    } else {
        serde_norway::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))?
    };
    let mut steps = Vec::new();
    let mut puts = Vec::new();
    for (section, address) in crate::dht::CONFIG_ADDRESSES {
        let key = section.trim_start_matches("control.");
        let local = tree.get("control").and_then(|c| c.get(key)).cloned();
        let Some(local) = local else {
            steps.push(Step {
                section,
                address,
                action: "none",
                note: None,
            });
            continue;
        };
        // The value as the node would read it (checked now, not at start).
        let json_value = match section {
            "control.weights" => {
                let w: bzzz_control::score::Weights = serde_norway::from_value(local)
                    .with_context(|| format!("{section} in {}", path.display()))?;
                w.validate()
                    .map_err(|e| anyhow::anyhow!("{section}: {e}"))?;
                serde_json::to_string(&w)?
            }
            _ => {
                let p: bzzz_control::leadership::Policy = serde_norway::from_value(local)
                    .with_context(|| format!("{section} in {}", path.display()))?;
                serde_json::to_string(&p)?
            }
        };
        let current: anyhow::Result<RecordView> =
            get(&a.op.api, &format!("/api/v1/dht/get?{}", q(address))).await;
        match current {
            Ok(v) => {
                let same = v.value.as_deref() == Some(json_value.as_str());
                steps.push(Step {
                    section,
                    address,
                    action: "keep",
                    note: Some(if same {
                        format!("the DHT already holds this value (version {})", v.version)
                    } else {
                        format!(
                            "the DHT holds version {} with another value, which stays; change it with `bzzz dht put`",
                            v.version
                        )
                    }),
                });
            }
            Err(e) if e.to_string().contains("no record") => {
                steps.push(Step {
                    section,
                    address,
                    action: "put",
                    note: None,
                });
                puts.push((address, json_value));
            }
            Err(e) => return Err(e.context(format!("cannot read {address}"))),
        }
    }
    let changes_file = steps.iter().any(|s| s.action != "none");
    if a.dry_run {
        if a.op.json {
            println!(
                "{}",
                serde_json::json!({"dry_run": true, "file": path, "steps": steps})
            );
        } else {
            print_plan(&steps, &path, changes_file, true);
        }
        return Ok(());
    }
    let password = a.op.credential()?;
    let mut versions = Vec::new();
    for (address, value) in puts {
        let r: PutResult = post(
            &a.op.api,
            "/api/v1/dht/put",
            &PutRequest {
                address: address.to_owned(),
                value: Some(value),
                value_base64: None,
            },
            Some(&password),
        )
        .await
        .with_context(|| format!("cannot write {address}"))?;
        versions.push(serde_json::json!({"address": r.address, "version": r.version}));
    }
    let mut backup = None;
    if changes_file {
        if let Some(serde_norway::Value::Mapping(c)) = tree.get_mut("control") {
            c.remove("weights");
            c.remove("leadership");
        }
        let b = backup_path(&path);
        std::fs::copy(&path, &b)
            .with_context(|| format!("cannot back up {} to {}", path.display(), b.display()))?;
        let out = serde_norway::to_string(&tree)?;
        let tmp = path.with_extension("migrate.tmp");
        std::fs::write(&tmp, out).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        backup = Some(b);
    }
    if a.op.json {
        println!(
            "{}",
            serde_json::json!({"dry_run": false, "file": path, "backup": backup, "steps": steps, "written": versions})
        );
    } else {
        print_plan(&steps, &path, changes_file, false);
        if let Some(b) = backup {
            println!(
                "{} rewritten without them; the old file is at {}",
                path.display(),
                b.display()
            );
        }
    }
    Ok(())
}

fn backup_path(path: &Path) -> std::path::PathBuf {
    let mut n = 0;
    loop {
        let suffix = if n == 0 {
            "pre-migrate".to_owned()
        } else {
            format!("pre-migrate.{n}")
        };
        let b = path.with_extension(format!(
            "{}.{suffix}",
            path.extension().and_then(|e| e.to_str()).unwrap_or("yaml")
        ));
        if !b.exists() {
            return b;
        }
        n += 1;
    }
}

fn print_plan(steps: &[Step], path: &Path, changes_file: bool, dry: bool) {
    for s in steps {
        let what = match s.action {
            "put" => format!("move to {}", s.address),
            "keep" => format!("drop (cluster value at {} stays)", s.address),
            _ => "not set in the file: nothing to move".to_owned(),
        };
        println!(
            "{:<20} {what}{}",
            s.section,
            s.note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    }
    if dry {
        println!(
            "dry run: nothing written{}",
            if changes_file {
                format!("; {} would be rewritten (backup kept)", path.display())
            } else {
                String::new()
            }
        );
    }
}
