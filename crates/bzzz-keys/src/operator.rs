//! Operator authentication. The operator password derives the operator's
//! Ed25519 key ([`OperatorPassword::operator_key`]); the node the operator
//! logs into derives it (rate limited, bounded hashing) and signs an
//! [`OperatorAuth`] for each threshold signature. Signers check that
//! authorization against the operator's public key in force and never
//! see the password. Users' passwords are checked against their Argon2id
//! verifiers here too.

use super::*;
use bzzz_crypto::operator::ArgonMemory;
use bzzz_proto::cluster::OPERATOR_AUTH_WINDOW_SECS;

/// The operator's signing key, derived from the operator password at
/// login. Web sessions and requests hold this, never the password.
/// Zeroizes (the inner key does), never prints.
#[derive(Clone)]
pub struct OperatorKey(Arc<bzzz_crypto::NodeKey>);

impl std::fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorKey(..)")
    }
}

impl From<bzzz_crypto::NodeKey> for OperatorKey {
    fn from(k: bzzz_crypto::NodeKey) -> Self {
        Self(Arc::new(k))
    }
}

impl OperatorKey {
    /// The public key (hex).
    pub fn public_hex(&self) -> String {
        hex::encode(self.0.public())
    }

    /// Authorizes one threshold signature of `target` (the exact bytes
    /// the admin key signs) for purpose `kind` in `cluster`.
    pub(crate) fn authorize(
        &self,
        cluster: &str,
        kind: &str,
        target: &[u8],
    ) -> Result<OperatorAuth, KeysError> {
        let time = unix_now();
        let nonce = random_hex(16)?;
        let sig = self.0.sign(&bzzz_crypto::operator::auth_bytes(
            cluster, kind, time, &nonce, target,
        ));
        Ok(OperatorAuth {
            time,
            nonce,
            signature: hex::encode(sig),
        })
    }
}

/// Most operator authorization nonces a signer remembers (each for
/// twice [`OPERATOR_AUTH_WINDOW_SECS`]); only valid authorizations are
/// remembered, so only the operator can fill this.
const MAX_OPERATOR_NONCES: usize = 65_536;

impl Keys {
    // ---- operator authentication -----------------------------------------

    /// Adopts an admin change that replaces the operator key, after
    /// checking it here: signed by the cluster admin key, for this
    /// cluster, `SetOperatorKey`, and newer (`seq`) than the one held. It
    /// is kept in [`OPERATOR_FILE`] so a restart does not fall back to
    /// the genesis key. Ok(true) when adopted, Ok(false) when not newer.
    pub fn adopt_operator_change(&self, rec: &Signed) -> Result<bool, String> {
        let c = self.cluster().ok_or("not a member")?;
        let ch = records::open_admin_change(rec, &c.admin_public_key, &c.genesis.cluster)
            .map_err(|e| format!("operator key change: {e}"))?;
        let bzzz_proto::cluster::AdminAction::SetOperatorKey { public_key } = ch.action else {
            return Err("the record does not replace the operator key".into());
        };
        bzzz_crypto::access::check_public_hex(&public_key)
            .map_err(|e| format!("operator key change: {e}"))?;
        let mut held = write(&self.operator);
        if held.as_ref().is_some_and(|(seq, _, _)| *seq >= ch.seq) {
            return Ok(false);
        }
        let text = serde_json::to_vec(rec).map_err(|e| e.to_string())?;
        write_private(&self.data_dir.join(OPERATOR_FILE), &text)
            .map_err(|e| format!("cannot keep the operator key change: {e}"))?;
        *held = Some((ch.seq, public_key, rec.clone()));
        info!(
            seq = ch.seq,
            "the operator key was replaced (a new operator password)"
        );
        Ok(true)
    }

    /// Re-adopts the operator key change kept on disk (at start).
    pub(crate) fn load_operator_change(&self) {
        let path = self.data_dir.join(OPERATOR_FILE);
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        match serde_json::from_slice::<Signed>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|rec| self.adopt_operator_change(&rec))
        {
            Ok(_) => {}
            Err(e) => warn!(
                "{} is unusable ({e}); the genesis operator key applies",
                path.display()
            ),
        }
    }

    /// The adopted operator key change, if any (sent with signing
    /// requests so signers that missed it adopt it).
    pub fn operator_change(&self) -> Option<Signed> {
        read(&self.operator).as_ref().map(|(_, _, r)| r.clone())
    }

    /// The operator's public key (hex) in force, if the cluster has one
    /// (clusters set up before operator keys have none): the latest
    /// adopted admin-signed replacement, else the genesis record's.
    pub fn operator_public_key(&self) -> Option<String> {
        if let Some((_, k, _)) = &*read(&self.operator) {
            return Some(k.clone());
        }
        self.cluster().and_then(|c| c.genesis.operator_public_key)
    }

    /// Checks the operator password of a client and returns the key it
    /// derives (rate limited per client key, e.g. its IP address, before
    /// any hashing; at most [`MAX_HASHES`] Argon2id runs at once on this
    /// node). 401 on mismatch, 429 when limited, 409 before setup.
    pub async fn operator_login(
        &self,
        client: &str,
        password: Option<OperatorPassword>,
    ) -> Result<OperatorKey, KeysError> {
        let Some(password) = password else {
            return Err(err(ErrorKind::Unauthorized, "operator credential required"));
        };
        let Some(c) = self.cluster() else {
            return Err(err(
                ErrorKind::Conflict,
                "the cluster is not initialized yet; run setup",
            ));
        };
        let Some(expected) = self.operator_public_key() else {
            return Err(err(
                ErrorKind::Conflict,
                "this cluster was set up by a BZZZ without operator keys: set it up again",
            ));
        };
        let cluster = c.genesis.cluster;
        let derived = self
            .limited(client, async {
                let key = self
                    .hasher
                    .run(move |_| password.operator_key(&cluster))
                    .await?
                    .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
                let ok = bzzz_crypto::access::same_hash(&hex::encode(key.public()), &expected);
                Ok((ok, key))
            })
            .await;
        match derived {
            Ok(key) => Ok(OperatorKey(Arc::new(key))),
            Err(e) if e.kind == ErrorKind::Unauthorized => {
                warn!(client, "operator authentication failed");
                Err(err(ErrorKind::Unauthorized, "wrong operator credential"))
            }
            Err(e) => Err(e),
        }
    }

    /// The work of an operator login that can only fail (an unknown user
    /// name), through the same per-client limit, so a login does not tell
    /// which names exist and cannot bypass the limit.
    pub async fn failed_login(&self, client: &str, password: OperatorPassword) -> KeysError {
        let r = self
            .limited(client, async {
                let _ = self
                    .hasher
                    .run(move |_| password.operator_key("no such user"))
                    .await?;
                Ok((false, ()))
            })
            .await;
        r.err()
            .unwrap_or_else(|| err(ErrorKind::Unauthorized, "wrong credential"))
    }

    /// The key `password` derives as the operator's of `cluster`, without
    /// checking it against anything (setup, a password change).
    pub async fn derive_operator_key(
        &self,
        cluster: &str,
        password: OperatorPassword,
    ) -> Result<OperatorKey, KeysError> {
        let cluster = cluster.to_owned();
        let key = self
            .hasher
            .run(move |_| password.operator_key(&cluster))
            .await?
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        Ok(OperatorKey(Arc::new(key)))
    }

    /// Checks a password against an Argon2id `verifier` (a user's), with
    /// the same per-client limit and bounded hashing as the operator's.
    pub async fn check_password(
        &self,
        client: &str,
        password: OperatorPassword,
        verifier: String,
    ) -> Result<(), KeysError> {
        self.limited(client, async {
            let ok = self
                .hasher
                .run(move |m| password.matches_with(&verifier, m))
                .await?;
            Ok((ok, ()))
        })
        .await
    }

    /// Runs one login attempt of `client` through the per-client limiter:
    /// `work` says whether the credential matched. 401 when it did not,
    /// 429 when the client is limited.
    async fn limited<T>(
        &self,
        client: &str,
        work: impl std::future::Future<Output = Result<(bool, T), KeysError>>,
    ) -> Result<T, KeysError> {
        loop {
            let ended = self.auth_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            match lock(&self.auth).begin(client, Instant::now()) {
                Ok(()) => break,
                Err(limiter::Refused::Limited { retry_after }) => {
                    return Err(err(
                        ErrorKind::Limited,
                        format!(
                            "too many failed logins; retry in {} s",
                            retry_after.as_secs()
                        ),
                    ));
                }
                Err(limiter::Busy) => {}
            }
            ended.await;
        }
        // Ends the attempt even when this future is dropped midway (the
        // client went away, the request timed out).
        let mut attempt = Attempt {
            keys: self,
            client,
            ok: false,
        };
        let (ok, value) = work.await?;
        attempt.ok = ok;
        if ok {
            return Ok(value);
        }
        Err(err(ErrorKind::Unauthorized, "wrong credential"))
    }

    /// Checks the operator's authorization of a threshold signature of
    /// `target` for `kind`: signed by the operator's key in force, fresh
    /// (within [`OPERATOR_AUTH_WINDOW_SECS`] of this node's clock), and,
    /// when `once`, with a nonce this signer has not taken before.
    pub(crate) fn check_operator_auth(
        &self,
        c: &Cluster,
        auth: &OperatorAuth,
        kind: &str,
        target: &[u8],
        once: bool,
    ) -> Result<(), Refusal> {
        let expected = self.operator_public_key().ok_or_else(|| {
            Refusal::from("this cluster has no operator key (set up by an older BZZZ)")
        })?;
        let now = unix_now();
        if auth.time.abs_diff(now) > OPERATOR_AUTH_WINDOW_SECS {
            return Err(refusal!(
                "the operator's authorization is not fresh (made at {}, this signer's clock says {now})",
                auth.time
            ));
        }
        if auth.nonce.len() != 32 || !auth.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the operator's authorization has a malformed nonce".into());
        }
        let bytes = bzzz_crypto::operator::auth_bytes(
            &c.genesis.cluster,
            kind,
            auth.time,
            &auth.nonce,
            target,
        );
        bzzz_crypto::access::verify_hex(&expected, &bytes, &auth.signature).map_err(|_| {
            Refusal::from(
                "the operator's authorization does not verify (a wrong or replaced operator password, or another request's)",
            )
        })?;
        if once {
            let mut seen = lock(&self.operator_nonces);
            seen.retain(|_, until| *until > now);
            if seen.contains_key(&auth.nonce) {
                return Err("this operator authorization was used already (a replay)".into());
            }
            if seen.len() >= MAX_OPERATOR_NONCES {
                return Err(Refusal::new(
                    RefusalCode::NotReady,
                    "too many operator authorizations in the last minutes; retry later",
                ));
            }
            // Kept until the authorization's own time is out of the window.
            seen.insert(
                auth.nonce.clone(),
                auth.time.max(now) + OPERATOR_AUTH_WINDOW_SECS + 1,
            );
        }
        Ok(())
    }
}

/// Most Argon2id hashes (19 MiB for a user's verifier, 64 MiB for the
/// operator's key) this node runs at once for logins; more wait their
/// turn.
pub const MAX_HASHES: usize = 1;

/// Work for a hasher thread (given its reusable Argon2 memory).
type HashJob = Box<dyn FnOnce(&mut ArgonMemory) + Send>;

/// Checks operator passwords on [`MAX_HASHES`] dedicated threads. Not the
/// blocking pool: every new thread gets its own malloc arena, which keeps
/// the 19 MiB Argon2id buffer after a hash, so hashes spread over many
/// pool threads grew the process by that much per thread. Here the memory
/// is bounded by `MAX_HASHES` buffers. The threads end when the service is
/// dropped.
pub(crate) struct Hasher {
    permits: Arc<tokio::sync::Semaphore>,
    jobs: std::sync::mpsc::SyncSender<HashJob>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher(..)")
    }
}

impl Hasher {
    pub(crate) fn start() -> Result<Self, KeysError> {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<HashJob>(MAX_HASHES);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..MAX_HASHES {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("bzzz-argon2-{i}"))
                .spawn(move || {
                    // One working memory per thread, reused (and zeroized
                    // by argon2 after each hash).
                    let mut memory = ArgonMemory::default();
                    loop {
                        let job = lock(&rx).recv();
                        let Ok(job) = job else {
                            return;
                        };
                        job(&mut memory);
                    }
                })
                .map_err(|e| err(ErrorKind::Internal, format!("cannot start a thread: {e}")))?;
        }
        Ok(Self {
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_HASHES)),
            jobs,
        })
    }

    /// Runs `f` on a hasher thread (waits for a free one without
    /// blocking the runtime).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ArgonMemory) -> T + Send + 'static,
    ) -> Result<T, KeysError> {
        // The job owns the permit: a caller that goes away (a client hung
        // up) does not free the slot while its hash still runs, so the
        // next caller waits instead of finding the queue full.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| err(ErrorKind::Internal, "shutting down"))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move |m| {
            let _ = tx.send(f(m));
            drop(permit);
        });
        // With a permit, the channel has room: this never blocks.
        self.jobs
            .try_send(job)
            .map_err(|_| err(ErrorKind::Internal, "the password hasher stopped"))?;
        rx.await
            .map_err(|_| err(ErrorKind::Internal, "the password hasher stopped"))
    }
}

/// One login attempt in the limiter, ended on drop.
struct Attempt<'a> {
    keys: &'a Keys,
    client: &'a str,
    ok: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        lock(&self.keys.auth).finish(self.client, self.ok);
        self.keys.auth_ended.notify_waiters();
    }
}
