//! Cluster records: the genesis record written at setup, membership
//! certificates, join tokens, and the keys protocol spoken between nodes.
//!
//! Every record signed by the cluster admin key travels as a [`Signed`]: the
//! exact JSON text that was signed, plus the signature. Verifiers check the
//! signature over those bytes (with a per-record domain tag, see
//! `bzzz_crypto::records`) before they parse them, so a record can gain
//! fields later without breaking the signature of older ones.

use std::collections::BTreeMap;

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
    /// The threshold policy chosen at setup (records written before
    /// policies: `None`, read as the threshold they name, fixed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<KeyPolicy>,
    /// Argon2id PHC string of the operator password, in clusters set up
    /// before operator keys; empty since (see `operator_public_key`).
    #[serde(default)]
    pub operator_verifier: String,
    /// The public key (hex) the operator password derives at setup
    /// (Argon2id, see `bzzz_crypto::operator`). Threshold signers check the
    /// operator's authorizations against it until an admin change
    /// ([`AdminAction::SetOperatorKey`]) replaces it. Not secret, but a
    /// brute-force target, hence the memory-hard derivation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_public_key: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// The cluster CA's certificate (PEM; ECDSA P-256, name-constrained)
    /// made at setup: being part of this admin-signed record is its
    /// endorsement by the admin key. `None` in clusters set up before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
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
    /// Admitted by a token that admits more than one node (issue #22): a
    /// member, but it holds no share until the operator approves it
    /// ([`AdminAction::ApproveMember`]). A single-use token is the
    /// operator's act for one node; a shared one could be spent on sybils.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
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

/// Default share threshold for `n` shares: a majority, ⌊n/2⌋ + 1 (2 of 3,
/// 3 of 5, 4 of 7; SPEC §3). One share means threshold one.
pub fn default_threshold(n: u16) -> u16 {
    KeyPolicy::Majority.threshold(n)
}

/// How the admin key's threshold follows the number of share holders
/// (SPEC §3). Kept in the signed records (genesis, key epochs); written
/// `majority` or `fixed:T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyPolicy {
    /// t = ⌊n/2⌋ + 1.
    #[default]
    Majority,
    /// t = T, clamped to the holder count, and never below 2 while there
    /// are two holders or more (so no share is ever the whole key on two
    /// nodes). T is at least 2.
    Fixed(u16),
}

impl KeyPolicy {
    /// The threshold for `n` holders.
    pub fn threshold(self, n: u16) -> u16 {
        let n = n.max(1);
        match self {
            KeyPolicy::Majority => n / 2 + 1,
            KeyPolicy::Fixed(t) => t.clamp(n.min(2), n),
        }
    }
}

impl std::fmt::Display for KeyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyPolicy::Majority => f.write_str("majority"),
            KeyPolicy::Fixed(t) => write!(f, "fixed:{t}"),
        }
    }
}

impl std::str::FromStr for KeyPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "majority" {
            return Ok(Self::Majority);
        }
        let t = s
            .strip_prefix("fixed:")
            .ok_or_else(|| format!("{s:?} is not a key policy: use `majority` or `fixed:T`"))?;
        let t: u16 = t
            .parse()
            .map_err(|_| format!("{s:?}: T must be a whole number from 2 to 255"))?;
        if !(2..=255).contains(&t) {
            return Err(format!(
                "{s:?}: T must be from 2 to 255 (a threshold of 1 makes every share the whole key)"
            ));
        }
        Ok(Self::Fixed(t))
    }
}

impl Serialize for KeyPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One epoch of the admin key's custody: who holds shares, with what
/// threshold, and the public commitment every share is checked against.
/// Signed by the admin key (threshold, by holders of the epoch before)
/// and committed through Raft; epoch 0 is the genesis record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEpoch {
    pub v: u32,
    pub cluster: String,
    pub admin_public_key: String,
    /// 1, 2, … (the genesis record is epoch 0).
    pub epoch: u64,
    pub policy: KeyPolicy,
    pub threshold: u16,
    /// Share holders by index (sorted, distinct indexes and nodes).
    pub holders: Vec<ShareHolder>,
    /// Public commitment of the new sharing (hex).
    pub commitment: String,
    /// The dealers (previous epoch's share indexes) and their commitments
    /// (hex): anyone can recompute `commitment` from them and the
    /// previous epoch's commitment.
    pub dealt_by: std::collections::BTreeMap<u16, String>,
    /// Unix seconds.
    pub issued_at: u64,
}

impl KeyEpoch {
    /// Bounds and shape (the signature and the commitment are checked by
    /// the caller).
    pub fn validate(&self) -> Result<(), String> {
        if self.epoch == 0 {
            return Err("key epoch 0 is the genesis record".into());
        }
        if self.holders.is_empty() || self.holders.len() > MAX_HOLDERS {
            return Err(format!("a key epoch has 1 to {MAX_HOLDERS} holders"));
        }
        let n = u16::try_from(self.holders.len()).map_err(|_| "too many holders")?;
        if self.threshold != self.policy.threshold(n) {
            return Err(format!(
                "threshold {} does not follow the policy {} for {n} holders",
                self.threshold, self.policy
            ));
        }
        let mut idx = std::collections::BTreeSet::new();
        let mut nodes = std::collections::BTreeSet::new();
        for h in &self.holders {
            if h.index == 0 || !idx.insert(h.index) || !nodes.insert(&h.node_id) {
                return Err(format!("holder index {} or node listed twice", h.index));
            }
        }
        if self.dealt_by.is_empty() || self.dealt_by.len() > MAX_HOLDERS {
            return Err("a key epoch names its dealers".into());
        }
        Ok(())
    }

    /// Holders as a map index → node.
    pub fn holder_map(&self) -> std::collections::BTreeMap<u16, NodeId> {
        self.holders
            .iter()
            .map(|h| (h.index, h.node_id.clone()))
            .collect()
    }
}

/// Most share holders in one epoch.
pub const MAX_HOLDERS: usize = 255;

/// A re-deal to run: the next epoch's holders (with their certificates,
/// which bind their age recipients) and threshold, and the current
/// holders that deal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedealPlan {
    /// The epoch being made.
    pub epoch: u64,
    pub policy: KeyPolicy,
    pub threshold: u16,
    pub holders: Vec<PlannedHolder>,
    /// Share indexes of the current epoch's holders that deal (exactly the
    /// current threshold's worth).
    pub dealers: Vec<u16>,
}

/// A holder of the next epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedHolder {
    pub index: u16,
    pub node_id: NodeId,
    /// Its membership certificate (names the index and its age recipient).
    pub cert: Signed,
}

/// What a signer is asked to sign. Signers derive the message bytes from
/// the purpose themselves, and approve the purpose before they commit, so a
/// coordinator cannot slip a different message in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SignPurpose {
    /// An operator message (authorized by the operator's key).
    Message {
        message: Vec<u8>,
        operator: OperatorAuth,
    },
    /// A join token body (authorized by the operator's key).
    JoinToken {
        body: String,
        operator: OperatorAuth,
    },
    /// A membership certificate body (authorized by a valid join token).
    Certificate { body: String, token: WireSecret },
    /// An admin change ([`AdminChange`] JSON; authorized by the operator's
    /// key).
    AdminChange {
        body: String,
        operator: OperatorAuth,
    },
    /// A key epoch record ([`KeyEpoch`] JSON) made by a re-deal. Authorized
    /// by the signers' own checks (holders follow membership, threshold
    /// follows the policy, commitment follows from the dealers'); a policy
    /// change also needs the operator's authorization of the new policy.
    KeyEpoch {
        body: String,
        /// Certificates of holders that are new in this epoch.
        certs: Vec<Signed>,
        #[serde(default)]
        operator: Option<OperatorAuth>,
    },
    /// A checkpoint of the audit chain ([`crate::access::AuditCheckpoint`]
    /// JSON). Authorized by the signer's own check: its copy of the chain
    /// holds that entry with that hash (it attests only what it holds).
    AuditCheckpoint { body: String },
}

/// The operator's authorization of one threshold signature, signed by the
/// key the operator password derives (see `bzzz_crypto::operator`). It
/// carries no secret: a signer that keeps it can only have the same
/// message signed again, within [`OPERATOR_AUTH_WINDOW_SECS`], and every
/// signer takes a nonce once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorAuth {
    /// Unix seconds when the operator's node signed it.
    pub time: u64,
    /// 16 random bytes, hex.
    pub nonce: String,
    /// Ed25519 signature (hex) over `bzzz_crypto::operator::auth_bytes`.
    pub signature: String,
}

/// How far an [`OperatorAuth`]'s time may be from a signer's clock.
pub const OPERATOR_AUTH_WINDOW_SECS: u64 = 120;

/// The kind an operator authorization of a re-deal's policy names (its
/// target is [`policy_auth_target`]).
pub const POLICY_AUTH_KIND: &str = "key_policy";

/// What the operator authorizes when a re-deal changes the threshold
/// policy: the new epoch and policy. The epoch makes it single-use (each
/// epoch is dealt once).
pub fn policy_auth_target(epoch: u64, policy: KeyPolicy) -> Vec<u8> {
    let mut out = epoch.to_be_bytes().to_vec();
    out.extend_from_slice(
        serde_json::to_string(&policy)
            .unwrap_or_default()
            .as_bytes(),
    );
    out
}

impl SignPurpose {
    /// The purpose without its credential, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SignPurpose::Message { .. } => "message",
            SignPurpose::JoinToken { .. } => "join_token",
            SignPurpose::Certificate { .. } => "certificate",
            SignPurpose::AdminChange { .. } => "admin_change",
            SignPurpose::KeyEpoch { .. } => "key_epoch",
            SignPurpose::AuditCheckpoint { .. } => "audit_checkpoint",
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
        /// The key epoch whose shares sign; signers refuse any other.
        #[serde(default)]
        epoch: u64,
        /// That epoch's record (past genesis): a signer that has not
        /// applied it yet adopts it (it checks the admin signature).
        #[serde(default)]
        current: Option<Signed>,
        /// The coordinator's latest replacement of the operator key (an
        /// admin change, `SetOperatorKey`): a signer that has not applied
        /// it yet adopts it (it checks the admin signature and `seq`).
        #[serde(default)]
        operator_change: Option<Signed>,
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
    /// Re-deal step 1, to each dealer (a current holder): deal your
    /// weighted share to the plan's holders.
    RedealDeal {
        session: String,
        plan: RedealPlan,
        #[serde(default)]
        coordinator_cert: Option<Signed>,
        /// The operator's authorization, when the plan changes the policy.
        #[serde(default)]
        operator: Option<OperatorAuth>,
        /// The current epoch's record, for a dealer that has not applied it
        /// yet (checked like any epoch record).
        #[serde(default)]
        current: Option<Signed>,
    },
    /// Re-deal step 2, to each holder of the plan: the dealers'
    /// commitments and your sub-shares (each sealed to you); check, sum,
    /// keep the result as the pending share of `plan.epoch`.
    RedealReceive {
        session: String,
        plan: RedealPlan,
        /// The current epoch's record (genesis for epoch 0 is known to
        /// every member; `None` then).
        current: Option<Signed>,
        commitments: std::collections::BTreeMap<u16, String>,
        sealed: Vec<(u16, Vec<u8>)>,
        /// Join token uses the dealers recorded (id, uses, expiry), so new
        /// holders keep counting them.
        #[serde(default)]
        token_uses: Vec<(String, u32, u64)>,
        #[serde(default)]
        coordinator_cert: Option<Signed>,
    },
    /// Is this node still a member? (Asked of peers at start: a removed
    /// node is told so, with the signed removal.)
    Standing,
    /// A member asks a holder of the cluster CA's key for a certificate
    /// of its TLS key (SubjectPublicKeyInfo DER) for its addresses and
    /// names (issue #24).
    IssueCert {
        spki_der: Vec<u8>,
        ips: Vec<String>,
        dns: Vec<String>,
    },
}

/// Re-deal messages (appended to [`KeysRequest`]'s variants).
impl KeysRequest {
    /// The request without secrets, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            KeysRequest::Install(_) => "install",
            KeysRequest::SignCommit { .. } => "sign_commit",
            KeysRequest::SignShare { .. } => "sign_share",
            KeysRequest::Join { .. } => "join",
            KeysRequest::Enroll { .. } => "enroll",
            KeysRequest::EnrollDeltas { .. } => "enroll_deltas",
            KeysRequest::EnrollSigma { .. } => "enroll_sigma",
            KeysRequest::RedealDeal { .. } => "redeal_deal",
            KeysRequest::RedealReceive { .. } => "redeal_receive",
            KeysRequest::Standing => "standing",
            KeysRequest::IssueCert { .. } => "issue_cert",
        }
    }
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
    /// The current key epoch's record, when past genesis.
    #[serde(default)]
    pub epoch: Option<Signed>,
    /// The cluster CA's private key (PKCS#8 PEM), sealed with age to the
    /// node's recipient: given to share holders only (they issue the
    /// node certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_ca_key: Option<Vec<u8>>,
}

/// Responses of the keys protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KeysResponse {
    Installed,
    /// A node certificate (PEM) signed by the cluster CA.
    Certificate {
        pem: String,
    },
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
    /// Re-deal step 1 answer: the dealer's commitment and the sub-shares,
    /// each sealed to its holder, by holder index; and its token uses.
    Dealt {
        index: u16,
        commitment: String,
        sealed: Vec<(u16, Vec<u8>)>,
        token_uses: Vec<(String, u32, u64)>,
    },
    /// Re-deal step 2 answer: the pending share of `epoch` is stored.
    Received {
        index: u16,
        epoch: u64,
    },
    /// `Standing` answer for a member: the responder's key epoch.
    Standing {
        epoch: u64,
    },
    /// The requester was removed from the cluster: the admin-signed
    /// removal ([`AdminChange`] with [`AdminAction::RemoveMember`]).
    Removed {
        change: Signed,
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
    /// Permission rules, `ACTION:RESOURCE` or `deny:ACTION:RESOURCE`
    /// (see `crate::access`), e.g. `infer:model:smollm2*`.
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
        for p in &self.permissions {
            p.parse::<crate::access::Rule>()?;
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
    /// Remove a member for good: every node refuses it, Raft drops it, the
    /// admin key is re-dealt without it.
    RemoveMember { node_id: NodeId },
    /// Only adds the change's `role_keys` (a key chain's first key, made
    /// when a record needs one).
    RoleKeys {},
    /// A change to users or API keys made by the operator.
    Access { change: crate::access::AccessChange },
    /// A new operator password: the public key it derives (hex). Signed
    /// under the old one; the old password stops working on every node.
    SetOperatorKey { public_key: String },
    /// The operator approves a pending member (admitted by a multi-use
    /// token) as a share holder; the admin key is then re-dealt to it.
    ApproveMember { node_id: NodeId },
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
            AdminAction::RemoveMember { node_id } => format!("remove member {node_id}"),
            AdminAction::RoleKeys {} => "add role keys".to_owned(),
            AdminAction::Access { change } => change.summary(),
            AdminAction::SetOperatorKey { .. } => "change the operator password".to_owned(),
            AdminAction::ApproveMember { node_id } => format!("approve member {node_id}"),
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
    /// New key epochs (chain → key) this change brings: a role's first
    /// key, and the next key of every chain the change takes a reader
    /// from (required then: revocation rotates the key).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub role_keys: BTreeMap<String, crate::dht::RoleKey>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_thresholds_follow_the_spec() {
        assert_eq!(default_threshold(1), 1);
        assert_eq!(default_threshold(2), 2);
        assert_eq!(default_threshold(3), 2);
        assert_eq!(default_threshold(4), 3);
        assert_eq!(default_threshold(5), 3);
        assert_eq!(default_threshold(7), 4);
        assert_eq!(KeyPolicy::Fixed(4).threshold(3), 3);
        assert_eq!(KeyPolicy::Fixed(2).threshold(1), 1);
        assert_eq!(KeyPolicy::Fixed(3).threshold(9), 3);
    }

    #[test]
    fn key_policies_parse_and_print() {
        for s in ["majority", "fixed:2", "fixed:17"] {
            let p: KeyPolicy = s.parse().expect(s);
            assert_eq!(p.to_string(), s);
            let j = serde_json::to_string(&p).expect("json");
            assert_eq!(serde_json::from_str::<KeyPolicy>(&j).expect("back"), p);
        }
        for bad in ["", "fixed:1", "fixed:0", "fixed:x", "most", "fixed:256"] {
            assert!(bad.parse::<KeyPolicy>().is_err(), "{bad}");
        }
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
