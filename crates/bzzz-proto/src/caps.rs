//! Node capabilities (SPEC §5): what a node has, detected or declared.
//!
//! Detected values come from the operating system (CPU, memory, disk, GPUs
//! through NVML, Ollama over HTTP or its model directory). Declared values
//! come from the operator's config for hardware that cannot be detected; they
//! are merged in and marked (`declared` on a GPU, `declared_fields` for
//! scalars), so a reader always knows which is which.
//!
//! Every record that arrives from the network goes through
//! [`Capabilities::validate`] before it is believed. Unknown fields are
//! ignored (a newer node may announce more); the size of a whole record is
//! bounded by the network layer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Upper bounds for values from the network: a record outside them is junk.
pub mod limits {
    pub const MAX_GPUS: usize = 64;
    pub const MAX_MODELS: usize = 1024;
    pub const MAX_LABELS: usize = 64;
    pub const MAX_TEXT: usize = 256;
    pub const MAX_CORES: u32 = 65_536;
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    pub cpu: CpuInfo,
    /// Physical memory, bytes.
    pub memory_total_bytes: u64,
    /// Memory available to new work (MemAvailable), bytes.
    pub memory_free_bytes: u64,
    /// Size of the filesystem holding the data dir, bytes.
    pub disk_total_bytes: u64,
    /// Space available to the node on that filesystem, bytes.
    pub disk_free_bytes: u64,
    #[serde(default)]
    pub gpus: Vec<GpuInfo>,
    #[serde(default)]
    pub ollama: OllamaInfo,
    #[serde(default)]
    pub labels: Labels,
    /// BZZZ version of the node.
    pub version: String,
    /// Names of scalar fields whose value was declared in config, not detected
    /// (e.g. `memory_total_bytes`, `cpu.cores`).
    #[serde(default)]
    pub declared_fields: Vec<String>,
    /// Models this node's backends serve (residency and load), for routers
    /// on other nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serving: Vec<Serving>,
    /// The availability of this node's agents (SPEC §10), absent where
    /// agents are not enabled: the heartbeat operators and schedulers read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<AgentsInfo>,
}

/// Largest `agents.max_tasks` a record may announce.
pub const MAX_AGENT_TASKS: u32 = 1024;

/// The availability of a node's agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentsInfo {
    pub state: AgentsState,
    /// Tasks being worked now.
    pub current: u32,
    /// `agents.max_tasks`.
    pub max: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentsState {
    /// No task taken.
    Ready,
    /// Some slots taken.
    Working,
    /// Every slot taken.
    Busy,
}

impl AgentsInfo {
    /// The availability with `current` of `max` slots taken.
    pub fn new(current: u32, max: u32) -> Self {
        let state = match current {
            0 => AgentsState::Ready,
            c if c >= max => AgentsState::Busy,
            _ => AgentsState::Working,
        };
        Self {
            state,
            current,
            max,
        }
    }
}

/// One model a node's backend serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serving {
    /// Registry name (`NAME:TAG`).
    pub model: String,
    /// Loaded and answering (a managed backend `ready`).
    pub loaded: bool,
    /// Requests this node has sent to it and not finished.
    #[serde(default)]
    pub in_flight: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuInfo {
    pub model: String,
    /// Logical cores.
    pub cores: u32,
    /// Load averages (1, 5, 15 minutes).
    pub load_1m: f64,
    pub load_5m: f64,
    pub load_15m: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// `nvidia`, `amd`, `intel`, … (lower case).
    pub vendor: String,
    pub model: String,
    pub vram_total_bytes: u64,
    /// Free VRAM; `None` when unknown (declared GPUs).
    #[serde(default)]
    pub vram_free_bytes: Option<u64>,
    /// Index as the driver numbers it; `None` for declared GPUs.
    #[serde(default)]
    pub index: Option<u32>,
    /// Stable driver identifier (e.g. NVIDIA UUID) when known.
    #[serde(default)]
    pub uuid: Option<String>,
    /// True when this GPU comes from config, not from detection.
    #[serde(default)]
    pub declared: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OllamaInfo {
    /// Ollama answers on its API or has a model store on this node.
    pub present: bool,
    /// The API answered (the endpoint below).
    #[serde(default)]
    pub api_reachable: bool,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub models: Vec<OllamaModel>,
    /// How many models, where `models` is left out (public answers to
    /// anonymous callers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_count: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OllamaModel {
    /// `name:tag`, e.g. `smollm2:135m`.
    pub name: String,
    #[serde(default)]
    pub size_bytes: u64,
    /// Manifest digest (`sha256:…`) when known.
    #[serde(default)]
    pub digest: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    /// Free-form `key: value` labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

/// Why a capability record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid capabilities: {field}: {problem}")]
pub struct CapsError {
    pub field: String,
    pub problem: String,
}

fn err(field: &str, problem: impl Into<String>) -> CapsError {
    CapsError {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

fn text(field: &str, s: &str) -> Result<(), CapsError> {
    if s.len() > limits::MAX_TEXT {
        return Err(err(
            field,
            format!("longer than {} bytes", limits::MAX_TEXT),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(err(field, "contains control characters"));
    }
    Ok(())
}

impl Capabilities {
    /// Checks bounds and consistency of a record (from the network or config).
    pub fn validate(&self) -> Result<(), CapsError> {
        text("cpu.model", &self.cpu.model)?;
        if self.cpu.cores > limits::MAX_CORES {
            return Err(err("cpu.cores", "implausibly large"));
        }
        for (name, v) in [
            ("cpu.load_1m", self.cpu.load_1m),
            ("cpu.load_5m", self.cpu.load_5m),
            ("cpu.load_15m", self.cpu.load_15m),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(err(name, "must be a finite, non-negative number"));
            }
        }
        if self.memory_free_bytes > self.memory_total_bytes {
            return Err(err("memory_free_bytes", "exceeds memory_total_bytes"));
        }
        if self.disk_free_bytes > self.disk_total_bytes {
            return Err(err("disk_free_bytes", "exceeds disk_total_bytes"));
        }
        if self.serving.len() > limits::MAX_GPUS {
            return Err(err("serving", "too many entries"));
        }
        for (i, s) in self.serving.iter().enumerate() {
            text(&format!("serving[{i}].model"), &s.model)?;
        }
        if let Some(a) = &self.agents
            && (a.max > MAX_AGENT_TASKS
                || a.current > a.max
                || *a != AgentsInfo::new(a.current, a.max))
        {
            return Err(err(
                "agents",
                "current above max, or a state that does not match",
            ));
        }
        if self.gpus.len() > limits::MAX_GPUS {
            return Err(err("gpus", "too many entries"));
        }
        for (i, g) in self.gpus.iter().enumerate() {
            let f = |n: &str| format!("gpus[{i}].{n}");
            text(&f("vendor"), &g.vendor)?;
            text(&f("model"), &g.model)?;
            if let Some(u) = &g.uuid {
                text(&f("uuid"), u)?;
            }
            if g.vram_free_bytes
                .is_some_and(|free| free > g.vram_total_bytes)
            {
                return Err(err(&f("vram_free_bytes"), "exceeds vram_total_bytes"));
            }
        }
        if self.ollama.models.len() > limits::MAX_MODELS {
            return Err(err("ollama.models", "too many entries"));
        }
        for m in &self.ollama.models {
            text("ollama.models.name", &m.name)?;
        }
        if let Some(e) = &self.ollama.endpoint {
            text("ollama.endpoint", e)?;
        }
        if let Some(v) = &self.ollama.version {
            text("ollama.version", v)?;
        }
        self.labels.validate()?;
        text("version", &self.version)?;
        if self.declared_fields.len() > limits::MAX_LABELS {
            return Err(err("declared_fields", "too many entries"));
        }
        Ok(())
    }

    /// Brings detected values within the bounds [`Self::validate`] checks:
    /// control characters removed, text truncated, lists capped, free never
    /// above total, loads finite. Detection reads what the OS, the driver or
    /// Ollama say; one odd value must not make the whole node invisible
    /// (receivers refuse records that fail validation).
    pub fn sanitize(&mut self) {
        fn clean(s: &mut String) {
            if s.chars().any(char::is_control) {
                *s = s.chars().filter(|c| !c.is_control()).collect();
            }
            if s.len() > limits::MAX_TEXT {
                let mut end = limits::MAX_TEXT;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s.truncate(end);
            }
        }
        fn clean_opt(s: &mut Option<String>) {
            if let Some(v) = s {
                clean(v);
            }
        }
        clean(&mut self.cpu.model);
        self.cpu.cores = self.cpu.cores.min(limits::MAX_CORES);
        for l in [
            &mut self.cpu.load_1m,
            &mut self.cpu.load_5m,
            &mut self.cpu.load_15m,
        ] {
            if !l.is_finite() || *l < 0.0 {
                *l = 0.0;
            }
        }
        self.memory_free_bytes = self.memory_free_bytes.min(self.memory_total_bytes);
        self.disk_free_bytes = self.disk_free_bytes.min(self.disk_total_bytes);
        self.gpus.truncate(limits::MAX_GPUS);
        for g in &mut self.gpus {
            clean(&mut g.vendor);
            clean(&mut g.model);
            clean_opt(&mut g.uuid);
            if let Some(f) = &mut g.vram_free_bytes {
                *f = (*f).min(g.vram_total_bytes);
            }
        }
        self.ollama.models.truncate(limits::MAX_MODELS);
        for m in &mut self.ollama.models {
            clean(&mut m.name);
            clean_opt(&mut m.digest);
        }
        clean_opt(&mut self.ollama.endpoint);
        clean_opt(&mut self.ollama.version);
        clean(&mut self.version);
        self.declared_fields.truncate(limits::MAX_LABELS);
    }

    /// Total VRAM over all GPUs, bytes.
    pub fn vram_total_bytes(&self) -> u64 {
        self.gpus.iter().map(|g| g.vram_total_bytes).sum()
    }
}

impl Labels {
    pub fn validate(&self) -> Result<(), CapsError> {
        if let Some(z) = &self.zone {
            label_value("labels.zone", z)?;
        }
        if let Some(r) = &self.rack {
            label_value("labels.rack", r)?;
        }
        if self.extra.len() > limits::MAX_LABELS {
            return Err(err("labels.extra", "too many labels"));
        }
        for (k, v) in &self.extra {
            let ok_key = !k.is_empty()
                && k.len() <= 63
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
            if !ok_key {
                return Err(err(
                    &format!("labels.extra.{k}"),
                    "label names are 1-63 characters of a-z, A-Z, 0-9, '-', '_', '.', '/'",
                ));
            }
            label_value(&format!("labels.extra.{k}"), v)?;
        }
        Ok(())
    }
}

fn label_value(field: &str, v: &str) -> Result<(), CapsError> {
    if v.is_empty() {
        return Err(err(field, "must not be empty"));
    }
    text(field, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Capabilities {
        Capabilities {
            cpu: CpuInfo {
                model: "Test CPU".into(),
                cores: 8,
                load_1m: 0.5,
                load_5m: 0.4,
                load_15m: 0.3,
            },
            memory_total_bytes: 16 << 30,
            memory_free_bytes: 8 << 30,
            disk_total_bytes: 100 << 30,
            disk_free_bytes: 50 << 30,
            gpus: vec![GpuInfo {
                vendor: "nvidia".into(),
                model: "RTX 4090".into(),
                vram_total_bytes: 24 << 30,
                declared: true,
                ..Default::default()
            }],
            version: "0.1.0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_sane_record_validates_and_round_trips() {
        let c = sample();
        c.validate().expect("valid");
        let back: Capabilities =
            serde_json::from_str(&serde_json::to_string(&c).expect("ser")).expect("de");
        assert_eq!(back, c);
        assert_eq!(c.vram_total_bytes(), 24 << 30);
    }

    #[test]
    fn agents_availability_is_consistent_or_refused() {
        let mut c = sample();
        c.agents = Some(AgentsInfo::new(1, 2));
        assert_eq!(c.agents.map(|a| a.state), Some(AgentsState::Working));
        c.validate().expect("valid");
        let v = serde_json::to_value(&c).expect("ser");
        assert_eq!(v["agents"]["state"], "working");
        for bad in [
            AgentsInfo {
                state: AgentsState::Ready,
                current: 1,
                max: 2,
            },
            AgentsInfo {
                state: AgentsState::Busy,
                current: 3,
                max: 2,
            },
            AgentsInfo::new(0, MAX_AGENT_TASKS + 1),
        ] {
            c.agents = Some(bad);
            assert!(c.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn inconsistent_or_hostile_records_are_refused_with_the_field_named() {
        let mut c = sample();
        c.memory_free_bytes = c.memory_total_bytes + 1;
        assert_eq!(c.validate().unwrap_err().field, "memory_free_bytes");

        let mut c = sample();
        c.cpu.load_1m = f64::NAN;
        assert_eq!(c.validate().unwrap_err().field, "cpu.load_1m");

        let mut c = sample();
        c.gpus[0].model = "x".repeat(1000);
        assert_eq!(c.validate().unwrap_err().field, "gpus[0].model");

        let mut c = sample();
        c.labels.extra.insert("bad key!".into(), "v".into());
        assert!(c.validate().unwrap_err().field.starts_with("labels.extra"));

        let mut c = sample();
        c.labels.zone = Some("eu\u{7}".into());
        assert_eq!(c.validate().unwrap_err().field, "labels.zone");
    }

    #[test]
    fn sanitized_detections_always_validate() {
        let mut c = sample();
        c.cpu.model = "Weird\u{0}CPU".repeat(100);
        c.cpu.load_5m = f64::INFINITY;
        c.memory_free_bytes = u64::MAX;
        c.gpus[0].model = "é".repeat(300);
        c.gpus[0].vram_free_bytes = Some(u64::MAX);
        c.ollama.models = vec![
            OllamaModel {
                name: "bad\nname".into(),
                ..Default::default()
            };
            limits::MAX_MODELS + 5
        ];
        assert!(c.validate().is_err());
        c.sanitize();
        c.validate().expect("valid after sanitize");
        assert_eq!(c.ollama.models[0].name, "badname");
        assert!(c.cpu.model.starts_with("WeirdCPU"));
    }

    #[test]
    fn fields_added_by_newer_versions_are_ignored() {
        let mut v = serde_json::to_value(sample()).expect("ser");
        v["surprise"] = serde_json::json!(1);
        let back: Capabilities = serde_json::from_value(v).expect("forward compatible");
        assert_eq!(back, sample());
    }
}
