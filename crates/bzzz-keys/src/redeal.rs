//! Re-dealing: the admin key's custody follows membership (SPEC §3).
//!
//! Every change of the holder set or of the threshold makes a new key
//! epoch. The current epoch's threshold of holders ("dealers") each deal
//! their Lagrange-weighted share to the next epoch's holders
//! (Desmedt–Jajodia redistribution, `bzzz_crypto::threshold::redeal_*`;
//! protocol and argument in `docs/security.md`). Steps, run by one
//! coordinator (the Raft leader, or the node an operator asked):
//!
//! 1. [`KeysRequest::RedealDeal`] to each dealer: it checks the plan
//!    ([`Keys::check_plan`]), deals, and answers its public commitment and
//!    one sub-share per new holder, each sealed to that holder's certified
//!    age recipient.
//! 2. [`KeysRequest::RedealReceive`] to each new holder: it checks every
//!    sub-share against its dealer's commitment and every commitment
//!    against the dealer's public share, sums, and stores the result as a
//!    *pending* share (sealed, on disk, named by epoch and commitment).
//! 3. The old epoch's holders threshold-sign the [`KeyEpoch`] record
//!    (each re-checks it), and the coordinator's caller commits it through
//!    Raft ([`Keys::adopt_epoch`] runs on every node when it applies).
//!
//! Atomic: until step 3 commits, the old epoch is the only one that signs,
//! and a re-deal that loses anyone midway is abandoned (its pending
//! shares are never used and are erased once a later epoch commits).
//! After the commit, every node promotes its pending share and erases the
//! old one; signers refuse requests for any epoch but their current one.

use std::collections::BTreeSet;

use bzzz_proto::cluster::PlannedHolder;

use crate::custody::erase_file;

use super::*;

/// This node was removed from its cluster (verified admin-signed removal).
#[derive(Debug, Clone)]
pub struct Removed {
    pub cluster: String,
    pub message: String,
}

/// What asking peers about this node's standing found.
#[derive(Debug)]
pub enum Standing {
    /// A member answered: still a member.
    Member,
    /// A member proved this node was removed.
    Removed(Removed),
    /// No member answered.
    Unknown,
}

/// How long a re-deal step waits for one holder (dealing and receiving take
/// milliseconds; a policy change adds one Argon2id check).
pub const REDEAL_STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Sub-shares for one holder: (dealer index, sealed bytes).
type SealedFor = BTreeMap<u16, Vec<(u16, Vec<u8>)>>;

impl Keys {
    /// The current epoch's share holders by index.
    pub fn holders(&self) -> BTreeMap<u16, NodeId> {
        self.cluster().map(|c| c.holders).unwrap_or_default()
    }

    /// Members in reach that may hold a share: this node and every
    /// connected, proven peer whose certificate names a share index, with
    /// that index and the certificate. Removed members are left out.
    pub(crate) fn certified(&self, c: &Cluster) -> BTreeMap<NodeId, (u16, Signed)> {
        let removed = read(&self.removed).clone();
        let approved = read(&self.approved).clone();
        // A pending member (multi-use token) is entitled once approved.
        let entitled = |mc: &MembershipCert, id: &NodeId| !mc.pending || approved.contains(id);
        let mut out = BTreeMap::new();
        if let Ok(mine) = records::open_cert(&c.cert, &c.admin_public_key, Some(&self.node_id))
            && entitled(&mine, &self.node_id)
            && let Some(i) = mine.share_index
        {
            out.insert(self.node_id.clone(), (i, c.cert.clone()));
        }
        for p in self.peers_in_reach() {
            let id = &p.announcement.node_id;
            if removed.contains_key(id) {
                continue;
            }
            if let Some(cert) = &p.announcement.membership
                && let Ok(mc) = records::open_cert(cert, &c.admin_public_key, Some(id))
                && entitled(&mc, id)
                && let Some(i) = mc.share_index
            {
                out.insert(id.clone(), (i, cert.clone()));
            }
        }
        out
    }

    /// The certificate `node` presents: this node's own, or the one in a
    /// proven peer's signed announcement.
    fn presented_cert(&self, c: &Cluster, node: &NodeId) -> Option<MembershipCert> {
        if *node == self.node_id {
            return records::open_cert(&c.cert, &c.admin_public_key, Some(node)).ok();
        }
        let snap = self.net().ok()?.snapshot();
        let p = snap
            .peers
            .iter()
            .find(|p| p.proven && &p.announcement.node_id == node)?;
        records::open_cert(
            p.announcement.membership.as_ref()?,
            &c.admin_public_key,
            Some(node),
        )
        .ok()
    }

    /// Peers connected to this node that proved membership.
    fn peers_in_reach(&self) -> Vec<bzzz_net::PeerView> {
        self.net()
            .map(|n| {
                n.snapshot()
                    .peers
                    .iter()
                    .filter(|p| p.connected && p.proven)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Share indexes in use or claimed by a certificate in the view.
    pub(crate) fn claimed_indices(&self) -> BTreeSet<u16> {
        let Some(c) = self.cluster() else {
            return BTreeSet::new();
        };
        let mut out: BTreeSet<u16> = c.holders.keys().copied().collect();
        out.extend(c.genesis.holders.iter().map(|h| h.index));
        out.extend(self.certified(&c).values().map(|(i, _)| *i));
        // Pending members' indexes too: they are theirs once approved.
        for p in self.peers_in_reach() {
            if let Some(cert) = &p.announcement.membership
                && let Ok(mc) =
                    records::open_cert(cert, &c.admin_public_key, Some(&p.announcement.node_id))
                && let Some(i) = mc.share_index
            {
                out.insert(i);
            }
        }
        out
    }

    /// The re-deal custody needs now, if any: the holders should be the
    /// current ones less removed members plus every certified member in
    /// reach that holds no share yet, with the policy's threshold
    /// (`policy`: an operator's new policy). `Err` when a re-deal is
    /// needed but a holder of the plan is out of reach.
    pub fn next_plan(&self, policy: Option<KeyPolicy>) -> Result<Option<RedealPlan>, KeysError> {
        let c = self
            .cluster()
            .ok_or_else(|| err(ErrorKind::Conflict, "the cluster is not initialized yet"))?;
        let removed = read(&self.removed).clone();
        let certified = self.certified(&c);
        let mut wanted: BTreeMap<u16, NodeId> = c
            .holders
            .iter()
            .filter(|(_, n)| !removed.contains_key(*n))
            .map(|(i, n)| (*i, n.clone()))
            .collect();
        for (node, (index, _)) in &certified {
            if !wanted.values().any(|n| n == node) && !wanted.contains_key(index) {
                wanted.insert(*index, node.clone());
            }
        }
        let policy = policy.unwrap_or(c.policy);
        let n = u16::try_from(wanted.len()).unwrap_or(u16::MAX);
        let t = policy.threshold(n);
        if wanted == c.holders
            && t == c.threshold
            && policy == c.policy
            && self.missing_shares(&c).is_empty()
        {
            return Ok(None);
        }
        if wanted.is_empty() {
            return Err(err(ErrorKind::Invalid, "no share holder would be left"));
        }
        let mut holders = Vec::new();
        for (index, node) in &wanted {
            let (_, cert) = certified.get(node).ok_or_else(|| {
                err(
                    ErrorKind::Unavailable,
                    format!(
                        "share holder {node} (index {index}) is out of reach: a re-deal needs \
                         every holder of the next epoch; bring it back or remove it"
                    ),
                )
            })?;
            holders.push(PlannedHolder {
                index: *index,
                node_id: node.clone(),
                cert: cert.clone(),
            });
        }
        Ok(Some(RedealPlan {
            epoch: c.epoch + 1,
            policy,
            threshold: t,
            holders,
            dealers: Vec::new(),
        }))
    }

    /// Holders of the current epoch (this node, or peers by their
    /// announcements) that are at this epoch and have lost their share
    /// (not those whose share failed its check: that may be tampering, and
    /// is reported, never replaced automatically).
    pub fn missing_shares(&self, c: &Cluster) -> Vec<NodeId> {
        use bzzz_proto::api::ShareCondition;
        let mut out = Vec::new();
        if c.share_index.is_some() && matches!(&*read(&self.share), ShareState::None) {
            out.push(self.node_id.clone());
        }
        for p in self.peers_in_reach() {
            if let Some(r) = p.announcement.share
                && r.epoch == c.epoch
                && r.state == ShareCondition::Missing
                && c.holders.values().any(|h| h == &p.announcement.node_id)
            {
                out.push(p.announcement.node_id.clone());
            }
        }
        out
    }

    /// Checks a re-deal plan against this node's view of custody: the next
    /// epoch, the policy (unchanged unless `policy_ok`: the operator
    /// asked), the threshold the policy gives, every holder certified and
    /// not removed, every current holder kept unless removed, and the
    /// dealers exactly a threshold of current holders. So no coordinator
    /// can shrink the holder set or lower the threshold on its own.
    pub(crate) fn check_plan(
        &self,
        c: &Cluster,
        plan: &RedealPlan,
        policy_ok: bool,
    ) -> Result<BTreeMap<u16, String>, Refusal> {
        if plan.epoch != c.epoch + 1 {
            return Err(Refusal::new(
                RefusalCode::NotReady,
                format!(
                    "this node is at key epoch {}; the plan makes epoch {}",
                    c.epoch, plan.epoch
                ),
            ));
        }
        if plan.policy != c.policy && !policy_ok {
            return Err(Refusal::new(
                RefusalCode::Invalid,
                "a new key policy needs the operator credential",
            ));
        }
        let n = plan.holders.len();
        if n == 0 || n > bzzz_proto::cluster::MAX_HOLDERS {
            return Err("the plan has no holders or too many".into());
        }
        if plan.threshold != plan.policy.threshold(n as u16) {
            return Err(refusal!(
                "threshold {} does not follow the policy {} for {n} holders",
                plan.threshold,
                plan.policy
            ));
        }
        let removed = read(&self.removed).clone();
        let approved = read(&self.approved).clone();
        let mut recipients = BTreeMap::new();
        let mut nodes = BTreeSet::new();
        for h in &plan.holders {
            if removed.contains_key(&h.node_id) {
                return Err(refusal!("{} was removed from the cluster", h.node_id));
            }
            let mc = records::open_cert(&h.cert, &c.admin_public_key, Some(&h.node_id))
                .map_err(|e| format!("certificate of {}: {e}", h.node_id))?;
            // The certificate must be the one the node itself presents
            // (its signed announcement, or this node's own): a holder that
            // saw a join token could have had a second certificate signed
            // for another node's id with its own age key, to receive that
            // node's sub-shares.
            match self.presented_cert(c, &h.node_id) {
                Some(p)
                    if p.age_recipient == mc.age_recipient && p.share_index == mc.share_index => {}
                Some(_) => {
                    return Err(refusal!(
                        "the plan's certificate of {} is not the one that node presents",
                        h.node_id
                    ));
                }
                None => {
                    return Err(Refusal::new(
                        RefusalCode::NotReady,
                        format!(
                            "{} is not in this node's view: its certificate cannot be checked",
                            h.node_id
                        ),
                    ));
                }
            }
            let holds_now = c.holders.get(&h.index) == Some(&h.node_id);
            if mc.pending && !holds_now && !approved.contains(&h.node_id) {
                return Err(refusal!(
                    "{} joined with a multi-use token and is not approved as a share holder",
                    h.node_id
                ));
            }
            if mc.share_index != Some(h.index) && c.holders.get(&h.index) != Some(&h.node_id) {
                return Err(refusal!(
                    "{} is not entitled to share index {}",
                    h.node_id,
                    h.index
                ));
            }
            let r = mc
                .age_recipient
                .ok_or_else(|| format!("certificate of {} names no age recipient", h.node_id))?;
            if recipients.insert(h.index, r).is_some() || !nodes.insert(h.node_id.clone()) {
                return Err(refusal!("index {} or its node is listed twice", h.index));
            }
        }
        for (i, node) in &c.holders {
            if !removed.contains_key(node)
                && !plan
                    .holders
                    .iter()
                    .any(|h| h.index == *i && &h.node_id == node)
            {
                return Err(refusal!(
                    "the plan drops holder {node} (index {i}), which was not removed"
                ));
            }
        }
        let dealers: BTreeSet<u16> = plan.dealers.iter().copied().collect();
        if dealers.len() != plan.dealers.len()
            || dealers.len() != usize::from(c.threshold.max(1))
            || dealers.iter().any(|d| !c.holders.contains_key(d))
        {
            return Err(refusal!(
                "the dealers must be {} distinct holders of epoch {}",
                c.threshold,
                c.epoch
            ));
        }
        Ok(recipients)
    }

    /// Runs a re-deal to `plan` and returns the signed key epoch record,
    /// ready to commit through Raft. `operator`: the operator's key, when
    /// the plan changes the policy (it authorizes the new policy for this
    /// epoch).
    pub async fn run_redeal(
        &self,
        mut plan: RedealPlan,
        operator: Option<&OperatorKey>,
    ) -> Result<Signed, KeysError> {
        let _one = self.redealing.lock().await;
        let c = self
            .cluster()
            .ok_or_else(|| err(ErrorKind::Conflict, "the cluster is not initialized yet"))?;
        if plan.epoch != c.epoch + 1 {
            return Err(err(
                ErrorKind::Conflict,
                format!("key epoch {} is already past", plan.epoch - 1),
            ));
        }
        // Dealers: a threshold of current holders in reach, this node first.
        let t = usize::from(c.threshold.max(1));
        let removed = read(&self.removed).clone();
        // Holders in reach that can deal: their announcement does not say
        // their share of this epoch is missing or invalid (older peers
        // announce nothing: they are tried).
        self.net()?; // "the network is not started yet"
        let connected: BTreeSet<NodeId> = self
            .peers_in_reach()
            .iter()
            .filter(|p| {
                p.announcement.share.is_none_or(|r| {
                    r.epoch != c.epoch || r.state == bzzz_proto::api::ShareCondition::Valid
                })
            })
            .map(|p| p.announcement.node_id.clone())
            .collect();
        let mut dealers: Vec<(u16, NodeId)> = Vec::new();
        if let (Some(i), Ok(_)) = (c.share_index, self.valid_share()) {
            dealers.push((i, self.node_id.clone()));
        }
        for (i, node) in &c.holders {
            if dealers.len() >= t {
                break;
            }
            if *node != self.node_id && connected.contains(node) && !removed.contains_key(node) {
                dealers.push((*i, node.clone()));
            }
        }
        if dealers.len() < t {
            return Err(err(
                ErrorKind::Unavailable,
                format!(
                    "{} share holders reachable, {t} needed to re-deal the admin key",
                    dealers.len()
                ),
            ));
        }
        plan.dealers = dealers.iter().map(|(i, _)| *i).collect();
        let session = random_hex(16)?;
        let auth = match operator {
            Some(k) => Some(k.authorize(
                &c.genesis.cluster,
                bzzz_proto::cluster::POLICY_AUTH_KIND,
                &bzzz_proto::cluster::policy_auth_target(plan.epoch, plan.policy),
            )?),
            None => None,
        };
        hook("deal").await;

        // Step 1: deal.
        let step1 = futures::future::join_all(dealers.iter().map(|(_, node)| {
            self.ask_within(
                node,
                KeysRequest::RedealDeal {
                    session: session.clone(),
                    plan: plan.clone(),
                    coordinator_cert: Some(c.cert.clone()),
                    operator: auth.clone(),
                    current: c.epoch_record.clone(),
                },
            )
        }))
        .await;
        let mut commitments = BTreeMap::new();
        let mut sealed_for: SealedFor = BTreeMap::new();
        let mut token_uses: BTreeMap<String, (u32, u64)> = BTreeMap::new();
        for ((i, node), r) in dealers.iter().zip(step1) {
            match r {
                KeysResponse::Dealt {
                    index,
                    commitment,
                    sealed,
                    token_uses: uses,
                } if index == *i => {
                    commitments.insert(index, commitment);
                    for (target, bytes) in sealed {
                        sealed_for.entry(target).or_default().push((index, bytes));
                    }
                    for (id, n, exp) in uses.into_iter().take(4096) {
                        let e = token_uses.entry(id).or_insert((0, exp));
                        e.0 = e.0.max(n);
                    }
                }
                KeysResponse::Refused { reason, code, .. } => {
                    return Err(KeysError {
                        refusal: Some(code),
                        ..err(
                            ErrorKind::Peer,
                            format!("dealer {node} (share {i}) refused: {reason}"),
                        )
                    });
                }
                other => {
                    return Err(err(
                        ErrorKind::Peer,
                        format!("dealer {node} (share {i}) answered {}", answer_kind(&other)),
                    ));
                }
            }
        }
        let group = threshold::redeal_group(&c.group, &commitments, plan.threshold)
            .map_err(|e| err(ErrorKind::Peer, e.to_string()))?;
        let commitment = group
            .commitment_hex()
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        hook("receive").await;

        // Step 2: every new holder checks, sums and keeps its pending share.
        let uses: Vec<(String, u32, u64)> = token_uses
            .into_iter()
            .map(|(id, (n, exp))| (id, n, exp))
            .collect();
        let step2 = futures::future::join_all(plan.holders.iter().map(|h| {
            self.ask_within(
                &h.node_id,
                KeysRequest::RedealReceive {
                    session: session.clone(),
                    plan: plan.clone(),
                    current: c.epoch_record.clone(),
                    commitments: commitments.clone(),
                    sealed: sealed_for.get(&h.index).cloned().unwrap_or_default(),
                    token_uses: uses.clone(),
                    coordinator_cert: Some(c.cert.clone()),
                },
            )
        }))
        .await;
        for (h, r) in plan.holders.iter().zip(step2) {
            match r {
                KeysResponse::Received { index, epoch }
                    if index == h.index && epoch == plan.epoch => {}
                KeysResponse::Refused { reason, code, .. } => {
                    return Err(KeysError {
                        refusal: Some(code),
                        ..err(
                            ErrorKind::Peer,
                            format!(
                                "new holder {} (share {}) refused: {reason}",
                                h.node_id, h.index
                            ),
                        )
                    });
                }
                other => {
                    return Err(err(
                        ErrorKind::Peer,
                        format!(
                            "new holder {} (share {}) answered {}",
                            h.node_id,
                            h.index,
                            answer_kind(&other)
                        ),
                    ));
                }
            }
        }
        hook("sign").await;

        // Step 3: the old epoch signs the new one.
        let record = KeyEpoch {
            v: RECORD_VERSION,
            cluster: c.genesis.cluster.clone(),
            admin_public_key: c.genesis.admin_public_key.clone(),
            epoch: plan.epoch,
            policy: plan.policy,
            threshold: plan.threshold,
            holders: plan
                .holders
                .iter()
                .map(|h| ShareHolder {
                    index: h.index,
                    node_id: h.node_id.clone(),
                })
                .collect(),
            commitment,
            dealt_by: commitments,
            issued_at: unix_now(),
        };
        let text =
            records::body_text(&record).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let purpose = SignPurpose::KeyEpoch {
            body: text.clone(),
            certs: plan.holders.iter().map(|h| h.cert.clone()).collect(),
            operator: auth,
        };
        let signed = self.sign_record(Domain::KeyEpoch, text, purpose).await?;
        info!(
            epoch = plan.epoch,
            threshold = plan.threshold,
            holders = plan.holders.len(),
            "re-dealt the admin key; the new epoch is ready to commit"
        );
        Ok(signed)
    }

    /// [`Keys::ask`] with the re-deal's time limit: a holder that died a
    /// moment ago may still look connected (QUIC notices late), and a
    /// re-deal must not wait the keys protocol's 20 s for it.
    async fn ask_within(&self, node: &NodeId, req: KeysRequest) -> KeysResponse {
        match tokio::time::timeout(REDEAL_STEP_TIMEOUT, self.ask(node, req)).await {
            Ok(r) => r,
            Err(_) => KeysResponse::refused(
                RefusalCode::NotReady,
                format!("no answer within {REDEAL_STEP_TIMEOUT:?}"),
            ),
        }
    }

    /// Re-deal step 1 on a dealer.
    pub(crate) fn redeal_deal_step(
        &self,
        peer: &NodeId,
        plan: &RedealPlan,
        operator: Option<&OperatorAuth>,
    ) -> Result<KeysResponse, Refusal> {
        let c = self.cluster().ok_or_else(not_initialized)?;
        let share = self.valid_share()?;
        let policy_ok = self.policy_authorized(&c, plan.epoch, plan.policy, operator)?;
        let recipients = self.check_plan(&c, plan, policy_ok)?;
        if !plan.dealers.contains(&share.index()) {
            return Err("this node is not among the dealers".into());
        }
        let new: Vec<u16> = plan.holders.iter().map(|h| h.index).collect();
        let dealt = threshold::redeal_deal(&share, &plan.dealers, &new, plan.threshold)
            .map_err(|e| e.to_string())?;
        let mut sealed = Vec::new();
        for (target, bytes) in &dealt.subshares {
            let r = recipients.get(target).ok_or("missing recipient")?;
            sealed.push((
                *target,
                bzzz_crypto::seal::seal(r, bytes).map_err(|e| e.to_string())?,
            ));
        }
        let token_uses = lock(&self.used_tokens)
            .iter()
            .map(|(id, (n, exp))| (id.clone(), *n, *exp))
            .collect();
        info!(%peer, epoch = plan.epoch, "dealt this node's share to the next key epoch");
        Ok(KeysResponse::Dealt {
            index: share.index(),
            commitment: dealt.commitment,
            sealed,
            token_uses,
        })
    }

    /// Re-deal step 2 on a new holder.
    pub(crate) fn redeal_receive_step(
        &self,
        plan: &RedealPlan,
        current: Option<&Signed>,
        commitments: &BTreeMap<u16, String>,
        sealed: &[(u16, Vec<u8>)],
        token_uses: &[(String, u32, u64)],
    ) -> Result<KeysResponse, Refusal> {
        // A node that missed the current epoch's commit catches up from
        // the coordinator's copy (it checks the admin signature).
        if let Some(rec) = current {
            self.adopt_epoch(rec).map_err(Refusal::from)?;
        }
        let c = self.cluster().ok_or_else(not_initialized)?;
        // Receivers check the plan but not the policy: a policy change is
        // authorized by the dealers and again by the epoch's signers.
        self.check_plan(&c, plan, true)?;
        let me = plan
            .holders
            .iter()
            .find(|h| h.node_id == self.node_id)
            .ok_or("this node is not a holder of the plan")?;
        if sealed.len() != commitments.len() || sealed.len() > bzzz_proto::cluster::MAX_HOLDERS {
            return Err("one sub-share per dealer is expected".into());
        }
        let mut subs = BTreeMap::new();
        for (dealer, bytes) in sealed {
            subs.insert(*dealer, self.age.open(bytes).map_err(|e| e.to_string())?);
        }
        let (bytes, group) =
            threshold::redeal_receive(&c.group, commitments, &subs, me.index, plan.threshold)
                .map_err(|e| e.to_string())?;
        let commitment = group.commitment_hex().map_err(|e| e.to_string())?;
        let sealed_share =
            bzzz_crypto::seal::seal(&self.age.recipient(), &bytes).map_err(|e| e.to_string())?;
        self.prune_pending(plan.epoch);
        write_private(
            &self
                .data_dir
                .join(pending_share_file(plan.epoch, &commitment)),
            &self.at_rest(&sealed_share)?,
        )
        .map_err(|e| format!("cannot store the pending share: {e}"))?;
        self.merge_token_uses(token_uses)?;
        info!(
            epoch = plan.epoch,
            index = me.index,
            "received a share of the next key epoch (pending until it commits)"
        );
        Ok(KeysResponse::Received {
            index: me.index,
            epoch: plan.epoch,
        })
    }

    /// Keeps at most the 3 newest pending shares of `epoch` (re-deals that
    /// lost the race or were abandoned; bounds what a misbehaving
    /// coordinator can make a holder write).
    fn prune_pending(&self, epoch: u64) {
        let prefix = format!("share.e{epoch}.");
        let Ok(dir) = std::fs::read_dir(&self.data_dir) else {
            return;
        };
        let mut pending: Vec<(std::time::SystemTime, std::path::PathBuf)> = dir
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(&prefix) && n.ends_with(".pending")
            })
            .map(|e| {
                let t = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (t, e.path())
            })
            .collect();
        pending.sort();
        let excess = pending.len().saturating_sub(2);
        for (_, p) in pending.into_iter().take(excess) {
            erase_file(&p);
        }
    }

    fn merge_token_uses(&self, uses: &[(String, u32, u64)]) -> Result<(), String> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut used = lock(&self.used_tokens);
        let now = unix_now();
        for (id, n, exp) in uses.iter().take(4096) {
            if *exp + 60 <= now || id.len() > 64 {
                continue;
            }
            let e = used.entry(id.clone()).or_insert((0, *exp));
            e.0 = e.0.max(*n);
        }
        let bytes = custody::encode_used_tokens(&used)?;
        write_private(&self.data_dir.join(USED_TOKENS_FILE), &bytes)
            .map_err(|e| format!("cannot record token uses: {e}"))
    }

    /// Whether the operator authorized a change of the threshold policy
    /// to `policy` at `epoch` (no change needs no authorization; a bad
    /// authorization is refused).
    pub(crate) fn policy_authorized(
        &self,
        c: &Cluster,
        epoch: u64,
        policy: KeyPolicy,
        operator: Option<&OperatorAuth>,
    ) -> Result<bool, Refusal> {
        match operator {
            Some(a) if policy != c.policy => {
                self.check_operator_auth(
                    c,
                    a,
                    bzzz_proto::cluster::POLICY_AUTH_KIND,
                    &bzzz_proto::cluster::policy_auth_target(epoch, policy),
                    false,
                )?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Checks a key epoch record a signer is asked to sign: the next epoch,
    /// holders and threshold as [`Keys::check_plan`] requires (`certs`
    /// bind the holders), and the commitment follows from the dealers'
    /// commitments and this epoch's.
    pub(crate) fn check_epoch_body(
        &self,
        c: &Cluster,
        body: &str,
        certs: &[Signed],
        operator: Option<&OperatorAuth>,
    ) -> Result<Vec<u8>, Refusal> {
        let e: KeyEpoch = serde_json::from_str(body).map_err(|e| format!("key epoch: {e}"))?;
        e.validate()?;
        if e.cluster != c.genesis.cluster || e.admin_public_key != c.genesis.admin_public_key {
            return Err("key epoch is for another cluster".into());
        }
        if certs.len() != e.holders.len() {
            return Err("one certificate per holder is expected".into());
        }
        let plan = RedealPlan {
            epoch: e.epoch,
            policy: e.policy,
            threshold: e.threshold,
            holders: e
                .holders
                .iter()
                .zip(certs)
                .map(|(h, cert)| PlannedHolder {
                    index: h.index,
                    node_id: h.node_id.clone(),
                    cert: cert.clone(),
                })
                .collect(),
            dealers: e.dealt_by.keys().copied().collect(),
        };
        let policy_ok = self.policy_authorized(c, e.epoch, e.policy, operator)?;
        self.check_plan(c, &plan, policy_ok)?;
        let group = threshold::redeal_group(&c.group, &e.dealt_by, e.threshold)
            .map_err(|e| e.to_string())?;
        if group.commitment_hex().map_err(|e| e.to_string())? != e.commitment {
            return Err("the commitment does not follow from the dealers' commitments".into());
        }
        Ok(records::signing_bytes(Domain::KeyEpoch, body.as_bytes()))
    }

    /// Adopts a committed key epoch (from the Raft state, or a peer's copy
    /// of it): promotes this node's pending share of it, or drops its share
    /// when it holds none in the new epoch, and erases every older share.
    /// Returns whether anything changed.
    pub fn adopt_epoch(&self, record: &Signed) -> Result<bool, String> {
        let _installing = lock(&self.installing);
        let Some(c) = self.cluster() else {
            return Ok(false);
        };
        let e = records::open_epoch(record, &c.admin_public_key, &c.genesis.cluster)
            .map_err(|e| format!("key epoch record: {e}"))?;
        if e.epoch <= c.epoch {
            return Ok(false);
        }
        let next = self.check_records(&c.genesis_signed, &c.cert, None, None, Some(record))?;
        let share = match next.share_index {
            None => ShareState::None,
            Some(i) => {
                let pending = self
                    .data_dir
                    .join(pending_share_file(e.epoch, &e.commitment));
                match std::fs::read(&pending) {
                    Ok(sealed) => {
                        let s = self.open_share_at_rest(&sealed, i, &next.group);
                        if let ShareState::Valid(_) = s {
                            std::fs::rename(&pending, self.data_dir.join(share_file(e.epoch)))
                                .map_err(|e| format!("cannot keep the new share: {e}"))?;
                        }
                        s
                    }
                    Err(_) => {
                        warn!(
                            epoch = e.epoch,
                            "this node holds share {i} of the new key epoch but never received it; \
                             the leader re-deals"
                        );
                        ShareState::None
                    }
                }
            }
        };
        self.write_cluster_file(&next)?;
        *write(&self.share) = share;
        let (epoch, t, n) = (next.epoch, next.threshold, next.holders.len());
        self.set_cluster(next);
        self.publish_share();
        self.erase_shares_before(epoch);
        // Signing sessions of the old epoch are void.
        lock(&self.sessions).clear();
        info!(
            epoch,
            threshold = t,
            holders = n,
            "key epoch committed; shares of earlier epochs erased"
        );
        Ok(true)
    }

    /// The removed members (from the Raft state). When this node is among
    /// them, it erases its share and records the removal; the caller
    /// stops the node.
    pub fn set_removed(&self, removed: BTreeMap<NodeId, Signed>) -> Option<Removed> {
        let mine = removed.get(&self.node_id).cloned();
        let ids: BTreeSet<NodeId> = removed.keys().cloned().collect();
        *write(&self.removed) = removed;
        self.local_tx.send_if_modified(|l| {
            if l.revoked == ids {
                false
            } else {
                l.revoked = ids;
                true
            }
        });
        mine.and_then(|change| self.mark_removed(&change).ok())
    }

    /// The pending members the operator approved as share holders (from
    /// the Raft state), each with its signed approval: only approvals
    /// that check out here (admin signature, this cluster, the node
    /// named) count, so a forged state grants no share.
    pub fn set_approved(&self, approved: &BTreeMap<NodeId, Signed>) {
        let Some(c) = self.cluster() else {
            return;
        };
        let ok: BTreeSet<NodeId> = approved
            .iter()
            .filter(|(node, rec)| {
                records::open_admin_change(rec, &c.admin_public_key, &c.genesis.cluster)
                    .is_ok_and(|ch| {
                        matches!(&ch.action,
                            bzzz_proto::cluster::AdminAction::ApproveMember { node_id } if node_id == *node)
                    })
            })
            .map(|(n, _)| n.clone())
            .collect();
        let mut held = write(&self.approved);
        if *held != ok {
            *held = ok;
        }
    }

    /// Members in reach admitted by a multi-use token and not approved:
    /// members that hold no share until the operator approves them.
    pub fn pending_members(&self) -> BTreeSet<NodeId> {
        let Some(c) = self.cluster() else {
            return BTreeSet::new();
        };
        let approved = read(&self.approved).clone();
        let mut out = BTreeSet::new();
        if let Ok(mine) = records::open_cert(&c.cert, &c.admin_public_key, Some(&self.node_id))
            && mine.pending
            && !approved.contains(&self.node_id)
        {
            out.insert(self.node_id.clone());
        }
        for p in self.peers_in_reach() {
            let id = &p.announcement.node_id;
            if let Some(cert) = &p.announcement.membership
                && let Ok(mc) = records::open_cert(cert, &c.admin_public_key, Some(id))
                && mc.pending
                && !approved.contains(id)
            {
                out.insert(id.clone());
            }
        }
        out
    }

    /// Nodes removed from the cluster.
    pub fn removed(&self) -> BTreeMap<NodeId, Signed> {
        read(&self.removed).clone()
    }

    /// Checks an admin-signed removal of this node; erases its shares and
    /// writes [`REMOVED_FILE`] (later starts refuse to run).
    pub fn mark_removed(&self, change: &Signed) -> Result<Removed, String> {
        let c = self.cluster().ok_or("not a member")?;
        let ch = records::open_admin_change(change, &c.admin_public_key, &c.genesis.cluster)
            .map_err(|e| e.to_string())?;
        match &ch.action {
            bzzz_proto::cluster::AdminAction::RemoveMember { node_id }
                if *node_id == self.node_id => {}
            _ => return Err("the record does not remove this node".into()),
        }
        *write(&self.share) = ShareState::None;
        self.publish_share();
        self.erase_shares_before(u64::MAX);
        erase_file(&self.data_dir.join(share_file(c.epoch)));
        let text = serde_json::json!({
            "cluster": c.genesis.cluster,
            "removed_at": ch.issued_at,
            "change": change,
        });
        write_private(
            &self.data_dir.join(REMOVED_FILE),
            text.to_string().as_bytes(),
        )
        .map_err(|e| format!("cannot record the removal: {e}"))?;
        let message = format!(
            "this node was removed from cluster '{}' by its operator; it has erased its \
             admin key share and stops (to use this machine again, give it a new data dir \
             and a join token)",
            c.genesis.cluster
        );
        error!("{message}");
        Ok(Removed {
            cluster: c.genesis.cluster.clone(),
            message,
        })
    }

    /// Asks up to three connected members whether this node still belongs
    /// (a node removed while it was away learns it here, with proof).
    pub async fn check_standing(&self) -> Standing {
        let Ok(net) = self.net() else {
            return Standing::Unknown;
        };
        if !self.is_initialized() {
            return Standing::Unknown;
        }
        let peers: Vec<NodeId> = net
            .snapshot()
            .peers
            .iter()
            .filter(|p| p.connected)
            .map(|p| p.announcement.node_id.clone())
            .take(3)
            .collect();
        // At once, each for at most 3 s: a peer that just died may still
        // look connected.
        let answers = futures::future::join_all(peers.iter().map(|p| {
            tokio::time::timeout(
                Duration::from_secs(3),
                wire::request(net, p, &KeysRequest::Standing),
            )
        }))
        .await;
        let mut out = Standing::Unknown;
        for (p, a) in peers.iter().zip(answers) {
            match a {
                Ok(Ok(KeysResponse::Removed { change })) => match self.mark_removed(&change) {
                    Ok(r) => return Standing::Removed(r),
                    Err(e) => warn!(peer = %p, "a peer claims this node was removed: {e}"),
                },
                Ok(Ok(KeysResponse::Standing { .. })) => out = Standing::Member,
                _ => {}
            }
        }
        out
    }
}

fn answer_kind(r: &KeysResponse) -> &'static str {
    match r {
        KeysResponse::Installed => "installed",
        KeysResponse::Certificate { .. } => "a certificate",
        KeysResponse::Committed { .. } => "committed",
        KeysResponse::SignatureShare { .. } => "a signature share",
        KeysResponse::Joined(_) => "joined",
        KeysResponse::Deltas { .. } => "deltas",
        KeysResponse::Sigma { .. } => "a sigma",
        KeysResponse::Enrolled { .. } => "enrolled",
        KeysResponse::Dealt { .. } => "dealt (wrong index)",
        KeysResponse::Received { .. } => "received (wrong index or epoch)",
        KeysResponse::Standing { .. } => "standing",
        KeysResponse::Removed { .. } => "removed",
        KeysResponse::Refused { .. } => "refused",
    }
}

/// Fault injection for tests: with `TEST_REDEAL_FAULT=DIR`, a coordinator
/// reaching STEP (`deal`, `receive` or `sign`) while `DIR/arm` holds STEP
/// removes `arm`, creates `DIR/at` and waits (at most 20 s) until the test
/// deletes it, so the test can kill a holder exactly between two steps.
/// Inert unless set.
async fn hook(step: &str) {
    let Ok(dir) = std::env::var("TEST_REDEAL_FAULT") else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    let arm = dir.join("arm");
    if std::fs::read_to_string(&arm).ok().as_deref() != Some(step) {
        return;
    }
    let _ = std::fs::remove_file(&arm);
    let at = dir.join("at");
    if std::fs::write(&at, step).is_err() {
        return;
    }
    let until = Instant::now() + Duration::from_secs(20);
    while at.exists() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
