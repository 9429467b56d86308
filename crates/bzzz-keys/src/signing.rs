//! Threshold signing, coordinator side: round 1 to candidate holders, the signing package, round 2, aggregation.

use super::*;

impl Keys {
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
            .ok_or_else(|| err(ErrorKind::Conflict, "the cluster is not initialized yet"))?;
        // The current key epoch's holders sign; signers refuse any other
        // epoch's requests.
        let holders: BTreeMap<NodeId, u16> =
            c.holders.iter().map(|(i, n)| (n.clone(), *i)).collect();
        let explicit = signers.is_some();
        let t = usize::from(c.threshold.max(1));
        // Candidates: the given signers exactly, or every holder in reach
        // (this node first); round 1 goes to all of them and the first t
        // that commit sign, so a holder that just died costs nothing.
        let candidates: Vec<(NodeId, u16)> = match signers {
            Some(list) => {
                let mut out = Vec::new();
                for n in list {
                    let i = holders.get(&n).ok_or_else(|| {
                        err(ErrorKind::Invalid, format!("node {n} holds no share"))
                    })?;
                    if !out.iter().any(|(m, _)| m == &n) {
                        out.push((n, *i));
                    }
                }
                if out.len() < t {
                    return Err(err(
                        ErrorKind::Invalid,
                        format!(
                            "{} signers named, {t} needed (key epoch {}: {t} of {})",
                            out.len(),
                            c.epoch,
                            holders.len()
                        ),
                    ));
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
                        ErrorKind::Unavailable,
                        format!(
                            "{} of {} share holders reachable, {t} needed for an admin \
                             signature (key epoch {})",
                            out.len(),
                            holders.len(),
                            c.epoch
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
                    epoch: c.epoch,
                    current: c.epoch_record.clone(),
                    operator_change: self.operator_change(),
                },
            )
        }))
        .await;
        let mut commitments = BTreeMap::new();
        let mut chosen: Vec<(NodeId, u16)> = Vec::new();
        let mut problems = Vec::new();
        let mut refusal = None;
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
                KeysResponse::Refused { reason, code, .. } => {
                    if refusal.is_none() || !code.retryable() {
                        refusal = Some(code);
                    }
                    problems.push(format!("signer {node} (share {index}) refused: {reason}"));
                }
                other => {
                    problems.push(format!("signer {node} (share {index}) answered {other:?}"));
                }
            }
        }
        if (explicit && !problems.is_empty()) || chosen.len() < t.min(candidates.len()) {
            return Err(KeysError {
                refusal,
                ..err(ErrorKind::Peer, problems.join("; "))
            });
        }
        let by_index: BTreeMap<u16, NodeId> = chosen.iter().map(|(n, i)| (*i, n.clone())).collect();
        let package = threshold::signing_package(&commitments, &message)
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;

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
                KeysResponse::Refused { reason, code, .. } => {
                    return Err(KeysError {
                        refusal: Some(code),
                        ..err(
                            ErrorKind::Peer,
                            format!("signer {node} (share {index}) refused: {reason}"),
                        )
                    });
                }
                other => {
                    return Err(err(
                        ErrorKind::Peer,
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
                    ErrorKind::Peer,
                    format!("invalid signature share from {}", named.join(", ")),
                )
            }
            threshold::AggregateError::Other(m) => err(ErrorKind::Invalid, m),
        })?;
        bzzz_crypto::verify_ed25519(&c.admin_public_key, &message, &sig)
            .map_err(|_| err(ErrorKind::Internal, "aggregated signature does not verify"))?;
        Ok(ThresholdSignature {
            signature: hex::encode(sig),
            admin_public_key: c.genesis.admin_public_key.clone(),
            signers: chosen.into_iter().map(|(n, _)| n).collect(),
            signed_bytes_hex: hex::encode(&message),
        })
    }

    /// Sends a request to a node, or handles it locally for this node.
    pub(crate) async fn ask(&self, node: &NodeId, req: KeysRequest) -> KeysResponse {
        if *node == self.node_id {
            return self.handle(node.clone(), req).await;
        }
        let net = match self.net() {
            Ok(n) => n,
            Err(e) => {
                return KeysResponse::refused(RefusalCode::NotReady, e.to_string());
            }
        };
        match wire::request(net, node, &req).await {
            Ok(r) => r,
            Err(e) => KeysResponse::refused(RefusalCode::NotReady, format!("unreachable: {e}")),
        }
    }

    /// The name of the cluster this node belongs to (409 before setup).
    fn cluster_name(&self) -> Result<String, KeysError> {
        self.cluster()
            .map(|c| c.genesis.cluster)
            .ok_or_else(|| err(ErrorKind::Conflict, "the cluster is not initialized yet"))
    }

    /// Signs an operator message (operator-authorized).
    pub async fn sign_message(
        &self,
        message: Vec<u8>,
        operator: &OperatorKey,
        signers: Option<Vec<NodeId>>,
    ) -> Result<ThresholdSignature, KeysError> {
        let bytes = records::signing_bytes(Domain::OperatorMessage, &message);
        let auth = operator.authorize(&self.cluster_name()?, "message", &bytes)?;
        self.threshold_sign(
            SignPurpose::Message {
                message,
                operator: auth,
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
        operator: &OperatorKey,
    ) -> Result<Signed, KeysError> {
        let text =
            records::body_text(change).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let auth = operator.authorize(
            &self.cluster_name()?,
            "admin_change",
            &records::signing_bytes(Domain::AdminChange, text.as_bytes()),
        )?;
        let purpose = SignPurpose::AdminChange {
            body: text.clone(),
            operator: auth,
        };
        self.sign_record(Domain::AdminChange, text, purpose).await
    }

    /// Sets how this node checks an audit checkpoint against its own copy
    /// of the chain (once; the control plane sets it when it starts).
    pub fn set_audit_witness(&self, w: AuditWitness) {
        let _ = self.audit_witness.set(w);
    }

    /// Threshold-signs a checkpoint of the audit chain: each signer first
    /// checks that its own copy holds entry `seq` with `hash`.
    pub async fn sign_audit_checkpoint(
        &self,
        cp: &bzzz_proto::access::AuditCheckpoint,
    ) -> Result<Signed, KeysError> {
        let text = records::body_text(cp).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let purpose = SignPurpose::AuditCheckpoint { body: text.clone() };
        self.sign_record(Domain::AuditCheckpoint, text, purpose)
            .await
    }

    /// Threshold-signs a record body under `domain` for `purpose` (which
    /// names the same body) and wraps it as a signed record.
    pub(crate) async fn sign_record(
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
            .ok_or_else(|| err(ErrorKind::Internal, "bad signature"))?;
        Ok(records::signed(text, &raw))
    }

    /// Creates a join token valid for `ttl` (operator-authorized).
    pub async fn create_token(
        &self,
        ttl: Duration,
        uses: u32,
        operator: &OperatorKey,
    ) -> Result<(String, JoinTokenBody), KeysError> {
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(err(
                ErrorKind::Invalid,
                "token lifetime must be between 1 s and 30 days",
            ));
        }
        if !(1..=MAX_TOKEN_USES).contains(&uses) {
            return Err(err(
                ErrorKind::Invalid,
                format!("token uses must be between 1 and {MAX_TOKEN_USES}"),
            ));
        }
        let c = self
            .cluster()
            .ok_or_else(|| err(ErrorKind::Conflict, "the cluster is not initialized yet"))?;
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
        let text =
            records::body_text(&body).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let auth = operator.authorize(
            &c.genesis.cluster,
            "join_token",
            &records::signing_bytes(Domain::JoinToken, text.as_bytes()),
        )?;
        let purpose = SignPurpose::JoinToken {
            body: text.clone(),
            operator: auth,
        };
        let signed = self.sign_record(Domain::JoinToken, text, purpose).await?;
        let token =
            records::encode_token(&signed).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        info!(token_id = %body.id, expires_at = body.expires_at, "join token created");
        Ok((token, body))
    }
}
