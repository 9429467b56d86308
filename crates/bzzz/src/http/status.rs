//! Public cluster facts: this node, its peers, leadership, the replicated
//! cluster state, metrics and the OpenAPI document.
//!
//! Handlers only read: the network task publishes snapshots of the view, the
//! capability task publishes [`bzzz_net::LocalInfo`]; nothing here waits on
//! the swarm.

use std::time::Instant;

use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bzzz_proto::api::{PeerInfo, StatusResponse};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;

use super::{Action, ApiError, Fixed, Permission, Res, Route, Shared};
use crate::state::AppState;

type S = State<Shared>;

pub fn routes() -> Vec<Route> {
    use Permission::Public;
    vec![
        Route::api(
            Method::GET,
            "/api/v1/status",
            Public,
            get(status),
            json!(
            {"summary": "This node", "operationId": "status",
                "responses": {"200": {"description": "Node status", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/peers",
            Public,
            get(peers),
            json!(
            {"summary": "Other live nodes in this node's view", "operationId": "peers",
                "responses": {"200": {"description": "Peers", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Peer"}}}}}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/openapi.json",
            Public,
            get(openapi),
            json!(
            {"summary": "This document", "operationId": "openapi",
                "responses": {"200": {"description": "OpenAPI document"}}}),
        ),
        Route::api(
            Method::GET,
            "/metrics",
            Public,
            get(metrics),
            json!(
            {"summary": "Prometheus metrics (OpenMetrics text)", "operationId": "metrics",
                "responses": {"200": {"description": "Metrics", "content": {"application/openmetrics-text": {}}}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/leader",
            Public,
            get(leader),
            json!(
            {"summary": "Leadership as this node sees it", "operationId": "leader",
                "responses": {"200": {"description": "Leader", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Leader"}}}}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/cluster",
            Permission::Need(Action::Manage, Res::Is(Fixed::Cluster)),
            get(cluster),
            json!(
            {"summary": "The replicated cluster state: inventory (per-node resources and scores), totals, roles, rules, audit", "operationId": "cluster",
                "responses": {"200": {"description": "Cluster state"}, "503": {"description": "Control plane not running"}}}),
        ),
    ]
}

pub(crate) fn status_of(st: &AppState) -> StatusResponse {
    let snap = st.net.snapshot();
    let local = st.local.borrow();
    StatusResponse {
        node_id: snap.local_id.clone(),
        version: bzzz_proto::VERSION.to_owned(),
        uptime_secs: st.started.elapsed().as_secs(),
        listen_addrs: snap.listen_addrs.clone(),
        api_addr: st.api_addr.to_string(),
        peer_count: snap.peers.len(),
        connected_peers: snap.connected_peers,
        mdns: snap.mdns,
        capabilities: local.capabilities.clone(),
    }
}

pub(crate) fn peers_of(st: &AppState) -> Vec<PeerInfo> {
    let snap = st.net.snapshot();
    let now = Instant::now();
    snap.peers
        .iter()
        .map(|p| PeerInfo {
            node_id: p.announcement.node_id.clone(),
            addrs: p.announcement.addrs.clone(),
            api_addr: p
                .announcement
                .api_addr
                .as_deref()
                .map(|a| routable_api_addr(a, &p.announcement.addrs)),
            connected: p.connected,
            last_seen_ms_ago: now.saturating_duration_since(p.last_seen).as_millis() as u64,
            uptime_secs: p.announcement.uptime_secs,
            capabilities: p.announcement.capabilities.clone(),
        })
        .collect()
}

/// A peer that serves HTTP on an unspecified address (`0.0.0.0:8080`) is
/// reachable on the IP it announced for P2P: use that one.
pub(crate) fn routable_api_addr(api: &str, p2p_addrs: &[String]) -> String {
    let Ok(sa) = api.parse::<std::net::SocketAddr>() else {
        return api.to_owned();
    };
    if !sa.ip().is_unspecified() {
        return api.to_owned();
    }
    p2p_addrs
        .iter()
        .find_map(|a| {
            let mut parts = a.split('/');
            match (parts.nth(1), parts.next()) {
                (Some("ip4" | "ip6"), Some(ip)) => ip.parse::<std::net::IpAddr>().ok(),
                _ => None,
            }
        })
        .map(|ip| std::net::SocketAddr::new(ip, sa.port()).to_string())
        .unwrap_or_else(|| api.to_owned())
}

/// What an anonymous caller sees of a node's Ollama: whether it is there
/// and how many models it holds, not its endpoint nor the model names
/// (members with `read` on `cluster` see everything).
pub(crate) fn redact(c: &mut bzzz_proto::caps::Capabilities) {
    let o = &mut c.ollama;
    o.endpoint = None;
    o.model_count = Some(o.models.len());
    o.models.clear();
}

async fn status(State(st): S, p: super::Principal) -> axum::Json<StatusResponse> {
    let mut s = status_of(&st);
    if !super::auth::reads_cluster(&st, &p) {
        redact(&mut s.capabilities);
    }
    axum::Json(s)
}

async fn peers(State(st): S, p: super::Principal) -> axum::Json<Vec<PeerInfo>> {
    let mut all = peers_of(&st);
    if !super::auth::reads_cluster(&st, &p) {
        for peer in &mut all {
            redact(&mut peer.capabilities);
        }
    }
    axum::Json(all)
}

pub(crate) fn leader_of(st: &AppState) -> crate::control::LeaderInfo {
    let local = st.local.borrow().clone();
    crate::control::leader_info(
        &st.control,
        &st.net,
        &local,
        st.started,
        &st.control_settings,
    )
}

async fn leader(State(st): S) -> axum::Json<crate::control::LeaderInfo> {
    axum::Json(leader_of(&st))
}

/// The replicated cluster state (inventory, totals, roles, rules, the
/// latest audit entries); 503 before the control plane runs.
async fn cluster(State(st): S) -> Response {
    let Some(c) = st.control.get() else {
        return ApiError::no_control().into_response();
    };
    let s = c.state();
    let audit: Vec<_> = s.audit.iter().rev().take(50).cloned().collect();
    axum::Json(json!({
        "cluster": s.cluster,
        "nodes": s.nodes,
        "totals": s.totals,
        "roles": s.roles,
        "rules": s.rules,
        "admin_seq": s.admin_seq,
        "audit": audit,
        "rejected": s.rejected,
        "share_holders": s.share_holders,
        "share_risk": s.share_risk(),
        "last_applied": s.last_applied.map(|l| l.index),
        // Key chains without their sealed secrets: epoch, public key, readers.
        "role_keys": s.role_keys.iter().map(|(chain, keys)| {
            (chain.clone(), keys.iter().map(|k| json!({"epoch": k.epoch, "public": k.public, "readers": k.readers, "made_by": k.made_by})).collect::<Vec<_>>())
        }).collect::<std::collections::BTreeMap<_, _>>(),
    }))
    .into_response()
}

/// Renders the current values into a fresh registry per scrape: a dozen
/// gauges and counters, cheaper than keeping a second copy of the state in
/// sync with the snapshot.
async fn metrics(State(st): S) -> Response {
    let snap = st.net.snapshot();
    let local = st.local.borrow().capabilities.clone();
    let mut reg = Registry::with_prefix("bzzz");
    let gauge = |reg: &mut Registry, name: &str, help: &str, v: i64| {
        let g: Gauge = Gauge::default();
        g.set(v);
        reg.register(name, help, g);
    };
    let counter = |reg: &mut Registry, name: &str, help: &str, v: u64| {
        let c: Counter = Counter::default();
        c.inc_by(v);
        reg.register(name, help, c);
    };
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    gauge(
        &mut reg,
        "peers",
        "Other live nodes in this node's view",
        snap.peers.len() as i64,
    );
    gauge(
        &mut reg,
        "connected_peers",
        "Peers with an open connection",
        snap.connected_peers as i64,
    );
    gauge(
        &mut reg,
        "uptime_seconds",
        "Seconds since the node started",
        i(st.started.elapsed().as_secs()),
    );
    gauge(
        &mut reg,
        "memory_total_bytes",
        "Physical memory",
        i(local.memory_total_bytes),
    );
    gauge(
        &mut reg,
        "memory_free_bytes",
        "Available memory",
        i(local.memory_free_bytes),
    );
    gauge(
        &mut reg,
        "disk_free_bytes",
        "Free space on the data dir's filesystem",
        i(local.disk_free_bytes),
    );
    gauge(
        &mut reg,
        "gpus",
        "GPUs (detected and declared)",
        local.gpus.len() as i64,
    );
    let c = &snap.counters;
    counter(
        &mut reg,
        "announcements_sent",
        "Capability announcements published",
        c.announcements_sent,
    );
    counter(
        &mut reg,
        "announcements_received",
        "Valid announcements accepted",
        c.announcements_received,
    );
    counter(
        &mut reg,
        "announcements_rejected",
        "Announcements refused (bad signature, invalid)",
        c.announcements_rejected,
    );
    counter(
        &mut reg,
        "connections_established",
        "Connections opened",
        c.connections_established,
    );
    counter(
        &mut reg,
        "connections_closed",
        "Connections closed",
        c.connections_closed,
    );
    counter(
        &mut reg,
        "peers_joined",
        "Nodes that entered the view",
        c.peers_joined,
    );
    counter(
        &mut reg,
        "peers_left",
        "Nodes that left the view",
        c.peers_left,
    );
    let m = &st.models.models;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    counter(
        &mut reg,
        "model_bytes_uploaded",
        "Model bytes sent to peers",
        load(&m.uploaded),
    );
    counter(
        &mut reg,
        "model_bytes_fetched",
        "Model bytes fetched from peers (verified pieces)",
        load(&m.fetched),
    );
    counter(
        &mut reg,
        "model_bad_pieces",
        "Pieces from peers that failed their hash (fetched again elsewhere)",
        load(&m.bad_pieces),
    );
    counter(
        &mut reg,
        "model_pieces_resumed",
        "Verified pieces found in partial files after a restart (not fetched again)",
        load(&m.resumed),
    );
    let inf = super::inference::metrics::families();
    reg.register(
        "inference_requests",
        "Inference requests this node routed, by model and serving node",
        inf.requests.clone(),
    );
    reg.register(
        "inference_errors",
        "Inference requests answered with a server error (no replica, backend failure)",
        inf.errors.clone(),
    );
    reg.register(
        "inference_time_to_first_byte_seconds",
        "From the request to the first byte of the answer (the first token when streaming)",
        inf.ttft.clone(),
    );
    reg.register(
        "inference_tokens_per_second",
        "Streamed answers: tokens (events) per second after the first",
        inf.tokens_per_second.clone(),
    );
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &reg) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn openapi() -> Response {
    super::json(StatusCode::OK, &super::openapi::document())
}
