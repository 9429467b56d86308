//! The model registry's records (SPEC §8): what the Raft state holds per
//! model, the API's answers, and model name parsing.
//!
//! A model is named `NAME:TAG` as in Ollama (`NAME` may carry a namespace,
//! `user/name`; a missing tag is `latest`). Its content is an Ollama
//! manifest (JSON, kept verbatim so every node writes the same bytes and
//! the manifest digest holds) and the blobs it names (config and layers),
//! each content-addressed by sha256. Digests are written `sha256:HEX`
//! (64 lower-case hex digits), as in the manifests themselves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Largest manifest kept in the registry (Ollama's are about 1 KiB).
pub const MAX_MANIFEST_LEN: usize = 64 * 1024;
/// Most blobs (config + layers) one model may name.
pub const MAX_BLOBS: usize = 64;
/// Most replicas a model may ask for.
pub const MAX_REPLICAS: u16 = 64;
/// Most models in the registry.
pub const MAX_MODELS: usize = 1024;

/// Why a model name, digest or record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

fn bad(s: impl Into<String>) -> ModelError {
    ModelError(s.into())
}

/// A parsed model name: `namespace/name:tag` (namespace `library` when
/// absent, as Ollama's store does).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelName {
    pub namespace: String,
    pub model: String,
    pub tag: String,
}

fn part_ok(s: &str, max: usize, what: &str) -> Result<(), ModelError> {
    if s.is_empty() || s.len() > max {
        return Err(bad(format!("the {what} must be 1 to {max} characters")));
    }
    let first = s.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(bad(format!(
            "the {what} {s:?} must start with a letter or digit"
        )));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(bad(format!(
            "the {what} {s:?} has {c:?}; use letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(())
}

impl ModelName {
    /// Parses `NAME[:TAG]` (`NAME` = `[namespace/]model`). Names are
    /// case-insensitive in Ollama; they are kept lower-case here.
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let s = s.trim();
        let (name, tag) = match s.rsplit_once(':') {
            Some((n, t)) => (n, t),
            None => (s, "latest"),
        };
        let (namespace, model) = match name.split_once('/') {
            Some((ns, m)) => (ns, m),
            None => ("library", name),
        };
        part_ok(namespace, 80, "namespace")?;
        part_ok(model, 80, "model name")?;
        part_ok(tag, 80, "tag")?;
        Ok(Self {
            namespace: namespace.to_ascii_lowercase(),
            model: model.to_ascii_lowercase(),
            tag: tag.to_ascii_lowercase(),
        })
    }

    /// The canonical `NAME:TAG` (no `library/`).
    pub fn full(&self) -> String {
        if self.namespace == "library" {
            format!("{}:{}", self.model, self.tag)
        } else {
            format!("{}/{}:{}", self.namespace, self.model, self.tag)
        }
    }

    /// The manifest's path under the Ollama models directory.
    pub fn manifest_path(&self) -> String {
        format!(
            "manifests/registry.ollama.ai/{}/{}/{}",
            self.namespace, self.model, self.tag
        )
    }
}

impl std::fmt::Display for ModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full())
    }
}

/// Checks a `sha256:HEX` digest and returns the hex part.
pub fn digest_hex(d: &str) -> Result<&str, ModelError> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| bad(format!("digest {d:?} must start with sha256:")))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad(format!(
            "digest {d:?} must be sha256: and 64 lower-case hex digits"
        )));
    }
    Ok(hex)
}

/// One blob of a model (the config or a layer) as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// `sha256:HEX` of the content.
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// Piece size of its piece manifest (bytes, a power of two).
    pub piece_size: u64,
    /// BLAKE3 of the encoded piece manifest (hex): binds the per-piece
    /// hashes a node fetches from a peer to this entry.
    pub pieces_root: String,
}

/// What the GGUF header says (for placement and display).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelFacts {
    pub architecture: Option<String>,
    /// e.g. `Q4_1`.
    pub quantization: Option<String>,
    pub parameters: Option<u64>,
    pub context_length: Option<u64>,
    /// Bytes of tensor data (the weights).
    pub weights_bytes: u64,
    /// Bytes of KV cache at the default context.
    pub kv_cache_bytes: u64,
}

/// One model in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// `NAME:TAG`, canonical.
    pub name: String,
    /// `sha256:HEX` of `manifest`'s bytes (Ollama's model digest).
    pub digest: String,
    /// The Ollama manifest, verbatim.
    pub manifest: String,
    /// The config blob first, then the layers.
    pub blobs: Vec<BlobInfo>,
    /// Sum of the blobs' sizes.
    pub size_bytes: u64,
    /// Memory needed to run it on a GPU: weights + KV cache at the default
    /// context + compute buffers (estimate).
    pub vram_bytes: u64,
    pub facts: ModelFacts,
    /// Wanted copies.
    pub replicas: u16,
    /// Spread the copies over different `labels.zone` values.
    pub spread_zones: bool,
    #[serde(default)]
    pub pinned: Vec<NodeId>,
    #[serde(default)]
    pub excluded: Vec<NodeId>,
    /// Unix seconds when added (or updated).
    pub added_at: u64,
    /// Removed: nodes delete their copies; the entry goes once none holds
    /// it (a tombstone, so nodes know what to delete).
    #[serde(default)]
    pub removed: bool,
}

impl ModelEntry {
    /// A minimal valid entry (tests, examples): one blob, digests of
    /// `a`s and `b`s, no pins, zones spread.
    pub fn sample(name: &str, vram_bytes: u64, replicas: u16) -> Self {
        Self {
            name: name.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            manifest: "{}".into(),
            blobs: vec![BlobInfo {
                digest: format!("sha256:{}", "b".repeat(64)),
                size: 1,
                media_type: "application/vnd.ollama.image.model".into(),
                piece_size: 1 << 18,
                pieces_root: "0".repeat(64),
            }],
            size_bytes: vram_bytes,
            vram_bytes,
            facts: ModelFacts::default(),
            replicas,
            spread_zones: true,
            pinned: vec![],
            excluded: vec![],
            added_at: 0,
            removed: false,
        }
    }

    /// Bounds every field (entries come from the API and through Raft).
    pub fn validate(&self) -> Result<(), ModelError> {
        let n = ModelName::parse(&self.name)?;
        if n.full() != self.name {
            return Err(bad(format!("name {:?} is not canonical", self.name)));
        }
        digest_hex(&self.digest)?;
        if self.manifest.len() > MAX_MANIFEST_LEN {
            return Err(bad("the manifest is too large"));
        }
        if self.blobs.is_empty() || self.blobs.len() > MAX_BLOBS {
            return Err(bad(format!("a model names 1 to {MAX_BLOBS} blobs")));
        }
        for b in &self.blobs {
            digest_hex(&b.digest)?;
            if !b.piece_size.is_power_of_two() || b.piece_size < 4096 {
                return Err(bad("a piece size must be a power of two of at least 4 KiB"));
            }
            if b.pieces_root.len() != 64 || b.media_type.len() > 256 {
                return Err(bad("bad blob record"));
            }
        }
        if self.replicas == 0 || self.replicas > MAX_REPLICAS {
            return Err(bad(format!("replicas must be 1 to {MAX_REPLICAS}")));
        }
        if self.pinned.len() > 256 || self.excluded.len() > 256 {
            return Err(bad("too many pinned or excluded nodes"));
        }
        Ok(())
    }
}

/// The registry as the Raft state holds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    pub models: BTreeMap<String, ModelEntry>,
    /// Model → where the leader placed its copies.
    #[serde(default)]
    pub placements: BTreeMap<String, Vec<Placed>>,
    /// Model → node → the manifest digest that node holds (reported by the
    /// node once every blob is verified and the manifest written).
    #[serde(default)]
    pub held: BTreeMap<String, BTreeMap<NodeId, String>>,
}

impl Registry {
    /// Adds or replaces a model (a new digest rolls out to its nodes).
    pub fn put(&mut self, e: ModelEntry) -> Result<Option<String>, ModelError> {
        e.validate()?;
        if !self.models.contains_key(&e.name) && self.models.len() >= MAX_MODELS {
            return Err(bad(format!("the registry is full ({MAX_MODELS} models)")));
        }
        Ok(self.models.insert(e.name.clone(), e).map(|old| old.digest))
    }

    /// Marks a model removed (its copies are deleted, then the entry).
    pub fn remove(&mut self, name: &str) -> Result<(), ModelError> {
        let e = self
            .models
            .get_mut(name)
            .filter(|e| !e.removed)
            .ok_or_else(|| bad(format!("no model {name}")))?;
        e.removed = true;
        self.placements.remove(name);
        self.purge_if_gone(name);
        Ok(())
    }

    fn purge_if_gone(&mut self, name: &str) {
        let removed = self.models.get(name).is_some_and(|e| e.removed);
        if removed && self.held.get(name).is_none_or(BTreeMap::is_empty) {
            self.models.remove(name);
            self.held.remove(name);
        }
    }

    pub fn place(&mut self, name: &str, nodes: Vec<Placed>) -> Result<(), ModelError> {
        let e = self
            .models
            .get(name)
            .filter(|e| !e.removed)
            .ok_or_else(|| bad(format!("no model {name}")))?;
        if nodes.len() > usize::from(e.replicas) {
            return Err(bad("more copies placed than wanted"));
        }
        if nodes.is_empty() {
            self.placements.remove(name);
        } else {
            self.placements.insert(name.to_owned(), nodes);
        }
        Ok(())
    }

    /// A node reports what it holds of a model (`None`: nothing).
    pub fn set_held(
        &mut self,
        name: &str,
        node: NodeId,
        digest: Option<String>,
    ) -> Result<(), ModelError> {
        if !self.models.contains_key(name) {
            return Err(bad(format!("no model {name}")));
        }
        match digest {
            Some(d) => {
                digest_hex(&d)?;
                let h = self.held.entry(name.to_owned()).or_default();
                if !h.contains_key(&node) && h.len() >= 1024 {
                    return Err(bad("too many holders"));
                }
                h.insert(node, d);
            }
            None => {
                if let Some(h) = self.held.get_mut(name) {
                    h.remove(&node);
                    if h.is_empty() {
                        self.held.remove(name);
                    }
                }
            }
        }
        self.purge_if_gone(name);
        Ok(())
    }

    /// Nodes holding the current content of a model.
    pub fn holders(&self, name: &str) -> Vec<NodeId> {
        let Some(e) = self.models.get(name) else {
            return Vec::new();
        };
        self.held
            .get(name)
            .map(|h| {
                h.iter()
                    .filter(|(_, d)| **d == e.digest)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Placed copies that are ready (hold the current content).
    pub fn ready(&self, name: &str) -> usize {
        let holders = self.holders(name);
        self.placements
            .get(name)
            .map(|p| p.iter().filter(|x| holders.contains(&x.node)).count())
            .unwrap_or(0)
    }
}

/// Where the leader placed one copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub node: NodeId,
    /// No GPU fits: the node runs it on CPU (a RAM fit).
    #[serde(default)]
    pub cpu_only: bool,
}

/// A node's state for one model (API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    /// Placed there; nothing fetched yet.
    Planned,
    /// Blobs arriving.
    Fetching,
    /// Every blob verified and the manifest written.
    Ready,
    /// Holds the model but is not (or no longer) placed there: kept until
    /// the placed copies are ready, then removed.
    Extra,
}

/// One node's copy, as `model status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub node_id: NodeId,
    pub state: ReplicaState,
    pub bytes_done: u64,
    pub bytes_total: u64,
    #[serde(default)]
    pub cpu_only: bool,
    /// The node did not answer; the state comes from the registry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}

/// `GET /api/v1/models/{name}` and each element of `GET /api/v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    pub name: String,
    pub digest: String,
    pub size_bytes: u64,
    pub vram_bytes: u64,
    /// Wanted copies.
    pub replicas: u16,
    /// Copies `ready` on placed nodes.
    pub ready: u16,
    pub facts: ModelFacts,
    pub nodes: Vec<ReplicaStatus>,
}

/// `POST /api/v1/models`: register a model whose blobs this node holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddModel {
    pub name: String,
    /// The Ollama manifest, verbatim.
    pub manifest: String,
    #[serde(default = "one")]
    pub replicas: u16,
    #[serde(default = "yes")]
    pub spread_zones: bool,
    #[serde(default)]
    pub pinned: Vec<NodeId>,
    #[serde(default)]
    pub excluded: Vec<NodeId>,
}

fn one() -> u16 {
    1
}
fn yes() -> bool {
    true
}

/// The answer to `POST /api/v1/models` (contract: `name`, `digest`,
/// `size_bytes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddedModel {
    pub name: String,
    pub digest: String,
    pub size_bytes: u64,
    pub vram_bytes: u64,
    pub replicas: u16,
    /// False when the same content was already registered under the name.
    pub changed: bool,
}

/// The answer to a blob upload (`PUT /api/v1/models/blobs/{digest}`) or
/// check (`GET`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobStored {
    pub digest: String,
    pub size: u64,
}

/// Per-node VRAM accounting for the models page and `model ls`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeVram {
    pub vram_total_bytes: u64,
    pub vram_free_bytes: u64,
    /// Sum of the estimates of the models placed there on GPU.
    pub vram_placed_bytes: u64,
}

/// Node id → its VRAM figures.
pub type VramTable = BTreeMap<NodeId, NodeVram>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = ModelName::parse("SmolLM2:135m").unwrap();
        assert_eq!(n.full(), "smollm2:135m");
        assert_eq!(
            n.manifest_path(),
            "manifests/registry.ollama.ai/library/smollm2/135m"
        );
        assert_eq!(ModelName::parse("llama3").unwrap().full(), "llama3:latest");
        let n = ModelName::parse("me/model:v1.2").unwrap();
        assert_eq!(
            n.manifest_path(),
            "manifests/registry.ollama.ai/me/model/v1.2"
        );
        for bad in [
            "", ":x", "a:", "../x:y", "a/b/c:d", "a:b/c", "-a:b", "a b:c",
        ] {
            assert!(ModelName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digests() {
        let ok = format!("sha256:{}", "a".repeat(64));
        assert!(digest_hex(&ok).is_ok());
        assert!(digest_hex(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(digest_hex(&format!("sha256-{}", "a".repeat(64))).is_err());
        assert!(digest_hex("sha256:abc").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_paths_stay_inside(s in "\\PC{0,40}") {
            if let Ok(n) = ModelName::parse(&s) {
                let p = n.manifest_path();
                proptest::prop_assert!(p.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
                proptest::prop_assert_eq!(p.matches('/').count(), 4);
                proptest::prop_assert_eq!(ModelName::parse(&n.full()).unwrap(), n);
            }
        }
    }
}
