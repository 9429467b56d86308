//! The control plane over HTTP: roles (admin-signed changes), the
//! replicated key-value registry, already signed admin changes.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use bzzz_proto::NodeId;
use bzzz_proto::api::{Applied, RegistrySet};
use bzzz_proto::cluster::{AdminAction, AdminChange, RECORD_VERSION, RoleDef, Signed};
use serde_json::json;

use super::{Action, ApiError, Fixed, Operator, Permission, Res, Route, Shared, json, parse};

type S = State<Shared>;

pub fn routes() -> Vec<Route> {
    vec![
        Route::api(
            Method::GET,
            "/api/v1/roles",
            Permission::Need(Action::Read, Res::Is(Fixed::Cluster)),
            get(api_roles),
            json!(
            {"summary": "The role registry", "operationId": "roles",
                "responses": {"200": {"description": "name → role"}, "503": {"description": "Control plane not running"}}}),
        ),
        Route::api(
            Method::POST,
            "/api/v1/roles",
            Permission::Need(Action::Manage, Res::Is(Fixed::Roles)),
            post(api_role_put),
            json!(
            {"summary": "Create or replace a role (operator): threshold-signed admin change, committed through Raft", "operationId": "rolePut",
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["name", "authority"], "properties": {
                    "name": {"type": "string"}, "authority": {"type": "string", "enum": ["master", "decision", "coordination", "suggestion", "read_only"]},
                    "permissions": {"type": "array", "items": {"type": "string"}}, "reads": {"type": "array", "items": {"type": "string"}},
                    "members": {"type": "array", "items": {"type": "string"}}}}}}},
                "responses": {"200": {"description": "Applied"}, "422": {"description": "Invalid or refused"}, "503": {"description": "No leader"}}}),
        ),
        Route::api(
            Method::POST,
            "/api/v1/admin/changes",
            Permission::Need(Action::Manage, Res::Is(Fixed::Cluster)),
            post(api_admin_change),
            json!(
            {"summary": "Commit an already signed admin change ({body, signature}); refused (422) unless signed by the cluster admin key (operator)", "operationId": "adminChange",
                "responses": {"200": {"description": "Applied"}, "422": {"description": "Refused by the state machine"}, "503": {"description": "No leader"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/registry",
            Permission::Need(Action::Manage, Res::Is(Fixed::Cluster)),
            get(api_registry),
            json!(
            {"summary": "The cluster key-value registry (replicated through Raft)", "operationId": "registry",
                "responses": {"200": {"description": "key → value"}, "503": {"description": "Control plane not running"}}}),
        ),
        Route::api(
            Method::POST,
            "/api/v1/registry",
            Permission::Need(Action::Manage, Res::Is(Fixed::Cluster)),
            post(api_registry_set),
            json!(
            {"summary": "Set a registry key (operator); 200 once committed by a quorum", "operationId": "registrySet",
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["key", "value"], "properties": {
                    "key": {"type": "string", "maxLength": 256}, "value": {"type": "string", "maxLength": 16384}}}}}},
                "responses": {"200": {"description": "Committed"}, "422": {"description": "Invalid, or the registry is full"}, "503": {"description": "No quorum or no leader"}}}),
        ),
    ]
}

pub(super) fn control(st: &Shared) -> Result<&crate::control::Control, ApiError> {
    st.control
        .get()
        .map(|c| &**c)
        .ok_or_else(ApiError::no_control)
}

/// Proposes a signed admin change; 200 when every node applies it, 422 when
/// the state machine refuses it (the reason names why), 503 without a
/// leader.
pub async fn propose_admin(
    st: &Shared,
    control: &crate::control::Control,
    change: Signed,
) -> Result<Response, ApiError> {
    let r = control
        .propose(crate::access::audited_admin(st, change))
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    match r.rejected {
        Some(why) => Err(ApiError::invalid(why)),
        None => Ok(json(StatusCode::OK, &Applied { applied: true })),
    }
}

async fn api_roles(State(st): S) -> Result<Response, ApiError> {
    let c = control(&st)?;
    Ok(c.with_state(|s| json(StatusCode::OK, &s.roles)))
}

/// `POST /api/v1/roles` (operator): a role definition; signs an admin
/// change with the cluster key (threshold) and commits it.
async fn api_role_put(
    State(st): S,
    Operator(pw): Operator,
    body: Bytes,
) -> Result<Response, ApiError> {
    let role: RoleDef = parse(&body, "role")?;
    put_role(&st, &pw, role).await
}

/// Creates or replaces `role`: an admin change signed by the threshold
/// signers (who check the operator password `pw`), committed through
/// Raft with its audit entry.
pub async fn put_role(
    st: &Shared,
    pw: &bzzz_keys::OperatorKey,
    role: RoleDef,
) -> Result<Response, ApiError> {
    role.validate().map_err(ApiError::invalid)?;
    let control = control(st)?;
    let change = admin_change(st, control, AdminAction::PutRole { role }).await?;
    let signed = st.keys.sign_admin_change(&change, pw).await?;
    propose_admin(st, control, signed).await
}

/// An admin change of `action` for this cluster, with a `seq` after every
/// applied change and time-ordered across proposers (to be signed).
pub async fn admin_change(
    st: &Shared,
    control: &crate::control::Control,
    action: AdminAction,
) -> Result<AdminChange, ApiError> {
    let cluster = st
        .keys
        .cluster()
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "the cluster is not initialized yet"))?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if control.with_state(|s| s.cluster.is_none()) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the replicated state has not applied the cluster's genesis yet (right after setup); retry in a moment",
        ));
    }
    let role_keys = role_keys_for(st, control, &action).await?;
    Ok(AdminChange {
        v: RECORD_VERSION,
        cluster: cluster.genesis.cluster.clone(),
        seq: now_ms.max(control.with_state(|s| s.admin_seq) + 1),
        issued_at: bzzz_keys::unix_now(),
        action,
        role_keys,
    })
}

/// The key epochs an admin change must bring (SPEC §9): the first key of
/// every chain that has none (a new role, the members' chain), and the
/// next key of every chain the change takes a reader from (revocation
/// rotates the key). Each is sealed to the readers in reach; the others
/// get it later by a grant from a node that holds it.
///
/// A key is made on a reader of its chain (issue #22): here when this
/// node may read it, else by a reader in reach asked over the DHT
/// service, so that the node serving the operator's request, which may be
/// the reader being shut out, never sees the secret.
async fn role_keys_for(
    st: &Shared,
    control: &crate::control::Control,
    action: &AdminAction,
) -> Result<std::collections::BTreeMap<String, bzzz_proto::dht::RoleKey>, ApiError> {
    use std::collections::BTreeMap;
    let sim = crate::dht::simulate(crate::dht::key_state(control), action);
    let me = st.keys.node_id().clone();
    let recipients = crate::dht::recipients(&st.keys);
    let internal = |e: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e);
    let mut mine = Vec::new();
    // Chain → the readers in reach that may make its key, lowest id first.
    let mut theirs: BTreeMap<String, Vec<NodeId>> = BTreeMap::new();
    let mut nobody = Vec::new();
    for c in crate::dht::chains_needing_keys(&sim) {
        let readers = sim.chain_readers(&c);
        if readers.contains(&me) {
            mine.push(c);
            continue;
        }
        let makers: Vec<NodeId> = readers
            .into_iter()
            .filter(|n| recipients.contains_key(n))
            .collect();
        if makers.is_empty() {
            nobody.push(c);
        } else {
            theirs.insert(c, makers);
        }
    }
    let mut keys = BTreeMap::new();
    if !mine.is_empty() {
        keys.extend(
            crate::dht::make_role_keys(&sim, &mine, &recipients, Some(&me)).map_err(internal)?,
        );
    }
    // One request per maker: the first reader in reach of each chain,
    // the next one when it does not answer.
    while let Some(maker) = theirs.values().find_map(|m| m.first().cloned()) {
        let chains: Vec<String> = theirs
            .iter()
            .filter(|(_, m)| m.first() == Some(&maker))
            .map(|(c, _)| c.clone())
            .collect();
        let answer = crate::dht::ask_role_keys(&st.net, &maker, action, &chains)
            .await
            .and_then(|k| {
                crate::dht::check_made_keys(&sim, &chains, &k, &recipients, &maker).map(|()| k)
            });
        match answer {
            Ok(k) => {
                keys.extend(k);
                theirs.retain(|c, _| !chains.contains(c));
            }
            Err(e) => {
                tracing::warn!(%maker, ?chains, "a reader did not make the new role keys: {e}");
                for c in &chains {
                    if let Some(m) = theirs.get_mut(c) {
                        m.remove(0);
                        // A rotation must happen (the change takes a
                        // reader away): sealed to nobody, like one no
                        // reader is in reach for. A first key waits.
                        if m.is_empty() && sim.role_keys.contains_key(c) {
                            nobody.push(c.clone());
                            theirs.remove(c);
                        } else if m.is_empty() {
                            return Err(ApiError::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!(
                                    "no reader of {c:?} in reach made its new key (last: {maker}: {e}); retry"
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
    // A chain's first key that no reader in reach can hold would be lost
    // (grants come from holders): it is made at the chain's first write
    // instead. A rotation is made even so, sealed to nobody: writers only
    // need its public key, and the former readers must not read what
    // follows.
    let rotations: Vec<String> = nobody
        .into_iter()
        .filter(|c| sim.role_keys.contains_key(c))
        .collect();
    if !rotations.is_empty() {
        keys.extend(
            crate::dht::make_role_keys(&sim, &rotations, &recipients, None).map_err(internal)?,
        );
    }
    Ok(keys)
}

/// `POST /api/v1/admin/changes` (operator): commits an already signed admin
/// change (`{"body": …, "signature": …}`) as is. Every node checks the
/// signature when applying it; an unsigned or forged one is refused (422).
async fn api_admin_change(
    State(st): S,
    p: super::Principal,
    body: Bytes,
) -> Result<Response, ApiError> {
    let change: Signed = parse(&body, "signed change")?;
    let r = control(&st)?
        .propose(crate::access::audited_admin_by(&st, p.id(), change))
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    match r.rejected {
        Some(why) => Err(ApiError::invalid(why)),
        None => Ok(json(StatusCode::OK, &Applied { applied: true })),
    }
}

/// `GET /api/v1/registry`: the cluster's key-value registry (operations
/// data, replicated through Raft).
async fn api_registry(State(st): S) -> Result<Response, ApiError> {
    let c = control(&st)?;
    Ok(c.with_state(|s| json(StatusCode::OK, &s.kv)))
}

/// `POST /api/v1/registry` (operator): sets a key; 200 only once the write
/// is committed by a quorum (acknowledged), 503 when no quorum is reachable.
async fn api_registry_set(
    State(st): S,
    p: super::Principal,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: RegistrySet = parse(&body, "registry write")?;
    let cmd = crate::access::audited(
        &st,
        p.id(),
        Action::Manage,
        &bzzz_proto::access::Resource::CLUSTER,
        bzzz_control::raft::Command::Set {
            key: b.key,
            value: b.value,
        },
    );
    let r = control(&st)?
        .propose(cmd)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    match r.rejected {
        Some(why) => Err(ApiError::invalid(why)),
        None => Ok(json(
            StatusCode::OK,
            &json!({ "committed": true, "previous": r.previous }),
        )),
    }
}
