//! Serving with a real model: SmolLM2-135M (`TEST_SMOLLM2_GGUF`) added on
//! node A, placed on node B only (the only declared GPU), started there by
//! B's managed backend (`scripts/serve-llamacpp.py` under the Python with
//! the `xllamacpp` wheel, `TEST_PYTHON`; both set up by `scripts/test.sh`),
//! and asked through node C's OpenAI-compatible API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bzzz_testkit::{LocalCluster, LocalOpts, wait_until};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";

/// The Python with xllamacpp (and the ollama and openai clients) and the
/// SmolLM2 GGUF; `None` (skip) outside CI when they are not set up.
fn inputs() -> Option<(PathBuf, PathBuf)> {
    let found = (
        std::env::var_os("TEST_PYTHON").map(PathBuf::from),
        std::env::var_os("TEST_SMOLLM2_GGUF").map(PathBuf::from),
    );
    if let (Some(p), Some(g)) = found {
        return Some((p, g));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "TEST_PYTHON and TEST_SMOLLM2_GGUF are not set (scripts/test.sh sets them)"
    );
    eprintln!(
        "skipped: set TEST_PYTHON (with xllamacpp) and TEST_SMOLLM2_GGUF (scripts/test.sh does)"
    );
    None
}

thread_local! {
    /// This test's API key (`Bearer …`): inference through a node that
    /// does not serve the model needs one (a password is never forwarded).
    static KEY: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Creates a `backend_developer` API key through `api` for this test's
/// requests; returns the `Authorization` value.
fn use_key(api: &str) -> String {
    // Right after setup the genesis entry may not be applied yet (503).
    let args = [
        "apikey",
        "create",
        "--role",
        "backend_developer",
        "--api",
        api,
        "--json",
    ];
    let v = wait_until(
        "an API key",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let out = bzzz_testkit::cli(BIN, &args);
            out.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&out.stdout).expect("json"))
        },
    )
    .expect("an API key");
    let auth = format!("Bearer {}", v["secret"].as_str().expect("secret"));
    KEY.with(|k| *k.borrow_mut() = Some(auth.clone()));
    auth
}

fn post(api: &str, path: &str, body: &str) -> (u16, String) {
    post_as(api, path, body, KEY.with(|k| k.borrow().clone()).as_deref())
}

/// [`post`] with this `Authorization` (for threads of a test).
fn post_as(api: &str, path: &str, body: &str, auth: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    bzzz_testkit::http::request(
        api.trim_start_matches("http://"),
        "POST",
        path,
        &headers,
        body,
    )
    .expect("request")
}

#[test]
fn a_real_model_is_served_by_a_managed_backend_through_another_node() {
    let Some((python, gguf)) = inputs() else {
        return;
    };
    let mut c = LocalCluster::start(Path::new(BIN), 1, &LocalOpts::default()).expect("start");
    let o = managed(&c, "b", &python);
    let b = c.add_node(&o).expect("node b");
    // C also serves the inference API alone on a second address (Ollama's
    // port for clients that expect it).
    let ollama_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let c_cfg = c.dir.path().join("c.yaml");
    std::fs::write(
        &c_cfg,
        format!("serve:\n  listen: 127.0.0.1:{ollama_port}\n"),
    )
    .expect("config");
    let cn = c
        .add_node(&LocalOpts {
            extra_args: vec!["--config".into(), c_cfg.to_string_lossy().into_owned()],
            ..Default::default()
        })
        .expect("node c");
    c.wait_formed(Duration::from_secs(20)).expect("mesh");
    let pw = c.init(0, PASSWORD).expect("init");
    use_key(&c.nodes[0].api());
    c.add_model(0, &gguf, "smollm2:135m", &pw, &[]);
    wait_until(
        "B's backend is ready",
        Duration::from_secs(180),
        Duration::from_millis(250),
        || {
            let v = c.nodes[b].get_json("/api/v1/serve/backends").ok()?;
            v.as_array()?
                .iter()
                .any(|x| x["model"] == "smollm2:135m" && x["state"] == "ready")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let c_api = c.nodes[cn].api();
    // B announces its backend's residency; C sees it.
    let b_id = c.nodes[b].node_id().to_owned();
    wait_until(
        "C sees B's loaded model",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let peers = c.nodes[cn].get_json("/api/v1/peers").ok()?;
            peers
                .as_array()?
                .iter()
                .find(|p| p["node_id"] == b_id.as_str())
                .and_then(|p| {
                    let s = p["capabilities"]["serving"].as_array()?;
                    s.iter()
                        .any(|x| x["model"] == "smollm2:135m" && x["loaded"] == true)
                        .then_some(())
                })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    // Through node C, not streaming: a real completion produced on B.
    let (code, body) = post(
        &c_api,
        "/v1/chat/completions",
        r#"{"model":"smollm2:135m","messages":[{"role":"user","content":"Say hello."}],"max_tokens":12}"#,
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
    assert!(!text.trim().is_empty(), "{body}");
    assert!(
        v["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0,
        "{body}"
    );

    // Streaming: server-sent events passed through, ending with [DONE].
    let (code, body) = post(
        &c_api,
        "/v1/chat/completions",
        r#"{"model":"smollm2:135m","messages":[{"role":"user","content":"Count to three."}],"max_tokens":12,"stream":true}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("data: ") && body.contains("[DONE]"), "{body}");

    // The model list, and bad input.
    let models = c.nodes[cn].get_json("/v1/models").expect("models");
    assert_eq!(models["data"][0]["id"], "smollm2:135m");
    let (code, body) = post(
        &c_api,
        "/v1/chat/completions",
        r#"{"model":"nope:1","messages":[]}"#,
    );
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("model_not_found"), "{body}");
    let (code, body) = post(&c_api, "/v1/chat/completions", "{not json");
    assert_eq!(code, 400, "{body}");
    // Ollama's API through node C: one object, and NDJSON lines ending
    // with `done` and Ollama's statistics.
    let (code, body) = post(
        &c_api,
        "/api/chat",
        r#"{"model":"smollm2:135m","messages":[{"role":"user","content":"Say hello."}],"stream":false,"options":{"num_predict":8}}"#,
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["done"], true, "{body}");
    assert_eq!(v["message"]["role"], "assistant");
    assert!(v["eval_count"].as_u64().unwrap_or(0) > 0, "{body}");
    let (code, body) = post(
        &c_api,
        "/api/generate",
        r#"{"model":"smollm2:135m","prompt":"The sky is","options":{"num_predict":6}}"#,
    );
    assert_eq!(code, 200, "{body}");
    let lines: Vec<Value> = body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("ndjson line"))
        .collect();
    assert!(lines.len() >= 2, "{body}");
    let last = lines.last().expect("last");
    assert_eq!(last["done"], true, "{body}");
    assert!(last.get("total_duration").is_some() && last.get("eval_count").is_some());
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l["done"] == false && l["response"].is_string())
    );
    let tags = c.nodes[cn].get_json("/api/tags").expect("tags");
    assert_eq!(tags["models"][0]["name"], "smollm2:135m");
    assert_eq!(tags["models"][0]["details"]["quantization_level"], "Q4_1");
    let (code, body) = post(&c_api, "/api/chat", r#"{"model":"nope:1","messages":[]}"#);
    assert_eq!(code, 404);
    assert!(body.contains("\"error\""), "{body}");

    // The real client libraries, against node C, with API keys (SPEC §9):
    // a backend_developer key may infer, an observer key may not, and no
    // key is refused.
    let key = |role: &str| -> String {
        let v = bzzz_testkit::cli_json(
            BIN,
            &[
                "apikey", "create", "--role", role, "--api", &c_api, "--json",
            ],
        );
        v["secret"].as_str().expect("secret").to_owned()
    };
    let (dev_key, observer_key) = (key("backend_developer"), key("observer"));
    // Passwords are never forwarded: through C (which serves nothing),
    // the operator's password is refused with the reason.
    let (code, body) = bzzz_testkit::http::raw(
        c_api.trim_start_matches("http://"),
        "POST",
        "/v1/chat/completions",
        &[(
            "authorization",
            &format!("Basic {}", {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"))
            }),
        )],
        r#"{"model":"smollm2:135m","messages":[{"role":"user","content":"Hi"}],"max_tokens":4}"#,
    )
    .expect("request");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("never forwarded"), "{body}");
    assert!(dev_key.starts_with("bzzz_"));
    let script = format!(
        r#"
import ollama, openai, sys
try:
    openai.OpenAI(base_url="{c_api}/v1", api_key="{observer_key}").chat.completions.create(model="smollm2:135m", messages=[{{"role": "user", "content": "Hi"}}], max_tokens=4)
    raise SystemExit("an observer key was served")
except openai.PermissionDeniedError as e:
    assert "infer" in str(e), e
try:
    openai.OpenAI(base_url="{c_api}/v1", api_key="no-key").chat.completions.create(model="smollm2:135m", messages=[{{"role": "user", "content": "Hi"}}], max_tokens=4)
    raise SystemExit("a call without a key was served")
except openai.AuthenticationError:
    pass
try:
    ollama.Client(host="http://127.0.0.1:{ollama_port}").chat(model="smollm2:135m", messages=[{{"role": "user", "content": "Hi"}}])
    raise SystemExit("an Ollama call without a key was served")
except ollama.ResponseError as e:
    assert e.status_code == 401, e
c = ollama.Client(host="http://127.0.0.1:{ollama_port}", headers={{"Authorization": "Bearer {dev_key}"}})
r = c.chat(model="smollm2:135m", messages=[{{"role": "user", "content": "Hi"}}], options={{"num_predict": 6}})
assert r.message.content, r
parts = [p.message.content for p in c.chat(model="smollm2:135m", messages=[{{"role": "user", "content": "Hi"}}], options={{"num_predict": 6}}, stream=True)]
assert len(parts) >= 2, parts
assert any(m.model == "smollm2:135m" for m in c.list().models)
o = openai.OpenAI(base_url="{c_api}/v1", api_key="{dev_key}")
r = o.chat.completions.create(model="smollm2:135m", messages=[{{"role": "user", "content": "Hi"}}], max_tokens=6)
assert r.choices[0].message.content, r
chunks = list(o.chat.completions.create(model="smollm2:135m", messages=[{{"role": "user", "content": "Hi"}}], max_tokens=6, stream=True))
assert len(chunks) >= 2, chunks
print("clients ok")
"#
    );
    let out = std::process::Command::new(&python)
        .args(["-c", &script])
        .output()
        .expect("python");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("clients ok"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Metrics on the routing node: requests and time to first byte per
    // model and serving node (B); errors counted.
    let (_, metrics) =
        bzzz_testkit::http::get(c_api.trim_start_matches("http://"), "/metrics").expect("metrics");
    let served =
        format!("bzzz_inference_requests_total{{model=\"smollm2:135m\",node=\"{b_id}\"}} ");
    let n: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&served))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(n >= 4, "{metrics}");
    assert!(
        metrics.contains("bzzz_inference_time_to_first_byte_seconds_count{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bzzz_inference_tokens_per_second_count{"),
        "{metrics}"
    );
    // The models page on C shows B's backend and the try-it box.
    let (_, page) =
        bzzz_testkit::http::get(c_api.trim_start_matches("http://"), "/models").expect("page");
    assert!(
        page.contains("id=\"backends\"") && page.contains("ready") && page.contains("id=\"try\""),
        "{page}"
    );

    // The second address answers the inference API only.
    let (code, _) = bzzz_testkit::http::get(&format!("127.0.0.1:{ollama_port}"), "/api/v1/status")
        .expect("status");
    assert_eq!(code, 404);

    // Still serving after the bad requests.
    let (code, _) = post(
        &c_api,
        "/v1/chat/completions",
        r#"{"model":"smollm2:135m","messages":[{"role":"user","content":"Hi"}],"max_tokens":4}"#,
    );
    assert_eq!(code, 200);

    // A node killed with SIGKILL leaves no backend behind (the launcher
    // dies with its parent).
    let pid = c.nodes[b]
        .get_json("/api/v1/serve/backends")
        .ok()
        .and_then(|v| v[0]["pid"].as_u64())
        .expect("backend pid");
    let alive = |pid: u64| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .is_some_and(|zombie| !zombie)
    };
    assert!(alive(pid));
    c.nodes[b].kill9();
    wait_until(
        "the backend dies with its node",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || (!alive(pid)).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, body) = post(
        &c_api,
        "/v1/chat/completions",
        r#"{"model":"smollm2:135m","messages":[{"role":"user","content":"Hi"}],"max_tokens":4}"#,
    );
    assert_eq!(code, 503, "no replica left: {body}");
    assert!(
        body.contains("smollm2:135m"),
        "the 503 names the model: {body}"
    );
}

/// A node with a declared GPU and a managed backend.
fn managed(c: &LocalCluster, name: &str, python: &Path) -> LocalOpts {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/serve-llamacpp.py");
    c.config(
        name,
        &format!(
            "capabilities:\n  declared:\n    gpus:\n      - vendor: nvidia\n        model: L4 (declared)\n        vram_total_bytes: 8589934592\n\
             serve:\n  managed:\n    command: [{py:?}, {script:?}, --model, \"{{model_path}}\", --port, \"{{port}}\", --threads, \"1\", --ctx, \"{{ctx}}\"]\n    ctx: 2048\n",
            py = python.to_string_lossy(),
            script = script.to_string_lossy(),
        ),
    )
    .expect("config")
}

fn backend(c: &LocalCluster, i: usize) -> Option<Value> {
    c.nodes[i]
        .get_json("/api/v1/serve/backends")
        .ok()?
        .as_array()?
        .iter()
        .find(|x| x["model"] == "smollm2:135m")
        .cloned()
}

fn requests(c: &LocalCluster, i: usize) -> u64 {
    backend(c, i)
        .and_then(|b| b["requests"].as_u64())
        .unwrap_or(0)
}

#[test]
fn two_replicas_share_the_load_and_survive_a_backend_crash() {
    let Some((python, gguf)) = inputs() else {
        return;
    };
    let mut c = LocalCluster::start(Path::new(BIN), 1, &LocalOpts::default()).expect("start");
    let o = managed(&c, "b", &python);
    let b = c.add_node(&o).expect("b");
    let o = managed(&c, "d", &python);
    let d = c.add_node(&o).expect("d");
    let router = c.add_node(&LocalOpts::default()).expect("router");
    c.wait_formed(Duration::from_secs(20)).expect("mesh");
    let pw = c.init(0, PASSWORD).expect("init");
    use_key(&c.nodes[0].api());
    c.add_model(0, &gguf, "smollm2:135m", &pw, &["--replicas", "2"]);
    wait_until(
        "both backends are ready",
        Duration::from_secs(180),
        Duration::from_millis(250),
        || {
            [b, d]
                .iter()
                .all(|i| backend(&c, *i).is_some_and(|x| x["state"] == "ready"))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let api = c.nodes[router].api();
    let ask =
        r#"{"model":"smollm2:135m","messages":[{"role":"user","content":"Hi"}],"max_tokens":4}"#;
    // The router prefers replicas announced as loaded: wait until it has
    // heard both.
    let ids = [
        c.nodes[b].node_id().to_owned(),
        c.nodes[d].node_id().to_owned(),
    ];
    wait_until(
        "the router sees both replicas loaded",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let peers = c.nodes[router].get_json("/api/v1/peers").ok()?;
            ids.iter()
                .all(|id| {
                    peers.as_array().into_iter().flatten().any(|p| {
                        p["node_id"] == id.as_str()
                            && p["capabilities"]["serving"]
                                .as_array()
                                .is_some_and(|s| s.iter().any(|x| x["loaded"] == true))
                    })
                })
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    // 20 at once through the router node: spread by in-flight count.
    let (b0, d0) = (requests(&c, b), requests(&c, d));
    let key = KEY.with(|k| k.borrow().clone());
    let codes: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..20)
            .map(|_| s.spawn(|| post_as(&api, "/v1/chat/completions", ask, key.as_deref()).0))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    let (db, dd) = (requests(&c, b) - b0, requests(&c, d) - d0);
    eprintln!("20 concurrent requests: {db} on B, {dd} on D");
    assert_eq!(db + dd, 20);
    assert!(db <= 14 && dd <= 14, "{db} / {dd}");

    // B's backend dies: requests keep succeeding through D.
    let pid = backend(&c, b).and_then(|x| x["pid"].as_u64()).expect("pid") as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill");
    for _ in 0..5 {
        let (code, body) = post(&api, "/v1/chat/completions", ask);
        assert_eq!(code, 200, "{body}");
    }
    // It restarts and takes traffic again.
    wait_until(
        "B's backend is back",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || {
            backend(&c, b)
                .filter(|x| x["state"] == "ready" && x["restarts"].as_u64() >= Some(1))
                .map(|_| ())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let before = requests(&c, b);
    wait_until(
        "B serves again",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let (code, _) = post(&api, "/v1/chat/completions", ask);
            assert_eq!(code, 200);
            (requests(&c, b) > before).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

/// A backend already running on the node (`serve.backends`, an OpenAI
/// server started by the test), a router that refuses anonymous callers
/// (after setup inference needs a credential; the caller's own is
/// forwarded to the serving node), and bad input: a huge body, clients
/// that hang up mid-stream (no slot leaks: the node keeps answering).
#[test]
fn configured_backends_auth_and_bad_input() {
    let Some((python, gguf)) = inputs() else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/serve-llamacpp.py");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    // Parallel 2: a leaked slot would show as requests that never finish.
    let mut server = std::process::Command::new(&python)
        .arg(&script)
        .args([
            "--model",
            &gguf.to_string_lossy(),
            "--port",
            &port.to_string(),
            "--threads",
            "1",
            "--parallel",
            "2",
            "--ctx",
            "2048",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("llama.cpp server");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut server);
    let mut c = LocalCluster::start(Path::new(BIN), 1, &LocalOpts::default()).expect("start");
    let cfg = c.dir.path().join("b.yaml");
    std::fs::write(
        &cfg,
        format!(
            "capabilities:\n  declared:\n    gpus:\n      - vendor: nvidia\n        model: L4 (declared)\n        vram_total_bytes: 8589934592\n\
             serve:\n  backends:\n    - kind: openai\n      url: http://127.0.0.1:{port}\n"
        ),
    )
    .expect("config");
    c.add_node(&LocalOpts {
        extra_args: vec!["--config".into(), cfg.to_string_lossy().into_owned()],
        ..Default::default()
    })
    .expect("b");
    let auth_cfg = c.dir.path().join("c.yaml");
    std::fs::write(&auth_cfg, "serve:\n  anonymous_inference: false\n").expect("config");
    let cn = c
        .add_node(&LocalOpts {
            extra_args: vec!["--config".into(), auth_cfg.to_string_lossy().into_owned()],
            ..Default::default()
        })
        .expect("c");
    c.wait_formed(Duration::from_secs(20)).expect("mesh");
    let pw = c.init(0, PASSWORD).expect("init");
    // An API key: the configured backend is on another node (B), and a
    // password is never forwarded.
    let basic = use_key(&c.nodes[0].api());
    c.add_model(0, &gguf, "smollm2:135m", &pw, &[]);
    let api = c.nodes[cn].api();
    let addr = api.trim_start_matches("http://").to_owned();
    let authed = |path: &str, body: &str| {
        bzzz_testkit::http::request(&addr, "POST", path, &[("authorization", &basic)], body)
            .expect("request")
    };
    let ask = r#"{"model":"smollm2:135m","messages":[{"role":"user","content":"Hi"}],"stream":false,"options":{"num_predict":4}}"#;
    // Anonymous callers are refused.
    assert_eq!(
        bzzz_testkit::http::raw(&addr, "POST", "/api/chat", &[], ask)
            .expect("request")
            .0,
        401
    );
    wait_until(
        "served through the configured backend",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let (code, body) = authed("/api/chat", ask);
            (code == 200 && body.contains("\"done\":true")).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let (code, body) = authed(
        "/v1/chat/completions",
        r#"{"model":"smollm2:135m","messages":[{"role":"user","content":"Hi"}],"max_tokens":4}"#,
    );
    assert_eq!(code, 200, "{body}");

    // A body over the 8 MiB bound: refused, not read.
    let huge = format!(
        r#"{{"model":"smollm2:135m","prompt":"{}"}}"#,
        "a".repeat(9 * 1024 * 1024)
    );
    // The server may answer and close before the whole body is sent: the
    // status line is what counts.
    let code = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let _ = write!(
            s,
            "POST /api/generate HTTP/1.1\r\nHost: x\r\nAuthorization: {basic}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            huge.len()
        );
        let _ = s.write_all(huge.as_bytes());
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n])
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .unwrap_or(0)
    };
    assert_eq!(code, 413);

    // Six clients hang up mid-stream; then two requests at once (as many as
    // the backend's slots) still finish.
    for _ in 0..6 {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        let body = r#"{"model":"smollm2:135m","prompt":"Write a long story about the sea.","options":{"num_predict":400}}"#;
        write!(
            s,
            "POST /api/generate HTTP/1.1\r\nHost: x\r\nAuthorization: {basic}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut first = [0u8; 64];
        let _ = s.read(&mut first);
        drop(s);
    }
    let codes: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| s.spawn(|| authed("/api/chat", ask).0))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert_eq!(codes, vec![200, 200]);
}
