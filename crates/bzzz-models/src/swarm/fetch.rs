//! Fetching a blob from the swarm: the loop, the choice of pieces, the
//! partial file (see the module above for the rules).

use std::collections::HashMap;
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bzzz_proto::NodeId;
use bzzz_proto::models::BlobInfo;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Models, PER_PEER, POLL, Partial, Peers, STALL, STRIKES, lock};
use crate::ModelsError;
use crate::pieces::{Bitfield, MIN_PIECE, PieceManifest};
use crate::wire::{self, Have, Request};

struct PeerState {
    bits: Option<Bitfield>,
    seed: bool,
    strikes: u8,
    down_until: Option<Instant>,
    backoff: Duration,
    in_flight: usize,
    polling: bool,
}

enum Fetched {
    Ok(u64),
    Bad,
    Failed(ModelsError),
}

/// A small random source for tie-breaks (xorshift).
struct Rng(u64);
impl Rng {
    fn new() -> Self {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        Self(u64::from_le_bytes(b) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What a piece choice looks at: what this node has, what it is
/// fetching, and how many live peers hold each piece (`counts`; the
/// non-seeds among them: `counts_ns`).
struct Pool<'a> {
    have: &'a Bitfield,
    busy: &'a Bitfield,
    counts: &'a [u16],
    counts_ns: &'a [u16],
}

/// Chooses the next piece to ask a peer (holding `bits`) for: one it has,
/// we lack, nobody is fetching, it has not sent bad; rarest first among
/// all live peers (random among equals); from a seed only pieces no live
/// non-seed peer has.
fn pick(
    pool: &Pool<'_>,
    bits: &Bitfield,
    seed: bool,
    bad: impl Fn(usize) -> bool,
    rng: &mut Rng,
) -> Option<usize> {
    let mut best: Option<(u16, u64, usize)> = None;
    for i in 0..pool.have.len() {
        if pool.have.get(i)
            || pool.busy.get(i)
            || !bits.get(i)
            || (seed && pool.counts_ns[i] > 0)
            || bad(i)
        {
            continue;
        }
        let key = (pool.counts[i], rng.next());
        if best.is_none_or(|(c, r, _)| key < (c, r)) {
            best = Some((key.0, key.1, i));
        }
    }
    best.map(|(_, _, i)| i)
}

impl Models {
    async fn piece_manifest(
        &self,
        blob: &BlobInfo,
        peers: &[NodeId],
    ) -> Result<PieceManifest, ModelsError> {
        let check = |b: &[u8]| {
            PieceManifest::decode(
                b,
                &blob.digest,
                blob.size,
                blob.piece_size,
                &blob.pieces_root,
            )
        };
        if let Some(m) = self
            .store
            .pieces_bytes(&blob.digest)
            .and_then(|b| check(&b).ok())
        {
            return Ok(m);
        }
        let mut last = ModelsError::Unavailable(format!("no peer holds {}", blob.digest));
        for p in peers {
            match self
                .call(
                    p,
                    &Request::Pieces {
                        blob: blob.digest.clone(),
                    },
                )
                .await
                .and_then(|b| wire::decode_data(&b).and_then(check))
            {
                Ok(m) => {
                    self.store.save_pieces(&m)?;
                    return Ok(m);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Opens (or resumes) the partial file: pieces already there are
    /// checked again, so only missing ones are fetched.
    async fn open_partial(&self, m: PieceManifest) -> Result<Arc<Partial>, ModelsError> {
        if let Some(p) = lock(&self.partials).get(&m.blob) {
            return Ok(p.clone());
        }
        let path = self.store.partial_path(&m.blob)?;
        let (path, m, have) = tokio::task::spawn_blocking(move || -> Result<_, ModelsError> {
            let mut have = Bitfield::new(m.count());
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            let len = f.metadata()?.len();
            if len == m.size {
                let mut buf = vec![0u8; m.piece_size as usize];
                for i in 0..m.count() {
                    let (start, n) = m.range(i);
                    f.read_exact_at(&mut buf[..n as usize], start)?;
                    if m.verify(i, &buf[..n as usize]) {
                        have.set(i);
                    }
                }
            } else {
                f.set_len(m.size)?;
            }
            Ok((path, m, have))
        })
        .await
        .map_err(|e| ModelsError::Internal(e.to_string()))??;
        if have.count() > 0 {
            self.resumed
                .fetch_add(have.count() as u64, Ordering::Relaxed);
            info!(blob = %m.blob, pieces = have.count(), of = m.count(), "resuming a partial blob");
        }
        let p = Arc::new(Partial {
            manifest: m,
            path,
            have: Mutex::new(have),
        });
        lock(&self.partials).insert(p.manifest.blob.clone(), p.clone());
        Ok(p)
    }

    /// Fetches `blob` into `blobs/` from the nodes `peers()` names (any
    /// that may have pieces of it; asked again at every poll, so holders
    /// that appear later join the swarm). `done` follows the verified
    /// bytes. Returns when the blob is in place; on an error what was
    /// fetched is kept for the next try.
    pub async fn fetch(
        &self,
        blob: &BlobInfo,
        peers: &Peers,
        done: &AtomicU64,
        cancel: &CancellationToken,
    ) -> Result<(), ModelsError> {
        if self.store.blob_size(&blob.digest) == Some(blob.size) {
            self.ensure_pieces(blob).await?;
            done.store(blob.size, Ordering::Relaxed);
            return Ok(());
        }
        let others = || -> Vec<NodeId> {
            peers()
                .into_iter()
                .filter(|p| p != self.net.local_id())
                .collect()
        };
        // The piece manifest, from the first holder that has it (holders
        // may appear a moment after the placement).
        let started = Instant::now();
        let m = loop {
            match self.piece_manifest(blob, &others()).await {
                Ok(m) => break m,
                Err(e) if started.elapsed() > STALL => return Err(e),
                Err(e) => {
                    debug!(blob = %blob.digest, "no piece manifest yet: {e}");
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(ModelsError::Unavailable("stopped".into())),
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        };
        let part = self.open_partial(m).await?;
        let mut tries = 0;
        loop {
            tries += 1;
            self.swarm(&part, &others, done, cancel).await?;
            match self.finish(&part).await {
                Ok(()) => {
                    lock(&self.partials).remove(&blob.digest);
                    done.store(blob.size, Ordering::Relaxed);
                    return Ok(());
                }
                // Pieces changed on disk since they were verified: fetch
                // them again.
                Err(ModelsError::Io(e)) if tries < 3 => {
                    warn!(blob = %blob.digest, "{e}; fetching them again")
                }
                Err(e) => {
                    lock(&self.partials).remove(&blob.digest);
                    return Err(e);
                }
            }
        }
    }

    async fn finish(&self, part: &Arc<Partial>) -> Result<(), ModelsError> {
        let p = part.clone();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || -> Result<(), ModelsError> {
            use sha2::Digest as _;
            let f = std::fs::File::open(&p.path)?;
            f.sync_all()?;
            let mut sha = sha2::Sha256::new();
            let mut buf = vec![0u8; p.manifest.piece_size as usize];
            for i in 0..p.manifest.count() {
                let (start, n) = p.manifest.range(i);
                f.read_exact_at(&mut buf[..n as usize], start)?;
                sha.update(&buf[..n as usize]);
            }
            if format!("sha256:{}", hex::encode(sha.finalize())) == p.manifest.blob {
                store.install_blob(&p.manifest.blob, &p.path)?;
                store.save_pieces(&p.manifest)?;
                return Ok(());
            }
            // The whole does not match: find the pieces that changed.
            let mut bad = Vec::new();
            for i in 0..p.manifest.count() {
                let (start, n) = p.manifest.range(i);
                f.read_exact_at(&mut buf[..n as usize], start)?;
                if !p.manifest.verify(i, &buf[..n as usize]) {
                    bad.push(i);
                }
            }
            if bad.is_empty() {
                return Err(ModelsError::Peer(format!(
                    "every piece verifies but the whole is not {}: its piece manifest is wrong",
                    p.manifest.blob
                )));
            }
            let mut have = lock(&p.have);
            for i in &bad {
                have.clear(*i);
            }
            Err(ModelsError::Io(format!(
                "{} pieces of {} changed on disk",
                bad.len(),
                p.manifest.blob
            )))
        })
        .await
        .map_err(|e| ModelsError::Internal(e.to_string()))?
    }

    /// The swarm loop: until every piece is verified.
    async fn swarm(
        &self,
        part: &Arc<Partial>,
        peers: &impl Fn() -> Vec<NodeId>,
        done: &AtomicU64,
        cancel: &CancellationToken,
    ) -> Result<(), ModelsError> {
        let m = &part.manifest;
        let n = m.count();
        let mut state: HashMap<NodeId, PeerState> = HashMap::new();
        let mut busy = Bitfield::new(n);
        let mut bad_from: HashMap<usize, Vec<NodeId>> = HashMap::new();
        let mut counts = vec![0u16; n];
        let mut counts_ns = vec![0u16; n];
        let mut rng = Rng::new();
        let mut fetches: FuturesUnordered<BoxFuture<'_, (NodeId, usize, Fetched)>> =
            FuturesUnordered::new();
        let mut polls: FuturesUnordered<BoxFuture<'_, (NodeId, Result<Have, ModelsError>)>> =
            FuturesUnordered::new();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_progress = Instant::now();
        let verified = |have: &Bitfield| -> u64 {
            (0..n).filter(|i| have.get(*i)).map(|i| m.range(i).1).sum()
        };
        done.store(verified(&lock(&part.have)), Ordering::Relaxed);
        loop {
            let have = lock(&part.have).clone();
            if have.is_full() {
                return Ok(());
            }
            // Hand out work.
            let now = Instant::now();
            let mut order: Vec<NodeId> = state.keys().cloned().collect();
            for i in (1..order.len()).rev() {
                order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            for p in order {
                let Some(s) = state.get_mut(&p) else { continue };
                if s.strikes >= STRIKES || s.down_until.is_some_and(|t| t > now) {
                    continue;
                }
                let Some(bits) = s.bits.clone() else { continue };
                while s.in_flight < PER_PEER {
                    let bad = |i: usize| bad_from.get(&i).is_some_and(|v| v.contains(&p));
                    let pool = Pool {
                        have: &have,
                        busy: &busy,
                        counts: &counts,
                        counts_ns: &counts_ns,
                    };
                    let Some(i) = pick(&pool, &bits, s.seed, bad, &mut rng) else {
                        break;
                    };
                    busy.set(i);
                    s.in_flight += 1;
                    let peer = p.clone();
                    let part = part.clone();
                    fetches.push(Box::pin(async move {
                        let r = self.fetch_piece(&peer, &part, i).await;
                        (peer, i, r)
                    }));
                }
            }
            if fetches.is_empty() && last_progress.elapsed() > STALL {
                return Err(ModelsError::Unavailable(format!(
                    "no peer could supply the missing {} of {} pieces of {}",
                    n - have.count(),
                    n,
                    m.blob
                )));
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    return Err(ModelsError::Unavailable("stopped".into()));
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    for p in peers() {
                        state.entry(p).or_insert(PeerState {
                            bits: None,
                            seed: false,
                            strikes: 0,
                            down_until: None,
                            backoff: Duration::from_secs(1),
                            in_flight: 0,
                            polling: false,
                        });
                    }
                    for (p, s) in state.iter_mut() {
                        if s.polling || s.strikes >= STRIKES || s.down_until.is_some_and(|t| t > now) {
                            continue;
                        }
                        s.polling = true;
                        let p = p.clone();
                        let blob = m.blob.clone();
                        polls.push(Box::pin(async move {
                            let r = self
                                .call(&p, &Request::Have { blob })
                                .await
                                .and_then(|b| wire::decode_json::<Have>(&b));
                            (p, r)
                        }));
                    }
                }
                Some((p, r)) = polls.next() => {
                    if let Some(s) = state.get_mut(&p) {
                        s.polling = false;
                        match r {
                            Ok(h) if h.complete => {
                                s.seed = true;
                                s.bits = Some(Bitfield::full(n));
                            }
                            Ok(h) => {
                                s.seed = false;
                                s.bits = hex::decode(&h.bits).ok().and_then(|b| Bitfield::from_bytes(b, n));
                            }
                            Err(e) => {
                                debug!(peer = %p, "has nothing of {}: {e}", m.blob);
                                s.bits = None;
                            }
                        }
                    }
                    recount(&state, now, &mut counts, &mut counts_ns);
                }
                Some((p, i, r)) = fetches.next() => {
                    busy.clear(i);
                    let Some(s) = state.get_mut(&p) else { continue };
                    s.in_flight -= 1;
                    match r {
                        Fetched::Ok(len) => {
                            lock(&part.have).set(i);
                            done.fetch_add(len, Ordering::Relaxed);
                            self.fetched.fetch_add(len, Ordering::Relaxed);
                            last_progress = Instant::now();
                            s.backoff = Duration::from_secs(1);
                        }
                        Fetched::Bad => {
                            self.bad_pieces.fetch_add(1, Ordering::Relaxed);
                            s.strikes += 1;
                            bad_from.entry(i).or_default().push(p.clone());
                            warn!(peer = %p, piece = i, blob = %m.blob, strikes = s.strikes, "a bad piece; fetching it elsewhere");
                            if s.strikes >= STRIKES {
                                warn!(peer = %p, blob = %m.blob, "ignoring this peer for the blob");
                                recount(&state, Instant::now(), &mut counts, &mut counts_ns);
                            }
                        }
                        Fetched::Failed(e) => {
                            debug!(peer = %p, piece = i, "request failed: {e}");
                            s.down_until = Some(Instant::now() + s.backoff);
                            s.backoff = (s.backoff * 2).min(Duration::from_secs(10));
                            recount(&state, Instant::now(), &mut counts, &mut counts_ns);
                        }
                    }
                }
            }
        }
    }

    async fn fetch_piece(&self, peer: &NodeId, part: &Partial, i: usize) -> Fetched {
        let m = &part.manifest;
        let (start, len) = m.range(i);
        let mut buf = Vec::with_capacity(len as usize);
        let mut off = start;
        while off < start + len {
            let n = (start + len - off).min(MIN_PIECE);
            let r = self
                .call(
                    peer,
                    &Request::Get {
                        blob: m.blob.clone(),
                        offset: off,
                        len: n as u32,
                    },
                )
                .await
                .and_then(|b| {
                    let d = wire::decode_data(&b)?;
                    if d.len() as u64 == n {
                        Ok(d.to_vec())
                    } else {
                        Err(ModelsError::Peer("short block".into()))
                    }
                });
            match r {
                Ok(d) => buf.extend_from_slice(&d),
                Err(e) => return Fetched::Failed(e),
            }
            off += n;
        }
        if !m.verify(i, &buf) {
            return Fetched::Bad;
        }
        let path = part.path.clone();
        let w = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let f = std::fs::OpenOptions::new().write(true).open(path)?;
            f.write_all_at(&buf, start)
        })
        .await;
        match w {
            Ok(Ok(())) => Fetched::Ok(len),
            Ok(Err(e)) => Fetched::Failed(ModelsError::Io(e.to_string())),
            Err(e) => Fetched::Failed(ModelsError::Internal(e.to_string())),
        }
    }
}

fn recount(
    state: &HashMap<NodeId, PeerState>,
    now: Instant,
    counts: &mut [u16],
    counts_ns: &mut [u16],
) {
    counts.fill(0);
    counts_ns.fill(0);
    for s in state.values() {
        if s.strikes >= STRIKES || s.down_until.is_some_and(|t| t > now) {
            continue;
        }
        let Some(b) = &s.bits else { continue };
        for i in 0..counts.len() {
            if b.get(i) {
                counts[i] = counts[i].saturating_add(1);
                if !s.seed {
                    counts_ns[i] = counts_ns[i].saturating_add(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarest_first_and_the_seed_only_sends_what_nobody_else_has() {
        let n = 4;
        let have = Bitfield::new(n);
        let mut busy = Bitfield::new(n);
        let mut rng = Rng::new();
        // Pieces 0,1 held by a non-seed peer too; 2,3 only by the seed.
        let (counts, counts_ns) = ([2, 2, 1, 1], [1, 1, 0, 0]);
        let seed_bits = Bitfield::full(n);
        let mut peer_bits = Bitfield::new(n);
        peer_bits.set(0);
        peer_bits.set(1);
        {
            let p = Pool {
                have: &have,
                busy: &busy,
                counts: &counts,
                counts_ns: &counts_ns,
            };
            for _ in 0..50 {
                let i = pick(&p, &seed_bits, true, |_| false, &mut rng).expect("a piece");
                assert!(i >= 2, "the seed is asked only for pieces others lack");
            }
            let i = pick(&p, &peer_bits, false, |i| i == 0, &mut rng);
            assert_eq!(
                i,
                Some(1),
                "a piece the peer sent bad is not asked of it again"
            );
        }
        busy.set(2);
        busy.set(3);
        let p = Pool {
            have: &have,
            busy: &busy,
            counts: &counts,
            counts_ns: &counts_ns,
        };
        assert_eq!(pick(&p, &seed_bits, true, |_| false, &mut rng), None);
    }
}
