//! `bzzz deploy` against real `sshd`s in the namespace lab (SPEC §4).
//!
//! Host 1 runs a seed node (a one-node cluster); hosts 2–5 run only sshd.
//! Hosts fetch the binary over HTTP from the seed; host 5 cannot (its
//! firewall rejects the seed's HTTP port) and gets it over SSH instead.
//! The deploy CLI (inside host 1) asks the seed to deploy to hosts 2–5:
//! 1. all four join (5 members, one leader) within 60 s, and within 30 s of
//!    the last join the admin key is re-dealt to them: 3 of 5, one epoch;
//! 2. a second run changes nothing and says so;
//! 3. a host that no longer accepts our key fails with cause `auth` while
//!    the other three succeed;
//! 4. a host whose host key changed is refused (`host_key`), even with
//!    `--accept-new-host-keys`;
//! 5. `--uninstall` stops and removes a node.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use bzzz_testkit::lab::{self, Lab, SSH_PREFIX};
use bzzz_testkit::wait_until;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "deploy-lab-operator-pw";

fn keygen(path: &Path) {
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "{out:?}");
}

struct Run {
    ok: bool,
    events: Vec<serde_json::Value>,
    stderr: String,
}

impl Run {
    /// The last state of `host`.
    fn last(&self, host: &str) -> Option<&serde_json::Value> {
        self.events.iter().rev().find(|e| e["host"] == host)
    }
    fn states(&self, host: &str) -> Vec<&str> {
        self.events
            .iter()
            .filter(|e| e["host"] == host)
            .filter_map(|e| e["state"].as_str())
            .collect()
    }
}

fn deploy(lab: &Lab, hosts: &[usize], extra: &[&str]) -> Run {
    let out: Output = lab.deploy(1, hosts, extra).expect("bzzz deploy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for e in &events {
        assert!(
            e["host"].is_string() && e["state"].is_string(),
            "every line has host and state: {e}"
        );
    }
    Run {
        ok: out.status.success(),
        events,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn members(lab: &Lab) -> usize {
    lab.get_json(1, "/api/v1/peers")
        .map_or(0, |v| v.as_array().map_or(0, |a| a.len()))
        + 1
}

#[test]
fn deploy_to_four_hosts_rerun_bad_credentials_and_changed_host_key() {
    if !lab::available() {
        return;
    }
    let mut lab = Lab::new(Path::new(BIN), 5).expect("lab");
    let key = lab.dir.path().join("id_ed25519");
    keygen(&key);
    let other = lab.dir.path().join("other_ed25519");
    keygen(&other);
    let pubkey = lab.dir.path().join("id_ed25519.pub");
    for i in 2..=5 {
        lab.start_sshd(i, &pubkey, false).expect("sshd");
    }
    lab.start_node(1, &[]).expect("seed node");
    lab.init_cluster(1, "deploy-lab", PASSWORD).expect("init");
    let ips: Vec<String> = (0..=5)
        .map(|i| {
            if i == 0 {
                String::new()
            } else {
                lab.host(i).ip.clone()
            }
        })
        .collect();
    let ip = |i: usize| ips[i].clone();

    // 1. Four hosts join within 60 s (trust on first use: fingerprints pinned).
    // Host 5 cannot reach the seed's HTTP port: it gets the binary over SSH,
    // the others fetch it over HTTP.
    let seed_ip = ip(1);
    let out = lab
        .exec(
            5,
            &[
                "iptables", "-A", "OUTPUT", "-p", "tcp", "-d", &seed_ip, "--dport", "8080", "-j",
                "REJECT",
            ],
        )
        .expect("iptables");
    assert!(out.status.success(), "{out:?}");
    let t0 = Instant::now();
    let r = deploy(&lab, &[2, 3, 4, 5], &["--accept-new-host-keys"]);
    let took = t0.elapsed();
    assert!(
        r.ok,
        "deploy failed:\n{}\n{:#?}\n{}",
        r.stderr,
        r.events,
        lab.logs()
    );
    for i in 2..=5 {
        let last = r.last(&ip(i)).expect("events for the host");
        assert_eq!(last["state"], "joined", "{last}");
        assert_eq!(last["changed"], true);
        let states = r.states(&ip(i));
        for s in [
            "queued",
            "connecting",
            "authenticated",
            "preflight",
            "uploading",
            "installing",
            "joining",
            "joined",
        ] {
            assert!(states.contains(&s), "{s} missing from {states:?}");
        }
        let auth = r
            .events
            .iter()
            .find(|e| e["host"] == ip(i).as_str() && e["state"] == "authenticated")
            .expect("authenticated");
        assert!(
            auth["fingerprint"]
                .as_str()
                .is_some_and(|f| f.starts_with("SHA256:"))
        );
        assert_eq!(auth["trust"], "accepted_new");
        let transfer: Vec<&str> = r
            .events
            .iter()
            .filter(|e| e["host"] == ip(i).as_str() && e["state"] == "uploading")
            .filter_map(|e| e["message"].as_str())
            .collect();
        let via = if i == 5 { "over SSH" } else { "over HTTP" };
        assert!(
            transfer.last().is_some_and(|m| m.contains(via)),
            "host {i}: {transfer:?}"
        );
    }
    assert!(took < Duration::from_secs(60), "4 hosts took {took:?}");
    eprintln!("deploy to 4 hosts: {took:?}");
    // 5 members, one leader agreed by the seed.
    wait_until(
        "5 members",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || (members(&lab) == 5).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    let leader = wait_until(
        "a leader with 5 voters",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let v = lab.get_json(1, "/api/v1/leader")?;
            (v["leader"].is_string()
                && v["voters"].as_array()?.len() + v["learners"].as_array()?.len() == 5)
                .then_some(v)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    eprintln!("leader after deploy: {}", leader["leader"]);
    // SPEC §0: the lone seed's 1-of-1 key is re-dealt to the five members,
    // 3 of 5, within 30 s of the last join: same epoch everywhere, five
    // distinct share indexes, every share valid.
    let custody = wait_until(
        "every member at 3 of 5 in one key epoch",
        Duration::from_secs(30).saturating_sub(t0.elapsed().saturating_sub(took)),
        Duration::from_millis(250),
        || {
            let mut epochs = std::collections::BTreeSet::new();
            let mut indexes = std::collections::BTreeSet::new();
            for i in 1..=5 {
                let k = lab.get_json(i, "/api/v1/keys")?;
                if k["threshold"] != 3 || k["shares"] != 5 || k["share_state"] != "valid" {
                    return None;
                }
                epochs.insert(k["epoch"].as_u64()?);
                indexes.insert(k["share_index"].as_u64()?);
            }
            (epochs.len() == 1 && indexes.len() == 5 && !epochs.contains(&0)).then_some(epochs)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    eprintln!("key custody after deploy: 3 of 5, epoch {custody:?}");
    // The fingerprints are pinned in cluster state.
    let reg = lab.get_json(1, "/api/v1/registry").expect("registry");
    for i in 2..=5 {
        assert!(
            reg.to_string()
                .contains(&format!("deploy/hostkey/{}:22", ip(i))),
            "{reg}"
        );
    }
    // The join token was removed from every host after joining.
    for i in 2..=5 {
        let token = lab.dir.path().join(format!("root-h{i}/etc/join-token"));
        assert!(!token.exists(), "{} left behind", token.display());
        assert!(lab.dir.path().join(format!("root-h{i}/bin/bzzz")).exists());
    }

    // Each target got a token of its own, good for one node (issue #22: a
    // shared 4-use token let one target admit nodes of its own).
    let log = lab.node(1).log_tail(1_000_000);
    let ids: std::collections::BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains("join token created for one deploy target"))
        .map(|l| {
            assert!(l.contains("uses=1"), "{l}");
            l.split("token_id=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("")
        })
        .collect();
    assert_eq!(ids.len(), 4, "one single-use token per target: {ids:?}");

    // 2. A second run changes nothing and says so.
    let r = deploy(&lab, &[2, 3, 4, 5], &[]);
    assert!(r.ok, "re-run failed:\n{}\n{:#?}", r.stderr, r.events);
    for i in 2..=5 {
        let states = r.states(&ip(i));
        assert!(states.contains(&"verified"), "{states:?}");
        assert!(
            !states.contains(&"uploading"),
            "re-run uploaded again: {states:?}"
        );
        let last = r.last(&ip(i)).expect("events");
        assert_eq!(last["state"], "joined");
        assert_eq!(last["changed"], false);
        assert_eq!(
            r.events
                .iter()
                .find(|e| e["host"] == ip(i).as_str() && e["state"] == "authenticated")
                .expect("auth")["trust"],
            "pinned"
        );
    }
    assert!(r.stderr.contains("Nothing changed"), "{}", r.stderr);

    // 3. Host 5 no longer accepts our key: it fails (auth), the others succeed.
    let other_pub = lab.dir.path().join("other_ed25519.pub");
    lab.start_sshd(5, &other_pub, false).expect("sshd 5");
    let r = deploy(&lab, &[2, 3, 4, 5], &[]);
    assert!(!r.ok, "a failed host must fail the run");
    let last = r.last(&ip(5)).expect("events");
    assert_eq!(last["state"], "failed");
    assert_eq!(last["cause"], "auth", "{last}");
    for i in 2..=4 {
        assert_eq!(r.last(&ip(i)).expect("events")["state"], "joined");
    }

    // 4. Host 3's host key changed: refused, even with --accept-new-host-keys.
    lab.start_sshd(3, &pubkey, true)
        .expect("sshd 3 with a new key");
    let r = deploy(&lab, &[2, 3], &["--accept-new-host-keys"]);
    assert!(!r.ok);
    let last = r.last(&ip(3)).expect("events");
    assert_eq!(last["state"], "failed");
    assert_eq!(last["cause"], "host_key", "{last}");
    assert!(
        last["message"]
            .as_str()
            .is_some_and(|m| m.contains("CHANGED")),
        "{last}"
    );
    assert_eq!(r.last(&ip(2)).expect("events")["state"], "joined");

    // 5. `--uninstall` stops and removes the node (its data stays).
    let root4 = lab.dir.path().join("root-h4");
    let pid: i32 = std::fs::read_to_string(root4.join("run/bzzz.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let r = deploy(&lab, &[4], &["--uninstall"]);
    assert!(r.ok, "{}\n{:#?}", r.stderr, r.events);
    assert_eq!(r.last(&ip(4)).expect("events")["state"], "removed");
    assert!(!root4.join("bin/bzzz").exists());
    assert!(root4.join("data").exists());
    wait_until(
        "the node on host 4 stops",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            // Gone, or a zombie nobody reaped (PID 1 in a container may not).
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            (stat.is_empty() || stat.contains(") Z ")).then_some(())
        },
    )
    .expect("stopped");
}

/// The deploy page in headless Chromium, against the lab: log in, enter two
/// hosts and the key, read and confirm their host-key fingerprints, start,
/// and watch both rows reach "joined" live (Server-Sent Events).
#[test]
fn the_deploy_page_deploys_two_hosts_and_shows_them_joined() {
    if !lab::available() || !bzzz_testkit::browser::available() {
        return;
    }
    let mut lab = Lab::new(Path::new(BIN), 3).expect("lab");
    let key = lab.dir.path().join("id_ed25519");
    keygen(&key);
    let pubkey = lab.dir.path().join("id_ed25519.pub");
    for i in 2..=3 {
        lab.start_sshd(i, &pubkey, false).expect("sshd");
    }
    lab.start_node(1, &[]).expect("seed node");
    lab.init_cluster(1, "deploy-page", PASSWORD).expect("init");
    let key_text = std::fs::read_to_string(&key).expect("key");
    let hosts = format!("{}\n{}", lab.host(2).ip, lab.host(3).ip);
    let base = format!("http://{}:8080", lab.host(1).ip);
    let ns = lab.host(1).ns.clone();
    let dir = lab.dir.path().to_path_buf();
    // chromedriver, Chromium and the WebDriver client all live in host 1.
    let (_driver, port) = bzzz_testkit::browser::start_driver(&dir, &["ip", "netns", "exec", &ns]);
    let result = lab.run_in(1, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(drive_deploy_page(&dir, port, &base, &hosts, &key_text))
    });
    let rows = result.unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (host, state, detail) in &rows {
        assert_eq!(state, "joined", "{host}: {detail}");
    }
    wait_until(
        "3 members",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || (members(&lab) == 3).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
}

async fn drive_deploy_page(
    dir: &Path,
    port: u16,
    base: &str,
    hosts: &str,
    key: &str,
) -> Vec<(String, String, String)> {
    use bzzz_testkit::browser::{session, text_of, wait_for, wait_for_secs};
    use fantoccini::Locator;
    let c = session(dir, port).await;
    // Behind the operator login.
    c.goto(&format!("{base}/deploy")).await.expect("goto");
    wait_for(&c, "#login-form").await;
    wait_for(&c, "#password")
        .await
        .send_keys(PASSWORD)
        .await
        .expect("type");
    c.find(Locator::Css("#login"))
        .await
        .expect("login")
        .click()
        .await
        .expect("click");
    wait_for(&c, "#logout").await;
    c.goto(&format!("{base}/deploy")).await.expect("goto");
    wait_for(&c, "#deploy-form").await;
    for (id, v) in [
        ("#hosts", hosts),
        ("#ssh-key", key),
        ("#prefix", SSH_PREFIX),
    ] {
        let e = wait_for(&c, id).await;
        e.clear().await.expect("clear");
        e.send_keys(v).await.expect("type");
    }
    // 1. Read the host keys; confirm both fingerprints.
    wait_for(&c, "#scan").await.click().await.expect("scan");
    wait_for(&c, "#key-table tbody tr:nth-child(2) input.trust").await;
    for cb in c
        .find_all(Locator::Css("input.trust"))
        .await
        .expect("boxes")
    {
        let fp = cb.attr("data-fp").await.expect("attr").unwrap_or_default();
        assert!(fp.starts_with("SHA256:"), "{fp}");
        cb.click().await.expect("tick");
    }
    // 2. Deploy; the table follows the event stream.
    wait_for(&c, "#start").await.click().await.expect("start");
    wait_for_secs(&c, "#summary[data-done]", 120).await;
    let summary = text_of(&c, "#summary").await;
    let mut rows = Vec::new();
    for tr in c
        .find_all(Locator::Css("#hosts-table tbody tr"))
        .await
        .expect("rows")
    {
        let cells = tr.find_all(Locator::Css("td")).await.expect("cells");
        let mut t = Vec::new();
        for td in cells {
            t.push(td.text().await.expect("text"));
        }
        rows.push((t[0].clone(), t[1].clone(), t[2].clone()));
    }
    assert!(
        summary.contains("2 of 2 hosts joined"),
        "{summary} {rows:?}"
    );
    c.close().await.expect("close");
    rows
}
