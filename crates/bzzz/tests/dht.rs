//! The DHT under UCXL addresses (SPEC §7, §9), with real node processes on
//! 127.0.0.1: records sealed to roles (members, reading roles and admin
//! read; others get 403 and the ciphertext opens with none of their keys),
//! revocation rotates the key, temporal segments, history, listing; ten
//! nodes losing two (replicas restored), a full restart (records persist);
//! and `bzzz config migrate` moving the weights into the DHT.

use std::process::Output;
use std::time::{Duration, Instant};

use bzzz_testkit::{LocalCluster, LocalOpts, http, wait_until};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";

fn cli(args: &[&str]) -> Output {
    bzzz_testkit::cli(BIN, args)
}

fn cli_json(args: &[&str]) -> Value {
    bzzz_testkit::cli_json(BIN, args)
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn role(c: &LocalCluster, pw: &str, name: &str, reads: &[&str], members: &[usize]) {
    role_via(c, 0, pw, name, reads, members);
}

/// Creates or replaces a role through node `via`'s API.
fn role_via(c: &LocalCluster, via: usize, pw: &str, name: &str, reads: &[&str], members: &[usize]) {
    let api = c.nodes[via].api();
    let ids: Vec<String> = members
        .iter()
        .map(|i| c.nodes[*i].node_id().to_owned())
        .collect();
    let mut args = vec!["role", "create", name, "--authority", "suggestion"];
    for r in reads {
        args.extend(["--reads", r]);
    }
    for id in &ids {
        args.extend(["--member", id]);
    }
    args.extend(["--api", &api, "--operator-password-file", pw]);
    // Right after setup the first leader may still be handing off, and
    // the genesis entry may not be applied yet (503, retried).
    let last = std::cell::RefCell::new(String::new());
    let out = wait_until(
        "a role change",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let out = cli(&args);
            *last.borrow_mut() = String::from_utf8_lossy(&out.stderr).into_owned();
            (out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("503"))
                .then_some(out)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: last answer: {}\n{}", last.borrow(), c.logs()));
    ok(&out);
}

fn put(c: &LocalCluster, i: usize, pw: &str, addr: &str, value: &str) -> Value {
    let api = c.nodes[i].api();
    let args = [
        "dht",
        "put",
        addr,
        "--value",
        value,
        "--api",
        &api,
        "--operator-password-file",
        pw,
        "--json",
    ];
    // A 503 (no quorum right now: the write's audit entry could not
    // commit, so nothing was written) is for the client to retry.
    let last = std::cell::RefCell::new(String::new());
    wait_until(
        "a DHT write",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let out = cli(&args);
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            let retry = !out.status.success() && err.contains("503");
            *last.borrow_mut() = err;
            (!retry).then_some(out)
        },
    )
    .map(|out| {
        assert!(out.status.success(), "bzzz {args:?}: {}", last.borrow());
        serde_json::from_slice(&out.stdout).expect("json")
    })
    .unwrap_or_else(|e| panic!("{e}: {}", last.borrow()))
}

fn get(c: &LocalCluster, i: usize, addr: &str) -> Output {
    cli(&["dht", "get", addr, "--api", &c.nodes[i].api(), "--json"])
}

fn get_json(c: &LocalCluster, i: usize, addr: &str) -> Value {
    let out = get(c, i, addr);
    ok(&out);
    serde_json::from_slice(&out.stdout).expect("json")
}

fn started(n: usize) -> (LocalCluster, String) {
    let mut c =
        LocalCluster::start(std::path::Path::new(BIN), n, &LocalOpts::default()).expect("start");
    c.wait_formed(Duration::from_secs(30)).expect("formed");
    let pw = c.init(0, PASSWORD).expect("init");
    wait_until("every node a member", Duration::from_secs(30), Duration::from_millis(100), || {
        (0..n)
            .all(|i| {
                cli_json(&["keys", "status", "--api", &c.nodes[i].api(), "--json"])["initialized"] == true
            })
            .then_some(())
    })
    .expect("members");
    (c, pw)
}

#[test]
fn records_are_sealed_to_roles_with_history_and_revocation() {
    let (c, pw) = started(4);
    // 0: developer, 1: architect (reads developer data), 2: admin, 3: observer.
    role(&c, &pw, "admin", &[], &[2]);
    role(&c, &pw, "backend_developer", &[], &[0]);
    role(
        &c,
        &pw,
        "senior_software_architect",
        &["backend_developer"],
        &[1],
    );
    role(&c, &pw, "observer", &[], &[3]);
    let addr = "ucxl://alice:backend_developer@bzzz:api/*^/notes/design.md";
    let mut times = Vec::new();
    for v in 1..=5 {
        let r = put(&c, 0, &pw, addr, &format!("design v{v}"));
        assert_eq!(r["version"], v, "{r}");
        assert_eq!(r["address"], addr);
        times.push(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string());
        // Not synchronization: the time noted here must fall strictly
        // between two versions' millisecond timestamps.
        std::thread::sleep(Duration::from_millis(5));
    }
    // Members, the architect and admin read it; the observer does not.
    for i in [0, 1, 2] {
        let v = get_json(&c, i, addr);
        assert_eq!(v["value"], "design v5", "node {i}: {v}");
        assert_eq!(v["version"], 5);
        assert_eq!(v["author"], c.nodes[0].node_id());
    }
    let out = get(&c, 3, addr);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for r in ["backend_developer", "senior_software_architect", "admin"] {
        assert!(err.contains(r), "the refusal names {r}: {err}");
    }
    let q = serde_urlencoded::to_string([("address", addr)]).expect("q");
    let (code, body) =
        http::get(&c.nodes[3].api_addr(), &format!("/api/v1/dht/get?{q}")).expect("get");
    assert_eq!(code, 403, "{body}");
    // The raw record: the observer's keys (node identity, every role key
    // it holds) open none of it; the developer's do.
    let (code, raw) =
        http::get(&c.nodes[3].api_addr(), &format!("/api/v1/dht/raw?{q}")).expect("raw");
    assert_eq!(code, 200, "{raw}");
    let raw: Value = serde_json::from_str(&raw).expect("json");
    assert_eq!(raw["opens_here"], false, "{raw}");
    assert!(
        raw["keys_tried"].as_u64() >= Some(2),
        "node key and the observer key: {raw}"
    );
    assert!(!raw.to_string().contains("design v5"));
    let (_, raw0) =
        http::get(&c.nodes[0].api_addr(), &format!("/api/v1/dht/raw?{q}")).expect("raw");
    assert!(raw0.contains("\"opens_here\":true"), "{raw0}");

    // Temporal segments.
    let at = |t: &str| addr.replace("*^", t);
    for (t, want) in [("*^", 5), ("*~", 1), ("*~3", 3), ("~~2", 3), ("^^1", 2)] {
        let v = get_json(&c, 1, &at(t));
        assert_eq!(v["version"], want, "{t}: {v}");
        assert_eq!(v["value"], format!("design v{want}"), "{t}");
    }
    let v = get_json(&c, 1, &at(&times[1]));
    assert_eq!(v["version"], 2, "the version current at {}: {v}", times[1]);
    for t in ["*~9", "~~5", "^^5", "2000-01-01T00:00:00Z"] {
        let out = get(&c, 1, &at(t));
        assert!(!out.status.success(), "{t} is out of range");
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            e.contains("version") || e.contains("did not exist"),
            "{t}: a clear error: {e}"
        );
    }
    let h = cli_json(&["dht", "history", addr, "--api", &c.nodes[3].api(), "--json"]);
    let versions: Vec<u64> = h
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["version"].as_u64())
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5], "{h}");
    assert!(
        h[0]["timestamp"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{h}"
    );
    assert_eq!(h[4]["author"], c.nodes[0].node_id());
    let l = cli_json(&[
        "dht",
        "ls",
        "ucxl://any:backend_developer@any:any/*^/**",
        "--api",
        &c.nodes[2].api(),
        "--json",
    ]);
    assert_eq!(l.as_array().map(Vec::len), Some(1), "{l}");
    assert_eq!(l[0]["address"], addr);
    assert_eq!(l[0]["version"], 5);

    // The DHT browser: the record, its versions, who reads it, whether
    // this node can.
    let (code, page) = http::get(&c.nodes[2].api_addr(), "/dht").expect("page");
    assert_eq!(code, 200);
    assert!(
        page.contains("notes/design.md") && page.contains("can read"),
        "{page}"
    );
    let (_, page) = http::get(&c.nodes[3].api_addr(), &format!("/dht?{q}")).expect("page");
    assert!(page.contains("This node cannot read it."), "{page}");
    assert!(page.contains("senior_software_architect"), "{page}");
    let (_, page) = http::get(&c.nodes[1].api_addr(), &format!("/dht?{q}")).expect("page");
    assert!(
        page.contains("This node can read it.") && page.contains("id=\"versions\""),
        "{page}"
    );

    // A node that is not a member of the role cannot write under it.
    let out = cli(&[
        "dht",
        "put",
        addr,
        "--value",
        "x",
        "--api",
        &c.nodes[3].api(),
        "--operator-password-file",
        &pw,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a member of role backend_developer")
    );
    // Values over 256 KiB are refused with a clear error.
    let big = std::env::temp_dir().join(format!("bzzz-dht-big-{}", std::process::id()));
    std::fs::write(&big, vec![b'x'; 256 * 1024 + 1]).expect("write");
    let out = cli(&[
        "dht",
        "put",
        addr,
        "--file",
        &big.to_string_lossy(),
        "--api",
        &c.nodes[0].api(),
        "--operator-password-file",
        &pw,
    ]);
    let _ = std::fs::remove_file(&big);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("256 KiB"));

    // Revocation: the architect role loses its member; the developer
    // chain's key rotates; what is written after is closed to it.
    role(
        &c,
        &pw,
        "senior_software_architect",
        &["backend_developer"],
        &[],
    );
    let r = put(&c, 0, &pw, addr, "design v6");
    assert_eq!(r["version"], 6);
    let out = get(&c, 1, addr);
    assert!(
        !out.status.success(),
        "a removed reader cannot read what is written after"
    );
    let v = get_json(&c, 1, &at("*~5"));
    assert_eq!(
        v["value"], "design v5",
        "what it could read before stays readable to it"
    );
    assert_eq!(get_json(&c, 2, addr)["value"], "design v6");
    // A node added to a role gets the current and past keys (a grant).
    role(&c, &pw, "observer", &["backend_developer"], &[3]);
    let v = wait_until(
        "the new reader's keys",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            // Each key epoch is granted by its own proposal.
            let old = get(&c, 3, &at("*~1"));
            let new = get(&c, 3, addr);
            (old.status.success() && new.status.success())
                .then(|| {
                    let o: Value = serde_json::from_slice(&old.stdout).ok()?;
                    let n: Value = serde_json::from_slice(&new.stdout).ok()?;
                    Some((o, n))
                })
                .flatten()
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(v.0["value"], "design v1");
    assert_eq!(v.1["value"], "design v6");
}

/// The key epochs of `chain` in node `i`'s applied state.
fn role_keys(c: &LocalCluster, i: usize, chain: &str) -> Vec<Value> {
    let (code, body) = http::get(&c.nodes[i].api_addr(), "/api/v1/cluster").expect("cluster");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["role_keys"][chain]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Issue #22: a new role key is made on a reader of the role, never on
/// the node that serves the operator's request, which may be the reader
/// being shut out (it would have seen the secret meant to exclude it).
#[test]
fn a_role_key_is_made_by_a_reader_not_by_the_node_serving_the_change() {
    let (c, pw) = started(3);
    let id = |i: usize| c.nodes[i].node_id().to_owned();
    // Through node 0, which may not read "ops": a reader makes the key.
    role_via(&c, 0, &pw, "ops", &[], &[1, 2]);
    let keys = wait_until(
        "node 0 applies the role",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let k = role_keys(&c, 0, "ops");
            (k.len() == 1).then_some(k)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", role_keys(&c, 0, "ops")));
    let maker = keys[0]["made_by"].as_str().unwrap_or_default().to_owned();
    assert!(
        maker == id(1) || maker == id(2),
        "the first key of ops is made by one of its readers, not by node 0: {keys:?}"
    );
    // Node 2 is shut out, through its own API: the rotation is made by
    // node 1, the reader that stays.
    role_via(&c, 2, &pw, "ops", &[], &[1]);
    // Committed; node 2 applies it a moment later.
    let keys = wait_until(
        "node 2 applies the rotation",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let k = role_keys(&c, 2, "ops");
            (k.len() == 2).then_some(k)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", role_keys(&c, 2, "ops")));
    assert_eq!(keys[1]["epoch"], 2);
    assert_eq!(
        keys[1]["made_by"],
        id(1),
        "the new key is made by the remaining reader: {keys:?}"
    );
    assert_eq!(keys[1]["readers"], serde_json::json!([id(1)]), "{keys:?}");
    // What is written after is closed to node 2, open to node 1.
    let addr = "ucxl://any:ops@bzzz:runbook/*^/steps.md";
    put(&c, 1, &pw, addr, "after");
    assert_eq!(get_json(&c, 1, addr)["value"], "after");
    let out = get(&c, 2, addr);
    assert!(
        !out.status.success(),
        "node 2 reads what was written after its removal"
    );
}

/// Every record at `addrs` is held (head) by at least `want` of the nodes
/// in `alive`.
fn replicas(c: &LocalCluster, alive: &[usize], addrs: &[String]) -> Vec<usize> {
    let mut count = vec![0; addrs.len()];
    for i in alive {
        let Ok((200, body)) = http::get(&c.nodes[*i].api_addr(), "/api/v1/dht/local") else {
            continue;
        };
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        for (k, a) in addrs.iter().enumerate() {
            if v.as_array().is_some_and(|l| {
                l.iter()
                    .any(|e| e["head"] == true && e["address"] == a.as_str())
            }) {
                count[k] += 1;
            }
        }
    }
    count
}

#[test]
fn ten_nodes_lose_two_heal_and_keep_everything_across_a_restart() {
    let (mut c, pw) = started(10);
    role(
        &c,
        &pw,
        "backend_developer",
        &[],
        &(0..10).collect::<Vec<_>>(),
    );
    let addrs: Vec<String> = (0..12)
        .map(|k| format!("ucxl://agent{k}:backend_developer@bzzz:heal/*^/item/{k}"))
        .collect();
    for (k, a) in addrs.iter().enumerate() {
        put(&c, k % 10, &pw, a, &format!("value {k} v1"));
        put(&c, k % 10, &pw, a, &format!("value {k} v2"));
    }
    let all: Vec<usize> = (0..10).collect();
    // A listing asks every member (no node holds all of them).
    let l = cli_json(&[
        "dht",
        "ls",
        "ucxl://any:backend_developer@bzzz:heal/*^/**",
        "--api",
        &c.nodes[9].api(),
        "--json",
    ]);
    assert_eq!(l.as_array().map(Vec::len), Some(addrs.len()), "{l}");
    assert!(
        l.as_array()
            .is_some_and(|v| v.iter().all(|e| e["version"] == 2)),
        "{l}"
    );
    let r = replicas(&c, &all, &addrs);
    eprintln!("holders of each record: {r:?}");
    assert!(
        r.iter().all(|n| *n >= 3),
        "every record at 3 replicas or more: {r:?}"
    );
    // Each record is at its author and its 3 closest nodes (3 or 4 nodes).
    // Kill two holders of the record with the fewest holders, so that it
    // drops below 3 live replicas (authors keep a copy too, so most
    // records start with more than 3).
    let held: Vec<Vec<usize>> = addrs
        .iter()
        .map(|a| {
            all.iter()
                .copied()
                .filter(|i| replicas(&c, &[*i], std::slice::from_ref(a))[0] == 1)
                .collect()
        })
        .collect();
    let fewest = held.iter().min_by_key(|h| h.len()).expect("records");
    let holders: Vec<usize> = fewest.iter().copied().take(2).collect();
    assert_eq!(holders.len(), 2);
    for i in &holders {
        c.nodes[*i].kill9();
    }
    let alive: Vec<usize> = all
        .iter()
        .copied()
        .filter(|i| !holders.contains(i))
        .collect();
    for (k, a) in addrs.iter().enumerate() {
        let v = get_json(&c, alive[k % alive.len()], a);
        assert_eq!(
            v["value"],
            format!("value {k} v2"),
            "{a} readable with two nodes down"
        );
    }
    let t0 = Instant::now();
    let after = replicas(&c, &alive, &addrs);
    assert!(
        after.iter().any(|n| *n < 3),
        "a record lost replicas with the kill (else the test proves nothing): {after:?}"
    );
    wait_until(
        "3 live replicas of every record",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            replicas(&c, &alive, &addrs)
                .iter()
                .all(|n| *n >= 3)
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", replicas(&c, &alive, &addrs), c.logs()));
    eprintln!(
        "replicas restored {} ms after the kill",
        t0.elapsed().as_millis()
    );
    // Stop everything, start everything: every record and version is there.
    for i in &alive {
        c.nodes[*i].kill9();
    }
    // Node 0 comes back on new ports: the others bootstrap to it there.
    for i in 0..10 {
        if i > 0 {
            let b = c.nodes[0].tcp_addr().expect("node 0 address");
            let args = &mut c.nodes[i].args;
            if let Some(k) = args.iter().position(|a| a == "--bootstrap") {
                args[k + 1] = b;
            }
        }
        c.nodes[i]
            .restart(std::path::Path::new(BIN))
            .expect("restart");
        c.nodes[i]
            .wait_ready(Duration::from_secs(20))
            .expect("ready");
    }
    c.wait_formed(Duration::from_secs(60))
        .expect("formed again");
    for (k, a) in addrs.iter().enumerate() {
        let v = wait_until(
            "the record after a restart",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let out = get(&c, k % 10, a);
                out.status
                    .success()
                    .then(|| serde_json::from_slice::<Value>(&out.stdout).ok())
                    .flatten()
            },
        )
        .unwrap_or_else(|e| {
            let out = get(&c, k % 10, a);
            panic!(
                "{e}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                c.logs()
            )
        });
        assert_eq!(v["value"], format!("value {k} v2"));
        let h = cli_json(&[
            "dht",
            "history",
            a,
            "--api",
            &c.nodes[(k + 3) % 10].api(),
            "--json",
        ]);
        assert_eq!(h.as_array().map(Vec::len), Some(2), "{a}: {h}");
    }
}

#[test]
fn config_migrate_moves_the_weights_and_every_node_applies_them() {
    let mut c =
        LocalCluster::start(std::path::Path::new(BIN), 0, &LocalOpts::default()).expect("dir");
    let yaml = "control:\n  weights:\n    cpu_core: 1.0\n    ram_gib: 0.5\n";
    let mut files = Vec::new();
    for i in 0..3 {
        let o = c.config(&format!("node{i}"), yaml).expect("config");
        files.push(o.extra_args[1].clone());
        c.add_node(&o).expect("node");
    }
    c.wait_formed(Duration::from_secs(30)).expect("formed");
    let pw = c.init(0, PASSWORD).expect("init");
    let score = |i: usize| -> Option<f64> {
        let v = cli_json(&["leader", "--api", &c.nodes[i].api(), "--json"]);
        v["scores"][c.nodes[i].node_id()].as_f64().or_else(|| {
            v["scores"]
                .as_array()?
                .iter()
                .find(|s| s["node_id"] == c.nodes[i].node_id())?["score"]
                .as_f64()
        })
    };
    // Every node's own score, read in one pass (a node may not list one
    // for a moment while the inventory is rewritten).
    let before: Vec<f64> = wait_until(
        "scores",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || (0..3).map(score).collect::<Option<Vec<f64>>>(),
    )
    .expect("scores");
    // The plan, then the migration (twice: idempotent).
    let migrate = |extra: &[&str]| {
        let api = c.nodes[0].api();
        let mut args = vec!["config", "migrate", "--config", &files[0], "--api", &api];
        args.extend(["--operator-password-file", &pw, "--json"]);
        args.extend_from_slice(extra);
        cli(&args)
    };
    let json = |out: Output| -> Value {
        ok(&out);
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let dry = json(migrate(&["--dry-run"]));
    assert_eq!(dry["steps"][0]["action"], "put", "{dry}");
    assert!(
        std::fs::read_to_string(&files[0])
            .expect("file")
            .contains("weights"),
        "a dry run changes nothing"
    );
    // Right after setup the first leader may still be handing off (503).
    let out = wait_until(
        "the migration",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            let out = migrate(&[]);
            (out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("503"))
                .then_some(out)
        },
    )
    .expect("migrate");
    ok(&out);
    let text = std::fs::read_to_string(&files[0]).expect("file");
    assert!(
        !text.contains("weights"),
        "the file no longer holds the weights: {text}"
    );
    assert!(
        std::path::Path::new(&format!("{}.pre-migrate", files[0])).exists(),
        "backup kept"
    );
    let again = json(migrate(&[]));
    assert_eq!(again["steps"][0]["action"], "none", "idempotent: {again}");
    // A node that was not in reach when the members' key was made gets it
    // by a grant a moment later.
    let w = wait_until(
        "node 2 reads the config",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let out = get(&c, 2, "ucxl://any:admin@cluster:config/*^/control/weights");
            out.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&out.stdout).ok())
                .flatten()
        },
    )
    .unwrap_or_else(|e| {
        let (_, cl) = http::get(&c.nodes[2].api_addr(), "/api/v1/cluster").expect("cluster");
        let ids: Vec<&str> = (0..3).map(|i| c.nodes[i].node_id()).collect();
        panic!("{e}\nids {ids:?}\n{cl}\n{}", c.logs())
    });
    assert_eq!(w["version"], 1);
    // A new value in the DHT changes every node's scores within 5 s.
    put(
        &c,
        1,
        &pw,
        "ucxl://any:admin@cluster:config/*^/control/weights",
        "{\"cpu_core\": 50.0, \"ram_gib\": 0.5}",
    );
    let t0 = Instant::now();
    wait_until(
        "every node's scores to follow the DHT",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            (0..3)
                .all(|i| score(i).is_some_and(|s| s > before[i] + 10.0))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| {
        let seen: Vec<String> = (0..3)
            .map(|i| {
                let out = get(&c, i, "ucxl://any:admin@cluster:config/*^/control/weights");
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .collect();
        panic!(
            "{e}: before {before:?}, now {:?}\nconfig as each node reads it: {seen:?}\n{}",
            (0..3).map(score).collect::<Vec<_>>(),
            c.logs()
        )
    });
    eprintln!(
        "scores changed on every node {} ms after the write",
        t0.elapsed().as_millis()
    );
}
