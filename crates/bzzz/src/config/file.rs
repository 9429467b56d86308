//! The file format (every field documented; `bzzz config example` prints it).

use super::*;

/// Top level of `bzzz.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Directory for the node identity key and local state.
    pub data_dir: PathBuf,
    /// Address of the HTTP API, web UI and metrics (`IP:PORT`).
    pub http: String,
    /// Log format: `auto` (human), `human` or `json`.
    pub log_format: String,
    /// Default log filter (`error`, `warn`, `info`, `debug`, `trace`, or a
    /// tracing filter such as `info,bzzz_net=debug`). `BZZZ_LOG` overrides it.
    pub log_level: String,
    pub network: NetworkFile,
    pub capabilities: CapabilitiesFile,
    pub labels: LabelsFile,
    pub control: ControlFile,
    pub models: ModelsFile,
    pub serve: ServeFile,
    pub dht: DhtFile,
    pub agents: AgentsFile,
}

/// `agents:` section: this node works tasks of the cluster's repositories
/// (SPEC §10, `docs/agents.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsFile {
    /// Run agents on this node (needs bubblewrap, `prlimit`, `setpriv`).
    pub enabled: bool,
    /// Tasks worked at once on this node.
    pub max_tasks: u32,
    /// The model tasks are worked with when neither the task nor its
    /// repository names one.
    pub model: Option<String>,
    /// The OpenAI-compatible API (`…/v1`) the agent asks; default: this
    /// node's own inference router (`http://HTTP/v1`), so access control
    /// and audit apply.
    pub llm_url: Option<String>,
    /// A file holding the agent's API key (`bzzz apikey create`, `infer`
    /// on the model); none: no key is sent.
    pub api_key_file: Option<PathBuf>,
    /// How long a claim holds without a renewal (renewed every third).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often the repositories are read for tasks.
    #[serde(with = "humantime_serde")]
    pub poll_every: Duration,
    /// Wall time of one command the model runs.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Wall time of one task.
    #[serde(with = "humantime_serde")]
    pub task_timeout: Duration,
    /// Address space of one sandboxed command, bytes.
    pub memory_bytes: u64,
    /// Processes of the sandbox.
    pub processes: u64,
    /// Escalation: a URL that gets a JSON POST when a task fails or
    /// needs a person (`{event, repo, task, reason, node, attempts,
    /// branch}`).
    pub webhook: Option<String>,
    /// Where tasks are checked out and worked. The sandbox user
    /// (`nobody`, when the node runs as root) must reach it, so it lies
    /// outside the data directory: default `$TMPDIR/bzzz-agents-NODE`.
    pub work_dir: Option<PathBuf>,
}

impl Default for AgentsFile {
    fn default() -> Self {
        Self {
            enabled: false,
            max_tasks: 1,
            model: None,
            llm_url: None,
            api_key_file: None,
            lease: Duration::from_secs(60),
            poll_every: Duration::from_secs(10),
            command_timeout: Duration::from_secs(60),
            task_timeout: Duration::from_secs(15 * 60),
            memory_bytes: 1 << 30,
            processes: 64,
            webhook: None,
            work_dir: None,
        }
    }
}

/// `dht:` section: the DHT under UCXL addresses (SPEC §7).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhtFile {
    /// How many nodes hold each record (the closest by Kademlia distance).
    pub replication: usize,
    /// How often each holder re-sends its records to the closest nodes:
    /// a lost replica is restored within this (plus a lookup).
    #[serde(with = "humantime_serde")]
    pub replicate_every: Duration,
    /// How often a record's author republishes it.
    #[serde(with = "humantime_serde")]
    pub republish_every: Duration,
}

impl Default for DhtFile {
    fn default() -> Self {
        Self {
            replication: 3,
            replicate_every: Duration::from_secs(20),
            republish_every: Duration::from_secs(300),
        }
    }
}

/// `serve:` section: model backends on this node and the inference API.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeFile {
    /// Servers already running on this node: `{kind: ollama | openai, url}`.
    pub backends: Vec<BackendFile>,
    /// Start one server per model placed here: `{command: [...], ctx,
    /// start_timeout}`; `{model_path}`, `{port}`, `{ctx}` in `command` are
    /// replaced.
    pub managed: Option<ManagedFile>,
    /// Deprecated and ignored: after setup the inference API always needs
    /// an API key with `infer` on the model, unless inference is opened
    /// with `anonymous_inference`.
    pub require_auth: bool,
    /// Open the inference API to callers without a key (after setup it
    /// needs an API key with `infer` on the model). The cluster rule
    /// `anonymous_inference` (admin-signed, `bzzz serve anonymous`)
    /// overrides this per-node default everywhere.
    pub anonymous_inference: bool,
    /// A second address (`IP:PORT`) serving only the inference API, for
    /// clients that expect Ollama's port (e.g. `0.0.0.0:11434` where no
    /// Ollama listens).
    pub listen: Option<String>,
}

/// One entry of `serve.backends`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    /// `ollama` (Ollama's HTTP API) or `openai` (an OpenAI-compatible server).
    pub kind: String,
    /// Its base URL, e.g. `http://127.0.0.1:11434`.
    pub url: String,
}

/// `serve.managed:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedFile {
    /// The command (argv) that serves one GGUF over an OpenAI-compatible
    /// API with `/health`, e.g. `[python3, scripts/serve-llamacpp.py,
    /// --model, "{model_path}", --port, "{port}"]`.
    pub command: Vec<String>,
    /// Where models are read from (default: `models.ollama_dir`).
    #[serde(default)]
    pub models_dir: Option<PathBuf>,
    /// Context length given as `{ctx}`.
    #[serde(default = "default_ctx")]
    pub ctx: u32,
    /// How long a backend may take to answer its health check.
    #[serde(default = "default_start_timeout", with = "humantime_serde")]
    pub start_timeout: Duration,
}

fn default_ctx() -> u32 {
    4096
}

fn default_start_timeout() -> Duration {
    Duration::from_secs(120)
}

/// `models:` section: model distribution (SPEC §8).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsFile {
    /// The Ollama models directory BZZZ writes placed models into (and
    /// serves blobs from). Empty = `capabilities.ollama_models_dir` if set,
    /// else `$OLLAMA_MODELS`, else `/usr/share/ollama/.ollama/models` when
    /// it exists (Ollama's Linux service user), else `~/.ollama/models`.
    /// Partial downloads go to its `bzzz/` subdirectory (same filesystem,
    /// outside `blobs/`, which Ollama prunes).
    pub ollama_dir: Option<PathBuf>,
}

/// `control:` section: Raft timing, node scores and leadership.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlFile {
    /// Leader heartbeat period.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A follower that hears no leader for a random time between these
    /// (after the leader's lease, `election_timeout_max`) calls an election.
    #[serde(with = "humantime_serde")]
    pub election_timeout_min: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout_max: Duration,
    /// How often the leader runs its planners (inventory, membership,
    /// leadership).
    #[serde(with = "humantime_serde")]
    pub planner_interval: Duration,
    /// A voter out of sight keeps its seat (at its last score) this long.
    #[serde(with = "humantime_serde")]
    pub voter_grace: Duration,
    /// A member out of sight this long is dropped from Raft's voters and
    /// learners by the leader (it keeps its certificate and share until
    /// the operator removes it).
    #[serde(with = "humantime_serde")]
    pub evict_after: Duration,
    /// The leader has the audit chain's head signed by the threshold
    /// admin key every this many entries...
    pub audit_checkpoint_every: u64,
    /// ...and this long after the last checkpoint when there are newer
    /// entries.
    #[serde(with = "humantime_serde")]
    pub audit_checkpoint_interval: Duration,
    /// Score weights.
    pub weights: bzzz_control::score::Weights,
    /// Hysteresis: `margin` (relative), `min_margin` (absolute),
    /// `min_tenure` (seconds), `max_voters`.
    pub leadership: bzzz_control::leadership::Policy,
}

impl Default for ControlFile {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(250),
            election_timeout_max: Duration::from_millis(300),
            planner_interval: Duration::from_millis(500),
            voter_grace: Duration::from_secs(30),
            evict_after: Duration::from_secs(24 * 3600),
            audit_checkpoint_every: 256,
            audit_checkpoint_interval: Duration::from_secs(3600),
            weights: Default::default(),
            leadership: Default::default(),
        }
    }
}

/// Validated `control:` settings.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    pub raft: openraft::Config,
    pub planner_interval: Duration,
    pub voter_grace: Duration,
    pub evict_after: Duration,
    /// See [`ControlFile::audit_checkpoint_every`].
    pub audit_checkpoint_every: u64,
    pub audit_checkpoint_interval: Duration,
    /// Weights and leadership from the local file.
    pub context: bzzz_control::slurp::Context,
    /// The cluster's values from the DHT, once `bzzz config migrate` put
    /// them there: they win over the local ones ([`Self::ctx`]).
    pub cluster: std::sync::Arc<std::sync::RwLock<ClusterOverrides>>,
}

/// Cluster-wide settings read from the DHT (`None`: not set there).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterOverrides {
    pub weights: Option<bzzz_control::score::Weights>,
    pub leadership: Option<bzzz_control::leadership::Policy>,
}

impl ControlSettings {
    /// The leader lease: followers refuse to vote for this long after
    /// hearing from a leader.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.raft.election_timeout_max)
    }

    /// The weights and leadership policy in force: the cluster's (DHT)
    /// where set, else the local file's.
    pub fn ctx(&self) -> bzzz_control::slurp::Context {
        let o = self.cluster.read().map(|o| o.clone()).unwrap_or_default();
        bzzz_control::slurp::Context {
            weights: o.weights.unwrap_or_else(|| self.context.weights.clone()),
            policy: o.leadership.unwrap_or_else(|| self.context.policy.clone()),
        }
    }
}

pub(super) fn validate_control(c: &ControlFile) -> Result<ControlSettings, ConfigError> {
    let ms = |field: &str, d: Duration| -> Result<u64, ConfigError> {
        let d = positive(field, d)?;
        u64::try_from(d.as_millis()).map_err(|_| cerr(field, "too long"))
    };
    let hb = ms("control.heartbeat_interval", c.heartbeat_interval)?;
    let emin = ms("control.election_timeout_min", c.election_timeout_min)?;
    let emax = ms("control.election_timeout_max", c.election_timeout_max)?;
    if emin <= hb * 2 {
        return Err(cerr(
            "control.election_timeout_min",
            "must be more than twice control.heartbeat_interval",
        ));
    }
    if emax <= emin {
        return Err(cerr(
            "control.election_timeout_max",
            "must be longer than control.election_timeout_min",
        ));
    }
    let raft = bzzz_control::raft::raft_config(hb, emin, emax).map_err(|e| cerr("control", e))?;
    c.weights
        .validate()
        .map_err(|e| cerr("control.weights", e))?;
    let p = &c.leadership;
    if !(p.margin.is_finite() && p.margin >= 0.0) {
        return Err(cerr("control.leadership.margin", "must be a number ≥ 0"));
    }
    if !(p.min_margin.is_finite() && p.min_margin >= 0.0) {
        return Err(cerr(
            "control.leadership.min_margin",
            "must be a number ≥ 0",
        ));
    }
    if !(1..=9).contains(&p.max_voters) {
        return Err(cerr(
            "control.leadership.max_voters",
            "must be between 1 and 9",
        ));
    }
    Ok(ControlSettings {
        raft,
        planner_interval: positive("control.planner_interval", c.planner_interval)?,
        voter_grace: positive("control.voter_grace", c.voter_grace)?,
        evict_after: positive("control.evict_after", c.evict_after)?,
        audit_checkpoint_every: match c.audit_checkpoint_every {
            1..=1_000_000 => c.audit_checkpoint_every,
            _ => {
                return Err(cerr(
                    "control.audit_checkpoint_every",
                    "between 1 and 1000000 entries",
                ));
            }
        },
        audit_checkpoint_interval: positive(
            "control.audit_checkpoint_interval",
            c.audit_checkpoint_interval,
        )?,
        context: bzzz_control::slurp::Context {
            weights: c.weights.clone(),
            policy: p.clone(),
        },
        cluster: Default::default(),
    })
}

/// `labels:` section: placement labels announced with the capabilities.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelsFile {
    /// Failure domain, e.g. a room or site (`eu-west-1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Rack or shelf within the zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    /// Free-form `name: value` labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

/// `network:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkFile {
    /// Multiaddrs to listen on (TCP and QUIC).
    pub listen: Vec<String>,
    /// Multiaddrs of peers to join through (`/ip4/IP/tcp/PORT[/p2p/ID]`).
    pub bootstrap: Vec<String>,
    /// Find peers on the local network with mDNS.
    pub mdns: bool,
    /// How often this node announces its capabilities (e.g. `2s`).
    #[serde(with = "humantime_serde")]
    pub announce_interval: Duration,
    /// A node silent for this long leaves the cluster view (e.g. `6s`).
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
    /// Most peers to keep connections to.
    pub max_peers: u32,
    /// Link liveness check period.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A link whose ping takes longer is closed as dead.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
}

/// `capabilities:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapabilitiesFile {
    /// How often capabilities are re-detected (a change is announced at once).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Ollama's HTTP API.
    pub ollama_url: String,
    /// Ollama's model store; empty = `$OLLAMA_MODELS`, `~/.ollama/models`,
    /// `/usr/share/ollama/.ollama/models` (first that exists).
    pub ollama_models_dir: Option<PathBuf>,
    /// Hardware that cannot be detected; merged in and marked `declared`.
    pub declared: DeclaredFile,
}

/// `capabilities.declared:` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeclaredFile {
    /// GPUs to add (`vendor`, `model`, `vram_total_bytes`).
    pub gpus: Vec<DeclaredGpu>,
    /// Replaces the detected logical core count.
    pub cpu_cores: Option<u32>,
    /// Replaces the detected memory size, bytes.
    pub memory_total_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredGpu {
    pub vendor: String,
    pub model: String,
    pub vram_total_bytes: u64,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/bzzz"),
            http: "0.0.0.0:8080".into(),
            log_format: "auto".into(),
            log_level: "info".into(),
            network: NetworkFile::default(),
            capabilities: CapabilitiesFile::default(),
            labels: LabelsFile::default(),
            control: ControlFile::default(),
            models: ModelsFile::default(),
            serve: ServeFile::default(),
            dht: DhtFile::default(),
            agents: AgentsFile::default(),
        }
    }
}

impl Default for NetworkFile {
    fn default() -> Self {
        let d = bzzz_net::NetConfig::default();
        Self {
            listen: vec![
                format!("/ip4/0.0.0.0/tcp/{DEFAULT_P2P_PORT}"),
                format!("/ip4/0.0.0.0/udp/{DEFAULT_P2P_PORT}/quic-v1"),
            ],
            bootstrap: vec![],
            mdns: d.mdns,
            announce_interval: d.announce_interval,
            peer_timeout: d.peer_timeout,
            max_peers: d.max_peers,
            ping_interval: d.ping_interval,
            ping_timeout: d.ping_timeout,
        }
    }
}

impl Default for CapabilitiesFile {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(10),
            ollama_url: "http://127.0.0.1:11434".into(),
            ollama_models_dir: None,
            declared: DeclaredFile::default(),
        }
    }
}
