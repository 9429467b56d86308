//! Access control (SPEC §9) with real node processes on 127.0.0.1:
//! a matrix generated from the route table (the four built-in roles,
//! anonymous, a revoked and an expired key × every route), DHT reads by
//! the caller's rights on any node, revocation on every node within 2 s,
//! and the audit log (same head everywhere, `audit verify`, an edited
//! entry named, fail closed without quorum).

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use bzzz::app::routes;
use bzzz::http::{Permission, Res};
use bzzz_proto::access::{Resource, decide};
use bzzz_testkit::{LocalCluster, LocalOpts, http, wait_until};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";
const ADDR: &str = "ucxl://alice:backend_developer@bzzz:api/*^/notes/design.md";
const SECRET: &str = "the secret design of the backend";

fn cli(args: &[&str]) -> Output {
    bzzz_testkit::cli(BIN, args)
}

fn cli_json(args: &[&str]) -> Value {
    bzzz_testkit::cli_json(BIN, args)
}

fn started(n: usize) -> (LocalCluster, String) {
    started_with(n, &LocalOpts::default())
}

fn started_with(n: usize, opts: &LocalOpts) -> (LocalCluster, String) {
    let mut c = LocalCluster::start(Path::new(BIN), n, opts).expect("start");
    c.wait_formed(Duration::from_secs(30)).expect("formed");
    let pw = c.init(0, PASSWORD).expect("init");
    wait_until(
        "every node a member with a leader",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            (0..n)
                .all(|i| {
                    c.nodes[i]
                        .get_json("/api/v1/leader")
                        .is_ok_and(|v| !v["leader"].is_null())
                })
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    (c, pw)
}

/// `apikey create` through node `i` as the operator (retried while the
/// first leader settles); returns (id, secret).
fn key(c: &LocalCluster, i: usize, role: &str, extra: &[&str]) -> (String, String) {
    let api = c.nodes[i].api();
    let mut args = vec!["apikey", "create", "--role", role, "--api", &api, "--json"];
    args.extend_from_slice(extra);
    let v = wait_until(
        "an API key",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let out = cli(&args);
            out.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&out.stdout).expect("json"))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    (
        v["id"].as_str().expect("id").to_owned(),
        v["secret"].as_str().expect("secret").to_owned(),
    )
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

fn basic_operator() -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"))
    )
}

/// A request exactly as given (`auth` none: anonymous).
fn call(addr: &str, method: &str, path: &str, auth: Option<&str>, body: &str) -> (u16, String) {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    http::raw(addr, method, path, &headers, body).expect("request")
}

/// The resource the guard derives for a route in this test's requests.
fn resource_of(res: Res) -> Option<Resource> {
    Some(match res {
        Res::Is(f) => Resource::Fixed(f),
        Res::ModelInPath | Res::ModelInBody | Res::NameInBody => {
            Resource::Model("nope:latest".into())
        }
        Res::SomeModel => Resource::Model("*".into()),
        Res::AddressInQuery | Res::AddressInBody => Resource::Ucxl(ADDR.parse().expect("addr")),
        Res::AllNodes => Resource::Node("*".into()),
    })
}

/// A concrete request for a route: path (parameters and query filled in)
/// and body.
fn request_for(path: &str, method: &str, res: Option<Res>) -> (String, String) {
    let mut p = path
        .replace("{name}", "nope:latest")
        .replace("{id}", "k0000000000000000")
        .replace("{digest}", &format!("sha256-{}", "0".repeat(64)));
    if path.starts_with("/api/v1/users/") {
        p = p.replace("nope:latest", "nobody");
    }
    if res == Some(Res::AddressInQuery) {
        p.push_str("?address=");
        p.push_str(&ADDR.replace('*', "%2A").replace('^', "%5E"));
    }
    let body = match res {
        Some(Res::ModelInBody) => r#"{"model":"nope:latest"}"#.to_owned(),
        Some(Res::NameInBody) => r#"{"name":"nope:latest"}"#.to_owned(),
        Some(Res::AddressInBody) => format!(r#"{{"address":"{ADDR}"}}"#),
        _ if method == "GET" => String::new(),
        _ => "{}".to_owned(),
    };
    (p, body)
}

#[test]
fn every_route_answers_by_the_callers_rights() {
    let (c, _pw) = started(1);
    let addr = c.nodes[0].api_addr();
    let mut principals: Vec<(String, Option<String>, Option<Vec<String>>)> = vec![
        ("anonymous".into(), None, None),
        (
            "admin".into(),
            Some(basic_operator()),
            Some(vec!["admin".into()]),
        ),
    ];
    for role in ["senior_software_architect", "backend_developer", "observer"] {
        let (_, secret) = key(&c, 0, role, &[]);
        principals.push((role.into(), Some(bearer(&secret)), Some(vec![role.into()])));
    }
    let (revoked_id, revoked) = key(&c, 0, "backend_developer", &[]);
    let out = cli(&["apikey", "revoke", &revoked_id, "--api", &c.nodes[0].api()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (expired_id, expired) = key(&c, 0, "backend_developer", &["--ttl", "1s"]);
    wait_until(
        "the short key expires",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let v = cli_json(&["apikey", "ls", "--api", &c.nodes[0].api(), "--json"]);
            v.as_array()?
                .iter()
                .any(|k| k["id"] == expired_id.as_str() && k["state"] == "expired")
                .then_some(())
        },
    )
    .expect("expired");
    principals.push(("revoked key".into(), Some(bearer(&revoked)), None));
    principals.push(("expired key".into(), Some(bearer(&expired)), None));

    let registry = Default::default();
    let mut checked = 0;
    for r in routes() {
        let method = r.method.as_str();
        let (action, res) = match r.permission {
            Permission::Setup => continue,
            Permission::Public => {
                let (path, body) = request_for(r.path, method, None);
                let (code, text) = call(&addr, method, &path, None, &body);
                assert!(
                    code != 401 && code != 403,
                    "public {r:?} answered {code}: {text}"
                );
                continue;
            }
            Permission::DeployToken => {
                let (code, _) = call(&addr, method, &r.path.replace("{id}", "x"), None, "");
                assert_eq!(code, 401, "{r:?} without its token");
                continue;
            }
            Permission::Principal => (None, None),
            Permission::Need(a, res) => (Some(a), Some(res)),
        };
        let (path, body) = request_for(r.path, method, res);
        for (who, auth, roles) in &principals {
            let (code, text) = call(&addr, method, &path, auth.as_deref(), &body);
            let expect_allowed = match (roles, action, res) {
                (None, _, _) => None,
                (Some(_), None, _) => Some(true),
                (Some(roles), Some(a), Some(res)) => {
                    Some(decide(roles, &registry, a, &resource_of(res).expect("res")).allowed)
                }
                _ => unreachable!(),
            };
            match expect_allowed {
                None => assert_eq!(code, 401, "{who} on {method} {path}: {text}"),
                Some(true) => assert!(
                    code != 401 && code != 403,
                    "{who} may call {method} {path} but got {code}: {text}"
                ),
                Some(false) => {
                    assert_eq!(code, 403, "{who} on {method} {path}: {text}");
                    if r.path.starts_with("/api/") || r.path.starts_with("/v1/") {
                        let a = action.expect("action");
                        assert!(
                            text.contains(&format!("\"action\":\"{a}\"")),
                            "the 403 names the action: {text}"
                        );
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(
        checked > 200,
        "the matrix covers the table ({checked} cells)"
    );

    // Cross-site requests with the operator's credential: a hostile
    // page's fetch or form is refused before anything is done.
    let op = basic_operator();
    let body = r#"{"role":"observer"}"#;
    for (what, headers) in [
        (
            "foreign Origin",
            vec![
                ("authorization", op.as_str()),
                ("origin", "http://evil.example"),
            ],
        ),
        (
            "Sec-Fetch-Site cross-site",
            vec![
                ("authorization", op.as_str()),
                ("sec-fetch-site", "cross-site"),
            ],
        ),
    ] {
        let (code, text) =
            http::raw(&addr, "POST", "/api/v1/apikeys", &headers, body).expect("post");
        assert_eq!(code, 403, "{what}: {text}");
    }
    let raw_http = |req: String| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        s.write_all(req.as_bytes()).expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let text_plain = raw_http(format!(
        "POST /api/v1/apikeys HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {op}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert!(text_plain.starts_with("HTTP/1.1 415"), "{text_plain}");
    let keys = cli_json(&["apikey", "ls", "--api", &c.nodes[0].api(), "--json"]);
    assert_eq!(
        keys.as_array().map(Vec::len),
        Some(5),
        "no key was made cross-site: {keys}"
    );
    // A 401 never asks the browser for a password.
    let anon = raw_http(format!(
        "GET /api/v1/members HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    ))
    .to_ascii_lowercase();
    assert!(anon.starts_with("http/1.1 401"), "{anon}");
    assert!(
        anon.contains("www-authenticate: bearer") && !anon.contains("basic"),
        "{anon}"
    );
    // Public answers show members more than anonymous callers: no
    // Ollama endpoint nor model names for the latter.
    let (_, anon_status) = call(&addr, "GET", "/api/v1/status", None, "");
    let anon_status: Value = serde_json::from_str(&anon_status).expect("json");
    assert!(
        anon_status["capabilities"]["ollama"]["model_count"].is_u64()
            && anon_status["capabilities"]["ollama"]["endpoint"].is_null(),
        "{anon_status}"
    );
    let (_, op_status) = call(&addr, "GET", "/api/v1/status", Some(&op), "");
    let op_status: Value = serde_json::from_str(&op_status).expect("json");
    assert!(
        op_status["capabilities"]["ollama"]
            .get("model_count")
            .is_none(),
        "{op_status}"
    );
    // Refusals reach the audit log, aggregated per principal (flushed
    // once a minute: checked in the audit test's scripted session).
}

#[test]
fn dht_reads_follow_the_callers_roles_on_any_node() {
    let (c, _pw) = started(4);
    let api0 = c.nodes[0].api();
    // Node 0 writes developer records; node 1 is an architect (reads them);
    // nodes 2 and 3 hold no key of the developers' role.
    let role = |name: &str, reads: &[&str], member: usize| {
        let id = c.nodes[member].node_id().to_owned();
        let mut args = vec![
            "role",
            "create",
            name,
            "--authority",
            "suggestion",
            "--member",
            &id,
        ];
        for r in reads {
            args.extend(["--reads", r]);
        }
        args.extend(["--api", &api0]);
        wait_until(
            "a role change",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || cli(&args).status.success().then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    };
    role("backend_developer", &[], 0);
    role("senior_software_architect", &["backend_developer"], 1);
    role("observer", &[], 2);
    let out = cli(&[
        "dht", "put", ADDR, "--value", SECRET, "--api", &api0, "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, dev) = key(&c, 0, "backend_developer", &[]);
    let (_, arch) = key(&c, 0, "senior_software_architect", &[]);
    let (_, obs) = key(&c, 0, "observer", &[]);
    let q = format!(
        "/api/v1/dht/get?address={}",
        ADDR.replace('*', "%2A").replace('^', "%5E")
    );
    let mut refusals = Vec::new();
    for i in [0, 2, 3] {
        let addr = c.nodes[i].api_addr();
        // A password is never forwarded to another node: the operator
        // reads through a node that holds the key (node 0), or with a key.
        let (code, body) = call(&addr, "GET", &q, Some(&basic_operator()), "");
        if i == 0 {
            assert_eq!(code, 200, "admin through node 0: {body}");
            assert!(body.contains(SECRET), "{body}");
        } else {
            assert_eq!(code, 403, "admin's password through node {i}: {body}");
            assert!(body.contains("backend_developer"), "{body}");
            refusals.push(body);
        }
        for (who, auth) in [("developer", bearer(&dev)), ("architect", bearer(&arch))] {
            let (code, body) = wait_until(
                "the record is readable",
                Duration::from_secs(20),
                Duration::from_millis(200),
                || {
                    let (code, body) = call(&addr, "GET", &q, Some(&auth), "");
                    (code == 200).then_some((code, body))
                },
            )
            .unwrap_or_else(|e| {
                let (code, body) = call(&addr, "GET", &q, Some(&auth), "");
                panic!("{who} through node {i}: {e}: {code} {body}")
            });
            assert_eq!(code, 200);
            assert!(body.contains(SECRET), "{who} through node {i}: {body}");
        }
        let (code, body) = call(&addr, "GET", &q, Some(&bearer(&obs)), "");
        assert_eq!(code, 403, "observer through node {i}: {body}");
        refusals.push(body);
        let (code, body) = call(&addr, "GET", &q, None, "");
        assert_eq!(code, 401, "anonymous through node {i}: {body}");
        refusals.push(body);
    }
    // The CLI with a key file, through a node that holds no key.
    let f = c.dir.path().join("dev.key");
    std::fs::write(&f, format!("{dev}\n")).expect("key file");
    let v = cli_json(&[
        "dht",
        "get",
        ADDR,
        "--api",
        &c.nodes[3].api(),
        "--api-key-file",
        &f.to_string_lossy(),
        "--json",
    ]);
    assert_eq!(v["value"], SECRET);
    let out = bzzz_testkit::cli_anonymous(BIN, &["dht", "get", ADDR, "--api", &c.nodes[3].api()]);
    assert!(!out.status.success());
    refusals.push(String::from_utf8_lossy(&out.stdout).into_owned());
    refusals.push(String::from_utf8_lossy(&out.stderr).into_owned());
    for r in &refusals {
        assert!(!r.contains(SECRET), "a refusal shows the plaintext: {r}");
    }
    assert!(
        !c.logs().contains(SECRET),
        "the plaintext is in a node's log"
    );
}

#[test]
fn a_revoked_key_is_refused_by_every_node_within_two_seconds() {
    let (c, _pw) = started(3);
    let (id, secret) = key(&c, 0, "observer", &[]);
    let auth = bearer(&secret);
    for n in &c.nodes {
        let addr = n.api_addr();
        wait_until(
            "the key works everywhere",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || (call(&addr, "GET", "/api/v1/whoami", Some(&auth), "").0 == 200).then_some(()),
        )
        .expect("accepted");
    }
    let out = cli(&[
        "apikey",
        "revoke",
        &id,
        "--api",
        &c.nodes[1].api(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked = Instant::now();
    for n in &c.nodes {
        let addr = n.api_addr();
        wait_until(
            "refused",
            Duration::from_secs(2).saturating_sub(revoked.elapsed()),
            Duration::from_millis(20),
            || (call(&addr, "GET", "/api/v1/whoami", Some(&auth), "").0 == 401).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}: node {} still accepts the revoked key", n.node_id()));
    }
    eprintln!(
        "revocation in force on every node after {:?}",
        revoked.elapsed()
    );
    let keys = cli_json(&["apikey", "ls", "--api", &c.nodes[2].api(), "--json"]);
    assert!(
        keys.as_array()
            .expect("keys")
            .iter()
            .any(|k| k["id"] == id.as_str() && k["state"] == "revoked"),
        "{keys}"
    );
    // No listing shows a secret or a hash.
    let text = keys.to_string();
    assert!(
        !text.contains(&secret[5..]) && !text.contains("hash"),
        "{text}"
    );
    // A user makes and revokes keys for itself (signed with the key its
    // password derives, checked by every node), never with more roles.
    let pwf = c.dir.path().join("alice-password");
    std::fs::write(&pwf, "alice's long password\n").expect("pw");
    let out = cli(&[
        "user",
        "add",
        "alice",
        "--role",
        "observer",
        "--password-file",
        &pwf.to_string_lossy(),
        "--api",
        &c.nodes[0].api(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alice = {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:alice's long password")
        )
    };
    let addr2 = c.nodes[2].api_addr();
    // Node 2 knows her once it applied the change (a wrong guess would
    // count against this client's login allowance).
    wait_until(
        "node 2 knows alice",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let v = cli_json(&["user", "ls", "--api", &c.nodes[2].api(), "--json"]);
            v.as_array()?
                .iter()
                .any(|u| u["name"] == "alice")
                .then_some(())
        },
    )
    .expect("alice everywhere");
    let create = |body: &str| call(&addr2, "POST", "/api/v1/apikeys", Some(&alice), body);
    let (code, body) = create(r#"{"role":"observer","user":"alice"}"#);
    assert_eq!(code, 200, "{body}");
    let made: Value = serde_json::from_str(&body).expect("json");
    let (code, body) = create(r#"{"role":"admin","user":"alice"}"#);
    assert_eq!(code, 403, "alice grants admin: {body}");
    let (code, body) = create(r#"{"role":"observer"}"#);
    assert_eq!(code, 403, "alice makes a key for no one: {body}");
    let (code, body) = call(&addr2, "GET", "/api/v1/apikeys", Some(&alice), "");
    assert_eq!(code, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "her own keys only: {body}"
    );
    // Her key works; she revokes it through another node.
    let hers = bearer(made["secret"].as_str().expect("secret"));
    assert_eq!(
        call(&addr2, "GET", "/api/v1/whoami", Some(&hers), "").0,
        200
    );
    let path = format!("/api/v1/apikeys/{}", made["id"].as_str().expect("id"));
    let (code, body) = call(&c.nodes[1].api_addr(), "DELETE", &path, Some(&alice), "");
    assert_eq!(code, 200, "{body}");
    wait_until(
        "her key is refused",
        Duration::from_secs(2),
        Duration::from_millis(20),
        || (call(&addr2, "GET", "/api/v1/whoami", Some(&hers), "").0 == 401).then_some(()),
    )
    .expect("revoked");

    // She changes her password (issue #22): the old one is refused on
    // every node within 2 s, the new one works.
    let basic = |pw: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("alice:{pw}"))
        )
    };
    let (code, body) = call(
        &c.nodes[1].api_addr(),
        "POST",
        "/api/v1/users/alice/password",
        Some(&alice),
        r#"{"password":"alice's new long password"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let changed = Instant::now();
    let new = basic("alice's new long password");
    for n in &c.nodes {
        let a = n.api_addr();
        wait_until(
            "the old password is refused, the new one works",
            Duration::from_secs(2).saturating_sub(changed.elapsed()),
            Duration::from_millis(20),
            || {
                (call(&a, "GET", "/api/v1/whoami", Some(&alice), "").0 == 401
                    && call(&a, "GET", "/api/v1/whoami", Some(&new), "").0 == 200)
                    .then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}: node {}", n.node_id()));
    }
    // She may not change another's, nor the operator's; the operator may
    // change hers.
    let (code, body) = call(
        &addr2,
        "POST",
        "/api/v1/users/bob/password",
        Some(&new),
        r#"{"password":"not bob's password at all"}"#,
    );
    assert_eq!(code, 403, "{body}");
    let (code, body) = call(
        &addr2,
        "POST",
        "/api/v1/users/admin/password",
        Some(&new),
        r#"{"password":"alice wants to be the operator"}"#,
    );
    assert_eq!(code, 403, "{body}");
    let pwf2 = c.dir.path().join("alice-password-2");
    std::fs::write(&pwf2, "a third long password\n").expect("pw");
    let out = cli(&[
        "user",
        "passwd",
        "alice",
        "--new-password-file",
        &pwf2.to_string_lossy(),
        "--api",
        &c.nodes[0].api(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The operator's own password (issue #22): an admin change signed
    // under the old one. The old one is then refused on every node within
    // 2 s, and threshold signing works with the new one.
    let new_op = c.dir.path().join("operator-password-2");
    std::fs::write(&new_op, "the operator's second password\n").expect("pw");
    let out = cli(&[
        "user",
        "passwd",
        "admin",
        "--new-password-file",
        &new_op.to_string_lossy(),
        "--api",
        &c.nodes[2].api(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let changed = Instant::now();
    let old_op = basic_operator();
    let new_op_auth = {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode("admin:the operator's second password")
        )
    };
    for n in &c.nodes {
        let a = n.api_addr();
        wait_until(
            "the old operator password is refused, the new one works",
            Duration::from_secs(2).saturating_sub(changed.elapsed()),
            Duration::from_millis(20),
            || {
                (call(&a, "GET", "/api/v1/whoami", Some(&old_op), "").0 == 401
                    && call(&a, "GET", "/api/v1/whoami", Some(&new_op_auth), "").0 == 200)
                    .then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}: node {}\n{}", n.node_id(), c.logs()));
    }
    let with = |file: &Path| {
        cli(&[
            "apikey",
            "create",
            "--role",
            "observer",
            "--api",
            &c.nodes[1].api(),
            "--operator-password-file",
            &file.to_string_lossy(),
            "--json",
        ])
    };
    let out = with(&new_op);
    assert!(
        out.status.success(),
        "threshold signing with the new password: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old_file = c.dir.path().join("operator-password");
    let out = with(&old_file);
    assert!(!out.status.success(), "the old password signs nothing");
}

fn audit_head(c: &LocalCluster, i: usize) -> Option<(u64, String)> {
    let v = c.nodes[i].get_json("/api/v1/audit?limit=1").ok()?;
    Some((
        v["head"]["seq"].as_u64()?,
        v["head"]["hash"].as_str()?.to_owned(),
    ))
}

#[test]
fn the_audit_log_verifies_everywhere_names_an_edited_entry_and_fails_closed() {
    // Checkpoints every 16 entries (256 by default), so 50 actions make
    // some.
    let (mut c, _pw) = started_with(
        3,
        &LocalOpts {
            env: vec![("BZZZ_CONTROL__AUDIT_CHECKPOINT_EVERY".into(), "16".into())],
            ..Default::default()
        },
    );
    let api = c.nodes[0].api();
    // A scripted session of 50 privileged actions.
    let pwf = c.dir.path().join("user-password");
    std::fs::write(&pwf, "a user's long password\n").expect("pw");
    let pwf = pwf.to_string_lossy().into_owned();
    let mut ids = Vec::new();
    for i in 0..5 {
        let name = format!("user{i}");
        let out = cli(&[
            "user",
            "add",
            &name,
            "--role",
            "observer",
            "--password-file",
            &pwf,
            "--api",
            &api,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for _ in 0..20 {
        ids.push(key(&c, 0, "observer", &[]).0);
    }
    for id in &ids {
        assert!(
            cli(&["apikey", "revoke", id, "--api", &api])
                .status
                .success()
        );
    }
    for i in 0..5 {
        assert!(
            cli(&["user", "rm", &format!("user{i}"), "--api", &api])
                .status
                .success()
        );
    }
    let users = cli_json(&["user", "ls", "--api", &api, "--json"]);
    assert_eq!(
        users.as_array().map(Vec::len),
        Some(1),
        "only admin is left: {users}"
    );
    // Every node holds the same head, and its chain verifies.
    let head = wait_until(
        "the same head everywhere",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let h: Vec<_> = (0..3).map(|i| audit_head(&c, i)).collect();
            (h.iter().all(|x| x.is_some() && *x == h[0]) && h[0].as_ref()?.0 >= 50)
                .then(|| h[0].clone())
        },
    )
    .expect("heads")
    .expect("head");
    let admin_key = c.nodes[0].get_json("/api/v1/keys").expect("status")["admin_public_key"]
        .as_str()
        .expect("admin key")
        .to_owned();
    for n in &c.nodes {
        // Checkpoints are made in the background: wait for the ones the
        // 50 actions call for (the leader's, committed everywhere).
        let v = wait_until(
            "threshold-signed checkpoints",
            Duration::from_secs(20),
            Duration::from_millis(200),
            || {
                let v = cli_json(&[
                    "audit",
                    "verify",
                    "--api",
                    &n.api(),
                    "--admin-key",
                    &admin_key,
                    "--json",
                ]);
                (v["checkpoints"].as_u64()? >= 2).then_some(v)
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["admin_key"], "given", "{v}");
        assert!(v["checkpoints_checked"].as_u64() >= Some(2), "{v}");
        let v = cli_json(&["audit", "verify", "--api", &n.api(), "--json"]);
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["head"]["hash"], head.1.as_str());
    }
    // A checkpoint checked against another admin key fails.
    let out = cli(&[
        "audit",
        "verify",
        "--api",
        &api,
        "--admin-key",
        &"ab".repeat(32),
        "--json",
    ]);
    assert!(!out.status.success(), "a wrong admin key is caught");
    let entries = cli_json(&["audit", "ls", "--api", &api, "--json"]);
    let e = &entries.as_array().expect("entries")[0];
    for f in [
        "seq",
        "time",
        "principal",
        "action",
        "resource",
        "outcome",
        "node",
        "hash",
        "prev_hash",
    ] {
        assert!(e.get(f).is_some(), "entries have {f}: {e}");
    }
    assert_eq!(e["principal"], "admin");
    assert_eq!(
        (e["seq"].as_u64(), e["action"].as_str()),
        (Some(1), Some("setup")),
        "the chain starts with the setup ceremony: {e}"
    );

    // Edit one stored entry on node 2's disk, with the node stopped.
    c.nodes[2]
        .signal_and_wait(rustix::process::Signal::TERM, Duration::from_secs(10))
        .expect("stop");
    let mut files = Vec::new();
    bzzz_testkit::files_under(&c.nodes[2].data_dir, &mut files);
    let file = files
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".audit.jsonl"))
        .expect("audit file");
    let text = std::fs::read_to_string(&file).expect("read");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut entry: Value = serde_json::from_str(&lines[6]).expect("entry");
    let seq = entry["seq"].as_u64().expect("seq");
    entry["principal"] = "user:mallory".into();
    lines[6] = entry.to_string();
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");
    c.nodes[2].restart(Path::new(BIN)).expect("restart");
    c.nodes[2]
        .wait_ready(Duration::from_secs(20))
        .expect("ready");
    wait_until(
        "node 2 serves its audit log again",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || audit_head(&c, 2),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{:?}\n{}",
            http::get(&c.nodes[2].api_addr(), "/api/v1/audit?limit=1"),
            c.nodes[2].log_tail(30)
        )
    });
    let out = cli(&["audit", "verify", "--api", &c.nodes[2].api(), "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["seq"], seq, "{v}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("seq {seq}")));
    // The others still verify.
    assert!(cli(&["audit", "verify", "--api", &api]).status.success());

    // Quorum lost: a privileged action is refused with 503 and nothing
    // changes.
    c.nodes[1].kill9();
    c.nodes[2].kill9();
    let before = audit_head(&c, 0).expect("head");
    let keys_before = cli_json(&["apikey", "ls", "--api", &api, "--json"]);
    let (code, body) = http::request(
        &c.nodes[0].api_addr(),
        "POST",
        "/api/v1/apikeys",
        &[],
        r#"{"role":"observer"}"#,
    )
    .expect("request");
    assert_eq!(code, 503, "{body}");
    assert_eq!(audit_head(&c, 0).expect("head"), before);
    assert_eq!(
        cli_json(&["apikey", "ls", "--api", &api, "--json"]),
        keys_before
    );
}

#[test]
fn anonymous_inference_is_the_operators_explicit_choice() {
    let mut c = LocalCluster::start(Path::new(BIN), 0, &LocalOpts::default()).expect("start");
    let open = c
        .config("open", "serve:\n  anonymous_inference: true\n")
        .expect("config");
    c.add_node(&open).expect("open node");
    c.add_node(&LocalOpts::default()).expect("closed node");
    c.wait_formed(Duration::from_secs(30)).expect("formed");
    let _pw = c.init(0, PASSWORD).expect("init");
    let ask = r#"{"model":"nope:1","messages":[{"role":"user","content":"Hi"}]}"#;
    let anonymous = |i: usize, method: &str, path: &str, body: &str| {
        call(&c.nodes[i].api_addr(), method, path, None, body).0
    };
    // Node 0 was opened by its config: no key needed (the model is
    // unknown: 404, not 401). Node 1 was not: 401. Other routes stay closed.
    wait_until(
        "the control plane runs",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || (anonymous(0, "POST", "/v1/chat/completions", ask) == 404).then_some(()),
    )
    .expect("open");
    assert_eq!(anonymous(0, "GET", "/v1/models", ""), 200);
    assert_eq!(anonymous(0, "GET", "/api/v1/members", ""), 401);
    assert_eq!(anonymous(1, "POST", "/v1/chat/completions", ask), 401);
    // The cluster rule (admin-signed) decides on every node.
    let (code, body) = http::request(
        &c.nodes[0].api_addr(),
        "POST",
        "/api/v1/serve/anonymous",
        &[],
        r#"{"enabled":true}"#,
    )
    .expect("post");
    assert_eq!(code, 200, "{body}");
    wait_until(
        "node 1 opens",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || (anonymous(1, "POST", "/v1/chat/completions", ask) == 404).then_some(()),
    )
    .expect("opened everywhere");
    let (code, body) = http::request(
        &c.nodes[1].api_addr(),
        "POST",
        "/api/v1/serve/anonymous",
        &[],
        r#"{"enabled":false}"#,
    )
    .expect("post");
    assert_eq!(code, 200, "{body}");
    wait_until(
        "both close",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            (anonymous(0, "POST", "/v1/chat/completions", ask) == 401
                && anonymous(1, "POST", "/v1/chat/completions", ask) == 401)
                .then_some(())
        },
    )
    .expect("closed everywhere");
}
