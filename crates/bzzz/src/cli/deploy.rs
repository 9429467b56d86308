//! `bzzz deploy`: starts a run on the node at `--api`, follows its event
//! stream, and returns whether every host made it. With `--json`, stdout
//! gets each event as one JSON line (`host`, `state`, …); otherwise a live
//! line per host (indicatif) and a summary.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, bail};
use bzzz_deploy::job::{Done, Event, State};
use bzzz_proto::api::DeployStarted;

use super::DeployArgs;
use super::client::{SseReader, post, read_first_line};

pub async fn deploy(a: &DeployArgs) -> anyhow::Result<bool> {
    let password = a.op.credential()?;
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
    let started: anyhow::Result<DeployStarted> =
        post(&a.op.api, "/api/v1/deploy", &body, Some(&password)).await;
    drop(body);
    let started = started?;
    let mut events = SseReader::open(&a.op.api, &started.events, &password)
        .await
        .context("cannot follow the deploy")?;

    let fancy = !a.op.json && std::io::stderr().is_terminal();
    let bars = Bars::new(fancy, &started.hosts);
    let mut done: Option<Done> = None;
    while let Some(e) = events.next().await? {
        if e.event == "done" {
            done = Some(serde_json::from_str(&e.data).context("the deploy's last event")?);
            break;
        }
        if a.op.json {
            println!("{}", e.data);
            continue;
        }
        match serde_json::from_str::<Event>(&e.data) {
            Ok(ev) => bars.show(&ev),
            Err(err) => eprintln!("unreadable deploy event ({err}): {}", e.data),
        }
    }
    bars.finish();
    let Some(done) = done else {
        bail!(
            "the deploy event stream ended early; run `bzzz deploy` again to see (it is idempotent)"
        );
    };
    Ok(summary(&done, a.uninstall))
}

/// Prints the summary; true when every host made it.
fn summary(done: &Done, uninstall: bool) -> bool {
    let all = done.outcomes.len();
    let ok = done.outcomes.iter().filter(|o| o.ok).count();
    let changed = done.outcomes.iter().filter(|o| o.changed).count();
    let verb = if uninstall { "removed from" } else { "joined" };
    eprintln!(
        "{ok} of {all} hosts {verb}; {changed} changed, {} unchanged, {} failed.",
        ok - changed.min(ok),
        all - ok
    );
    if ok == all && changed == 0 && !uninstall {
        eprintln!("Nothing changed: every host was already deployed.");
    }
    for o in done.outcomes.iter().filter(|o| !o.ok) {
        let cause = o
            .cause
            .and_then(|c| serde_json::to_value(c).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        eprintln!("  {} failed: {cause}", o.host);
    }
    ok == all && all > 0
}

/// One live line per host on a terminal; plain lines otherwise.
struct Bars {
    _multi: indicatif::MultiProgress,
    bars: BTreeMap<String, indicatif::ProgressBar>,
}

impl Bars {
    fn new(fancy: bool, hosts: &[String]) -> Self {
        let multi = indicatif::MultiProgress::new();
        let style = indicatif::ProgressStyle::with_template("{spinner} {prefix:<18} {wide_msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        let bars = if fancy {
            hosts
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
            BTreeMap::new()
        };
        Self {
            _multi: multi,
            bars,
        }
    }

    fn show(&self, e: &Event) {
        let state = serde_json::to_value(e.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut msg = state.clone();
        if let Some(c) = e.cause.and_then(|c| serde_json::to_value(c).ok())
            && let Some(c) = c.as_str()
        {
            msg.push_str(&format!(" ({c})"));
        }
        if !e.message.is_empty() {
            msg.push_str(": ");
            msg.push_str(&e.message);
        }
        if let (Some(fp), State::Authenticated) = (&e.fingerprint, e.state) {
            msg.push_str(&format!(" [{fp}]"));
        }
        match self.bars.get(&e.host) {
            Some(b) if matches!(e.state, State::Joined | State::Failed | State::Removed) => {
                b.finish_with_message(msg)
            }
            Some(b) => b.set_message(msg),
            None => eprintln!("{:<18} {msg}", e.host),
        }
    }

    fn finish(&self) {
        for b in self.bars.values() {
            if !b.is_finished() {
                b.abandon();
            }
        }
    }
}
