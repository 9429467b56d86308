//! The inference API on every node (OpenAI dialect so far): each request
//! goes to this node's own backend for the model when it has a ready one,
//! else to another node holding a ready copy (loaded first, least in
//! flight, same zone), retried on the next replica when one fails before
//! the first byte. Streaming passes through without buffering.
//!
//! Nodes forward to each other's HTTP API with `x-bzzz-hop: 1`: a node
//! receiving it serves locally or answers 503, so a request never loops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bzzz_proto::NodeId;
use bzzz_proto::models::ModelName;
use futures::StreamExt as _;
use serde_json::{Value, json};

use super::{Action, Permission, Res, Route, Shared};

/// Largest request accepted (a long prompt fits; a runaway one does not).
pub const MAX_REQUEST: usize = 8 * 1024 * 1024;
/// Marks a request forwarded by another node.
pub const HOP: &str = "x-bzzz-hop";
/// A replica that failed is tried last for this long.
const PARK: Duration = Duration::from_secs(10);

pub fn routes() -> Vec<Route> {
    vec![
        Route::api(
            Method::GET,
            "/v1/models",
            Permission::Need(Action::Infer, Res::SomeModel),
            get(models),
            json!({"summary": "OpenAI: the models this cluster serves", "operationId": "openaiModels",
                "responses": {"200": {"description": "{object: list, data: [{id, object, created, owned_by}]}"}}}),
        ),
        Route::api(
            Method::POST,
            "/v1/chat/completions",
            Permission::Need(Action::Infer, Res::ModelInBody),
            post(chat_completions),
            json!({"summary": "OpenAI: chat completion, routed to a replica of the model (stream: SSE passthrough)", "operationId": "openaiChat",
                "responses": {"200": {"description": "The backend's answer"}, "400": {"description": "Malformed request"},
                    "404": {"description": "Unknown model"}, "503": {"description": "No replica serving"}}}),
        )
        .body_limit(MAX_REQUEST)
        .timeout(Duration::from_secs(3600)),
        Route::api(
            Method::GET,
            "/api/v1/serve/backends",
            Permission::Public,
            get(backends),
            json!({"summary": "This node's managed backends: model, port, state (starting, ready, failed), restarts", "operationId": "serveBackends",
                "responses": {"200": {"description": "array"}}}),
        ),
    ]
}

/// Requests in flight from this node to each replica, and parked ones.
#[derive(Debug, Default)]
pub struct Router {
    in_flight: Mutex<HashMap<NodeId, usize>>,
    parked: Mutex<HashMap<NodeId, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts one request to `node` until dropped (the response body ends).
struct InFlight(Arc<Router>, NodeId);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.0.in_flight).get_mut(&self.1) {
            *n = n.saturating_sub(1);
        }
    }
}

fn router() -> &'static Arc<Router> {
    static R: OnceLock<Arc<Router>> = OnceLock::new();
    R.get_or_init(Arc::default)
}

/// The HTTP client for backends and other nodes: connect within 2 s, no
/// overall timeout (answers stream).
pub(super) fn client() -> &'static reqwest::Client {
    static C: OnceLock<reqwest::Client> = OnceLock::new();
    C.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default()
    })
}

/// OpenAI's error shape.
fn openai_error(code: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"message": message.into(), "type": kind, "code": kind}});
    super::json(code, &body)
}

async fn models(State(st): State<Shared>) -> Response {
    let Some(c) = st.control.get() else {
        return super::json(StatusCode::OK, &json!({"object": "list", "data": []}));
    };
    let data: Vec<Value> = c.with_state(|s| {
        s.models
            .models
            .values()
            .filter(|e| !e.removed)
            .map(|e| json!({"id": e.name, "object": "model", "created": e.added_at, "owned_by": "bzzz"}))
            .collect()
    });
    super::json(StatusCode::OK, &json!({"object": "list", "data": data}))
}

async fn backends(State(st): State<Shared>, p: super::Principal) -> Response {
    let mut list = st
        .models
        .serve
        .as_ref()
        .map(|s| s.list())
        .unwrap_or_default();
    // Process ids and error text are for members.
    if !super::auth::reads_cluster(&st, &p) {
        for b in &mut list {
            b.pid = None;
            b.error = None;
        }
    }
    super::json(StatusCode::OK, &list)
}

/// The HTTP address of a peer's API (its announced one; an unspecified
/// host is replaced by the peer's first non-loopback IPv4 address).
pub(crate) fn api_of(st: &Shared, node: &NodeId) -> Option<String> {
    let snap = st.net.snapshot();
    let p = snap
        .peers
        .iter()
        .find(|p| &p.announcement.node_id == node)?;
    let a = p.announcement.api_addr.clone()?;
    let addr: std::net::SocketAddr = a.parse().ok()?;
    if !addr.ip().is_unspecified() {
        return Some(a);
    }
    p.announcement.addrs.iter().find_map(|m| {
        let ip = m.strip_prefix("/ip4/")?.split('/').next()?;
        (ip != "127.0.0.1").then(|| format!("{ip}:{}", addr.port()))
    })
}

/// Streams a backend's or a node's answer back as it comes.
fn pass_through<G: Send + 'static>(resp: reqwest::Response, guard: Option<G>) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let ctype = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let stream = resp.bytes_stream().map(move |chunk| {
        let _keep = &guard;
        chunk.map_err(std::io::Error::other)
    });
    let mut r = (status, Body::from_stream(stream)).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&ctype) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// The request as checked, as every backend and node gets it:
/// re-encoded, with no key that is not all lower case at the top or in
/// `options` (both dialects' fields are; Ollama's decoder matches keys
/// case-insensitively, so a `"MODEL"` or `"OPTIONS"` beside the checked
/// field could pick another model or pass unbounded options), and
/// Ollama's options allow-listed and bounded.
fn canonical(req: &Value) -> Bytes {
    let lower = |k: &String| !k.bytes().any(|b| b.is_ascii_uppercase()) && k.is_ascii();
    let mut v = req.clone();
    if let Some(o) = v.as_object_mut() {
        o.retain(|k, _| lower(k));
        if let Some(opts) = o.get_mut("options").and_then(Value::as_object_mut) {
            opts.retain(|k, _| lower(k));
            bound_options(opts);
        }
    }
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// Ollama options a caller may pass to an Ollama backend, with bounds:
/// others are dropped, and a context or output length beyond the bound
/// is cut to it (a caller must not make a backend allocate a context of
/// a million tokens).
const OLLAMA_OPTIONS: &[(&str, Option<(f64, f64)>)] = &[
    ("num_ctx", Some((1.0, 32_768.0))),
    ("num_predict", Some((-2.0, 32_768.0))),
    ("num_keep", Some((-1.0, 32_768.0))),
    ("temperature", Some((0.0, 10.0))),
    ("top_p", Some((0.0, 1.0))),
    ("min_p", Some((0.0, 1.0))),
    ("top_k", Some((0.0, 1_000.0))),
    ("seed", None),
    ("stop", None),
    ("repeat_penalty", Some((0.0, 10.0))),
    ("repeat_last_n", Some((-1.0, 32_768.0))),
    ("presence_penalty", Some((-10.0, 10.0))),
    ("frequency_penalty", Some((-10.0, 10.0))),
];

fn bound_options(opts: &mut serde_json::Map<String, Value>) {
    opts.retain(|k, _| OLLAMA_OPTIONS.iter().any(|(name, _)| name == k));
    for (name, bounds) in OLLAMA_OPTIONS {
        let (Some((lo, hi)), Some(v)) = (bounds, opts.get_mut(*name)) else {
            continue;
        };
        match v.as_f64() {
            Some(x) if x.is_finite() => {
                let clamped = x.clamp(*lo, *hi);
                if clamped != x {
                    *v = if v.is_i64() || v.is_u64() {
                        json!(clamped as i64)
                    } else {
                        json!(clamped)
                    };
                }
            }
            _ => {
                opts.remove(*name);
            }
        }
    }
}

/// POSTs a request to a backend, or (with `hop`) to another node,
/// carrying the caller's own `Authorization`: the other node checks the
/// caller's rights itself and never trusts this one's word for them.
async fn send(
    url: &str,
    body: &Bytes,
    hop: Option<Option<&axum::http::HeaderValue>>,
    peer: Option<reqwest::Client>,
) -> Result<reqwest::Response, String> {
    let mut req = peer
        .as_ref()
        .unwrap_or_else(|| client())
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.clone());
    if let Some(auth) = hop {
        req = req.header(HOP, "1");
        if let Some(a) = auth {
            req = req.header(reqwest::header::AUTHORIZATION, a.clone());
        }
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if resp.status().is_server_error() {
        return Err(format!("answered {}", resp.status()));
    }
    Ok(resp)
}

/// The API a request came in on (`bzzz_serve::translate`): errors take
/// its shape, and a node serving locally translates when its backend
/// speaks the other one.
pub use bzzz_serve::translate::Dialect;

/// Errors in a dialect's shape.
pub trait DialectError {
    /// An error in this dialect's shape (Ollama: `{"error": "..."}`).
    fn error(self, code: StatusCode, kind: &str, message: impl Into<String>) -> Response;
}

impl DialectError for Dialect {
    fn error(self, code: StatusCode, kind: &str, message: impl Into<String>) -> Response {
        match self {
            Dialect::OpenAi => openai_error(code, kind, message),
            _ => super::json(code, &json!({"error": message.into()})),
        }
    }
}

async fn chat_completions(State(st): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    dispatch(&st, &headers, body, Dialect::OpenAi).await
}

/// Routes one inference request (any dialect) to a replica of its model.
pub async fn dispatch(st: &Shared, headers: &HeaderMap, body: Bytes, dialect: Dialect) -> Response {
    let started = Instant::now();
    let model = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_owned))
        .and_then(|m| ModelName::parse(&m).ok())
        .map(|m| m.full());
    // Only registered models get metric labels (an unknown name must not
    // make a new label set).
    let model = model.filter(|m| {
        st.control
            .get()
            .is_some_and(|c| c.with_state(|s| s.models.models.contains_key(m)))
    });
    let mut node = None;
    let resp = route_request(st, headers, body, dialect, &mut node).await;
    match model {
        Some(model) => metrics::meter(resp, model, node, started),
        None => resp,
    }
}

/// Routes one request; `served` names the node that answered it.
async fn route_request(
    st: &Shared,
    headers: &HeaderMap,
    body: Bytes,
    dialect: Dialect,
    served: &mut Option<String>,
) -> Response {
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return dialect.error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("malformed JSON: {e}"),
            );
        }
    };
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return dialect.error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the request names no model",
        );
    };
    let name = match ModelName::parse(model) {
        Ok(n) => n.full(),
        Err(e) => {
            return dialect.error(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!("model '{model}' not found ({e})"),
            );
        }
    };
    let Some(ctl) = st.control.get() else {
        return dialect.error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the control plane is not running",
        );
    };
    let me = st.net.local_id().clone();
    let Some(replicas) = ctl.with_state(|s| {
        let e = s.models.models.get(&name).filter(|e| !e.removed)?;
        let holders = s.models.holders(&e.name);
        Some(
            s.models
                .placements
                .get(&name)
                .map(|p| {
                    p.iter()
                        .filter(|x| holders.contains(&x.node))
                        .map(|x| x.node.clone())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        )
    }) else {
        return dialect.error(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("model '{name}' not found, try pulling it first"),
        );
    };
    // This node's own backend first.
    if let Some((sup, port)) = st
        .models
        .serve
        .as_ref()
        .and_then(|s| Some((s, s.ready_port(&name)?)))
    {
        let busy = sup.served(&name);
        match dialect {
            Dialect::OpenAi => {
                let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
                match send(&url, &canonical(&req), None, None).await {
                    Ok(resp) => {
                        *served = Some(me.to_string());
                        return pass_through(resp, busy);
                    }
                    Err(e) => tracing::warn!(model = %name, "this node's backend failed: {e}"),
                }
            }
            _ => {
                let base = format!("http://127.0.0.1:{port}");
                match super::ollama::serve_locally(st, &base, &name, &req, dialect, busy).await {
                    Ok(r) => {
                        *served = Some(me.to_string());
                        return r;
                    }
                    Err(e) => tracing::warn!(model = %name, "this node's backend failed: {e}"),
                }
            }
        }
    }
    // A server already running on this node (`serve.backends`), for a
    // model this node holds: Ollama speaks both dialects; an OpenAI
    // server gets Ollama's requests translated.
    if !st.backends.is_empty() && ctl.with_state(|s| s.models.holders(&name).contains(&me)) {
        for (kind, url) in &st.backends {
            let r = match (kind.as_str(), dialect) {
                (_, Dialect::OpenAi) => send(
                    &format!("{url}/v1/chat/completions"),
                    &canonical(&req),
                    None,
                    None,
                )
                .await
                .map(|resp| pass_through::<()>(resp, None)),
                ("ollama", d) => send(&format!("{url}{}", d.path()), &canonical(&req), None, None)
                    .await
                    .map(|resp| pass_through::<()>(resp, None)),
                (_, d) => super::ollama::serve_locally(st, url, &name, &req, d, None).await,
            };
            match r {
                Ok(r) => {
                    *served = Some(me.to_string());
                    return r;
                }
                Err(e) => tracing::warn!(model = %name, backend = %url, "backend failed: {e}"),
            }
        }
    }
    if headers.contains_key(HOP) {
        return dialect.error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("this node has no ready backend for {name}"),
        );
    }
    let r = router().clone();
    let order = {
        let inflight = lock(&r.in_flight);
        let mut parked = lock(&r.parked);
        parked.retain(|_, t| t.elapsed() < PARK);
        let zone = st.local.borrow().capabilities.labels.zone.clone();
        let snap = st.net.snapshot();
        bzzz_serve::route::order(
            replicas
                .iter()
                .filter(|n| **n != me)
                .map(|n| {
                    let peer = snap.peers.iter().find(|p| &p.announcement.node_id == n);
                    // What the node announces of its backend for this model.
                    let announced = peer.and_then(|p| {
                        p.announcement
                            .capabilities
                            .serving
                            .iter()
                            .find(|s| s.model == name)
                    });
                    bzzz_serve::route::Replica {
                        node: n.clone(),
                        loaded: announced.is_some_and(|s| s.loaded),
                        in_flight: inflight
                            .get(n)
                            .copied()
                            .unwrap_or(0)
                            .max(announced.map_or(0, |s| s.in_flight as usize)),
                        same_zone: zone.is_some()
                            && peer
                                .is_some_and(|p| p.announcement.capabilities.labels.zone == zone),
                        parked: parked.contains_key(n),
                    }
                })
                .collect(),
        )
    };
    let mut last = format!("no replica of {name} is serving right now");
    // Only API keys travel to the replica (it checks them itself); a
    // password is never sent on to another node, and a session is this
    // node's own.
    let auth = headers
        .get(header::AUTHORIZATION)
        .filter(|v| v.to_str().is_ok_and(|t| t.starts_with("Bearer ")));
    if auth.is_none() && !crate::access::anonymous_inference(st) && !order.is_empty() {
        return dialect.error(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!(
                "{name} is served by another node, and a password is never forwarded to other nodes: call with an API key (bzzz apikey create) or through a node that serves it"
            ),
        );
    }
    for node in order {
        let Some(addr) = api_of(st, &node) else {
            continue;
        };
        *lock(&r.in_flight).entry(node.clone()).or_default() += 1;
        let guard = InFlight(r.clone(), node.clone());
        // Another node: https under the cluster CA (the caller's
        // credential goes with the request).
        let (base, peer) = crate::tls::peer(&addr);
        match send(
            &format!("{base}{}", dialect.path()),
            &canonical(&req),
            Some(auth),
            peer,
        )
        .await
        {
            Ok(resp) => {
                *served = Some(node.to_string());
                return pass_through(resp, Some(guard));
            }
            Err(e) => {
                tracing::debug!(model = %name, %node, "replica failed before the first byte: {e}");
                lock(&r.parked).insert(node.clone(), Instant::now());
                last = format!("no replica of {name} is serving right now (last: {e})");
            }
        }
    }
    dialect.error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", last)
}

/// Per model and serving node: requests, errors, time to first byte of
/// the answer, and tokens per second of streamed answers (one token per
/// SSE event or NDJSON line), measured on the node the client called.
pub mod metrics {
    use std::sync::OnceLock;
    use std::time::Instant;

    use axum::body::Body;
    use axum::response::Response;
    use futures::StreamExt as _;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

    type Labels = Vec<(String, String)>;

    /// The families (cloned into each `/metrics` answer).
    #[derive(Debug)]
    pub struct Families {
        pub requests: Family<Labels, Counter>,
        pub errors: Family<Labels, Counter>,
        pub ttft: Family<Labels, Histogram>,
        pub tokens_per_second: Family<Labels, Histogram>,
    }

    pub fn families() -> &'static Families {
        static F: OnceLock<Families> = OnceLock::new();
        F.get_or_init(|| Families {
            requests: Family::default(),
            errors: Family::default(),
            ttft: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.002, 2.0, 14))
            }),
            tokens_per_second: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1.0, 2.0, 12))
            }),
        })
    }

    struct Meter {
        labels: Labels,
        started: Instant,
        first: Option<Instant>,
        last: Option<Instant>,
        events: u64,
        sse: bool,
    }

    impl Drop for Meter {
        fn drop(&mut self) {
            if let (Some(a), Some(b)) = (self.first, self.last)
                && self.events >= 2
                && b > a
            {
                let tps = (self.events - 1) as f64 / (b - a).as_secs_f64();
                families()
                    .tokens_per_second
                    .get_or_create(&self.labels)
                    .observe(tps);
            }
        }
    }

    /// Counts the request and measures its answer as it streams.
    pub fn meter(
        resp: Response,
        model: String,
        node: Option<String>,
        started: Instant,
    ) -> Response {
        let labels = vec![
            ("model".to_owned(), model),
            ("node".to_owned(), node.unwrap_or_else(|| "none".into())),
        ];
        let f = families();
        f.requests.get_or_create(&labels).inc();
        if resp.status().is_server_error() {
            f.errors.get_or_create(&labels).inc();
        }
        let ctype = resp
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let streamed = ctype.starts_with("text/event-stream") || ctype.contains("ndjson");
        let mut meter = Meter {
            labels,
            started,
            first: None,
            last: None,
            events: 0,
            sse: ctype.starts_with("text/event-stream"),
        };
        let (parts, body) = resp.into_parts();
        let stream = body.into_data_stream().map(move |chunk| {
            if let Ok(c) = &chunk {
                let now = Instant::now();
                if meter.first.is_none() {
                    meter.first = Some(now);
                    families()
                        .ttft
                        .get_or_create(&meter.labels)
                        .observe((now - meter.started).as_secs_f64());
                }
                if streamed {
                    meter.last = Some(now);
                    meter.events += if meter.sse {
                        c.windows(6).filter(|w| w == b"data: ").count() as u64
                    } else {
                        c.iter().filter(|b| **b == b'\n').count() as u64
                    };
                }
            }
            chunk
        });
        Response::from_parts(parts, Body::from_stream(stream))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ollama_options_are_allow_listed_and_bounded() {
        let req = serde_json::json!({"model": "m", "MODEL": "other", "Model": "x",
            "OPTIONS": {"num_ctx": 1_048_576}, "options": {
            "num_ctx": 1_048_576, "temperature": 0.5, "num_predict": -1, "NUM_CTX": 1_048_576,
            "use_mmap": false, "num_gpu": 99, "top_p": "x"}});
        let out: serde_json::Value = serde_json::from_slice(&super::canonical(&req)).expect("json");
        assert_eq!(out["model"], "m");
        for gone in ["MODEL", "Model", "OPTIONS"] {
            assert!(out.get(gone).is_none(), "{gone}: {out}");
        }
        assert!(out["options"].get("NUM_CTX").is_none());
        assert_eq!(out["options"]["num_ctx"], 32_768);
        assert_eq!(out["options"]["temperature"], 0.5);
        assert_eq!(out["options"]["num_predict"], -1);
        for gone in ["use_mmap", "num_gpu", "top_p"] {
            assert!(out["options"].get(gone).is_none(), "{gone}: {out}");
        }
    }
}
