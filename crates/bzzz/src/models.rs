//! Model distribution in the node (SPEC §8): the models service's inbound
//! requests, and the agent that makes this node's store follow the
//! registry.
//!
//! Tasks (on the node's tracker, stopped by its token):
//!
//! | task | takes | does |
//! |---|---|---|
//! | [`serve_inbound`] | `/bzzz/models/1.0.0` requests (queue 256, 64 at once) | answers members only: bitfields, piece manifests, blocks, progress |
//! | [`agent`] | the registry (every 500 ms) and the store's manifests | [`bzzz_models::local::decide`]: fetches (one task per model), reports (`ModelHeld` through Raft), deletes; blob GC |
//! | a fetch per model | the swarm | every blob into `blobs/`, then the manifest, then the report |

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bzzz_control::raft::Command;
use bzzz_models::local::{Action, decide, swarm_peers};
use bzzz_models::wire::{Progress, ProgressMap};
use bzzz_models::{Models, Store};
use bzzz_net::ServiceRequest;
use bzzz_proto::models::{ModelEntry, ModelName, Registry, ReplicaState};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::control::ControlCell;
use crate::state::Tasks;

/// How often the agent compares the registry with the store.
pub const TICK: Duration = Duration::from_millis(500);
/// Inbound requests handled at once.
pub const MAX_INBOUND: usize = 64;

/// A fetch under way.
#[derive(Debug)]
struct Fetch {
    digest: String,
    done: Vec<Arc<AtomicU64>>,
    total: u64,
}

/// The node's models runtime.
#[derive(Debug)]
pub struct Runtime {
    pub models: Arc<Models>,
    fetching: Mutex<HashMap<String, Arc<Fetch>>>,
    /// Failed fetches wait before the next try.
    retry_at: Mutex<HashMap<String, Instant>>,
    /// Reports proposed recently (name → (digest, when)): not repeated
    /// while Raft catches up.
    reported: Mutex<HashMap<String, (Option<String>, Instant)>>,
    /// Blobs uploaded through the API and not yet named by a manifest:
    /// kept from garbage collection for [`UPLOAD_GRACE`].
    uploads: Mutex<HashMap<String, Instant>>,
    /// A fetch ended: the agent looks again at once (progress, reports).
    wake: tokio::sync::Notify,
    /// Managed backends (`serve.managed`), when configured.
    pub serve: Option<Arc<bzzz_serve::Supervisor>>,
    /// Where managed backends read model files (`serve.managed.models_dir`).
    serve_dir: Option<std::path::PathBuf>,
}

/// How long an uploaded blob waits for its manifest before garbage
/// collection may take it.
pub const UPLOAD_GRACE: Duration = Duration::from_secs(3600);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Runtime {
    pub fn open(
        dir: &std::path::Path,
        net: bzzz_net::NetHandle,
        serve: Option<(Arc<bzzz_serve::Supervisor>, Option<std::path::PathBuf>)>,
    ) -> anyhow::Result<Arc<Self>> {
        let store = Store::open(dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot use the models directory {} (set models.ollama_dir): {e}",
                dir.display()
            )
        })?;
        Ok(Arc::new(Self {
            models: Models::new(store, net),
            fetching: Mutex::new(HashMap::new()),
            retry_at: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            serve_dir: serve.as_ref().and_then(|(_, d)| d.clone()),
            serve: serve.map(|(s, _)| s),
        }))
    }

    pub fn store(&self) -> &Store {
        self.models.store()
    }

    /// Manifests in the store for models the registry knows: name → digest.
    fn local(&self, reg: &Registry) -> BTreeMap<String, String> {
        self.store()
            .list()
            .into_iter()
            .map(|(n, d, _)| (n.full(), d))
            .filter(|(n, _)| reg.models.contains_key(n))
            .collect()
    }

    /// This node's state for every model it is placed for or holds.
    pub fn progress(&self, reg: &Registry) -> ProgressMap {
        self.progress_with(reg, &self.local(reg))
    }

    /// [`Runtime::progress`] with the store's manifests already listed.
    fn progress_with(&self, reg: &Registry, local: &BTreeMap<String, String>) -> ProgressMap {
        let me = self.models.local_id();
        let fetching = lock(&self.fetching);
        let mut out = ProgressMap::new();
        for (name, e) in &reg.models {
            if e.removed {
                continue;
            }
            let placed = reg
                .placements
                .get(name)
                .is_some_and(|p| p.iter().any(|x| &x.node == me));
            let here = local.get(name) == Some(&e.digest);
            let p = if here {
                Progress {
                    state: if placed {
                        ReplicaState::Ready
                    } else {
                        ReplicaState::Extra
                    },
                    bytes_done: e.size_bytes,
                    bytes_total: e.size_bytes,
                }
            } else if let Some(f) = fetching.get(name).filter(|f| f.digest == e.digest) {
                Progress {
                    state: ReplicaState::Fetching,
                    bytes_done: f.done.iter().map(|d| d.load(Ordering::Relaxed)).sum(),
                    bytes_total: f.total,
                }
            } else if placed {
                Progress {
                    state: ReplicaState::Planned,
                    bytes_done: 0,
                    bytes_total: e.size_bytes,
                }
            } else {
                continue;
            };
            out.insert(name.clone(), p);
        }
        out
    }

    fn report_due(&self, name: &str, digest: &Option<String>) -> bool {
        let mut r = lock(&self.reported);
        match r.get(name) {
            Some((d, at)) if d == digest && at.elapsed() < Duration::from_secs(3) => false,
            _ => {
                r.insert(name.to_owned(), (digest.clone(), Instant::now()));
                true
            }
        }
    }

    /// Blobs that must survive garbage collection: those of models placed
    /// here or being fetched.
    fn keep(&self, reg: &Registry) -> BTreeSet<String> {
        let me = self.models.local_id();
        let mut keep = BTreeSet::new();
        {
            let mut up = lock(&self.uploads);
            up.retain(|_, at| at.elapsed() < UPLOAD_GRACE);
            keep.extend(up.keys().cloned());
        }
        for (name, e) in &reg.models {
            let placed = reg
                .placements
                .get(name)
                .is_some_and(|p| p.iter().any(|x| &x.node == me));
            if (placed && !e.removed) || lock(&self.fetching).contains_key(name) {
                keep.extend(e.blobs.iter().map(|b| b.digest.clone()));
            }
        }
        keep
    }

    /// Models this node should serve: placed here and in place.
    fn wants(&self, reg: &Registry, local: &BTreeMap<String, String>) -> Vec<bzzz_serve::Want> {
        let me = self.models.local_id();
        let files = self
            .serve_dir
            .as_ref()
            .map(|d| Store::read_only(d.clone()))
            .unwrap_or_else(|| self.store().clone());
        reg.models
            .values()
            .filter(|e| !e.removed && local.get(&e.name) == Some(&e.digest))
            .filter(|e| {
                reg.placements
                    .get(&e.name)
                    .is_some_and(|p| p.iter().any(|x| &x.node == me))
            })
            .filter_map(|e| {
                let layer = e
                    .blobs
                    .iter()
                    .find(|b| b.media_type == bzzz_models::ollama::MODEL_MEDIA_TYPE)?;
                Some(bzzz_serve::Want {
                    model: e.name.clone(),
                    digest: e.digest.clone(),
                    model_path: files.blob_path(&layer.digest).ok()?,
                })
            })
            .collect()
    }

    /// A blob arrived through the API (see [`UPLOAD_GRACE`]).
    pub fn uploaded(&self, digest: &str) {
        lock(&self.uploads).insert(digest.to_owned(), Instant::now());
    }

    /// Its manifest is written: the blob is protected by it from now on.
    pub fn registered(&self, digests: impl IntoIterator<Item = String>) {
        let mut up = lock(&self.uploads);
        for d in digests {
            up.remove(&d);
        }
    }

    pub fn gc(&self, reg: &Registry) {
        for d in self.store().gc(&self.keep(reg)) {
            info!(blob = %d, "deleted a blob no model uses any more");
        }
    }
}

/// Serves `/bzzz/models/1.0.0`: members only (a Raft member or a peer
/// whose certificate this node verified).
pub async fn serve_inbound(
    rt: Arc<Runtime>,
    control: ControlCell,
    rx: mpsc::Receiver<ServiceRequest>,
    tasks: Tasks,
) {
    bzzz_net::service::serve(
        rx,
        MAX_INBOUND,
        tasks.tracker.clone(),
        tasks.cancel.clone(),
        move |peer, payload| {
            let rt = rt.clone();
            let admitted = control.get().is_some_and(|c| c.admits(&peer));
            async move {
                if !admitted {
                    return Some(bzzz_models::wire::error("not a member of this cluster"));
                }
                Some(rt.models.answer(payload).await)
            }
        },
    )
    .await;
}

/// Makes this node's store follow the registry (see the module docs).
pub async fn agent(
    rt: Arc<Runtime>,
    control: ControlCell,
    tasks: Tasks,
    local_info: tokio::sync::watch::Sender<bzzz_net::LocalInfo>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut changes: Option<tokio::sync::watch::Receiver<u64>> = None;
    let mut last_local: Option<BTreeMap<String, String>> = None;
    loop {
        let changed = async {
            match changes.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tasks.cancel.cancelled() => return,
            _ = tick.tick() => {}
            _ = changed => {}
            _ = rt.wake.notified() => {}
        }
        // Residency and load of this node's backends, announced with the
        // capabilities (at most once per tick).
        if let Some(s) = &rt.serve {
            let serving: Vec<bzzz_proto::caps::Serving> = s
                .list()
                .into_iter()
                .map(|b| bzzz_proto::caps::Serving {
                    loaded: b.state == bzzz_serve::State::Ready,
                    in_flight: b.in_flight,
                    model: b.model,
                })
                .collect();
            local_info.send_if_modified(|l| {
                if l.capabilities.serving == serving {
                    false
                } else {
                    l.capabilities.serving = serving;
                    true
                }
            });
        }
        let Some(ctl) = control.get().cloned() else {
            continue;
        };
        if changes.is_none() {
            changes = Some(ctl.watch_models());
        }
        // An empty registry costs nothing (no store listing): an idle
        // cluster without models stays idle.
        if ctl.with_state(|s| s.models.models.is_empty()) {
            if last_local.take().is_some() {
                rt.models.set_progress(ProgressMap::new());
                if let Some(s) = &rt.serve {
                    s.set_wanted(&[]);
                }
            }
            continue;
        }
        let reg = ctl.with_state(|s| s.models.clone());
        let me = rt.models.local_id().clone();
        let local = rt.local(&reg);
        rt.models.set_progress(rt.progress_with(&reg, &local));
        // A manifest appeared, changed or went (a fetch, an add through
        // this node's API, a drop): blobs nothing uses any more go.
        if last_local.as_ref() != Some(&local) {
            if last_local.is_some() {
                rt.gc(&reg);
            }
            last_local = Some(local.clone());
        }
        if let Some(s) = &rt.serve {
            s.set_wanted(&rt.wants(&reg, &local));
        }
        for action in decide(&me, &reg, &local) {
            match action {
                Action::Report { name, digest } => {
                    if rt.report_due(&name, &digest) {
                        let ctl = ctl.clone();
                        let me = me.clone();
                        tasks.tracker.spawn(async move {
                            let cmd = Command::ModelHeld {
                                name: name.clone(),
                                node: me,
                                digest,
                            };
                            if let Err(e) = ctl.propose(cmd).await {
                                warn!(model = %name, "cannot report this node's copy yet: {e}");
                            }
                        });
                    }
                }
                Action::Drop(name) => {
                    if let Ok(n) = ModelName::parse(&name) {
                        match rt.store().remove_manifest(&n) {
                            Ok(()) => {
                                info!(model = %name, "deleted this node's copy (not placed here)")
                            }
                            Err(e) => warn!(model = %name, "cannot delete the manifest: {e}"),
                        }
                    }
                    rt.gc(&reg);
                }
                Action::Fetch(name) => {
                    let Some(e) = reg.models.get(&name).cloned() else {
                        continue;
                    };
                    start_fetch(&rt, &ctl, e, &tasks);
                }
            }
        }
    }
}

fn start_fetch(
    rt: &Arc<Runtime>,
    control: &Arc<crate::control::Control>,
    e: ModelEntry,
    tasks: &Tasks,
) {
    {
        let f = lock(&rt.fetching);
        if f.get(&e.name).is_some_and(|f| f.digest == e.digest) {
            return;
        }
        if f.contains_key(&e.name) {
            // An older version is still being fetched; it ends first.
            return;
        }
    }
    if lock(&rt.retry_at)
        .get(&e.name)
        .is_some_and(|t| *t > Instant::now())
    {
        return;
    }
    let fetch = Arc::new(Fetch {
        digest: e.digest.clone(),
        done: e
            .blobs
            .iter()
            .map(|_| Arc::new(AtomicU64::new(0)))
            .collect(),
        total: e.size_bytes,
    });
    lock(&rt.fetching).insert(e.name.clone(), fetch.clone());
    let rt = rt.clone();
    let control = control.clone();
    let cancel = tasks.cancel.clone();
    tasks.tracker.spawn(async move {
        let started = Instant::now();
        info!(model = %e.name, digest = %e.digest, bytes = e.size_bytes, "fetching");
        let r = fetch_model(&rt, &control, &e, &fetch, &cancel).await;
        lock(&rt.fetching).remove(&e.name);
        rt.wake.notify_one();
        match r {
            Ok(()) => {
                lock(&rt.retry_at).remove(&e.name);
                info!(model = %e.name, secs = started.elapsed().as_secs_f64(), "model in place");
                // The previous version's blobs go once nothing uses them.
                let reg = control.with_state(|s| s.models.clone());
                rt.gc(&reg);
            }
            Err(err) => {
                if !cancel.is_cancelled() {
                    warn!(model = %e.name, "fetch failed (retrying in 2 s, keeping what arrived): {err}");
                }
                lock(&rt.retry_at).insert(e.name.clone(), Instant::now() + Duration::from_secs(2));
            }
        }
    });
}

async fn fetch_model(
    rt: &Runtime,
    control: &Arc<crate::control::Control>,
    e: &ModelEntry,
    fetch: &Fetch,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    // Small blobs (config, template) first: they finish at once.
    let mut order: Vec<usize> = (0..e.blobs.len()).collect();
    order.sort_by_key(|i| e.blobs[*i].size);
    for i in order {
        let digest = e.blobs[i].digest.clone();
        let control = control.clone();
        let peers = move || control.with_state(|s| swarm_peers(&s.models, &digest));
        rt.models
            .fetch(&e.blobs[i], &peers, &fetch.done[i], cancel)
            .await?;
    }
    let name = ModelName::parse(&e.name)?;
    rt.store().write_manifest(&name, e.manifest.as_bytes())?;
    Ok(())
}
