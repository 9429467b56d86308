//! Node configuration: parsed once, validated into [`Config`].
//!
//! Sources, later ones winning: built-in defaults < YAML file (`--config`, or
//! `/etc/bzzz/bzzz.yaml` when it exists) < `BZZZ_*` environment variables <
//! command-line flags. A node with no file starts with the defaults.
//!
//! Environment overrides name a field by its path, upper-cased, with `__`
//! between levels: `BZZZ_HTTP=127.0.0.1:9090`, `BZZZ_NETWORK__MDNS=false`,
//! `BZZZ_NETWORK__BOOTSTRAP=/ip4/…,/ip4/…` (lists are comma-separated),
//! `BZZZ_LABELS__ZONE=eu-1`. The value is read as YAML, like in the file.
//! `BZZZ_INSTALL_*` belong to `install.sh` and are ignored here.
//! `BZZZ_CONFIG`, `BZZZ_API` and `BZZZ_LOG` are not config fields (they
//! select the file, the CLI's API URL and the log filter).
//!
//! Every problem is reported as a [`ConfigError`] that names the field (or
//! the environment variable) and the problem; the binary exits with code 2.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bzzz_net::Multiaddr;
use bzzz_proto::{GpuInfo, Labels};
use serde::{Deserialize, Serialize};
use serde_norway::Value;

/// Default system-wide config file.
pub const SYSTEM_CONFIG: &str = "/etc/bzzz/bzzz.yaml";
/// Default P2P port (TCP and UDP/QUIC).
pub const DEFAULT_P2P_PORT: u16 = 4140;
/// Environment variables with the `BZZZ_` prefix that are not config fields.
const NON_FIELD_ENV: &[&str] = &["BZZZ_CONFIG", "BZZZ_API", "BZZZ_LOG"];

/// A config problem, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    /// Dotted field path (`network.peer_timeout`), the env var, or the file.
    pub field: String,
    pub problem: String,
}

fn cerr(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        problem: problem.into(),
    }
}

// ---------------------------------------------------------------------------
// The file format (every field documented; `bzzz config example` prints it).

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
    /// Score weights.
    pub weights: bzzz_control::score::Weights,
    /// Hysteresis: `margin` (relative), `min_margin` (absolute),
    /// `min_tenure` (seconds), `max_voters`.
    pub leadership: bzzz_control::leadership::Policy,
}

impl Default for ControlFile {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            planner_interval: Duration::from_millis(500),
            voter_grace: Duration::from_secs(30),
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
    pub context: bzzz_control::slurp::Context,
}

impl ControlSettings {
    /// The leader lease: followers refuse to vote for this long after
    /// hearing from a leader.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.raft.election_timeout_max)
    }
}

fn validate_control(c: &ControlFile) -> Result<ControlSettings, ConfigError> {
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
        context: bzzz_control::slurp::Context {
            weights: c.weights.clone(),
            policy: p.clone(),
        },
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

// ---------------------------------------------------------------------------
// Validated configuration.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Validated configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub log_format: LogFormat,
    pub log_level: String,
    pub net: bzzz_net::NetConfig,
    pub refresh_interval: Duration,
    pub ollama_url: String,
    pub ollama_models_dir: Option<PathBuf>,
    pub declared_gpus: Vec<GpuInfo>,
    pub declared_cpu_cores: Option<u32>,
    pub declared_memory_total_bytes: Option<u64>,
    pub labels: Labels,
    pub control: ControlSettings,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
}

/// Command-line values that override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub http: Option<String>,
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub no_mdns: bool,
    pub log_format: Option<String>,
}

/// Loads the config: `path` if given (must exist), else the system file if
/// it exists, else defaults; then `env` overrides, then `flags`.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &Overrides,
) -> Result<Config, ConfigError> {
    let (text, source) = match path {
        Some(p) => (
            Some(std::fs::read_to_string(p).map_err(|e| {
                cerr(
                    p.display().to_string(),
                    format!("cannot read config file: {e}"),
                )
            })?),
            Some(p.to_path_buf()),
        ),
        None if Path::new(SYSTEM_CONFIG).exists() => (
            Some(
                std::fs::read_to_string(SYSTEM_CONFIG)
                    .map_err(|e| cerr(SYSTEM_CONFIG, format!("cannot read config file: {e}")))?,
            ),
            Some(PathBuf::from(SYSTEM_CONFIG)),
        ),
        None => (None, None),
    };
    let file_name = source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "config".into());
    let mut tree = match text.as_deref() {
        Some(t) if !t.trim().is_empty() => serde_norway::from_str::<Value>(t)
            .map_err(|e| cerr(&file_name, format!("not valid YAML: {e}")))?,
        _ => Value::Mapping(Default::default()),
    };
    if tree.is_null() {
        // A file of comments only.
        tree = Value::Mapping(Default::default());
    }
    if !tree.is_mapping() {
        return Err(cerr(
            &file_name,
            "the top level must be a mapping of fields",
        ));
    }
    apply_env(&mut tree, env)?;
    let file: FileConfig = deserialize_named(tree)?;
    validate(file, flags, source)
}

/// Deserializes with the path of the offending field in the error.
fn deserialize_named(tree: Value) -> Result<FileConfig, ConfigError> {
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "config".to_owned()
        } else {
            path
        };
        cerr(field, e.into_inner().to_string())
    })
}

fn apply_env(
    tree: &mut Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with("BZZZ_")
                && !k.starts_with("BZZZ_INSTALL_")
                && !NON_FIELD_ENV.contains(&k.as_str())
        })
        .collect();
    vars.sort();
    if vars.is_empty() {
        return Ok(());
    }
    // The schema's paths: defaults serialize every field except `labels.*`.
    let defaults = serde_norway::to_value(FileConfig::default())
        .map_err(|e| cerr("config", format!("cannot list the config fields: {e}")))?;
    for (name, raw) in vars {
        let path: Vec<String> = name["BZZZ_".len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(cerr(&name, "malformed variable name (empty path segment)"));
        }
        let list_field = matches!(
            path.iter().map(String::as_str).collect::<Vec<_>>()[..],
            ["network", "listen" | "bootstrap"]
        );
        let value = if list_field {
            Value::Sequence(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect(),
            )
        } else {
            serde_norway::from_str::<Value>(&raw)
                .map_err(|e| cerr(&name, format!("not a valid value: {e}")))?
        };
        // A typo is an error naming the variable.
        if !path_known(&defaults, &path) {
            return Err(cerr(&name, format!("no config field `{}`", path.join("."))));
        }
        set_path(tree, &path, value);
    }
    Ok(())
}

fn path_known(defaults: &Value, path: &[String]) -> bool {
    let mut cur = defaults;
    for seg in path {
        match cur.get(seg.as_str()) {
            Some(v) => cur = v,
            // `labels.*` are optional and absent from the defaults; their own
            // strict parsing names a typo there.
            None => return path[0] == "labels",
        }
    }
    true
}

fn set_path(tree: &mut Value, path: &[String], value: Value) {
    let mut cur = tree;
    for seg in &path[..path.len() - 1] {
        let map = match cur {
            Value::Mapping(m) => m,
            other => {
                *other = Value::Mapping(Default::default());
                match other {
                    Value::Mapping(m) => m,
                    _ => return,
                }
            }
        };
        cur = map
            .entry(Value::String(seg.clone()))
            .or_insert_with(|| Value::Mapping(Default::default()));
    }
    if let Value::Mapping(m) = cur {
        m.insert(Value::String(path[path.len() - 1].clone()), value);
    }
}

fn parse_multiaddr(field: &str, s: &str) -> Result<Multiaddr, ConfigError> {
    s.parse::<Multiaddr>().map_err(|e| {
        cerr(
            field,
            format!(
                "{s:?} is not a multiaddr ({e}); example: /ip4/10.0.0.5/tcp/{DEFAULT_P2P_PORT}"
            ),
        )
    })
}

fn positive(field: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(cerr(field, "must be longer than 0s"));
    }
    Ok(d)
}

fn validate(
    mut f: FileConfig,
    flags: &Overrides,
    source: Option<PathBuf>,
) -> Result<Config, ConfigError> {
    // Flags win over file and environment.
    if let Some(d) = &flags.data_dir {
        f.data_dir = d.clone();
    }
    if let Some(h) = &flags.http {
        f.http = h.clone();
    }
    if !flags.listen.is_empty() {
        f.network.listen = flags.listen.clone();
    }
    if !flags.bootstrap.is_empty() {
        f.network.bootstrap = flags.bootstrap.clone();
    }
    if flags.no_mdns {
        f.network.mdns = false;
    }
    if let Some(l) = &flags.log_format {
        f.log_format = l.clone();
    }

    let http: SocketAddr = f.http.parse().map_err(|_| {
        cerr(
            "http",
            format!("{:?} is not an IP:PORT address (e.g. 0.0.0.0:8080)", f.http),
        )
    })?;
    let log_format = match f.log_format.as_str() {
        "auto" | "human" => LogFormat::Human,
        "json" => LogFormat::Json,
        other => {
            return Err(cerr(
                "log_format",
                format!("{other:?} is not one of auto, human, json"),
            ));
        }
    };
    if f.data_dir.as_os_str().is_empty() {
        return Err(cerr("data_dir", "must not be empty"));
    }
    if f.network.listen.is_empty() {
        return Err(cerr("network.listen", "needs at least one address"));
    }
    let listen = f
        .network
        .listen
        .iter()
        .enumerate()
        .map(|(i, s)| parse_multiaddr(&format!("network.listen[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    let bootstrap = f
        .network
        .bootstrap
        .iter()
        .enumerate()
        .map(|(i, s)| parse_multiaddr(&format!("network.bootstrap[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    let n = &f.network;
    let announce_interval = positive("network.announce_interval", n.announce_interval)?;
    let peer_timeout = positive("network.peer_timeout", n.peer_timeout)?;
    if peer_timeout <= announce_interval {
        return Err(cerr(
            "network.peer_timeout",
            format!(
                "must be longer than network.announce_interval ({})",
                humantime::format_duration(announce_interval)
            ),
        ));
    }
    let ping_interval = positive("network.ping_interval", n.ping_interval)?;
    let ping_timeout = positive("network.ping_timeout", n.ping_timeout)?;
    if n.max_peers == 0 || n.max_peers > 10_000 {
        return Err(cerr("network.max_peers", "must be between 1 and 10000"));
    }
    let c = &f.capabilities;
    let refresh_interval = positive("capabilities.refresh_interval", c.refresh_interval)?;
    if !(c.ollama_url.starts_with("http://") || c.ollama_url.starts_with("https://")) {
        return Err(cerr(
            "capabilities.ollama_url",
            "must start with http:// or https://",
        ));
    }
    let mut declared_gpus = Vec::new();
    for (i, g) in c.declared.gpus.iter().enumerate() {
        let field = format!("capabilities.declared.gpus[{i}]");
        if g.vendor.trim().is_empty() || g.model.trim().is_empty() {
            return Err(cerr(field, "vendor and model must not be empty"));
        }
        if g.vram_total_bytes == 0 {
            return Err(cerr(
                format!("{field}.vram_total_bytes"),
                "must be more than 0",
            ));
        }
        declared_gpus.push(GpuInfo {
            vendor: g.vendor.to_ascii_lowercase(),
            model: g.model.clone(),
            vram_total_bytes: g.vram_total_bytes,
            declared: true,
            ..Default::default()
        });
    }
    if c.declared.cpu_cores == Some(0) {
        return Err(cerr(
            "capabilities.declared.cpu_cores",
            "must be more than 0",
        ));
    }
    if c.declared.memory_total_bytes == Some(0) {
        return Err(cerr(
            "capabilities.declared.memory_total_bytes",
            "must be more than 0",
        ));
    }
    let labels = Labels {
        zone: f.labels.zone,
        rack: f.labels.rack,
        extra: f.labels.extra,
    };
    labels.validate().map_err(|e| cerr(e.field, e.problem))?;
    let control = validate_control(&f.control)?;

    Ok(Config {
        data_dir: f.data_dir,
        http,
        log_format,
        log_level: f.log_level,
        net: bzzz_net::NetConfig {
            listen,
            bootstrap,
            mdns: n.mdns,
            announce_interval,
            peer_timeout,
            max_peers: n.max_peers,
            ping_interval,
            ping_timeout,
        },
        refresh_interval,
        ollama_url: c.ollama_url.trim_end_matches('/').to_owned(),
        ollama_models_dir: c.ollama_models_dir.clone(),
        declared_gpus,
        declared_cpu_cores: c.declared.cpu_cores,
        declared_memory_total_bytes: c.declared.memory_total_bytes,
        labels,
        control,
        source,
    })
}

/// A commented example file with every field and its default.
pub fn example() -> String {
    let n = NetworkFile::default();
    let c = CapabilitiesFile::default();
    let k = ControlFile::default();
    let d = |x: Duration| humantime::format_duration(x).to_string();
    let mut extra = BTreeMap::new();
    extra.insert("owner", "ml-team");
    format!(
        r#"# BZZZ node configuration (/etc/bzzz/bzzz.yaml, or --config PATH).
# Every field is optional; shown values are the defaults.
# Any field can be overridden by an environment variable named after its path:
#   BZZZ_HTTP=127.0.0.1:9090   BZZZ_NETWORK__MDNS=false   BZZZ_LABELS__ZONE=eu-1
# Command-line flags win over both.

# Node identity key and local state.
data_dir: /var/lib/bzzz
# HTTP API (/api/v1/), web UI (/), setup (/setup) and metrics (/metrics).
http: 0.0.0.0:8080
# auto | human | json
log_format: auto
# Log filter; BZZZ_LOG overrides it (e.g. BZZZ_LOG=info,bzzz_net=debug).
log_level: info

network:
  # Multiaddrs to listen on: TCP and QUIC.
  listen:
    - {l0}
    - {l1}
  # Peers to join through (any member); redialed with backoff when lost.
  # bootstrap:
  #   - /ip4/10.0.0.5/tcp/{port}/p2p/12D3KooW...
  bootstrap: []
  # Find peers on the local network (multicast DNS).
  mdns: {mdns}
  # Capability announcement period.
  announce_interval: {ai}
  # A node silent for this long leaves the cluster view (> announce_interval).
  peer_timeout: {pt}
  # Most peers to hold connections to.
  max_peers: {mp}
  # Link liveness: a link whose ping takes longer than ping_timeout is closed.
  ping_interval: {pi}
  ping_timeout: {pto}

capabilities:
  # How often hardware and Ollama are re-detected (changes are announced at once).
  refresh_interval: {ri}
  # Ollama's HTTP API on this node.
  ollama_url: {ou}
  # Ollama's model store; unset = $OLLAMA_MODELS, ~/.ollama/models,
  # /usr/share/ollama/.ollama/models (the first that exists).
  # ollama_models_dir: /data/ollama/models
  # Hardware that cannot be detected; merged in and marked "declared".
  declared:
    gpus: []
    #  - vendor: nvidia
    #    model: RTX 4090
    #    vram_total_bytes: 25769803776
    # cpu_cores: 64
    # memory_total_bytes: 274877906944

# Placement labels, announced with the capabilities.
labels: {{}}
#  zone: eu-west-1
#  rack: r12
#  extra:
#    owner: {owner}

# Control plane (Raft leader election, scores, SLURP).
control:
  # Leader heartbeat period.
  heartbeat_interval: {hb}
  # Election timeout range; a follower first waits out the leader's lease
  # (election_timeout_max), then a random time in this range.
  election_timeout_min: {emin}
  election_timeout_max: {emax}
  # How often the leader plans (inventory, Raft membership, leadership).
  planner_interval: {plan}
  # A voter out of sight keeps its seat this long.
  voter_grace: {grace}
  # Node score = vram·vram_gib + ram·ram_gib + cores·cpu_core
  #   + disk_free·disk_free_gib + min(uptime, cap)·uptime_hour
  #   − load_per_core·load − rtt_ms·link_ms   (sizes in GiB)
  weights:
    vram_gib: {w_vram}
    ram_gib: {w_ram}
    cpu_core: {w_cpu}
    disk_free_gib: {w_disk}
    uptime_hour: {w_up}
    uptime_cap_hours: {w_cap}
    load: {w_load}
    link_ms: {w_link}
  # Leadership moves to a better-scored voter only when it beats the leader
  # by margin (relative) and min_margin (absolute) after min_tenure seconds.
  leadership:
    margin: {margin}
    min_margin: {min_margin}
    min_tenure: {tenure}
    max_voters: {max_voters}
"#,
        l0 = n.listen[0],
        l1 = n.listen[1],
        port = DEFAULT_P2P_PORT,
        mdns = n.mdns,
        ai = d(n.announce_interval),
        pt = d(n.peer_timeout),
        mp = n.max_peers,
        pi = d(n.ping_interval),
        pto = d(n.ping_timeout),
        ri = d(c.refresh_interval),
        ou = c.ollama_url,
        owner = extra["owner"],
        hb = d(k.heartbeat_interval),
        emin = d(k.election_timeout_min),
        emax = d(k.election_timeout_max),
        plan = d(k.planner_interval),
        grace = d(k.voter_grace),
        w_vram = k.weights.vram_gib,
        w_ram = k.weights.ram_gib,
        w_cpu = k.weights.cpu_core,
        w_disk = k.weights.disk_free_gib,
        w_up = k.weights.uptime_hour,
        w_cap = k.weights.uptime_cap_hours,
        w_load = k.weights.load,
        w_link = k.weights.link_ms,
        margin = k.leadership.margin,
        min_margin = k.leadership.min_margin,
        tenure = k.leadership.min_tenure.as_secs_f64(),
        max_voters = k.leadership.max_voters,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, yaml).expect("write");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        load(Some(&p), env, &Overrides::default())
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let c = load_str(&example(), &[]).expect("example is valid");
        assert_eq!(c.http.to_string(), "0.0.0.0:8080");
        assert!(c.net.mdns);
        assert_eq!(c.net.listen.len(), 2);
        assert_eq!(c.net.peer_timeout, Duration::from_secs(6));
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_field() {
        let e = load_str("network:\n  mdsn: true\n", &[]).unwrap_err();
        assert_eq!(e.field, "network.mdsn");
        assert!(e.problem.contains("unknown field"), "{e}");

        let e = load_str("network:\n  max_peers: lots\n", &[]).unwrap_err();
        assert_eq!(e.field, "network.max_peers", "{e}");

        let e = load_str("http: nope\n", &[]).unwrap_err();
        assert_eq!(e.field, "http");

        let e = load_str("network:\n  bootstrap: [\"10.0.0.1:4140\"]\n", &[]).unwrap_err();
        assert_eq!(e.field, "network.bootstrap[0]");

        let e = load_str("network:\n  peer_timeout: 1s\n", &[]).unwrap_err();
        assert_eq!(e.field, "network.peer_timeout");

        let e = load_str("network:\n  announce_interval: soon\n", &[]).unwrap_err();
        assert_eq!(e.field, "network.announce_interval");

        let e = load_str("labels:\n  zonee: x\n", &[]).unwrap_err();
        assert!(e.problem.contains("zonee"), "{e}");

        let e = load_str("labels:\n  zone: \"\"\n", &[]).unwrap_err();
        assert_eq!(e.field, "labels.zone");

        let e = load_str("- a\n- b\n", &[]).unwrap_err();
        assert!(e.problem.contains("mapping"), "{e}");
    }

    #[test]
    fn environment_overrides_the_file_and_flags_override_both() {
        let c = load_str(
            "http: 127.0.0.1:1\n",
            &[
                ("BZZZ_HTTP", "127.0.0.1:2"),
                ("BZZZ_NETWORK__MDNS", "false"),
                (
                    "BZZZ_NETWORK__BOOTSTRAP",
                    "/ip4/10.1.1.1/tcp/4140, /ip4/10.1.1.2/tcp/4140",
                ),
                ("BZZZ_LABELS__ZONE", "eu-1"),
                ("BZZZ_CONFIG", "/ignored"),
                ("OTHER", "x"),
            ],
        )
        .expect("valid");
        assert_eq!(c.http.to_string(), "127.0.0.1:2");
        assert!(!c.net.mdns);
        assert_eq!(c.net.bootstrap.len(), 2);
        assert_eq!(c.labels.zone.as_deref(), Some("eu-1"));

        let e = load_str("", &[("BZZZ_NETWORK__MDSN", "false")]).unwrap_err();
        assert_eq!(e.field, "BZZZ_NETWORK__MDSN");
        let e = load_str("", &[("BZZZ_NETWORK__MAX_PEERS", "many")]).unwrap_err();
        assert_eq!(e.field, "network.max_peers");

        let flags = Overrides {
            http: Some("127.0.0.1:3".into()),
            no_mdns: true,
            ..Default::default()
        };
        let c = load(
            None::<&Path>,
            [("BZZZ_HTTP".to_string(), "127.0.0.1:2".to_string())],
            &flags,
        );
        // No file given and (on test machines) no system file: defaults apply.
        if !Path::new(SYSTEM_CONFIG).exists() {
            let c = c.expect("valid");
            assert_eq!(c.http.to_string(), "127.0.0.1:3");
            assert!(!c.net.mdns);
        }
    }

    #[test]
    fn declared_capabilities_are_checked_and_marked() {
        let c = load_str(
            "capabilities:\n  declared:\n    gpus:\n      - {vendor: NVIDIA, model: H100, vram_total_bytes: 85899345920}\n    cpu_cores: 64\n",
            &[],
        )
        .expect("valid");
        assert_eq!(c.declared_gpus.len(), 1);
        assert!(c.declared_gpus[0].declared);
        assert_eq!(c.declared_gpus[0].vendor, "nvidia");
        assert_eq!(c.declared_cpu_cores, Some(64));

        let e = load_str(
            "capabilities:\n  declared:\n    gpus:\n      - {vendor: x, model: y, vram_total_bytes: 0}\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.field, "capabilities.declared.gpus[0].vram_total_bytes");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let e = load(
            Some(Path::new("/nonexistent/bzzz.yaml")),
            std::iter::empty(),
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(e.field, "/nonexistent/bzzz.yaml");
    }
}
