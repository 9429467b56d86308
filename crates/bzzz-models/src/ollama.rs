//! Ollama's on-disk store, as BZZZ reads and writes it.
//!
//! Layout under the models directory (`models.ollama_dir`):
//! - `manifests/registry.ollama.ai/NAMESPACE/MODEL/TAG`: the manifest
//!   (JSON). Ollama globs exactly `manifests/*/*/*/*` and rescans on
//!   `/api/tags`, so a manifest appears atomically (written elsewhere on
//!   the same filesystem, then renamed) and only after all its blobs.
//! - `blobs/sha256-HEX`: content. At its start Ollama deletes blobs that
//!   no manifest references and that are older than an hour, and any file
//!   in `blobs/` whose name is not a digest; so nothing else is ever put
//!   in `blobs/`, and a blob is renamed in only when verified, right
//!   before its manifest.
//! - `bzzz/`: BZZZ's own files (Ollama ignores this directory): `partial/`
//!   (blobs being fetched or uploaded, with the same name plus `.part`),
//!   `pieces/` (each blob's piece manifest), `owned/` (a marker per blob
//!   BZZZ wrote: garbage collection only ever deletes those), `tmp/`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use bzzz_proto::models::{ModelName, digest_hex};
use serde::{Deserialize, Serialize};

use crate::ModelsError;
use crate::gguf;
use crate::pieces::PieceManifest;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.docker.container.image.v1+json";
pub const MODEL_MEDIA_TYPE: &str = "application/vnd.ollama.image.model";
pub const TEMPLATE_MEDIA_TYPE: &str = "application/vnd.ollama.image.template";
pub const PARAMS_MEDIA_TYPE: &str = "application/vnd.ollama.image.params";

/// An Ollama manifest (field order as Ollama writes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    pub media_type: String,
    pub config: Layer,
    pub layers: Vec<Layer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl Manifest {
    /// Parses and checks a manifest (digests well-formed, bounded).
    pub fn parse(bytes: &[u8]) -> Result<Self, ModelsError> {
        if bytes.len() > bzzz_proto::models::MAX_MANIFEST_LEN {
            return Err(ModelsError::Invalid("the manifest is too large".into()));
        }
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| ModelsError::Invalid(format!("not an Ollama manifest: {e}")))?;
        if m.layers.is_empty() || m.layers.len() + 1 > bzzz_proto::models::MAX_BLOBS {
            return Err(ModelsError::Invalid("a manifest has 1 to 63 layers".into()));
        }
        for l in m.blobs() {
            digest_hex(&l.digest).map_err(|e| ModelsError::Invalid(e.0))?;
        }
        Ok(m)
    }

    /// The config, then the layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.config).chain(&self.layers)
    }

    /// Ollama's model size: the config plus every layer.
    pub fn size(&self) -> u64 {
        self.blobs().map(|l| l.size).sum()
    }

    pub fn model_layer(&self) -> Option<&Layer> {
        self.layers
            .iter()
            .find(|l| l.media_type == MODEL_MEDIA_TYPE)
    }
}

/// `sha256:HEX` of bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Ollama's default models directory for the user running BZZZ:
/// `$OLLAMA_MODELS`, else `/usr/share/ollama/.ollama/models` when that
/// exists (the Linux service user), else `$HOME/.ollama/models`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("OLLAMA_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let service = Path::new("/usr/share/ollama/.ollama/models");
    if service.is_dir() {
        return service.to_path_buf();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".ollama/models")
}

/// A models directory in Ollama's layout.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

fn blob_name(digest: &str) -> Result<String, ModelsError> {
    Ok(format!(
        "sha256-{}",
        digest_hex(digest).map_err(|e| ModelsError::Invalid(e.0))?
    ))
}

impl Store {
    /// A store at `root`. Nothing is created until a model arrives (a
    /// node without models leaves the directory alone); an existing path
    /// that is not a directory is refused.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ModelsError> {
        let s = Self { root: root.into() };
        if s.root.exists() && !s.root.is_dir() {
            return Err(ModelsError::Io(format!(
                "{} is not a directory",
                s.root.display()
            )));
        }
        Ok(s)
    }

    /// Creates a subdirectory (and the root) when first needed.
    fn dir(&self, sub: &str) -> Result<PathBuf, ModelsError> {
        let d = self.root.join(sub);
        std::fs::create_dir_all(&d)
            .map_err(|e| ModelsError::Io(format!("cannot create {}: {e}", d.display())))?;
        Ok(d)
    }

    /// A store read in place (no directories created): `--from-ollama`,
    /// a directory given to `model add`.
    pub fn read_only(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ModelsError> {
        Ok(self.root.join("blobs").join(blob_name(digest)?))
    }

    pub fn partial_path(&self, digest: &str) -> Result<PathBuf, ModelsError> {
        let name = format!("{}.part", blob_name(digest)?);
        Ok(self.dir("bzzz/partial")?.join(name))
    }

    /// A fresh temporary file path on the store's filesystem (its
    /// directory created).
    pub fn tmp_path(&self, what: &str) -> Result<PathBuf, ModelsError> {
        let mut r = [0u8; 8];
        let _ = getrandom::fill(&mut r);
        Ok(self
            .dir("bzzz/tmp")?
            .join(format!("{what}-{}", hex::encode(r))))
    }

    /// The size of a complete blob, if present.
    pub fn blob_size(&self, digest: &str) -> Option<u64> {
        let p = self.blob_path(digest).ok()?;
        std::fs::metadata(p)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Moves a verified file into `blobs/` (and marks it as BZZZ's).
    pub fn install_blob(&self, digest: &str, from: &Path) -> Result<PathBuf, ModelsError> {
        self.dir("blobs")?;
        let to = self.blob_path(digest)?;
        std::fs::File::open(from)
            .and_then(|f| f.sync_all())
            .map_err(|e| ModelsError::Io(format!("{}: {e}", from.display())))?;
        std::fs::rename(from, &to)
            .map_err(|e| ModelsError::Io(format!("cannot move the blob into place: {e}")))?;
        let marker = self.dir("bzzz/owned")?.join(blob_name(digest)?);
        std::fs::write(marker, b"")?;
        Ok(to)
    }

    pub fn save_pieces(&self, m: &PieceManifest) -> Result<(), ModelsError> {
        let p = self.root.join("bzzz/pieces").join(blob_name(&m.blob)?);
        self.write_atomic(&p, &m.encode())
    }

    /// The stored piece manifest bytes of a blob.
    pub fn pieces_bytes(&self, digest: &str) -> Option<Vec<u8>> {
        let p = self.root.join("bzzz/pieces").join(blob_name(digest).ok()?);
        std::fs::read(p).ok()
    }

    fn write_atomic(&self, to: &Path, bytes: &[u8]) -> Result<(), ModelsError> {
        let tmp = self.tmp_path("w")?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&tmp, to)?;
        Ok(())
    }

    /// Writes a manifest (atomically; its blobs must already be in place).
    pub fn write_manifest(&self, name: &ModelName, bytes: &[u8]) -> Result<(), ModelsError> {
        let m = Manifest::parse(bytes)?;
        for l in m.blobs() {
            if self.blob_size(&l.digest) != Some(l.size) {
                return Err(ModelsError::Io(format!(
                    "blob {} is missing; the manifest is written last",
                    l.digest
                )));
            }
        }
        self.write_atomic(&self.root.join(name.manifest_path()), bytes)
    }

    pub fn read_manifest(&self, name: &ModelName) -> Option<Vec<u8>> {
        std::fs::read(self.root.join(name.manifest_path())).ok()
    }

    pub fn remove_manifest(&self, name: &ModelName) -> Result<(), ModelsError> {
        match std::fs::remove_file(self.root.join(name.manifest_path())) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Every manifest the way Ollama finds them (`manifests/*/*/*/*`):
    /// name, digest of the manifest bytes, parsed manifest. Unreadable or
    /// malformed ones are skipped (as Ollama does).
    pub fn list(&self) -> Vec<(ModelName, String, Manifest)> {
        let mut out = Vec::new();
        let base = self.root.join("manifests");
        let dirs = |p: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        for host in dirs(&base) {
            for ns in dirs(&host) {
                for model in dirs(&ns) {
                    for tag in dirs(&model) {
                        let Ok(bytes) = std::fs::read(&tag) else {
                            continue;
                        };
                        let Ok(m) = Manifest::parse(&bytes) else {
                            continue;
                        };
                        let name = |p: &Path| {
                            p.file_name()
                                .map(|s| s.to_string_lossy().into_owned())
                                .unwrap_or_default()
                        };
                        let full = format!("{}/{}:{}", name(&ns), name(&model), name(&tag));
                        if let Ok(n) = ModelName::parse(&full) {
                            out.push((n, sha256_digest(&bytes), m));
                        }
                    }
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Deletes blobs BZZZ wrote that no manifest references any more
    /// (blobs Ollama or the user put there are never touched), except
    /// those in `keep` (being used). Returns the digests removed.
    pub fn gc(&self, keep: &BTreeSet<String>) -> Vec<String> {
        let used: BTreeSet<String> = self
            .list()
            .iter()
            .flat_map(|(_, _, m)| m.blobs().map(|l| l.digest.clone()).collect::<Vec<_>>())
            .chain(keep.iter().cloned())
            .collect();
        let mut removed = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.root.join("bzzz/owned")) else {
            return removed;
        };
        for e in rd.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(hex) = file.strip_prefix("sha256-") else {
                continue;
            };
            let digest = format!("sha256:{hex}");
            if used.contains(&digest) {
                continue;
            }
            let _ = std::fs::remove_file(self.root.join("blobs").join(&file));
            let _ = std::fs::remove_file(self.root.join("bzzz/pieces").join(&file));
            let _ = std::fs::remove_file(e.path());
            removed.push(digest);
        }
        removed
    }
}

/// Where a blob of a model being added comes from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// A model ready to upload: its manifest and where each blob is.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub manifest: Vec<u8>,
    pub blobs: Vec<(Layer, Source)>,
}

/// A model from a directory in Ollama's layout (a store): its manifest
/// for `name` and its blobs' files.
pub fn from_store(dir: &Path, name: &ModelName) -> Result<Prepared, ModelsError> {
    let store = Store::read_only(dir);
    let path = dir.join(name.manifest_path());
    let manifest = std::fs::read(&path).map_err(|e| {
        ModelsError::NotFound(format!(
            "no manifest for {name} in {} ({}: {e})",
            dir.display(),
            path.display()
        ))
    })?;
    let m = Manifest::parse(&manifest)?;
    let mut blobs = Vec::new();
    for l in m.blobs() {
        let p = store.blob_path(&l.digest)?;
        let len = std::fs::metadata(&p)
            .map_err(|e| ModelsError::NotFound(format!("blob {}: {e}", p.display())))?
            .len();
        if len != l.size {
            return Err(ModelsError::Invalid(format!(
                "blob {} has {len} bytes; the manifest says {}",
                p.display(),
                l.size
            )));
        }
        blobs.push((l.clone(), Source::File(p)));
    }
    Ok(Prepared { manifest, blobs })
}

/// Ollama's ChatML template (SmolLM2, Qwen and others whose GGUF chat
/// template uses `<|im_start|>`).
const CHATML_TEMPLATE: &str = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n";
const CHATML_PARAMS: &str = r#"{"stop":["<|im_start|>","<|im_end|>"]}"#;

/// Human parameter count as Ollama shows it (`134.52M`, `7.2B`).
pub fn human_params(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else {
        format!("{:.0}K", n / 1e3)
    }
}

/// A model from a GGUF file: the model layer, a template and params layer
/// when the file's chat template is a known one (ChatML), and the config
/// blob Ollama reads for `/api/tags` (format, family, parameter size,
/// quantization). `sha` is the file's `sha256:HEX` (the caller hashed it).
pub fn from_gguf(path: &Path, sha: &str, size: u64) -> Result<Prepared, ModelsError> {
    let f = std::fs::File::open(path)
        .map_err(|e| ModelsError::NotFound(format!("{}: {e}", path.display())))?;
    let h = gguf::parse(std::io::BufReader::new(f))
        .map_err(|e| ModelsError::Invalid(format!("{}: {e}", path.display())))?;
    let facts = h.facts(size);
    let mut layers = vec![(
        Layer {
            media_type: MODEL_MEDIA_TYPE.into(),
            digest: sha.into(),
            size,
            from: None,
        },
        Source::File(path.to_path_buf()),
    )];
    if h.chat_template()
        .is_some_and(|t| t.contains("<|im_start|>"))
    {
        for (mt, body) in [
            (TEMPLATE_MEDIA_TYPE, CHATML_TEMPLATE),
            (PARAMS_MEDIA_TYPE, CHATML_PARAMS),
        ] {
            layers.push((
                Layer {
                    media_type: mt.into(),
                    digest: sha256_digest(body.as_bytes()),
                    size: body.len() as u64,
                    from: None,
                },
                Source::Bytes(body.as_bytes().to_vec()),
            ));
        }
    }
    let family = facts.architecture.clone().unwrap_or_default();
    let config = serde_json::json!({
        "model_format": "gguf",
        "model_family": family,
        "model_families": [family],
        "model_type": facts.parameters.map(human_params).unwrap_or_default(),
        "file_type": facts.quantization.clone().unwrap_or_default(),
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(l, _)| l.digest.clone()).collect::<Vec<_>>()},
    });
    let config = serde_json::to_vec(&config).map_err(|e| ModelsError::Internal(e.to_string()))?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE.into(),
        config: Layer {
            media_type: CONFIG_MEDIA_TYPE.into(),
            digest: sha256_digest(&config),
            size: config.len() as u64,
            from: None,
        },
        layers: layers.iter().map(|(l, _)| l.clone()).collect(),
    };
    let mut blobs = vec![(manifest.config.clone(), Source::Bytes(config))];
    blobs.extend(layers);
    let manifest =
        serde_json::to_vec(&manifest).map_err(|e| ModelsError::Internal(e.to_string()))?;
    Ok(Prepared { manifest, blobs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_round_trip_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let data = b"hello blob".to_vec();
        let d = sha256_digest(&data);
        let cfg = b"{}".to_vec();
        let c = sha256_digest(&cfg);
        let m = Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.into(),
            config: Layer {
                media_type: CONFIG_MEDIA_TYPE.into(),
                digest: c.clone(),
                size: 2,
                from: None,
            },
            layers: vec![Layer {
                media_type: MODEL_MEDIA_TYPE.into(),
                digest: d.clone(),
                size: data.len() as u64,
                from: None,
            }],
        };
        let bytes = serde_json::to_vec(&m).unwrap();
        let name = ModelName::parse("t:1").unwrap();
        // The manifest is refused while a blob is missing.
        assert!(s.write_manifest(&name, &bytes).is_err());
        for (dg, content) in [(&d, &data), (&c, &cfg)] {
            let tmp = s.tmp_path("t").unwrap();
            std::fs::write(&tmp, content).unwrap();
            s.install_blob(dg, &tmp).unwrap();
        }
        s.write_manifest(&name, &bytes).unwrap();
        let listed = s.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, name);
        assert_eq!(listed[0].1, sha256_digest(&bytes));
        assert_eq!(listed[0].2.size(), data.len() as u64 + 2);
        // Nothing but digests in blobs/.
        for e in std::fs::read_dir(dir.path().join("blobs")).unwrap() {
            assert!(
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("sha256-")
            );
        }
        // A user's own blob is never collected.
        let theirs = dir
            .path()
            .join("blobs")
            .join(format!("sha256-{}", "e".repeat(64)));
        std::fs::write(&theirs, b"x").unwrap();
        assert!(s.gc(&BTreeSet::new()).is_empty());
        s.remove_manifest(&name).unwrap();
        let mut removed = s.gc(&BTreeSet::new());
        removed.sort();
        let mut want = vec![c, d];
        want.sort();
        assert_eq!(removed, want);
        assert!(theirs.exists());
    }

    proptest::proptest! {
        #[test]
        fn manifest_parse_never_panics(s in "\\PC{0,300}") {
            let _ = Manifest::parse(s.as_bytes());
        }
    }

    #[test]
    fn refuses_bad_manifests() {
        assert!(Manifest::parse(b"{}").is_err());
        let bad_digest = r#"{"schemaVersion":2,"mediaType":"x","config":{"mediaType":"c","digest":"sha256:../../etc","size":1},"layers":[{"mediaType":"m","digest":"sha256:00","size":1}]}"#;
        assert!(Manifest::parse(bad_digest.as_bytes()).is_err());
        let s = Store::read_only("/nonexistent");
        assert!(s.blob_path("sha256:../x").is_err());
    }

    #[test]
    fn prepares_a_gguf() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = gguf::synthetic_header(
            &[
                ("general.architecture", gguf::Value::Str("llama".into())),
                ("general.file_type", gguf::Value::Int(3)),
                (
                    "tokenizer.chat_template",
                    gguf::Value::Str("<|im_start|>...".into()),
                ),
            ],
            &[("w", vec![4, 4])],
        );
        bytes.extend([0u8; 64]);
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, &bytes).unwrap();
        let sha = sha256_digest(&bytes);
        let prep = from_gguf(&p, &sha, bytes.len() as u64).unwrap();
        let m = Manifest::parse(&prep.manifest).unwrap();
        assert_eq!(m.layers.len(), 3);
        assert_eq!(m.model_layer().unwrap().digest, sha);
        let Source::Bytes(cfg) = &prep.blobs[0].1 else {
            panic!()
        };
        let cfg: serde_json::Value = serde_json::from_slice(cfg).unwrap();
        assert_eq!(cfg["file_type"], "Q4_1");
        assert_eq!(cfg["model_family"], "llama");
    }
}
