//! Blobs arriving through the API: written to a temporary file on the
//! store's filesystem and hashed as they stream by.

use std::path::PathBuf;

use crate::ModelsError;
use crate::ollama::Store;
use crate::pieces::{PieceHasher, PieceManifest};

/// A blob arriving through the API (see [`Models::upload`]). Dropped
/// without [`Upload::finish`], its temporary file is removed.
#[derive(Debug)]
pub struct Upload {
    store: Store,
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    hasher: PieceHasher,
}

impl Upload {
    pub(super) fn new(store: Store, size: u64) -> Result<Self, ModelsError> {
        let path = store.tmp_path("upload")?;
        let file = std::fs::File::create(&path)?;
        Ok(Self {
            store,
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            path,
            hasher: PieceHasher::new(size),
        })
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), ModelsError> {
        use std::io::Write as _;
        self.hasher.update(data);
        self.file.write_all(data)?;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.hasher.size()
    }

    /// Checks the content against `digest` and moves it into `blobs/`.
    pub fn finish(mut self, digest: &str) -> Result<PieceManifest, ModelsError> {
        use std::io::Write as _;
        self.file.flush()?;
        let hasher = std::mem::replace(&mut self.hasher, PieceHasher::new(0));
        let m = hasher.finish()?;
        if m.blob != digest {
            return Err(ModelsError::Invalid(format!(
                "the upload's sha256 is {}, not {digest}",
                m.blob
            )));
        }
        self.store.install_blob(digest, &self.path)?;
        self.store.save_pieces(&m)?;
        Ok(m)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
