//! BZZZ's DHT (SPEC §7): records under UCXL addresses, signed by their
//! author, sealed with age to a role's key chain, with their whole version
//! history, stored in Kademlia (`bzzz-net`'s persistent record store).
//!
//! * **Keys.** Each version is stored under `sha256(address, version)`;
//!   the latest also under `sha256(address)` (the *head*). A write looks
//!   the head up, writes version N+1 and the new head, each at the
//!   `replication` closest nodes, and succeeds once a quorum (2) of them
//!   stored it.
//! * **Checks** ([`record::check`]): every storing node (through
//!   [`record::StoreCheck`], Kademlia's store hook) and every reader
//!   checks the signature, that the author is a certified, not removed
//!   member of the address's ROLE (the admin role: the cluster admin
//!   signature), and that the key and the chain match the address. A head
//!   only moves forward; a stored version is never replaced.
//! * **Reads** ask the closest nodes for the head, wait for a quorum (2),
//!   take the newest valid record and send it to holders of older ones
//!   (read repair). Temporal segments resolve against the head: `*~3` is
//!   one lookup, `~~N`/`^^N` two, an ISO time a binary search on the
//!   versions' timestamps.
//! * **Keys of roles** ([`Keyring`]): this node opens the epochs sealed to
//!   it; a reader without the chain's key gets [`DhtError::Forbidden`],
//!   naming the roles that read.
//! * **Listing** asks every member for the heads it holds that match a
//!   pattern ([`bzzz_net::Service::Dht`]).
//!
//! The steward that restores the replication factor is Kademlia's
//! replication job (every holder re-sends its records to the closest nodes
//! every `replicate_every`, 20 s by default); the original publisher also
//! republishes. Records persist in redb across restarts.

pub mod keys;
mod list;
mod read;
pub mod record;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bzzz_crypto::seal::AgeIdentity;
use bzzz_net::NetHandle;
use bzzz_net::store::DiskStore;
use bzzz_proto::cluster::Signed;
use bzzz_proto::dht::{ADMIN_ROLE, HistoryEntry, MEMBERS_CHAIN, SignedBy, chain_of, reading_roles};
use bzzz_proto::ucxl::{Address, Component};
use futures::StreamExt as _;

pub use keys::{Keyring, grants, new_keys};
use list::Request;
pub use record::{Authz, Checked, SharedAuthz};

/// Copies of a write (besides the author's) that must succeed.
pub const WRITE_QUORUM: usize = 2;
/// Records a read waits for before it decides.
pub const READ_QUORUM: usize = 2;
/// Most entries one node lists.
pub const MAX_LIST: usize = 10_000;
/// Most versions `history` lists (the newest); each is one lookup.
pub const MAX_HISTORY: u64 = 1024;

/// Errors of DHT operations (each maps to one HTTP status).
#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    /// Bad input (400).
    #[error("{0}")]
    Invalid(String),
    /// This node may not do it (403); `readable_by` names the roles whose
    /// members may read.
    #[error("{message}")]
    Forbidden {
        message: String,
        readable_by: Vec<String>,
    },
    /// No such record or version (404).
    #[error("{0}")]
    NotFound(String),
    /// The chain has no key yet: an admin change must make its first one.
    #[error("role {0:?} has no key yet")]
    NeedsKey(String),
    /// Not enough nodes answered (503).
    #[error("{0}")]
    Unavailable(String),
}

/// Signs bytes with this node's key.
pub type NodeSign = Arc<dyn Fn(&[u8]) -> [u8; 64] + Send + Sync>;
/// Runs the cluster admin (threshold) signature over bytes.
pub type AdminSign = Box<
    dyn FnOnce(Vec<u8>) -> futures::future::BoxFuture<'static, Result<[u8; 64], String>> + Send,
>;

/// How a write is signed: by this node, or by the cluster admin key
/// (records of the admin role; the closure runs the threshold signature).
#[allow(missing_debug_implementations)]
pub enum Signer {
    Node,
    Admin(AdminSign),
}

/// A record read and opened.
#[derive(Debug, Clone)]
pub struct Opened {
    pub record: Checked,
    pub value: Vec<u8>,
}

/// The DHT client and server of one node.
#[derive(Clone)]
pub struct Dht {
    net: NetHandle,
    store: DiskStore,
    authz: SharedAuthz,
    keyring: Arc<RwLock<Arc<Keyring>>>,
    age: Arc<AgeIdentity>,
    sign: NodeSign,
    cert: Arc<RwLock<Option<Signed>>>,
    stamp: Arc<std::sync::Mutex<Option<(u64, usize)>>>,
}

impl std::fmt::Debug for Dht {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dht")
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 of unix milliseconds.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl Dht {
    /// `store` is the one the swarm uses (built with a
    /// [`record::StoreCheck`] over `authz`); `sign` signs with the node key.
    pub fn new(
        net: NetHandle,
        store: DiskStore,
        authz: SharedAuthz,
        age: AgeIdentity,
        sign: NodeSign,
    ) -> Self {
        Self {
            net,
            store,
            authz,
            keyring: Arc::default(),
            age: Arc::new(age),
            sign,
            cert: Arc::default(),
            stamp: Arc::default(),
        }
    }

    /// Installs `build()` unless the state it comes from is unchanged
    /// (`stamp`: the last admin change's seq and how many keys are sealed).
    pub fn refresh(&self, stamp: (u64, usize), build: impl FnOnce() -> Authz) {
        let Ok(mut last) = self.stamp.lock() else {
            return;
        };
        if *last != Some(stamp) {
            self.set_authz(build());
            *last = Some(stamp);
        }
    }

    /// Installs a new snapshot of roles and keys (and opens the keys).
    pub fn set_authz(&self, authz: Authz) {
        let ring = Keyring::open(&authz, self.net.local_id(), &self.age);
        if let Ok(mut a) = self.authz.write() {
            *a = Arc::new(authz);
        }
        if let Ok(mut k) = self.keyring.write() {
            *k = Arc::new(ring);
        }
    }

    /// This node's membership certificate (records carry it).
    pub fn set_cert(&self, cert: Option<Signed>) {
        if let Ok(mut c) = self.cert.write() {
            *c = cert;
        }
    }

    pub fn authz(&self) -> Arc<Authz> {
        self.authz.read().map(|a| a.clone()).unwrap_or_default()
    }

    pub fn keyring(&self) -> Arc<Keyring> {
        self.keyring.read().map(|k| k.clone()).unwrap_or_default()
    }

    pub fn net(&self) -> &NetHandle {
        &self.net
    }

    pub fn store(&self) -> &DiskStore {
        &self.store
    }

    fn peers(&self) -> usize {
        self.net
            .snapshot()
            .peers
            .iter()
            .filter(|p| p.proven)
            .count()
    }

    /// Opens a record's value with this node's keys; `Forbidden` (naming
    /// the roles that read it) without them.
    pub fn open(&self, c: &Checked) -> Result<Vec<u8>, DhtError> {
        let ring = self.keyring();
        let Some(secret) = ring.get(&c.body.chain, c.body.key_epoch) else {
            let roles = readable_by(&self.authz(), c);
            return Err(DhtError::Forbidden {
                message: format!(
                    "this node ({}) cannot read {}: it is readable by members of {}",
                    self.net.local_id(),
                    c.body.address,
                    roles.join(", ")
                ),
                readable_by: roles,
            });
        };
        let sealed = record::payload(&c.body).map_err(DhtError::Invalid)?;
        secret
            .decrypt(&sealed)
            .map(|v| v.to_vec())
            .map_err(|e| DhtError::Invalid(format!("the record does not open: {e}")))
    }

    /// Whether any key this node holds (its node identity or any role key
    /// of any epoch) opens a record's payload (for the raw-record check).
    pub fn any_key_opens(&self, c: &Checked) -> (bool, usize) {
        let Ok(sealed) = record::payload(&c.body) else {
            return (false, 0);
        };
        let ring = self.keyring();
        let mut tried = 1;
        if self.age.open(&sealed).is_ok() {
            return (true, tried);
        }
        for secret in ring.all() {
            tried += 1;
            if secret.decrypt(&sealed).is_ok() {
                return (true, tried);
            }
        }
        (false, tried)
    }

    /// Reads and opens the record an address names.
    pub async fn get(&self, addr: &Address) -> Result<Opened, DhtError> {
        let record = self.resolve(addr).await?;
        let value = self.open(&record)?;
        Ok(Opened { record, value })
    }

    /// Writes the next version of `addr`; returns the stored record and
    /// how many nodes besides this one stored it.
    pub async fn put(
        &self,
        addr: &Address,
        value: &[u8],
        signer: Signer,
    ) -> Result<(Checked, usize), DhtError> {
        addr.check_writable()
            .map_err(|e| DhtError::Invalid(e.to_string()))?;
        if addr.query.is_some() || addr.fragment.is_some() {
            return Err(DhtError::Invalid(
                "a write names no query or fragment".into(),
            ));
        }
        if value.len() > bzzz_proto::dht::MAX_VALUE {
            return Err(DhtError::Invalid(format!(
                "the value is {} bytes; records hold at most {} bytes (256 KiB)",
                value.len(),
                bzzz_proto::dht::MAX_VALUE
            )));
        }
        let authz = self.authz();
        let me = self.net.local_id().clone();
        let Component::Name(role) = &addr.role else {
            return Err(DhtError::Invalid("a write names its role".into()));
        };
        let is_admin = role == ADMIN_ROLE;
        match (&signer, is_admin) {
            (Signer::Node, true) => {
                return Err(DhtError::Invalid(
                    "records of the admin role need the cluster admin signature".into(),
                ));
            }
            (Signer::Admin(_), false) => {
                return Err(DhtError::Invalid(
                    "only admin records are admin-signed".into(),
                ));
            }
            _ => {}
        }
        if !is_admin {
            let r = authz.roles.get(role).ok_or_else(|| {
                DhtError::Invalid(format!(
                    "no role {role:?}; create it with `bzzz role create`"
                ))
            })?;
            if !r.members.contains(&me) {
                return Err(DhtError::Forbidden {
                    message: format!(
                        "this node ({me}) is not a member of role {role}: only its members write under it"
                    ),
                    readable_by: vec![role.clone()],
                });
            }
        }
        let chain = chain_of(addr).ok_or_else(|| DhtError::Invalid("no role".into()))?;
        let key = authz
            .role_keys
            .get(&chain)
            .and_then(|v| v.last())
            .cloned()
            .ok_or_else(|| DhtError::NeedsKey(chain.clone()))?;
        let cert = self
            .cert
            .read()
            .ok()
            .and_then(|c| c.clone())
            .ok_or_else(|| {
                DhtError::Unavailable("this node has no membership certificate yet".into())
            })?;
        let base = record::write_address(addr);
        let prev = self.head(&base).await?;
        let version = match &prev {
            None => 1,
            Some(p) if p.body.version >= record::MAX_VERSION => {
                return Err(DhtError::Invalid(format!(
                    "{base} is at the last version ({}): write another address",
                    record::MAX_VERSION
                )));
            }
            Some(p) => p.body.version + 1,
        };
        let ts = prev
            .as_ref()
            .map_or(0, |p| p.body.timestamp_ms.saturating_add(1))
            .max(now_ms());
        let d = record::draft(&authz.cluster, &base, version, &me, ts, &chain, &key, value)
            .map_err(DhtError::Invalid)?;
        let text = serde_json::to_string(&d.body).map_err(|e| DhtError::Invalid(e.to_string()))?;
        let (by, sig) = match signer {
            Signer::Node => (
                SignedBy::Node,
                (self.sign)(&record::signing_bytes(&text, SignedBy::Node)),
            ),
            Signer::Admin(f) => {
                // The admin signature is an operator message over the
                // record's node-signing bytes.
                let msg = bzzz_crypto::records::signing_bytes(
                    bzzz_crypto::records::Domain::DhtRecord,
                    text.as_bytes(),
                );
                (
                    SignedBy::Admin,
                    f(msg).await.map_err(DhtError::Unavailable)?,
                )
            }
        };
        let env = record::envelope(text, &sig, by, cert);
        let raw = serde_json::to_vec(&env).map_err(|e| DhtError::Invalid(e.to_string()))?;
        let checked = record::check(&authz, None, &raw)
            .map_err(|e| DhtError::Invalid(format!("the record fails its own checks: {e}")))?;
        let quorum = self.peers().min(WRITE_QUORUM);
        // Storing nodes may not have applied a role change made a moment
        // ago: retry briefly before giving up.
        let mut last = None;
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
            }
            let records = vec![
                (record::version_key(&base, version), raw.clone()),
                (record::head_key(&base), raw.clone()),
            ];
            // This node's copy (one transaction, off the swarm task) while
            // the copies travel to the closest nodes.
            let store = self.store.clone();
            let author = me.clone();
            let local = records.clone();
            let (here, there) = tokio::join!(
                tokio::task::spawn_blocking(move || store.put_many(&local, &author)),
                self.net.dht_put(records, quorum),
            );
            match here {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(DhtError::Invalid(format!(
                        "this node refuses the record: {e}"
                    )));
                }
                Err(e) => return Err(DhtError::Unavailable(e.to_string())),
            }
            match there {
                Ok(()) => return Ok((checked, quorum)),
                Err(e) => last = Some(e.to_string()),
            }
        }
        Err(DhtError::Unavailable(format!(
            "the write of version {version} did not reach a quorum: {}",
            last.unwrap_or_default()
        )))
    }

    /// The history of an address, oldest first: its newest
    /// [`MAX_HISTORY`] versions (older ones stay readable by version).
    pub async fn history(&self, addr: &Address) -> Result<Vec<HistoryEntry>, DhtError> {
        let base = record::write_address(addr);
        let head = self
            .head(&base)
            .await?
            .ok_or_else(|| DhtError::NotFound(format!("no record at {base}")))?;
        let latest = head.body.version;
        let first = latest.saturating_sub(MAX_HISTORY - 1).max(1);
        let mut entries: Vec<HistoryEntry> = futures::stream::iter(first..latest)
            .map(|v| {
                let base = base.clone();
                async move { self.version(&base, v).await }
            })
            .buffer_unordered(16)
            .filter_map(|r| async move { r.ok().flatten() })
            .map(|c| entry(&c))
            .collect()
            .await;
        entries.push(entry(&head));
        entries.sort_by_key(|e| e.version);
        Ok(entries)
    }
}

fn entry(c: &Checked) -> HistoryEntry {
    HistoryEntry {
        version: c.body.version,
        author: c.body.author.clone(),
        timestamp: rfc3339(c.body.timestamp_ms),
        timestamp_ms: c.body.timestamp_ms,
    }
}

/// The roles whose members read a record.
pub fn readable_by(authz: &Authz, c: &Checked) -> Vec<String> {
    if c.body.chain == MEMBERS_CHAIN {
        return vec!["every member (cluster configuration)".into()];
    }
    reading_roles(c.role(), &authz.roles)
}
