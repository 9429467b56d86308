//! Persistent Raft storage on redb: the log, the vote, the committed index
//! and the latest state machine snapshot survive restarts.
//!
//! One redb file per node (`<data_dir>/raft.redb`). Every append, vote and
//! truncation is its own write transaction, committed (fsync) before openraft
//! is told it is durable. On open, the state machine starts from the stored
//! snapshot; openraft then re-applies committed entries after it.

// openraft's storage traits fix the error type (`StorageError`, 224 bytes);
// the helpers here return it too rather than converting back and forth.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{ReadableTable, TableDefinition};

use crate::raft::{NodeIdU64, TypeConfig};

const LOG: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeIdU64> {
    StorageIOError::read(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeIdU64> {
    StorageIOError::write(&e).into()
}

/// The format of what this database holds (JSON log entries, vote,
/// committed log id, and the snapshot as JSON `(meta, state)`), recorded
/// under the meta key `format`. Stores written before the format was
/// recorded hold format 1 and are marked on open. A store of a newer
/// format is refused, never misread.
pub const FORMAT: u32 = 1;
const FORMAT_KEY: &str = "format";

/// Why the database cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Db(#[from] redb::DatabaseError),
    #[error("Raft store: {0}")]
    Storage(String),
    #[error(
        "the Raft store has format {found}, newer than this BZZZ reads ({FORMAT}); upgrade BZZZ"
    )]
    Newer { found: u32 },
}

/// The node's Raft database (cloneable handle).
#[derive(Debug, Clone)]
pub struct RaftDb(Arc<redb::Database>);

impl RaftDb {
    /// Opens (or creates) the database file, checking (or recording) its
    /// format.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let db = Self(Arc::new(redb::Database::create(path)?));
        let storage = |e: StorageError<NodeIdU64>| OpenError::Storage(e.to_string());
        match db.get_meta(FORMAT_KEY).map_err(storage)? {
            None => {
                // New, or from before formats were recorded (format 1).
                db.put_meta(FORMAT_KEY, FORMAT.to_string().as_bytes())
                    .map_err(storage)?;
            }
            Some(v) => {
                let found: u32 = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| OpenError::Storage("unreadable format marker".into()))?;
                if found > FORMAT {
                    return Err(OpenError::Newer { found });
                }
            }
        }
        Ok(db)
    }

    /// The recorded format.
    pub fn format(&self) -> Result<Option<u32>, StorageError<NodeIdU64>> {
        Ok(self
            .get_meta(FORMAT_KEY)?
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()))
    }

    pub(crate) fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError<NodeIdU64>> {
        let tx = self.0.begin_read().map_err(read_err)?;
        let t = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        Ok(t.get(key).map_err(read_err)?.map(|v| v.value().to_vec()))
    }

    pub(crate) fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StorageError<NodeIdU64>> {
        let tx = self.0.begin_write().map_err(write_err)?;
        {
            let mut t = tx.open_table(META).map_err(write_err)?;
            t.insert(key, value).map_err(write_err)?;
        }
        tx.commit().map_err(write_err)
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError<NodeIdU64>> {
        match self.get_meta(key)? {
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(read_err),
            None => Ok(None),
        }
    }

    fn put_json<T: serde::Serialize>(
        &self,
        key: &str,
        v: &T,
    ) -> Result<(), StorageError<NodeIdU64>> {
        let b = serde_json::to_vec(v).map_err(write_err)?;
        self.put_meta(key, &b)
    }
}

/// The Raft log on redb.
#[derive(Debug, Clone)]
pub struct DiskLog {
    db: RaftDb,
}

impl DiskLog {
    pub fn new(db: RaftDb) -> Self {
        Self { db }
    }
}

impl RaftLogReader<TypeConfig> for DiskLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeIdU64>> {
        let tx = self.db.0.begin_read().map_err(read_err)?;
        let t = match tx.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![]),
            Err(e) => return Err(read_err(e)),
        };
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for item in t.range(start..).map_err(read_err)? {
            let (k, v) = item.map_err(read_err)?;
            if !range.contains(&k.value()) {
                break;
            }
            out.push(serde_json::from_slice(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for DiskLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeIdU64>> {
        let last_purged: Option<LogId<NodeIdU64>> = self.db.get_json("last_purged")?;
        let tx = self.db.0.begin_read().map_err(read_err)?;
        let last = match tx.open_table(LOG) {
            Ok(t) => match t.last().map_err(read_err)? {
                Some((_, v)) => {
                    let e: Entry<TypeConfig> =
                        serde_json::from_slice(v.value()).map_err(read_err)?;
                    Some(e.log_id)
                }
                None => None,
            },
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(read_err(e)),
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeIdU64>) -> Result<(), StorageError<NodeIdU64>> {
        self.db.put_json("vote", vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeIdU64>>, StorageError<NodeIdU64>> {
        self.db.get_json("vote")
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeIdU64>>,
    ) -> Result<(), StorageError<NodeIdU64>> {
        self.db.put_json("committed", &committed)
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<NodeIdU64>>, StorageError<NodeIdU64>> {
        Ok(self
            .db
            .get_json::<Option<LogId<NodeIdU64>>>("committed")?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeIdU64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let tx = self.db.0.begin_write().map_err(write_err)?;
        {
            let mut t = tx.open_table(LOG).map_err(write_err)?;
            for e in entries {
                let b = serde_json::to_vec(&e).map_err(write_err)?;
                t.insert(e.log_id.index, b.as_slice()).map_err(write_err)?;
            }
        }
        tx.commit().map_err(write_err)?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeIdU64>) -> Result<(), StorageError<NodeIdU64>> {
        let tx = self.db.0.begin_write().map_err(write_err)?;
        {
            let mut t = tx.open_table(LOG).map_err(write_err)?;
            t.retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)?;
        }
        tx.commit().map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeIdU64>) -> Result<(), StorageError<NodeIdU64>> {
        self.db.put_json("last_purged", &Some(log_id))?;
        let tx = self.db.0.begin_write().map_err(write_err)?;
        {
            let mut t = tx.open_table(LOG).map_err(write_err)?;
            t.retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
        }
        tx.commit().map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_record_their_format_and_newer_ones_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("raft.redb");
        // A store from before the format was recorded: data, no marker.
        {
            let db = redb::Database::create(&path).expect("create");
            let tx = db.begin_write().expect("tx");
            {
                let mut t = tx.open_table(META).expect("meta");
                t.insert("vote", b"{}".as_slice()).expect("insert");
            }
            tx.commit().expect("commit");
        }
        let db = RaftDb::open(&path).expect("legacy store opens");
        assert_eq!(db.format().expect("read"), Some(FORMAT));
        assert_eq!(
            db.get_meta("vote").expect("read").as_deref(),
            Some(&b"{}"[..])
        );
        db.put_meta(FORMAT_KEY, b"99").expect("write");
        drop(db);
        match RaftDb::open(&path) {
            Err(OpenError::Newer { found: 99 }) => {}
            other => panic!("a newer store was not refused: {other:?}"),
        }
    }
}
