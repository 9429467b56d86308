//! The node daemon (`bzzz node run`): wiring and task ownership.
//!
//! Tasks (all on one [`TaskTracker`], all stopped by one
//! [`CancellationToken`]):
//!
//! | task | owns | stops on |
//! |---|---|---|
//! | network (`bzzz_net`) | the libp2p swarm, the cluster view | cancel |
//! | capabilities | the [`Detector`]; sends [`LocalInfo`] changes | cancel |
//! | runtime file | `<data_dir>/node.json` (addresses for scripts, tests, `demo`) | cancel |
//! | control (`crate::control`) | Raft, planners, leadership; inbound control messages | cancel (a leader hands off first) |
//! | HTTP (`http::serve`) | the listener; one task per connection (at most 512) | cancel (graceful, 2 s drain) |
//! | deploy runs | one per `POST /api/v1/deploy` | done, or cancel (hosts reported `cancelled`) |
//!
//! SIGINT/SIGTERM cancel the token; the process exits 0 once every task has
//! stopped, or after [`SHUTDOWN_GRACE`] at the latest.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bzzz_net::{LocalInfo, NetHandle};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::detect::Detector;

/// The per-source connection limit spares proven, connected members (a
/// node forwards many callers' requests from its one address).
fn members_exempt(net: &NetHandle) -> crate::http::serve::Exempt {
    let net = net.clone();
    Arc::new(move |ip| {
        let ip = ip.to_string();
        net.snapshot().peers.iter().any(|p| {
            p.proven
                && p.connected
                && p.announcement.addrs.iter().any(|a| {
                    let mut parts = a.split('/');
                    matches!(parts.nth(1), Some("ip4" | "ip6")) && parts.next() == Some(ip.as_str())
                })
        })
    })
}

/// Longest time shutdown may take before the process exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);
/// File in the data dir with the node's addresses, rewritten as they change.
pub const RUNTIME_FILE: &str = "node.json";
/// File in the data dir with the node's identity key.
pub const KEY_FILE: &str = "node_key.json";

/// Contents of `<data_dir>/node.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    pub v: u32,
    pub pid: u32,
    pub node_id: String,
    /// HTTP address actually bound (`IP:PORT`).
    pub api_addr: String,
    /// P2P addresses, each ending in `/p2p/<node_id>`.
    pub listen_addrs: Vec<String>,
}

pub use crate::state::{AppState, Tasks};

/// Runs a node until SIGINT/SIGTERM (or `cancel`). With a join token, the
/// node asks members to admit it; a token refused for good (forged,
/// expired) stops the node with an error.
pub async fn run(
    cfg: Config,
    join_token: Option<bzzz_proto::cluster::WireSecret>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let join = match &join_token {
        Some(t) => {
            Some(crate::keys::precheck_token(t.expose()).map_err(|e| anyhow::anyhow!("{e}"))?)
        }
        None => None,
    };
    prepare_data_dir(&cfg.data_dir)?;
    let key_path = cfg.data_dir.join(KEY_FILE);
    let (key, created) = bzzz_crypto::keyfile::load_or_create(&key_path)
        .with_context(|| format!("cannot load the node identity from {}", key_path.display()))?;
    if created {
        info!(path = %key_path.display(), "created a new node identity");
    }

    let listener = crate::http::serve::bind(cfg.http).with_context(|| {
        format!(
            "cannot serve HTTP on {} (set another with --http)",
            cfg.http
        )
    })?;
    let api_addr = listener.local_addr()?;

    let mut detector = Detector::new(&cfg);
    let first = detector.collect().await;
    let mut net_cfg = cfg.net.clone();
    if let Some(body) = &join {
        for a in &body.bootstrap {
            match a.parse() {
                Ok(m) if !net_cfg.bootstrap.contains(&m) => net_cfg.bootstrap.push(m),
                Ok(_) => {}
                Err(_) => warn!(addr = %a, "join token names an invalid address; ignored"),
            }
        }
    }
    let (local_tx, local_rx) = watch::channel(LocalInfo {
        capabilities: first,
        api_addr: Some(api_addr.to_string()),
        joining: join
            .as_ref()
            .and_then(|b| bzzz_crypto::records::parse_public_key(&b.admin_public_key).ok()),
        ..LocalInfo::default()
    });

    let tracker = TaskTracker::new();
    // The network starts after the keys service has published this node's
    // membership, so that it never runs open in an initialized cluster.
    let node_id = bzzz_net::node_id_of(&key.seed()).context("invalid node key")?;
    let share_passphrase = match &cfg.share_passphrase_file {
        Some(p) => {
            let text =
                zeroize::Zeroizing::new(std::fs::read_to_string(p).map_err(|e| {
                    anyhow::anyhow!("--share-passphrase-file {}: {e}", p.display())
                })?);
            let line = zeroize::Zeroizing::new(text.lines().next().unwrap_or("").to_owned());
            if line.chars().count() < 12 {
                anyhow::bail!(
                    "--share-passphrase-file {}: the passphrase must be at least 12 characters",
                    p.display()
                );
            }
            Some(line)
        }
        None => None,
    };
    let keys = crate::keys::Keys::load_with(
        &cfg.data_dir,
        &key,
        node_id,
        local_tx.clone(),
        share_passphrase,
    )?;
    let authz: bzzz_dht::SharedAuthz = Arc::default();
    let store = crate::dht::open_store(&cfg.data_dir, &authz)
        .context("cannot open the DHT record store")?;
    net_cfg.dht.store = Some(store.clone());
    let (net, inbound) = bzzz_net::start(
        &key.seed(),
        net_cfg,
        local_rx.clone(),
        cancel.clone(),
        &tracker,
    )
    .context("cannot start the network")?;
    let keys = keys.attach(net.clone());
    let access = {
        let signer = bzzz_crypto::NodeKey::from_seed(&key.seed());
        Arc::new(crate::access::Access::new(
            net.local_id().clone(),
            Arc::new(move |msg: &[u8]| signer.sign(msg)),
            cfg.serve.anonymous_inference,
        ))
    };
    let dht = {
        let signer = bzzz_crypto::NodeKey::from_seed(&key.seed());
        bzzz_dht::Dht::new(
            net.clone(),
            store,
            authz,
            bzzz_crypto::seal::AgeIdentity::derive(&key).context("node age identity")?,
            Arc::new(move |msg: &[u8]| signer.sign(msg)),
        )
    };
    drop(key);
    tracker.spawn(crate::keys::serve_inbound(
        keys.clone(),
        inbound.keys,
        tracker.clone(),
        cancel.clone(),
    ));
    let started = Instant::now();
    let control = crate::control::ControlCell::default();
    tracker.spawn(crate::control::serve(
        control.clone(),
        inbound.raft,
        tracker.clone(),
        cancel.clone(),
    ));
    tracker.spawn(crate::control::run(
        cfg.control.clone(),
        cfg.data_dir.clone(),
        keys.clone(),
        net.clone(),
        local_rx.clone(),
        started,
        control.clone(),
        access.clone(),
        tracker.clone(),
        cancel.clone(),
    ));
    let tasks = Tasks {
        tracker: tracker.clone(),
        cancel: cancel.clone(),
    };
    let serve = cfg.serve.managed.as_ref().map(|m| {
        (
            bzzz_serve::Supervisor::new(
                bzzz_serve::ManagedConfig {
                    command: m.command.clone(),
                    ctx: m.ctx,
                    start_timeout: m.start_timeout,
                    log_dir: cfg.data_dir.join("backends"),
                },
                tracker.clone(),
                cancel.clone(),
            ),
            m.models_dir.clone(),
        )
    });
    let models = crate::models::Runtime::open(&cfg.models_dir, net.clone(), serve)?;
    tracker.spawn(crate::models::serve_inbound(
        models.clone(),
        control.clone(),
        inbound.models,
        tasks.clone(),
    ));
    tracker.spawn(crate::models::agent(
        models.clone(),
        control.clone(),
        tasks.clone(),
        local_tx.clone(),
    ));
    tracker.spawn(crate::dht::run(
        dht.clone(),
        keys.clone(),
        control.clone(),
        cfg.control.clone(),
        crate::config::local_cluster_sections(cfg.source.as_deref()),
        inbound.dht,
        tasks.clone(),
    ));
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::channel::<String>(1);
    tracker.spawn(crate::control::custody(
        keys.clone(),
        control.clone(),
        fatal_tx.clone(),
        cancel.clone(),
    ));
    if let (Some(token), Some(body)) = (join_token, join) {
        if keys.is_initialized() {
            info!("already a cluster member; the join token is not needed");
        } else {
            let keys = keys.clone();
            let cancel = cancel.clone();
            tracker.spawn(async move {
                if let Err(e) = crate::keys::join_task(keys, token, body, cancel).await {
                    let _ = fatal_tx.send(e.to_string()).await;
                }
            });
        }
    }
    info!(node_id = %net.local_id(), http = %api_addr, mdns = cfg.net.mdns, "node started");

    let agents = Arc::new(crate::agents::Agents::new(local_tx.clone()));
    tracker.spawn(capability_task(
        detector,
        cfg.refresh_interval,
        local_tx,
        cancel.clone(),
    ));
    tracker.spawn(runtime_file_task(
        cfg.data_dir.join(RUNTIME_FILE),
        net.clone(),
        api_addr,
        cancel.clone(),
    ));
    let shutdown_control = control.clone();
    let shutdown_local = local_rx.clone();
    let state = Arc::new(AppState {
        net,
        keys,
        local: local_rx,
        started,
        api_addr,
        control,
        control_settings: cfg.control.clone(),
        deploys: Arc::default(),
        models,
        dht,
        access: access.clone(),
        backends: cfg.serve.backends.clone(),
        tasks,
        agents,
    });
    tracker.spawn(crate::agents::run(
        state.clone(),
        cfg.agents.clone(),
        cfg.data_dir.clone(),
    ));
    tracker.spawn(crate::agents::coord::run(state.clone(), cfg.agents.clone()));
    // TLS beside plain HTTP on the listeners (issue #24): the node's
    // certificate, from the cluster CA once there is one.
    let tls = Arc::new(crate::tls::Tls::new().context("cannot set up TLS")?);
    tracker.spawn(crate::tls::run(state.clone(), tls.clone()));
    {
        let st = state.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = crate::access::flush_denials(st) => {}
            }
        });
    }
    if let Some(addr) = cfg.serve.listen {
        let l = crate::http::serve::bind(addr)
            .with_context(|| format!("cannot serve the inference API on {addr} (serve.listen)"))?;
        info!(%addr, "inference API also on serve.listen");
        tracker.spawn(crate::http::serve::serve(
            l,
            crate::http::inference_router(state.clone()),
            members_exempt(&state.net),
            tracker.clone(),
            cancel.clone(),
            Some(tls.config.clone()),
        ));
    }
    let exempt = members_exempt(&state.net);
    let app = crate::app::router(state);
    tracker.spawn(crate::http::serve::serve(
        listener,
        app,
        exempt,
        tracker.clone(),
        cancel.clone(),
        Some(tls.config.clone()),
    ));
    tracker.close();

    let fatal = tokio::select! {
        _ = shutdown_signal(&cancel) => None,
        Some(msg) = fatal_rx.recv() => Some(msg),
    };
    info!("shutting down");
    // A leader hands off while the network still runs (SPEC §1).
    let local_now = shutdown_local.borrow().clone();
    crate::control::step_down(
        &shutdown_control,
        &local_now,
        started,
        Duration::from_millis(2_000),
    )
    .await;
    cancel.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("some tasks did not stop within {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    let _ = std::fs::remove_file(cfg.data_dir.join(RUNTIME_FILE));
    info!("stopped");
    match fatal {
        Some(msg) => Err(anyhow::anyhow!("{msg}")),
        None => Ok(()),
    }
}

/// Waits for SIGINT, SIGTERM or cancellation.
pub async fn shutdown_signal(cancel: &CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        _ => {
            warn!("cannot install signal handlers; stop with the API or kill");
            cancel.cancelled().await;
            return;
        }
    };
    tokio::select! {
        _ = int.recv() => {},
        _ = term.recv() => {},
        _ = cancel.cancelled() => {},
    }
}

fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| {
                format!(
                    "cannot create data dir {} (set another with --data-dir)",
                    dir.display()
                )
            })?;
    }
    anyhow::ensure!(
        dir.is_dir(),
        "data dir {} is not a directory",
        dir.display()
    );
    Ok(())
}

async fn capability_task(
    mut detector: Detector,
    every: Duration,
    tx: watch::Sender<LocalInfo>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; we collected at start
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let caps = detector.collect().await;
        if let Err(e) = caps.validate() {
            warn!("detected capabilities are invalid, not announcing them: {e}");
            continue;
        }
        tx.send_if_modified(|info| {
            // Residency comes from the backends (see `models::agent`), the
            // agents' availability from `agents::Agents`.
            let mut caps = caps;
            caps.serving = info.capabilities.serving.clone();
            caps.agents = info.capabilities.agents;
            if info.capabilities == caps {
                false
            } else {
                info.capabilities = caps;
                true
            }
        });
    }
}

async fn runtime_file_task(
    path: PathBuf,
    net: NetHandle,
    api_addr: SocketAddr,
    cancel: CancellationToken,
) {
    let mut rx = net.watch();
    let mut last: Option<RuntimeInfo> = None;
    loop {
        let snap = rx.borrow_and_update().clone();
        let info = RuntimeInfo {
            v: 1,
            pid: std::process::id(),
            node_id: snap.local_id.to_string(),
            api_addr: api_addr.to_string(),
            listen_addrs: snap.listen_addrs.clone(),
        };
        if last.as_ref() != Some(&info) && !info.listen_addrs.is_empty() {
            if let Err(e) = write_atomic(&path, &info) {
                warn!(path = %path.display(), "cannot write runtime file: {e}");
            }
            last = Some(info);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

fn write_atomic(path: &Path, info: &RuntimeInfo) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(info)?)?;
    std::fs::rename(&tmp, path)
}
