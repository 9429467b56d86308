//! The node's shared state, at the bottom of the crate: what every HTTP
//! handler, page, control task, deploy run and DHT or model call uses
//! ([`AppState`]) and where request-started work runs ([`Tasks`]). It
//! imports the feature modules' types, never the node (`node.rs` wires
//! everything and is imported by nothing but `main`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bzzz_net::{LocalInfo, NetHandle};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared by the HTTP handlers, pages and the node's tasks.
#[derive(Debug)]
pub struct AppState {
    pub net: NetHandle,
    pub keys: Arc<crate::keys::Keys>,
    pub local: watch::Receiver<LocalInfo>,
    pub started: Instant,
    pub api_addr: SocketAddr,
    pub control: crate::control::ControlCell,
    pub control_settings: crate::config::ControlSettings,
    /// SSH deploy runs started on this node.
    pub deploys: Arc<crate::deploy::Deployments>,
    /// Model distribution: the store, the swarm, the agent's fetches.
    pub models: Arc<crate::models::Runtime>,
    /// The DHT under UCXL addresses.
    pub dht: bzzz_dht::Dht,
    /// Who is calling; this node's side of the audit log.
    pub access: Arc<crate::access::Access>,
    /// `serve.backends`: servers already running on this node.
    pub backends: Vec<(String, String)>,
    /// Where request-started work (deploy runs) is spawned, so that
    /// shutdown stops it too.
    pub tasks: Tasks,
    /// This node's agents (SPEC §10): running tasks, live step logs.
    pub agents: Arc<crate::agents::Agents>,
}

/// The node's task tracker and its cancellation token: every task the
/// node starts, at start or later, is spawned here.
#[derive(Debug, Clone)]
pub struct Tasks {
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
}
