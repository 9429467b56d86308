//! Node identifiers.
//!
//! A [`NodeId`] is the textual (base58) form of the node's libp2p peer id,
//! which is itself derived from the node's Ed25519 identity key. This crate
//! does not depend on libp2p, so it validates the *shape* (alphabet and
//! length); the network layer checks that an id matches the key that signed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Bitcoin base58 alphabet, as used by libp2p peer ids.
const BASE58: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Shortest and longest accepted id (Ed25519 peer ids are 52 characters;
/// the bounds leave room for other key types without accepting junk).
const MIN_LEN: usize = 40;
const MAX_LEN: usize = 64;

/// A node's identity, as text. Always valid once constructed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

/// Why a string is not a [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("node id has {0} characters; expected {MIN_LEN} to {MAX_LEN}")]
    Length(usize),
    #[error("node id contains {0:?}, which is not a base58 character")]
    Alphabet(char),
}

impl NodeId {
    /// Validates and wraps a base58 peer id.
    pub fn parse(s: &str) -> Result<Self, NodeIdError> {
        let n = s.chars().count();
        if !(MIN_LEN..=MAX_LEN).contains(&n) {
            return Err(NodeIdError::Length(n));
        }
        if let Some(c) = s.chars().find(|c| !BASE58.contains(*c)) {
            return Err(NodeIdError::Alphabet(c));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short form for logs and tables (last 8 characters, like libp2p's).
    pub fn short(&self) -> &str {
        &self.0[self.0.len().saturating_sub(8)..]
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for NodeId {
    type Error = NodeIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REAL: &str = "12D3KooWGzBjvFbZMoUi4pB8XkkQ6TMWrQ9ZRhUZnJ5ia9YBpbVx";

    #[test]
    fn accepts_a_real_peer_id_and_round_trips_through_json() {
        let id = NodeId::parse(REAL).expect("valid");
        assert_eq!(id.short(), "a9YBpbVx");
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(serde_json::from_str::<NodeId>(&json).expect("parse"), id);
    }

    #[test]
    fn rejects_bad_alphabet_and_length() {
        assert_eq!(NodeId::parse("short"), Err(NodeIdError::Length(5)));
        let bad = REAL.replace('K', "0");
        assert_eq!(NodeId::parse(&bad), Err(NodeIdError::Alphabet('0')));
        assert!(serde_json::from_str::<NodeId>("\"../../etc/passwd\"").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accepts_only_base58(s in "\\PC{0,80}") {
            if let Ok(id) = NodeId::parse(&s) {
                prop_assert!(id.as_str().chars().all(|c| BASE58.contains(c)));
                prop_assert_eq!(id.as_str(), s.as_str());
            }
        }
    }
}
