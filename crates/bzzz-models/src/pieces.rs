//! Piece manifests: a blob cut into fixed-size pieces, each with its
//! BLAKE3 hash, bound to the blob's sha256. The registry keeps only the
//! manifest's root (BLAKE3 of its encoding); a node fetches the manifest
//! itself from any holder and checks it against the root, then checks
//! every piece as it arrives.

use std::io::Read;

use sha2::Digest as _;

use crate::ModelsError;

/// Smallest piece (also the largest block one request carries).
pub const MIN_PIECE: u64 = 256 * 1024;
/// A blob has at most this many pieces (bigger blobs get bigger pieces).
pub const MAX_PIECES: u64 = 32 * 1024;

/// The piece size for a blob of `size` bytes: a power of two, at least
/// [`MIN_PIECE`], such that there are at most [`MAX_PIECES`] pieces.
pub fn piece_size_for(size: u64) -> u64 {
    let mut p = MIN_PIECE;
    while size.div_ceil(p) > MAX_PIECES {
        p *= 2;
    }
    p
}

/// The root of an encoded piece manifest (what the registry keeps).
pub fn root_of(encoded: &[u8]) -> String {
    blake3::hash(encoded).to_hex().to_string()
}

/// A blob's pieces and their hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceManifest {
    /// `sha256:HEX` of the whole blob.
    pub blob: String,
    pub size: u64,
    pub piece_size: u64,
    pub hashes: Vec<[u8; 32]>,
}

const MAGIC: &[u8; 8] = b"bzzzpm1\0";

impl PieceManifest {
    pub fn count(&self) -> usize {
        self.hashes.len()
    }

    /// Byte range of piece `i`.
    pub fn range(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.piece_size;
        let end = (start + self.piece_size).min(self.size);
        (start, end - start)
    }

    /// The encoding (also what the root hashes): magic, blob digest (71
    /// bytes), size, piece size, hashes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + 71 + 16 + 32 * self.hashes.len());
        v.extend(MAGIC);
        v.extend(self.blob.as_bytes());
        v.extend(self.size.to_le_bytes());
        v.extend(self.piece_size.to_le_bytes());
        for h in &self.hashes {
            v.extend(h);
        }
        v
    }

    pub fn root(&self) -> String {
        root_of(&self.encode())
    }

    /// Decodes and checks the manifest against the registry's record.
    pub fn decode(
        bytes: &[u8],
        blob: &str,
        size: u64,
        piece_size: u64,
        root: &str,
    ) -> Result<Self, ModelsError> {
        if blake3::hash(bytes).to_hex().as_str() != root {
            return Err(ModelsError::Peer(format!(
                "the piece manifest of {blob} does not match its root"
            )));
        }
        let want = size.div_ceil(piece_size) as usize;
        let head = 8 + blob.len() + 16;
        if bytes.len() != head + 32 * want
            || &bytes[..8] != MAGIC
            || &bytes[8..8 + blob.len()] != blob.as_bytes()
            || bytes[head - 16..head - 8] != size.to_le_bytes()
            || bytes[head - 8..head] != piece_size.to_le_bytes()
        {
            return Err(ModelsError::Peer(format!(
                "the piece manifest of {blob} does not describe it"
            )));
        }
        let hashes = bytes[head..]
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Ok(Self {
            blob: blob.to_owned(),
            size,
            piece_size,
            hashes,
        })
    }

    /// Whether `data` is piece `i`.
    pub fn verify(&self, i: usize, data: &[u8]) -> bool {
        self.hashes.get(i).is_some_and(|h| {
            blake3::hash(data).as_bytes() == h && data.len() as u64 == self.range(i).1
        })
    }
}

/// Hashes a blob as it streams by: sha256 of the whole and BLAKE3 of
/// every piece.
#[derive(Debug)]
pub struct PieceHasher {
    piece_size: u64,
    sha: sha2::Sha256,
    buf: Vec<u8>,
    hashes: Vec<[u8; 32]>,
    size: u64,
}

impl PieceHasher {
    /// For a blob of about `size_hint` bytes (chooses the piece size).
    pub fn new(size_hint: u64) -> Self {
        let piece_size = piece_size_for(size_hint);
        Self {
            piece_size,
            sha: sha2::Sha256::new(),
            buf: Vec::with_capacity(piece_size as usize),
            hashes: Vec::new(),
            size: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.sha.update(data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            let room = self.piece_size as usize - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.piece_size as usize {
                self.hashes.push(*blake3::hash(&self.buf).as_bytes());
                self.buf.clear();
            }
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn finish(mut self) -> Result<PieceManifest, ModelsError> {
        if !self.buf.is_empty() {
            self.hashes.push(*blake3::hash(&self.buf).as_bytes());
        }
        if self.size.div_ceil(self.piece_size) > MAX_PIECES {
            return Err(ModelsError::Invalid(format!(
                "the blob is larger ({} bytes) than announced",
                self.size
            )));
        }
        Ok(PieceManifest {
            blob: format!("sha256:{}", hex::encode(self.sha.finalize())),
            size: self.size,
            piece_size: self.piece_size,
            hashes: self.hashes,
        })
    }
}

/// Reads a whole blob: its sha256 digest and piece manifest in one pass.
/// `progress` gets the bytes read so far.
pub fn hash_blob(
    mut input: impl Read,
    mut progress: impl FnMut(u64),
    size_hint: u64,
) -> Result<PieceManifest, ModelsError> {
    let mut h = PieceHasher::new(size_hint);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        progress(h.size());
    }
    h.finish()
}

/// Which pieces a node has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitfield {
    bits: Vec<u8>,
    len: usize,
}

impl Bitfield {
    pub fn new(len: usize) -> Self {
        Self {
            bits: vec![0; len.div_ceil(8)],
            len,
        }
    }
    pub fn full(len: usize) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }
    pub fn from_bytes(bits: Vec<u8>, len: usize) -> Option<Self> {
        (bits.len() == len.div_ceil(8)).then_some(Self { bits, len })
    }
    pub fn bytes(&self) -> &[u8] {
        &self.bits
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.bits[i / 8] & (1 << (i % 8)) != 0
    }
    pub fn set(&mut self, i: usize) {
        if i < self.len {
            self.bits[i / 8] |= 1 << (i % 8);
        }
    }
    pub fn clear(&mut self, i: usize) {
        if i < self.len {
            self.bits[i / 8] &= !(1 << (i % 8));
        }
    }
    pub fn count(&self) -> usize {
        self.bits.iter().map(|b| b.count_ones() as usize).sum()
    }
    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(piece_size_for(0), MIN_PIECE);
        assert_eq!(piece_size_for(512 << 20), MIN_PIECE);
        assert_eq!(piece_size_for(8 << 30), MIN_PIECE);
        assert_eq!(piece_size_for((8 << 30) + 1), 2 * MIN_PIECE);
        assert!(70_000_000_000u64.div_ceil(piece_size_for(70_000_000_000)) <= MAX_PIECES);
    }

    #[test]
    fn manifest_round_trip_and_binding() {
        let data: Vec<u8> = (0..(MIN_PIECE as usize * 2 + 77))
            .map(|i| i as u8)
            .collect();
        let m = hash_blob(&data[..], |_| {}, data.len() as u64).unwrap();
        assert_eq!(m.count(), 3);
        assert_eq!(m.range(2), (2 * MIN_PIECE, 77));
        let enc = m.encode();
        let root = m.root();
        let back = PieceManifest::decode(&enc, &m.blob, m.size, m.piece_size, &root).unwrap();
        assert_eq!(back, m);
        assert!(back.verify(2, &data[2 * MIN_PIECE as usize..]));
        assert!(!back.verify(1, &data[2 * MIN_PIECE as usize..]));
        let mut bad = enc.clone();
        bad[100] ^= 1;
        assert!(PieceManifest::decode(&bad, &m.blob, m.size, m.piece_size, &root).is_err());
        assert!(PieceManifest::decode(&enc, &m.blob, m.size + 1, m.piece_size, &root).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400), size in 0u64..(1 << 22)) {
            let blob = format!("sha256:{}", "a".repeat(64));
            let root = root_of(&bytes);
            let _ = PieceManifest::decode(&bytes, &blob, size, MIN_PIECE, &root);
        }

        #[test]
        fn streamed_and_whole_hashing_agree(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000), cut in 0usize..2000) {
            let whole = hash_blob(&data[..], |_| {}, data.len() as u64).unwrap();
            let mut h = PieceHasher::new(data.len() as u64);
            let cut = cut.min(data.len());
            h.update(&data[..cut]);
            h.update(&data[cut..]);
            proptest::prop_assert_eq!(h.finish().unwrap(), whole);
        }
    }

    #[test]
    fn bitfield() {
        let mut b = Bitfield::new(10);
        b.set(3);
        b.set(9);
        b.set(10);
        assert_eq!(b.count(), 2);
        assert!(b.get(9) && !b.get(10));
        b.clear(3);
        assert_eq!(b.count(), 1);
        assert!(Bitfield::full(10).is_full());
        assert!(Bitfield::from_bytes(vec![0; 3], 10).is_none());
    }
}
