//! Control plane (SPEC §6) with real node processes on 127.0.0.1: Raft over
//! the libp2p mesh elects one leader that every node agrees on; a killed
//! leader is replaced and rejoins as a follower; close scores never move
//! leadership, a node with a large GPU takes it over; admin changes need
//! the cluster admin signature on every node.
//!
//! Timings are measured by `cargo bench -p bzzz --bench control`; the
//! deadlines here are the acceptance bounds, generous for debug builds.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use bzzz_testkit::{LocalCluster, LocalOpts, http, wait_until};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";

fn bin() -> &'static Path {
    Path::new(BIN)
}

fn cli(args: &[&str]) -> Output {
    bzzz_testkit::cli(BIN, args)
}

fn cli_json(args: &[&str]) -> Value {
    bzzz_testkit::cli_json(BIN, args)
}

fn password_file(c: &LocalCluster) -> String {
    let p = c.dir.path().join("operator-password");
    std::fs::write(&p, format!("{PASSWORD}\n")).expect("write password");
    bzzz_testkit::act_as_operator(&p, PASSWORD);
    p.to_string_lossy().into_owned()
}

fn init(c: &LocalCluster) -> Value {
    let pw = password_file(c);
    let api = c.nodes[0].api();
    let holders = c.holder_args(0);
    let mut args = vec![
        "init",
        "--api",
        &api,
        "--cluster",
        "lab",
        "--operator-password-file",
        &pw,
        "--json",
    ];
    args.extend(holders.iter().map(String::as_str));
    cli_json(&args)
}

/// (leader, term) when every listed node names the same leader, a member
/// of the list, and exactly one of them says it is the leader.
fn agreed_leader(c: &LocalCluster, alive: &[usize]) -> Option<(String, u64)> {
    let views: Vec<Value> = alive
        .iter()
        .map(|i| c.nodes[*i].get_json("/api/v1/leader").ok())
        .collect::<Option<_>>()?;
    let leader = views[0]["leader"].as_str()?.to_owned();
    let term = views[0]["term"].as_u64()?;
    let same = views
        .iter()
        .all(|v| v["leader"].as_str() == Some(&leader) && v["term"].as_u64() == Some(term));
    let leaders = views.iter().filter(|v| v["state"] == "leader").count();
    let member = alive.iter().any(|i| c.nodes[*i].node_id() == leader);
    (same && leaders == 1 && member).then_some((leader, term))
}

/// Like [`agreed_leader`], but only once the same answer has held for
/// `hold` (the first seconds after a start may see a few elections on a
/// loaded machine).
fn stable_leader(
    c: &LocalCluster,
    alive: &[usize],
    hold: Duration,
    since: &mut Option<((String, u64), Instant)>,
) -> Option<(String, u64)> {
    let now = agreed_leader(c, alive);
    match (now, since.as_ref()) {
        (Some(v), Some((w, t))) if v == *w => (t.elapsed() >= hold).then_some(v),
        (Some(v), _) => {
            *since = Some((v, Instant::now()));
            None
        }
        (None, _) => {
            *since = None;
            None
        }
    }
}

/// The control-plane lines of every node's log (for failure messages).
fn control_logs(c: &LocalCluster) -> String {
    c.nodes
        .iter()
        .map(|n| {
            let log = std::fs::read_to_string(&n.log).unwrap_or_default();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| {
                    (l.contains("bzzz::control")
                        || l.contains("vote")
                        || l.contains("openraft::engine")
                        || l.contains("joined the view")
                        || l.contains("left the view"))
                        && !l.contains("A message will be ignored")
                })
                .collect();
            format!(
                "--- {} ({})\n{}",
                n.name,
                n.node_id(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn index_of(c: &LocalCluster, id: &str) -> usize {
    c.nodes
        .iter()
        .position(|n| n.node_id() == id)
        .expect("leader is a node")
}

#[test]
fn five_nodes_agree_on_one_leader_and_replace_a_killed_one() {
    let mut c = LocalCluster::start(bin(), 5, &LocalOpts::default()).expect("start");
    c.wait_formed(Duration::from_secs(20)).expect("mesh");
    init(&c);
    let t0 = Instant::now();
    let all: Vec<usize> = (0..5).collect();
    let (leader, term) = wait_until(
        "one leader agreed by all 5 nodes",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || agreed_leader(&c, &all),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    eprintln!("leader {leader} (term {term}) after {:?}", t0.elapsed());
    // Settled: the same answer for a second.
    let mut since = None;
    let (leader, term) = wait_until(
        "a settled leader",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || stable_leader(&c, &all, Duration::from_secs(1), &mut since),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    // The CLI contract: one object with leader, term, voters, scores, the
    // same leader on every node.
    for n in &c.nodes {
        let v = cli_json(&["leader", "--json", "--api", &n.api()]);
        assert_eq!(v["leader"].as_str(), Some(leader.as_str()));
        assert!(v["term"].as_u64().is_some());
        let voters = v["voters"].as_array().expect("voters");
        assert_eq!(voters.len(), 5, "5 nodes: all vote");
        let scores = v["scores"].as_object().expect("scores");
        assert_eq!(scores.len(), 5, "a score per member: {v}");
        assert!(
            scores
                .values()
                .all(|s| s.as_f64().is_some_and(|s| s >= 0.0))
        );
    }
    // The overview page shows it too.
    let (code, html) =
        http::get(c.nodes[1].api().trim_start_matches("http://"), "/").expect("overview");
    assert_eq!(code, 200);
    assert!(html.contains(&format!("<code id=\"leader\">{leader}</code>")));
    assert!(html.contains(&format!("<span id=\"term\">{term}</span>")));

    // Scores are close (same machine): past the minimum tenure, leadership
    // stays where it is. (On a loaded test machine a late heartbeat may
    // cause a re-election that the same node wins: the term may grow, the
    // leader must not change.) The sleep is the observation window (past
    // the 3 s minimum tenure), not a wait for an event.
    std::thread::sleep(Duration::from_secs(4));
    let (still, _) = wait_until(
        "agreement",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || agreed_leader(&c, &all),
    )
    .expect("a leader");
    assert_eq!(
        still, leader,
        "leadership moved between nodes with close scores"
    );
    let term = agreed_leader(&c, &all).map_or(term, |(_, t)| t);

    // Kill -9 the leader three times; the others agree on a new one, and the
    // killed node (restarted) follows it.
    let mut leader = leader;
    let mut term = term;
    let mut down: Option<usize> = None;
    for round in 0..3 {
        let li = index_of(&c, &leader);
        c.nodes[li].kill9();
        let alive: Vec<usize> = (0..5).filter(|i| *i != li && Some(*i) != down).collect();
        let killed_at = Instant::now();
        let (new_leader, new_term) = wait_until(
            "a new leader after kill -9",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || agreed_leader(&c, &alive).filter(|(l, _)| *l != leader),
        )
        .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", control_logs(&c)));
        assert!(new_term > term, "a new leader has a newer term");
        eprintln!(
            "round {round}: killed {leader}, new leader {new_leader} (term {new_term}) after {:?}",
            killed_at.elapsed()
        );
        // Node 0 is everyone's bootstrap address and would come back on new
        // ports: it stays down; the others are restarted (bootstrapping to a
        // live node, node 0 may be gone) and rejoin.
        if li != 0 {
            // mDNS is off on loopback: give it every live node, as an
            // operator's bootstrap list would.
            for a in &alive {
                let via = c.nodes[*a].tcp_addr().expect("address");
                c.nodes[li].args.extend(["--bootstrap".to_owned(), via]);
            }
            c.nodes[li].restart(bin()).expect("restart");
            c.nodes[li]
                .wait_ready(Duration::from_secs(20))
                .expect("ready");
            let mut back = alive.clone();
            back.push(li);
            wait_until(
                "the restarted node follows the new leader",
                Duration::from_secs(15),
                Duration::from_millis(50),
                || agreed_leader(&c, &back).filter(|(l, _)| *l == new_leader),
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
        } else {
            down = Some(0);
        }
        leader = new_leader;
        term = new_term;
    }
}

#[test]
fn a_node_with_a_large_gpu_becomes_leader_and_keeps_it() {
    let mut c = LocalCluster::start(bin(), 3, &LocalOpts::default()).expect("start");
    let cfg = c.dir.path().join("gpu.yaml");
    std::fs::write(
        &cfg,
        "capabilities:\n  declared:\n    gpus:\n      - vendor: nvidia\n        model: H100 80GB\n        vram_total_bytes: 85899345920\n",
    )
    .expect("config");
    let gpu = c
        .add_node(&LocalOpts {
            extra_args: vec!["--config".into(), cfg.to_string_lossy().into_owned()],
            ..Default::default()
        })
        .expect("gpu node");
    c.add_node(&LocalOpts::default()).expect("fifth node");
    c.wait_formed(Duration::from_secs(20)).expect("mesh");
    init(&c);
    let t0 = Instant::now();
    let all: Vec<usize> = (0..5).collect();
    let gpu_id = c.nodes[gpu].node_id().to_owned();
    let (_, term) = wait_until(
        "the GPU node leads",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || agreed_leader(&c, &all).filter(|(l, _)| *l == gpu_id),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    eprintln!("GPU node leads after {:?}", t0.elapsed());
    let v = c.nodes[0].get_json("/api/v1/leader").expect("leader");
    let gpu_score = v["scores"][&gpu_id].as_f64().expect("gpu score");
    let best_other = v["scores"]
        .as_object()
        .expect("scores")
        .iter()
        .filter(|(k, _)| **k != gpu_id)
        .filter_map(|(_, s)| s.as_f64())
        .fold(0.0, f64::max);
    assert!(gpu_score > best_other * 2.0, "{v}");
    // It keeps it: the sleep is the observation window (longer than the
    // minimum tenure), not a wait for an event.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(agreed_leader(&c, &all), Some((gpu_id, term)));
    // The inventory counts its GPU.
    let st = c.nodes[2].get_json("/api/v1/cluster").expect("cluster");
    assert_eq!(st["totals"]["gpus"], 1, "{st}");
    assert_eq!(st["totals"]["vram_total_bytes"], 85_899_345_920u64, "{st}");
    assert_eq!(st["totals"]["nodes"], 5, "{st}");

    // Graceful shutdown of the leader (SIGTERM): it hands leadership to a
    // voter, which says so, and the others agree on it.
    let (status, took) = c.nodes[gpu]
        .signal_and_wait(rustix::process::Signal::TERM, Duration::from_secs(6))
        .expect("leader stops");
    assert!(status.success(), "exit status {status:?}");
    eprintln!("leader stopped in {took:?}");
    let rest: Vec<usize> = (0..5).filter(|i| *i != gpu).collect();
    let (next, next_term) = wait_until(
        "a new leader after the hand-off",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || agreed_leader(&c, &rest),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(next_term > term);
    let heir = index_of(&c, &next);
    let log = std::fs::read_to_string(&c.nodes[heir].log).expect("log");
    assert!(
        log.contains("leadership handed to this node"),
        "the new leader was not handed leadership:\n{}",
        c.logs()
    );
}

/// A forged admin change: a role signed by some other key.
fn forged_change(cluster: &str) -> Value {
    use ed25519_dalek::Signer;
    let body = serde_json::json!({
        "v": 1, "cluster": cluster, "seq": u64::MAX / 2, "issued_at": 1,
        "action": "put_role",
        "role": {"name": "intruder", "authority": "master"}
    })
    .to_string();
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let mut msg = b"bzzz/admin-change/v1".to_vec();
    msg.push(0);
    msg.extend_from_slice(body.as_bytes());
    let sig = key.sign(&msg);
    serde_json::json!({ "body": body, "signature": hex::encode(sig.to_bytes()) })
}

fn auth_header() -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("operator:{PASSWORD}"))
    )
}

#[test]
fn admin_changes_need_the_cluster_admin_signature_on_every_node() {
    let mut c = LocalCluster::start(bin(), 3, &LocalOpts::default()).expect("start");
    c.wait_formed(Duration::from_secs(20)).expect("mesh");
    init(&c);
    let all: Vec<usize> = (0..3).collect();
    wait_until(
        "a leader",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || agreed_leader(&c, &all),
    )
    .expect("leader");
    let state = |i: usize| c.nodes[i].get_json("/api/v1/cluster").ok();
    wait_until(
        "the genesis entry applied everywhere",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            all.iter()
                .all(|i| state(*i).is_some_and(|s| s["cluster"]["name"] == "lab"))
                .then_some(())
        },
    )
    .expect("genesis");
    // The share planner's table: every setup holder by index, on every node.
    wait_until(
        "the share holders recorded everywhere",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            all.iter()
                .all(|i| {
                    // The majority of 3 is 2: all 3 holders healthy, one
                    // may be lost, so the state reports no risk.
                    state(*i).is_some_and(|s| {
                        s["share_holders"].as_object().map(|m| m.len()) == Some(3)
                            && s["cluster"]["threshold"] == 2
                            && s["share_risk"].is_null()
                    })
                })
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", state(0)));
    let api = |i: usize| c.nodes[i].api().trim_start_matches("http://").to_owned();
    let auth = auth_header();
    let hdr = [("Authorization", auth.as_str())];

    // Forged (another key) and unsigned: committed to the log, refused by
    // the state machine on every node.
    let unsigned = serde_json::json!({
        "body": forged_change("lab")["body"], "signature": "00".repeat(64)
    });
    for (what, change) in [("forged", forged_change("lab")), ("unsigned", unsigned)] {
        let (code, body) = http::request(
            &api(1),
            "POST",
            "/api/v1/admin/changes",
            &hdr,
            &change.to_string(),
        )
        .expect("post");
        assert_eq!(code, 422, "{what}: {body}");
        assert!(body.contains("refused"), "{what}: {body}");
    }
    wait_until(
        "every node counted both refusals",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            all.iter()
                .all(|i| state(*i).is_some_and(|s| s["rejected"] == 2))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", state(0)));
    for i in &all {
        let s = state(*i).expect("state");
        assert_eq!(s["roles"], serde_json::json!({}), "node {i}: {s}");
    }
    // Without the operator credential the API refuses before anything.
    let (code, _) = http::raw(
        &api(0),
        "POST",
        "/api/v1/admin/changes",
        &[],
        &forged_change("lab").to_string(),
    )
    .expect("post");
    assert_eq!(code, 401);

    // Signed by the cluster admin key (threshold): applied on every node.
    let pw = password_file(&c);
    let out = cli(&[
        "role",
        "create",
        "backend_developer",
        "--authority",
        "decision",
        "--permission",
        "write:ucxl://any:backend_developer@any:any/*^/**",
        "--reads",
        "backend_developer",
        "--api",
        &c.nodes[2].api(),
        "--operator-password-file",
        &pw,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in &all {
        let roles = wait_until(
            "the role everywhere",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                let out = cli(&["role", "ls", "--json", "--api", &c.nodes[*i].api()]);
                let v: Value = serde_json::from_slice(&out.stdout).ok()?;
                v.get("backend_developer").is_some().then_some(v)
            },
        )
        .expect("role applied");
        assert_eq!(roles["backend_developer"]["authority"], "decision");
        let s = state(*i).expect("state");
        assert_eq!(
            s["audit"][0]["summary"], "put role backend_developer",
            "{s}"
        );
    }
    // A role change with a bad name is refused before signing.
    let out = cli(&[
        "role",
        "create",
        "Bad Name",
        "--authority",
        "decision",
        "--api",
        &c.nodes[0].api(),
        "--operator-password-file",
        &pw,
    ]);
    assert!(!out.status.success());
}
