//! Access control benchmark: `cargo bench -p bzzz --bench access`.
//! Prints Markdown tables for `docs/benchmarks.md`.
//!
//! 1. The decision function alone (`bzzz_proto::access::decide`), on a
//!    registry of the built-in roles plus 100 roles of 20 rules each:
//!    p50 and p99 of single calls.
//! 2. The added latency per request on a real node (one process on
//!    127.0.0.1, initialized): `GET /api/v1/status` (public, no check)
//!    against `GET /api/v1/whoami` with an API key (key lookup, decision,
//!    a handler as small as status's), sequential, one connection each.
//! 3. Floods of 200 connections with a wrong password and with a wrong
//!    API key: the node's RSS and `GET /api/v1/status` latency meanwhile.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bzzz_proto::access::{Action, Resource, decide};
use bzzz_proto::cluster::{Authority, RoleDef};
use bzzz_testkit::{LocalCluster, LocalOpts, http, latency_summary, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";
const FLOOD: usize = 200;

fn pcts(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

fn decision_bench() {
    let mut reg = BTreeMap::new();
    for i in 0..100 {
        let name = format!("team{i}");
        let permissions = (0..20)
            .map(|j| match j % 4 {
                0 => format!("read:ucxl://any:team{i}@proj{j}:any/*^/**"),
                1 => format!("infer:model:m{j}*"),
                2 => format!("deny:write:ucxl://any:team{i}@any:any/*^/secret/**"),
                _ => "read:cluster".to_owned(),
            })
            .collect();
        reg.insert(
            name.clone(),
            RoleDef {
                name,
                authority: Authority::Suggestion,
                permissions,
                reads: vec!["backend_developer".into()],
                members: vec![],
            },
        );
    }
    let roles = vec![
        "team7".to_owned(),
        "team42".to_owned(),
        "observer".to_owned(),
    ];
    let cases = [
        (
            "read ucxl (allowed by reads)",
            Action::Read,
            Resource::Ucxl(
                "ucxl://alice:backend_developer@bzzz:api/*^/notes/design.md"
                    .parse()
                    .expect("addr"),
            ),
        ),
        (
            "write ucxl (denied by default)",
            Action::Write,
            Resource::Ucxl(
                "ucxl://alice:team7@bzzz:api/*^/secret/x"
                    .parse()
                    .expect("addr"),
            ),
        ),
        (
            "infer model (glob)",
            Action::Infer,
            Resource::Model("m5-large:latest".into()),
        ),
        ("manage users (denied)", Action::Manage, Resource::USERS),
    ];
    println!("| decide(): case (3 roles held, 104 in the registry) | p50 | p99 |");
    println!("|---|---|---|");
    for (what, action, res) in &cases {
        let mut v = Vec::with_capacity(50_000);
        for _ in 0..50_000 {
            let t = Instant::now();
            let d = decide(&roles, &reg, *action, res);
            v.push(t.elapsed());
            std::hint::black_box(d);
        }
        let (p50, p99) = pcts(v);
        println!("| {what} | {p50:?} | {p99:?} |");
    }
    println!();
}

fn rss_kib(pid: u32) -> u64 {
    bzzz_testkit::proc_usage(pid).map_or(0, |(rss, _)| rss)
}

fn timed(addr: &str, path: &str, auth: Option<&str>, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("authorization", a)).into_iter().collect();
            let t = Instant::now();
            let (code, body) = http::raw(addr, "GET", path, &headers, "").expect("request");
            assert_eq!(code, 200, "{path}: {body}");
            t.elapsed()
        })
        .collect()
}

/// The observer's address during a flood (the flood's is 127.0.0.1).
const OTHER: Option<std::net::IpAddr> =
    Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)));

fn flood(addr: &str, pid: u32, what: &str, auth: &str) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (status, max_rss) = std::thread::scope(|s| {
        for _ in 0..FLOOD {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = http::raw(
                        addr,
                        "GET",
                        "/api/v1/whoami",
                        &[("authorization", auth)],
                        "",
                    );
                }
            });
        }
        let mut lat = Vec::new();
        let mut max_rss = 0;
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            let t = Instant::now();
            // Another client's view: the flood comes from 127.0.0.1.
            let ok = http::raw_from(OTHER, addr, "GET", "/api/v1/status", &[], "")
                .is_ok_and(|(c, _)| c == 200);
            lat.push(if ok {
                t.elapsed()
            } else {
                Duration::from_secs(30)
            });
            max_rss = max_rss.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (lat, max_rss)
    });
    println!(
        "| {what} | {FLOOD} | {:.1} MiB | {} |",
        max_rss as f64 / 1024.0,
        latency_summary(status)
    );
}

fn main() {
    decision_bench();
    let mut c = LocalCluster::start(Path::new(BIN), 1, &LocalOpts::default()).expect("start");
    c.wait_formed(Duration::from_secs(30)).expect("formed");
    let _pw = c.init(0, PASSWORD).expect("init");
    let api = c.nodes[0].api();
    let v = wait_until(
        "an API key",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let out = bzzz_testkit::cli(
                BIN,
                &[
                    "apikey", "create", "--role", "observer", "--api", &api, "--json",
                ],
            );
            out.status
                .success()
                .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json"))
        },
    )
    .expect("key");
    let key = format!("Bearer {}", v["secret"].as_str().expect("secret"));
    let addr = c.nodes[0].api_addr();
    // Warm up both paths.
    timed(&addr, "/api/v1/status", None, 200);
    timed(&addr, "/api/v1/whoami", Some(&key), 200);
    let mut public = Vec::new();
    let mut checked = Vec::new();
    for _ in 0..10 {
        public.extend(timed(&addr, "/api/v1/status", None, 200));
        checked.extend(timed(&addr, "/api/v1/whoami", Some(&key), 200));
    }
    let (p50a, p99a) = pcts(public);
    let (p50b, p99b) = pcts(checked);
    println!("| request (2000 each, interleaved, new connection each) | p50 | p99 |");
    println!("|---|---|---|");
    println!("| GET /api/v1/status (public) | {p50a:?} | {p99a:?} |");
    println!("| GET /api/v1/whoami (API key: lookup and decision) | {p50b:?} | {p99b:?} |");
    println!(
        "| added by the check (difference) | {:?} | {:?} |",
        p50b.saturating_sub(p50a),
        p99b.saturating_sub(p99a)
    );
    println!();
    let pid = c.nodes[0].pid().expect("pid");
    println!("| flood (10 s) | connections | node RSS max | GET /api/v1/status meanwhile |");
    println!("|---|---|---|---|");
    println!(
        "| none (idle) | 0 | {:.1} MiB | - |",
        rss_kib(pid) as f64 / 1024.0
    );
    flood(
        &addr,
        pid,
        "wrong API key",
        &format!("Bearer bzzz_{}", "0".repeat(64)),
    );
    let wrong = {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("admin:not the password")
        )
    };
    flood(&addr, pid, "wrong password", &wrong);
}
