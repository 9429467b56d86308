//! Key custody follows membership (SPEC §3), with real node processes on
//! 127.0.0.1: setup on a lone node, four joins with a token, the admin key
//! re-dealt to 3 of 5 without ever being whole on two nodes, old shares
//! erased, signing with exactly the named signers, holders killed, and a
//! member removed (every view, Raft, a re-deal to 3 of 4, and the removed
//! node told so when it comes back).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use bzzz_testkit::{LocalCluster, LocalOpts, wait_until};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";

fn cli(args: &[&str]) -> Output {
    bzzz_testkit::cli(BIN, args)
}

fn cli_json(args: &[&str]) -> Value {
    bzzz_testkit::cli_json(BIN, args)
}

fn status(c: &LocalCluster, i: usize) -> Value {
    cli_json(&["keys", "status", "--api", &c.nodes[i].api(), "--json"])
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every node in `alive` reports threshold `t`, `n` shares, one epoch
/// (returned) past `after`, a valid share where it holds one, and the
/// holders' indexes are distinct.
fn settled(c: &LocalCluster, alive: &[usize], t: u64, n: u64, after: u64) -> Option<u64> {
    let mut epochs = BTreeSet::new();
    for i in alive {
        let s = status(c, *i);
        if s["threshold"] != t || s["shares"] != n {
            return None;
        }
        let e = s["epoch"].as_u64()?;
        if e <= after {
            return None;
        }
        if s["share_index"].is_u64() && s["share_state"] != "valid" {
            return None;
        }
        let idx: BTreeSet<u64> = s["holders"]
            .as_array()?
            .iter()
            .filter_map(|h| h["index"].as_u64())
            .collect();
        if idx.len() as u64 != n {
            return None;
        }
        epochs.insert(e);
    }
    (epochs.len() == 1).then(|| epochs.into_iter().next().unwrap_or(0))
}

fn sign(c: &LocalCluster, via: usize, signers: &[usize], pw: &str) -> Output {
    let ids: Vec<&str> = signers.iter().map(|i| c.nodes[*i].node_id()).collect();
    let api = c.nodes[via].api();
    let mut args = vec![
        "keys",
        "sign",
        "--api",
        &api,
        "--operator-password-file",
        pw,
        "--message",
        "custody",
        "--json",
    ];
    let joined = ids.join(",");
    if !signers.is_empty() {
        args.extend(["--signers", &joined]);
    }
    cli(&args)
}

fn verify(pk_hex: &str, out: &Output) {
    assert!(
        out.status.success(),
        "sign failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    let pk: [u8; 32] = hex::decode(pk_hex).expect("hex").try_into().expect("32");
    let sig: [u8; 64] = hex::decode(r["signature"].as_str().expect("sig"))
        .expect("hex")
        .try_into()
        .expect("64");
    let msg = hex::decode(r["signed_bytes_hex"].as_str().expect("bytes")).expect("hex");
    bzzz_crypto::verify_ed25519(&pk, &msg, &sig).expect("verifies under the admin key");
}

/// Key custody lines of every node's log (for failures: the log tails are
/// mostly mesh chatter).
fn custody_logs(c: &LocalCluster) -> String {
    let mut out = String::new();
    for n in &c.nodes {
        let log = std::fs::read_to_string(&n.log).unwrap_or_default();
        out.push_str(&format!("--- {} ({}) ---\n", n.name, n.node_id()));
        for l in log.lines().filter(|l| {
            !l.contains("bzzz_net")
                && (l.contains("bzzz_keys")
                    || l.contains("custody")
                    || l.contains("key epoch")
                    || l.contains("re-deal")
                    || l.contains("leader"))
        }) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Waits until every node of `nodes` but `gone` has dropped `gone_id`
/// from its view.
fn wait_left(c: &LocalCluster, nodes: &[usize], gone: usize, gone_id: &str) {
    wait_until(
        "the others to see the node leave",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            nodes
                .iter()
                .filter(|i| **i != gone)
                .all(|i| {
                    !c.nodes[*i]
                        .peer_ids()
                        .unwrap_or_default()
                        .iter()
                        .any(|p| p == gone_id)
                })
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", custody_logs(c)));
}

fn page(api: &str, path: &str) -> String {
    let addr = api.trim_start_matches("http://");
    bzzz_testkit::http::get(addr, path).expect("page").1
}

fn members(c: &LocalCluster, i: usize) -> Vec<Value> {
    cli_json(&["member", "ls", "--api", &c.nodes[i].api(), "--json"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits for a node process to exit by itself; returns its exit code.
fn wait_exit(c: &mut LocalCluster, i: usize, within: Duration) -> Option<i32> {
    let node = &mut c.nodes[i];
    let r = wait_until(
        "the node to exit",
        within,
        Duration::from_millis(100),
        || node.try_wait(),
    );
    r.ok().and_then(|s| s.code())
}

#[test]
fn a_lone_setup_grows_to_three_of_five_and_a_removed_member_is_shut_out() {
    let mut c = LocalCluster::start(Path::new(BIN), 1, &LocalOpts::default()).expect("start");
    let pw = c.init(0, PASSWORD).expect("init");
    // One node: it alone holds the key, and says so.
    let s = status(&c, 0);
    assert_eq!(
        (s["threshold"].as_u64(), s["shares"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(
        (s["epoch"].as_u64(), s["policy"].as_str()),
        (Some(0), Some("majority"))
    );
    assert!(s["warnings"].to_string().contains("only this node"), "{s}");
    let admin = s["admin_public_key"].as_str().expect("pk").to_owned();
    let cluster_page = page(&c.nodes[0].api(), "/cluster");
    assert!(
        cluster_page.contains("only this node holds the admin key"),
        "{cluster_page}"
    );

    // The lone node's share (sealed and unsealed), to look for later.
    let key = bzzz_crypto::keyfile::load(&c.nodes[0].data_dir.join("node_key.json")).expect("key");
    let age = bzzz_crypto::seal::AgeIdentity::derive(&key).expect("age");
    let sealed0 = std::fs::read(c.nodes[0].data_dir.join("share.age")).expect("share");
    let plain0 = age.open(&sealed0).expect("open").to_vec();
    let scalar0 = frost_ed25519::keys::SecretShare::deserialize(&plain0)
        .expect("share")
        .signing_share()
        .serialize();

    // Four nodes join, each with its own single-use token (issue #22: a
    // token that admits several nodes makes them pending members, which
    // hold no share until the operator approves them).
    for _ in 0..4 {
        // The previous joiner's re-deal may change the key epoch while
        // this token is signed: the signers ask to sign again (a 502 that
        // says so), which the operator does.
        let api = c.nodes[0].api();
        let args = [
            "token",
            "create",
            "--api",
            &api,
            "--operator-password-file",
            &pw,
            "--json",
        ];
        let last = std::cell::RefCell::new(String::new());
        let token = wait_until(
            "a join token",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let out = cli(&args);
                let err = String::from_utf8_lossy(&out.stderr).into_owned();
                if out.status.success() {
                    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
                    return v["token"].as_str().map(str::to_owned);
                }
                assert!(
                    err.contains("sign again") || err.contains("503"),
                    "token create failed: {err}"
                );
                *last.borrow_mut() = err;
                None
            },
        )
        .unwrap_or_else(|e| panic!("{e}: {}", last.borrow()));
        c.add_node(&LocalOpts {
            extra_args: vec!["--join-token".into(), token],
            ..Default::default()
        })
        .expect("joiner");
    }
    let joined = Instant::now();
    let all = [0, 1, 2, 3, 4];
    let epoch = wait_until(
        "every node at 3 of 5 in one key epoch",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || settled(&c, &all, 3, 5, 0),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", custody_logs(&c)));
    eprintln!(
        "3 of 5 in epoch {epoch}, {:?} after the last join",
        joined.elapsed()
    );
    for i in all {
        let s = status(&c, i);
        assert_eq!(
            s["admin_public_key"],
            admin.as_str(),
            "the admin key never changes"
        );
        assert_eq!(s["share_state"], "valid", "{s}");
    }

    // No data dir holds a previous epoch's share: neither the lone node's
    // share (sealed or open) nor any earlier epoch's file.
    let mut files = Vec::new();
    for n in &c.nodes {
        bzzz_testkit::files_under(&n.data_dir, &mut files);
    }
    for f in &files {
        let name = f
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(rest) = name.strip_prefix("share.") {
            assert!(
                rest == format!("e{epoch}.age"),
                "{} is a share file of another epoch",
                f.display()
            );
        }
        let bytes = std::fs::read(f).unwrap_or_default();
        for (what, needle) in [
            ("sealed", &sealed0[..]),
            ("open", &plain0[..]),
            ("scalar", &scalar0[..]),
        ] {
            assert!(
                !contains(&bytes, needle),
                "{} holds the old share ({what})",
                f.display()
            );
        }
    }

    // Exactly the named signers: 3 sign, 2 cannot.
    verify(&admin, &sign(&c, 1, &[0, 2, 4], &pw));
    let two = sign(&c, 1, &[0, 2], &pw);
    assert!(!two.status.success());
    let err = String::from_utf8_lossy(&two.stderr);
    assert!(err.contains("2 signers named, 3 needed"), "{err}");

    // Two holders killed (not the leader): a role change still succeeds.
    let leader = cli_json(&["leader", "--api", &c.nodes[0].api(), "--json"]);
    let leader_id = leader["leader"].as_str().unwrap_or_default().to_owned();
    let victims: Vec<usize> = all
        .iter()
        .copied()
        .filter(|i| c.nodes[*i].node_id() != leader_id && *i != 0)
        .take(3)
        .collect();
    let live_api = |c: &LocalCluster, dead: &[usize]| {
        let i = all.iter().find(|i| !dead.contains(i)).copied().unwrap_or(0);
        c.nodes[i].api()
    };
    for v in &victims[..2] {
        c.nodes[*v].kill9();
    }
    let api = live_api(&c, &victims[..2]);
    wait_until(
        "a role change with two holders down",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            cli(&[
                "role",
                "create",
                "ops",
                "--authority",
                "decision",
                "--api",
                &api,
                "--operator-password-file",
                &pw,
            ])
            .status
            .success()
            .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", custody_logs(&c)));
    // A third down: signing fails, naming reachable and needed holders.
    c.nodes[victims[2]].kill9();
    let api = live_api(&c, &victims);
    let via = all
        .iter()
        .copied()
        .find(|i| !victims.contains(i))
        .unwrap_or(0);
    let err = wait_until(
        "signing to fail for want of holders",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let o = sign(&c, via, &[], &pw);
            let e = String::from_utf8_lossy(&o.stderr).into_owned();
            // With 3 of 5 down, Raft has no quorum either: the signature's
            // audit entry cannot commit, and nothing is signed (fail closed).
            let refused = e.contains("2 of 5 share holders reachable, 3 needed")
                || e.contains("the audit entry could not be committed");
            (!o.status.success() && refused).then_some(e)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", custody_logs(&c)));
    eprintln!("with 3 holders down: {err}");
    let _html = wait_until(
        "the cluster page says admin actions are blocked",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let html = page(&api, "/cluster");
            html.contains("admin actions are blocked").then_some(html)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", page(&api, "/cluster")));
    for v in &victims {
        c.nodes[*v].restart(Path::new(BIN)).expect("restart");
        c.nodes[*v]
            .wait_ready(Duration::from_secs(20))
            .expect("ready");
    }
    let epoch = wait_until(
        "the cluster to settle again",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            settled(&c, &all, 3, 5, 0).filter(|_| {
                all.iter()
                    .all(|i| c.nodes[*i].peer_ids().unwrap_or_default().len() == 4)
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", custody_logs(&c)));

    // A holder that lost its share (disk replaced) announces it and gets
    // one in a re-deal to the same holders.
    let lost = 2;
    let lost_id = c.nodes[lost].node_id().to_owned();
    c.nodes[lost].kill9();
    // The others notice it is gone before it comes back. (A node restarted
    // within a second of SIGKILL can stay out of the others' views for
    // 30 s and more: their QUIC link to the dead process lingers. That is
    // the mesh's, tracked separately; this test is about the share.)
    wait_left(&c, &all, lost, &lost_id);
    for e in c.nodes[lost].data_dir.read_dir().expect("dir").flatten() {
        if e.file_name().to_string_lossy().starts_with("share.") {
            std::fs::remove_file(e.path()).expect("rm share");
        }
    }
    c.nodes[lost].restart(Path::new(BIN)).expect("restart");
    c.nodes[lost]
        .wait_ready(Duration::from_secs(20))
        .expect("ready");
    let epoch = wait_until(
        "the lost share re-dealt in a new epoch",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || settled(&c, &all, 3, 5, epoch),
    )
    .unwrap_or_else(|e| {
        let views: Vec<String> = all
            .iter()
            .map(|i| {
                let peers = c.nodes[*i].get_json("/api/v1/peers").unwrap_or_default();
                let shares: Vec<String> = peers
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|p| format!("{}:{}", p["node_id"], p["share"]))
                    .collect();
                format!(
                    "node {i}: leader {} keys {} peers {shares:?}",
                    cli_json(&["leader", "--api", &c.nodes[*i].api(), "--json"])["leader"],
                    status(&c, *i)
                )
            })
            .collect();
        panic!("{e}\n{}\n{}", views.join("\n"), custody_logs(&c))
    });
    assert_eq!(status(&c, lost)["share_state"], "valid");

    // Remove a member while it is down; the others re-deal to 3 of 4.
    let gone = 4;
    let gone_id = c.nodes[gone].node_id().to_owned();
    c.nodes[gone].kill9();
    let out = cli_json(&[
        "member",
        "remove",
        &gone_id,
        "--api",
        &c.nodes[1].api(),
        "--operator-password-file",
        &pw,
        "--json",
    ]);
    assert_eq!(out["removed"], true, "{out}");
    let rest = [0, 1, 2, 3];
    let removed_at = Instant::now();
    wait_until(
        "the removed member gone from every view and from Raft",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            rest.iter()
                .all(|i| {
                    members(&c, *i).iter().any(|m| {
                        m["node_id"] == gone_id.as_str()
                            && m["state"] == "removed"
                            && m["raft"] == "none"
                            && m["share_index"].is_null()
                    }) && !c.nodes[*i]
                        .peer_ids()
                        .unwrap_or_default()
                        .contains(&gone_id)
                })
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", custody_logs(&c)));
    let after = wait_until(
        "the rest at 3 of 4 in a new epoch",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || settled(&c, &rest, 3, 4, epoch),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", custody_logs(&c)));
    eprintln!(
        "removal: epoch {epoch} → {after} in {:?}",
        removed_at.elapsed()
    );
    verify(&admin, &sign(&c, 0, &[0, 1, 3], &pw));
    // It comes back: told by a member (with the signed removal), it exits 1.
    c.nodes[gone].restart(Path::new(BIN)).expect("restart");
    let code = wait_exit(&mut c, gone, Duration::from_secs(30));
    let log = std::fs::read_to_string(&c.nodes[gone].log).unwrap_or_default();
    assert_eq!(code, Some(1), "{}", c.nodes[gone].log_tail(40));
    assert!(
        log.contains("this node was removed from cluster 'lab'"),
        "{log}"
    );
    // A running member that is removed stops by itself (exit 1); the
    // other three re-deal to 2 of 3.
    let running = 3;
    let running_id = c.nodes[running].node_id().to_owned();
    let out = cli_json(&[
        "member",
        "remove",
        &running_id,
        "--api",
        &c.nodes[0].api(),
        "--operator-password-file",
        &pw,
        "--json",
    ]);
    assert_eq!(out["removed"], true, "{out}");
    let code = wait_exit(&mut c, running, Duration::from_secs(20));
    assert_eq!(code, Some(1), "{}", c.nodes[running].log_tail(40));
    wait_until(
        "the rest at 2 of 3",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || settled(&c, &[0, 1, 2], 2, 3, after),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", custody_logs(&c)));
    verify(&admin, &sign(&c, 0, &[1, 2], &pw));

    // And again, without asking anyone.
    c.nodes[gone].restart(Path::new(BIN)).expect("restart");
    let code = wait_exit(&mut c, gone, Duration::from_secs(10));
    assert_eq!(code, Some(1));
    assert!(
        !c.nodes[gone]
            .data_dir
            .read_dir()
            .expect("dir")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("share.")),
        "the removed node erased its share"
    );
}

/// Every node in `alive` reports the same key epoch, threshold, share
/// count and policy, with a valid share where it holds one.
fn agreed(c: &LocalCluster, alive: &[usize]) -> Option<(u64, u64, u64, String)> {
    let mut seen = BTreeSet::new();
    for i in alive {
        let s = status(c, *i);
        if s["share_index"].is_u64() && s["share_state"] != "valid" {
            return None;
        }
        seen.insert((
            s["epoch"].as_u64()?,
            s["threshold"].as_u64()?,
            s["shares"].as_u64()?,
            s["policy"].as_str()?.to_owned(),
        ));
    }
    (seen.len() == 1).then(|| seen.into_iter().next().unwrap_or_default())
}

#[test]
fn a_holder_killed_at_any_step_of_a_redeal_leaves_one_epoch_that_signs() {
    let seed: u64 = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    eprintln!("seed {seed} (TEST_SEED)");
    let mut rng = seed;
    let mut next = move |k: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % k
    };
    let faults = tempfile::tempdir().expect("dir");
    let opts = LocalOpts {
        env: vec![(
            "TEST_REDEAL_FAULT".into(),
            faults.path().to_string_lossy().into_owned(),
        )],
        ..Default::default()
    };
    let mut c = LocalCluster::start(Path::new(BIN), 4, &opts).expect("start");
    c.wait_formed(Duration::from_secs(15)).expect("formed");
    let pw = c.init(0, PASSWORD).expect("init");
    let all = [0, 1, 2, 3];
    let admin = status(&c, 0)["admin_public_key"]
        .as_str()
        .expect("pk")
        .to_owned();
    wait_until(
        "every node initialized",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || agreed(&c, &all),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", custody_logs(&c)));
    let steps = ["deal", "receive", "sign"];
    let mut committed = 0;
    for run in 0..10 {
        let step = steps[next(3) as usize];
        let victim = 1 + next(3) as usize;
        // Every holder in node 0's view (a re-deal needs them all).
        wait_until(
            "node 0 to see every node",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || (c.nodes[0].peer_ids().unwrap_or_default().len() == 3).then_some(()),
        )
        .unwrap_or_else(|e| panic!("run {run}: {e}\n{}", c.logs()));
        let (before, ..) = agreed(&c, &all).expect("agreed");
        let policy = if status(&c, 0)["policy"] == "majority" {
            "fixed:2"
        } else {
            "majority"
        };
        std::fs::write(faults.path().join("arm"), step).expect("arm");
        let api = c.nodes[0].api();
        let pw2 = pw.clone();
        let change = std::thread::spawn(move || {
            cli(&[
                "keys",
                "policy",
                policy,
                "--api",
                &api,
                "--operator-password-file",
                &pw2,
                "--json",
            ])
        });
        let at = faults.path().join("at");
        wait_until(
            "the coordinator to reach the step",
            Duration::from_secs(20),
            Duration::from_millis(20),
            || (at.exists() || change.is_finished()).then_some(()),
        )
        .unwrap_or_else(|e| panic!("run {run} ({step}): {e}\n{}", c.logs()));
        if !at.exists() {
            let out = change.join().expect("cli");
            panic!(
                "run {run}: the change ended before {step}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                c.logs()
            );
        }
        c.nodes[victim].kill9();
        std::fs::remove_file(&at).expect("release");
        let out = change.join().expect("cli");
        // The others notice the death before it comes back (see the lost
        // share step of the first test).
        let victim_id = c.nodes[victim].node_id().to_owned();
        wait_left(&c, &all, victim, &victim_id);
        c.nodes[victim].restart(Path::new(BIN)).expect("restart");
        c.nodes[victim]
            .wait_ready(Duration::from_secs(20))
            .expect("ready");
        let (epoch, t, n, p) = wait_until(
            "every node to agree on one key epoch",
            Duration::from_secs(30),
            Duration::from_millis(250),
            || agreed(&c, &all),
        )
        .unwrap_or_else(|e| panic!("run {run} ({step}, node {victim}): {e}\n{}", c.logs()));
        eprintln!(
            "run {run}: {step}, node {victim} killed: change {} → epoch {epoch} ({t} of {n}, {p})",
            if out.status.success() {
                "committed"
            } else {
                "abandoned"
            },
        );
        assert!(epoch == before || epoch == before + 1);
        assert_eq!(
            epoch == before + 1,
            p == policy,
            "the epoch and the policy go together"
        );
        committed += usize::from(epoch > before);
        let signed = wait_until(
            "the epoch to sign",
            Duration::from_secs(20),
            Duration::from_millis(250),
            || {
                let o = sign(&c, 0, &[], &pw);
                o.status.success().then_some(o)
            },
        )
        .unwrap_or_else(|e| panic!("run {run}: {e}\n{}", c.logs()));
        verify(&admin, &signed);
        for i in all {
            let shares: Vec<String> = c.nodes[i]
                .data_dir
                .read_dir()
                .expect("dir")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("share.") && !n.ends_with(".pending"))
                .collect();
            let want = if epoch == 0 {
                "share.age".to_owned()
            } else {
                format!("share.e{epoch}.age")
            };
            assert_eq!(shares, vec![want], "node {i} after run {run}");
        }
    }
    eprintln!("{committed} of 10 re-deals committed, the rest abandoned");
}

/// Voters and learners as node `i` sees Raft's membership.
fn in_raft(c: &LocalCluster, i: usize) -> BTreeSet<String> {
    let l = cli_json(&["leader", "--api", &c.nodes[i].api(), "--json"]);
    ["voters", "learners"]
        .iter()
        .flat_map(|k| l[*k].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_member_out_of_sight_past_evict_after_leaves_raft_but_keeps_its_share() {
    let mut c = LocalCluster::start(Path::new(BIN), 1, &LocalOpts::default()).expect("start");
    let opts = c
        .config("evict", "control:\n  evict_after: 4s\n")
        .expect("config");
    // Every node with a 4 s eviction (the first restarted with it).
    c.nodes[0].args.extend(opts.extra_args.iter().cloned());
    c.nodes[0].restart(Path::new(BIN)).expect("restart");
    c.nodes[0]
        .wait_ready(Duration::from_secs(20))
        .expect("ready");
    for _ in 0..3 {
        c.add_node(&opts).expect("node");
    }
    c.wait_formed(Duration::from_secs(15)).expect("formed");
    c.init(0, PASSWORD).expect("init");
    let all = [0, 1, 2, 3];
    wait_until(
        "4 members in Raft",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || (in_raft(&c, 0).len() == 4).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", custody_logs(&c)));
    wait_until(
        "one key epoch everywhere",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || agreed(&c, &all),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", custody_logs(&c)));
    // A non-leader goes away for longer than evict_after.
    let leader = cli_json(&["leader", "--api", &c.nodes[0].api(), "--json"])["leader"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let away = (1..4)
        .find(|i| c.nodes[*i].node_id() != leader)
        .expect("a follower");
    let away_id = c.nodes[away].node_id().to_owned();
    let index = status(&c, away)["share_index"].clone();
    c.nodes[away].kill9();
    let rest: Vec<usize> = all.iter().copied().filter(|i| *i != away).collect();
    let started = Instant::now();
    wait_until(
        "the evicted member out of Raft",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            rest.iter()
                .all(|i| !in_raft(&c, *i).contains(&away_id))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", custody_logs(&c)));
    let took = started.elapsed();
    // Counted from when the leader last saw it alive (its planner looks
    // every 500 ms), so up to a second before the kill.
    assert!(
        took >= Duration::from_secs(3),
        "evicted before evict_after: {took:?}"
    );
    // Oversight keeps its share: still a holder, listed as gone.
    let m = members(&c, rest[0]);
    let v = m
        .iter()
        .find(|m| m["node_id"] == away_id.as_str())
        .expect("listed");
    assert_eq!(v["state"], "gone", "{v}");
    assert_eq!(v["share_index"], index, "{v}");
    assert_eq!(v["raft"], "none", "{v}");
    assert!(v["gone_secs"].as_u64().is_some(), "{v}");
    let html = page(&c.nodes[rest[0]].api(), "/cluster");
    assert!(html.contains("gone for"), "{html}");
    // It comes back: a member again, back in Raft, same share.
    c.nodes[away].restart(Path::new(BIN)).expect("restart");
    c.nodes[away]
        .wait_ready(Duration::from_secs(20))
        .expect("ready");
    wait_until(
        "the member back in Raft",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || in_raft(&c, rest[0]).contains(&away_id).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", custody_logs(&c)));
    assert_eq!(status(&c, away)["share_state"], "valid");
}
