//! Members and key custody over HTTP: the member list (`member`, `gone`,
//! `removed`, share index, Raft role), member removal (an admin-signed
//! revocation committed through Raft; the rest re-deal at once), and the
//! key policy (`majority` or `fixed:T`; changing it re-deals).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{delete, get, post};
use bzzz_proto::NodeId;
use bzzz_proto::api::{MemberView, PolicyRequest};
use bzzz_proto::cluster::{AdminAction, KeyPolicy};
use serde_json::json;

use super::{Action, ApiError, Fixed, Operator, Permission, Res, Route, Shared, json, parse};

type S = State<Shared>;

pub fn routes() -> Vec<Route> {
    vec![
        Route::api(
            Method::GET,
            "/api/v1/members",
            Permission::Need(Action::Read, Res::Is(Fixed::Cluster)),
            get(api_members),
            json!({"summary": "Cluster members as this node sees them: state (member, gone, removed), share index in the current key epoch, Raft role", "operationId": "members",
                "responses": {"200": {"description": "[{node_id, state, share_index, raft, this_node, gone_secs}]"}}}),
        ),
        Route::api(
            Method::DELETE,
            "/api/v1/members/{id}",
            Permission::Need(Action::Manage, Res::Is(Fixed::Members)),
            delete(api_member_remove),
            json!({"summary": "Remove a member for good (operator): an admin-signed (threshold) revocation committed through Raft; every node refuses it, Raft drops it, the admin key is re-dealt without it", "operationId": "memberRemove",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "{node_id, removed}"}, "404": {"description": "Not a member"}, "422": {"description": "Refused (e.g. this node itself)"}, "503": {"description": "Too few share holders or no leader"}}}),
        ),
        Route::api(
            Method::POST,
            "/api/v1/members/{id}/approve",
            Permission::Need(Action::Manage, Res::Is(Fixed::Members)),
            post(api_member_approve),
            json!({"summary": "Approve a pending member (admitted by a multi-use join token) as a share holder (operator): an admin-signed approval committed through Raft; the admin key is then re-dealt to it", "operationId": "memberApprove",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "{node_id, approved, already}"}, "404": {"description": "Not a member"}, "422": {"description": "Not pending"}, "503": {"description": "Too few share holders or no leader"}}}),
        ),
        Route::api(
            Method::POST,
            "/api/v1/keys/policy",
            Permission::Need(Action::Manage, Res::Is(Fixed::Cluster)),
            post(api_policy),
            json!({"summary": "Change the admin key's threshold policy (operator): `majority` or `fixed:T`; the key is re-dealt in a new epoch", "operationId": "keysPolicy",
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["policy"], "properties": {"policy": {"type": "string"}}}}}},
                "responses": {"200": {"description": "The key status after the change"}, "422": {"description": "Not a policy"}, "503": {"description": "Too few holders reachable"}}}),
        ),
    ]
}

/// When this process last saw each node (for "gone for N h"); counts
/// from the process start for nodes it never saw.
static SEEN: LazyLock<Mutex<(Instant, BTreeMap<NodeId, Instant>)>> =
    LazyLock::new(|| Mutex::new((Instant::now(), BTreeMap::new())));

/// Every member this node knows of: itself, the peers in its view, the
/// key epoch's holders, Raft's voters and learners, the inventory, and
/// removed members.
pub fn member_views(st: &Shared) -> Vec<MemberView> {
    let me = st.net.local_id().clone();
    let snap = st.net.snapshot();
    let in_sight: BTreeSet<NodeId> = snap
        .peers
        .iter()
        .filter(|p| p.proven)
        .map(|p| p.announcement.node_id.clone())
        .chain([me.clone()])
        .collect();
    let holders = st.keys.holders();
    let pending = st.keys.pending_members();
    let index_of = |n: &NodeId| holders.iter().find(|(_, h)| *h == n).map(|(i, _)| *i);
    let mut all: BTreeSet<NodeId> = in_sight.clone();
    all.extend(holders.values().cloned());
    let mut roles: BTreeMap<NodeId, &'static str> = BTreeMap::new();
    let mut removed = st.keys.removed();
    if let Some(c) = st.control.get() {
        let m = c.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership().clone();
        let addr = |id: u64| mem.get_node(&id).and_then(|n| NodeId::parse(&n.addr).ok());
        for v in mem.learner_ids() {
            if let Some(n) = addr(v) {
                roles.insert(n, "learner");
            }
        }
        for v in mem.voter_ids() {
            if let Some(n) = addr(v) {
                let role = if m.current_leader == Some(v) {
                    "leader"
                } else {
                    "voter"
                };
                roles.insert(n, role);
            }
        }
        all.extend(roles.keys().cloned());
        c.with_state(|s| {
            all.extend(s.nodes.keys().cloned());
            for (n, r) in &s.removed {
                removed.entry(n.clone()).or_insert_with(|| r.clone());
            }
        });
    }
    all.extend(removed.keys().cloned());
    let now = Instant::now();
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    for n in &in_sight {
        seen.1.insert(n.clone(), now);
    }
    let start = seen.0;
    all.into_iter()
        .map(|n| {
            let state = if removed.contains_key(&n) {
                "removed"
            } else if pending.contains(&n) && index_of(&n).is_none() {
                "pending"
            } else if in_sight.contains(&n) {
                "member"
            } else {
                "gone"
            };
            let gone_secs = (state == "gone").then(|| {
                now.duration_since(*seen.1.get(&n).unwrap_or(&start))
                    .as_secs()
            });
            MemberView {
                share_index: if state == "removed" {
                    None
                } else {
                    index_of(&n)
                },
                raft: roles.get(&n).copied().unwrap_or("none").to_owned(),
                this_node: n == me,
                gone_secs,
                state: state.to_owned(),
                node_id: n,
            }
        })
        .collect()
}

async fn api_members(State(st): S) -> Response {
    json(StatusCode::OK, &member_views(&st))
}

async fn api_member_remove(
    State(st): S,
    Operator(pw): Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = remove_member(&st, &pw, &id).await?;
    Ok(json(StatusCode::OK, &r))
}

/// Removes a member: signs the revocation (threshold) and commits it.
pub async fn remove_member(
    st: &Shared,
    pw: &bzzz_keys::OperatorKey,
    id: &str,
) -> Result<serde_json::Value, ApiError> {
    let node = NodeId::parse(id)
        .map_err(|e| ApiError::invalid(format!("{id:?} is not a node id: {e}")))?;
    if &node == st.net.local_id() {
        return Err(ApiError::invalid(
            "a node cannot remove itself; ask another member's API",
        ));
    }
    let views = member_views(st);
    let Some(v) = views.iter().find(|v| v.node_id == node) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{node} is not a member of this cluster"),
        ));
    };
    if v.state == "removed" {
        return Ok(json!({"node_id": node, "removed": true, "already": true}));
    }
    let control = st.control.get().ok_or_else(ApiError::no_control)?;
    let change = super::control::admin_change(
        st,
        control,
        AdminAction::RemoveMember {
            node_id: node.clone(),
        },
    )
    .await?;
    let signed = st.keys.sign_admin_change(&change, pw).await?;
    // The signed removal stays valid: through a leader change or a slow
    // answer, propose it again for a while (a replay of one that did
    // commit is refused by seq, and then found in the state).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match control
            .propose(crate::access::audited_admin(st, signed.clone()))
            .await
        {
            Ok(r) => match r.rejected {
                None => break,
                Some(_) if control.with_state(|s| s.removed.contains_key(&node)) => break,
                Some(why) => return Err(ApiError::invalid(why)),
            },
            Err(_) if std::time::Instant::now() < until => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e)),
        }
    }
    tracing::info!(%node, "member removed by the operator");
    Ok(json!({"node_id": node, "removed": true, "already": false}))
}

async fn api_member_approve(
    State(st): S,
    Operator(key): Operator,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &approve_member(&st, &key, &id).await?))
}

/// Approves a pending member as a share holder: signs the approval
/// (threshold) and commits it; the leader's custody planner then
/// re-deals the admin key to it.
pub async fn approve_member(
    st: &Shared,
    key: &bzzz_keys::OperatorKey,
    id: &str,
) -> Result<serde_json::Value, ApiError> {
    let node = NodeId::parse(id)
        .map_err(|e| ApiError::invalid(format!("{id:?} is not a node id: {e}")))?;
    let control = st.control.get().ok_or_else(ApiError::no_control)?;
    if control.with_state(|s| s.approved.contains_key(&node)) {
        return Ok(json!({"node_id": node, "approved": true, "already": true}));
    }
    let views = member_views(st);
    match views.iter().find(|v| v.node_id == node) {
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("{node} is not a member of this cluster (or not in this node's view)"),
            ));
        }
        Some(v) if v.state != "pending" => {
            return Err(ApiError::invalid(format!(
                "{node} is not pending (state {}): only members admitted by a multi-use token wait for approval",
                v.state
            )));
        }
        Some(_) => {}
    }
    let change = super::control::admin_change(
        st,
        control,
        AdminAction::ApproveMember {
            node_id: node.clone(),
        },
    )
    .await?;
    let signed = st.keys.sign_admin_change(&change, key).await?;
    let r = crate::access::propose(st, crate::access::audited_admin(st, signed)).await?;
    if let Some(why) = r.rejected {
        return Err(ApiError::invalid(why));
    }
    tracing::info!(%node, "pending member approved as a share holder by the operator");
    Ok(json!({"node_id": node, "approved": true, "already": false}))
}

async fn api_policy(
    State(st): S,
    Operator(pw): Operator,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: PolicyRequest = parse(&body, "policy")?;
    let policy: KeyPolicy = req.policy.parse().map_err(ApiError::invalid)?;
    let control = st.control.get().ok_or_else(ApiError::no_control)?;
    crate::access::record(
        &st,
        bzzz_proto::access::ADMIN_USER,
        super::Action::Manage,
        &bzzz_proto::access::Resource::Fixed(super::Fixed::Cluster),
    )
    .await?;
    if let Some(plan) = st.keys.next_plan(Some(policy))? {
        let record = st.keys.run_redeal(plan, Some(&pw)).await?;
        control
            .commit_epoch(&st.keys, record)
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    }
    Ok(json(StatusCode::OK, &st.keys.status()))
}
