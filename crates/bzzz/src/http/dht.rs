//! The DHT over HTTP (SPEC §7): put (operator; this node is the author),
//! get with temporal segments, history, listing by pattern, the raw
//! record (ciphertext, for audits), and what this node holds.
//!
//! Every route answers by the caller's rights, never by this node's: the
//! guard checks the caller's roles against the address (a role reads its
//! own records and those of the roles its `reads` names; admin reads
//! all). A permitted caller asking a node that holds no key of the
//! record's role gets the read forwarded to a node that does, with the
//! caller's own credential, which that node checks again (decision in
//! `docs/security.md`: no node vouches for a caller, and no key material
//! leaves the nodes that hold it). Writes are recorded in the audit log
//! with the principal before they are made.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use base64::Engine as _;
use bzzz_dht::{DhtError, Signer};
use bzzz_proto::cluster::AdminAction;
use bzzz_proto::dht::{PutRequest, PutResult, RecordView};
use bzzz_proto::ucxl::Address;
use serde::Deserialize;
use serde_json::json;

use axum::http::HeaderMap;
use axum::response::IntoResponse;
use bzzz_proto::access::Resource;

use super::{Action, ApiError, Fixed, Permission, Principal, Res, Route, Shared, json, parse};

type S = State<Shared>;

pub fn routes() -> Vec<Route> {
    let addr_param =
        json!([{"name": "address", "in": "query", "required": true, "schema": {"type": "string"}}]);
    vec![
        Route::api(
            Method::POST,
            "/api/v1/dht/put",
            Permission::Need(Action::Write, Res::AddressInBody),
            post(api_put),
            json!({"summary": "Write the next version of a UCXL address (operator); this node is the author and must be a member of the address's role (the admin role: threshold admin signature)", "operationId": "dhtPut",
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["address"], "properties": {"address": {"type": "string"}, "value": {"type": "string"}, "value_base64": {"type": "string"}}}}}},
                "responses": {"200": {"description": "{address, version, stored_at}"}, "403": {"description": "Not a member of the role"}, "422": {"description": "Bad address or value (over 256 KiB)"}, "503": {"description": "No quorum of holders"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/dht/get",
            Permission::Need(Action::Read, Res::AddressInQuery),
            get(api_get),
            json!({"summary": "Read a record: the address's temporal segment picks the version (*^ latest, *~ first, *~N, ~~N, ^^N, an ISO time)", "operationId": "dhtGet",
                "parameters": addr_param,
                "responses": {"200": {"description": "{address, version, author, timestamp, role, readable_by, value | value_base64}"}, "403": {"description": "This node's roles cannot read it: {error, readable_by}"}, "404": {"description": "No such record or version"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/dht/history",
            Permission::Need(Action::Read, Res::AddressInQuery),
            get(api_history),
            json!({"summary": "Every version of an address: [{version, author, timestamp}]", "operationId": "dhtHistory",
                "parameters": addr_param,
                "responses": {"200": {"description": "Oldest first"}, "404": {"description": "No such record"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/dht/ls",
            Permission::Need(Action::Read, Res::Is(Fixed::Cluster)),
            get(api_ls),
            json!({"summary": "Records whose address matches a pattern (`any` components, `*` and `**` path segments), asked of every member", "operationId": "dhtLs",
                "parameters": [{"name": "pattern", "in": "query", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "[{address, version, author, timestamp_ms, role}]"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/dht/raw",
            Permission::Need(Action::Read, Res::AddressInQuery),
            get(api_raw),
            json!({"summary": "A record as stored (signed envelope, payload sealed), and whether any key this node holds opens it", "operationId": "dhtRaw",
                "parameters": addr_param,
                "responses": {"200": {"description": "{envelope, body, opens_here, keys_tried}"}, "404": {"description": "No such record"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/dht/local",
            Permission::Need(Action::Read, Res::Is(Fixed::Cluster)),
            get(api_local),
            json!({"summary": "Records this node stores (heads and versions)", "operationId": "dhtLocal",
                "responses": {"200": {"description": "[{key, address, version, head}]"}}}),
        ),
    ]
}

/// The HTTP answer for a DHT error (403 names the roles that read).
pub fn dht_error(e: DhtError) -> Response {
    let (code, extra) = match &e {
        DhtError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, None),
        DhtError::Forbidden { readable_by, .. } => {
            (StatusCode::FORBIDDEN, Some(readable_by.clone()))
        }
        DhtError::NotFound(_) => (StatusCode::NOT_FOUND, None),
        DhtError::NeedsKey(_) | DhtError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
    };
    match extra {
        Some(roles) => json(code, &json!({"error": e.to_string(), "readable_by": roles})),
        None => json(code, &json!({"error": e.to_string()})),
    }
}

#[derive(Debug, Deserialize)]
struct AddrQuery {
    address: String,
}

#[derive(Debug, Deserialize)]
struct PatternQuery {
    pattern: String,
}

#[allow(clippy::result_large_err)]
fn address(s: &str) -> Result<Address, Response> {
    s.parse::<Address>()
        .map_err(|e| dht_error(DhtError::Invalid(e.to_string())))
}

/// Brings the DHT's roles and keys up to date with the applied state.
fn sync(st: &Shared) {
    if let Some(c) = st.control.get() {
        crate::dht::sync(&st.dht, &st.keys, c);
    }
}

/// A record as a reader sees it.
pub fn view(st: &Shared, o: &bzzz_dht::Opened) -> RecordView {
    let authz = st.dht.authz();
    let (value, value_base64) = match std::str::from_utf8(&o.value) {
        Ok(t) => (Some(t.to_owned()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(&o.value)),
        ),
    };
    RecordView {
        address: o
            .record
            .body
            .address
            .replacen("/*^", &format!("/*~{}", o.record.body.version), 1),
        version: o.record.body.version,
        author: o.record.body.author.clone(),
        timestamp: bzzz_dht::rfc3339(o.record.body.timestamp_ms),
        timestamp_ms: o.record.body.timestamp_ms,
        role: o.record.role().to_owned(),
        readable_by: bzzz_dht::readable_by(&authz, &o.record),
        value,
        value_base64,
    }
}

async fn api_put(State(st): S, p: Principal, body: Bytes) -> Result<Response, Response> {
    let req: PutRequest = parse(&body, "put").map_err(IntoResponse::into_response)?;
    let addr = address(&req.address)?;
    let caller = p.caller().ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "credential required").into_response()
    })?;
    // Admin records and a role's first key are signed by the threshold
    // admin key, whose signers check the operator password.
    let pw = caller.operator.clone();
    let value = match (&req.value, &req.value_base64) {
        (Some(v), None) => v.as_bytes().to_vec(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| dht_error(DhtError::Invalid("value_base64 is not base64".into())))?,
        _ => {
            return Err(dht_error(DhtError::Invalid(
                "give exactly one of value and value_base64".into(),
            )));
        }
    };
    crate::access::record(
        &st,
        &caller.id,
        Action::Write,
        &Resource::Ucxl(addr.clone()),
    )
    .await
    .map_err(IntoResponse::into_response)?;
    write_record(&st, pw, &addr, &value).await
}

/// Writes `value` at `addr` as this node (a role's record) or with the
/// threshold admin signature (an admin record; `pw`: the operator's key),
/// making the chain's first key when it has none.
pub async fn write_record(
    st: &Shared,
    pw: Option<bzzz_keys::OperatorKey>,
    addr: &Address,
    value: &[u8],
) -> Result<Response, Response> {
    let st = st.clone();
    let (addr, value) = (addr.clone(), value.to_vec());
    let need_pw = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "this write needs the threshold admin signature, whose signers check the operator password: use the operator credential (user admin)",
        )
        .into_response()
    };
    sync(&st);
    let is_admin =
        addr.role == bzzz_proto::ucxl::Component::Name(bzzz_proto::dht::ADMIN_ROLE.into());
    let mut made_key = false;
    loop {
        let signer = if is_admin {
            let keys = st.keys.clone();
            let pw = pw.clone().ok_or_else(need_pw)?;
            Signer::Admin(Box::new(move |msg: Vec<u8>| {
                Box::pin(async move {
                    let sig = keys
                        .sign_message(msg, &pw, None)
                        .await
                        .map_err(|e| e.to_string())?;
                    hex::decode(&sig.signature)
                        .ok()
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| "bad signature".to_owned())
                })
            }))
        } else {
            Signer::Node
        };
        match st.dht.put(&addr, &value, signer).await {
            Ok((c, stored_at)) => {
                return Ok(json(
                    StatusCode::OK,
                    &PutResult {
                        address: c.body.address,
                        version: c.body.version,
                        stored_at,
                    },
                ));
            }
            // The role (or the members' chain) has no key yet: make its
            // first one with an admin change, then write.
            Err(DhtError::NeedsKey(chain)) if !made_key => {
                made_key = true;
                let control = super::control::control(&st)
                    .map_err(axum::response::IntoResponse::into_response)?;
                let change = super::control::admin_change(&st, control, AdminAction::RoleKeys {})
                    .await
                    .map_err(axum::response::IntoResponse::into_response)?;
                if change.role_keys.is_empty() {
                    return Err(dht_error(DhtError::Unavailable(format!(
                        "no reader of {chain:?} is in reach to hold its first key; try again when one is"
                    ))));
                }
                let pw = pw.as_ref().ok_or_else(need_pw)?;
                let signed =
                    st.keys.sign_admin_change(&change, pw).await.map_err(|e| {
                        axum::response::IntoResponse::into_response(ApiError::from(e))
                    })?;
                super::control::propose_admin(&st, control, signed)
                    .await
                    .map_err(axum::response::IntoResponse::into_response)?;
                // The local view of roles and keys follows the state.
                sync(&st);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(dht_error(e)),
        }
    }
}

async fn api_get(
    State(st): S,
    headers: HeaderMap,
    Query(q): Query<AddrQuery>,
) -> Result<Response, Response> {
    let addr = address(&q.address)?;
    sync(&st);
    match st.dht.get(&addr).await {
        Ok(o) => Ok(json(StatusCode::OK, &view(&st, &o))),
        // The caller may read it (the guard checked), this node cannot:
        // a node that holds the role's key answers, by the caller's
        // rights.
        Err(e @ DhtError::Forbidden { .. })
            if !headers.contains_key(super::inference::HOP) && bearer(&headers) =>
        {
            match forward_get(&st, &headers, &addr).await {
                Some(r) => Ok(r),
                None => Err(dht_error(e)),
            }
        }
        Err(e) => Err(dht_error(e)),
    }
}

/// Whether the caller used an API key: only those are forwarded (a
/// password never leaves the node it was sent to).
fn bearer(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("Bearer "))
}

/// Asks the readers of `addr`'s key chain in reach for the record, with
/// the caller's own `Authorization`; the first answer that is not a
/// transport failure is passed through.
async fn forward_get(st: &Shared, headers: &HeaderMap, addr: &Address) -> Option<Response> {
    let chain = bzzz_proto::dht::chain_of(addr)?;
    let readers = st.control.get()?.with_state(|s| s.chain_readers(&chain));
    let me = st.net.local_id().clone();
    let q = serde_urlencoded::to_string([("address", addr.to_string())]).ok()?;
    for node in readers.into_iter().filter(|n| *n != me) {
        let Some(api) = super::inference::api_of(st, &node) else {
            continue;
        };
        let (base, peer) = crate::tls::peer(&api);
        let mut req = peer
            .as_ref()
            .unwrap_or_else(|| super::inference::client())
            .get(format!("{base}/api/v1/dht/get?{q}"))
            .header(super::inference::HOP, "1")
            .timeout(Duration::from_secs(20));
        if let Some(a) = headers.get(axum::http::header::AUTHORIZATION) {
            req = req.header(axum::http::header::AUTHORIZATION, a.clone());
        }
        let Ok(resp) = req.send().await else {
            continue;
        };
        let code = StatusCode::from_u16(resp.status().as_u16()).ok()?;
        if code.is_server_error() {
            continue;
        }
        let body = resp.bytes().await.ok()?;
        return Some(super::no_store(
            (
                code,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
        ));
    }
    None
}

async fn api_history(State(st): S, Query(q): Query<AddrQuery>) -> Result<Response, Response> {
    let addr = address(&q.address)?;
    let h = st.dht.history(&addr).await.map_err(dht_error)?;
    Ok(json(StatusCode::OK, &h))
}

async fn api_ls(State(st): S, Query(q): Query<PatternQuery>) -> Result<Response, Response> {
    let p = address(&q.pattern)?;
    let l = st.dht.ls(&p).await.map_err(dht_error)?;
    Ok(json(StatusCode::OK, &l))
}

async fn api_raw(State(st): S, Query(q): Query<AddrQuery>) -> Result<Response, Response> {
    let addr = address(&q.address)?;
    sync(&st);
    let c = st.dht.resolve(&addr).await.map_err(dht_error)?;
    let (opens, tried) = st.dht.any_key_opens(&c);
    Ok(json(
        StatusCode::OK,
        &json!({
            "envelope": c.envelope,
            "body": c.body,
            "opens_here": opens,
            "keys_tried": tried,
        }),
    ))
}

async fn api_local(State(st): S) -> Response {
    let mut out = Vec::new();
    st.dht.store().scan(|key, value| {
        if let Ok(env) = serde_json::from_slice::<bzzz_proto::dht::Envelope>(value)
            && let Ok(body) = serde_json::from_str::<bzzz_proto::dht::RecordBody>(&env.body)
        {
            let head = body
                .address
                .parse::<Address>()
                .is_ok_and(|a| bzzz_dht::record::head_key(&a) == key);
            out.push(json!({
                "key": hex::encode(key),
                "address": body.address,
                "version": body.version,
                "head": head,
            }));
        }
        out.len() < 100_000
    });
    json(StatusCode::OK, &out)
}
