//! Operator authentication: the password checked against the genesis verifier, rate limited; web sessions.

use super::*;
use bzzz_crypto::operator::ArgonMemory;

impl Keys {
    // ---- operator authentication -----------------------------------------

    /// Checks the operator password of a client (rate limited per client
    /// key, e.g. its IP address, before any hashing; at most
    /// [`MAX_HASHES`] Argon2id hashes at once on this node). 401 on
    /// mismatch, 429 when limited, 409 before setup.
    pub async fn check_operator(
        &self,
        client: &str,
        password: Option<OperatorPassword>,
    ) -> Result<(), KeysError> {
        let Some(password) = password else {
            return Err(err(ErrorKind::Unauthorized, "operator credential required"));
        };
        let Some(c) = self.cluster() else {
            return Err(err(
                ErrorKind::Conflict,
                "the cluster is not initialized yet; run setup",
            ));
        };
        self.check_password(client, password, c.genesis.operator_verifier.clone())
            .await
            .map_err(|e| {
                if e.kind == ErrorKind::Unauthorized {
                    warn!(client, "operator authentication failed");
                    return err(ErrorKind::Unauthorized, "wrong operator credential");
                }
                e
            })
    }

    /// Checks a password against an Argon2id `verifier` (a user's), with
    /// the same per-client limit and bounded hashing as the operator's.
    pub async fn check_password(
        &self,
        client: &str,
        password: OperatorPassword,
        verifier: String,
    ) -> Result<(), KeysError> {
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
        let ok = self.hasher.matches(password, verifier).await?;
        attempt.ok = ok;
        if ok {
            return Ok(());
        }
        Err(err(ErrorKind::Unauthorized, "wrong credential"))
    }
}

/// Most Argon2id hashes (19 MiB each) this node runs at once for operator
/// logins; more wait their turn.
pub const MAX_HASHES: usize = 1;

/// A password, a verifier, and where the answer goes.
type HashJob = (OperatorPassword, String, Box<dyn FnOnce(bool) + Send>);

/// Checks operator passwords on [`MAX_HASHES`] dedicated threads. Not the
/// blocking pool: every new thread gets its own malloc arena, which keeps
/// the 19 MiB Argon2id buffer after a hash, so hashes spread over many
/// pool threads grew the process by that much per thread. Here the memory
/// is bounded by `MAX_HASHES` buffers. The threads end when the service is
/// dropped.
pub(crate) struct Hasher {
    permits: tokio::sync::Semaphore,
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
                        let Ok((password, verifier, reply)) = job else {
                            return;
                        };
                        reply(password.matches_with(&verifier, &mut memory));
                    }
                })
                .map_err(|e| err(ErrorKind::Internal, format!("cannot start a thread: {e}")))?;
        }
        Ok(Self {
            permits: tokio::sync::Semaphore::new(MAX_HASHES),
            jobs,
        })
    }

    /// Whether `password` matches the PHC `verifier` (waits for a free
    /// hasher without blocking the runtime).
    pub(crate) async fn matches(
        &self,
        password: OperatorPassword,
        verifier: String,
    ) -> Result<bool, KeysError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| err(ErrorKind::Internal, "shutting down"))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reply = Box::new(move |ok| {
            let _ = tx.send(ok);
        });
        // With a permit, the channel has room: this never blocks.
        self.jobs
            .try_send((password, verifier, reply))
            .map_err(|_| err(ErrorKind::Internal, "the password hasher stopped"))?;
        rx.await
            .map_err(|_| err(ErrorKind::Internal, "the password hasher stopped"))
    }

    /// [`Hasher::matches`] for synchronous callers that may block (inside
    /// `block_in_place`); false if the hasher stopped.
    pub(crate) fn matches_blocking(&self, password: OperatorPassword, verifier: String) -> bool {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let reply = Box::new(move |ok| {
            let _ = tx.send(ok);
        });
        if self.jobs.send((password, verifier, reply)).is_err() {
            return false;
        }
        rx.recv().unwrap_or(false)
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
