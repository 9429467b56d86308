//! Requests from peers: setup records, signer rounds (approval of a named purpose, commitments, signature shares), admission of joining nodes.

use super::*;

impl Keys {
    // ---- requests from peers (and from this node as a signer) ---------------

    /// Answers one keys-protocol request.
    pub async fn handle(&self, peer: NodeId, req: KeysRequest) -> KeysResponse {
        let refuse = |r: Refusal| r.into_response();
        // A removed member is told so, with the signed removal, whatever it
        // asks.
        if let Some(change) = read(&self.removed).get(&peer).cloned() {
            return KeysResponse::Removed { change };
        }
        match req {
            KeysRequest::Install(bundle) => match self.install(&bundle, None) {
                Ok(()) => KeysResponse::Installed,
                Err(e) => {
                    warn!(%peer, "refused setup records: {e}");
                    refuse(e.into())
                }
            },
            KeysRequest::SignCommit {
                session,
                purpose,
                coordinator_cert,
                epoch,
                current,
                operator_change,
            } => {
                if let Err(e) = self.check_member(&peer, coordinator_cert.as_ref()) {
                    return refuse(e);
                }
                if let Some(rec) = &operator_change
                    && let Err(e) = self.adopt_operator_change(rec)
                {
                    return refuse(Refusal::from(e));
                }
                if let Some(rec) = &current
                    && let Err(e) = self.adopt_epoch(rec)
                {
                    return refuse(Refusal::from(e));
                }
                let mine = self.cluster().map_or(0, |c| c.epoch);
                if epoch != mine {
                    return refuse(Refusal::new(
                        RefusalCode::NotReady,
                        format!(
                            "this signer is at key epoch {mine}; the request is for epoch {epoch}"
                        ),
                    ));
                }
                match self.approve_and_commit(&peer, session, purpose) {
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
            KeysRequest::Enroll { .. }
            | KeysRequest::EnrollDeltas { .. }
            | KeysRequest::EnrollSigma { .. } => refuse(Refusal::new(
                RefusalCode::Invalid,
                "share enrollment was replaced by re-dealing; upgrade this node",
            )),
            KeysRequest::RedealDeal {
                session,
                plan,
                coordinator_cert,
                operator,
                current,
            } => match self
                .check_member(&peer, coordinator_cert.as_ref())
                .and_then(|()| {
                    if let Some(rec) = &current {
                        self.adopt_epoch(rec)?;
                    }
                    self.redeal_deal_step(&peer, &plan, operator.as_ref())
                }) {
                Ok(r) => r,
                Err(e) => {
                    warn!(%peer, %session, "refused to deal: {e}");
                    refuse(e)
                }
            },
            KeysRequest::RedealReceive {
                session,
                plan,
                current,
                commitments,
                sealed,
                token_uses,
                coordinator_cert,
            } => match self
                .check_member(&peer, coordinator_cert.as_ref())
                .and_then(|()| {
                    self.redeal_receive_step(
                        &plan,
                        current.as_ref(),
                        &commitments,
                        &sealed,
                        &token_uses,
                    )
                }) {
                Ok(r) => r,
                Err(e) => {
                    warn!(%peer, %session, "refused a re-dealt share: {e}");
                    refuse(e)
                }
            },
            KeysRequest::IssueCert { spki_der, ips, dns } => {
                if let Err(e) = self.check_member(&peer, None) {
                    return refuse(e);
                }
                match self.issue_cert(&peer, &spki_der, &ips, &dns) {
                    Ok(pem) => KeysResponse::Certificate { pem },
                    Err(e) => {
                        warn!(%peer, "refused a certificate: {e}");
                        refuse(e)
                    }
                }
            }
            KeysRequest::Standing => match self.cluster() {
                Some(c) => KeysResponse::Standing { epoch: c.epoch },
                None => refuse(not_initialized()),
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
    pub(crate) fn check_member(&self, peer: &NodeId, cert: Option<&Signed>) -> Result<(), Refusal> {
        if read(&self.removed).contains_key(peer) {
            return Err(Refusal::new(
                RefusalCode::NotMember,
                "the requester was removed from the cluster",
            ));
        }
        if self.is_member_peer(peer) {
            return Ok(());
        }
        let c = self.cluster().ok_or_else(not_initialized)?;
        match cert {
            Some(cert) if records::open_cert(cert, &c.admin_public_key, Some(peer)).is_ok() => {
                Ok(())
            }
            _ => Err(Refusal::new(
                RefusalCode::NotMember,
                "only cluster members may coordinate admin key operations",
            )),
        }
    }

    pub(crate) fn is_member_peer(&self, peer: &NodeId) -> bool {
        *peer == self.node_id
            || self.net().is_ok_and(|n| {
                n.snapshot()
                    .peers
                    .iter()
                    .any(|p| &p.announcement.node_id == peer && p.proven)
            })
    }

    pub(crate) fn approve_and_commit(
        &self,
        peer: &NodeId,
        session: String,
        purpose: SignPurpose,
    ) -> Result<KeysResponse, Refusal> {
        let c = self.cluster().ok_or_else(not_initialized)?;

        let share = match &*read(&self.share) {
            ShareState::Valid(s) => s.clone(),
            ShareState::Invalid(why) => {
                return Err(refusal!("this node's share failed verification: {why}"));
            }
            ShareState::None => {
                return Err(Refusal::new(
                    RefusalCode::NotReady,
                    "this node holds no share",
                ));
            }
        };
        let now = unix_now();
        let message = match &purpose {
            SignPurpose::Message { message, operator } => {
                let bytes = records::signing_bytes(Domain::OperatorMessage, message);
                self.check_operator_auth(&c, operator, "message", &bytes, true)?;
                bytes
            }
            SignPurpose::JoinToken { body, operator } => {
                let bytes = records::signing_bytes(Domain::JoinToken, body.as_bytes());
                self.check_operator_auth(&c, operator, "join_token", &bytes, true)?;
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
                bytes
            }
            SignPurpose::AdminChange { body, operator } => {
                let bytes = records::signing_bytes(Domain::AdminChange, body.as_bytes());
                self.check_operator_auth(&c, operator, "admin_change", &bytes, true)?;
                let change: bzzz_proto::cluster::AdminChange =
                    serde_json::from_str(body).map_err(|e| format!("admin change: {e}"))?;
                if change.cluster != c.genesis.cluster {
                    return Err("admin change is for another cluster".into());
                }
                match &change.action {
                    bzzz_proto::cluster::AdminAction::PutRole { role } => role.validate()?,
                    bzzz_proto::cluster::AdminAction::SetOperatorKey { public_key } => {
                        bzzz_crypto::access::check_public_hex(public_key)
                            .map_err(|e| format!("new operator key: {e}"))?;
                    }
                    _ => {}
                }
                bytes
            }
            SignPurpose::KeyEpoch {
                body,
                certs,
                operator,
            } => self.check_epoch_body(&c, body, certs, operator.as_ref())?,
            SignPurpose::AuditCheckpoint { body } => {
                let cp: bzzz_proto::access::AuditCheckpoint =
                    serde_json::from_str(body).map_err(|e| format!("checkpoint: {e}"))?;
                cp.validate()?;
                if cp.cluster != c.genesis.cluster || cp.v != bzzz_proto::cluster::RECORD_VERSION {
                    return Err("checkpoint is for another cluster or version".into());
                }
                // Its time decides when the next one is due: it must be
                // now (60 s of clock skew either way).
                if cp.time_ms.abs_diff(now.saturating_mul(1000)) > 60_000 {
                    return Err("checkpoint time is not now".into());
                }
                let holds = self
                    .audit_witness
                    .get()
                    .is_some_and(|w| w(cp.seq, &cp.hash));
                if !holds {
                    return Err(refusal!(
                        "this node's audit chain holds no entry {} with hash {}",
                        cp.seq,
                        cp.hash
                    ));
                }
                records::signing_bytes(Domain::AuditCheckpoint, body.as_bytes())
            }
            SignPurpose::Certificate { body, token } => {
                let t = records::check_token(token.expose(), &c.admin_public_key, now)?;
                let cert: MembershipCert =
                    serde_json::from_str(body).map_err(|e| format!("certificate body: {e}"))?;
                if t.uses > 1 && !cert.pending {
                    return Err(
                        "a token that admits more than one node admits pending members only".into(),
                    );
                }
                if let Some(i) = cert.share_index
                    && self.claimed_indices().contains(&i)
                {
                    return Err(refusal!("share index {i} is taken"));
                }
                if cert.cluster != c.genesis.cluster
                    || cert.admin_public_key != c.genesis.admin_public_key
                    || cert.issued_at.abs_diff(now) > 300
                {
                    return Err("certificate body does not match this cluster or time".into());
                }
                // Every holder of the current epoch counts the token's uses,
                // here at approval (round 1), so a holder that saw the token
                // in a request cannot spend it on another node in the time
                // the request's own round 2 takes; any two signing quorums
                // overlap (2t > n under the majority policy) and re-deals
                // carry the counts over.
                self.count_token_use(&t, &cert)?;
                records::signing_bytes(Domain::MembershipCert, body.as_bytes())
            }
        };
        let (nonces, commitments) = threshold::commit(&share).map_err(|e| e.to_string())?;
        let checkpoint = matches!(purpose, SignPurpose::AuditCheckpoint { .. });
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        if checkpoint {
            // A coordinator's newer checkpoint request replaces its older.
            sessions.retain(|_, s| !(s.checkpoint && &s.coordinator == peer));
        }
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
                share: share.clone(),
                epoch: c.epoch,
                checkpoint,
            },
        );
        info!(%peer, purpose = purpose.kind(), "approved an admin signature request");
        Ok(KeysResponse::Committed {
            index: share.index(),
            commitments,
        })
    }

    /// Counts one use of join token `t` for the node `cert` admits, or
    /// none when this signer already counted one for that node with the
    /// same age recipient (a retried join). Persisted before the answer.
    fn count_token_use(&self, t: &JoinTokenBody, cert: &MembershipCert) -> Result<(), Refusal> {
        let mut used = lock(&self.used_tokens);
        let mut nodes = lock(&self.token_nodes);
        let now = unix_now();
        used.retain(|_, (_, exp)| *exp + 60 > now);
        nodes.retain(|id, _| used.contains_key(id));
        let seen = nodes.get(&t.id).and_then(|n| n.get(&cert.node_id));
        match seen {
            Some(r) if *r == cert.age_recipient => return Ok(()),
            Some(_) => {
                return Err(Refusal::new(
                    RefusalCode::TokenUsed,
                    "this join token already admitted that node with another age key",
                ));
            }
            None => {}
        }
        let entry = used.entry(t.id.clone()).or_insert((0, t.expires_at));
        if entry.0 >= t.uses {
            return Err(Refusal::new(
                RefusalCode::TokenUsed,
                format!(
                    "join token was already used ({} of {} uses); create a new one",
                    entry.0, t.uses
                ),
            ));
        }
        entry.0 += 1;
        nodes
            .entry(t.id.clone())
            .or_default()
            .insert(cert.node_id.clone(), cert.age_recipient.clone());
        let bytes = custody::encode_used_tokens(&used)?;
        write_private(&self.data_dir.join(USED_TOKENS_FILE), &bytes)
            .map_err(|e| format!("cannot record the token use: {e}"))?;
        Ok(())
    }

    pub(crate) fn sign_round2(
        &self,
        peer: &NodeId,
        session: &str,
        package: &str,
    ) -> Result<KeysResponse, Refusal> {
        let s = lock(&self.sessions).remove(session).ok_or_else(|| {
            Refusal::new(RefusalCode::Session, "unknown or expired signing session")
        })?;
        if &s.coordinator != peer {
            return Err("signing session belongs to another coordinator".into());
        }
        // Round 2 signs with the share that committed in round 1; if a key
        // epoch was adopted in between, that share is gone: start again.
        let current = self.cluster().map_or(0, |c| c.epoch);
        if current != s.epoch {
            return Err(Refusal::new(
                RefusalCode::Session,
                format!(
                    "the key epoch changed during signing ({} → {current}); sign again",
                    s.epoch
                ),
            ));
        }
        let share = s.share.clone();
        let sig = threshold::sign_share(&share, &s.nonces, package, &s.message)
            .map_err(|e| e.to_string())?;
        Ok(KeysResponse::SignatureShare {
            index: share.index(),
            share: sig,
        })
    }

    /// A node presents a join token: check it, have the admin key sign its
    /// certificate (threshold), and hand it the cluster records.
    pub(crate) async fn admit(
        &self,
        peer: &NodeId,
        token: WireSecret,
        age_recipient: String,
    ) -> Result<InstallBundle, Refusal> {
        let c = self.cluster().ok_or_else(not_initialized)?;
        let body = records::check_token(token.expose(), &c.admin_public_key, unix_now())?;
        bzzz_crypto::seal::parse_recipient(&age_recipient).map_err(|e| e.to_string())?;
        // A random free index: two members admitting at once are unlikely
        // to collide, and signers refuse an index already taken.
        let taken = self.claimed_indices();
        let index = loop {
            let mut b = [0u8; 2];
            getrandom::fill(&mut b).map_err(|e| e.to_string())?;
            let i = u16::from_le_bytes(b).max(1);
            if !taken.contains(&i) {
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
            // A token that admits more than one node was not the
            // operator's act for this node: no share until approved.
            pending: body.uses > 1,
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
            .map_err(|e| {
                // A signer that refused the token decides for the cluster;
                // anything else (a signer down, a session evicted) may pass
                // on a later try.
                let code = e
                    .refusal
                    .filter(|c| c.is_token_refusal())
                    .unwrap_or(RefusalCode::NotReady);
                Refusal::new(code, format!("cannot sign the certificate now: {e}"))
            })?;
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
            epoch: c.epoch_record.clone(),
            sealed_ca_key: None,
        })
    }
}

/// Serves inbound keys requests, each on its own task (a join triggers a
/// threshold signature, which waits on other nodes).
/// At most this many are handled at once; more wait in the swarm's
/// bounded queue, and beyond it peers are answered "busy".
pub async fn serve_inbound(
    keys: Arc<Keys>,
    inbound: mpsc::Receiver<ServiceRequest>,
    tracker: tokio_util::task::TaskTracker,
    cancel: CancellationToken,
) {
    bzzz_net::service::serve(
        inbound,
        MAX_INBOUND,
        tracker,
        cancel,
        move |peer, payload| {
            let keys = keys.clone();
            async move {
                let resp = match wire::decode::<KeysRequest>(&payload) {
                    Ok(request) => keys.handle(peer, request).await,
                    Err(e) => KeysResponse::refused(RefusalCode::Invalid, e),
                };
                Some(wire::encode_response(&resp))
            }
        },
    )
    .await;
}

/// Keys requests handled at once.
pub const MAX_INBOUND: usize = 64;
