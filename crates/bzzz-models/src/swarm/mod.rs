//! The models service: answers peers from this node's store, and fetches
//! a blob from every peer that has pieces of it at once.
//!
//! Fetching (BitTorrent-like, no tracker: the registry names the swarm):
//! - the piece manifest comes from any holder and must match the
//!   registry's root;
//! - every peer's bitfield is polled every [`POLL`] (complete holders say
//!   so in one bit);
//! - each peer gets at most [`PER_PEER`] requests in flight, one piece each
//!   (in blocks of at most 256 KiB): what waits in a connection's buffers
//!   stays under a megabyte, so the same connection's Raft heartbeats are
//!   never far behind;
//! - pieces are chosen rarest first (random among equals); a complete
//!   holder (the seed) is asked only for pieces no other peer has, so the
//!   receivers trade among themselves and the seed's upload stays near one
//!   copy;
//! - every piece is checked (BLAKE3) on arrival; a bad piece is fetched
//!   again from someone else and its sender gets a strike (three: ignored
//!   for the rest of this blob); a peer that fails a request is left alone
//!   for a second, then longer;
//! - the partial file lives in `bzzz/partial/` on the store's filesystem;
//!   after a restart its pieces are checked again and only missing ones
//!   are fetched; the whole file's sha256 is checked before the rename
//!   into `blobs/`.
//!
//! Files: this one (the service, what it answers), `fetch` (the swarm
//! loop, piece choice), `upload` (blobs arriving through the API).

use std::collections::HashMap;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bzzz_net::{NetHandle, Service};
use bzzz_proto::NodeId;
use bzzz_proto::models::BlobInfo;

use crate::ModelsError;
use crate::ollama::Store;
use crate::pieces::{Bitfield, MIN_PIECE, PieceManifest};
use crate::wire::{self, Have, ProgressMap, Request};

mod fetch;
mod upload;

pub use upload::Upload;

/// Who may have pieces of a blob (asked again at every poll).
pub type Peers = dyn Fn() -> Vec<NodeId> + Send + Sync;

/// Requests in flight to one peer.
pub const PER_PEER: usize = 2;
/// How often peers' bitfields are polled.
pub const POLL: Duration = Duration::from_millis(400);
/// A fetch with no verified piece for this long gives up (the caller
/// retries later, keeping what it has).
pub const STALL: Duration = Duration::from_secs(30);
/// Bad pieces from one peer before it is ignored for this blob.
pub const STRIKES: u8 = 3;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A blob being fetched (served to peers from its verified pieces).
#[derive(Debug)]
struct Partial {
    manifest: PieceManifest,
    path: PathBuf,
    have: Mutex<Bitfield>,
}

/// The models service of one node.
#[derive(Debug)]
pub struct Models {
    store: Store,
    net: NetHandle,
    partials: Mutex<HashMap<String, Arc<Partial>>>,
    progress: Mutex<ProgressMap>,
    /// Bytes of model data sent to peers (benchmarks: the seed's upload).
    pub uploaded: AtomicU64,
    /// Bad pieces received (benchmarks and tests: corruption detected).
    pub bad_pieces: AtomicU64,
    /// Bytes of verified pieces fetched from peers.
    pub fetched: AtomicU64,
    /// Pieces found already verified in a partial file after a restart.
    pub resumed: AtomicU64,
}

impl Models {
    pub fn new(store: Store, net: NetHandle) -> Arc<Self> {
        Arc::new(Self {
            store,
            net,
            partials: Mutex::new(HashMap::new()),
            progress: Mutex::new(ProgressMap::new()),
            uploaded: AtomicU64::new(0),
            bad_pieces: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn local_id(&self) -> &NodeId {
        self.net.local_id()
    }

    /// What `Progress` answers (the node's agent keeps it current).
    pub fn set_progress(&self, p: ProgressMap) {
        *lock(&self.progress) = p;
    }

    pub fn progress(&self) -> ProgressMap {
        lock(&self.progress).clone()
    }

    async fn call(&self, peer: &NodeId, r: &Request) -> Result<Vec<u8>, ModelsError> {
        self.net
            .call(Service::Models, peer, wire::encode_request(r))
            .await
            .map_err(|e| ModelsError::Unavailable(e.to_string()))
    }

    /// Asks a peer for its models' states.
    pub async fn progress_of(&self, peer: &NodeId) -> Result<ProgressMap, ModelsError> {
        let b = self.call(peer, &Request::Progress).await?;
        wire::decode_json(&b)
    }

    /// Answers a peer's request (the caller admits only members).
    pub async fn answer(self: &Arc<Self>, payload: Vec<u8>) -> Vec<u8> {
        let req = match wire::decode_request(&payload) {
            Ok(r) => r,
            Err(e) => return wire::error(&e.to_string()),
        };
        match req {
            Request::Progress => wire::json(&self.progress()),
            Request::Have { blob } => {
                if self.store.blob_size(&blob).is_some() && self.store.pieces_bytes(&blob).is_some()
                {
                    return wire::json(&Have {
                        complete: true,
                        bits: String::new(),
                    });
                }
                match lock(&self.partials).get(&blob) {
                    Some(p) => wire::json(&Have {
                        complete: false,
                        bits: hex::encode(lock(&p.have).bytes()),
                    }),
                    None => wire::error("not here"),
                }
            }
            Request::Pieces { blob } => {
                if let Some(b) = self.store.pieces_bytes(&blob) {
                    return wire::data(&b);
                }
                match lock(&self.partials).get(&blob) {
                    Some(p) => wire::data(&p.manifest.encode()),
                    None => wire::error("not here"),
                }
            }
            Request::Get { blob, offset, len } => {
                if u64::from(len) > MIN_PIECE || len == 0 {
                    return wire::error("a block is 1 byte to 256 KiB");
                }
                let path = if self.store.blob_size(&blob).is_some() {
                    match self.store.blob_path(&blob) {
                        Ok(p) => p,
                        Err(e) => return wire::error(&e.to_string()),
                    }
                } else {
                    let Some(p) = lock(&self.partials).get(&blob).cloned() else {
                        return wire::error("not here");
                    };
                    let ps = p.manifest.piece_size;
                    let first = offset / ps;
                    let last = (offset + u64::from(len) - 1) / ps;
                    if first != last || !lock(&p.have).get(first as usize) {
                        return wire::error("piece not here yet");
                    }
                    p.path.clone()
                };
                let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                    let f = std::fs::File::open(path)?;
                    let mut buf = vec![0u8; len as usize];
                    f.read_exact_at(&mut buf, offset)?;
                    Ok(buf)
                })
                .await;
                match read {
                    Ok(Ok(buf)) => {
                        self.uploaded.fetch_add(buf.len() as u64, Ordering::Relaxed);
                        wire::data(&buf)
                    }
                    Ok(Err(e)) => wire::error(&format!("read: {e}")),
                    Err(e) => wire::error(&e.to_string()),
                }
            }
        }
    }

    /// Makes sure a complete blob has its piece manifest (a blob that was
    /// already in the store, from Ollama itself or an earlier run), and
    /// that it matches the registry's root.
    pub async fn ensure_pieces(&self, blob: &BlobInfo) -> Result<(), ModelsError> {
        if let Some(b) = self.store.pieces_bytes(&blob.digest)
            && blake3::hash(&b).to_hex().as_str() == blob.pieces_root
        {
            return Ok(());
        }
        let m = self.hash_stored(&blob.digest, blob.size).await?;
        if m.root() != blob.pieces_root {
            return Err(ModelsError::Io(format!(
                "the stored blob {} does not match its registry entry",
                blob.digest
            )));
        }
        self.store.save_pieces(&m)
    }

    /// The encoded piece manifest of a complete blob in the store: the
    /// stored one, else computed from the file (which must match its
    /// digest) and stored.
    pub async fn pieces_of(&self, digest: &str, size: u64) -> Result<Vec<u8>, ModelsError> {
        if let Some(b) = self.store.pieces_bytes(digest) {
            return Ok(b);
        }
        let m = self.hash_stored(digest, size).await?;
        self.store.save_pieces(&m)?;
        Ok(m.encode())
    }

    /// Hashes a stored blob (on the blocking pool); an error unless its
    /// content is `digest`.
    async fn hash_stored(&self, digest: &str, size: u64) -> Result<PieceManifest, ModelsError> {
        let path = self.store.blob_path(digest)?;
        let m = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(path)?;
            crate::pieces::hash_blob(std::io::BufReader::with_capacity(1 << 20, f), |_| {}, size)
        })
        .await
        .map_err(|e| ModelsError::Internal(e.to_string()))??;
        if m.blob != digest {
            return Err(ModelsError::Io(format!(
                "the stored blob {digest} does not match its digest"
            )));
        }
        Ok(m)
    }

    /// A writer for a blob uploaded through the API: into a temporary file
    /// on the store's filesystem, hashed as it goes.
    pub fn upload(&self, size: u64) -> Result<Upload, ModelsError> {
        Upload::new(self.store.clone(), size)
    }
}
