//! HTTP: JSON API under `/api/v1/`, Prometheus `/metrics`, the OpenAPI
//! document, and the web UI's cluster overview at `/`.
//!
//! Handlers only read: the network task publishes snapshots of the view, the
//! capability task publishes [`bzzz_net::LocalInfo`]; nothing here waits on
//! the swarm.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use bzzz_proto::api::{ApiError, PeerInfo, StatusResponse};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use crate::node::AppState;

type S = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/v1/status", get(status))
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/leader", get(leader))
        .route("/api/v1/cluster", get(cluster))
        .route("/metrics", get(metrics))
        .merge(crate::setup_ui::routes())
        .merge(crate::deploy::routes())
        .fallback(not_found)
        .with_state(state)
}

/// Every route with its method, as listed in the OpenAPI document (a test
/// keeps the two in step).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/status"),
    ("get", "/api/v1/peers"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/leader"),
    ("get", "/api/v1/cluster"),
    ("get", "/api/v1/roles"),
    ("post", "/api/v1/roles"),
    ("post", "/api/v1/admin/changes"),
    ("get", "/api/v1/registry"),
    ("post", "/api/v1/registry"),
    ("get", "/metrics"),
    ("post", "/api/v1/setup"),
    ("post", "/api/v1/setup/confirm"),
    ("get", "/api/v1/keys"),
    ("post", "/api/v1/keys/sign"),
    ("post", "/api/v1/tokens"),
    ("post", "/api/v1/deploy"),
    ("post", "/api/v1/deploy/scan"),
    ("get", "/api/v1/deploy/{id}/events"),
    ("get", "/api/v1/deploy/{id}/binary"),
];

fn status_of(st: &AppState) -> StatusResponse {
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

fn peers_of(st: &AppState) -> Vec<PeerInfo> {
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
fn routable_api_addr(api: &str, p2p_addrs: &[String]) -> String {
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

async fn status(State(st): S) -> axum::Json<StatusResponse> {
    axum::Json(status_of(&st))
}

async fn peers(State(st): S) -> axum::Json<Vec<PeerInfo>> {
    axum::Json(peers_of(&st))
}

fn leader_of(st: &AppState) -> crate::control::LeaderInfo {
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
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(ApiError {
                error: "the control plane is not running (is the cluster initialized?)".into(),
            }),
        )
            .into_response();
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
    }))
    .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(ApiError {
            error: "no such endpoint; see /api/v1/openapi.json".into(),
        }),
    )
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

async fn openapi() -> axum::Json<Value> {
    axum::Json(openapi_doc())
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi_doc() -> Value {
    let caps = json!({
        "type": "object",
        "required": ["cpu", "memory_total_bytes", "memory_free_bytes", "disk_total_bytes", "disk_free_bytes", "gpus", "ollama", "labels", "version"],
        "properties": {
            "cpu": {"type": "object", "properties": {
                "model": {"type": "string"}, "cores": {"type": "integer"},
                "load_1m": {"type": "number"}, "load_5m": {"type": "number"}, "load_15m": {"type": "number"}}},
            "memory_total_bytes": {"type": "integer"},
            "memory_free_bytes": {"type": "integer"},
            "disk_total_bytes": {"type": "integer"},
            "disk_free_bytes": {"type": "integer"},
            "gpus": {"type": "array", "items": {"type": "object", "properties": {
                "vendor": {"type": "string"}, "model": {"type": "string"},
                "vram_total_bytes": {"type": "integer"}, "vram_free_bytes": {"type": ["integer", "null"]},
                "index": {"type": ["integer", "null"]}, "uuid": {"type": ["string", "null"]},
                "declared": {"type": "boolean"}}}},
            "ollama": {"type": "object", "properties": {
                "present": {"type": "boolean"}, "api_reachable": {"type": "boolean"},
                "endpoint": {"type": ["string", "null"]}, "version": {"type": ["string", "null"]},
                "models": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "size_bytes": {"type": "integer"},
                    "digest": {"type": ["string", "null"]}}}}}},
            "labels": {"type": "object", "properties": {
                "zone": {"type": "string"}, "rack": {"type": "string"},
                "extra": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "version": {"type": "string"},
            "declared_fields": {"type": "array", "items": {"type": "string"}}
        }
    });
    json!({
        "openapi": "3.1.0",
        "info": {"title": "BZZZ node API", "version": bzzz_proto::VERSION,
                 "description": "Fields may be added in later versions, never renamed or removed."},
        "paths": {
            "/api/v1/status": {"get": {"summary": "This node", "operationId": "status",
                "responses": {"200": {"description": "Node status", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}}}},
            "/api/v1/peers": {"get": {"summary": "Other live nodes in this node's view", "operationId": "peers",
                "responses": {"200": {"description": "Peers", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Peer"}}}}}}}},
            "/api/v1/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                "responses": {"200": {"description": "OpenAPI document"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (OpenMetrics text)", "operationId": "metrics",
                "responses": {"200": {"description": "Metrics", "content": {"application/openmetrics-text": {}}}}}},
            "/api/v1/setup": {"post": {"summary": "Start the setup: generates the master key and returns it once (24 words and hex). 409 once initialized.", "operationId": "setupStart",
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["cluster", "operator_password"], "properties": {
                    "cluster": {"type": "string"}, "threshold": {"type": ["integer", "null"]}, "shares": {"type": ["integer", "null"]}, "operator_password": {"type": "string", "minLength": 12}}}}}},
                "responses": {"201": {"description": "Pending setup: setup_id, mnemonic, master_key_hex, admin_public_key, confirm_positions"}, "409": {"description": "Already initialized"}, "422": {"description": "Invalid input"}}}},
            "/api/v1/setup/confirm": {"post": {"summary": "Confirm the setup with the re-typed words: creates the cluster and forgets the master key.", "operationId": "setupConfirm",
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["setup_id", "words"], "properties": {
                    "setup_id": {"type": "string"}, "words": {"type": "object", "additionalProperties": {"type": "string"}}}}}}},
                "responses": {"200": {"description": "Cluster created"}, "409": {"description": "Already initialized or replaced"}, "422": {"description": "A word does not match"}}}},
            "/api/v1/leader": {"get": {"summary": "Leadership as this node sees it", "operationId": "leader",
                "responses": {"200": {"description": "Leader", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Leader"}}}}}}},
            "/api/v1/cluster": {"get": {"summary": "The replicated cluster state: inventory (per-node resources and scores), totals, roles, rules, audit", "operationId": "cluster",
                "responses": {"200": {"description": "Cluster state"}, "503": {"description": "Control plane not running"}}}},
            "/api/v1/roles": {
                "get": {"summary": "The role registry", "operationId": "roles",
                    "responses": {"200": {"description": "name → role"}, "503": {"description": "Control plane not running"}}},
                "post": {"summary": "Create or replace a role (operator; HTTP Basic): threshold-signed admin change, committed through Raft", "operationId": "rolePut",
                    "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["name", "authority"], "properties": {
                        "name": {"type": "string"}, "authority": {"type": "string", "enum": ["master", "decision", "coordination", "suggestion", "read_only"]},
                        "permissions": {"type": "array", "items": {"type": "string"}}, "reads": {"type": "array", "items": {"type": "string"}},
                        "members": {"type": "array", "items": {"type": "string"}}}}}}},
                    "responses": {"200": {"description": "Applied"}, "401": {"description": "No or wrong credential"}, "422": {"description": "Invalid or refused"}, "503": {"description": "No leader"}}}},
            "/api/v1/admin/changes": {"post": {"summary": "Commit an already signed admin change ({body, signature}); refused (422) unless signed by the cluster admin key (operator; HTTP Basic)", "operationId": "adminChange",
                "responses": {"200": {"description": "Applied"}, "401": {"description": "No or wrong credential"}, "422": {"description": "Refused by the state machine"}, "503": {"description": "No leader"}}}},
            "/api/v1/registry": {
                "get": {"summary": "The cluster key-value registry (replicated through Raft)", "operationId": "registry",
                    "responses": {"200": {"description": "key → value"}, "503": {"description": "Control plane not running"}}},
                "post": {"summary": "Set a registry key (operator; HTTP Basic); 200 once committed by a quorum", "operationId": "registrySet",
                    "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["key", "value"], "properties": {
                        "key": {"type": "string", "maxLength": 256}, "value": {"type": "string", "maxLength": 16384}}}}}},
                    "responses": {"200": {"description": "Committed"}, "401": {"description": "No or wrong credential"}, "422": {"description": "Invalid"}, "503": {"description": "No quorum or no leader"}}}},
            "/api/v1/keys": {"get": {"summary": "Cluster admin key status (never secret material)", "operationId": "keys",
                "responses": {"200": {"description": "admin_public_key, threshold, shares, share_index, share_state"}}}},
            "/api/v1/keys/sign": {"post": {"summary": "Threshold-sign a message with the cluster admin key (operator; HTTP Basic)", "operationId": "keysSign",
                "responses": {"200": {"description": "signature, signers, signed_bytes_hex"}, "401": {"description": "No or wrong credential"}, "429": {"description": "Too many failures"}, "502": {"description": "A signer refused or sent an invalid share (named)"}}}},
            "/api/v1/tokens": {"post": {"summary": "Create a join token (operator; HTTP Basic)", "operationId": "tokenCreate",
                "responses": {"201": {"description": "token, id, expires_at"}, "401": {"description": "No or wrong credential"}, "429": {"description": "Too many failures"}}}},
            "/api/v1/deploy": {"post": {"summary": "Deploy BZZZ to hosts over SSH, or remove it (operator; HTTP Basic). Body: hosts, ssh_user, ssh_port, ssh_key | ssh_password, ssh_key_passphrase, known_hosts, accept_new_host_keys, confirmed_fingerprints, prefix, http_port, p2p_port, mdns, parallel, uninstall, join_timeout_secs", "operationId": "deployStart",
                "responses": {"202": {"description": "Started: id, hosts, events (the event stream's path)"}, "401": {"description": "No or wrong credential"}, "409": {"description": "This node is not in a cluster yet"}, "422": {"description": "Invalid request (named)"}}}},
            "/api/v1/deploy/scan": {"post": {"summary": "Read hosts' SSH host-key fingerprints without logging in (operator; HTTP Basic). Body: hosts, ssh_port", "operationId": "deployScan",
                "responses": {"200": {"description": "hosts: [{host, fingerprint, pinned, changed} | {host, error}]"}, "401": {"description": "No or wrong credential"}}}},
            "/api/v1/deploy/{id}/events": {"get": {"summary": "A deploy run's progress as Server-Sent Events (operator; HTTP Basic): every event so far, then live ones; data = {host, state, message?, cause?, fingerprint?, trust?, node_id?, changed?, elapsed_ms}; ends with `event: done` (ok, outcomes)", "operationId": "deployEvents",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "text/event-stream"}, "404": {"description": "No such run"}}}},
            "/api/v1/deploy/{id}/binary": {"get": {"summary": "This node's binary for a deploy run's hosts (query: token, the run's random download token); only while the run lasts", "operationId": "deployBinary",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}, {"name": "token", "in": "query", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "application/octet-stream"}, "404": {"description": "No such run, it ended, or a wrong token"}}}}
        },
        "components": {"schemas": {
            "Capabilities": caps,
            "Status": {"type": "object",
                "required": ["node_id", "version", "uptime_secs", "listen_addrs", "api_addr", "peer_count", "connected_peers", "mdns", "capabilities"],
                "properties": {
                    "node_id": {"type": "string"}, "version": {"type": "string"},
                    "uptime_secs": {"type": "integer"},
                    "listen_addrs": {"type": "array", "items": {"type": "string"}},
                    "api_addr": {"type": "string"}, "peer_count": {"type": "integer"},
                    "connected_peers": {"type": "integer"}, "mdns": {"type": "boolean"},
                    "capabilities": {"$ref": "#/components/schemas/Capabilities"}}},
            "Peer": {"type": "object",
                "required": ["node_id", "addrs", "connected", "last_seen_ms_ago", "uptime_secs", "capabilities"],
                "properties": {
                    "node_id": {"type": "string"},
                    "addrs": {"type": "array", "items": {"type": "string"}},
                    "api_addr": {"type": ["string", "null"]},
                    "connected": {"type": "boolean"}, "last_seen_ms_ago": {"type": "integer"},
                    "uptime_secs": {"type": "integer"},
                    "capabilities": {"$ref": "#/components/schemas/Capabilities"}}},
            "Leader": {"type": "object",
                "required": ["leader", "term", "voters", "scores"],
                "properties": {
                    "leader": {"type": ["string", "null"]}, "term": {"type": "integer"},
                    "voters": {"type": "array", "items": {"type": "string"}},
                    "learners": {"type": "array", "items": {"type": "string"}},
                    "scores": {"type": "object", "additionalProperties": {"type": "number"}},
                    "state": {"type": "string"}, "last_applied": {"type": ["integer", "null"]},
                    "node_id": {"type": "string"}}},
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
        }}
    })
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

async fn index(State(st): S) -> Html<String> {
    let me = status_of(&st);
    let peers = peers_of(&st);
    let mut rows = String::new();
    let mut row = |id: &str, c: &bzzz_proto::Capabilities, extra: &str| {
        let gpus = if c.gpus.is_empty() {
            "none".to_owned()
        } else {
            c.gpus
                .iter()
                .map(|g| {
                    format!(
                        "{} ({}){}",
                        g.model,
                        gib(g.vram_total_bytes),
                        if g.declared { " [declared]" } else { "" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = write!(
            rows,
            "<tr><td><code>{}</code>{}</td><td>{} × {}</td><td>{:.2}</td><td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(id),
            extra,
            c.cpu.cores,
            esc(&c.cpu.model),
            c.cpu.load_1m,
            gib(c.memory_free_bytes),
            gib(c.memory_total_bytes),
            esc(&gpus),
            if c.ollama.present {
                format!("{} models", c.ollama.models.len())
            } else {
                "absent".into()
            },
            esc(c.labels.zone.as_deref().unwrap_or("-")),
        );
    };
    row(
        me.node_id.as_str(),
        &me.capabilities,
        " <em>(this node)</em>",
    );
    for p in &peers {
        row(p.node_id.as_str(), &p.capabilities, "");
    }
    let l = leader_of(&st);
    let mut control = String::new();
    for (id, score) in &l.scores {
        let role = l.role_of(id);
        let _ = write!(
            control,
            "<tr><td><code>{}</code></td><td>{role}</td><td>{score:.1}</td></tr>",
            esc(id)
        );
    }
    Html(format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>BZZZ — cluster overview</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}th{{background:#f4f4f4}}code{{font-size:.85em}}</style></head>
<body><h1>BZZZ cluster overview</h1>
<p>Node <code id="node-id">{id}</code>, version {ver}, up {up}s. <span id="peer-count">{n}</span> other live node(s).</p>
<table id="nodes"><tr><th>Node</th><th>CPU</th><th>Load</th><th>Memory free/total</th><th>GPUs</th><th>Ollama</th><th>Zone</th></tr>{rows}</table>
<h2>Control plane</h2>
<p>Leader <code id="leader">{leader}</code>, term <span id="term">{term}</span>; this node is <span id="raft-state">{raft_state}</span>.</p>
<table id="scores"><tr><th>Member</th><th>Role</th><th>Score</th></tr>{control}</table>
<p>API: <a href="/api/v1/status">status</a> · <a href="/api/v1/peers">peers</a> · <a href="/api/v1/leader">leader</a> · <a href="/api/v1/cluster">cluster state</a> · <a href="/api/v1/openapi.json">OpenAPI</a> · <a href="/metrics">metrics</a></p>
</body></html>"#,
        id = esc(me.node_id.as_str()),
        ver = esc(&me.version),
        up = me.uptime_secs,
        n = peers.len(),
        leader = esc(l.leader.as_deref().unwrap_or("none")),
        term = l.term,
        raft_state = esc(&l.state),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc = openapi_doc();
        for (method, path) in ROUTES {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} missing from the OpenAPI document"
            );
        }
        let paths: std::collections::BTreeSet<&str> = ROUTES.iter().map(|(_, p)| *p).collect();
        assert_eq!(doc["paths"].as_object().map(|m| m.len()), Some(paths.len()));
    }

    #[test]
    fn unspecified_api_addresses_take_the_announced_ip() {
        let addrs = vec!["/ip4/10.77.1.3/tcp/4140".to_owned()];
        assert_eq!(routable_api_addr("0.0.0.0:8080", &addrs), "10.77.1.3:8080");
        assert_eq!(routable_api_addr("10.0.0.9:8080", &addrs), "10.0.0.9:8080");
        assert_eq!(routable_api_addr("0.0.0.0:8080", &[]), "0.0.0.0:8080");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            esc("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }
}
