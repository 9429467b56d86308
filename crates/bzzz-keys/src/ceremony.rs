//! The setup ceremony: master key shown once, confirmation, split, sealing and delivery of shares.

use super::*;

impl Keys {
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
            return Err(err(ErrorKind::Conflict, "this node is already initialized"));
        }
        validate_cluster_name(&params.cluster)
            .map_err(|e| err(ErrorKind::Invalid, format!("cluster name: {e}")))?;
        self.setup_members(&params.holders)?;
        let members = 1 + params.holders.len() as u16;
        let shares = params.shares.unwrap_or(members);
        if shares > members && params.holders.is_empty() {
            return Err(err(
                ErrorKind::Invalid,
                format!(
                    "{shares} shares need {} other holders, named one by one with --holder \
                     NODE_ID (API: \"holders\"); only named nodes hold shares. {}",
                    shares - 1,
                    self.peers_in_view()
                ),
            ));
        }
        if shares == 0 || shares > members {
            return Err(err(
                ErrorKind::Invalid,
                format!(
                    "shares must be between 1 and the holders named plus this node ({members})"
                ),
            ));
        }
        let threshold = params
            .threshold
            .unwrap_or_else(|| KeyPolicy::Majority.threshold(shares));
        if threshold == 0 || threshold > shares {
            return Err(err(
                ErrorKind::Invalid,
                format!("threshold must be between 1 and the share count ({shares})"),
            ));
        }
        if threshold == 1 && shares > 1 {
            return Err(err(
                ErrorKind::Invalid,
                format!(
                    "threshold 1 with {shares} shares would give each of {shares} nodes the \
                     whole admin key; use 2 or more"
                ),
            ));
        }
        let master = match &params.recover_from {
            Some(m) => m.clone(),
            None => MasterKey::generate().map_err(|e| err(ErrorKind::Internal, e.to_string()))?,
        };
        let positions = confirm_positions()?;
        let id = random_hex(16)?;
        let started = SetupStarted {
            setup_id: id.clone(),
            mnemonic: WireSecret::new(master.mnemonic().to_string()),
            master_key_hex: WireSecret::new(master.hex().to_string()),
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
            return Err(err(ErrorKind::NotFound, "no setup in progress"));
        };
        if pending.revealed {
            return Err(err(
                ErrorKind::Gone,
                "the master key was already shown and cannot be shown again",
            ));
        }
        pending.revealed = true;
        Ok(SetupStarted {
            setup_id: pending.id.clone(),
            mnemonic: WireSecret::new(pending.master.mnemonic().to_string()),
            master_key_hex: WireSecret::new(pending.master.hex().to_string()),
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
                return Err(err(ErrorKind::NotFound, "no setup in progress; start one"));
            };
            if p.id != setup_id {
                return Err(err(
                    ErrorKind::Conflict,
                    "this setup was replaced by a newer one; use the newest words",
                ));
            }
            if p.created.elapsed() >= PENDING_SETUP_TTL {
                *guard = None;
                return Err(err(ErrorKind::Gone, "the setup expired; start a new one"));
            }
            let mnemonic = p.master.mnemonic();
            let all: Vec<&str> = mnemonic.split(' ').collect();
            for pos in &p.positions {
                let given = words.get(pos).map(|w| w.trim().to_lowercase());
                if given.as_deref() != all.get(pos - 1).copied() {
                    return Err(err(
                        ErrorKind::Invalid,
                        format!("word #{pos} does not match; check your copy of the words"),
                    ));
                }
            }
            if self.is_initialized() {
                return Err(err(ErrorKind::Conflict, "this node is already initialized"));
            }
            guard
                .take()
                .ok_or_else(|| err(ErrorKind::NotFound, "no setup in progress"))?
        };
        self.create_cluster(pending).await
    }

    pub(crate) async fn create_cluster(&self, p: PendingSetup) -> Result<SetupDone, KeysError> {
        let members = self
            .setup_members(&p.params.holders)
            .map_err(|e| KeysError {
                kind: ErrorKind::Conflict,
                message: format!("{}; start again", e.message),
                ..e
            })?;
        let operator = self
            .derive_operator_key(&p.params.cluster, p.params.operator_password.clone())
            .await?
            .public_hex();
        // The cluster CA, endorsed by being in the genesis record.
        let (ca_cert, ca_key) = bzzz_crypto::ca::make_ca(&p.params.cluster, &[])
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let ca_fingerprint = bzzz_crypto::ca::fingerprint(&ca_cert)
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let (holders, bundles) = deal(
            &p.master,
            &p.params.cluster,
            p.threshold,
            p.shares,
            operator,
            &members,
            Some((&ca_cert, &ca_key)),
        )?;
        drop(ca_key);
        let (name, threshold, shares) = (p.params.cluster.clone(), p.threshold, p.shares);
        let admin_hex = hex::encode(p.master.admin_key().public());
        // The whole key is no longer needed: forget it before any network IO.
        drop(p);

        let mut undelivered = Vec::new();
        let mut remote = Vec::new();
        for (node, bundle) in bundles {
            if node == self.node_id {
                if let Err(e) = self.install(&bundle, None) {
                    return Err(err(
                        ErrorKind::Internal,
                        format!("cannot initialize this node: {e}"),
                    ));
                }
            } else {
                let net = self.net()?.clone();
                remote.push(async move {
                    let r = wire::request(&net, &node, &KeysRequest::Install(bundle)).await;
                    (node, r)
                });
            }
        }
        for (node, r) in futures::future::join_all(remote).await {
            let problem = match r {
                Ok(KeysResponse::Installed) => None,
                Ok(KeysResponse::Refused { reason, .. }) => Some(reason),
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
            cluster = %name,
            admin_public_key = %admin_hex,
            threshold,
            shares,
            "cluster initialized; the master key was forgotten"
        );
        Ok(SetupDone {
            cluster: name,
            admin_public_key: admin_hex,
            threshold,
            shares,
            holders,
            undelivered,
            ca_fingerprint: Some(ca_fingerprint),
        })
    }
}

/// Distinct 1-based word positions to re-type, in order.
pub(crate) fn confirm_positions() -> Result<Vec<usize>, KeysError> {
    let mut out = Vec::new();
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| err(ErrorKind::Internal, format!("random number generator: {e}")))?;
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

/// The holders and each member's bundle.
pub(crate) type Dealt = (Vec<ShareHolder>, Vec<(NodeId, InstallBundle)>);

/// Deals the admin key of `master`: splits it `threshold` of `shares`
/// among the first `shares` of `members` (node id, age recipient), signs
/// the genesis record (with the cluster CA's certificate, `ca`) and each
/// member's certificate, and seals each share (and the CA key) to its
/// holder. The whole key exists only inside this call.
pub(crate) fn deal(
    master: &MasterKey,
    cluster: &str,
    threshold: u16,
    shares: u16,
    operator_public_key: String,
    members: &[(NodeId, String)],
    ca: Option<(&str, &bzzz_crypto::ca::TlsKey)>,
) -> Result<Dealt, KeysError> {
    let admin = master.admin_key();
    let sharing = admin
        .split(threshold, shares)
        .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
    let holders: Vec<ShareHolder> = members
        .iter()
        .take(usize::from(shares))
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
        cluster: cluster.to_owned(),
        admin_public_key: admin_hex.clone(),
        threshold,
        shares,
        holders: holders.clone(),
        policy: Some(policy_for(threshold, shares)),
        commitment: sharing.commitment.clone(),
        operator_verifier: String::new(),
        operator_public_key: Some(operator_public_key),
        created_at: now,
        ca_cert: ca.map(|(c, _)| c.to_owned()),
    };
    let sign = |domain: Domain, body: &str| {
        records::signed(
            body.to_owned(),
            &admin.sign(&records::signing_bytes(domain, body.as_bytes())),
        )
    };
    let gtext =
        records::body_text(&genesis).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
    let genesis_signed = sign(Domain::Genesis, &gtext);
    let mut bundles = Vec::new();
    for (node, recipient) in members {
        let index = holders.iter().find(|h| &h.node_id == node).map(|h| h.index);
        let cert = MembershipCert {
            v: RECORD_VERSION,
            cluster: genesis.cluster.clone(),
            admin_public_key: admin_hex.clone(),
            node_id: node.clone(),
            issued_at: now,
            share_index: index,
            age_recipient: Some(recipient.clone()),
            pending: false,
        };
        let ctext =
            records::body_text(&cert).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let sealed = match index {
            Some(i) => {
                let (_, secret) = sharing
                    .shares
                    .iter()
                    .find(|(j, _)| *j == i)
                    .ok_or_else(|| err(ErrorKind::Internal, "share missing"))?;
                Some(
                    bzzz_crypto::seal::seal(recipient, secret)
                        .map_err(|e| err(ErrorKind::Internal, e.to_string()))?,
                )
            }
            None => None,
        };
        let sealed_ca_key = match (index, ca) {
            (Some(_), Some((_, key))) => Some(
                bzzz_crypto::seal::seal(recipient, key.expose_pem().as_bytes())
                    .map_err(|e| err(ErrorKind::Internal, e.to_string()))?,
            ),
            _ => None,
        };
        bundles.push((
            node.clone(),
            InstallBundle {
                genesis: genesis_signed.clone(),
                cert: sign(Domain::MembershipCert, &ctext),
                sealed_share: sealed,
                share_index: index,
                epoch: None,
                sealed_ca_key,
            },
        ));
    }
    Ok((holders, bundles))
}

/// The policy a setup records: majority when the threshold is the
/// majority of the shares (or no choice exists: one share), else fixed.
pub(crate) fn policy_for(threshold: u16, shares: u16) -> KeyPolicy {
    if threshold == KeyPolicy::Majority.threshold(shares) || threshold < 2 {
        KeyPolicy::Majority
    } else {
        KeyPolicy::Fixed(threshold)
    }
}
