//! Agents over HTTP (SPEC §10): the cluster's repositories (kept in the
//! DHT's configuration), the task board (claims from the replicated
//! state), live step logs, retry and cancel.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bzzz_agents::repo::{REPOS_ADDRESS, Repo};
use bzzz_control::raft::Command;
use bzzz_control::tasks::{TaskOp, TaskRecord};
use bzzz_proto::access::Resource;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Action, ApiError, Fixed, Operator, Permission, Res, Route, Shared, json, parse};

type S = State<Shared>;

pub fn routes() -> Vec<Route> {
    vec![
        Route::api(
            Method::GET,
            "/api/v1/repos",
            Permission::Need(Action::Read, Res::Is(Fixed::Cluster)),
            get(api_repos),
            json!({"summary": "The repositories agents take tasks from: [{url, kind, label, model, max_steps}]", "operationId": "repos",
                "responses": {"200": {"description": "Repositories"}, "503": {"description": "The DHT cannot be read"}}}),
        ),
        Route::api(
            Method::POST,
            "/api/v1/repos",
            Permission::Need(Action::Manage, Res::Is(Fixed::Cluster)),
            post(api_repo_add),
            json!({"summary": "Add (or replace, by URL) a repository (operator): the list in the DHT's cluster configuration, written with the threshold admin signature", "operationId": "repoAdd",
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["url", "kind"], "properties": {"url": {"type": "string"}, "kind": {"type": "string", "enum": ["git", "gitea", "github"]}, "label": {"type": "string"}, "model": {"type": "string"}, "max_steps": {"type": "integer"}}}}}},
                "responses": {"200": {"description": "The list after the change"}, "422": {"description": "Not a repository"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/tasks",
            Permission::Need(Action::Read, Res::Is(Fixed::Cluster)),
            get(api_tasks),
            json!({"summary": "Every task the cluster knows: [{key, id, repo, state, node, claims, fence, lease_until_ms, attempts, branch, pr_url, reason}]", "operationId": "tasks",
                "responses": {"200": {"description": "Tasks"}, "503": {"description": "Control plane not running"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/agents",
            Permission::Need(Action::Read, Res::Is(Fixed::Cluster)),
            get(api_agents),
            json!({"summary": "This node's agents: availability (off, ready, working, busy), current and max tasks, the tasks it works now", "operationId": "agents",
                "responses": {"200": {"description": "{state, current, max, running}"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/tasks/log",
            Permission::Need(Action::Read, Res::Is(Fixed::Cluster)),
            get(api_task_log),
            json!({"summary": "The live step log of a task worked on this node (`?key=`)", "operationId": "taskLog",
                "parameters": [{"name": "key", "in": "query", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "[{n, tool, detail, ok, result}]"}, "404": {"description": "Not worked here"}}}),
        ),
        Route::api(
            Method::POST,
            "/api/v1/tasks/{op}",
            Permission::Need(Action::Manage, Res::Is(Fixed::Cluster)),
            post(api_task_op),
            json!({"summary": "`retry` (open a failed or needs-human task again) or `cancel` (stop it; the holder is fenced out) a task by key (operator)", "operationId": "taskOp",
                "parameters": [{"name": "op", "in": "path", "required": true, "schema": {"type": "string", "enum": ["retry", "cancel"]}}],
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["key"], "properties": {"key": {"type": "string"}}}}}},
                "responses": {"200": {"description": "The task after the change"}, "404": {"description": "No such task"}, "422": {"description": "Refused"}}}),
        ),
    ]
}

/// One task as the API shows it.
#[derive(Debug, Serialize)]
pub struct TaskView {
    pub key: String,
    #[serde(flatten)]
    pub record: TaskRecord,
    /// Whether its claim holds now (cluster clock).
    pub live: bool,
}

/// The repositories as the API shows them: the sealed token replaced by
/// `token: true|false`.
fn shown(list: &[Repo]) -> Vec<serde_json::Value> {
    list.iter()
        .map(|r| {
            let has = !r.token_sealed.is_empty();
            let mut v = serde_json::to_value(Repo {
                token_sealed: Default::default(),
                ..r.clone()
            })
            .unwrap_or_default();
            v["token"] = has.into();
            v
        })
        .collect()
}

async fn api_repos(State(st): S) -> Result<Response, ApiError> {
    let l = crate::agents::repos(&st.dht)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(json(StatusCode::OK, &shown(&l)))
}

async fn api_repo_add(
    State(st): S,
    p: super::Principal,
    Operator(pw): Operator,
    body: Bytes,
) -> Result<Response, Response> {
    let add: bzzz_agents::repo::RepoAdd =
        parse(&body, "repository").map_err(IntoResponse::into_response)?;
    let token = add.token.map(zeroize::Zeroizing::new);
    let mut repo = Repo {
        url: add.url,
        kind: add.kind,
        label: add.label,
        model: add.model,
        max_steps: add.max_steps,
        token_sealed: Default::default(),
    };
    repo.validate()
        .map_err(|e| ApiError::invalid(e).into_response())?;
    match (&token, repo.kind) {
        (Some(_), bzzz_agents::repo::Kind::Git) => {
            return Err(ApiError::invalid("a plain Git repository takes no token").into_response());
        }
        (None, bzzz_agents::repo::Kind::Gitea | bzzz_agents::repo::Kind::Github) => {
            return Err(
                ApiError::invalid("a forge repository needs its API token (--token-file)")
                    .into_response(),
            );
        }
        (Some(t), _) if t.trim().is_empty() || t.len() > 4096 => {
            return Err(ApiError::invalid("the token is empty or too long").into_response());
        }
        _ => {}
    }
    // Sealed to every member in reach (this node included): the nodes
    // that run agents open their copy; the clear token is dropped here.
    if let Some(t) = &token {
        use base64::Engine as _;
        for (node, recipient) in crate::dht::recipients(&st.keys) {
            let sealed = bzzz_crypto::seal::seal(&recipient, t.trim().as_bytes())
                .map_err(|e| ApiError::invalid(e.to_string()).into_response())?;
            repo.token_sealed.insert(
                node.to_string(),
                base64::engine::general_purpose::STANDARD.encode(sealed),
            );
        }
    }
    let list = crate::agents::repos(&st.dht)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e).into_response())?;
    let list =
        bzzz_agents::repo::with(list, repo).map_err(|e| ApiError::invalid(e).into_response())?;
    let addr: bzzz_proto::ucxl::Address = REPOS_ADDRESS
        .parse()
        .map_err(|e| ApiError::invalid(format!("{e}")).into_response())?;
    crate::access::record(&st, p.id(), Action::Manage, &Resource::CLUSTER)
        .await
        .map_err(IntoResponse::into_response)?;
    let text = serde_json::to_string(&list)
        .map_err(|e| ApiError::invalid(e.to_string()).into_response())?;
    super::dht::write_record(&st, Some(pw), &addr, text.as_bytes()).await?;
    Ok(json(StatusCode::OK, &shown(&list)))
}

async fn api_tasks(State(st): S) -> Result<Response, ApiError> {
    let c = super::control::control(&st)?;
    let now = crate::control::now_ms();
    let v: Vec<TaskView> = c.with_state(|s| {
        let clock = s.tasks.clock_ms.max(now);
        s.tasks
            .tasks
            .iter()
            .map(|(k, r)| TaskView {
                key: k.clone(),
                live: r.live_claim(clock),
                record: r.clone(),
            })
            .collect()
    });
    Ok(json(StatusCode::OK, &v))
}

/// This node's agents, and each node's availability as its capability
/// record announces it (`nodes`: this node first, then the peers whose
/// agents are enabled).
async fn api_agents(State(st): S) -> Response {
    let a = st.agents.availability();
    let mut nodes = vec![json!({
        "node_id": st.net.local_id().to_string(),
        "agents": st.local.borrow().capabilities.agents,
    })];
    for p in super::status::peers_of(&st) {
        if let Some(a) = p.capabilities.agents {
            nodes.push(json!({"node_id": p.node_id.to_string(), "agents": a}));
        }
    }
    json(
        StatusCode::OK,
        &json!({"state": a.state, "current": a.current, "max": a.max, "running": st.agents.running(), "nodes": nodes}),
    )
}

#[derive(Deserialize)]
struct KeyQuery {
    key: String,
}

async fn api_task_log(State(st): S, Query(q): Query<KeyQuery>) -> Result<Response, ApiError> {
    match st.agents.log(&q.key) {
        Some(l) => Ok(json(StatusCode::OK, &l)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{} is not worked on this node", q.key),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    key: String,
}

async fn api_task_op(
    State(st): S,
    p: super::Principal,
    Path(op): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: KeyBody = parse(&body, "task")?;
    let op = match op.as_str() {
        "retry" => TaskOp::Retry { key: b.key.clone() },
        "cancel" => TaskOp::Cancel { key: b.key.clone() },
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("{other:?} is not retry or cancel"),
            ));
        }
    };
    let control = super::control::control(&st)?;
    let cmd = crate::access::audited(
        &st,
        p.id(),
        Action::Manage,
        &Resource::CLUSTER,
        Command::Task {
            by: st.net.local_id().clone(),
            now_ms: 0,
            op,
        },
    );
    let r = control
        .propose(cmd)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    if let Some(why) = r.rejected {
        return Err(if why.starts_with("no task") {
            ApiError::new(StatusCode::NOT_FOUND, why)
        } else {
            ApiError::invalid(why)
        });
    }
    let t = control.with_state(|s| s.tasks.tasks.get(&b.key).cloned());
    Ok(json(StatusCode::OK, &t))
}
