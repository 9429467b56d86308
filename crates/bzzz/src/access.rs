//! Who is calling (SPEC §9), and each node's side of the audit log.
//!
//! * [`Access::resolve`] turns a request's credential into a [`Caller`]:
//!   an API key (`Authorization: Bearer bzzz_…`, one SHA-256 and a map
//!   lookup in the replicated state: revoked, expired or orphaned keys
//!   are refused), a user or the operator (HTTP Basic; a user name that
//!   is no user is the operator `admin`, so older scripts keep working),
//!   or the operator's web session. A password is hashed with Argon2id
//!   once; later requests with the same credential hit a cache keyed by
//!   a keyed hash of it (a process-random key, memory only), checked
//!   against the user's current verifier, so a changed password or a
//!   removed user is refused at once.
//! * Audit: [`Access::note`] signs what a privileged request does with
//!   the node key; [`commit`] puts notes into the chain through Raft and
//!   answers 503 when they cannot commit (the action is then not done).
//!   Refusals are counted per principal and minute ([`Access::deny`]) and
//!   flushed as one entry each by [`flush_denials`], so a flood of wrong
//!   calls cannot grow the log without bound.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bzzz_crypto::operator::OperatorPassword;
use bzzz_proto::NodeId;
use bzzz_proto::access::{ADMIN_USER, Action, AuditNote, Resource};
use bzzz_proto::dht::ADMIN_ROLE;
use sha2::{Digest, Sha256};

use crate::http::ApiError;

/// Signs with the node key.
pub type NodeSigner = Arc<dyn Fn(&[u8]) -> [u8; 64] + Send + Sync>;

/// How long a checked password stays in the cache.
const CACHE_TTL: Duration = Duration::from_secs(300);
/// Most cached credentials.
const CACHE_MAX: usize = 4096;
/// Changes a principal may make at once, and then per second (see
/// [`Access::rate`]).
pub const CHANGES_BURST: f64 = 50.0;
pub const CHANGES_PER_SEC: f64 = 10.0;
/// Failed passwords an account may take per window before attempts on it
/// slow down (see [`Access::slow_down`]).
pub const ACCOUNT_FREE_FAILURES: u32 = 10;
pub const ACCOUNT_WINDOW: Duration = Duration::from_secs(60);
/// Most principals whose refusals are counted between flushes.
const DENIALS_MAX: usize = 1024;

/// An authenticated caller.
pub struct Caller {
    /// `admin`, `user:NAME` or `key:ID` (the audit log's principal).
    pub id: String,
    pub roles: Vec<String>,
    /// The operator's key (derived from the operator password), when the
    /// caller is the operator: it authorizes threshold signatures.
    pub operator: Option<bzzz_keys::OperatorKey>,
    /// The `Authorization` header, to forward with a request this node
    /// hands to another (the other node checks it itself; a web session
    /// has none).
    pub forward: Option<zeroize::Zeroizing<String>>,
    /// How the caller signs its changes to users and keys (every node
    /// checks the signature; the operator's are admin-signed instead).
    pub proof: Option<ProofKey>,
    /// The CSRF token of the web session the caller came with (form
    /// POSTs must bring it back); `None` for header credentials.
    pub csrf: Option<String>,
}

/// The key a credential derives for signing access changes.
#[derive(Clone)]
pub enum ProofKey {
    /// An API key's (cheap: derived when the key is checked).
    Key(Arc<bzzz_crypto::NodeKey>),
    /// A user's password and name (Argon2id when it is needed).
    User(String, OperatorPassword),
}

impl std::fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProofKey(..)")
    }
}

impl ProofKey {
    /// Signs `msg` (a user's key is derived first, off the runtime).
    pub async fn sign(&self, msg: Vec<u8>) -> Result<String, ApiError> {
        let key = match self {
            ProofKey::Key(k) => k.clone(),
            ProofKey::User(name, pw) => {
                let (name, pw) = (name.clone(), pw.clone());
                let k = tokio::task::spawn_blocking(move || {
                    bzzz_crypto::access::user_signer(&name, pw.expose())
                })
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
                Arc::new(k)
            }
        };
        Ok(hex::encode(key.sign(&msg)))
    }
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("id", &self.id)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == ADMIN_ROLE)
    }
}

struct Cached {
    id: String,
    /// The user's verifier, or the operator's public key, the password
    /// was checked against (a change misses the cache).
    verifier: String,
    /// The operator's key the password derives (the operator only).
    operator: Option<bzzz_keys::OperatorKey>,
    until: Instant,
}

#[derive(Debug, Default)]
struct Denied {
    count: u32,
    action: String,
    resource: String,
}

/// The node's access state (see the module doc).
pub struct Access {
    node: NodeId,
    signer: NodeSigner,
    cache_key: [u8; 32],
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    denials: Mutex<BTreeMap<String, Denied>>,
    /// This node's web sessions.
    pub sessions: crate::sessions::Sessions,
    /// Changes per principal (token buckets; see [`Access::rate`]).
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    /// Failed password attempts per account in the current window (see
    /// [`Access::slow_down`]).
    account_failures: Mutex<HashMap<String, (u32, Instant)>>,
    /// The browser that started the pending setup in the wizard: the
    /// setup id and a keyed hash of its secret cookie (see
    /// `ui::setup`).
    pub setup_owner: Mutex<Option<(String, [u8; 32])>>,
    /// `serve.anonymous_inference` of this node's config (the cluster
    /// rule `anonymous_inference`, admin-signed, overrides it).
    pub anonymous_inference: bool,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Access({})", self.node)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Access {
    pub fn new(node: NodeId, signer: NodeSigner, anonymous_inference: bool) -> Self {
        let mut cache_key = [0u8; 32];
        // Without randomness the cache key is zero: the cache still keys
        // on a hash of the credential, which never leaves memory.
        let _ = getrandom::fill(&mut cache_key);
        Self {
            node,
            signer,
            cache_key,
            cache: Mutex::default(),
            denials: Mutex::default(),
            sessions: Default::default(),
            buckets: Mutex::default(),
            account_failures: Mutex::default(),
            setup_owner: Mutex::default(),
            anonymous_inference,
        }
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    fn cache_slot(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_key);
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Takes one change from `principal`'s allowance on this node:
    /// [`CHANGES_BURST`] at once, then [`CHANGES_PER_SEC`] a second (each
    /// change is a Raft entry and an audit line: a user's loop must not
    /// grow them without bound). 429 beyond it. The operator is not
    /// limited.
    pub fn rate(&self, principal: &str) -> Result<(), ApiError> {
        if principal == ADMIN_USER {
            return Ok(());
        }
        let now = Instant::now();
        let mut b = lock(&self.buckets);
        if !b.contains_key(principal) && b.len() >= CACHE_MAX {
            // Full buckets carry no state worth keeping.
            b.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * CHANGES_PER_SEC < CHANGES_BURST
            });
            if b.len() >= CACHE_MAX {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many principals are changing things at once; retry in a moment",
                ));
            }
        }
        let (tokens, at) = b
            .entry(principal.to_owned())
            .or_insert((CHANGES_BURST, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * CHANGES_PER_SEC).min(CHANGES_BURST);
        *at = now;
        if *tokens < 1.0 {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{principal} makes changes faster than {CHANGES_PER_SEC} a second on this node; retry in a second"
                ),
            ));
        }
        *tokens -= 1.0;
        Ok(())
    }

    /// Waits before a password is tried for `account` (`admin` or
    /// `user:NAME`) when it failed more than [`ACCOUNT_FREE_FAILURES`]
    /// times in the last [`ACCOUNT_WINDOW`], from any addresses: 250 ms
    /// more for each failure beyond, 2 s at most. A slowdown, never a
    /// lockout: guesses spread over many addresses get slow, and the
    /// operator elsewhere still logs in (the per-address limit of the
    /// keys service stays in front of this).
    pub async fn slow_down(&self, account: &str) {
        let d = self.delay(account);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    /// How long [`Access::slow_down`] waits for `account` now.
    pub fn delay(&self, account: &str) -> Duration {
        lock(&self.account_failures)
            .get(account)
            .filter(|(n, since)| since.elapsed() < ACCOUNT_WINDOW && *n > ACCOUNT_FREE_FAILURES)
            .map_or(Duration::ZERO, |(n, _)| {
                Duration::from_millis(250 * u64::from(n - ACCOUNT_FREE_FAILURES))
                    .min(Duration::from_secs(2))
            })
    }

    /// Counts a failed password for `account` (see [`Access::slow_down`]).
    pub fn failed(&self, account: &str) {
        let now = Instant::now();
        let mut m = lock(&self.account_failures);
        if !m.contains_key(account) && m.len() >= CACHE_MAX {
            m.retain(|_, (_, since)| since.elapsed() < ACCOUNT_WINDOW);
            if m.len() >= CACHE_MAX {
                m.clear();
            }
        }
        let e = m.entry(clip(account, 200)).or_insert((0, now));
        if e.1.elapsed() >= ACCOUNT_WINDOW {
            *e = (0, now);
        }
        e.0 = e.0.saturating_add(1);
    }

    /// A password check for `account`, slowed down and counted.
    async fn tried<T>(
        &self,
        account: &str,
        check: impl std::future::Future<Output = Result<T, bzzz_keys::KeysError>>,
    ) -> Result<T, ApiError> {
        self.slow_down(account).await;
        check.await.map_err(|e| {
            if e.kind == bzzz_keys::ErrorKind::Unauthorized {
                self.failed(account);
            }
            ApiError::from(e)
        })
    }

    /// A keyed hash of a setup cookie (the key is process-random).
    pub fn setup_cookie_hash(&self, cookie: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_key);
        h.update(b"setup owner\0");
        h.update(cookie.as_bytes());
        h.finalize().into()
    }

    /// A signed audit note of this node.
    pub fn note(
        &self,
        principal: &str,
        action: &str,
        resource: &str,
        outcome: &str,
        count: u32,
    ) -> AuditNote {
        let mut n = AuditNote {
            time_ms: now_ms(),
            principal: clip(principal, 256),
            action: clip(action, 256),
            resource: clip(resource, 2048),
            outcome: clip(outcome, 256),
            node: self.node.clone(),
            count,
            signature: String::new(),
        };
        n.signature = hex::encode((self.signer)(&n.signed_bytes()));
        n
    }

    /// Counts a refusal of `principal` (flushed once a minute).
    pub fn deny(&self, principal: &str, action: &str, resource: &str) {
        let mut d = lock(&self.denials);
        if !d.contains_key(principal) && d.len() >= DENIALS_MAX {
            // Beyond the bound, refusals are counted under one name.
            let e = d.entry("(other principals)".into()).or_default();
            e.count = e.count.saturating_add(1);
            return;
        }
        let e = d.entry(clip(principal, 200)).or_default();
        e.count = e.count.saturating_add(1);
        e.action = action.to_owned();
        e.resource = clip(resource, 2048);
    }

    fn take_denials(&self) -> Vec<AuditNote> {
        let d = std::mem::take(&mut *lock(&self.denials));
        d.into_iter()
            .map(|(p, x)| self.note(&p, &x.action, &x.resource, "denied", x.count.max(1)))
            .collect()
    }

    /// The caller a credential names. `Ok(None)`: no credential.
    pub async fn resolve(
        &self,
        st: &crate::state::AppState,
        client: &str,
        headers: &axum::http::HeaderMap,
    ) -> Result<Option<Caller>, ApiError> {
        use axum::http::header;
        if let Some(id) = crate::http::auth::session_id(headers)
            && let Some(c) = self.session(st, &id)
        {
            return Ok(Some(c));
        }
        let Some(v) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
        let text = v
            .to_str()
            .map_err(|_| unauthorized("malformed Authorization header"))?;
        let forward = Some(zeroize::Zeroizing::new(text.to_owned()));
        if let Some(secret) = text.strip_prefix("Bearer ") {
            return self.api_key(st, secret.trim(), forward).map(Some);
        }
        let Some((user, pw)) = basic(text) else {
            return Err(unauthorized(
                "malformed Authorization header (Bearer API key, or HTTP Basic user:password)",
            ));
        };
        let user_rec = st
            .control
            .get()
            .and_then(|c| c.with_state(|s| s.users.get(user.as_str()).cloned()));
        let (id, verifier) = match &user_rec {
            Some(u) => (format!("user:{}", u.name), Some(u.verifier.clone())),
            None => (ADMIN_USER.to_owned(), None),
        };
        let verifier = match verifier {
            Some(v) => v,
            None => match (st.keys.cluster(), st.keys.operator_public_key()) {
                (Some(_), Some(k)) => k,
                (Some(_), None) => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "this cluster was set up by a BZZZ without operator keys: set it up again",
                    ));
                }
                (None, _) => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "the cluster is not initialized yet; run setup",
                    ));
                }
            },
        };
        let slot = self.cache_slot(&id, pw.expose());
        let cached = lock(&self.cache)
            .get(&slot)
            .filter(|c| c.id == id && c.verifier == verifier && c.until > Instant::now())
            .map(|c| c.operator.clone());
        let operator_key = match cached {
            Some(k) => k,
            None => {
                let k = match &user_rec {
                    Some(_) => {
                        self.tried(
                            &id,
                            st.keys.check_password(client, pw.clone(), verifier.clone()),
                        )
                        .await?;
                        None
                    }
                    None => Some(
                        self.tried(&id, st.keys.operator_login(client, Some(pw.clone())))
                            .await?,
                    ),
                };
                let mut c = lock(&self.cache);
                if c.len() >= CACHE_MAX {
                    let now = Instant::now();
                    c.retain(|_, v| v.until > now);
                    if c.len() >= CACHE_MAX {
                        c.clear();
                    }
                }
                c.insert(
                    slot,
                    Cached {
                        id: id.clone(),
                        verifier,
                        operator: k.clone(),
                        until: Instant::now() + CACHE_TTL,
                    },
                );
                k
            }
        };
        Ok(Some(match (user_rec, operator_key) {
            (Some(u), _) => Caller {
                id,
                roles: u.roles,
                operator: None,
                forward,
                proof: Some(ProofKey::User(u.name, pw)),
                csrf: None,
            },
            (None, Some(k)) => operator(k, forward),
            (None, None) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "operator key missing from the credential cache",
                ));
            }
        }))
    }

    /// The caller of live web session `id`. A user's session ends here
    /// when the user is gone or its password changed.
    fn session(&self, st: &crate::state::AppState, id: &str) -> Option<Caller> {
        let (who, csrf) = self.sessions.get(id)?;
        match who {
            crate::sessions::Who::Operator(key) => {
                // A replaced operator password ends the operator's sessions.
                if st.keys.operator_public_key().as_deref() != Some(key.public_hex().as_str()) {
                    self.sessions.close(id);
                    return None;
                }
                let mut c = operator(key, None);
                c.csrf = Some(csrf);
                Some(c)
            }
            crate::sessions::Who::User {
                name,
                verifier,
                key,
            } => {
                let roles = st.control.get().and_then(|c| {
                    c.with_state(|s| {
                        s.users
                            .get(name.as_str())
                            .filter(|u| u.verifier == verifier)
                            .map(|u| u.roles.clone())
                    })
                });
                let Some(roles) = roles else {
                    self.sessions.close(id);
                    return None;
                };
                Some(Caller {
                    id: format!("user:{name}"),
                    roles,
                    operator: None,
                    forward: None,
                    proof: Some(ProofKey::Key(key)),
                    csrf: Some(csrf),
                })
            }
        }
    }

    /// Checks `name` and `password` for a web login (a user, or `admin`
    /// for the operator) and opens a session: its id and CSRF token. A
    /// user's session holds the key its password derives, never the
    /// password (see [`crate::sessions`]).
    pub async fn login(
        &self,
        st: &crate::state::AppState,
        client: &str,
        name: &str,
        password: OperatorPassword,
    ) -> Result<(String, String), ApiError> {
        let user = st
            .control
            .get()
            .and_then(|c| c.with_state(|s| s.users.get(name).cloned()));
        let who = match user {
            Some(u) => {
                self.tried(
                    &format!("user:{}", u.name),
                    st.keys
                        .check_password(client, password.clone(), u.verifier.clone()),
                )
                .await?;
                let n = u.name.clone();
                let key = tokio::task::spawn_blocking(move || {
                    bzzz_crypto::access::user_signer(&n, password.expose())
                })
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
                crate::sessions::Who::User {
                    name: u.name,
                    verifier: u.verifier,
                    key: Arc::new(key),
                }
            }
            // Only `admin` (or an empty name) is the operator here: a
            // mistyped user name must not be tried as the operator's.
            None if name.is_empty() || name == ADMIN_USER => {
                let key = self
                    .tried(ADMIN_USER, st.keys.operator_login(client, Some(password)))
                    .await?;
                crate::sessions::Who::Operator(key)
            }
            None => {
                // Work and an answer like a wrong password's (limited per
                // client like any login), so a login does not tell which
                // user names exist.
                let e = st.keys.failed_login(client, password).await;
                if e.kind != bzzz_keys::ErrorKind::Unauthorized {
                    return Err(ApiError::from(e));
                }
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "wrong user name or password",
                ));
            }
        };
        self.sessions.open(who).map_err(|e| match e {
            crate::sessions::OpenError::Full => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            crate::sessions::OpenError::Random(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        })
    }

    fn api_key(
        &self,
        st: &crate::state::AppState,
        secret: &str,
        forward: Option<zeroize::Zeroizing<String>>,
    ) -> Result<Caller, ApiError> {
        let refuse = |m: &str| Err(ApiError::new(StatusCode::UNAUTHORIZED, m));
        let Some((id, hash)) = bzzz_crypto::access::parse_api_key(secret) else {
            return refuse("not an API key (bzzz_ and 64 hex digits)");
        };
        let Some(control) = st.control.get() else {
            return refuse("this node is not in a cluster yet: no API key is valid");
        };
        let now = bzzz_keys::unix_now();
        let found = control.with_state(|s| {
            let k = s.api_keys.get(&id)?;
            Some((k.clone(), s.key_roles(k)))
        });
        match found {
            Some((k, _)) if !bzzz_crypto::access::same_hash(&k.hash, &hash) => {
                refuse("unknown API key")
            }
            Some((k, _)) if k.revoked_at.is_some() => refuse("this API key was revoked"),
            Some((k, _)) if k.expires_at.is_some_and(|e| now >= e) => {
                refuse("this API key has expired")
            }
            Some((_, None)) => refuse("this API key's user is gone or lost its role"),
            Some((k, Some(roles))) => Ok(Caller {
                id: format!("key:{}", k.id),
                roles,
                operator: None,
                forward,
                proof: Some(ProofKey::Key(Arc::new(
                    bzzz_crypto::access::api_key_signer(secret),
                ))),
                csrf: None,
            }),
            None => refuse("unknown API key"),
        }
    }
}

fn operator(key: bzzz_keys::OperatorKey, forward: Option<zeroize::Zeroizing<String>>) -> Caller {
    Caller {
        id: ADMIN_USER.to_owned(),
        roles: vec![ADMIN_ROLE.to_owned()],
        operator: Some(key),
        forward,
        proof: None,
        csrf: None,
    }
}

/// `Basic base64(user:password)` → the user name and password.
fn basic(v: &str) -> Option<(String, OperatorPassword)> {
    use base64::Engine as _;
    let b64 = v.strip_prefix("Basic ")?;
    let decoded = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?,
    );
    let text = std::str::from_utf8(&decoded).ok()?;
    let (user, pw) = text.split_once(':')?;
    Some((user.to_owned(), OperatorPassword::new(pw.to_owned()).ok()?))
}

fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_owned();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Whether the inference API is open to anonymous callers: the cluster
/// rule `anonymous_inference` (admin-signed) when set, else this node's
/// `serve.anonymous_inference`; always before setup (no principal exists
/// yet).
pub fn anonymous_inference(st: &crate::state::AppState) -> bool {
    let Some(c) = st.control.get() else {
        return !st.keys.is_initialized() || st.access.anonymous_inference;
    };
    c.with_state(|s| s.rules.get(ANONYMOUS_INFERENCE_RULE).cloned())
        .map_or(st.access.anonymous_inference, |v| v == "true")
}

/// The cluster rule that opens (`true`) or closes the inference API.
pub const ANONYMOUS_INFERENCE_RULE: &str = "anonymous_inference";

/// Commits audit `notes` (with `cmd`, or a change to users and keys, when
/// given) as one Raft command: 503 when it cannot commit, so the action
/// is not done; the state machine's refusal comes back as `Ok(Err(why))`.
pub async fn commit(
    st: &crate::state::AppState,
    notes: Vec<AuditNote>,
    cmd: Option<bzzz_control::raft::Command>,
    access: Option<(bzzz_control::access::AccessChange, String)>,
) -> Result<Result<Option<String>, String>, ApiError> {
    let (access, proof) = match access {
        Some((a, p)) => (Some(a), Some(p)),
        None => (None, None),
    };
    let command = bzzz_control::raft::Command::Audited {
        notes,
        cmd: cmd.map(Box::new),
        access,
        proof,
    };
    let r = propose(st, command).await?;
    Ok(match r.rejected {
        Some(why) => Err(why),
        None => Ok(r.previous),
    })
}

/// The control plane with the cluster's genesis applied, waited for a
/// little while right after setup.
pub async fn control(
    st: &crate::state::AppState,
) -> Result<Arc<crate::control::Control>, ApiError> {
    let until = Instant::now() + COMMIT_PATIENCE;
    loop {
        if let Some(c) = st.control.get()
            && c.with_state(|s| s.cluster.is_some())
        {
            return Ok(c.clone());
        }
        if Instant::now() >= until {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the control plane has not applied the cluster's genesis yet (right after setup); retry in a moment",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Proposes a command through the leader. Right after setup (or an
/// election) there may be no leader for a moment: waits for one a little
/// while, then fails closed (503, nothing done).
pub async fn propose(
    st: &crate::state::AppState,
    command: bzzz_control::raft::Command,
) -> Result<bzzz_control::raft::Response, ApiError> {
    let until = Instant::now() + COMMIT_PATIENCE;
    loop {
        let attempt = match st.control.get() {
            Some(c) => c.propose(command.clone()).await,
            None => Err("the control plane is not running yet".to_owned()),
        };
        match attempt {
            Ok(r) => return Ok(r),
            Err(e) if Instant::now() >= until || !retriable(&e) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the audit entry could not be committed, so nothing was done: {e}"),
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// How long a privileged request waits for a leader to record it.
const COMMIT_PATIENCE: Duration = Duration::from_secs(15);

/// Failures that a moment may cure: no leader yet, the control plane
/// starting, a leader that died or handed off. A write to a leader that
/// died may have committed: the retry may then record the entry twice
/// (an extra line, never a lost one), and a change that did apply is
/// refused the second time (replays are refused by the state machine).
fn retriable(e: &str) -> bool {
    e.contains("did not answer in time")
        || e.contains("did not commit in time")
        || e.contains("no leader")
        || e.contains("not running yet")
        || e.contains("has no address")
        || e.contains("forward request to")
}

/// Records `action` on `resource` by `caller` before it is done (for
/// actions outside the replicated state: a DHT write, a deploy, a
/// signature, a join token): 503 when the entry cannot commit.
pub async fn record(
    st: &crate::state::AppState,
    caller: &str,
    action: Action,
    resource: &Resource,
) -> Result<(), ApiError> {
    let note = st
        .access
        .note(caller, action.as_str(), &resource.to_string(), "ok", 1);
    match commit(st, vec![note], None, None).await? {
        Ok(_) => Ok(()),
        Err(why) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why)),
    }
}

/// Flushes the counted refusals into the audit log once a minute (when
/// there were any), until the node stops.
pub async fn flush_denials(st: Arc<crate::state::AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if lock(&st.access.denials).is_empty() || st.control.get().is_none() {
            continue;
        }
        let notes = st.access.take_denials();
        for chunk in notes.chunks(bzzz_control::access::MAX_NOTES) {
            if let Err(e) = commit(&st, chunk.to_vec(), None, None).await {
                tracing::debug!(error = %e.message, "refusals not recorded this minute");
            }
        }
    }
}

/// A signed admin change as a command with its audit entry (admin
/// changes are signed with the operator password: the principal is the
/// operator, `admin`).
pub fn audited_admin(
    st: &crate::state::AppState,
    change: bzzz_proto::cluster::Signed,
) -> bzzz_control::raft::Command {
    audited_admin_by(st, ADMIN_USER, change)
}

/// [`audited_admin`] recorded as `who`'s (an already signed change that
/// a caller hands in).
pub fn audited_admin_by(
    st: &crate::state::AppState,
    who: &str,
    change: bzzz_proto::cluster::Signed,
) -> bzzz_control::raft::Command {
    let what = serde_json::from_str::<bzzz_proto::cluster::AdminChange>(&change.body)
        .map(|c| c.action.summary())
        .unwrap_or_else(|_| "admin change".into());
    bzzz_control::raft::Command::Audited {
        notes: vec![st.access.note(who, "manage", &what, "ok", 1)],
        cmd: Some(Box::new(bzzz_control::raft::Command::Admin { change })),
        access: None,
        proof: None,
    }
}

/// `cmd` with the audit entry of `caller` doing `action` on `resource`.
pub fn audited(
    st: &crate::state::AppState,
    caller: &str,
    action: Action,
    resource: &Resource,
    cmd: bzzz_control::raft::Command,
) -> bzzz_control::raft::Command {
    bzzz_control::raft::Command::Audited {
        notes: vec![
            st.access
                .note(caller, action.as_str(), &resource.to_string(), "ok", 1),
        ],
        cmd: Some(Box::new(cmd)),
        access: None,
        proof: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_passwords_slow_an_account_down_without_locking_it() {
        let key = bzzz_crypto::NodeKey::generate().expect("key");
        let node = bzzz_net::node_id_of(&key.seed()).expect("id");
        let a = Access::new(node, Arc::new(|_: &[u8]| [0u8; 64]), false);
        for _ in 0..ACCOUNT_FREE_FAILURES {
            a.failed("admin");
        }
        assert_eq!(a.delay("admin"), Duration::ZERO, "free failures");
        for _ in 0..4 {
            a.failed("admin");
        }
        assert_eq!(a.delay("admin"), Duration::from_secs(1));
        for _ in 0..100 {
            a.failed("admin");
        }
        assert_eq!(a.delay("admin"), Duration::from_secs(2), "capped");
        assert_eq!(a.delay("user:bob"), Duration::ZERO, "per account");
    }

    #[test]
    fn a_principal_changes_at_a_bounded_rate_and_the_operator_is_not_limited() {
        let key = bzzz_crypto::NodeKey::generate().expect("key");
        let node = bzzz_net::node_id_of(&key.seed()).expect("id");
        let a = Access::new(node, Arc::new(|_: &[u8]| [0u8; 64]), false);
        for _ in 0..CHANGES_BURST as usize {
            a.rate("user:mallory").expect("within the burst");
        }
        let e = a.rate("user:mallory").expect_err("beyond the burst");
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        a.rate("user:alice")
            .expect("others are not limited by mallory");
        for _ in 0..1000 {
            a.rate(ADMIN_USER).expect("the operator");
        }
    }
}
