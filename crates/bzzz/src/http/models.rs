//! Models over HTTP (SPEC §8): the registry and each copy's state, blob
//! uploads, adding and removing models.
//!
//! Adding a model is two steps, both as the operator: every blob is
//! uploaded (`PUT /api/v1/models/blobs/{digest}?size=N`, streamed to disk,
//! hashed as it arrives, refused unless its sha256 is the digest), then
//! `POST /api/v1/models` registers the manifest; this node holds the
//! blobs and is the first source of the swarm.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use bzzz_control::raft::Command;
use bzzz_models::ollama::Manifest;
use bzzz_models::wire::ProgressMap;
use bzzz_proto::NodeId;
use bzzz_proto::models::{
    AddModel, AddedModel, BlobInfo, BlobStored, ModelEntry, ModelName, ModelStatus, NodeVram,
    Registry, ReplicaState, ReplicaStatus, VramTable, digest_hex,
};
use futures::StreamExt as _;
use serde_json::json;

use super::{Action, ApiError, Fixed, Permission, Res, Route, Shared, json, parse};

type S = State<Shared>;

/// Largest blob accepted by upload (1 TiB).
pub const MAX_BLOB: u64 = 1 << 40;
/// An upload may take this long.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// A node asked for its copies' progress must answer within this.
const PROGRESS_TIMEOUT: Duration = Duration::from_millis(1500);

pub fn routes() -> Vec<Route> {
    vec![
        Route::api(
            Method::GET,
            "/api/v1/models",
            Permission::Need(Action::Read, Res::Is(Fixed::Cluster)),
            get(api_list),
            json!({"summary": "Every model in the registry with each copy's state (planned, fetching, ready, extra) and progress", "operationId": "models",
                "responses": {"200": {"description": "array of {name, digest, size_bytes, vram_bytes, replicas, ready, facts, nodes[{node_id, state, bytes_done, bytes_total, cpu_only}]}"}, "503": {"description": "Control plane not running"}}}),
        ),
        Route::api(
            Method::POST,
            "/api/v1/models",
            Permission::Need(Action::Deploy, Res::NameInBody),
            post(api_add),
            json!({"summary": "Register a model whose blobs were uploaded to this node (operator): {name, manifest, replicas, spread_zones, pinned, excluded}", "operationId": "modelAdd",
                "responses": {"200": {"description": "{name, digest, size_bytes, vram_bytes, replicas, changed}"}, "422": {"description": "Invalid name or manifest, or a blob is missing"}, "503": {"description": "No leader"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/models/{name}",
            Permission::Need(Action::Read, Res::Is(Fixed::Cluster)),
            get(api_status),
            json!({"summary": "One model (NAME:TAG, URL-encoded) with each copy's state", "operationId": "modelStatus",
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "{name, digest, replicas, nodes[…]}"}, "404": {"description": "No such model"}}}),
        ),
        Route::api(
            Method::DELETE,
            "/api/v1/models/{name}",
            Permission::Need(Action::Deploy, Res::ModelInPath),
            delete(api_remove),
            json!({"summary": "Remove a model (operator): every node deletes its copy", "operationId": "modelRemove",
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "Removed"}, "404": {"description": "No such model"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/models/blobs/{digest}",
            Permission::Need(Action::Deploy, Res::SomeModel),
            get(api_blob_check),
            json!({"summary": "Whether this node holds a blob (operator)", "operationId": "blobCheck",
                "parameters": [{"name": "digest", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "{digest, size}"}, "404": {"description": "Not here"}}}),
        ),
        Route::api(
            Method::PUT,
            "/api/v1/models/blobs/{digest}",
            Permission::Need(Action::Deploy, Res::SomeModel),
            put(api_blob_upload),
            json!({"summary": "Upload a blob (operator; body = the bytes, ?size=N); refused unless its sha256 is the digest", "operationId": "blobUpload",
                "parameters": [{"name": "digest", "in": "path", "required": true, "schema": {"type": "string"}},
                               {"name": "size", "in": "query", "required": true, "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "{digest, size}"}, "422": {"description": "Digest or size mismatch"}}}),
        )
        .raw_body()
        .body_limit(MAX_BLOB as usize)
        .timeout(UPLOAD_TIMEOUT),
    ]
}

fn control(st: &Shared) -> Result<&crate::control::Control, ApiError> {
    st.control
        .get()
        .map(|c| &**c)
        .ok_or_else(ApiError::no_control)
}

fn model_name(s: &str) -> Result<ModelName, ApiError> {
    ModelName::parse(s).map_err(|e| ApiError::invalid(format!("model name: {e}")))
}

/// Every node's state for the models it has or is placed for (its own
/// answer for this node; `None` for a node that did not answer).
async fn progress(st: &Shared, reg: &Registry) -> BTreeMap<NodeId, Option<ProgressMap>> {
    let me = st.net.local_id().clone();
    let mut nodes: BTreeSet<NodeId> = BTreeSet::new();
    for p in reg.placements.values() {
        nodes.extend(p.iter().map(|x| x.node.clone()));
    }
    for h in reg.held.values() {
        nodes.extend(h.keys().cloned());
    }
    let asks = nodes.into_iter().map(|n| {
        let st = st.clone();
        let me = me.clone();
        let reg = reg.clone();
        async move {
            if n == me {
                return (n, Some(st.models.progress(&reg)));
            }
            let r = tokio::time::timeout(PROGRESS_TIMEOUT, st.models.models.progress_of(&n)).await;
            (n, r.ok().and_then(Result::ok))
        }
    });
    futures::future::join_all(asks).await.into_iter().collect()
}

fn status_of(
    reg: &Registry,
    e: &ModelEntry,
    live: &BTreeMap<NodeId, Option<ProgressMap>>,
) -> ModelStatus {
    let holders = reg.holders(&e.name);
    let placed = reg.placements.get(&e.name).cloned().unwrap_or_default();
    let mut nodes = Vec::new();
    let mut add = |node: &NodeId, cpu_only: bool, is_placed: bool| {
        let answer = live.get(node).cloned().flatten();
        let (state, done, stale) = match answer.as_ref().and_then(|m| m.get(&e.name)) {
            Some(p) => (p.state, p.bytes_done, false),
            None if answer.is_some() => (
                if is_placed {
                    ReplicaState::Planned
                } else {
                    ReplicaState::Extra
                },
                0,
                false,
            ),
            None => {
                let held = holders.contains(node);
                let s = match (held, is_placed) {
                    (true, true) => ReplicaState::Ready,
                    (true, false) => ReplicaState::Extra,
                    _ => ReplicaState::Planned,
                };
                (s, if held { e.size_bytes } else { 0 }, true)
            }
        };
        nodes.push(ReplicaStatus {
            node_id: node.clone(),
            state,
            bytes_done: done,
            bytes_total: e.size_bytes,
            cpu_only,
            stale,
        });
    };
    for p in &placed {
        add(&p.node, p.cpu_only, true);
    }
    for h in &holders {
        if !placed.iter().any(|p| &p.node == h) {
            add(h, false, false);
        }
    }
    let ready = nodes
        .iter()
        .filter(|n| n.state == ReplicaState::Ready)
        .count();
    ModelStatus {
        name: e.name.clone(),
        digest: e.digest.clone(),
        size_bytes: e.size_bytes,
        vram_bytes: e.vram_bytes,
        replicas: e.replicas,
        ready: u16::try_from(ready).unwrap_or(u16::MAX),
        facts: e.facts.clone(),
        nodes,
    }
}

/// Every live model's status (the API, the CLI and the models page).
pub async fn statuses(st: &Shared) -> Result<(Vec<ModelStatus>, VramTable), ApiError> {
    let c = control(st)?;
    let (reg, inventory) = c.with_state(|s| (s.models.clone(), s.nodes.clone()));
    let live = progress(st, &reg).await;
    let list = reg
        .models
        .values()
        .filter(|e| !e.removed)
        .map(|e| status_of(&reg, e, &live))
        .collect();
    let mut vram: VramTable = inventory
        .iter()
        .map(|(id, r)| {
            (
                id.clone(),
                NodeVram {
                    vram_total_bytes: r.vram_total_bytes,
                    vram_free_bytes: r.vram_free_bytes,
                    vram_placed_bytes: 0,
                },
            )
        })
        .collect();
    for (name, p) in &reg.placements {
        let Some(e) = reg.models.get(name) else {
            continue;
        };
        for x in p.iter().filter(|x| !x.cpu_only) {
            vram.entry(x.node.clone()).or_default().vram_placed_bytes += e.vram_bytes;
        }
    }
    Ok((list, vram))
}

async fn api_list(State(st): S) -> Result<Response, ApiError> {
    let (list, _) = statuses(&st).await?;
    Ok(json(StatusCode::OK, &list))
}

async fn api_status(State(st): S, Path(name): Path<String>) -> Result<Response, ApiError> {
    let name = model_name(&name)?.full();
    let c = control(&st)?;
    let reg = c.with_state(|s| s.models.clone());
    let e = reg
        .models
        .get(&name)
        .filter(|e| !e.removed)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no model {name}")))?;
    let live = progress(&st, &reg).await;
    Ok(json(StatusCode::OK, &status_of(&reg, e, &live)))
}

/// Commits a command; waits up to 10 s for a leader (an election, a
/// cluster just initialized) before answering 503.
async fn propose(c: &crate::control::Control, cmd: Command) -> Result<(), ApiError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let r = loop {
        match c.propose(cmd.clone()).await {
            Ok(r) => break r,
            Err(e) if e.starts_with("no leader") && std::time::Instant::now() < deadline => {
                tracing::debug!("proposal not committed yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e)),
        }
    };
    match r.rejected {
        Some(why) if why.starts_with("no model") => Err(ApiError::new(StatusCode::NOT_FOUND, why)),
        Some(why) => Err(ApiError::invalid(why)),
        None => Ok(()),
    }
}

async fn api_remove(
    State(st): S,
    p: super::Principal,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = model_name(&name)?.full();
    let c = control(&st)?;
    let cmd = crate::access::audited(
        &st,
        p.id(),
        Action::Deploy,
        &bzzz_proto::access::Resource::Model(name.clone()),
        Command::ModelRemove { name: name.clone() },
    );
    propose(c, cmd).await?;
    applied(c, |s| s.models.models.get(&name).is_none_or(|e| e.removed)).await;
    Ok(json(
        StatusCode::OK,
        &json!({"name": name, "removed": true}),
    ))
}

/// Waits (at most 5 s) until this node's applied state satisfies `done`:
/// a write committed by the leader reaches a follower a moment later.
async fn applied(
    c: &crate::control::Control,
    done: impl Fn(&bzzz_control::raft::ClusterState) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut changes = c.watch_models();
    while !c.with_state(&done) && std::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
    }
}

fn checked_digest(d: &str) -> Result<String, ApiError> {
    digest_hex(d).map_err(|e| ApiError::invalid(e.0))?;
    Ok(d.to_owned())
}

async fn api_blob_check(
    State(st): S,
    _: super::Principal,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    let digest = checked_digest(&digest)?;
    match st.models.store().blob_size(&digest) {
        Some(size) => {
            // The caller will name it in a manifest: keep it until then.
            st.models.uploaded(&digest);
            Ok(json(StatusCode::OK, &BlobStored { digest, size }))
        }
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "not on this node")),
    }
}

#[derive(serde::Deserialize)]
struct SizeQuery {
    size: u64,
}

async fn api_blob_upload(
    State(st): S,
    _: super::Principal,
    Path(digest): Path<String>,
    Query(q): Query<SizeQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let digest = checked_digest(&digest)?;
    if q.size > MAX_BLOB {
        return Err(ApiError::invalid(format!(
            "a blob is at most {MAX_BLOB} bytes"
        )));
    }
    // Protected from garbage collection until its manifest is written.
    st.models.uploaded(&digest);
    if st.models.store().blob_size(&digest) == Some(q.size) {
        return Ok(json(
            StatusCode::OK,
            &BlobStored {
                digest,
                size: q.size,
            },
        ));
    }
    let mut up = st
        .models
        .models
        .upload(q.size)
        .map_err(|e| ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string()))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let want = digest.clone();
    let size = q.size;
    let writer = tokio::task::spawn_blocking(move || {
        while let Some(chunk) = rx.blocking_recv() {
            up.write(&chunk)?;
            if up.written() > size {
                return Err(bzzz_models::ModelsError::Invalid(format!(
                    "the body is longer than size={size}"
                )));
            }
        }
        if up.written() != size {
            return Err(bzzz_models::ModelsError::Invalid(format!(
                "the body has {} bytes, size={size}",
                up.written()
            )));
        }
        up.finish(&want)
    });
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("the upload broke off: {e}")))?;
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    drop(tx);
    let m = writer
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| match e {
            bzzz_models::ModelsError::Invalid(m) => ApiError::invalid(m),
            e => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
        })?;
    Ok(json(
        StatusCode::OK,
        &BlobStored {
            digest: m.blob,
            size: m.size,
        },
    ))
}

async fn api_add(State(st): S, p: super::Principal, body: Bytes) -> Result<Response, ApiError> {
    let req: AddModel = parse(&body, "model")?;
    let name = model_name(&req.name)?;
    let manifest =
        Manifest::parse(req.manifest.as_bytes()).map_err(|e| ApiError::invalid(e.to_string()))?;
    let c = control(&st)?;
    let store = st.models.store().clone();
    // Every blob must be here: sizes checked, piece manifests made.
    let mut blobs = Vec::new();
    for l in manifest.blobs() {
        if store.blob_size(&l.digest) != Some(l.size) {
            return Err(ApiError::invalid(format!(
                "blob {} ({} bytes) is not on this node; upload it first",
                l.digest, l.size
            )));
        }
        let pieces = st
            .models
            .models
            .pieces_of(&l.digest, l.size)
            .await
            .map_err(|e| ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string()))?;
        blobs.push(BlobInfo {
            digest: l.digest.clone(),
            size: l.size,
            media_type: l.media_type.clone(),
            piece_size: bzzz_models::pieces::piece_size_for(l.size),
            pieces_root: bzzz_models::pieces::root_of(&pieces),
        });
    }
    // Facts from the GGUF header of the model layer, if it is one.
    let facts = match manifest.model_layer() {
        Some(l) => {
            let path = store
                .blob_path(&l.digest)
                .map_err(|e| ApiError::invalid(e.to_string()))?;
            let size = l.size;
            tokio::task::spawn_blocking(move || {
                let f = std::fs::File::open(path).ok()?;
                bzzz_models::gguf::parse(std::io::BufReader::new(f))
                    .ok()
                    .map(|h| h.facts(size))
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| bzzz_proto::models::ModelFacts {
                weights_bytes: size,
                ..Default::default()
            })
        }
        None => Default::default(),
    };
    let entry = ModelEntry {
        name: name.full(),
        digest: bzzz_models::ollama::sha256_digest(req.manifest.as_bytes()),
        manifest: req.manifest.clone(),
        size_bytes: manifest.size(),
        vram_bytes: bzzz_models::gguf::vram_estimate(&facts),
        facts,
        blobs,
        replicas: req.replicas,
        spread_zones: req.spread_zones,
        pinned: req.pinned,
        excluded: req.excluded,
        added_at: bzzz_keys::unix_now(),
        removed: false,
    };
    entry.validate().map_err(|e| ApiError::invalid(e.0))?;
    let changed = c.with_state(|s| s.models.models.get(&entry.name).map(|e| e.digest.clone()))
        != Some(entry.digest.clone());
    let answer = AddedModel {
        name: entry.name.clone(),
        digest: entry.digest.clone(),
        size_bytes: entry.size_bytes,
        vram_bytes: entry.vram_bytes,
        replicas: entry.replicas,
        changed,
    };
    let resource = bzzz_proto::access::Resource::Model(entry.name.clone());
    propose(
        c,
        crate::access::audited(
            &st,
            p.id(),
            Action::Deploy,
            &resource,
            Command::ModelPut {
                entry: Box::new(entry),
            },
        ),
    )
    .await?;
    // Read your write: answer once this node has applied it too (the
    // caller's next `model status` may come here).
    applied(c, |s| {
        s.models
            .models
            .get(&answer.name)
            .is_some_and(|e| e.digest == answer.digest && !e.removed)
    })
    .await;
    // This node holds it: its manifest goes into the local store once the
    // registry names this version (written before, a placed node's agent
    // would take it for a stale copy and fetch the registry's older one
    // over it), so it is a source for the swarm and Ollama here can serve
    // it. Its blobs were kept from garbage collection until now.
    store
        .write_manifest(&name, req.manifest.as_bytes())
        .map_err(|e| ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string()))?;
    st.models
        .registered(manifest.blobs().map(|l| l.digest.clone()));
    Ok(json(StatusCode::OK, &answer))
}
