//! The route table against the real router, with a real (uninitialized)
//! node behind it: libp2p on 127.0.0.1, the keys service on a temp dir.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use super::*;
use crate::app::{router, routes};
use crate::state::{AppState, Tasks};

/// The routes an anonymous caller may use (the reviewed list of
/// `docs/security.md`). Adding one here is a decision: the walk below
/// fails for any public route not listed.
const PUBLIC: &[(&str, &str)] = &[
    // This node's own facts, and what the public overview page shows
    // (nodes, leader, capabilities): no secrets, no role data.
    ("GET", "/"),
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/peers"),
    ("GET", "/api/v1/leader"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/openapi.json"),
    // The admin public key, t and n: what every client verifies with.
    ("GET", "/api/v1/keys"),
    // The cluster CA (certificate and its admin-signed genesis record):
    // what a client needs to trust the node's TLS certificate.
    ("GET", "/api/v1/ca.pem"),
    ("GET", "/api/v1/ca"),
    // This node's backends: the serving state its announcement already
    // shows in /api/v1/peers, plus loopback ports and process ids (the
    // models page of any node reads them from every placed node).
    ("GET", "/api/v1/serve/backends"),
    ("GET", "/login"),
    ("POST", "/login"),
    // The wizard: open until the cluster exists, 409 after.
    ("POST", "/api/v1/setup"),
    ("POST", "/api/v1/setup/confirm"),
    ("GET", "/setup"),
    ("POST", "/setup/start"),
    ("GET", "/setup/reveal"),
    ("POST", "/setup/confirm"),
    ("POST", "/setup/cancel"),
];

/// What the router's fallback answers.
const FALLBACK: &str = "no such endpoint";

struct TestNode {
    state: Shared,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn test_node() -> TestNode {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("bzzz.yaml");
    std::fs::write(&cfg_path, "").expect("config");
    let cfg = crate::config::load(
        Some(&cfg_path),
        Vec::new(),
        &crate::config::Overrides {
            data_dir: Some(dir.path().to_owned()),
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            no_mdns: true,
            ..Default::default()
        },
    )
    .expect("config");
    let key = bzzz_crypto::NodeKey::generate().expect("key");
    let node_id = bzzz_net::node_id_of(&key.seed()).expect("id");
    let (local_tx, local_rx) = tokio::sync::watch::channel(bzzz_net::LocalInfo::default());
    let keys = bzzz_keys::Keys::load(dir.path(), &key, node_id, local_tx).expect("keys");
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (net, _inbound) = bzzz_net::start(
        &key.seed(),
        cfg.net.clone(),
        local_rx.clone(),
        cancel.clone(),
        &tracker,
    )
    .expect("net");
    let state = Arc::new(AppState {
        net: net.clone(),
        keys: keys.attach(net.clone()),
        local: local_rx,
        started: Instant::now(),
        api_addr: "127.0.0.1:8080".parse().expect("addr"),
        control: crate::control::ControlCell::default(),
        control_settings: cfg.control.clone(),
        deploys: Arc::default(),
        backends: Vec::new(),
        access: Arc::new(crate::access::Access::new(
            net.local_id().clone(),
            Arc::new(|_: &[u8]| [0u8; 64]),
            false,
        )),
        models: crate::models::Runtime::open(&dir.path().join("ollama"), net.clone(), None)
            .expect("models"),
        dht: bzzz_dht::Dht::new(
            net.clone(),
            bzzz_net::store::DiskStore::in_memory(Arc::new(bzzz_net::store::AcceptAll))
                .expect("store"),
            Arc::default(),
            bzzz_crypto::seal::AgeIdentity::derive(&key).expect("age"),
            Arc::new(|_: &[u8]| [0u8; 64]),
        ),
        tasks: Tasks {
            tracker,
            cancel: cancel.clone(),
        },
        agents: Arc::default(),
    });
    TestNode {
        state,
        cancel,
        _dir: dir,
    }
}

fn concrete(path: &str) -> String {
    path.replace("{id}", "0123456789abcdef")
}

async fn call(app: &axum::Router, method: &Method, path: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method.clone())
        .uri(concrete(path))
        .header("content-type", "application/json")
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_outside_the_public_list_answers_401_to_an_anonymous_caller() {
    let node = test_node().await;
    let app = router(node.state.clone());
    let public: BTreeSet<(&str, &str)> = PUBLIC.iter().copied().collect();
    let mut seen = BTreeSet::new();
    for r in routes() {
        let key = (r.method.as_str().to_owned(), r.path.to_owned());
        assert!(seen.insert(key.clone()), "{r:?} is in the table twice");
        let listed = public.contains(&(r.method.as_str(), r.path));
        assert_eq!(
            r.permission.is_public(),
            listed,
            "{r:?}: public routes are exactly the PUBLIC list"
        );
        let (status, body) = call(&app, &r.method, r.path).await;
        if matches!(r.permission, Permission::Need(Action::Infer, _)) {
            // Inference is open before setup (no principal exists yet);
            // after setup it needs a key (the access integration test).
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{r:?}: {body}");
            continue;
        }
        if r.permission == Permission::DeployToken {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{r:?}: {body}");
            continue;
        }
        if listed {
            // Routed (not the fallback) and not refused for want of a credential.
            assert!(!body.contains(FALLBACK), "{r:?} is not routed: {body}");
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{r:?}: {body}");
        } else {
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{r:?} answered {status}: {body}"
            );
        }
    }
    assert!(
        seen.len() > PUBLIC.len(),
        "the walk covers protected routes"
    );
    for (m, p) in PUBLIC {
        assert!(
            seen.contains(&((*m).to_owned(), (*p).to_owned())),
            "{m} {p} is listed public but has no route"
        );
    }
    // A path outside the table is the fallback's JSON 404.
    let (status, body) = call(&app, &Method::GET, "/api/v1/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains(FALLBACK), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_malformed_credential_is_refused_not_taken_as_anonymous() {
    let node = test_node().await;
    let app = router(node.state.clone());
    for auth in ["Basic !!!", "Bearer x"] {
        let req = Request::builder()
            .method(Method::GET)
            .uri("/admin")
            .header("authorization", auth)
            .body(Body::empty())
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("infallible");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth}");
    }
}

#[test]
fn the_openapi_document_is_the_route_table() {
    let doc = openapi::document();
    let mut n = 0;
    for r in routes() {
        let op = &doc["paths"][r.path][r.method.as_str().to_lowercase()];
        match r.kind {
            Kind::Api => {
                n += 1;
                assert!(op.is_object(), "{r:?} missing from the OpenAPI document");
                if matches!(r.permission, Permission::Need(..) | Permission::Principal) {
                    assert_eq!(op["security"][0]["apiKey"], serde_json::json!([]), "{r:?}");
                }
            }
            Kind::Page => assert!(op.is_null(), "{r:?} is a page, not API"),
        }
    }
    let ops: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|p| p.as_object().map_or(0, |m| m.len()))
        .sum();
    assert_eq!(ops, n);
}

#[tokio::test]
async fn an_answer_that_cannot_be_encoded_is_a_500_not_a_null() {
    // Maps with non-string keys have no JSON form.
    let mut bad = std::collections::BTreeMap::new();
    bad.insert((1u8, 2u8), 3u8);
    let r = json(StatusCode::OK, &bad);
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = axum::body::to_bytes(r.into_body(), 1 << 16)
        .await
        .expect("body");
    assert!(String::from_utf8_lossy(&body).contains("cannot encode"));
}

#[test]
fn setup_answers_only_under_this_machines_address_or_name() {
    let with = |host: &str| {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::HOST,
            axum::http::HeaderValue::from_str(host).expect("value"),
        );
        auth::host_is_this_machine(&h)
    };
    assert!(with("127.0.0.1:8080"));
    assert!(with("10.0.0.5"));
    assert!(with("[::1]:8080"));
    assert!(with("localhost:8080"));
    if let Ok(me) = sysinfo::System::host_name() {
        assert!(with(&format!("{me}:8080")), "{me}");
    }
    assert!(!with("rebind.attacker.example:8080"));
    assert!(!with("localhost.attacker.example"));
}

/// `POST /api/v1/setup` under `host` (a setup of cluster "evil").
async fn api_setup(app: &axum::Router, host: &str) -> StatusCode {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/setup")
        .header("host", host)
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"cluster":"evil","operator_password":"a long operator password"}"#,
        ))
        .expect("request");
    app.clone().oneshot(req).await.expect("infallible").status()
}

/// Exploits from a review: a hostile page posts to the credential-free
/// routes (a login flood locks the operator's address out; a setup is
/// started or cancelled); a DNS-rebinding page drives setup under its
/// own name. Each is refused before anything is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_free_posts_refuse_other_sites_and_setup_other_names() {
    let n = test_node().await;
    let app = router(n.state.clone());
    let post = |path: &str, headers: &[(&str, &str)], body: &str| {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("host", "127.0.0.1:8080");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Body::from(body.to_owned())).expect("request");
        let app = app.clone();
        async move { app.oneshot(req).await.expect("infallible").status() }
    };
    let form = ("content-type", "application/x-www-form-urlencoded");
    let json_ct = ("content-type", "application/json");
    for (path, ct, body) in [
        ("/login", form, "user=admin&password=guess+guess+guess"),
        (
            "/setup/start",
            form,
            "cluster=evil&password=a+long+operator+password&password2=a+long+operator+password",
        ),
        ("/setup/cancel", form, ""),
        (
            "/api/v1/setup",
            json_ct,
            r#"{"cluster":"evil","operator_password":"a long operator password"}"#,
        ),
    ] {
        for hostile in [
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ] {
            assert_eq!(
                post(path, &[ct, hostile], body).await,
                StatusCode::FORBIDDEN,
                "{path} with {hostile:?}"
            );
        }
    }
    // Under a rebinding name, setup is refused (no setup is started).
    assert_eq!(
        api_setup(&app, "rebind.attacker.example:8080").await,
        StatusCode::MISDIRECTED_REQUEST
    );
    assert!(!n.state.keys.is_initialized());
    assert!(
        n.state.keys.reveal_pending().is_err(),
        "no setup is pending"
    );
}

#[test]
fn anonymous_callers_see_no_ollama_endpoint_nor_model_names() {
    let mut c = bzzz_proto::caps::Capabilities::default();
    c.ollama.present = true;
    c.ollama.endpoint = Some("http://127.0.0.1:11434".into());
    c.ollama.models = vec![bzzz_proto::caps::OllamaModel {
        name: "secret-project:7b".into(),
        ..Default::default()
    }];
    status::redact(&mut c);
    let text = serde_json::to_string(&c).expect("json");
    assert!(
        !text.contains("secret-project") && !text.contains("11434"),
        "{text}"
    );
    assert_eq!(c.ollama.model_count, Some(1));
}

/// Issue #22: the words of a setup started in the wizard are shown to the
/// browser that started it only; another caller gets 403 on the reveal,
/// sees no confirm form and cannot start over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_belongs_to_the_browser_that_started_it() {
    let n = test_node().await;
    let app = router(n.state.clone());
    let send = |method: Method, path: &str, cookie: Option<&str>, body: &str| {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1:8080")
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        let req = b.body(Body::from(body.to_owned())).expect("request");
        let app = app.clone();
        async move {
            let r = app.oneshot(req).await.expect("infallible");
            let status = r.status();
            let set_cookie = r
                .headers()
                .get("set-cookie")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or("").to_owned());
            let body = axum::body::to_bytes(r.into_body(), 1 << 20)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            (status, set_cookie, body)
        }
    };
    let (status, cookie, _) = send(
        Method::POST,
        "/setup/start",
        None,
        "cluster=lab&password=a+long+operator+password&password2=a+long+operator+password",
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = cookie.expect("the starter's cookie");
    assert!(cookie.starts_with("bzzz_setup="), "{cookie}");
    // Another browser: no words, no confirm form, no start-over.
    let (status, _, body) = send(Method::GET, "/setup/reveal", None, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, body) = send(
        Method::GET,
        "/setup/reveal",
        Some("bzzz_setup=0000000000000000000000000000000000000000000000000000000000000000"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (_, _, body) = send(Method::GET, "/setup", None, "").await;
    assert!(
        body.contains("pending-elsewhere") && !body.contains("confirm-form"),
        "{body}"
    );
    let (status, _, _) = send(Method::POST, "/setup/cancel", None, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(n.state.keys.pending_positions().is_some(), "not cancelled");
    // Nor replaced (a new setup would hand its words to the replacer).
    let pending = n.state.keys.pending_positions().map(|p| p.0);
    let (status, _, _) = send(
        Method::POST,
        "/setup/start",
        None,
        "cluster=evil&password=a+long+operator+password&password2=a+long+operator+password",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        api_setup(&app, "127.0.0.1:8080").await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        n.state.keys.pending_positions().map(|p| p.0),
        pending,
        "the same setup"
    );
    // The starter sees the words once.
    let (status, _, body) = send(Method::GET, "/setup/reveal", Some(&cookie), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("id=\"mnemonic\""), "{body}");
    let (_, _, body) = send(Method::GET, "/setup", Some(&cookie), "").await;
    assert!(body.contains("confirm-form"), "{body}");
    let (status, _, _) = send(Method::POST, "/setup/cancel", Some(&cookie), "").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        n.state.keys.pending_positions().is_none(),
        "cancelled by its starter"
    );
}
