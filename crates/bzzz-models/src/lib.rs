//! Model distribution (SPEC §8): the files, the transfer and the decisions
//! a node takes about its own store.
//!
//! - [`gguf`]: the GGUF header (facts for placement, the config blob);
//! - [`ollama`]: Ollama's store layout (manifests, blobs, BZZZ's own files
//!   beside them), building a model from a GGUF file or a store directory;
//! - [`pieces`]: piece manifests (per-piece BLAKE3 bound to the blob's
//!   sha256), bitfields;
//! - [`wire`]: the `/bzzz/models/1.0.0` messages;
//! - [`swarm`]: the service: answers peers (bitfields, pieces, blocks,
//!   progress) and fetches a blob from every holder at once;
//! - [`local`]: what this node should do about the registry (a pure
//!   function).
//!
//! Placement itself is the leader's (a SLURP planner in `bzzz-control`);
//! this crate only sees its result, as registry entries.

pub mod gguf;
pub mod local;
pub mod ollama;
pub mod pieces;
pub mod swarm;
pub mod wire;

pub use ollama::Store;
pub use swarm::Models;

/// Errors of the models service. `Peer` and `Unavailable` are worth a
/// retry (another holder, later); the others are not.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("a peer misbehaved: {0}")]
    Peer(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("storage: {0}")]
    Io(String),
    #[error("{0}")]
    Internal(String),
}

impl From<std::io::Error> for ModelsError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e.to_string())
    }
}

impl ModelsError {
    pub fn retriable(&self) -> bool {
        matches!(self, Self::Peer(_) | Self::Unavailable(_) | Self::Io(_))
    }
}
