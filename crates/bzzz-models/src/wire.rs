//! Messages of `/bzzz/models/1.0.0`. A request is JSON (small, bounded);
//! an answer is one tag byte and a body: `0` an error (UTF-8 text), `1`
//! JSON, `2` raw block bytes (so 256 KiB of model data is not re-encoded).

use std::collections::BTreeMap;

use bzzz_proto::models::ReplicaState;
use serde::{Deserialize, Serialize};

use crate::ModelsError;

/// Largest request accepted (they are tiny).
pub const MAX_REQUEST: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Which pieces of a blob do you have?
    Have { blob: String },
    /// The blob's piece manifest (encoded).
    Pieces { blob: String },
    /// `len` bytes (≤ 256 KiB, inside one piece) at `offset`.
    Get { blob: String, offset: u64, len: u32 },
    /// Your state for every model you hold or fetch.
    Progress,
}

/// The answer to `Have`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Have {
    pub complete: bool,
    /// The bitfield (hex), when partial.
    #[serde(default)]
    pub bits: String,
}

/// One model's state on the answering node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub state: ReplicaState,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// The answer to `Progress`: model name → state.
pub type ProgressMap = BTreeMap<String, Progress>;

pub fn encode_request(r: &Request) -> Vec<u8> {
    serde_json::to_vec(r).unwrap_or_default()
}

pub fn decode_request(b: &[u8]) -> Result<Request, ModelsError> {
    if b.len() > MAX_REQUEST {
        return Err(ModelsError::Invalid("request too large".into()));
    }
    serde_json::from_slice(b).map_err(|e| ModelsError::Invalid(format!("bad request: {e}")))
}

pub fn error(msg: &str) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend(msg.as_bytes());
    v
}

pub fn json<T: Serialize>(t: &T) -> Vec<u8> {
    let mut v = vec![1u8];
    match serde_json::to_writer(&mut v, t) {
        Ok(()) => v,
        Err(e) => error(&e.to_string()),
    }
}

pub fn data(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.push(2);
    v.extend(bytes);
    v
}

/// An answer, split by its tag.
#[derive(Debug)]
pub enum Answer<'a> {
    Json(&'a [u8]),
    Data(&'a [u8]),
}

pub fn decode_answer(b: &[u8]) -> Result<Answer<'_>, ModelsError> {
    match b.split_first() {
        Some((0, msg)) => Err(ModelsError::Unavailable(
            String::from_utf8_lossy(&msg[..msg.len().min(512)]).into_owned(),
        )),
        Some((1, j)) => Ok(Answer::Json(j)),
        Some((2, d)) => Ok(Answer::Data(d)),
        _ => Err(ModelsError::Peer("malformed answer".into())),
    }
}

pub fn decode_json<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ModelsError> {
    match decode_answer(b)? {
        Answer::Json(j) => serde_json::from_slice(j)
            .map_err(|e| ModelsError::Peer(format!("malformed answer: {e}"))),
        Answer::Data(_) => Err(ModelsError::Peer("expected JSON, got data".into())),
    }
}

pub fn decode_data(b: &[u8]) -> Result<&[u8], ModelsError> {
    match decode_answer(b)? {
        Answer::Data(d) => Ok(d),
        Answer::Json(_) => Err(ModelsError::Peer("expected data, got JSON".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for r in [
            Request::Have {
                blob: "sha256:x".into(),
            },
            Request::Get {
                blob: "b".into(),
                offset: 7,
                len: 9,
            },
            Request::Progress,
        ] {
            assert_eq!(decode_request(&encode_request(&r)).unwrap(), r);
        }
        assert_eq!(decode_data(&data(b"abc")).unwrap(), b"abc");
        assert!(decode_data(&error("nope")).is_err());
        assert!(decode_answer(&[]).is_err());
        assert!(decode_answer(&[9]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = decode_request(&b);
            let _ = decode_json::<Have>(&b);
            let _ = decode_json::<ProgressMap>(&b);
        }
    }
}
