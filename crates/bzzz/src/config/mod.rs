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
//! `BZZZ_CONFIG`, `BZZZ_API`, `BZZZ_LOG` and `BZZZ_SHARE_PASSPHRASE_FILE`
//! are not config fields (they select the file, the CLI's API URL, the log
//! filter and the share passphrase file of `node run`).
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
const NON_FIELD_ENV: &[&str] = &[
    "BZZZ_CONFIG",
    "BZZZ_API",
    "BZZZ_LOG",
    "BZZZ_SHARE_PASSPHRASE_FILE",
];

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

mod example;
mod file;

pub use example::example;
use file::validate_control;
pub use file::*;

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
    /// Where placed models land (Ollama's layout): `models.ollama_dir`.
    pub models_dir: PathBuf,
    /// A file whose first line is the passphrase that also protects this
    /// node's admin key share at rest (`--share-passphrase-file`,
    /// `BZZZ_SHARE_PASSPHRASE_FILE`). Unset: the share is sealed to the
    /// node's own key only (on the same disk).
    pub share_passphrase_file: Option<PathBuf>,
    /// Serving: backends, managed backends, access.
    pub serve: ServeSettings,
    /// `agents:`: this node works repository tasks.
    pub agents: AgentSettings,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
}

/// Validated `serve:` section.
#[derive(Debug, Clone, Default)]
pub struct ServeSettings {
    /// `(kind, base URL)`; kind is `ollama` or `openai`.
    pub backends: Vec<(String, String)>,
    pub managed: Option<ManagedSettings>,
    /// `serve.anonymous_inference`: the inference API without a key.
    pub anonymous_inference: bool,
    /// `serve.listen`: the inference API alone on a second address.
    pub listen: Option<SocketAddr>,
}

/// Validated `agents:` section (see [`file::AgentsFile`]).
#[derive(Debug, Clone, Default)]
pub struct AgentSettings {
    pub enabled: bool,
    pub max_tasks: u32,
    pub model: Option<String>,
    pub llm_url: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub lease: Duration,
    pub poll_every: Duration,
    pub command_timeout: Duration,
    pub task_timeout: Duration,
    pub memory_bytes: u64,
    pub processes: u64,
    pub work_dir: Option<PathBuf>,
    pub webhook: Option<String>,
}

fn validate_agents(a: &file::AgentsFile) -> Result<AgentSettings, ConfigError> {
    if !(1..=64).contains(&a.max_tasks) {
        return Err(cerr("agents.max_tasks", "must be 1 to 64"));
    }
    if let Some(u) = &a.llm_url
        && (!(u.starts_with("http://") || u.starts_with("https://")) || u.len() > 512)
    {
        return Err(cerr(
            "agents.llm_url",
            "must be an http:// or https:// URL (an OpenAI-compatible …/v1)",
        ));
    }
    if let Some(u) = &a.webhook
        && (!(u.starts_with("http://") || u.starts_with("https://")) || u.len() > 1024)
    {
        return Err(cerr("agents.webhook", "must be an http:// or https:// URL"));
    }
    if a.model
        .as_ref()
        .is_some_and(|m| m.is_empty() || m.len() > 256)
    {
        return Err(cerr("agents.model", "must be 1 to 256 characters"));
    }
    if a.lease < Duration::from_secs(1) || a.lease > Duration::from_secs(3600) {
        return Err(cerr("agents.lease", "must be 1s to 1h"));
    }
    for (f, d) in [
        ("agents.poll_every", a.poll_every),
        ("agents.command_timeout", a.command_timeout),
        ("agents.task_timeout", a.task_timeout),
    ] {
        if d.is_zero() {
            return Err(cerr(f, "must be more than 0"));
        }
    }
    if a.memory_bytes < 16 << 20 {
        return Err(cerr("agents.memory_bytes", "must be at least 16 MiB"));
    }
    if !(4..=4096).contains(&a.processes) {
        return Err(cerr("agents.processes", "must be 4 to 4096"));
    }
    Ok(AgentSettings {
        enabled: a.enabled,
        max_tasks: a.max_tasks,
        model: a.model.clone(),
        llm_url: a
            .llm_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_owned()),
        api_key_file: a.api_key_file.clone(),
        lease: a.lease,
        poll_every: a.poll_every,
        command_timeout: a.command_timeout,
        task_timeout: a.task_timeout,
        memory_bytes: a.memory_bytes,
        processes: a.processes,
        work_dir: a.work_dir.clone(),
        webhook: a.webhook.clone(),
    })
}

/// Validated `serve.managed:`.
#[derive(Debug, Clone)]
pub struct ManagedSettings {
    pub command: Vec<String>,
    pub models_dir: Option<PathBuf>,
    pub ctx: u32,
    pub start_timeout: Duration,
}

fn validate_serve(s: &file::ServeFile) -> Result<ServeSettings, ConfigError> {
    let mut backends = Vec::new();
    for (i, b) in s.backends.iter().enumerate() {
        if !matches!(b.kind.as_str(), "ollama" | "openai") {
            return Err(cerr(
                format!("serve.backends[{i}].kind"),
                format!("{:?} is not ollama or openai", b.kind),
            ));
        }
        let u = b.url.trim_end_matches('/');
        if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() > 512 {
            return Err(cerr(
                format!("serve.backends[{i}].url"),
                "must be an http:// or https:// URL",
            ));
        }
        backends.push((b.kind.clone(), u.to_owned()));
    }
    let managed = match &s.managed {
        None => None,
        Some(m) => {
            if m.command.is_empty() || m.command.iter().all(|a| !a.contains("{port}")) {
                return Err(cerr(
                    "serve.managed.command",
                    "must be a non-empty argv naming {port} (and {model_path})",
                ));
            }
            if !m.command.iter().any(|a| a.contains("{model_path}")) {
                return Err(cerr("serve.managed.command", "must name {model_path}"));
            }
            if !(256..=1_048_576).contains(&m.ctx) {
                return Err(cerr("serve.managed.ctx", "must be 256 to 1048576"));
            }
            if m.start_timeout.is_zero() {
                return Err(cerr("serve.managed.start_timeout", "must be more than 0"));
            }
            Some(ManagedSettings {
                command: m.command.clone(),
                models_dir: m.models_dir.clone(),
                ctx: m.ctx,
                start_timeout: m.start_timeout,
            })
        }
    };
    let listen = match &s.listen {
        None => None,
        Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
            cerr(
                "serve.listen",
                format!("{a:?} is not an IP:PORT address (e.g. 0.0.0.0:11434)"),
            )
        })?),
    };
    Ok(ServeSettings {
        backends,
        managed,
        anonymous_inference: s.anonymous_inference,
        listen,
    })
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
    pub models_dir: Option<PathBuf>,
    pub share_passphrase_file: Option<PathBuf>,
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

/// Which cluster-wide sections (`control.weights`, `control.leadership`)
/// a config file sets explicitly (`Some` with the parsed value).
pub fn local_cluster_sections(source: Option<&Path>) -> ClusterOverrides {
    let mut o = ClusterOverrides::default();
    let Some(text) = source.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return o;
    };
    let Ok(tree) = serde_norway::from_str::<Value>(&text) else {
        return o;
    };
    let control = tree.get("control");
    if let Some(w) = control.and_then(|c| c.get("weights")) {
        o.weights = serde_norway::from_value(w.clone()).ok();
    }
    if let Some(l) = control.and_then(|c| c.get("leadership")) {
        o.leadership = serde_norway::from_value(l.clone()).ok();
    }
    o
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
    if let Some(d) = &flags.models_dir {
        f.models.ollama_dir = Some(d.clone());
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
    if !(1..=20).contains(&f.dht.replication) {
        return Err(cerr("dht.replication", "must be between 1 and 20"));
    }
    let serve = validate_serve(&f.serve)?;
    let agents = validate_agents(&f.agents)?;

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
            dht: bzzz_net::DhtSettings {
                store: None,
                replication: f.dht.replication,
                replicate_every: positive("dht.replicate_every", f.dht.replicate_every)?,
                republish_every: positive("dht.republish_every", f.dht.republish_every)?,
            },
        },
        refresh_interval,
        ollama_url: c.ollama_url.trim_end_matches('/').to_owned(),
        ollama_models_dir: c.ollama_models_dir.clone(),
        declared_gpus,
        declared_cpu_cores: c.declared.cpu_cores,
        declared_memory_total_bytes: c.declared.memory_total_bytes,
        labels,
        control,
        models_dir: f
            .models
            .ollama_dir
            .clone()
            .filter(|d| !d.as_os_str().is_empty())
            .or_else(|| c.ollama_models_dir.clone())
            .unwrap_or_else(bzzz_models::ollama::default_dir),
        serve,
        agents,
        source,
        share_passphrase_file: flags.share_passphrase_file.clone(),
    })
}

#[cfg(test)]
mod tests;
