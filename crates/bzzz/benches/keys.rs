//! Keys benchmark: `cargo bench -p bzzz --bench keys` (prints a Markdown
//! table). A loopback cluster of `BENCH_NODES` (default 5) nodes, every
//! one a holder, t = a majority (3 of 5):
//!
//! * setup: `POST /api/v1/setup` + confirm (derive, split, sign, seal,
//!   deliver to 4 peers);
//! * threshold signature of an operator message (t signers, HTTP API
//!   call; the API node checks the operator password once and caches it,
//!   each signer checks the operator's authorization: an Ed25519
//!   signature since issue #22, an Argon2id password hash before);
//! * join token creation (a threshold signature);
//! * join: process start of a node with a token → listed by every member,
//!   and → its share valid (the leader re-deals the key to it: a new key
//!   epoch); then the joiner is stopped and removed (a dead holder would
//!   block the next re-deal).
//!
//! Environment: `BENCH_TRIALS` (default 5), `BENCH_NODES` (default 5),
//! `BENCH_SIGN_ONLY=1` (skip the joins), `BENCH_BIN` (another `bzzz`
//! binary, e.g. an older build, to compare on the same machine).

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bzzz_testkit::{LocalCluster, LocalOpts, http, wait_until};

const BUILT: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";

use bzzz_testkit::latency_summary as stats;

fn post(addr: &str, path: &str, body: &str, auth: bool) -> anyhow::Result<serde_json::Value> {
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("operator:{PASSWORD}"))
    );
    let headers: Vec<(&str, &str)> = if auth {
        vec![("Authorization", basic.as_str())]
    } else {
        vec![]
    };
    let (code, text) = http::request(addr, "POST", path, &headers, body)?;
    anyhow::ensure!((200..300).contains(&code), "{path}: {code} {text}");
    Ok(serde_json::from_str(&text)?)
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let trials = std::env::var("BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize);
    let n: usize = std::env::var("BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize)
        .clamp(1, 64);
    let t = n / 2 + 1;
    let sign_only = std::env::var("BENCH_SIGN_ONLY").is_ok_and(|v| v == "1");
    let bin = std::env::var("BENCH_BIN").unwrap_or_else(|_| BUILT.to_owned());
    println!("## Keys benchmark ({trials} trials, binary {bin})\n");
    let mut c = LocalCluster::start(Path::new(&bin), n, &LocalOpts::default())?;
    c.wait_formed(Duration::from_secs(30))?;
    let addr = c.nodes[0].api().trim_start_matches("http://").to_owned();

    let t0 = Instant::now();
    let holders = serde_json::to_string(&c.holder_ids(0))?;
    let setup = |with_holders: bool| {
        let h = if with_holders {
            format!(r#","holders":{holders}"#)
        } else {
            String::new()
        };
        post(
            &addr,
            "/api/v1/setup",
            &format!(
                r#"{{"cluster":"bench","threshold":{t},"shares":{n}{h},"operator_password":"{PASSWORD}"}}"#
            ),
            false,
        )
    };
    // A binary from before issue #22 (BENCH_BIN) takes no holders: every
    // node present held a share.
    let started = match setup(true) {
        Err(e) if e.to_string().contains("holders") => setup(false)?,
        r => r?,
    };
    let typed = serde_json::from_value::<bzzz_proto::api::SetupStarted>(started.clone())?
        .confirmation_words();
    let body = serde_json::json!({"setup_id": started["setup_id"], "words": typed});
    post(&addr, "/api/v1/setup/confirm", &body.to_string(), false)?;
    let setup = t0.elapsed();
    c.wait_formed(Duration::from_secs(30))?;

    let mut sign = Vec::new();
    let mut token = Vec::new();
    for i in 0..trials {
        let t = Instant::now();
        post(
            &addr,
            "/api/v1/keys/sign",
            &format!(r#"{{"message":"m{i}"}}"#),
            true,
        )?;
        sign.push(t.elapsed());
        let t = Instant::now();
        post(&addr, "/api/v1/tokens", "{}", true)?;
        token.push(t.elapsed());
    }

    let mut listed = Vec::new();
    let mut enrolled = Vec::new();
    for _ in 0..if sign_only { 0 } else { trials } {
        let tok = post(&addr, "/api/v1/tokens", "{}", true)?["token"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let t = Instant::now();
        let j = c.add_node(&LocalOpts {
            extra_args: vec!["--join-token".into(), tok],
            ..Default::default()
        })?;
        let id = c.nodes[j].node_id().to_owned();
        let nodes = &c.nodes;
        wait_until(
            "listed by all members",
            Duration::from_secs(30),
            Duration::from_millis(10),
            || {
                (0..n)
                    .all(|m| nodes[m].peer_ids().unwrap_or_default().contains(&id))
                    .then_some(())
            },
        )?;
        listed.push(t.elapsed());
        wait_until(
            "share re-dealt",
            Duration::from_secs(30),
            Duration::from_millis(10),
            || {
                let s = nodes[j].get_json("/api/v1/keys").ok()?;
                (s["share_state"] == "valid").then_some(())
            },
        )?;
        enrolled.push(t.elapsed());
        // A dead holder would block the next re-deal (every holder of the
        // next epoch must take part): the operator removes it.
        c.nodes[j].kill9();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("operator:{PASSWORD}"))
        );
        let (code, text) = http::request(
            &addr,
            "DELETE",
            &format!("/api/v1/members/{id}"),
            &[("Authorization", basic.as_str())],
            "",
        )?;
        anyhow::ensure!(code == 200, "remove {id}: {code} {text}");
        wait_until(
            "back to n holders",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                let s = c.nodes[0].get_json("/api/v1/keys").ok()?;
                (s["shares"] == n).then_some(())
            },
        )?;
    }

    println!("| measure ({n} nodes, t = {t}) | result |\n|---|---|");
    println!(
        "| setup: confirm → all {n} nodes hold records and shares | {:.0} ms |",
        setup.as_secs_f64() * 1000.0
    );
    println!(
        "| threshold signature via the API ({t} signers) | {} |",
        stats(sign)
    );
    println!(
        "| join token creation (threshold-signed) | {} |",
        stats(token)
    );
    if sign_only {
        return Ok(());
    }
    println!(
        "| join: start with token → listed by all {n} members | {} |",
        stats(listed)
    );
    println!(
        "| join: start with token → share re-dealt to it (new key epoch) | {} |",
        stats(enrolled)
    );
    Ok(())
}
