//! A persistent Kademlia record store on redb (rust-libp2p ships only an
//! in-memory one), with a check hook: every record this node would store,
//! its own or a peer's, first passes [`RecordCheck`] (the DHT crate checks
//! signatures, membership and roles there; this crate knows nothing of
//! them). A refused record is answered with an error, so the sender's put
//! sees a failure for this peer.
//!
//! Values are kept with their publisher (so the original publisher keeps
//! republishing after a restart). Records never expire: versions are kept
//! for the history. Provider records are not used by BZZZ and are not
//! stored.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use libp2p::PeerId;
pub use libp2p::kad::store::RecordStore;
use libp2p::kad::store::{Error, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use tracing::{debug, warn};

const RECORDS: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("kad_records");
/// Largest value stored (a record of 256 KiB of payload, sealed, encoded
/// and signed, fits with room to spare).
pub const MAX_RECORD_VALUE: usize = 512 * 1024;
/// Largest key (a hash is 32 bytes).
const MAX_KEY: usize = 64;
/// Most records one node keeps.
pub const MAX_RECORDS: usize = 200_000;

/// Decides whether a record may be stored.
pub trait RecordCheck: Send + Sync + 'static {
    /// `Ok` to store `value` under `key`, replacing `existing` (if any);
    /// `Err(why)` refuses it.
    fn check(
        &self,
        key: &[u8],
        value: &[u8],
        existing: Option<&[u8]>,
    ) -> std::result::Result<(), String>;
}

/// Accepts every record (tests and nodes without a DHT).
#[derive(Debug, Default)]
pub struct AcceptAll;

impl RecordCheck for AcceptAll {
    fn check(&self, _: &[u8], _: &[u8], _: Option<&[u8]>) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// The store: one redb file, shared (cheap clones) between the swarm task
/// and readers such as the DHT's listing.
#[derive(Clone)]
pub struct DiskStore {
    db: Arc<redb::Database>,
    check: Arc<dyn RecordCheck>,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskStore")
    }
}

/// Errors opening the store.
#[derive(Debug, thiserror::Error)]
#[error("record store: {0}")]
pub struct StoreError(String);

fn store_err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn encode(publisher: Option<&PeerId>, value: &[u8]) -> Vec<u8> {
    let p = publisher.map(|p| p.to_bytes()).unwrap_or_default();
    let mut out = Vec::with_capacity(2 + p.len() + value.len());
    out.extend_from_slice(&(p.len() as u16).to_be_bytes());
    out.extend_from_slice(&p);
    out.extend_from_slice(value);
    out
}

fn decode(raw: &[u8]) -> Option<(Option<PeerId>, &[u8])> {
    let n = usize::from(u16::from_be_bytes(raw.get(..2)?.try_into().ok()?));
    let p = raw.get(2..2 + n)?;
    let value = raw.get(2 + n..)?;
    let publisher = if n == 0 {
        None
    } else {
        Some(PeerId::from_bytes(p).ok()?)
    };
    Some((publisher, value))
}

impl DiskStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path, check: Arc<dyn RecordCheck>) -> std::result::Result<Self, StoreError> {
        let db = redb::Database::create(path).map_err(store_err)?;
        Self::init(db, check)
    }

    /// A store in memory (nothing persists).
    pub fn in_memory(check: Arc<dyn RecordCheck>) -> std::result::Result<Self, StoreError> {
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(store_err)?;
        Self::init(db, check)
    }

    fn init(
        db: redb::Database,
        check: Arc<dyn RecordCheck>,
    ) -> std::result::Result<Self, StoreError> {
        let tx = db.begin_write().map_err(store_err)?;
        tx.open_table(RECORDS).map_err(store_err)?;
        tx.commit().map_err(store_err)?;
        Ok(Self {
            db: Arc::new(db),
            check,
        })
    }

    /// The value stored under `key` (without its publisher).
    pub fn value(&self, key: &[u8]) -> Option<Vec<u8>> {
        let tx = self.db.begin_read().ok()?;
        let t = tx.open_table(RECORDS).ok()?;
        let raw = t.get(key).ok()??;
        decode(raw.value()).map(|(_, v)| v.to_vec())
    }

    /// Every (key, value) stored; `f` sees each and may stop early by
    /// returning `false`.
    pub fn scan(&self, mut f: impl FnMut(&[u8], &[u8]) -> bool) {
        let Ok(tx) = self.db.begin_read() else { return };
        let Ok(t) = tx.open_table(RECORDS) else {
            return;
        };
        let Ok(iter) = t.iter() else { return };
        for item in iter.flatten() {
            let (k, v) = item;
            if let Some((_, value)) = decode(v.value())
                && !f(k.value(), value)
            {
                return;
            }
        }
    }

    /// How many records are stored.
    pub fn len(&self) -> usize {
        self.db
            .begin_read()
            .ok()
            .and_then(|tx| tx.open_table(RECORDS).ok())
            .and_then(|t| t.len().ok())
            .map_or(0, |n| n as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores this node's own records (`publisher`: this node) in one
    /// transaction, each first passing the size limits and the check.
    /// Run it off the swarm task (it waits for the disk).
    pub fn put_many(
        &self,
        records: &[(Vec<u8>, Vec<u8>)],
        publisher: &bzzz_proto::NodeId,
    ) -> std::result::Result<(), String> {
        let publisher: PeerId = publisher.as_str().parse().map_err(|_| "bad node id")?;
        let mut out = Vec::new();
        for (key, value) in records {
            if value.len() > MAX_RECORD_VALUE || key.len() > MAX_KEY {
                return Err("record too large".into());
            }
            let existing = self.value(key);
            if existing.as_deref() == Some(&value[..]) {
                continue;
            }
            self.check.check(key, value, existing.as_deref())?;
            out.push((key, encode(Some(&publisher), value)));
        }
        if out.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut t = tx.open_table(RECORDS).map_err(|e| e.to_string())?;
            for (k, raw) in &out {
                t.insert(&k[..], &raw[..]).map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }

    fn write(&self, key: &[u8], raw: &[u8]) -> std::result::Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        {
            let mut t = tx.open_table(RECORDS).map_err(store_err)?;
            t.insert(key, raw).map_err(store_err)?;
        }
        tx.commit().map_err(store_err)
    }
}

impl RecordStore for DiskStore {
    type RecordsIter<'a> = std::vec::IntoIter<Cow<'a, Record>>;
    type ProvidedIter<'a> = std::iter::Empty<Cow<'a, ProviderRecord>>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        let tx = self.db.begin_read().ok()?;
        let t = tx.open_table(RECORDS).ok()?;
        let raw = t.get(k.as_ref()).ok()??;
        let (publisher, value) = decode(raw.value())?;
        Some(Cow::Owned(Record {
            key: k.clone(),
            value: value.to_vec(),
            publisher,
            expires: None,
        }))
    }

    fn put(&mut self, r: Record) -> Result<()> {
        if r.value.len() > MAX_RECORD_VALUE || r.key.as_ref().len() > MAX_KEY {
            return Err(Error::ValueTooLarge);
        }
        let existing = self.value(r.key.as_ref());
        if existing.as_deref() == Some(&r.value[..]) {
            return Ok(());
        }
        if existing.is_none() && self.len() >= MAX_RECORDS {
            return Err(Error::MaxRecords);
        }
        if let Err(why) = self
            .check
            .check(r.key.as_ref(), &r.value, existing.as_deref())
        {
            debug!("record refused: {why}");
            // kad has no "refused" error; this one makes it answer the
            // sender with a failure, which is what a refusal needs.
            return Err(Error::ValueTooLarge);
        }
        self.write(r.key.as_ref(), &encode(r.publisher.as_ref(), &r.value))
            .map_err(|e| {
                warn!("{e}");
                Error::MaxRecords
            })
    }

    fn remove(&mut self, k: &RecordKey) {
        let Ok(tx) = self.db.begin_write() else {
            return;
        };
        if let Ok(mut t) = tx.open_table(RECORDS) {
            let _ = t.remove(k.as_ref());
        }
        let _ = tx.commit();
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        let mut out = Vec::new();
        let Ok(tx) = self.db.begin_read() else {
            return out.into_iter();
        };
        let Ok(t) = tx.open_table(RECORDS) else {
            return out.into_iter();
        };
        if let Ok(iter) = t.iter() {
            for (k, v) in iter.flatten() {
                if let Some((publisher, value)) = decode(v.value()) {
                    out.push(Cow::Owned(Record {
                        key: RecordKey::new(&k.value()),
                        value: value.to_vec(),
                        publisher,
                        expires: None,
                    }));
                }
            }
        }
        out.into_iter()
    }

    fn add_provider(&mut self, _: ProviderRecord) -> Result<()> {
        Err(Error::MaxProvidedKeys)
    }

    fn providers(&self, _: &RecordKey) -> Vec<ProviderRecord> {
        vec![]
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        std::iter::empty()
    }

    fn remove_provider(&mut self, _: &RecordKey, _: &PeerId) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoOverwrite;
    impl RecordCheck for NoOverwrite {
        fn check(
            &self,
            _: &[u8],
            v: &[u8],
            existing: Option<&[u8]>,
        ) -> std::result::Result<(), String> {
            if v.starts_with(b"bad") {
                return Err("bad".into());
            }
            match existing {
                Some(_) => Err("exists".into()),
                None => Ok(()),
            }
        }
    }

    #[test]
    fn records_persist_with_their_publisher_and_pass_the_check() {
        let dir = std::env::temp_dir().join(format!("bzzz-store-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("dht.redb");
        let _ = std::fs::remove_file(&path);
        let publisher = PeerId::random();
        {
            let mut s = DiskStore::open(&path, Arc::new(NoOverwrite)).expect("open");
            let mut r = Record::new(RecordKey::new(&b"k1"), b"v1".to_vec());
            r.publisher = Some(publisher);
            s.put(r.clone()).expect("put");
            s.put(r).expect("the same value again is fine");
            assert!(
                s.put(Record::new(RecordKey::new(&b"k1"), b"v2".to_vec()))
                    .is_err()
            );
            assert!(
                s.put(Record::new(RecordKey::new(&b"k2"), b"bad".to_vec()))
                    .is_err()
            );
            assert!(
                s.put(Record::new(
                    RecordKey::new(&b"k3"),
                    vec![0; MAX_RECORD_VALUE + 1]
                ))
                .is_err()
            );
        }
        let s = DiskStore::open(&path, Arc::new(AcceptAll)).expect("reopen");
        let r = s.get(&RecordKey::new(&b"k1")).expect("kept");
        assert_eq!(r.value, b"v1");
        assert_eq!(r.publisher, Some(publisher));
        assert_eq!(s.records().count(), 1);
        assert_eq!(s.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn garbage_in_the_file_is_skipped() {
        assert!(decode(&[]).is_none());
        assert!(decode(&[0, 5, 1]).is_none());
        assert_eq!(decode(&[0, 0, 7]).map(|(_, v)| v.to_vec()), Some(vec![7]));
    }
}
