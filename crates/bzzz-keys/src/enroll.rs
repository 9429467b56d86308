//! Enrollment: a member's share dealt after setup with FROST's repairable threshold scheme.

use super::*;

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
    pub(crate) fn member_recipient(&self, c: &Cluster, node: &NodeId) -> Option<String> {
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

    pub(crate) fn valid_share(&self) -> Result<Arc<KeyShare>, Refusal> {
        match &*read(&self.share) {
            ShareState::Valid(s) => Ok(s.clone()),
            ShareState::Invalid(why) => {
                Err(refusal!("this node's share failed verification: {why}"))
            }
            ShareState::None => Err(Refusal::new(
                RefusalCode::NotReady,
                "this node holds no share",
            )),
        }
    }

    /// Checks a certificate that asks for a share index: signed, names an
    /// index and a recipient, and the index is free or already its own.
    pub(crate) fn enrollment_cert(
        &self,
        c: &Cluster,
        cert: &Signed,
        owner: Option<&NodeId>,
    ) -> Result<(MembershipCert, u16, String), Refusal> {
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
            return Err(refusal!("share index {index} belongs to {holder}"));
        }
        Ok((mc, index, recipient))
    }

    /// Coordinates the enrollment of a member's share (it joined after
    /// setup, or lost its share): t holders run FROST's repairable
    /// threshold scheme; each one's sigma is sealed to the member.
    pub(crate) async fn coordinate_enrollment(
        &self,
        peer: &NodeId,
        cert: &Signed,
    ) -> Result<KeysResponse, Refusal> {
        let c = self.cluster().ok_or_else(not_initialized)?;
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
            return Err(refusal!(
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
                KeysResponse::Refused { reason, .. } => {
                    return Err(refusal!("helper {node} (share {i}) refused: {reason}"));
                }
                other => return Err(refusal!("helper {node} answered {other:?}")),
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
                KeysResponse::Refused { reason, .. } => {
                    return Err(refusal!("helper {node} (share {i}) refused: {reason}"));
                }
                other => return Err(refusal!("helper {node} answered {other:?}")),
            }
        }
        info!(%peer, index, "enrolled a share (no node saw the admin key)");
        Ok(KeysResponse::Enrolled {
            index,
            sealed_sigmas: sigmas,
        })
    }

    pub(crate) fn enroll_step1(
        &self,
        peer: &NodeId,
        session: String,
        cert: &Signed,
        helpers: &[(u16, NodeId)],
    ) -> Result<KeysResponse, Refusal> {
        let c = self.cluster().ok_or_else(not_initialized)?;

        let share = self.valid_share()?;
        let (mc, index, _) = self.enrollment_cert(&c, cert, None)?;
        let holders = self.holders();
        let mut indices = Vec::new();
        let mut recipients = BTreeMap::new();
        for (i, node) in helpers {
            if holders.get(i) != Some(node) || indices.contains(i) || *i == index {
                return Err(refusal!("helper list is wrong at share {i}"));
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

    pub(crate) fn enroll_step2(
        &self,
        _coordinator: &NodeId,
        _session: &str,
        cert: &Signed,
        sealed_deltas: &[Vec<u8>],
    ) -> Result<KeysResponse, Refusal> {
        let c = self.cluster().ok_or_else(not_initialized)?;

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
            .filter(|p| p.connected && p.proven)
            .map(|p| p.announcement.node_id.clone())
            .collect();
        let mut last = "no member connected".to_owned();
        for m in members {
            let req = KeysRequest::Enroll {
                cert: c.cert.clone(),
            };
            match wire::request(net, &m, &req).await {
                Ok(KeysResponse::Enrolled {
                    index: i,
                    sealed_sigmas,
                }) if i == index => match self.finish_enrollment(&c, index, &sealed_sigmas) {
                    Ok(()) => return EnrollOutcome::Settled,
                    Err(e) => last = format!("enrolled share from {m} refused: {e}"),
                },
                Ok(KeysResponse::Refused { reason, .. }) => last = format!("{m}: {reason}"),
                Ok(other) => last = format!("{m}: unexpected answer {other:?}"),
                Err(e) => last = e.to_string(),
            }
        }
        EnrollOutcome::Pending(last)
    }

    pub(crate) fn finish_enrollment(
        &self,
        c: &Cluster,
        index: u16,
        sealed_sigmas: &[Vec<u8>],
    ) -> Result<(), Refusal> {
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
