//! Messages of the control-plane protocol (`/bzzz/raft/1.0.0`): openraft's
//! RPCs plus BZZZ's own (leadership hand-off, proposals forwarded to the
//! leader). The transport carries them as opaque bytes; this module owns the
//! encoding (JSON, bounded on decode).

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::raft::{Command, NodeIdU64, Response, TypeConfig};

/// Largest message accepted (a snapshot chunk is far smaller).
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Protocol version carried in every message.
pub const WIRE_VERSION: u32 = 1;

/// A request from one node's control plane to another's.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeIdU64>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// The leader of `term` has stopped its heartbeats so that the
    /// receiver can take over: it should call an election as soon as the
    /// followers' leader leases run out.
    HandOff {
        term: u64,
    },
    /// A command for the leader to commit (sent by a follower on behalf of
    /// its API caller).
    Propose(Command),
}

/// The answer to an [`Rpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Append(Result<AppendEntriesResponse<NodeIdU64>, RaftError<NodeIdU64>>),
    Vote(Result<VoteResponse<NodeIdU64>, RaftError<NodeIdU64>>),
    Snapshot(
        Result<InstallSnapshotResponse<NodeIdU64>, RaftError<NodeIdU64, InstallSnapshotError>>,
    ),
    HandOff {
        accepted: bool,
    },
    Proposed(Result<Response, String>),
    /// Not handled (e.g. the control plane is not running yet).
    Refused(String),
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    m: T,
}

/// Errors decoding a message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message too large ({0} bytes)")]
    TooLarge(usize),
    #[error("unknown protocol version {0}")]
    Version(u32),
    #[error("malformed message: {0}")]
    Malformed(String),
}

pub fn encode<T: Serialize>(m: &T) -> Vec<u8> {
    // Serializing plain data to a Vec cannot fail.
    serde_json::to_vec(&Envelope { v: WIRE_VERSION, m }).unwrap_or_default()
}

pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, WireError> {
    if b.len() > MAX_MESSAGE {
        return Err(WireError::TooLarge(b.len()));
    }
    let e: Envelope<T> =
        serde_json::from_slice(b).map_err(|e| WireError::Malformed(e.to_string()))?;
    if e.v != WIRE_VERSION {
        return Err(WireError::Version(e.v));
    }
    Ok(e.m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let m = Rpc::Propose(Command::Set {
            key: "k".into(),
            value: "v".into(),
        });
        let b = encode(&m);
        let back: Rpc = decode(&b).expect("decode");
        assert!(matches!(back, Rpc::Propose(Command::Set { key, .. }) if key == "k"));
        let r: Result<Rpc, _> = decode(&encode(&Reply::HandOff { accepted: true }));
        assert!(r.is_err(), "a reply is not a request");
    }

    #[test]
    fn refuses_other_versions_and_oversize() {
        let b = br#"{"v":2,"m":{"HandOff":{"term":1}}}"#;
        assert!(matches!(decode::<Rpc>(b), Err(WireError::Version(2))));
        let big = vec![b' '; MAX_MESSAGE + 1];
        assert!(matches!(decode::<Rpc>(&big), Err(WireError::TooLarge(_))));
    }

    proptest! {
        #[test]
        fn decoding_never_panics(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Rpc>(&b);
            let _ = decode::<Reply>(&b);
        }
    }
}
