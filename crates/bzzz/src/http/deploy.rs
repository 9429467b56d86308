//! SSH deployment over HTTP (SPEC §4).
//!
//! - `POST /api/v1/deploy` (operator) starts a run → `202 {id}`.
//! - `GET /api/v1/deploy/{id}/events` (operator) streams its events as
//!   Server-Sent Events: every event so far, then live ones; each `data:`
//!   is one JSON object with `host` and `state`; the stream ends with
//!   `event: done` carrying the per-host outcomes.
//! - `POST /api/v1/deploy/scan` (operator) reads hosts' SSH host-key
//!   fingerprints (no login), for the operator to confirm.
//! - `GET /api/v1/deploy/{id}/binary?token=…` serves this node's binary to
//!   the run's hosts while the run lasts.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bzzz_deploy::job::Event;
use serde::Deserialize;
use serde_json::json;

use super::{Action, ApiError, Operator, Permission, Res, Route, Shared, json, no_store, parse};
use crate::deploy::{DeployRequest, StartError, lock, pinned};

type S = State<Shared>;

/// A deploy request carries a private key and a known_hosts text.
const DEPLOY_BODY_LIMIT: usize = 2 << 20;

pub fn routes() -> Vec<Route> {
    use Permission::DeployToken;
    vec![
        Route::api(Method::POST, "/api/v1/deploy", Permission::Need(Action::Deploy, Res::AllNodes), post(api_deploy), json!(
            {"summary": "Deploy BZZZ to hosts over SSH, or remove it (operator). Body: hosts, ssh_user, ssh_port, ssh_key | ssh_password, ssh_key_passphrase, known_hosts, accept_new_host_keys, confirmed_fingerprints, prefix, http_port, p2p_port, mdns, parallel, uninstall, join_timeout_secs", "operationId": "deployStart",
                "responses": {"202": {"description": "Started: id, hosts, events (the event stream's path)"}, "409": {"description": "This node is not in a cluster yet"}, "422": {"description": "Invalid request (named)"}}}))
        .body_limit(DEPLOY_BODY_LIMIT),
        Route::api(Method::POST, "/api/v1/deploy/scan", Permission::Need(Action::Deploy, Res::AllNodes), post(api_scan), json!(
            {"summary": "Read hosts' SSH host-key fingerprints without logging in (operator). Body: hosts, ssh_port", "operationId": "deployScan",
                "responses": {"200": {"description": "hosts: [{host, fingerprint, pinned, changed} | {host, error}]"}}})),
        Route::api(Method::GET, "/api/v1/deploy/{id}/events", Permission::Need(Action::Deploy, Res::AllNodes), get(api_events), json!(
            {"summary": "A deploy run's progress as Server-Sent Events (operator): every event so far, then live ones; data = {host, state, message?, cause?, fingerprint?, trust?, node_id?, changed?, elapsed_ms}; ends with `event: done` (ok, outcomes)", "operationId": "deployEvents",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "text/event-stream"}, "404": {"description": "No such run"}}})),
        Route::api(Method::GET, "/api/v1/deploy/{id}/binary", DeployToken, get(api_binary), json!(
            {"summary": "This node's binary for a deploy run's hosts (query: token, the run's random download token); only while the run lasts", "operationId": "deployBinary",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}, {"name": "token", "in": "query", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "application/octet-stream"}, "401": {"description": "No token"}, "404": {"description": "No such run, it ended, or a wrong token"}}})),
    ]
}

async fn api_deploy(
    State(st): S,
    Operator(password): Operator,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: DeployRequest = parse(&body, "deploy request")?;
    crate::access::record(
        &st,
        bzzz_proto::access::ADMIN_USER,
        Action::Deploy,
        &bzzz_proto::access::Resource::Node("*".into()),
    )
    .await?;
    match crate::deploy::start(st.clone(), password, req).await {
        Ok(s) => Ok(json(
            StatusCode::ACCEPTED,
            &bzzz_proto::api::DeployStarted {
                events: format!("/api/v1/deploy/{}/events", s.id),
                id: s.id,
                hosts: s.hosts,
            },
        )),
        Err(StartError::Invalid(e)) => Err(ApiError::invalid(e)),
        Err(StartError::NotInitialized) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "this node is not in a cluster yet: finish /setup first",
        )),
        Err(StartError::Internal(e)) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

async fn api_events(
    State(st): S,
    _: super::Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let run = st
        .deploys
        .get(&id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such deploy run"))?;
    let stream = futures::stream::unfold((run, 0usize, false), |(run, next, done)| async move {
        if done {
            return None;
        }
        let mut rx = run.tick.subscribe();
        loop {
            let batch: Vec<Event> = lock(&run.events)[next..].to_vec();
            if !batch.is_empty() {
                let n = next + batch.len();
                let evs: Vec<Result<SseEvent, Infallible>> = batch
                    .iter()
                    .filter_map(|e| serde_json::to_string(e).ok())
                    .map(|data| Ok(SseEvent::default().data(data)))
                    .collect();
                return Some((futures::stream::iter(evs), (run, n, false)));
            }
            let outcomes = lock(&run.outcomes).clone();
            if let Some(outcomes) = outcomes {
                let done = bzzz_deploy::job::Done {
                    ok: outcomes.iter().all(|o| o.ok),
                    outcomes,
                };
                let ev = SseEvent::default()
                    .event("done")
                    .data(serde_json::to_string(&done).unwrap_or_default());
                return Some((futures::stream::iter(vec![Ok(ev)]), (run, next, true)));
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    });
    let stream = futures::StreamExt::flatten(stream);
    Ok(no_store(
        Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
            .into_response(),
    ))
}

#[derive(Deserialize)]
struct BinaryQuery {
    #[serde(default)]
    token: Option<String>,
}

/// The binary for a run's hosts (they fetch it with curl or wget and check
/// its SHA-256, received over SSH). Authorized by the run's random token,
/// served only while the run lasts. The binary is not secret; the token
/// keeps the endpoint from serving tens of megabytes to anyone who asks.
/// The bytes are shared, not copied, per download.
async fn api_binary(
    State(st): S,
    Path(id): Path<String>,
    Query(q): Query<BinaryQuery>,
) -> Result<Response, ApiError> {
    let Some(token) = q.token.filter(|t| !t.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the run's download token is required (?token=…)",
        ));
    };
    let run = st.deploys.get(&id);
    let payload = run.as_ref().and_then(|r| {
        use subtle::ConstantTimeEq as _;
        let ok = bool::from(token.as_bytes().ct_eq(r.download_token.as_bytes()));
        if ok { lock(&r.payload).clone() } else { None }
    });
    match payload {
        Some(p) => Ok(no_store(
            (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                p.binary.clone(),
            )
                .into_response(),
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no such deploy run, or it has ended",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanRequest {
    hosts: String,
    #[serde(default = "default_ssh_port")]
    ssh_port: u16,
}

fn default_ssh_port() -> u16 {
    22
}

async fn api_scan(State(st): S, _: super::Principal, body: Bytes) -> Result<Response, ApiError> {
    let req: ScanRequest = parse(&body, "scan request")?;
    let hosts = bzzz_deploy::parse_hosts(&req.hosts)
        .map_err(|e| ApiError::invalid(format!("hosts: {e}")))?;
    let pins = pinned(&st);
    let scans = hosts.iter().map(|h| {
        let h = h.clone();
        let pin = pins.get(&format!("{h}:{}", req.ssh_port)).cloned();
        async move {
            match bzzz_deploy::ssh::scan_host_key(&h, req.ssh_port, Duration::from_secs(5)).await {
                Ok(fp) => json!({"host": h, "fingerprint": fp, "pinned": pin.as_deref() == Some(fp.as_str()),
                    "changed": pin.as_ref().is_some_and(|p| *p != fp)}),
                Err(e) => json!({"host": h, "error": e.to_string()}),
            }
        }
    });
    let results = futures::future::join_all(scans).await;
    Ok(json(StatusCode::OK, &json!({"hosts": results})))
}
