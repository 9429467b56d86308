//! The keys service of a BZZZ node: setup ceremony, share custody,
//! threshold signing (coordinator and signer), joining with tokens,
//! enrollment of shares after setup, operator authentication (SPEC §3).
//! No HTTP here: errors carry an [`ErrorKind`], which the node's HTTP
//! layer maps to a status; refusals sent to peers carry a typed
//! [`RefusalCode`] and whether to retry.
//!
//! Files: [`custody`] (records and sealed share on disk), [`ceremony`]
//! (setup), [`operator`] (operator credential, web sessions), [`signing`]
//! (coordinator), [`signer`] (requests from peers), [`enroll`], [`join`].
//!
//! Takes: calls from the HTTP handlers (setup, confirm, sign, tokens,
//! operator checks) and [`bzzz_net::ServiceRequest`]s of the keys service
//! from peers (install, sign rounds, join; JSON, see [`wire`]). Sends: keys-protocol requests to peers, and this node's
//! membership into [`LocalInfo`] (so the swarm enforces it and announces
//! the certificate).
//!
//! Files in the data dir (written atomically, mode 0600):
//! * `cluster.json`: the signed genesis record, this node's membership
//!   certificate, its share index. Public data.
//! * `share.age`: this node's share of the admin key, sealed with age to the
//!   node's own age identity. Never stored in plaintext.
//!
//! The master key exists only in memory, between "start setup" and
//! "confirm setup" (at most [`PENDING_SETUP_TTL`]), and zeroizes on drop.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bzzz_crypto::operator::OperatorPassword;
use bzzz_crypto::records::{self, Domain, TokenRefusal};
use bzzz_crypto::seal::AgeIdentity;
use bzzz_crypto::threshold::{self, GroupKey, KeyShare, MasterKey, Nonces};
use bzzz_net::{LocalInfo, Membership, NetHandle, ServiceRequest};
use bzzz_proto::NodeId;
use bzzz_proto::cluster::{
    Genesis, InstallBundle, JoinTokenBody, KeyEpoch, KeyPolicy, KeysRequest, KeysResponse,
    MembershipCert, OperatorAuth, RECORD_VERSION, RedealPlan, ShareHolder, SignPurpose, Signed,
    WireSecret, validate_cluster_name,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub const CLUSTER_FILE: &str = "cluster.json";
pub const SHARE_FILE: &str = "share.age";
/// The cluster CA's key (share holders only), sealed like the share.
pub const CA_KEY_FILE: &str = "ca-key.age";

/// Checks that `key_pem` is the private key of the CA certificate
/// `ca_cert_pem` (same public key).
pub(crate) fn check_ca_key(key_pem: &[u8], ca_cert_pem: &str) -> Result<(), String> {
    let key = std::str::from_utf8(key_pem)
        .ok()
        .and_then(|k| bzzz_crypto::ca::TlsKey::from_pem(k).ok())
        .ok_or("the CA key does not parse")?;
    let public = key.public_der().map_err(|e| e.to_string())?;
    if !bzzz_crypto::ca::has_public_key(ca_cert_pem, &public).map_err(|e| e.to_string())? {
        return Err("the CA key does not match the CA certificate".into());
    }
    Ok(())
}
/// A started setup must be confirmed within this.
pub const PENDING_SETUP_TTL: Duration = Duration::from_secs(15 * 60);
/// Words the operator re-types to confirm the mnemonic.
pub const CONFIRM_WORDS: usize = 3;
/// Most nodes one join token may admit (a deploy run of the most hosts
/// `bzzz deploy` takes, 256, uses one token).
pub const MAX_TOKEN_USES: u32 = 256;
/// Record of join token uses approved by this signer.
pub const USED_TOKENS_FILE: &str = "used_tokens.json";
/// Longest join token lifetime.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Signer-side nonces are kept this long for round 2.
const SESSION_TTL: Duration = Duration::from_secs(60);
const MAX_SESSIONS: usize = 64;

pub use bzzz_proto::cluster::RefusalCode;
pub use join::{JoinRefused, join_task, precheck_token};
pub use operator::OperatorKey;
pub use redeal::{Removed, Standing};
pub use signer::serve_inbound;

/// What kind of failure a [`KeysError`] is; callers (the HTTP layer) map it
/// to their own codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong (bad parameters, unknown signer).
    Invalid,
    /// No operator credential, or a wrong one.
    Unauthorized,
    /// The thing asked for does not exist (setup id, session).
    NotFound,
    /// Not possible in this state (already initialized, not yet initialized).
    Conflict,
    /// It existed but is gone for good (the words were already shown).
    Gone,
    /// Too many failed attempts from this client; retry later.
    Limited,
    /// A peer refused or answered wrongly.
    Peer,
    /// Not enough share holders reachable now; retry later.
    Unavailable,
    /// A local failure (disk, random number generator, a bug).
    Internal,
}

/// A keys-service error: its kind, a message for the operator, and for
/// refusals that came from a signer, the signer's [`RefusalCode`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct KeysError {
    pub kind: ErrorKind,
    pub message: String,
    /// Set when a peer's refusal caused this error.
    pub refusal: Option<RefusalCode>,
}

impl KeysError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            refusal: None,
        }
    }
}

/// A refusal to send to a peer: a code and a reason. Plain text converts to
/// [`RefusalCode::Other`] (retryable); refusals a peer must act on are built
/// with their code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: RefusalCode,
    pub reason: String,
}

impl Refusal {
    pub fn new(code: RefusalCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    /// Into the wire answer.
    pub fn into_response(self) -> KeysResponse {
        KeysResponse::refused(self.code, self.reason)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Self::new(RefusalCode::Other, reason)
    }
}

impl From<&str> for Refusal {
    fn from(reason: &str) -> Self {
        Self::new(RefusalCode::Other, reason)
    }
}

impl From<records::TokenRefusal> for Refusal {
    fn from(e: records::TokenRefusal) -> Self {
        let code = match e {
            records::TokenRefusal::Expired { .. } => RefusalCode::TokenExpired,
            records::TokenRefusal::Malformed(_) | records::TokenRefusal::Forged => {
                RefusalCode::TokenInvalid
            }
        };
        Self::new(code, e.to_string())
    }
}

/// `format!` into a [`Refusal`] with [`RefusalCode::Other`].
macro_rules! refusal {
    ($($t:tt)*) => {
        $crate::Refusal::from(format!($($t)*))
    };
}

pub mod ceremony;
pub mod custody;
pub mod enroll;
pub mod join;
pub mod limiter;
pub mod operator;
pub mod redeal;
pub mod signer;
pub mod signing;
pub mod tls;
pub mod wire;

/// Not initialized yet: a peer may ask again later.
pub(crate) fn not_initialized() -> Refusal {
    Refusal::new(RefusalCode::NotReady, "this node is not initialized")
}

pub(crate) fn err(kind: ErrorKind, message: impl Into<String>) -> KeysError {
    KeysError::new(kind, message)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClusterFile {
    v: u32,
    genesis: Signed,
    cert: Signed,
    share_index: Option<u16>,
    /// The key epoch this node's share belongs to (absent: genesis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epoch: Option<Signed>,
}

/// What this node knows of its cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub genesis: Genesis,
    pub genesis_signed: Signed,
    pub cert: Signed,
    pub admin_public_key: [u8; 32],
    /// The current key epoch's group key (commitment and threshold).
    pub group: GroupKey,
    /// This node's share index in the current epoch, if it holds one.
    pub share_index: Option<u16>,
    /// The current key epoch (0: the genesis sharing).
    pub epoch: u64,
    pub policy: KeyPolicy,
    /// The current epoch's threshold.
    pub threshold: u16,
    /// The current epoch's holders: index → node.
    pub holders: BTreeMap<u16, NodeId>,
    /// The current epoch's record (`None` at epoch 0).
    pub epoch_record: Option<Signed>,
}

/// The file that holds this node's sealed share of key epoch `epoch`.
pub fn share_file(epoch: u64) -> String {
    if epoch == 0 {
        SHARE_FILE.to_owned()
    } else {
        format!("share.e{epoch}.age")
    }
}

/// The file of a pending share (received in a re-deal of `epoch` whose
/// commitment is `commitment`, not committed yet).
pub fn pending_share_file(epoch: u64, commitment: &str) -> String {
    let h = blake3::hash(commitment.as_bytes()).to_hex();
    format!("share.e{epoch}.{}.pending", &h[..16])
}

/// Written when this node learns it was removed: later starts refuse.
pub const REMOVED_FILE: &str = "removed.json";

#[derive(Debug)]
enum ShareState {
    None,
    Valid(Arc<KeyShare>),
    Invalid(String),
}

/// Setup parameters, validated.
#[derive(Debug, Clone)]
pub struct SetupParams {
    pub cluster: String,
    /// `None`: majority, or fixed at `threshold` when one is given.
    pub threshold: Option<u16>,
    pub shares: Option<u16>,
    /// The share holders besides this node, named by the operator (issue
    /// #22: a peer that is merely in view at setup, e.g. found by mDNS,
    /// gets nothing). Empty: this node alone.
    pub holders: Vec<NodeId>,
    pub operator_password: OperatorPassword,
    /// Recovery: rebuild the cluster from this master key (same admin
    /// public key, fresh shares) instead of generating a new one.
    pub recover_from: Option<MasterKey>,
}

struct PendingSetup {
    id: String,
    master: MasterKey,
    params: SetupParams,
    threshold: u16,
    shares: u16,
    /// 1-based word positions to re-type.
    positions: Vec<usize>,
    created: Instant,
    /// The words were shown (web wizard: only once).
    revealed: bool,
}

pub use bzzz_proto::api::{KeysStatus, SetupDone, SetupStarted, ThresholdSignature, Undelivered};

struct SignSession {
    coordinator: NodeId,
    nonces: Nonces,
    message: Vec<u8>,
    created: Instant,
    /// The share that committed in round 1 and its key epoch: round 2
    /// signs with it, or refuses when the epoch changed in between.
    share: Arc<KeyShare>,
    epoch: u64,
    /// An audit checkpoint (asked without a secret: one per coordinator
    /// at a time, so no member fills the table with them).
    checkpoint: bool,
}

/// The keys service. Cheap to share (`Arc`).
pub struct Keys {
    data_dir: PathBuf,
    node_id: NodeId,
    age: AgeIdentity,
    net: std::sync::OnceLock<NetHandle>,
    local_tx: watch::Sender<LocalInfo>,
    cluster: RwLock<Option<Cluster>>,
    share: RwLock<ShareState>,
    pending: Mutex<Option<PendingSetup>>,
    sessions: Mutex<HashMap<String, SignSession>>,
    auth: Mutex<limiter::Limiter>,
    /// Held while a bundle is checked and written (see `install`).
    installing: Mutex<()>,
    /// Tests: runs between the check and the writes of `install`.
    #[cfg(test)]
    install_hook: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    /// Checks operator passwords (bounded threads and memory).
    hasher: operator::Hasher,
    /// Woken when a login attempt ends (queued attempts re-check).
    auth_ended: tokio::sync::Notify,
    /// Join token id → (uses signed for, expiry), persisted.
    used_tokens: Mutex<HashMap<String, (u32, u64)>>,
    /// Join token id → the nodes whose certificates this signer counted a
    /// use for (in memory): signing again for the same node (a retried
    /// join) spends no second use.
    /// With each node, the age recipient its certificate named: a second
    /// certificate for the same node spends no use only when it names the
    /// same recipient (else a holder that saw the token could have a
    /// certificate sealed to itself for someone else's node id).
    token_nodes: Mutex<HashMap<String, BTreeMap<NodeId, Option<String>>>>,
    /// Removed members (from the Raft state): node → signed removal.
    removed: RwLock<BTreeMap<NodeId, Signed>>,
    /// Pending members the operator approved as holders (from the Raft
    /// state; each approval's admin signature checked here).
    approved: RwLock<std::collections::BTreeSet<NodeId>>,
    /// One re-deal at a time from this node.
    redealing: tokio::sync::Mutex<()>,
    /// Whether this node's copy of the audit chain holds entry `seq` with
    /// `hash` (set by the control plane; a signer asked for a checkpoint
    /// signs only what this says it holds).
    audit_witness: std::sync::OnceLock<AuditWitness>,
    /// The latest admin-signed replacement of the operator key this node
    /// checked and adopted: its `seq`, the key (hex) and the record
    /// (persisted in [`OPERATOR_FILE`]). `None`: the genesis key.
    operator: RwLock<Option<(u64, String, Signed)>>,
    /// A passphrase that also protects the share at rest (see
    /// [`Keys::at_rest`]); `None`: sealed to the node key only.
    share_passphrase: Option<zeroize::Zeroizing<String>>,
    /// Operator authorization nonces this signer took → their expiry
    /// (unix seconds).
    operator_nonces: Mutex<HashMap<String, u64>>,
}

/// The adopted replacement of the operator key (a signed admin change).
pub const OPERATOR_FILE: &str = "operator_key.json";

/// See [`Keys::set_audit_witness`].
pub type AuditWitness = Arc<dyn Fn(u64, &str) -> bool + Send + Sync>;

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({}, ..)", self.node_id)
    }
}

pub(crate) fn random_hex(n: usize) -> Result<String, KeysError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b)
        .map_err(|e| err(ErrorKind::Internal, format!("random number generator: {e}")))?;
    Ok(hex::encode(b))
}

impl Keys {
    /// Announces this node's key epoch and share state (after any change
    /// of either).
    pub(crate) fn publish_share(&self) {
        use bzzz_proto::api::{ShareCondition, ShareReport};
        let Some(c) = self.cluster() else {
            return;
        };
        let state = match (&*read(&self.share), c.share_index) {
            (ShareState::Valid(_), _) => ShareCondition::Valid,
            (ShareState::Invalid(_), _) => ShareCondition::Invalid,
            (ShareState::None, Some(_)) => ShareCondition::Missing,
            (ShareState::None, None) => ShareCondition::None,
        };
        let report = Some(ShareReport {
            epoch: c.epoch,
            state,
        });
        self.local_tx.send_if_modified(|l| {
            let changed = l.share != report;
            l.share = report;
            changed
        });
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// Writes a file atomically with mode 0600.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests;
