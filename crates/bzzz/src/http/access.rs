//! Access control over HTTP (SPEC §9): users, API keys, who am I, the
//! audit log, and the cluster switch for anonymous inference.
//!
//! Every change to users and keys commits in one Raft command with its
//! audit entry; the state machine applies the escalation rule against the
//! principal the entry names (no principal grants a role it lacks).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{delete, get, post};
use bzzz_control::access::AccessChange;
use bzzz_crypto::operator::OperatorPassword;
use bzzz_proto::access::{
    ADMIN_USER, ApiKeyCreate, ApiKeyCreated, ApiKeyRecord, Resource, UserAdd, UserRecord, UserView,
};
use bzzz_proto::cluster::AdminAction;
use serde::Deserialize;
use serde_json::json;

use super::{
    Action, ApiError, Fixed, Operator, Permission, Principal, Res, Route, Shared, authorize, json,
    parse,
};

type S = State<Shared>;

/// Most audit entries one request returns.
pub const AUDIT_PAGE: usize = 1000;

pub fn routes() -> Vec<Route> {
    use Permission::{Need, Principal as Any};
    let users = Need(Action::Manage, Res::Is(Fixed::Users));
    let audit = Need(Action::Read, Res::Is(Fixed::Audit));
    vec![
        Route::api(
            Method::GET,
            "/api/v1/whoami",
            Any,
            get(api_whoami),
            json!({"summary": "The caller: principal (admin, user:NAME, key:ID) and roles", "operationId": "whoami",
                "responses": {"200": {"description": "{principal, roles}"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/users",
            users,
            get(api_users),
            json!({"summary": "Users (the operator, admin, first) with their roles; never a password or verifier", "operationId": "userList",
                "responses": {"200": {"description": "[{name, roles, created_at, created_by}]"}}}),
        ),
        Route::api(
            Method::POST,
            "/api/v1/users",
            users,
            post(api_user_add),
            json!({"summary": "Add or replace a user (name, roles, password of at least 12 characters); the caller must hold every role it grants", "operationId": "userAdd",
                "responses": {"200": {"description": "{name, roles}"}, "403": {"description": "A role the caller lacks"}, "422": {"description": "Bad name, role or password"}, "503": {"description": "No quorum: nothing changed"}}}),
        ),
        Route::api(
            Method::DELETE,
            "/api/v1/users/{name}",
            users,
            delete(api_user_rm),
            json!({"summary": "Remove a user (its keys stop working at once)", "operationId": "userRemove",
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "{name, removed}"}, "404": {"description": "No such user"}}}),
        ),
        Route::api(
            Method::POST,
            "/api/v1/users/{name}/password",
            Any,
            post(api_user_passwd),
            json!({"summary": "Change a user's password ({password}, at least 12 characters): your own, or any user's with manage on users and every role it holds; its sessions and cached logins end on every node. For admin (the operator, with the current password): the new password's key replaces the operator's in an admin change", "operationId": "userPassword",
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "{name, changed}"}, "403": {"description": "Not yours, and no manage on users"}, "404": {"description": "No such user"}, "422": {"description": "Bad password"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/apikeys",
            Any,
            get(api_keys),
            json!({"summary": "API keys (no secrets, no hashes): every key for callers with manage on keys, else the caller's own", "operationId": "apikeyList",
                "responses": {"200": {"description": "[{id, name, role, user, created_at, expires_at, revoked_at, state}]"}}}),
        ),
        Route::api(
            Method::POST,
            "/api/v1/apikeys",
            Any,
            post(api_key_create),
            json!({"summary": "Create an API key for a role (bound to a user or not), optional ttl_secs; the secret is in this answer only. A user may make keys for itself; others need manage on keys; no one grants a role it lacks", "operationId": "apikeyCreate",
                "responses": {"200": {"description": "{id, secret, role, user, expires_at}"}, "403": {"description": "Not allowed"}, "503": {"description": "No quorum: nothing changed"}}}),
        ),
        Route::api(
            Method::DELETE,
            "/api/v1/apikeys/{id}",
            Any,
            delete(api_key_revoke),
            json!({"summary": "Revoke an API key (refused by every node as soon as it applies the change)", "operationId": "apikeyRevoke",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "{id, revoked}"}, "404": {"description": "No such key"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/audit",
            audit,
            get(api_audit),
            json!({"summary": "Audit entries this node holds, oldest first: seq, time, principal, action, resource, outcome, node, count, signature, log_index, prev_hash, hash (query: since, limit ≤ 1000); the threshold-signed checkpoints, the cluster and its admin public key", "operationId": "auditList",
                "parameters": [{"name": "since", "in": "query", "schema": {"type": "integer"}}, {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "{node, head: {seq, hash}, entries: [...], checkpoints: [{body, signature}], cluster, admin_public_key}"}}}),
        ),
        Route::api(
            Method::POST,
            "/api/v1/serve/anonymous",
            Need(Action::Manage, Res::Is(Fixed::Cluster)),
            post(api_anonymous),
            json!({"summary": "Open (enabled: true) or close the inference API to callers without an API key, on every node (an admin-signed cluster rule)", "operationId": "serveAnonymous",
                "responses": {"200": {"description": "{anonymous_inference}"}}}),
        ),
    ]
}

use super::control::control;

fn caller(p: &Principal) -> Result<&crate::access::Caller, ApiError> {
    p.caller()
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "credential required"))
}

/// Commits an access change with its entry: the operator's signed by the
/// admin key (threshold), anyone else's signed by the key its credential
/// derives; every node checks the signature. A refusal by the state
/// machine is a 403 (escalation), 404 or 422.
async fn change(
    st: &Shared,
    caller: &crate::access::Caller,
    c: AccessChange,
) -> Result<(), ApiError> {
    let refused = |why: String| {
        if why.contains("cannot grant") || why.contains("may not") || why.contains("only its own") {
            ApiError::new(StatusCode::FORBIDDEN, why)
        } else if why.contains("no user") || why.contains("no API key") {
            ApiError::new(StatusCode::NOT_FOUND, why)
        } else {
            ApiError::invalid(why)
        }
    };
    if let Some(pw) = &caller.operator {
        let control = crate::access::control(st).await?;
        let change =
            super::control::admin_change(st, &control, AdminAction::Access { change: c }).await?;
        let signed = st.keys.sign_admin_change(&change, pw).await?;
        let r = crate::access::propose(st, crate::access::audited_admin(st, signed)).await?;
        return match r.rejected {
            None => Ok(()),
            Some(why) => Err(refused(
                why.trim_start_matches("admin change refused: ").to_owned(),
            )),
        };
    }
    let Some(proof_key) = &caller.proof else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this credential cannot sign changes to users and keys (a web session: use the operator password or an API key)",
        ));
    };
    let note = st
        .access
        .note(&caller.id, Action::Manage.as_str(), &c.summary(), "ok", 1);
    let proof = proof_key
        .sign(bzzz_proto::access::proof_bytes(
            &st.keys
                .cluster()
                .map(|c| c.genesis.cluster)
                .unwrap_or_default(),
            &note,
            &c,
        ))
        .await?;
    match crate::access::commit(st, vec![note], None, Some((c, proof))).await? {
        Ok(_) => Ok(()),
        Err(why) => Err(refused(why)),
    }
}

async fn api_whoami(p: Principal) -> Result<Response, ApiError> {
    let c = caller(&p)?;
    Ok(json(
        StatusCode::OK,
        &json!({"principal": c.id, "roles": c.roles}),
    ))
}

async fn api_users(State(st): S) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &list_users(&st)?))
}

/// Users (the operator, `admin`, first).
pub fn list_users(st: &Shared) -> Result<Vec<UserView>, ApiError> {
    let mut out = vec![UserView {
        name: ADMIN_USER.into(),
        roles: vec![bzzz_proto::dht::ADMIN_ROLE.into()],
        created_at: st.keys.cluster().map_or(0, |c| c.genesis.created_at),
        created_by: "setup".into(),
    }];
    control(st)?.with_state(|s| {
        out.extend(s.users.values().map(|u| UserView {
            name: u.name.clone(),
            roles: u.roles.clone(),
            created_at: u.created_at,
            created_by: u.created_by.clone(),
        }));
    });
    Ok(out)
}

async fn api_user_add(State(st): S, p: Principal, body: Bytes) -> Result<Response, ApiError> {
    let req: UserAdd = parse(&body, "user")?;
    add_user(&st, &p, &req).await?;
    Ok(json(
        StatusCode::OK,
        &json!({"name": req.name, "roles": req.roles}),
    ))
}

/// Adds (or replaces) a user for caller `p` (committed with its entry).
pub async fn add_user(st: &Shared, p: &Principal, req: &UserAdd) -> Result<(), ApiError> {
    let c = caller(p)?;
    bzzz_proto::access::validate_user_name(&req.name).map_err(ApiError::invalid)?;
    if bzzz_proto::access::RESERVED_USERS.contains(&req.name.as_str()) {
        return Err(ApiError::invalid(format!(
            "{} is reserved for the operator, whose password is the operator password",
            req.name
        )));
    }
    let pw = OperatorPassword::new_for_setup(req.password.expose().to_owned())
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let name = req.name.clone();
    let (verifier, public) = tokio::task::spawn_blocking(move || {
        let v = pw.verifier()?;
        let k = bzzz_crypto::access::user_signer(&name, pw.expose())?;
        Ok::<_, bzzz_crypto::CryptoError>((v, hex::encode(k.public())))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let user = UserRecord {
        name: req.name.clone(),
        roles: req.roles.clone(),
        verifier,
        public,
        created_at: bzzz_keys::unix_now(),
        created_by: c.id.clone(),
    };
    change(st, c, AccessChange::UserPut { user }).await
}

async fn api_user_rm(
    State(st): S,
    p: Principal,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    remove_user(&st, &p, &name).await?;
    Ok(json(
        StatusCode::OK,
        &json!({"name": name, "removed": true}),
    ))
}

/// Removes user `name` for caller `p`.
pub async fn remove_user(st: &Shared, p: &Principal, name: &str) -> Result<(), ApiError> {
    let c = caller(p)?;
    change(
        st,
        c,
        AccessChange::UserRemove {
            name: name.to_owned(),
        },
    )
    .await
}

#[derive(Deserialize)]
struct PasswordChange {
    password: bzzz_proto::cluster::WireSecret,
    /// The current operator password, required to change it from a web
    /// session (a session is not proof that its holder knows it).
    #[serde(default)]
    current_password: Option<bzzz_proto::cluster::WireSecret>,
}

async fn api_user_passwd(
    State(st): S,
    p: Principal,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: PasswordChange = parse(&body, "password change")?;
    let c = caller(&p)?;
    if name == ADMIN_USER {
        return operator_passwd(&st, c, req).await;
    }
    if bzzz_proto::access::RESERVED_USERS.contains(&name.as_str()) {
        return Err(ApiError::invalid(format!("{name} is not a user")));
    }
    bzzz_proto::access::validate_user_name(&name).map_err(ApiError::invalid)?;
    if c.id != format!("user:{name}") {
        authorize(&st, &p, Action::Manage, &Resource::USERS)?;
    }
    let pw = OperatorPassword::new_for_setup(req.password.expose().to_owned())
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let n = name.clone();
    let (verifier, public) = tokio::task::spawn_blocking(move || {
        let v = pw.verifier()?;
        let k = bzzz_crypto::access::user_signer(&n, pw.expose())?;
        Ok::<_, bzzz_crypto::CryptoError>((v, hex::encode(k.public())))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    change(
        &st,
        c,
        AccessChange::UserPassword {
            name: name.clone(),
            verifier,
            public,
        },
    )
    .await?;
    Ok(json(
        StatusCode::OK,
        &json!({"name": name, "changed": true}),
    ))
}

/// A new operator password: the key it derives replaces the operator's in
/// an admin change, signed under the old one (only the operator, with the
/// current password, can make it). Every node then refuses the old
/// password, and the operator's sessions end.
async fn operator_passwd(
    st: &Shared,
    c: &crate::access::Caller,
    req: PasswordChange,
) -> Result<Response, ApiError> {
    let Some(old) = &c.operator else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only the operator (user admin, with the current password) changes the operator password",
        ));
    };
    if c.csrf.is_some() {
        // A web session: the current password again, checked like a login.
        let current = req
            .current_password
            .as_ref()
            .and_then(|p| OperatorPassword::new(p.expose().to_owned()).ok());
        let key = st
            .keys
            .operator_login(&format!("session:{}", c.id), current)
            .await?;
        if key.public_hex() != old.public_hex() {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the current operator password is wrong",
            ));
        }
    }
    let pw = OperatorPassword::new_for_setup(req.password.expose().to_owned())
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let cluster = st
        .keys
        .cluster()
        .map(|c| c.genesis.cluster)
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "the cluster is not initialized yet"))?;
    let new = st.keys.derive_operator_key(&cluster, pw).await?;
    let control = crate::access::control(st).await?;
    let change = super::control::admin_change(
        st,
        &control,
        AdminAction::SetOperatorKey {
            public_key: new.public_hex(),
        },
    )
    .await?;
    let signed = st.keys.sign_admin_change(&change, old).await?;
    let r = crate::access::propose(st, crate::access::audited_admin(st, signed)).await?;
    if let Some(why) = r.rejected {
        return Err(ApiError::invalid(why));
    }
    Ok(json(
        StatusCode::OK,
        &json!({"name": ADMIN_USER, "changed": true}),
    ))
}

/// The user a caller is (`admin` for the operator), if any.
fn user_of(c: &crate::access::Caller) -> Option<&str> {
    c.id.strip_prefix("user:")
        .or((c.id == ADMIN_USER).then_some(ADMIN_USER))
}

async fn api_keys(State(st): S, p: Principal) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &list_keys(&st, &p)?))
}

/// The API keys caller `p` may see: every key with manage on keys, else
/// its own.
pub fn list_keys(
    st: &Shared,
    p: &Principal,
) -> Result<Vec<bzzz_proto::access::ApiKeyView>, ApiError> {
    let c = caller(p)?;
    let all = crate::http::auth::decide_for(st, &c.roles, Action::Manage, &Resource::KEYS).allowed;
    let me = user_of(c).map(str::to_owned);
    let own_key = c.id.strip_prefix("key:").map(str::to_owned);
    let now = bzzz_keys::unix_now();
    let out: Vec<_> = control(st)?.with_state(|s| {
        s.api_keys
            .values()
            .filter(|k| {
                all || (me.is_some() && k.user == me) || own_key.as_deref() == Some(k.id.as_str())
            })
            .map(|k| k.view(now))
            .collect()
    });
    Ok(out)
}

async fn api_key_create(State(st): S, p: Principal, body: Bytes) -> Result<Response, ApiError> {
    let req: ApiKeyCreate = parse(&body, "API key request")?;
    Ok(json(StatusCode::OK, &create_key(&st, &p, req).await?))
}

/// Creates an API key for caller `p`; the answer holds the secret (shown
/// once).
pub async fn create_key(
    st: &Shared,
    p: &Principal,
    req: ApiKeyCreate,
) -> Result<ApiKeyCreated, ApiError> {
    let c = caller(p)?;
    bzzz_proto::cluster::validate_cluster_name(&req.role)
        .map_err(|e| ApiError::invalid(format!("role: {e}")))?;
    if req.name.as_ref().is_some_and(|n| n.len() > 128) {
        return Err(ApiError::invalid("a key's name is at most 128 bytes"));
    }
    // A user makes keys for itself; anything else needs manage on keys.
    let own = req.user.is_some() && req.user.as_deref() == user_of(c);
    if !own {
        authorize(st, p, Action::Manage, &Resource::KEYS)?;
    }
    let now = bzzz_keys::unix_now();
    let expires_at = match req.ttl_secs {
        Some(0) => return Err(ApiError::invalid("ttl_secs must be positive")),
        Some(t) => Some(now.saturating_add(t)),
        None => None,
    };
    let (secret, id, hash) = bzzz_crypto::access::new_api_key()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let key = ApiKeyRecord {
        id: id.clone(),
        name: req.name,
        hash,
        public: hex::encode(bzzz_crypto::access::api_key_signer(secret.expose()).public()),
        role: req.role.clone(),
        user: req.user.clone(),
        created_at: now,
        created_by: c.id.clone(),
        expires_at,
        revoked_at: None,
    };
    change(st, c, AccessChange::KeyPut { key }).await?;
    Ok(ApiKeyCreated {
        id,
        secret,
        role: req.role,
        user: req.user,
        expires_at,
    })
}

async fn api_key_revoke(
    State(st): S,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    revoke_key(&st, &p, &id).await?;
    Ok(json(StatusCode::OK, &json!({"id": id, "revoked": true})))
}

/// Revokes API key `id` for caller `p` (its own, or any with manage on
/// keys).
pub async fn revoke_key(st: &Shared, p: &Principal, id: &str) -> Result<(), ApiError> {
    let c = caller(p)?;
    // Revoking another's key needs manage on keys (the state machine
    // checks it again).
    let owner = control(st)?.with_state(|s| s.api_keys.get(id).map(|k| k.user.clone()));
    let Some(owner) = owner else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no API key {id:?}"),
        ));
    };
    let own = c.id == format!("key:{id}") || (owner.is_some() && owner.as_deref() == user_of(c));
    if !own {
        authorize(st, p, Action::Manage, &Resource::KEYS)?;
    }
    change(
        st,
        c,
        AccessChange::KeyRevoke {
            id: id.to_owned(),
            at: bzzz_keys::unix_now(),
        },
    )
    .await
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn api_audit(State(st): S, Query(q): Query<AuditQuery>) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(AUDIT_PAGE).clamp(1, AUDIT_PAGE);
    let (head, entries) = audit_entries(&st, q.since, limit).await?;
    let checkpoints = control(&st)?.with_state(|s| s.audit_checkpoints.clone());
    let cluster = st.keys.cluster();
    Ok(json(
        StatusCode::OK,
        &json!({"node": st.net.local_id(), "head": head, "entries": entries,
            "checkpoints": checkpoints,
            "cluster": cluster.as_ref().map(|c| c.genesis.cluster.clone()),
            "admin_public_key": cluster.as_ref().map(|c| c.genesis.admin_public_key.clone())}),
    ))
}

/// The replicated head and up to `limit` entries from `since` that this
/// node holds.
pub async fn audit_entries(
    st: &Shared,
    since: u64,
    limit: usize,
) -> Result<
    (
        bzzz_proto::access::AuditHead,
        Vec<bzzz_proto::access::AuditRecord>,
    ),
    ApiError,
> {
    let c = control(st)?;
    let head = c.with_state(|s| s.audit_head.clone());
    let entries = match c.audit_path() {
        Some(path) => {
            tokio::task::spawn_blocking(move || bzzz_control::audit::read(&path, since, limit))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        }
        None => Vec::new(),
    };
    Ok((head, entries))
}

#[derive(Debug, Deserialize)]
struct AnonymousRequest {
    enabled: bool,
}

async fn api_anonymous(
    State(st): S,
    Operator(pw): Operator,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: AnonymousRequest = parse(&body, "request")?;
    let control = crate::access::control(&st).await?;
    let change = super::control::admin_change(
        &st,
        &control,
        AdminAction::SetRule {
            name: crate::access::ANONYMOUS_INFERENCE_RULE.into(),
            value: Some(req.enabled.to_string()),
        },
    )
    .await?;
    let signed = st.keys.sign_admin_change(&change, &pw).await?;
    super::control::propose_admin(&st, &control, signed).await?;
    Ok(json(
        StatusCode::OK,
        &json!({"anonymous_inference": req.enabled}),
    ))
}
