//! Capability detection (SPEC §5): what this node has.
//!
//! * CPU model, logical cores, load averages; memory total/available
//!   (`sysinfo`).
//! * Disk total/free of the filesystem holding the data dir (`statvfs`).
//! * NVIDIA GPUs through NVML (`nvml-wrapper` loads `libnvidia-ml.so` at run
//!   time; no library or no GPU is the normal state of a CPU node, not an
//!   error).
//! * Ollama: its HTTP API (`/api/version`, `/api/tags`) and, when the API is
//!   down, the manifests in its model store.
//! * Declared capabilities and labels from config, merged in and marked.
//!
//! [`Detector::collect`] is called by the capability task at start and every
//! `capabilities.refresh_interval`; any change is announced at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bzzz_proto::{Capabilities, CpuInfo, GpuInfo, OllamaInfo, OllamaModel};
use serde::Deserialize;
use tracing::debug;

use crate::config::Config;

/// Longest time an Ollama probe may take.
const OLLAMA_TIMEOUT: Duration = Duration::from_millis(800);
/// Most manifests read from a model store (bounded work on a huge store).
const MAX_MANIFESTS: usize = 1024;

pub struct Detector {
    sys: Option<sysinfo::System>,
    nvml: Option<nvml_wrapper::Nvml>,
    http: reqwest::Client,
    data_dir: PathBuf,
    ollama_url: String,
    ollama_models_dir: Option<PathBuf>,
    declared_gpus: Vec<GpuInfo>,
    declared_cpu_cores: Option<u32>,
    declared_memory_total_bytes: Option<u64>,
    labels: bzzz_proto::Labels,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("nvml", &self.nvml.is_some())
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Detector {
    pub fn new(cfg: &Config) -> Self {
        let mut sys = sysinfo::System::new().ok();
        if let Some(s) = sys.as_mut() {
            s.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
        }
        let nvml = match nvml_wrapper::Nvml::init() {
            Ok(n) => Some(n),
            Err(e) => {
                debug!("NVML not available ({e}): no NVIDIA GPUs detected");
                None
            }
        };
        let http = reqwest::Client::builder()
            .timeout(OLLAMA_TIMEOUT)
            .connect_timeout(OLLAMA_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            sys,
            nvml,
            http,
            data_dir: cfg.data_dir.clone(),
            ollama_url: cfg.ollama_url.clone(),
            ollama_models_dir: cfg.ollama_models_dir.clone(),
            declared_gpus: cfg.declared_gpus.clone(),
            declared_cpu_cores: cfg.declared_cpu_cores,
            declared_memory_total_bytes: cfg.declared_memory_total_bytes,
            labels: cfg.labels.clone(),
        }
    }

    /// Detects everything now and merges the declared values.
    pub async fn collect(&mut self) -> Capabilities {
        let mut caps = Capabilities {
            version: bzzz_proto::VERSION.to_owned(),
            labels: self.labels.clone(),
            ..Default::default()
        };
        if let Some(sys) = self.sys.as_mut() {
            sys.refresh_memory();
            caps.memory_total_bytes = sys.total_memory();
            caps.memory_free_bytes = sys.available_memory().min(caps.memory_total_bytes);
            let cpus = sys.cpus();
            caps.cpu = CpuInfo {
                model: cpus
                    .first()
                    .map(|c| c.brand().trim().to_owned())
                    .unwrap_or_default(),
                cores: u32::try_from(cpus.len()).unwrap_or(u32::MAX),
                ..Default::default()
            };
        }
        if let Ok(l) = sysinfo::System::load_average() {
            caps.cpu.load_1m = l.one;
            caps.cpu.load_5m = l.five;
            caps.cpu.load_15m = l.fifteen;
        }
        if let Some((total, free)) = disk_space(&self.data_dir) {
            caps.disk_total_bytes = total;
            caps.disk_free_bytes = free.min(total);
        }
        caps.gpus = self.nvidia_gpus();
        caps.ollama = self.ollama().await;
        // Labels and declared values were validated with the config;
        // detected ones are brought within bounds here.
        caps.sanitize();
        self.merge_declared(&mut caps);
        caps
    }

    fn merge_declared(&self, caps: &mut Capabilities) {
        caps.gpus.extend(self.declared_gpus.iter().cloned());
        if let Some(n) = self.declared_cpu_cores {
            caps.cpu.cores = n;
            caps.declared_fields.push("cpu.cores".into());
        }
        if let Some(m) = self.declared_memory_total_bytes {
            caps.memory_total_bytes = m;
            caps.memory_free_bytes = caps.memory_free_bytes.min(m);
            caps.declared_fields.push("memory_total_bytes".into());
        }
    }

    fn nvidia_gpus(&self) -> Vec<GpuInfo> {
        let Some(nvml) = &self.nvml else {
            return vec![];
        };
        let count = match nvml.device_count() {
            Ok(n) => n,
            Err(e) => {
                debug!("NVML device count failed: {e}");
                return vec![];
            }
        };
        let mut gpus = Vec::new();
        for i in 0..count.min(bzzz_proto::caps::limits::MAX_GPUS as u32) {
            let dev = match nvml.device_by_index(i) {
                Ok(d) => d,
                Err(e) => {
                    debug!("NVML device {i}: {e}");
                    continue;
                }
            };
            let mem = dev.memory_info().ok();
            gpus.push(GpuInfo {
                vendor: "nvidia".into(),
                model: dev.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
                vram_total_bytes: mem.as_ref().map(|m| m.total).unwrap_or(0),
                vram_free_bytes: mem.map(|m| m.free),
                index: Some(dev.index().unwrap_or(i)),
                uuid: dev.uuid().ok(),
                declared: false,
            });
        }
        gpus
    }

    async fn ollama(&self) -> OllamaInfo {
        let mut info = OllamaInfo::default();
        #[derive(Deserialize)]
        struct Version {
            version: String,
        }
        #[derive(Deserialize)]
        struct Tags {
            #[serde(default)]
            models: Vec<Tag>,
        }
        #[derive(Deserialize)]
        struct Tag {
            name: String,
            #[serde(default)]
            size: u64,
            #[serde(default)]
            digest: Option<String>,
        }
        let get = |path: &str| self.http.get(format!("{}{path}", self.ollama_url)).send();
        let tags = match get("/api/tags").await.and_then(|r| r.error_for_status()) {
            Ok(resp) => resp.json::<Tags>().await.ok(),
            Err(_) => None,
        };
        if let Some(tags) = tags {
            info.api_reachable = true;
            info.present = true;
            info.endpoint = Some(self.ollama_url.clone());
            info.models = tags
                .models
                .into_iter()
                .take(bzzz_proto::caps::limits::MAX_MODELS)
                .map(|t| OllamaModel {
                    name: t.name,
                    size_bytes: t.size,
                    digest: t.digest.map(|d| {
                        if d.starts_with("sha256:") {
                            d
                        } else {
                            format!("sha256:{d}")
                        }
                    }),
                })
                .collect();
            if let Ok(r) = get("/api/version").await {
                info.version = r.json::<Version>().await.ok().map(|v| v.version);
            }
        } else if let Some(dir) = self.models_dir() {
            info.present = true;
            let dir2 = dir.clone();
            info.models = tokio::task::spawn_blocking(move || read_model_store(&dir2))
                .await
                .unwrap_or_default();
            debug!(dir = %dir.display(), models = info.models.len(), "Ollama store found (API not reachable)");
        }
        info
    }

    fn models_dir(&self) -> Option<PathBuf> {
        if let Some(d) = &self.ollama_models_dir {
            return d.is_dir().then(|| d.clone());
        }
        let mut candidates = Vec::new();
        if let Some(d) = std::env::var_os("OLLAMA_MODELS") {
            candidates.push(PathBuf::from(d));
        }
        if let Some(h) = std::env::var_os("HOME") {
            candidates.push(PathBuf::from(h).join(".ollama/models"));
        }
        candidates.push(PathBuf::from("/usr/share/ollama/.ollama/models"));
        candidates
            .into_iter()
            .find(|d| d.join("manifests").is_dir())
    }
}

/// (total, available) bytes of the filesystem holding `dir` (or its nearest
/// existing ancestor, before the data dir is created).
fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    let mut p = dir;
    loop {
        if p.exists() {
            break;
        }
        p = p.parent()?;
    }
    let st = rustix::fs::statvfs(p).ok()?;
    let frsize = st.f_frsize;
    Some((
        st.f_blocks.saturating_mul(frsize),
        st.f_bavail.saturating_mul(frsize),
    ))
}

/// Reads Ollama's store layout: `manifests/<registry>/<namespace>/<model>/<tag>`
/// (JSON with `config` and `layers`, each with a `size`).
pub fn read_model_store(dir: &Path) -> Vec<OllamaModel> {
    #[derive(Deserialize)]
    struct Layer {
        #[serde(default)]
        size: u64,
    }
    #[derive(Deserialize)]
    struct Manifest {
        #[serde(default)]
        config: Option<Layer>,
        #[serde(default)]
        layers: Vec<Layer>,
    }
    let root = dir.join("manifests");
    let mut out = Vec::new();
    let subdirs = |p: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    };
    for registry in subdirs(&root).into_iter().filter(|p| p.is_dir()) {
        for ns in subdirs(&registry).into_iter().filter(|p| p.is_dir()) {
            for model in subdirs(&ns).into_iter().filter(|p| p.is_dir()) {
                for tag in subdirs(&model).into_iter().filter(|p| p.is_file()) {
                    if out.len() >= MAX_MANIFESTS {
                        return out;
                    }
                    let name_of =
                        |p: &Path| p.file_name().map(|s| s.to_string_lossy().into_owned());
                    let (Some(reg), Some(nsn), Some(m), Some(t)) = (
                        name_of(&registry),
                        name_of(&ns),
                        name_of(&model),
                        name_of(&tag),
                    ) else {
                        continue;
                    };
                    let Ok(meta) = std::fs::metadata(&tag) else {
                        continue;
                    };
                    if meta.len() > 1 << 20 {
                        continue;
                    }
                    let Ok(text) = std::fs::read_to_string(&tag) else {
                        continue;
                    };
                    let Ok(man) = serde_json::from_str::<Manifest>(&text) else {
                        debug!(path = %tag.display(), "not an Ollama manifest");
                        continue;
                    };
                    let size = man.layers.iter().map(|l| l.size).sum::<u64>()
                        + man.config.map(|c| c.size).unwrap_or(0);
                    let name = if reg == "registry.ollama.ai" && nsn == "library" {
                        format!("{m}:{t}")
                    } else {
                        format!("{reg}/{nsn}/{m}:{t}")
                    };
                    out.push(OllamaModel {
                        name,
                        size_bytes: size,
                        digest: None,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_ollama_store_layout() {
        let dir = tempfile::tempdir().expect("tmp");
        let m = dir
            .path()
            .join("manifests/registry.ollama.ai/library/smollm2");
        std::fs::create_dir_all(&m).expect("mkdir");
        std::fs::write(
            m.join("135m"),
            r#"{"schemaVersion":2,"config":{"size":10},"layers":[{"size":100},{"size":5}]}"#,
        )
        .expect("write");
        let o = dir.path().join("manifests/hf.co/someone/tiny");
        std::fs::create_dir_all(&o).expect("mkdir");
        std::fs::write(o.join("q4"), r#"{"layers":[{"size":7}]}"#).expect("write");
        std::fs::write(o.join("junk"), "not json").expect("write");
        let models = read_model_store(dir.path());
        assert_eq!(
            models,
            vec![
                OllamaModel {
                    name: "hf.co/someone/tiny:q4".into(),
                    size_bytes: 7,
                    digest: None
                },
                OllamaModel {
                    name: "smollm2:135m".into(),
                    size_bytes: 115,
                    digest: None
                },
            ]
        );
    }

    #[test]
    fn disk_space_walks_up_to_an_existing_directory() {
        let (total, free) = disk_space(Path::new("/tmp/does/not/exist/yet")).expect("statvfs");
        assert!(total > 0 && free <= total);
    }
}
