//! Cluster records: the genesis record written at setup, membership
//! certificates, join tokens, and the keys protocol spoken between nodes.
//!
//! Every record signed by the cluster admin key travels as a [`Signed`]: the
//! exact JSON text that was signed, plus the signature. Verifiers check the
//! signature over those bytes (with a per-record domain tag, see
//! `bzzz_crypto::records`) before they parse them, so a record can gain
//! fields later without breaking the signature of older ones.

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// A credential or bearer token on the wire: zeroized on drop, never
/// printed by `Debug`.
#[derive(
    Clone, PartialEq, Eq, Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop,
)]
#[serde(transparent)]
pub struct WireSecret(String);

impl WireSecret {
    pub fn new(s: String) -> Self {
        Self(s)
    }
    /// Borrow the secret; do not copy it into non-zeroizing storage.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for WireSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireSecret(..)")
    }
}

/// Record format version written by this release.
pub const RECORD_VERSION: u32 = 1;

/// A record signed by the cluster admin key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// The signed JSON text, exactly as signed.
    pub body: String,
    /// Ed25519 signature (hex, 64 bytes) over `domain || body`.
    pub signature: String,
}

/// Which node holds which share index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareHolder {
    pub index: u16,
    pub node_id: NodeId,
}

/// The cluster's founding record, signed by the admin key at setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    pub v: u32,
    /// Cluster name (see [`validate_cluster_name`]).
    pub cluster: String,
    /// Cluster admin public key (Ed25519, hex).
    pub admin_public_key: String,
    /// Signatures need `threshold` shares.
    pub threshold: u16,
    /// Shares dealt at setup.
    pub shares: u16,
    /// Share holders at setup, by index.
    pub holders: Vec<ShareHolder>,
    /// Public commitment to the sharing polynomial (hex): lets every node
    /// check any share, and compute the public share of any index.
    pub commitment: String,
    /// Argon2id PHC string of the operator credential. Nodes check operator
    /// requests against it; it is not secret, but it is a brute-force target,
    /// hence the memory-hard hash.
    pub operator_verifier: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// A node's proof of membership, signed by the cluster admin key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipCert {
    pub v: u32,
    pub cluster: String,
    pub admin_public_key: String,
    pub node_id: NodeId,
    /// Unix seconds.
    pub issued_at: u64,
    /// The share index this node is entitled to (nodes that join after
    /// setup: their share is then enrolled by t holders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_index: Option<u16>,
    /// The node's age recipient, bound by the admin signature, so that
    /// secrets for this node are sealed to it and no one else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_recipient: Option<String>,
}

/// A join token's signed content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenBody {
    pub v: u32,
    pub cluster: String,
    pub admin_public_key: String,
    /// Random id (hex), for audit.
    pub id: String,
    /// Unix seconds after which the token is refused.
    pub expires_at: u64,
    /// Multiaddrs of members to contact.
    pub bootstrap: Vec<String>,
    /// How many nodes may join with this token (enforced by the signers:
    /// exactly when 2t > n, since any two signing quorums then overlap).
    #[serde(default = "one")]
    pub uses: u32,
}

fn one() -> u32 {
    1
}

/// Why a cluster name is refused.
pub fn validate_cluster_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err("may contain only a-z, 0-9, '-' and '_'".into());
    }
    Ok(())
}

/// Default share threshold for `n` shares: ⌈n/2⌉+1, but never more than n
/// (SPEC §3). One share means threshold one.
pub fn default_threshold(n: u16) -> u16 {
    if n <= 2 {
        n.max(1)
    } else {
        (n.div_ceil(2) + 1).min(n)
    }
}

/// What a signer is asked to sign. Signers derive the message bytes from
/// the purpose themselves, and approve the purpose before they commit, so a
/// coordinator cannot slip a different message in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SignPurpose {
    /// An operator message (authorized by the operator credential).
    Message {
        message: Vec<u8>,
        operator_password: WireSecret,
    },
    /// A join token body (authorized by the operator credential).
    JoinToken {
        body: String,
        operator_password: WireSecret,
    },
    /// A membership certificate body (authorized by a valid join token).
    Certificate { body: String, token: WireSecret },
    /// An admin change ([`AdminChange`] JSON; authorized by the operator
    /// credential).
    AdminChange {
        body: String,
        operator_password: WireSecret,
    },
}

impl SignPurpose {
    /// The purpose without its credential, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SignPurpose::Message { .. } => "message",
            SignPurpose::JoinToken { .. } => "join_token",
            SignPurpose::Certificate { .. } => "certificate",
            SignPurpose::AdminChange { .. } => "admin_change",
        }
    }
}

/// Requests of the keys protocol (`/bzzz/keys/1.0.0`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KeysRequest {
    /// Setup: a node's cluster records and its share, sealed to its age key.
    Install(InstallBundle),
    /// Threshold signing round 1: approve the purpose, commit to nonces.
    SignCommit {
        session: String,
        purpose: SignPurpose,
        /// The coordinator's membership certificate (the signer may not
        /// have seen its announcement yet, e.g. right after setup).
        #[serde(default)]
        coordinator_cert: Option<Signed>,
    },
    /// Threshold signing round 2: sign the package (frost encoding, hex).
    SignShare {
        session: String,
        signing_package: String,
    },
    /// A node asks to join with a token.
    Join {
        token: WireSecret,
        age_recipient: String,
    },
    /// A member asks for its share to be enrolled (its certificate names
    /// the index and the age recipient to seal it to).
    Enroll { cert: Signed },
    /// Enrollment step 1 (to each of t helpers): deltas for the other
    /// helpers, each sealed to its helper.
    EnrollDeltas {
        session: String,
        cert: Signed,
        helpers: Vec<(u16, NodeId)>,
        #[serde(default)]
        coordinator_cert: Option<Signed>,
    },
    /// Enrollment step 2: the deltas addressed to this helper; answer with
    /// its sigma sealed to the new share's owner.
    EnrollSigma {
        session: String,
        cert: Signed,
        sealed_deltas: Vec<Vec<u8>>,
        #[serde(default)]
        coordinator_cert: Option<Signed>,
    },
}

/// What a node receives at setup or when it joins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallBundle {
    pub genesis: Signed,
    pub cert: Signed,
    /// The node's share: frost `SecretShare` encoding, sealed with age to the
    /// node's recipient. `None` when the node joins without a share.
    pub sealed_share: Option<Vec<u8>>,
    pub share_index: Option<u16>,
}

/// Responses of the keys protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KeysResponse {
    Installed,
    /// Round 1 answer: the signer's share index and commitments (hex).
    Committed {
        index: u16,
        commitments: String,
    },
    /// Round 2 answer: the signature share (hex).
    SignatureShare {
        index: u16,
        share: String,
    },
    Joined(Box<InstallBundle>),
    /// Enrollment step 1 answer: sealed deltas by target helper index.
    Deltas {
        index: u16,
        sealed: Vec<(u16, Vec<u8>)>,
    },
    /// Enrollment step 2 answer: this helper's sigma, sealed.
    Sigma {
        index: u16,
        sealed: Vec<u8>,
    },
    /// The enrolled share's sigmas (sealed to the requester), to sum.
    Enrolled {
        index: u16,
        sealed_sigmas: Vec<Vec<u8>>,
    },
    /// Refused; `reason` is shown to the operator, `code` says why to a
    /// program and `retry` whether asking again (later, or another peer)
    /// can succeed. Peers that predate the code send neither: `Other`,
    /// retryable.
    Refused {
        reason: String,
        #[serde(default)]
        code: RefusalCode,
        #[serde(default = "default_retry")]
        retry: bool,
    },
}

fn default_retry() -> bool {
    true
}

impl KeysResponse {
    /// A refusal with its code; `retry` follows [`RefusalCode::retryable`].
    pub fn refused(code: RefusalCode, reason: impl Into<String>) -> Self {
        Self::Refused {
            reason: reason.into(),
            code,
            retry: code.retryable(),
        }
    }
}

/// Why a peer refused a keys request. Decisions (stop joining, try another
/// signer) are taken on this, never on the text of the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// Unclassified (or sent by an older peer).
    #[default]
    Other,
    /// The peer is overloaded; ask again or ask another.
    Busy,
    /// The peer cannot do it yet (not initialized, no valid share, too few
    /// holders reachable, a signer failed).
    NotReady,
    /// A signing or enrollment session the peer does not know (evicted or
    /// expired): start a new one.
    Session,
    /// The requester is not a member that may ask this.
    NotMember,
    /// The join token is malformed or not signed by this cluster.
    TokenInvalid,
    /// The join token has expired.
    TokenExpired,
    /// The join token has no uses left.
    TokenUsed,
    /// The request is wrong for this cluster (bad record, wrong cluster,
    /// taken index, wrong operator credential).
    Invalid,
}

impl RefusalCode {
    /// Whether the same request can succeed later or at another peer.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::Other | Self::Busy | Self::NotReady | Self::Session
        )
    }

    /// A refused join token: the joining node stops.
    pub fn is_token_refusal(self) -> bool {
        matches!(
            self,
            Self::TokenInvalid | Self::TokenExpired | Self::TokenUsed
        )
    }
}

/// Authority levels of a role (SPEC §9), strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Authority {
    Master,
    Decision,
    Coordination,
    Suggestion,
    ReadOnly,
}

impl std::str::FromStr for Authority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "master" => Self::Master,
            "decision" => Self::Decision,
            "coordination" => Self::Coordination,
            "suggestion" => Self::Suggestion,
            "read_only" => Self::ReadOnly,
            other => {
                return Err(format!(
                    "{other:?} is not one of master, decision, coordination, suggestion, read_only"
                ));
            }
        })
    }
}

/// A role definition (SPEC §9). The registry lives in the replicated
/// cluster state; changes need the cluster admin signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleDef {
    /// Lower-case letters, digits, `_` and `-` (1–63).
    pub name: String,
    pub authority: Authority,
    /// Allowed actions on resources, e.g. `dht:write:ucxl://*/backend/*`.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Roles whose data this role may read.
    #[serde(default)]
    pub reads: Vec<String>,
    /// Members (node ids).
    #[serde(default)]
    pub members: Vec<NodeId>,
}

impl RoleDef {
    pub fn validate(&self) -> Result<(), String> {
        validate_cluster_name(&self.name).map_err(|e| format!("role name: {e}"))?;
        if self.permissions.len() > 256 || self.reads.len() > 256 || self.members.len() > 4096 {
            return Err("role has too many entries".into());
        }
        if self
            .permissions
            .iter()
            .any(|p| p.is_empty() || p.len() > 512)
        {
            return Err("a permission is empty or longer than 512 bytes".into());
        }
        for r in &self.reads {
            validate_cluster_name(r).map_err(|e| format!("readable role {r:?}: {e}"))?;
        }
        Ok(())
    }
}

/// What an admin change does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum AdminAction {
    /// Create or replace a role.
    PutRole { role: RoleDef },
    /// Delete a role.
    RemoveRole { name: String },
    /// Set (or, with `None`, clear) a membership rule, e.g.
    /// `max_members: "16"`.
    SetRule { name: String, value: Option<String> },
}

impl AdminAction {
    /// One line for the audit log.
    pub fn summary(&self) -> String {
        match self {
            AdminAction::PutRole { role } => format!("put role {}", role.name),
            AdminAction::RemoveRole { name } => format!("remove role {name}"),
            AdminAction::SetRule { name, value } => match value {
                Some(v) => format!("set rule {name} = {v}"),
                None => format!("clear rule {name}"),
            },
        }
    }
}

/// A change to roles, permissions or membership rules, signed by the
/// cluster admin key (threshold). Every node checks the signature when it
/// applies the change; the Raft leader cannot forge one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminChange {
    pub v: u32,
    pub cluster: String,
    /// Must exceed the last applied change's `seq` (replays are refused).
    pub seq: u64,
    /// Unix seconds.
    pub issued_at: u64,
    #[serde(flatten)]
    pub action: AdminAction,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_thresholds_follow_the_spec() {
        assert_eq!(default_threshold(1), 1);
        assert_eq!(default_threshold(2), 2);
        assert_eq!(default_threshold(3), 3);
        assert_eq!(default_threshold(4), 3);
        assert_eq!(default_threshold(5), 4);
        assert_eq!(default_threshold(7), 5);
    }

    #[test]
    fn cluster_names_are_checked() {
        assert!(validate_cluster_name("lab-1").is_ok());
        assert!(validate_cluster_name("").is_err());
        assert!(validate_cluster_name("Lab").is_err());
        assert!(validate_cluster_name("a b").is_err());
        assert!(validate_cluster_name(&"a".repeat(64)).is_err());
    }
}
