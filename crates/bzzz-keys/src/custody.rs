//! Custody: the sealed share store and cluster records on disk, loading them at start, installing a bundle, and this node's key status.

use super::*;

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
    ) -> Result<Self, KeysError> {
        Self::load_with(data_dir, node_key, node_id, local_tx, None)
    }

    /// [`Keys::load`] with a passphrase that also protects the share at
    /// rest (see [`Keys::at_rest`]).
    pub fn load_with(
        data_dir: &Path,
        node_key: &bzzz_crypto::NodeKey,
        node_id: NodeId,
        local_tx: watch::Sender<LocalInfo>,
        share_passphrase: Option<zeroize::Zeroizing<String>>,
    ) -> Result<Self, KeysError> {
        let age = AgeIdentity::derive(node_key)
            .map_err(|e| err(ErrorKind::Internal, format!("age identity: {e}")))?;
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
            auth: Mutex::new(limiter::Limiter::default()),
            installing: Mutex::new(()),
            #[cfg(test)]
            install_hook: Mutex::new(None),
            hasher: operator::Hasher::start()?,
            auth_ended: tokio::sync::Notify::new(),
            removed: RwLock::new(BTreeMap::new()),
            approved: RwLock::new(std::collections::BTreeSet::new()),
            token_nodes: Mutex::new(HashMap::new()),
            redealing: tokio::sync::Mutex::new(()),
            audit_witness: std::sync::OnceLock::new(),
            operator: RwLock::new(None),
            share_passphrase,
            operator_nonces: Mutex::new(HashMap::new()),
            used_tokens: Mutex::new(load_used_tokens(&data_dir.join(USED_TOKENS_FILE))?),
        };
        let removed = data_dir.join(REMOVED_FILE);
        if removed.exists() {
            let why = std::fs::read_to_string(&removed).unwrap_or_default();
            let cluster = serde_json::from_str::<serde_json::Value>(&why)
                .ok()
                .and_then(|v| v["cluster"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "?".into());
            return Err(err(
                ErrorKind::Conflict,
                format!(
                    "this node was removed from cluster '{cluster}' by its operator \
                     (an admin-signed removal, kept in {}); to use this machine again, \
                     give it a new data dir and a join token",
                    removed.display()
                ),
            ));
        }
        let path = data_dir.join(CLUSTER_FILE);
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                err(
                    ErrorKind::Internal,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let file: ClusterFile = serde_json::from_str(&text).map_err(|e| {
                err(
                    ErrorKind::Internal,
                    format!("{} is not a cluster record: {e}", path.display()),
                )
            })?;
            let cluster = keys
                .check_records(
                    &file.genesis,
                    &file.cert,
                    file.share_index,
                    None,
                    file.epoch.as_ref(),
                )
                .map_err(|e| err(ErrorKind::Internal, format!("{}: {e}", path.display())))?;
            let share = match (
                cluster.share_index,
                std::fs::read(data_dir.join(share_file(cluster.epoch))),
            ) {
                (None, _) => ShareState::None,
                (Some(i), Ok(bytes)) => {
                    let s = keys.open_share_at_rest(&bytes, i, &cluster.group);
                    // A passphrase newly configured: the share gets its
                    // layer now.
                    if matches!(s, ShareState::Valid(_))
                        && keys.share_passphrase.is_some()
                        && !bzzz_crypto::seal::is_passphrase_wrapped(&bytes)
                        && let Ok(wrapped) = keys.at_rest(&bytes)
                    {
                        match write_private(&data_dir.join(share_file(cluster.epoch)), &wrapped) {
                            Ok(()) => {
                                info!("the share at rest is now protected by the share passphrase")
                            }
                            Err(e) => {
                                warn!("cannot rewrite the share with its passphrase layer: {e}")
                            }
                        }
                    }
                    s
                }
                (Some(_), Err(e)) if e.kind() == std::io::ErrorKind::NotFound => ShareState::None,
                (Some(_), Err(e)) => {
                    ShareState::Invalid(format!("cannot read {}: {e}", share_file(cluster.epoch)))
                }
            };
            if let ShareState::Invalid(why) = &share {
                error!("this node's admin key share is unusable: {why}");
            }
            // Shares of earlier epochs are erased (a crash may have left
            // one behind between committing an epoch and deleting them).
            keys.erase_shares_before(cluster.epoch);
            info!(
                cluster = %cluster.genesis.cluster,
                admin_public_key = %cluster.genesis.admin_public_key,
                share_index = ?cluster.share_index,
                epoch = cluster.epoch,
                "cluster membership loaded"
            );
            *write(&keys.share) = share;
            keys.set_cluster(cluster);
            keys.publish_share();
            keys.load_operator_change();
            keys.wrap_ca_key_at_rest();
        }
        Ok(keys)
    }

    /// Connects the service to the network.
    pub fn attach(self, net: NetHandle) -> Arc<Self> {
        let _ = self.net.set(net);
        Arc::new(self)
    }

    /// The network's view, to watch (once attached).
    pub fn watch_net(&self) -> Option<watch::Receiver<Arc<bzzz_net::Snapshot>>> {
        self.net.get().map(NetHandle::watch)
    }

    pub(crate) fn net(&self) -> Result<&NetHandle, KeysError> {
        self.net
            .get()
            .ok_or_else(|| err(ErrorKind::Unavailable, "the network is not started yet"))
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

    pub(crate) fn set_cluster(&self, c: Cluster) {
        let m = Membership {
            admin_public_key: c.admin_public_key,
            cert: c.cert.clone(),
        };
        *write(&self.cluster) = Some(c);
        self.local_tx.send_modify(|l| l.membership = Some(m));
    }

    /// The bytes to keep on disk for a share sealed to this node: with a
    /// share passphrase, wrapped once more under it (age scrypt), so the
    /// disk alone (which also holds the node key) does not open it.
    pub(crate) fn at_rest(&self, sealed: &[u8]) -> Result<Vec<u8>, String> {
        match &self.share_passphrase {
            Some(p) => bzzz_crypto::seal::passphrase_wrap(p, sealed).map_err(|e| e.to_string()),
            None => Ok(sealed.to_vec()),
        }
    }

    /// Opens a share file written by [`Keys::at_rest`] (or before a
    /// passphrase was configured).
    pub(crate) fn open_share_at_rest(
        &self,
        bytes: &[u8],
        index: u16,
        group: &GroupKey,
    ) -> ShareState {
        let wrapped = bzzz_crypto::seal::is_passphrase_wrapped(bytes);
        let sealed = match (&self.share_passphrase, wrapped) {
            (Some(p), true) => match bzzz_crypto::seal::passphrase_unwrap(p, bytes) {
                Ok(s) => s,
                Err(_) => {
                    return ShareState::Invalid(
                        "the share at rest does not open with the configured share passphrase"
                            .into(),
                    );
                }
            },
            (None, true) => {
                return ShareState::Invalid(
                    "the share at rest is protected by a passphrase: start the node with \
                     --share-passphrase-file (BZZZ_SHARE_PASSPHRASE_FILE)"
                        .into(),
                );
            }
            (_, false) => bytes.to_vec(),
        };
        self.open_share(&sealed, index, group)
    }

    pub(crate) fn open_share(&self, sealed: &[u8], index: u16, group: &GroupKey) -> ShareState {
        let plain = match self.age.open(sealed) {
            Ok(p) => p,
            Err(e) => return ShareState::Invalid(e.to_string()),
        };
        match KeyShare::from_secret_share(&plain, index, group) {
            Ok(s) => ShareState::Valid(Arc::new(s)),
            Err(e) => ShareState::Invalid(e.to_string()),
        }
    }

    /// Checks a genesis record, a certificate for this node and the key
    /// epoch record (if past genesis).
    pub(crate) fn check_records(
        &self,
        genesis: &Signed,
        cert: &Signed,
        share_index: Option<u16>,
        expected_admin: Option<&[u8; 32]>,
        epoch: Option<&Signed>,
    ) -> Result<Cluster, String> {
        let g = records::open_genesis(genesis, expected_admin)
            .map_err(|e| format!("genesis record: {e}"))?;
        let pk = records::parse_public_key(&g.admin_public_key).map_err(|e| e.to_string())?;
        let my_cert = records::open_cert(cert, &pk, Some(&self.node_id))
            .map_err(|e| format!("membership certificate: {e}"))?;
        let genesis_group = GroupKey::from_commitment_hex(&g.commitment, g.threshold)
            .map_err(|e| format!("genesis commitment: {e}"))?;
        if genesis_group.public() != pk {
            return Err("genesis commitment does not match its admin key".into());
        }
        let (n, policy, threshold, holders, group) = match epoch {
            None => (
                0,
                g.policy
                    .unwrap_or_else(|| ceremony::policy_for(g.threshold, g.shares)),
                g.threshold,
                g.holders
                    .iter()
                    .map(|h| (h.index, h.node_id.clone()))
                    .collect::<BTreeMap<_, _>>(),
                genesis_group,
            ),
            Some(rec) => {
                let e = records::open_epoch(rec, &pk, &g.cluster)
                    .map_err(|e| format!("key epoch record: {e}"))?;
                let group = GroupKey::from_commitment_hex(&e.commitment, e.threshold)
                    .map_err(|e| format!("key epoch commitment: {e}"))?;
                (e.epoch, e.policy, e.threshold, e.holder_map(), group)
            }
        };
        // This node's index in the epoch: where the holders list it.
        let mine = holders
            .iter()
            .find(|(_, node)| **node == self.node_id)
            .map(|(i, _)| *i);
        if let Some(i) = share_index
            && mine != Some(i)
            && my_cert.share_index != Some(i)
        {
            return Err(format!("share index {i} is not this node's"));
        }
        Ok(Cluster {
            admin_public_key: pk,
            genesis_signed: genesis.clone(),
            cert: cert.clone(),
            group,
            share_index: mine,
            genesis: g,
            epoch: n,
            policy,
            threshold,
            holders,
            epoch_record: epoch.cloned(),
        })
    }

    /// Writes `cluster.json` for `c`.
    pub(crate) fn write_cluster_file(&self, c: &Cluster) -> Result<(), String> {
        let file = ClusterFile {
            v: 1,
            genesis: c.genesis_signed.clone(),
            cert: c.cert.clone(),
            share_index: c.share_index,
            epoch: c.epoch_record.clone(),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
        write_private(&self.data_dir.join(CLUSTER_FILE), &text)
            .map_err(|e| format!("cannot store the cluster record: {e}"))
    }

    /// Deletes every share file of an epoch before `epoch`, and pending
    /// shares of epochs up to `epoch` (overwritten first: the file's
    /// blocks are reused, not left with sealed share bytes).
    pub(crate) fn erase_shares_before(&self, epoch: u64) {
        let Ok(dir) = std::fs::read_dir(&self.data_dir) else {
            return;
        };
        let keep = share_file(epoch);
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("share.") || name == keep {
                continue;
            }
            let file_epoch = if name == SHARE_FILE {
                Some(0)
            } else {
                name.strip_prefix("share.e")
                    .and_then(|r| r.split('.').next())
                    .and_then(|n| n.parse::<u64>().ok())
            };
            let pending = name.ends_with(".pending");
            let stale = match file_epoch {
                Some(n) if pending => n <= epoch,
                Some(n) => n < epoch,
                None => false,
            };
            if stale {
                erase_file(&e.path());
            }
        }
    }
    /// Checks and stores a bundle (setup or join). Refuses when this node
    /// already belongs to a cluster.
    pub(crate) fn install(
        &self,
        bundle: &InstallBundle,
        expected_admin: Option<&[u8; 32]>,
    ) -> Result<(), String> {
        // Check, then write, as one step: two bundles arriving at once
        // (two setups, a setup and a join) must not leave files of both.
        let _installing = lock(&self.installing);
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
            bundle.epoch.as_ref(),
        )?;
        #[cfg(test)]
        if let Some(hook) = lock(&self.install_hook).clone() {
            hook();
        }
        let share = match (&bundle.sealed_share, cluster.share_index) {
            (Some(sealed), Some(i)) => match self.open_share(sealed, i, &cluster.group) {
                ShareState::Invalid(why) => return Err(format!("share refused: {why}")),
                s => Some((sealed.clone(), s)),
            },
            (None, _) => None,
            (Some(_), None) => return Err("a share for a node that holds none".into()),
        };
        if let Some((sealed, _)) = &share {
            write_private(
                &self.data_dir.join(share_file(cluster.epoch)),
                &self.at_rest(sealed)?,
            )
            .map_err(|e| format!("cannot store the share: {e}"))?;
        }
        // The cluster CA's key (share holders): it must open and match
        // the CA certificate of the genesis record.
        if let Some(sealed) = &bundle.sealed_ca_key {
            let ca_cert = cluster
                .genesis
                .ca_cert
                .as_deref()
                .ok_or("a CA key for a cluster without a CA")?;
            check_ca_key(&self.open_sealed(sealed)?, ca_cert)?;
            write_private(&self.data_dir.join(CA_KEY_FILE), &self.at_rest(sealed)?)
                .map_err(|e| format!("cannot store the CA key: {e}"))?;
        }
        self.write_cluster_file(&cluster)?;
        if let Some((_, s)) = share {
            *write(&self.share) = s;
        }
        info!(
            cluster = %cluster.genesis.cluster,
            share_index = ?bundle.share_index,
            "joined cluster; membership certificate stored"
        );
        self.set_cluster(cluster);
        self.publish_share();
        Ok(())
    }

    pub fn status(&self) -> KeysStatus {
        let c = self.cluster();
        let (share_state, share_error) = match &*read(&self.share) {
            ShareState::None => ("none", None),
            ShareState::Valid(_) => ("valid", None),
            ShareState::Invalid(e) => ("invalid", Some(e.clone())),
        };
        let mut warnings = Vec::new();
        if let Some(c) = &c
            && c.threshold <= 1
        {
            if c.holders.len() <= 1 && c.share_index.is_some() {
                warnings.push(
                    "only this node holds the admin key: a second node that joins gets a \
                     share and the key is re-dealt 2 of 2"
                        .to_owned(),
                );
            } else {
                warnings.push(format!(
                    "threshold 1: each of the {} holders holds the whole admin key",
                    c.holders.len()
                ));
            }
        }
        KeysStatus {
            initialized: c.is_some(),
            cluster: c.as_ref().map(|c| c.genesis.cluster.clone()),
            admin_public_key: c.as_ref().map(|c| c.genesis.admin_public_key.clone()),
            threshold: c.as_ref().map(|c| c.threshold),
            shares: c.as_ref().map(|c| c.holders.len() as u16),
            share_index: c.as_ref().and_then(|c| c.share_index),
            share_state: share_state.into(),
            share_error,
            holders: c
                .as_ref()
                .map(|c| {
                    c.holders
                        .iter()
                        .map(|(index, node_id)| ShareHolder {
                            index: *index,
                            node_id: node_id.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            setup_pending: lock(&self.pending).is_some(),
            epoch: c.as_ref().map(|c| c.epoch),
            policy: c.as_ref().map(|c| c.policy.to_string()),
            warnings,
        }
    }

    /// The members a setup makes, with their age recipients: this node
    /// first, then the named `holders` in order. Each must be in view and
    /// announce an age recipient (a share is sealed to it); none may be
    /// named twice, nor this node.
    pub(crate) fn setup_members(
        &self,
        holders: &[NodeId],
    ) -> Result<Vec<(NodeId, String)>, KeysError> {
        let present = self.recipients(false);
        let mut out = vec![(self.node_id.clone(), self.age.recipient())];
        let mut missing = Vec::new();
        for h in holders {
            if *h == self.node_id {
                return Err(err(
                    ErrorKind::Invalid,
                    "this node always holds a share: name only the other holders",
                ));
            }
            if out.iter().any(|(id, _)| id == h) {
                return Err(err(
                    ErrorKind::Invalid,
                    format!("holder {h} is named twice"),
                ));
            }
            match present.iter().find(|(id, _)| id == h) {
                Some(m) => out.push(m.clone()),
                None => missing.push(h.to_string()),
            }
        }
        if !missing.is_empty() {
            return Err(err(
                ErrorKind::Invalid,
                format!(
                    "not in view (or announcing no age key): {}. {}",
                    missing.join(", "),
                    self.peers_in_view()
                ),
            ));
        }
        Ok(out)
    }

    /// The peers in view, for an error message: each id and address.
    pub(crate) fn peers_in_view(&self) -> String {
        let Ok(net) = self.net() else {
            return "No peers are in view.".to_owned();
        };
        let snap = net.snapshot();
        let listed: Vec<String> = snap
            .peers
            .iter()
            .map(|p| {
                let a = &p.announcement;
                let addr = a
                    .api_addr
                    .clone()
                    .or_else(|| a.addrs.first().cloned())
                    .unwrap_or_else(|| "no address".into());
                format!("{} at {addr}", a.node_id)
            })
            .collect();
        if listed.is_empty() {
            "No peers are in view.".to_owned()
        } else {
            format!("Peers in view: {}", listed.join("; "))
        }
    }

    /// Gives the CA key at rest the share passphrase's layer when one is
    /// configured and the file lacks it (called at start).
    pub(crate) fn wrap_ca_key_at_rest(&self) {
        let path = self.data_dir.join(CA_KEY_FILE);
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        if self.share_passphrase.is_none()
            || bzzz_crypto::seal::is_passphrase_wrapped(&bytes)
            || self.open_sealed(&bytes).is_err()
        {
            return;
        }
        match self.at_rest(&bytes).map(|w| write_private(&path, &w)) {
            Ok(Ok(())) => info!("the CA key at rest is now protected by the share passphrase"),
            Ok(Err(e)) => warn!("cannot rewrite the CA key with its passphrase layer: {e}"),
            Err(e) => warn!("cannot wrap the CA key: {e}"),
        }
    }

    /// The cluster CA's key, when this node holds it (share holders of
    /// clusters set up with a CA). Kept sealed to this node (and wrapped
    /// under the share passphrase when one is set), opened per use.
    pub fn ca_key(&self) -> Option<bzzz_crypto::ca::TlsKey> {
        let bytes = std::fs::read(self.data_dir.join(CA_KEY_FILE)).ok()?;
        let sealed = if bzzz_crypto::seal::is_passphrase_wrapped(&bytes) {
            bzzz_crypto::seal::passphrase_unwrap(self.share_passphrase.as_ref()?, &bytes).ok()?
        } else {
            bytes
        };
        let plain = self.open_sealed(&sealed).ok()?;
        bzzz_crypto::ca::TlsKey::from_pem(std::str::from_utf8(&plain).ok()?).ok()
    }

    /// Opens what was sealed (age) to this node's recipient.
    pub fn open_sealed(&self, sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
        self.age.open(sealed).map_err(|e| e.to_string())
    }

    /// This node and the peers in the view (with `proven_only`, proven
    /// members only) that announce a valid age recipient, with it, sorted
    /// by id: whom secrets can be sealed to.
    pub fn recipients(&self, proven_only: bool) -> Vec<(NodeId, String)> {
        let Ok(net) = self.net() else {
            return vec![(self.node_id.clone(), self.age.recipient())];
        };
        let snap = net.snapshot();
        let mut m: Vec<(NodeId, String)> = snap
            .peers
            .iter()
            .filter(|p| p.proven || !proven_only)
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
}

/// `used_tokens.json`: join token id → (uses signed for, expiry), format
/// [`USED_TOKENS_VERSION`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct UsedTokensFile {
    pub v: u32,
    pub tokens: HashMap<String, (u32, u64)>,
}

/// The version of `used_tokens.json` this release writes.
pub const USED_TOKENS_VERSION: u32 = 1;

/// Reads the record of token uses: the versioned file, or the map that
/// releases before versions wrote (migrated on the next write). A file
/// that cannot be read is an error, not an empty record: forgetting uses
/// would let a single-use token admit a second node.
pub(crate) fn load_used_tokens(path: &Path) -> Result<HashMap<String, (u32, u64)>, KeysError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => {
            return Err(err(
                ErrorKind::Internal,
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    };
    if let Ok(f) = serde_json::from_slice::<UsedTokensFile>(&bytes) {
        if f.v > USED_TOKENS_VERSION {
            return Err(err(
                ErrorKind::Internal,
                format!(
                    "{} has version {}, newer than this BZZZ reads; upgrade BZZZ",
                    path.display(),
                    f.v
                ),
            ));
        }
        return Ok(f.tokens);
    }
    serde_json::from_slice::<HashMap<String, (u32, u64)>>(&bytes).map_err(|e| {
        err(
            ErrorKind::Internal,
            format!(
                "{} is damaged ({e}); if the join tokens it records have expired, delete it",
                path.display()
            ),
        )
    })
}

/// Encodes the record of token uses (current version).
pub(crate) fn encode_used_tokens(tokens: &HashMap<String, (u32, u64)>) -> Result<Vec<u8>, String> {
    #[derive(Serialize)]
    struct Out<'a> {
        v: u32,
        tokens: &'a HashMap<String, (u32, u64)>,
    }
    serde_json::to_vec(&Out {
        v: USED_TOKENS_VERSION,
        tokens,
    })
    .map_err(|e| e.to_string())
}

/// Overwrites a file with zeros, then deletes it.
pub(crate) fn erase_file(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let zeros = vec![0u8; usize::try_from(meta.len()).unwrap_or(0).min(1 << 20)];
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(path) {
            use std::io::Write;
            let _ = f.write_all(&zeros);
            let _ = f.sync_all();
        }
    }
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!("cannot delete {}: {e}", path.display());
    }
}
