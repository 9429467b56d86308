//! openraft 0.9 wiring: the type configuration and the cluster state
//! machine (the log lives in [`crate::store`]).
//!
//! Status: the first steps of issue #4. The network is supplied by the
//! caller ([`openraft::RaftNetworkFactory`]); tests use an in-process
//! router, the node will use a libp2p request-response protocol.

// openraft's storage traits fix the error type (`StorageError`, 224 bytes);
// the helpers here return it too rather than converting back and forth.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

/// A change to the replicated cluster state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Set a key in the cluster's key-value registry (tests, and the
    /// inventory planner's records).
    Set { key: String, value: String },
}

/// The result of applying a command.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub previous: Option<String>,
}

openraft::declare_raft_types!(
    /// BZZZ's Raft types: node ids are 64-bit digests of libp2p peer ids; a
    /// node's address is its peer id.
    pub TypeConfig:
        D = Command,
        R = Response,
);

pub type NodeIdU64 = u64;
pub type Raft = openraft::Raft<TypeConfig>;

fn io_err(e: impl std::error::Error + 'static) -> StorageError<NodeIdU64> {
    StorageIOError::write(&e).into()
}

/// The replicated cluster state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub last_applied: Option<LogId<NodeIdU64>>,
    pub membership: StoredMembership<NodeIdU64, BasicNode>,
    pub kv: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct SmInner {
    state: ClusterState,
    snapshot: Option<(SnapshotMeta<NodeIdU64, BasicNode>, Vec<u8>)>,
    snapshot_seq: u64,
    /// Where snapshots are kept (none: memory only).
    db: Option<crate::store::RaftDb>,
}

type StoredSnapshot = (SnapshotMeta<NodeIdU64, BasicNode>, Vec<u8>);

/// The state machine (cloneable handle; reads see the applied state).
#[derive(Debug, Clone, Default)]
pub struct StateMachine(Arc<Mutex<SmInner>>);

impl StateMachine {
    fn inner(&self) -> std::sync::MutexGuard<'_, SmInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the applied state.
    pub fn state(&self) -> ClusterState {
        self.inner().state.clone()
    }

    /// A state machine whose snapshots persist in `db`, starting from the
    /// stored snapshot (openraft re-applies the committed log after it).
    pub fn open(db: crate::store::RaftDb) -> Result<Self, StorageError<NodeIdU64>> {
        let stored: Option<StoredSnapshot> = match db.get_meta("snapshot")? {
            Some(b) => Some(serde_json::from_slice(&b).map_err(io_err)?),
            None => None,
        };
        let mut inner = SmInner {
            db: Some(db),
            ..SmInner::default()
        };
        if let Some((meta, data)) = stored {
            inner.state = serde_json::from_slice(&data).map_err(io_err)?;
            inner.snapshot = Some((meta, data));
        }
        Ok(Self(Arc::new(Mutex::new(inner))))
    }

    fn persist_snapshot(i: &SmInner) -> Result<(), StorageError<NodeIdU64>> {
        if let (Some(db), Some(snap)) = (&i.db, &i.snapshot) {
            db.put_meta("snapshot", &serde_json::to_vec(snap).map_err(io_err)?)?;
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeIdU64>> {
        let mut i = self.inner();
        let data = serde_json::to_vec(&i.state).map_err(io_err)?;
        i.snapshot_seq += 1;
        let meta = SnapshotMeta {
            last_log_id: i.state.last_applied,
            last_membership: i.state.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                i.state.last_applied.map_or(0, |l| l.index),
                i.snapshot_seq
            ),
        };
        i.snapshot = Some((meta.clone(), data.clone()));
        StateMachine::persist_snapshot(&i)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeIdU64>>,
            StoredMembership<NodeIdU64, BasicNode>,
        ),
        StorageError<NodeIdU64>,
    > {
        let i = self.inner();
        Ok((i.state.last_applied, i.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeIdU64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut i = self.inner();
        let mut out = Vec::new();
        for e in entries {
            i.state.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Response::default()),
                EntryPayload::Normal(Command::Set { key, value }) => {
                    let previous = i.state.kv.insert(key, value);
                    out.push(Response { previous });
                }
                EntryPayload::Membership(m) => {
                    i.state.membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(Response::default());
                }
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeIdU64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeIdU64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeIdU64>> {
        let data = snapshot.into_inner();
        let state: ClusterState = serde_json::from_slice(&data).map_err(io_err)?;
        let mut i = self.inner();
        i.state = state;
        i.snapshot = Some((meta.clone(), data));
        StateMachine::persist_snapshot(&i)?;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeIdU64>> {
        Ok(self.inner().snapshot.clone().map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
