//! The keys service: setup ceremony, share custody, threshold signing,
//! joining with tokens, operator authentication (SPEC §3).
//!
//! Takes: calls from the HTTP handlers (setup, confirm, sign, tokens,
//! operator checks) and [`InboundRequest`]s from peers (install, sign
//! rounds, join). Sends: keys-protocol requests to peers, and this node's
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
use bzzz_net::{InboundRequest, LocalInfo, Membership, NetHandle};
use bzzz_proto::NodeId;
use bzzz_proto::cluster::{
    Genesis, InstallBundle, JoinTokenBody, KeysRequest, KeysResponse, MembershipCert,
    RECORD_VERSION, ShareHolder, SignPurpose, Signed, WireSecret, default_threshold,
    validate_cluster_name,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use zeroize::Zeroizing;

pub const CLUSTER_FILE: &str = "cluster.json";
pub const SHARE_FILE: &str = "share.age";
/// A started setup must be confirmed within this.
pub const PENDING_SETUP_TTL: Duration = Duration::from_secs(15 * 60);
/// Words the operator re-types to confirm the mnemonic.
pub const CONFIRM_WORDS: usize = 3;
/// Most nodes one join token may admit.
pub const MAX_TOKEN_USES: u32 = 100;
/// Record of join token uses approved by this signer.
pub const USED_TOKENS_FILE: &str = "used_tokens.json";
/// Longest join token lifetime.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Signer-side nonces are kept this long for round 2.
const SESSION_TTL: Duration = Duration::from_secs(60);
const MAX_SESSIONS: usize = 64;
/// Operator authentication failures allowed per client per window.
const AUTH_FAILURES_PER_WINDOW: u32 = 5;
const AUTH_WINDOW: Duration = Duration::from_secs(60);

/// An error with the HTTP status it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct KeysError {
    pub status: u16,
    pub message: String,
}

fn err(status: u16, message: impl Into<String>) -> KeysError {
    KeysError {
        status,
        message: message.into(),
    }
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
}

/// What this node knows of its cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub genesis: Genesis,
    pub genesis_signed: Signed,
    pub cert: Signed,
    pub admin_public_key: [u8; 32],
    pub group: GroupKey,
    pub share_index: Option<u16>,
}

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
    pub threshold: Option<u16>,
    pub shares: Option<u16>,
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

/// Returned when a setup starts: the only time the master key leaves the
/// node.
#[derive(Serialize)]
pub struct SetupStarted {
    pub setup_id: String,
    pub mnemonic: Zeroizing<String>,
    pub master_key_hex: Zeroizing<String>,
    pub admin_public_key: String,
    pub cluster: String,
    pub threshold: u16,
    pub shares: u16,
    pub confirm_positions: Vec<usize>,
    pub expires_in_secs: u64,
}

impl std::fmt::Debug for SetupStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SetupStarted({}, ..)", self.setup_id)
    }
}

/// The outcome of a confirmed setup.
#[derive(Debug, Clone, Serialize)]
pub struct SetupDone {
    pub cluster: String,
    pub admin_public_key: String,
    pub threshold: u16,
    pub shares: u16,
    pub holders: Vec<ShareHolder>,
    /// Nodes that could not be given their records (with the reason).
    pub undelivered: Vec<Undelivered>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Undelivered {
    pub node_id: NodeId,
    pub error: String,
}

/// `GET /api/v1/keys`. Never secret material.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysStatus {
    pub initialized: bool,
    pub cluster: Option<String>,
    pub admin_public_key: Option<String>,
    pub threshold: Option<u16>,
    pub shares: Option<u16>,
    pub share_index: Option<u16>,
    /// `valid`, `invalid` or `none`.
    pub share_state: String,
    pub share_error: Option<String>,
    pub holders: Vec<ShareHolder>,
    pub setup_pending: bool,
}

/// A threshold signature and who made it.
#[derive(Debug, Clone, Serialize)]
pub struct ThresholdSignature {
    pub signature: String,
    pub admin_public_key: String,
    pub signers: Vec<NodeId>,
    /// The exact bytes signed (domain tag, NUL, message), hex.
    pub signed_bytes_hex: String,
}

struct SignSession {
    coordinator: NodeId,
    nonces: Nonces,
    message: Vec<u8>,
    created: Instant,
    /// A join token this signature spends (id, allowed uses, expiry).
    token_use: Option<(String, u32, u64)>,
}

#[derive(Default)]
struct AuthLimiter {
    by_client: HashMap<String, (Instant, u32)>,
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
    auth: Mutex<AuthLimiter>,
    /// Join token id → (uses signed for, expiry), persisted.
    used_tokens: Mutex<HashMap<String, (u32, u64)>>,
    /// Web UI operator sessions: id → (credential, expiry). In memory
    /// only; signers need the credential itself to approve operator
    /// requests, so the session keeps it (zeroized when it ends).
    web_sessions: Mutex<HashMap<String, (OperatorPassword, Instant)>>,
}

/// How long a web UI login lasts.
pub const WEB_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const MAX_WEB_SESSIONS: usize = 256;

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({}, ..)", self.node_id)
    }
}

fn random_hex(n: usize) -> Result<String, KeysError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| err(500, format!("random number generator: {e}")))?;
    Ok(hex::encode(b))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// Writes a file atomically with mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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

impl Keys {
    /// Loads the cluster records and the share from the data dir (if any)
    /// and publishes this node's membership and age recipient. Call before
    /// the network starts, so it never runs open in an initialized cluster;
    /// then [`Keys::attach`] the network.
    pub fn load(
        data_dir: &Path,
        node_key: &bzzz_crypto::NodeKey,
        node_id: NodeId,
        local_tx: watch::Sender<LocalInfo>,
    ) -> anyhow::Result<Self> {
        let age = AgeIdentity::derive(node_key)?;
        let recipient = age.recipient();
        local_tx.send_modify(|l| l.age_recipient = Some(recipient));
        let keys = Self {
            data_dir: data_dir.to_owned(),
            node_id,
            age,
            net: std::sync::OnceLock::new(),
            local_tx,
            cluster: RwLock::new(None),
            share: RwLock::new(ShareState::None),
            pending: Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
            auth: Mutex::new(AuthLimiter::default()),
            web_sessions: Mutex::new(HashMap::new()),
            used_tokens: Mutex::new(
                std::fs::read(data_dir.join(USED_TOKENS_FILE))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default(),
            ),
        };
        let path = data_dir.join(CLUSTER_FILE);
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let file: ClusterFile = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{} is not a cluster record: {e}", path.display()))?;
            let cluster = keys
                .check_records(&file.genesis, &file.cert, file.share_index, None)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let share = match (file.share_index, std::fs::read(data_dir.join(SHARE_FILE))) {
                (None, _) => ShareState::None,
                (Some(i), Ok(sealed)) => keys.open_share(&sealed, i, &cluster.group),
                (Some(_), Err(e)) => ShareState::Invalid(format!("cannot read {SHARE_FILE}: {e}")),
            };
            if let ShareState::Invalid(why) = &share {
                error!("this node's admin key share is unusable: {why}");
            }
            info!(
                cluster = %cluster.genesis.cluster,
                admin_public_key = %cluster.genesis.admin_public_key,
                share_index = ?cluster.share_index,
                "cluster membership loaded"
            );
            *write(&keys.share) = share;
            keys.set_cluster(cluster);
        }
        Ok(keys)
    }

    /// Connects the service to the network.
    pub fn attach(self, net: NetHandle) -> Arc<Self> {
        let _ = self.net.set(net);
        Arc::new(self)
    }

    fn net(&self) -> Result<&NetHandle, KeysError> {
        self.net
            .get()
            .ok_or_else(|| err(503, "the network is not started yet"))
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    pub fn age_recipient(&self) -> String {
        self.age.recipient()
    }

    pub fn cluster(&self) -> Option<Cluster> {
        read(&self.cluster).clone()
    }

    pub fn is_initialized(&self) -> bool {
        read(&self.cluster).is_some()
    }

    fn set_cluster(&self, c: Cluster) {
        let m = Membership {
            admin_public_key: c.admin_public_key,
            cert: c.cert.clone(),
        };
        *write(&self.cluster) = Some(c);
        self.local_tx.send_modify(|l| l.membership = Some(m));
    }

    fn open_share(&self, sealed: &[u8], index: u16, group: &GroupKey) -> ShareState {
        let plain = match self.age.open(sealed) {
            Ok(p) => p,
            Err(e) => return ShareState::Invalid(e.to_string()),
        };
        match KeyShare::from_secret_share(&plain, index, group) {
            Ok(s) => ShareState::Valid(Arc::new(s)),
            Err(e) => ShareState::Invalid(e.to_string()),
        }
    }

    /// Checks a genesis record and a certificate for this node.
    fn check_records(
        &self,
        genesis: &Signed,
        cert: &Signed,
        share_index: Option<u16>,
        expected_admin: Option<&[u8; 32]>,
    ) -> Result<Cluster, String> {
        let g = records::open_genesis(genesis, expected_admin)
            .map_err(|e| format!("genesis record: {e}"))?;
        let pk = records::parse_public_key(&g.admin_public_key).map_err(|e| e.to_string())?;
        let my_cert = records::open_cert(cert, &pk, Some(&self.node_id))
            .map_err(|e| format!("membership certificate: {e}"))?;
        let group = GroupKey::from_commitment_hex(&g.commitment, g.threshold)
            .map_err(|e| format!("genesis commitment: {e}"))?;
        if group.public() != pk {
            return Err("genesis commitment does not match its admin key".into());
        }
        if let Some(i) = share_index
            && my_cert.share_index != Some(i)
            && !g
                .holders
                .iter()
                .any(|h| h.index == i && h.node_id == self.node_id)
        {
            return Err(format!("share index {i} is not this node's"));
        }
        Ok(Cluster {
            admin_public_key: pk,
            genesis_signed: genesis.clone(),
            cert: cert.clone(),
            group,
            share_index,
            genesis: g,
        })
    }

    /// Checks and stores a bundle (setup or join). Refuses when this node
    /// already belongs to a cluster.
    fn install(
        &self,
        bundle: &InstallBundle,
        expected_admin: Option<&[u8; 32]>,
    ) -> Result<(), String> {
        if let Some(c) = self.cluster() {
            return Err(format!(
                "this node already belongs to cluster '{}'",
                c.genesis.cluster
            ));
        }
        let cluster = self.check_records(
            &bundle.genesis,
            &bundle.cert,
            bundle.share_index,
            expected_admin,
        )?;
        let share = match (&bundle.sealed_share, bundle.share_index) {
            (Some(sealed), Some(i)) => match self.open_share(sealed, i, &cluster.group) {
                ShareState::Invalid(why) => return Err(format!("share refused: {why}")),
                s => Some((sealed.clone(), s)),
            },
            (None, None) => None,
            _ => return Err("share and share index must come together".into()),
        };
        if let Some((sealed, _)) = &share {
            write_private(&self.data_dir.join(SHARE_FILE), sealed)
                .map_err(|e| format!("cannot store the share: {e}"))?;
        }
        let file = ClusterFile {
            v: 1,
            genesis: bundle.genesis.clone(),
            cert: bundle.cert.clone(),
            share_index: bundle.share_index,
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
        write_private(&self.data_dir.join(CLUSTER_FILE), &text)
            .map_err(|e| format!("cannot store the cluster record: {e}"))?;
        if let Some((_, s)) = share {
            *write(&self.share) = s;
        }
        info!(
            cluster = %cluster.genesis.cluster,
            share_index = ?bundle.share_index,
            "joined cluster; membership certificate stored"
        );
        self.set_cluster(cluster);
        Ok(())
    }

    pub fn status(&self) -> KeysStatus {
        let c = self.cluster();
        let (share_state, share_error) = match &*read(&self.share) {
            ShareState::None => ("none", None),
            ShareState::Valid(_) => ("valid", None),
            ShareState::Invalid(e) => ("invalid", Some(e.clone())),
        };
        KeysStatus {
            initialized: c.is_some(),
            cluster: c.as_ref().map(|c| c.genesis.cluster.clone()),
            admin_public_key: c.as_ref().map(|c| c.genesis.admin_public_key.clone()),
            threshold: c.as_ref().map(|c| c.genesis.threshold),
            // Shares dealt at setup plus those enrolled for nodes that joined
            // later (as far as this node knows).
            shares: c
                .as_ref()
                .map(|c| c.genesis.shares.max(self.holders().len() as u16)),
            share_index: c.as_ref().and_then(|c| c.share_index),
            share_state: share_state.into(),
            share_error,
            holders: self
                .holders()
                .into_iter()
                .map(|(index, node_id)| ShareHolder { index, node_id })
                .collect(),
            setup_pending: lock(&self.pending).is_some(),
        }
    }

    /// Nodes that can take part in setup: this one and every peer in the
    /// view that announces an age recipient, sorted by id.
    fn setup_members(&self) -> Vec<(NodeId, String)> {
        let Ok(net) = self.net() else {
            return vec![(self.node_id.clone(), self.age.recipient())];
        };
        let snap = net.snapshot();
        let mut m: Vec<(NodeId, String)> = snap
            .peers
            .iter()
            .filter_map(|p| {
                let r = p.announcement.age_recipient.clone()?;
                bzzz_crypto::seal::parse_recipient(&r).ok()?;
                Some((p.announcement.node_id.clone(), r))
            })
            .collect();
        m.push((self.node_id.clone(), self.age.recipient()));
        m.sort_by(|a, b| a.0.cmp(&b.0));
        m
    }

    // ---- setup ceremony -------------------------------------------------

    /// Starts a setup: generates the master key and keeps it in memory
    /// until [`Keys::confirm_setup`]. Starting again replaces a pending one.
    /// `revealed`: the caller shows the words now (JSON API), so the wizard
    /// page must not show them again.
    pub fn start_setup(
        &self,
        params: SetupParams,
        revealed: bool,
    ) -> Result<SetupStarted, KeysError> {
        if self.is_initialized() {
            return Err(err(409, "this node is already initialized"));
        }
        validate_cluster_name(&params.cluster)
            .map_err(|e| err(422, format!("cluster name: {e}")))?;
        let members = self.setup_members().len() as u16;
        let shares = params.shares.unwrap_or(members);
        if shares == 0 || shares > members {
            return Err(err(
                422,
                format!(
                    "shares must be between 1 and the number of nodes present ({members}); \
                     a share for an absent node could not be delivered"
                ),
            ));
        }
        let threshold = params
            .threshold
            .unwrap_or_else(|| default_threshold(shares));
        if threshold == 0 || threshold > shares {
            return Err(err(
                422,
                format!("threshold must be between 1 and the share count ({shares})"),
            ));
        }
        let master = match &params.recover_from {
            Some(m) => m.clone(),
            None => MasterKey::generate().map_err(|e| err(500, e.to_string()))?,
        };
        let positions = confirm_positions()?;
        let id = random_hex(16)?;
        let started = SetupStarted {
            setup_id: id.clone(),
            mnemonic: master.mnemonic(),
            master_key_hex: master.hex(),
            admin_public_key: hex::encode(master.admin_key().public()),
            cluster: params.cluster.clone(),
            threshold,
            shares,
            confirm_positions: positions.clone(),
            expires_in_secs: PENDING_SETUP_TTL.as_secs(),
        };
        *lock(&self.pending) = Some(PendingSetup {
            id,
            master,
            params,
            threshold,
            shares,
            positions,
            created: Instant::now(),
            revealed,
        });
        info!("setup started; waiting for the operator to confirm the master key");
        Ok(started)
    }

    /// The words of a pending setup, exactly once (web wizard).
    pub fn reveal_pending(&self) -> Result<SetupStarted, KeysError> {
        let mut p = lock(&self.pending);
        let Some(pending) = p
            .as_mut()
            .filter(|p| p.created.elapsed() < PENDING_SETUP_TTL)
        else {
            return Err(err(404, "no setup in progress"));
        };
        if pending.revealed {
            return Err(err(
                410,
                "the master key was already shown and cannot be shown again",
            ));
        }
        pending.revealed = true;
        Ok(SetupStarted {
            setup_id: pending.id.clone(),
            mnemonic: pending.master.mnemonic(),
            master_key_hex: pending.master.hex(),
            admin_public_key: hex::encode(pending.master.admin_key().public()),
            cluster: pending.params.cluster.clone(),
            threshold: pending.threshold,
            shares: pending.shares,
            confirm_positions: pending.positions.clone(),
            expires_in_secs: PENDING_SETUP_TTL
                .saturating_sub(pending.created.elapsed())
                .as_secs(),
        })
    }

    /// The id and word positions of the pending setup (no secrets).
    pub fn pending_positions(&self) -> Option<(String, Vec<usize>)> {
        lock(&self.pending)
            .as_ref()
            .filter(|p| p.created.elapsed() < PENDING_SETUP_TTL)
            .map(|p| (p.id.clone(), p.positions.clone()))
    }

    /// Drops a pending setup (its master key is zeroized).
    pub fn cancel_setup(&self) {
        *lock(&self.pending) = None;
    }

    /// Checks the re-typed words and, when they match, creates the cluster:
    /// derives and splits the admin key, signs the records, seals each
    /// share to its node, delivers them, and forgets the master key.
    pub async fn confirm_setup(
        &self,
        setup_id: &str,
        words: &BTreeMap<usize, String>,
    ) -> Result<SetupDone, KeysError> {
        let pending = {
            let mut guard = lock(&self.pending);
            let Some(p) = guard.as_ref() else {
                return Err(err(404, "no setup in progress; start one"));
            };
            if p.id != setup_id {
                return Err(err(
                    409,
                    "this setup was replaced by a newer one; use the newest words",
                ));
            }
            if p.created.elapsed() >= PENDING_SETUP_TTL {
                *guard = None;
                return Err(err(410, "the setup expired; start a new one"));
            }
            let mnemonic = p.master.mnemonic();
            let all: Vec<&str> = mnemonic.split(' ').collect();
            for pos in &p.positions {
                let given = words.get(pos).map(|w| w.trim().to_lowercase());
                if given.as_deref() != all.get(pos - 1).copied() {
                    return Err(err(
                        422,
                        format!("word #{pos} does not match; check your copy of the words"),
                    ));
                }
            }
            if self.is_initialized() {
                return Err(err(409, "this node is already initialized"));
            }
            guard
                .take()
                .ok_or_else(|| err(404, "no setup in progress"))?
        };
        self.create_cluster(pending).await
    }

    async fn create_cluster(&self, p: PendingSetup) -> Result<SetupDone, KeysError> {
        let members = self.setup_members();
        if usize::from(p.shares) > members.len() {
            return Err(err(
                409,
                format!(
                    "only {} nodes are present now, fewer than the {} shares chosen; start again",
                    members.len(),
                    p.shares
                ),
            ));
        }
        let verifier = p
            .params
            .operator_password
            .verifier()
            .map_err(|e| err(500, e.to_string()))?;
        let admin = p.master.admin_key();
        let sharing = admin
            .split(p.threshold, p.shares)
            .map_err(|e| err(500, e.to_string()))?;
        let holders: Vec<ShareHolder> = members
            .iter()
            .take(usize::from(p.shares))
            .zip(1u16..)
            .map(|((id, _), index)| ShareHolder {
                index,
                node_id: id.clone(),
            })
            .collect();
        let now = unix_now();
        let admin_hex = hex::encode(admin.public());
        let genesis = Genesis {
            v: RECORD_VERSION,
            cluster: p.params.cluster.clone(),
            admin_public_key: admin_hex.clone(),
            threshold: p.threshold,
            shares: p.shares,
            holders: holders.clone(),
            commitment: sharing.commitment.clone(),
            operator_verifier: verifier,
            created_at: now,
        };
        let sign = |domain: Domain, body: &str| {
            records::signed(
                body.to_owned(),
                &admin.sign(&records::signing_bytes(domain, body.as_bytes())),
            )
        };
        let gtext = records::body_text(&genesis).map_err(|e| err(500, e.to_string()))?;
        let genesis_signed = sign(Domain::Genesis, &gtext);
        let mut bundles = Vec::new();
        for (node, recipient) in &members {
            let index = holders.iter().find(|h| &h.node_id == node).map(|h| h.index);
            let cert = MembershipCert {
                v: RECORD_VERSION,
                cluster: genesis.cluster.clone(),
                admin_public_key: admin_hex.clone(),
                node_id: node.clone(),
                issued_at: now,
                share_index: index,
                age_recipient: Some(recipient.clone()),
            };
            let ctext = records::body_text(&cert).map_err(|e| err(500, e.to_string()))?;
            let sealed = match index {
                Some(i) => {
                    let (_, secret) = sharing
                        .shares
                        .iter()
                        .find(|(j, _)| *j == i)
                        .ok_or_else(|| err(500, "share missing"))?;
                    Some(
                        bzzz_crypto::seal::seal(recipient, secret)
                            .map_err(|e| err(500, e.to_string()))?,
                    )
                }
                None => None,
            };
            bundles.push((
                node.clone(),
                InstallBundle {
                    genesis: genesis_signed.clone(),
                    cert: sign(Domain::MembershipCert, &ctext),
                    sealed_share: sealed,
                    share_index: index,
                },
            ));
        }
        // The whole key is no longer needed: forget it before any network IO.
        drop(sharing);
        drop(admin);
        drop(p);

        let mut undelivered = Vec::new();
        let mut remote = Vec::new();
        for (node, bundle) in bundles {
            if node == self.node_id {
                if let Err(e) = self.install(&bundle, None) {
                    return Err(err(500, format!("cannot initialize this node: {e}")));
                }
            } else {
                let net = self.net()?.clone();
                remote.push(async move {
                    let r = net.request(&node, KeysRequest::Install(bundle)).await;
                    (node, r)
                });
            }
        }
        for (node, r) in futures::future::join_all(remote).await {
            let problem = match r {
                Ok(KeysResponse::Installed) => None,
                Ok(KeysResponse::Refused { reason }) => Some(reason),
                Ok(other) => Some(format!("unexpected answer {other:?}")),
                Err(e) => Some(e.to_string()),
            };
            if let Some(error) = problem {
                warn!(node = %node, "setup records not delivered: {error}");
                undelivered.push(Undelivered {
                    node_id: node,
                    error,
                });
            }
        }
        info!(
            cluster = %genesis.cluster,
            admin_public_key = %admin_hex,
            threshold = genesis.threshold,
            shares = genesis.shares,
            "cluster initialized; the master key was forgotten"
        );
        Ok(SetupDone {
            cluster: genesis.cluster,
            admin_public_key: admin_hex,
            threshold: genesis.threshold,
            shares: genesis.shares,
            holders,
            undelivered,
        })
    }

    // ---- operator authentication -----------------------------------------

    /// Checks the operator password of a client (rate limited per client
    /// key, e.g. its IP address). 401 on mismatch, 429 when limited, 409
    /// before setup.
    pub async fn check_operator(
        &self,
        client: &str,
        password: Option<OperatorPassword>,
    ) -> Result<(), KeysError> {
        let Some(password) = password else {
            return Err(err(401, "operator credential required"));
        };
        {
            let mut a = lock(&self.auth);
            if let Some((since, n)) = a.by_client.get(client)
                && since.elapsed() < AUTH_WINDOW
                && *n >= AUTH_FAILURES_PER_WINDOW
            {
                return Err(err(
                    429,
                    format!(
                        "too many failed logins; retry in {} s",
                        AUTH_WINDOW.saturating_sub(since.elapsed()).as_secs() + 1
                    ),
                ));
            }
            a.by_client.retain(|_, (t, _)| t.elapsed() < AUTH_WINDOW);
        }
        let Some(c) = self.cluster() else {
            return Err(err(409, "the cluster is not initialized yet; run setup"));
        };
        let verifier = c.genesis.operator_verifier.clone();
        let ok = tokio::task::spawn_blocking(move || password.matches(&verifier))
            .await
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        let mut a = lock(&self.auth);
        if a.by_client.len() < 4096 {
            let e = a
                .by_client
                .entry(client.to_owned())
                .or_insert((Instant::now(), 0));
            e.1 += 1;
        }
        warn!(client, "operator authentication failed");
        Err(err(401, "wrong operator credential"))
    }

    /// Starts a web session for an operator whose credential was checked.
    pub fn open_web_session(&self, password: OperatorPassword) -> Result<String, KeysError> {
        let id = random_hex(32)?;
        let mut s = lock(&self.web_sessions);
        s.retain(|_, (_, until)| *until > Instant::now());
        if s.len() >= MAX_WEB_SESSIONS
            && let Some(oldest) = s.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| k.clone())
        {
            s.remove(&oldest);
        }
        s.insert(id.clone(), (password, Instant::now() + WEB_SESSION_TTL));
        Ok(id)
    }

    /// The credential of a live web session.
    pub fn web_session(&self, id: &str) -> Option<OperatorPassword> {
        let s = lock(&self.web_sessions);
        s.get(id)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(p, _)| p.clone())
    }

    pub fn close_web_session(&self, id: &str) {
        lock(&self.web_sessions).remove(id);
    }

    // ---- threshold signing (coordinator) -------------------------------------

    /// Produces an admin signature with `threshold` share holders: this node
    /// coordinates, every signer approves `purpose` itself. `signers` picks
    /// them (else: this node first, then reachable holders).
    pub async fn threshold_sign(
        &self,
        purpose: SignPurpose,
        message: Vec<u8>,
        signers: Option<Vec<NodeId>>,
    ) -> Result<ThresholdSignature, KeysError> {
        let c = self
            .cluster()
            .ok_or_else(|| err(409, "the cluster is not initialized yet"))?;
        // Certificates spend join token uses, which signers count; only the
        // holders dealt at setup sign them, so any two signing quorums
        // overlap whenever 2t > n and a use cannot be spent twice.
        let genesis_only = matches!(purpose, SignPurpose::Certificate { .. });
        let holders: BTreeMap<NodeId, u16> = self
            .holders()
            .into_iter()
            .filter(|(i, _)| !genesis_only || c.genesis.holders.iter().any(|h| h.index == *i))
            .map(|(i, n)| (n, i))
            .collect();
        let explicit = signers.is_some();
        let t = usize::from(c.genesis.threshold);
        // Candidates: the given signers exactly, or every holder in reach
        // (this node first); round 1 goes to all of them and the first t
        // that commit sign, so a holder that just died costs nothing.
        let candidates: Vec<(NodeId, u16)> = match signers {
            Some(list) => {
                let mut out = Vec::new();
                for n in list {
                    let i = holders
                        .get(&n)
                        .ok_or_else(|| err(422, format!("node {n} holds no share")))?;
                    if !out.iter().any(|(m, _)| m == &n) {
                        out.push((n, *i));
                    }
                }
                out
            }
            None => {
                let snap = self.net()?.snapshot();
                let mut out = Vec::new();
                if let Some(i) = holders.get(&self.node_id)
                    && matches!(&*read(&self.share), ShareState::Valid(_))
                {
                    out.push((self.node_id.clone(), *i));
                }
                for p in snap.peers.iter().filter(|p| p.connected) {
                    let id = &p.announcement.node_id;
                    if let Some(i) = holders.get(id) {
                        out.push((id.clone(), *i));
                    }
                }
                if out.len() < t {
                    return Err(err(
                        503,
                        format!(
                            "{} share holders reachable, {} needed for an admin signature",
                            out.len(),
                            c.genesis.threshold
                        ),
                    ));
                }
                out
            }
        };
        let session = random_hex(16)?;

        // Round 1.
        let r1 = futures::future::join_all(candidates.iter().map(|(node, _)| {
            self.ask(
                node,
                KeysRequest::SignCommit {
                    session: session.clone(),
                    purpose: purpose.clone(),
                    coordinator_cert: Some(c.cert.clone()),
                },
            )
        }))
        .await;
        let mut commitments = BTreeMap::new();
        let mut chosen: Vec<(NodeId, u16)> = Vec::new();
        let mut problems = Vec::new();
        for ((node, index), r) in candidates.iter().zip(r1) {
            match r {
                KeysResponse::Committed {
                    index: i,
                    commitments: c,
                } if i == *index => {
                    if explicit || chosen.len() < t {
                        commitments.insert(i, c);
                        chosen.push((node.clone(), i));
                    }
                }
                KeysResponse::Refused { reason } => {
                    problems.push(format!("signer {node} (share {index}) refused: {reason}"));
                }
                other => {
                    problems.push(format!("signer {node} (share {index}) answered {other:?}"));
                }
            }
        }
        if (explicit && !problems.is_empty()) || chosen.len() < t.min(candidates.len()) {
            return Err(err(502, problems.join("; ")));
        }
        let by_index: BTreeMap<u16, NodeId> = chosen.iter().map(|(n, i)| (*i, n.clone())).collect();
        let package = threshold::signing_package(&commitments, &message)
            .map_err(|e| err(500, e.to_string()))?;

        // Round 2.
        let r2 = futures::future::join_all(chosen.iter().map(|(node, _)| {
            self.ask(
                node,
                KeysRequest::SignShare {
                    session: session.clone(),
                    signing_package: package.clone(),
                },
            )
        }))
        .await;
        let mut shares = BTreeMap::new();
        for ((node, index), r) in chosen.iter().zip(r2) {
            match r {
                KeysResponse::SignatureShare { index: i, share } if i == *index => {
                    shares.insert(i, share);
                }
                KeysResponse::Refused { reason } => {
                    return Err(err(
                        502,
                        format!("signer {node} (share {index}) refused: {reason}"),
                    ));
                }
                other => {
                    return Err(err(
                        502,
                        format!("signer {node} (share {index}) answered {other:?}"),
                    ));
                }
            }
        }
        let sig = threshold::aggregate(&c.group, &package, &shares).map_err(|e| match e {
            threshold::AggregateError::Culprits(idx) => {
                let named: Vec<String> = idx
                    .iter()
                    .map(|i| match by_index.get(i) {
                        Some(n) => format!("{n} (share {i})"),
                        None => format!("share {i}"),
                    })
                    .collect();
                err(
                    502,
                    format!("invalid signature share from {}", named.join(", ")),
                )
            }
            threshold::AggregateError::Other(m) => err(422, m),
        })?;
        bzzz_crypto::verify_ed25519(&c.admin_public_key, &message, &sig)
            .map_err(|_| err(500, "aggregated signature does not verify"))?;
        Ok(ThresholdSignature {
            signature: hex::encode(sig),
            admin_public_key: c.genesis.admin_public_key.clone(),
            signers: chosen.into_iter().map(|(n, _)| n).collect(),
            signed_bytes_hex: hex::encode(&message),
        })
    }

    /// Sends a request to a node, or handles it locally for this node.
    async fn ask(&self, node: &NodeId, req: KeysRequest) -> KeysResponse {
        if *node == self.node_id {
            return self.handle(node.clone(), req).await;
        }
        let net = match self.net() {
            Ok(n) => n,
            Err(e) => {
                return KeysResponse::Refused {
                    reason: e.to_string(),
                };
            }
        };
        match net.request(node, req).await {
            Ok(r) => r,
            Err(e) => KeysResponse::Refused {
                reason: format!("unreachable: {e}"),
            },
        }
    }

    /// Signs an operator message (operator-authorized).
    pub async fn sign_message(
        &self,
        message: Vec<u8>,
        password: &OperatorPassword,
        signers: Option<Vec<NodeId>>,
    ) -> Result<ThresholdSignature, KeysError> {
        let bytes = records::signing_bytes(Domain::OperatorMessage, &message);
        self.threshold_sign(
            SignPurpose::Message {
                message,
                operator_password: WireSecret::new(password.expose().to_owned()),
            },
            bytes,
            signers,
        )
        .await
    }

    /// Signs an admin change (operator-authorized); returns the signed
    /// record, ready to propose to the control plane.
    pub async fn sign_admin_change(
        &self,
        change: &bzzz_proto::cluster::AdminChange,
        password: &OperatorPassword,
    ) -> Result<Signed, KeysError> {
        let text = records::body_text(change).map_err(|e| err(500, e.to_string()))?;
        let purpose = SignPurpose::AdminChange {
            body: text.clone(),
            operator_password: WireSecret::new(password.expose().to_owned()),
        };
        self.sign_record(Domain::AdminChange, text, purpose).await
    }

    /// Threshold-signs a record body under `domain` for `purpose` (which
    /// names the same body) and wraps it as a signed record.
    async fn sign_record(
        &self,
        domain: Domain,
        text: String,
        purpose: SignPurpose,
    ) -> Result<Signed, KeysError> {
        let bytes = records::signing_bytes(domain, text.as_bytes());
        let sig = self.threshold_sign(purpose, bytes, None).await?;
        let raw: [u8; 64] = hex::decode(&sig.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| err(500, "bad signature"))?;
        Ok(records::signed(text, &raw))
    }

    /// Creates a join token valid for `ttl` (operator-authorized).
    pub async fn create_token(
        &self,
        ttl: Duration,
        uses: u32,
        password: &OperatorPassword,
    ) -> Result<(String, JoinTokenBody), KeysError> {
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(err(422, "token lifetime must be between 1 s and 30 days"));
        }
        if !(1..=MAX_TOKEN_USES).contains(&uses) {
            return Err(err(
                422,
                format!("token uses must be between 1 and {MAX_TOKEN_USES}"),
            ));
        }
        let c = self
            .cluster()
            .ok_or_else(|| err(409, "the cluster is not initialized yet"))?;
        let snap = self.net()?.snapshot();
        let body = JoinTokenBody {
            v: RECORD_VERSION,
            cluster: c.genesis.cluster.clone(),
            admin_public_key: c.genesis.admin_public_key.clone(),
            id: random_hex(8)?,
            expires_at: unix_now() + ttl.as_secs(),
            bootstrap: snap.listen_addrs.iter().take(8).cloned().collect(),
            uses,
        };
        let text = records::body_text(&body).map_err(|e| err(500, e.to_string()))?;
        let purpose = SignPurpose::JoinToken {
            body: text.clone(),
            operator_password: WireSecret::new(password.expose().to_owned()),
        };
        let signed = self.sign_record(Domain::JoinToken, text, purpose).await?;
        let token = records::encode_token(&signed).map_err(|e| err(500, e.to_string()))?;
        info!(token_id = %body.id, expires_at = body.expires_at, "join token created");
        Ok((token, body))
    }

    // ---- requests from peers (and from this node as a signer) ---------------

    /// Answers one keys-protocol request.
    pub async fn handle(&self, peer: NodeId, req: KeysRequest) -> KeysResponse {
        let refuse = |reason: String| KeysResponse::Refused { reason };
        match req {
            KeysRequest::Install(bundle) => match self.install(&bundle, None) {
                Ok(()) => KeysResponse::Installed,
                Err(e) => {
                    warn!(%peer, "refused setup records: {e}");
                    refuse(e)
                }
            },
            KeysRequest::SignCommit {
                session,
                purpose,
                coordinator_cert,
            } => {
                if let Err(e) = self.check_member(&peer, coordinator_cert.as_ref()) {
                    return refuse(e);
                }
                // Approval may hash the operator password (Argon2id, tens of
                // ms): keep it off the async workers' queues.
                match tokio::task::block_in_place(|| {
                    self.approve_and_commit(&peer, session, purpose)
                }) {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(%peer, "refused to sign: {e}");
                        refuse(e)
                    }
                }
            }
            KeysRequest::SignShare {
                session,
                signing_package,
            } => match self.sign_round2(&peer, &session, &signing_package) {
                Ok(r) => r,
                Err(e) => refuse(e),
            },
            KeysRequest::Enroll { cert } => match self.coordinate_enrollment(&peer, &cert).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(%peer, "enrollment failed: {e}");
                    refuse(e)
                }
            },
            KeysRequest::EnrollDeltas {
                session,
                cert,
                helpers,
                coordinator_cert,
            } => match self
                .check_member(&peer, coordinator_cert.as_ref())
                .and_then(|()| self.enroll_step1(&peer, session, &cert, &helpers))
            {
                Ok(r) => r,
                Err(e) => {
                    warn!(%peer, "refused enrollment step 1: {e}");
                    refuse(e)
                }
            },
            KeysRequest::EnrollSigma {
                session,
                cert,
                sealed_deltas,
                coordinator_cert,
            } => match self
                .check_member(&peer, coordinator_cert.as_ref())
                .and_then(|()| self.enroll_step2(&peer, &session, &cert, &sealed_deltas))
            {
                Ok(r) => r,
                Err(e) => refuse(e),
            },
            KeysRequest::Join {
                token,
                age_recipient,
            } => match self.admit(&peer, token, age_recipient).await {
                Ok(b) => KeysResponse::Joined(Box::new(b)),
                Err(e) => {
                    warn!(%peer, "refused join: {e}");
                    refuse(e)
                }
            },
        }
    }

    /// The requester is this node, a member in the view, or presents a
    /// valid certificate for its (Noise-authenticated) id.
    fn check_member(&self, peer: &NodeId, cert: Option<&Signed>) -> Result<(), String> {
        if self.is_member_peer(peer) {
            return Ok(());
        }
        let c = self
            .cluster()
            .ok_or_else(|| "this node is not initialized".to_owned())?;
        match cert {
            Some(cert) if records::open_cert(cert, &c.admin_public_key, Some(peer)).is_ok() => {
                Ok(())
            }
            _ => Err("only cluster members may coordinate admin key operations".into()),
        }
    }

    fn is_member_peer(&self, peer: &NodeId) -> bool {
        *peer == self.node_id
            || self.net().is_ok_and(|n| {
                n.snapshot()
                    .peers
                    .iter()
                    .any(|p| &p.announcement.node_id == peer && p.announcement.membership.is_some())
            })
    }

    fn approve_and_commit(
        &self,
        peer: &NodeId,
        session: String,
        purpose: SignPurpose,
    ) -> Result<KeysResponse, String> {
        let c = self
            .cluster()
            .ok_or_else(|| "this node is not initialized".to_owned())?;

        let share = match &*read(&self.share) {
            ShareState::Valid(s) => s.clone(),
            ShareState::Invalid(why) => {
                return Err(format!("this node's share failed verification: {why}"));
            }
            ShareState::None => return Err("this node holds no share".into()),
        };
        let now = unix_now();
        let mut token_use = None;
        let check_password = |p: &WireSecret| -> Result<(), String> {
            let ok = OperatorPassword::new(p.expose().to_owned())
                .is_ok_and(|p| p.matches(&c.genesis.operator_verifier));
            if ok {
                Ok(())
            } else {
                Err("the operator credential is wrong".into())
            }
        };
        let message = match &purpose {
            SignPurpose::Message {
                message,
                operator_password,
            } => {
                check_password(operator_password)?;
                records::signing_bytes(Domain::OperatorMessage, message)
            }
            SignPurpose::JoinToken {
                body,
                operator_password,
            } => {
                check_password(operator_password)?;
                let b: JoinTokenBody =
                    serde_json::from_str(body).map_err(|e| format!("token body: {e}"))?;
                if b.cluster != c.genesis.cluster
                    || b.admin_public_key != c.genesis.admin_public_key
                {
                    return Err("token is for another cluster".into());
                }
                // 30 s of clock skew between nodes is tolerated either way.
                if b.expires_at + 30 <= now || b.expires_at > now + MAX_TOKEN_TTL.as_secs() + 30 {
                    return Err("token lifetime out of range".into());
                }
                records::signing_bytes(Domain::JoinToken, body.as_bytes())
            }
            SignPurpose::AdminChange {
                body,
                operator_password,
            } => {
                check_password(operator_password)?;
                let change: bzzz_proto::cluster::AdminChange =
                    serde_json::from_str(body).map_err(|e| format!("admin change: {e}"))?;
                if change.cluster != c.genesis.cluster {
                    return Err("admin change is for another cluster".into());
                }
                if let bzzz_proto::cluster::AdminAction::PutRole { role } = &change.action {
                    role.validate()?;
                }
                records::signing_bytes(Domain::AdminChange, body.as_bytes())
            }
            SignPurpose::Certificate { body, token } => {
                let t = records::check_token(token.expose(), &c.admin_public_key, now)
                    .map_err(|e| e.to_string())?;
                let used = lock(&self.used_tokens).get(&t.id).map_or(0, |u| u.0);
                if used >= t.uses {
                    return Err(format!(
                        "join token was already used ({used} of {} uses); create a new one",
                        t.uses
                    ));
                }
                if !c.genesis.holders.iter().any(|h| h.index == share.index()) {
                    return Err("only the share holders dealt at setup sign certificates".into());
                }
                token_use = Some((t.id.clone(), t.uses, t.expires_at));
                let cert: MembershipCert =
                    serde_json::from_str(body).map_err(|e| format!("certificate body: {e}"))?;
                if let Some(i) = cert.share_index
                    && self.holders().contains_key(&i)
                {
                    return Err(format!("share index {i} is taken"));
                }
                if cert.cluster != c.genesis.cluster
                    || cert.admin_public_key != c.genesis.admin_public_key
                    || cert.issued_at.abs_diff(now) > 300
                {
                    return Err("certificate body does not match this cluster or time".into());
                }
                records::signing_bytes(Domain::MembershipCert, body.as_bytes())
            }
        };
        let (nonces, commitments) = threshold::commit(&share).map_err(|e| e.to_string())?;
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        // Coordinators ask every reachable holder and use the first t, so
        // some sessions are never finished: the oldest gives way.
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            session,
            SignSession {
                coordinator: peer.clone(),
                nonces,
                message,
                created: Instant::now(),
                token_use,
            },
        );
        info!(%peer, purpose = purpose.kind(), "approved an admin signature request");
        Ok(KeysResponse::Committed {
            index: share.index(),
            commitments,
        })
    }

    fn sign_round2(
        &self,
        peer: &NodeId,
        session: &str,
        package: &str,
    ) -> Result<KeysResponse, String> {
        let s = lock(&self.sessions)
            .remove(session)
            .ok_or_else(|| "unknown or expired signing session".to_owned())?;
        if &s.coordinator != peer {
            return Err("signing session belongs to another coordinator".into());
        }
        let share = match &*read(&self.share) {
            ShareState::Valid(s) => s.clone(),
            _ => return Err("this node has no valid share".into()),
        };
        if let Some((id, uses, expires_at)) = &s.token_use {
            let mut used = lock(&self.used_tokens);
            let now = unix_now();
            used.retain(|_, (_, exp)| *exp + 60 > now);
            let entry = used.entry(id.clone()).or_insert((0, *expires_at));
            if entry.0 >= *uses {
                return Err(format!(
                    "join token was already used ({} of {uses} uses); create a new one",
                    entry.0
                ));
            }
            entry.0 += 1;
            let bytes = serde_json::to_vec(&*used).map_err(|e| e.to_string())?;
            write_private(&self.data_dir.join(USED_TOKENS_FILE), &bytes)
                .map_err(|e| format!("cannot record the token use: {e}"))?;
        }
        let sig = threshold::sign_share(&share, &s.nonces, package, &s.message)
            .map_err(|e| e.to_string())?;
        Ok(KeysResponse::SignatureShare {
            index: share.index(),
            share: sig,
        })
    }

    /// A node presents a join token: check it, have the admin key sign its
    /// certificate (threshold), and hand it the cluster records.
    async fn admit(
        &self,
        peer: &NodeId,
        token: WireSecret,
        age_recipient: String,
    ) -> Result<InstallBundle, String> {
        let c = self
            .cluster()
            .ok_or_else(|| "this node is not initialized".to_owned())?;
        let body = records::check_token(token.expose(), &c.admin_public_key, unix_now())
            .map_err(|e| e.to_string())?;
        bzzz_crypto::seal::parse_recipient(&age_recipient).map_err(|e| e.to_string())?;
        // A random free index: two members admitting at once are unlikely
        // to collide, and signers refuse an index already taken.
        let taken = self.holders();
        let index = loop {
            let mut b = [0u8; 2];
            getrandom::fill(&mut b).map_err(|e| e.to_string())?;
            let i = u16::from_le_bytes(b).max(1);
            if !taken.contains_key(&i) {
                break i;
            }
        };
        let cert = MembershipCert {
            v: RECORD_VERSION,
            cluster: c.genesis.cluster.clone(),
            admin_public_key: c.genesis.admin_public_key.clone(),
            node_id: peer.clone(),
            issued_at: unix_now(),
            share_index: Some(index),
            age_recipient: Some(age_recipient),
        };
        let text = records::body_text(&cert).map_err(|e| e.to_string())?;
        let bytes = records::signing_bytes(Domain::MembershipCert, text.as_bytes());
        let sig = self
            .threshold_sign(
                SignPurpose::Certificate {
                    body: text.clone(),
                    token,
                },
                bytes,
                None,
            )
            .await
            .map_err(|e| format!("cannot sign the certificate now: {e}"))?;
        let raw: [u8; 64] = hex::decode(&sig.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("bad signature")?;
        info!(%peer, token_id = %body.id, "admitted a node with a join token");
        Ok(InstallBundle {
            genesis: c.genesis_signed.clone(),
            cert: records::signed(text, &raw),
            sealed_share: None,
            share_index: None,
        })
    }
}

/// What [`Keys::try_enroll`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum EnrollOutcome {
    /// This node holds a valid share, or its certificate grants none.
    Settled,
    /// Not a member yet.
    NotMember,
    /// Enrollment needed and not done yet (retry later).
    Pending(String),
}

impl Keys {
    /// Share holders by index: the genesis holders, this node, and every
    /// peer in the view whose certificate names a share index.
    pub fn holders(&self) -> BTreeMap<u16, NodeId> {
        let mut out = BTreeMap::new();
        let Some(c) = self.cluster() else {
            return out;
        };
        for h in &c.genesis.holders {
            out.insert(h.index, h.node_id.clone());
        }
        if let Ok(mine) = records::open_cert(&c.cert, &c.admin_public_key, Some(&self.node_id))
            && let Some(i) = mine.share_index
        {
            out.entry(i).or_insert_with(|| self.node_id.clone());
        }
        if let Ok(net) = self.net() {
            for p in &net.snapshot().peers {
                if let Some(cert) = &p.announcement.membership
                    && let Ok(mc) =
                        records::open_cert(cert, &c.admin_public_key, Some(&p.announcement.node_id))
                    && let Some(i) = mc.share_index
                {
                    out.entry(i)
                        .or_insert_with(|| p.announcement.node_id.clone());
                }
            }
        }
        out
    }

    /// The age recipient of a member, as bound in its certificate (this
    /// node's own for itself).
    fn member_recipient(&self, c: &Cluster, node: &NodeId) -> Option<String> {
        if *node == self.node_id {
            return Some(self.age.recipient());
        }
        let net = self.net().ok()?;
        let snap = net.snapshot();
        let p = snap
            .peers
            .iter()
            .find(|p| &p.announcement.node_id == node)?;
        let cert = p.announcement.membership.as_ref()?;
        let mc = records::open_cert(cert, &c.admin_public_key, Some(node)).ok()?;
        mc.age_recipient
    }

    fn valid_share(&self) -> Result<Arc<KeyShare>, String> {
        match &*read(&self.share) {
            ShareState::Valid(s) => Ok(s.clone()),
            ShareState::Invalid(why) => {
                Err(format!("this node's share failed verification: {why}"))
            }
            ShareState::None => Err("this node holds no share".into()),
        }
    }

    /// Checks a certificate that asks for a share index: signed, names an
    /// index and a recipient, and the index is free or already its own.
    fn enrollment_cert(
        &self,
        c: &Cluster,
        cert: &Signed,
        owner: Option<&NodeId>,
    ) -> Result<(MembershipCert, u16, String), String> {
        let mc = records::open_cert(cert, &c.admin_public_key, owner)
            .map_err(|e| format!("certificate: {e}"))?;
        let index = mc
            .share_index
            .ok_or("the certificate grants no share index")?;
        let recipient = mc
            .age_recipient
            .clone()
            .ok_or("the certificate names no age recipient")?;
        if let Some(holder) = self.holders().get(&index)
            && holder != &mc.node_id
        {
            return Err(format!("share index {index} belongs to {holder}"));
        }
        Ok((mc, index, recipient))
    }

    /// Coordinates the enrollment of a member's share (it joined after
    /// setup, or lost its share): t holders run FROST's repairable
    /// threshold scheme; each one's sigma is sealed to the member.
    async fn coordinate_enrollment(
        &self,
        peer: &NodeId,
        cert: &Signed,
    ) -> Result<KeysResponse, String> {
        let c = self
            .cluster()
            .ok_or_else(|| "this node is not initialized".to_owned())?;
        let (_, index, _) = self.enrollment_cert(&c, cert, Some(peer))?;
        let t = usize::from(c.genesis.threshold);
        let mut helpers: Vec<(u16, NodeId)> = Vec::new();
        if let Ok(s) = self.valid_share() {
            helpers.push((s.index(), self.node_id.clone()));
        }
        let connected: Vec<NodeId> = self
            .net()
            .map(|n| {
                n.snapshot()
                    .peers
                    .iter()
                    .filter(|p| p.connected)
                    .map(|p| p.announcement.node_id.clone())
                    .collect()
            })
            .unwrap_or_default();
        for (i, node) in self.holders() {
            if helpers.len() >= t {
                break;
            }
            if i != index && node != self.node_id && &node != peer && connected.contains(&node) {
                helpers.push((i, node));
            }
        }
        if helpers.len() < t {
            return Err(format!(
                "{} share holders reachable, {t} needed to enroll a share",
                helpers.len()
            ));
        }
        let session = random_hex(16).map_err(|e| e.message)?;
        let step1 = futures::future::join_all(helpers.iter().map(|(_, node)| {
            self.ask(
                node,
                KeysRequest::EnrollDeltas {
                    session: session.clone(),
                    cert: cert.clone(),
                    helpers: helpers.clone(),
                    coordinator_cert: Some(c.cert.clone()),
                },
            )
        }))
        .await;
        let mut to: BTreeMap<u16, Vec<Vec<u8>>> = BTreeMap::new();
        for ((i, node), r) in helpers.iter().zip(step1) {
            match r {
                KeysResponse::Deltas {
                    index: from,
                    sealed,
                } if from == *i => {
                    for (target, d) in sealed {
                        to.entry(target).or_default().push(d);
                    }
                }
                KeysResponse::Refused { reason } => {
                    return Err(format!("helper {node} (share {i}) refused: {reason}"));
                }
                other => return Err(format!("helper {node} answered {other:?}")),
            }
        }
        let step2 = futures::future::join_all(helpers.iter().map(|(i, node)| {
            self.ask(
                node,
                KeysRequest::EnrollSigma {
                    session: session.clone(),
                    cert: cert.clone(),
                    sealed_deltas: to.remove(i).unwrap_or_default(),
                    coordinator_cert: Some(c.cert.clone()),
                },
            )
        }))
        .await;
        let mut sigmas = Vec::new();
        for ((i, node), r) in helpers.iter().zip(step2) {
            match r {
                KeysResponse::Sigma {
                    index: from,
                    sealed,
                } if from == *i => sigmas.push(sealed),
                KeysResponse::Refused { reason } => {
                    return Err(format!("helper {node} (share {i}) refused: {reason}"));
                }
                other => return Err(format!("helper {node} answered {other:?}")),
            }
        }
        info!(%peer, index, "enrolled a share (no node saw the admin key)");
        Ok(KeysResponse::Enrolled {
            index,
            sealed_sigmas: sigmas,
        })
    }

    fn enroll_step1(
        &self,
        peer: &NodeId,
        session: String,
        cert: &Signed,
        helpers: &[(u16, NodeId)],
    ) -> Result<KeysResponse, String> {
        let c = self
            .cluster()
            .ok_or_else(|| "this node is not initialized".to_owned())?;

        let share = self.valid_share()?;
        let (mc, index, _) = self.enrollment_cert(&c, cert, None)?;
        let holders = self.holders();
        let mut indices = Vec::new();
        let mut recipients = BTreeMap::new();
        for (i, node) in helpers {
            if holders.get(i) != Some(node) || indices.contains(i) || *i == index {
                return Err(format!("helper list is wrong at share {i}"));
            }
            let r = self
                .member_recipient(&c, node)
                .ok_or_else(|| format!("no certified age recipient for helper {node}"))?;
            indices.push(*i);
            recipients.insert(*i, r);
        }
        if !indices.contains(&share.index()) {
            return Err("this node is not among the helpers".into());
        }
        if indices.len() < usize::from(c.genesis.threshold) {
            return Err("fewer helpers than the threshold".into());
        }
        let deltas =
            threshold::enroll_deltas(&share, &indices, index).map_err(|e| e.to_string())?;
        let mut sealed = Vec::new();
        for (target, d) in deltas {
            let r = recipients.get(&target).ok_or("missing recipient")?;
            sealed.push((
                target,
                bzzz_crypto::seal::seal(r, &d).map_err(|e| e.to_string())?,
            ));
        }
        info!(%peer, %session, node = %mc.node_id, index, "helping to enroll a share");
        Ok(KeysResponse::Deltas {
            index: share.index(),
            sealed,
        })
    }

    fn enroll_step2(
        &self,
        _coordinator: &NodeId,
        _session: &str,
        cert: &Signed,
        sealed_deltas: &[Vec<u8>],
    ) -> Result<KeysResponse, String> {
        let c = self
            .cluster()
            .ok_or_else(|| "this node is not initialized".to_owned())?;

        let share = self.valid_share()?;
        let (_, _, recipient) = self.enrollment_cert(&c, cert, None)?;
        if sealed_deltas.len() < usize::from(c.genesis.threshold) || sealed_deltas.len() > 256 {
            return Err("wrong number of deltas".into());
        }
        let mut deltas = Vec::new();
        for d in sealed_deltas {
            deltas.push(self.age.open(d).map_err(|e| e.to_string())?);
        }
        let sigma = threshold::enroll_sigma(&deltas).map_err(|e| e.to_string())?;
        let sealed = bzzz_crypto::seal::seal(&recipient, &sigma).map_err(|e| e.to_string())?;
        Ok(KeysResponse::Sigma {
            index: share.index(),
            sealed,
        })
    }

    /// When this node's certificate grants a share it does not hold yet,
    /// asks a member to enroll it, then checks and stores it.
    pub async fn try_enroll(&self) -> EnrollOutcome {
        let Some(c) = self.cluster() else {
            return EnrollOutcome::NotMember;
        };
        // Only a missing share is enrolled automatically. A share that fails
        // its check (corrupted or forged) is reported, never silently
        // replaced: it may mean the node was tampered with.
        if !matches!(&*read(&self.share), ShareState::None) {
            return EnrollOutcome::Settled;
        }
        let Ok(mine) = records::open_cert(&c.cert, &c.admin_public_key, Some(&self.node_id)) else {
            return EnrollOutcome::Settled;
        };
        let Some(index) = mine.share_index else {
            return EnrollOutcome::Settled;
        };
        let Ok(net) = self.net() else {
            return EnrollOutcome::Pending("network not started".into());
        };
        let members: Vec<NodeId> = net
            .snapshot()
            .peers
            .iter()
            .filter(|p| p.connected && p.announcement.membership.is_some())
            .map(|p| p.announcement.node_id.clone())
            .collect();
        let mut last = "no member connected".to_owned();
        for m in members {
            match net
                .request(
                    &m,
                    KeysRequest::Enroll {
                        cert: c.cert.clone(),
                    },
                )
                .await
            {
                Ok(KeysResponse::Enrolled {
                    index: i,
                    sealed_sigmas,
                }) if i == index => match self.finish_enrollment(&c, index, &sealed_sigmas) {
                    Ok(()) => return EnrollOutcome::Settled,
                    Err(e) => last = format!("enrolled share from {m} refused: {e}"),
                },
                Ok(KeysResponse::Refused { reason }) => last = format!("{m}: {reason}"),
                Ok(other) => last = format!("{m}: unexpected answer {other:?}"),
                Err(e) => last = e.to_string(),
            }
        }
        EnrollOutcome::Pending(last)
    }

    fn finish_enrollment(
        &self,
        c: &Cluster,
        index: u16,
        sealed_sigmas: &[Vec<u8>],
    ) -> Result<(), String> {
        let mut sigmas = Vec::new();
        for s in sealed_sigmas {
            sigmas.push(self.age.open(s).map_err(|e| e.to_string())?);
        }
        let bytes =
            threshold::enroll_finish(&sigmas, index, &c.group).map_err(|e| e.to_string())?;
        let share =
            KeyShare::from_secret_share(&bytes, index, &c.group).map_err(|e| e.to_string())?;
        let sealed =
            bzzz_crypto::seal::seal(&self.age.recipient(), &bytes).map_err(|e| e.to_string())?;
        write_private(&self.data_dir.join(SHARE_FILE), &sealed)
            .map_err(|e| format!("cannot store the share: {e}"))?;
        let file = ClusterFile {
            v: 1,
            genesis: c.genesis_signed.clone(),
            cert: c.cert.clone(),
            share_index: Some(index),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
        write_private(&self.data_dir.join(CLUSTER_FILE), &text)
            .map_err(|e| format!("cannot store the cluster record: {e}"))?;
        if let Some(cl) = write(&self.cluster).as_mut() {
            cl.share_index = Some(index);
        }
        *write(&self.share) = ShareState::Valid(Arc::new(share));
        info!(
            index,
            "share enrolled and verified against the cluster commitment"
        );
        Ok(())
    }
}

/// Keeps asking for this node's share to be enrolled while its
/// certificate grants one it does not hold (after joining, or after losing
/// it). Backs off 0.5 s → 10 s.
pub async fn enrollment_task(keys: Arc<Keys>, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    let mut reported = String::new();
    loop {
        match keys.try_enroll().await {
            EnrollOutcome::Settled if keys.is_initialized() => return,
            EnrollOutcome::Pending(why) => {
                if why != reported {
                    warn!("share enrollment pending: {why}");
                    reported = why;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            _ => backoff = Duration::from_millis(500),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

/// Distinct 1-based word positions to re-type, in order.
fn confirm_positions() -> Result<Vec<usize>, KeysError> {
    let mut out = Vec::new();
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| err(500, format!("random number generator: {e}")))?;
    for x in b {
        let p = usize::from(x % 24) + 1;
        if !out.contains(&p) {
            out.push(p);
        }
        if out.len() == CONFIRM_WORDS {
            break;
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Serves inbound keys requests, each on its own task (a join triggers a
/// threshold signature, which waits on other nodes).
pub async fn serve_inbound(
    keys: Arc<Keys>,
    mut inbound: mpsc::Receiver<InboundRequest>,
    cancel: CancellationToken,
) {
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let req = tokio::select! {
            _ = cancel.cancelled() => break,
            r = inbound.recv() => match r { Some(r) => r, None => break },
        };
        let keys = keys.clone();
        tasks.spawn(async move {
            let resp = keys.handle(req.peer, req.request).await;
            let _ = req.respond.send(resp);
        });
    }
    tasks.close();
}

/// Why joining failed for good (the node should stop).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JoinRefused(pub String);

/// Checks a join token before the node starts (format and expiry).
pub fn precheck_token(token: &str) -> Result<JoinTokenBody, JoinRefused> {
    let (_, body) = records::decode_token(token).map_err(|e| JoinRefused(e.to_string()))?;
    let now = unix_now();
    if now >= body.expires_at {
        return Err(JoinRefused(
            TokenRefusal::Expired {
                expires_at: body.expires_at,
                now,
            }
            .to_string(),
        ));
    }
    Ok(body)
}

/// Joins the cluster with a token: asks connected members until one admits
/// this node. Returns an error when a member refuses the token for good.
pub async fn join_task(
    keys: Arc<Keys>,
    token: WireSecret,
    body: JoinTokenBody,
    cancel: CancellationToken,
) -> Result<(), JoinRefused> {
    let admin = records::parse_public_key(&body.admin_public_key)
        .map_err(|e| JoinRefused(format!("join token: {e}")))?;
    let net = keys.net().map_err(|e| JoinRefused(e.to_string()))?.clone();
    let mut rx = net.watch();
    let mut backoff = Duration::from_millis(200);
    info!(cluster = %body.cluster, "joining with a token");
    loop {
        if keys.is_initialized() {
            return Ok(());
        }
        if unix_now() >= body.expires_at {
            return Err(JoinRefused(format!(
                "join token expired at {} before a member admitted this node",
                body.expires_at
            )));
        }
        let candidates: Vec<NodeId> = rx
            .borrow_and_update()
            .peers
            .iter()
            .filter(|p| p.connected && p.announcement.membership.is_some())
            .map(|p| p.announcement.node_id.clone())
            .collect();
        for peer in candidates {
            let req = KeysRequest::Join {
                token: token.clone(),
                age_recipient: keys.age_recipient(),
            };
            match net.request(&peer, req).await {
                Ok(KeysResponse::Joined(bundle)) => match keys.install(&bundle, Some(&admin)) {
                    Ok(()) => return Ok(()),
                    Err(e) => warn!(%peer, "records from member refused: {e}"),
                },
                Ok(KeysResponse::Refused { reason }) => {
                    let definitive = reason.contains("not signed by this cluster")
                        || reason.contains("expired")
                        || reason.contains("already used")
                        || reason.contains("not a BZZZ join token");
                    if definitive {
                        return Err(JoinRefused(format!("join refused by {peer}: {reason}")));
                    }
                    warn!(%peer, "join not possible yet: {reason}");
                }
                Ok(other) => warn!(%peer, "unexpected join answer {other:?}"),
                Err(e) => warn!(%peer, "join request failed: {e}"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = rx.changed() => {}
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
