//! Web sessions (SPEC §9, "web sessions done right"): one per login on
//! this node, named by a 256-bit random id in a cookie (`HttpOnly`,
//! `SameSite=Strict`), each with its own CSRF token that every form POST
//! must bring back (checked by the route guard, `http::auth`).
//!
//! What a session holds is the least its principal needs:
//! * a user: the signing key derived from the password (Argon2id, once at
//!   login), never the password; the session ends as soon as the user is
//!   removed or its verifier changes (checked on every use against the
//!   replicated state), or when the user logs out everywhere;
//! * the operator (`admin`): the operator's key the password derives
//!   (Argon2id, once at login), which authorizes threshold signatures;
//!   never the password. The session ends when the operator password is
//!   replaced (the key in force changes).
//!
//! A session ends 30 minutes after its last use and 12 hours after login
//! at most. One principal holds at most [`MAX_PER_PRINCIPAL`] sessions
//! (a new login ends its own least recently used one); the node holds at
//! most [`MAX_SESSIONS`] (plus the operator's), and when that many are
//! live a new login is refused rather than ending someone else's session
//! (the operator's login is never refused for others' sessions). Sessions are per
//! node: logging in on one node does not log in on another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A session's longest life.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// A session ends this long after its last use.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Most live sessions on one node.
pub const MAX_SESSIONS: usize = 1024;
/// Most live sessions of one principal on one node.
pub const MAX_PER_PRINCIPAL: usize = 16;

/// Why a session was not opened.
#[derive(Debug)]
pub enum OpenError {
    /// [`MAX_SESSIONS`] are live.
    Full,
    Random(getrandom::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Full => write!(
                f,
                "this node holds {MAX_SESSIONS} web sessions already; retry when some end"
            ),
            OpenError::Random(e) => write!(f, "no randomness for a session id: {e}"),
        }
    }
}

/// Who a session is for.
#[derive(Clone)]
pub enum Who {
    /// The operator, user `admin`, with the key its password derives.
    Operator(bzzz_keys::OperatorKey),
    /// A user: name, the verifier it logged in against, and the key its
    /// password derives (signs the user's own access changes).
    User {
        name: String,
        verifier: String,
        key: Arc<bzzz_crypto::NodeKey>,
    },
}

impl std::fmt::Debug for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Who::Operator(_) => f.write_str("Operator(..)"),
            Who::User { name, .. } => write!(f, "User({name}, ..)"),
        }
    }
}

impl Who {
    /// The audit log's principal (`admin` or `user:NAME`).
    pub fn principal(&self) -> String {
        match self {
            Who::Operator(_) => bzzz_proto::access::ADMIN_USER.to_owned(),
            Who::User { name, .. } => format!("user:{name}"),
        }
    }
}

struct Session {
    who: Who,
    csrf: String,
    until: Instant,
    used: Instant,
}

/// The live sessions of this node.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(..)")
    }
}

fn random_hex() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)?;
    Ok(hex::encode(b))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn live(s: &Session, now: Instant) -> bool {
    s.until > now && now.duration_since(s.used) < SESSION_IDLE
}

impl Sessions {
    /// Opens a session: its id (the cookie) and CSRF token.
    pub fn open(&self, who: Who) -> Result<(String, String), OpenError> {
        let id = random_hex().map_err(OpenError::Random)?;
        let csrf = random_hex().map_err(OpenError::Random)?;
        let now = Instant::now();
        let principal = who.principal();
        let mut m = lock(&self.map);
        m.retain(|_, s| live(s, now));
        let own: Vec<(String, Instant)> = m
            .iter()
            .filter(|(_, s)| s.who.principal() == principal)
            .map(|(k, s)| (k.clone(), s.used))
            .collect();
        if own.len() >= MAX_PER_PRINCIPAL
            && let Some((oldest, _)) = own.iter().min_by_key(|(_, used)| *used)
        {
            m.remove(oldest);
        }
        // The operator is never refused for others' sessions (it holds
        // at most MAX_PER_PRINCIPAL itself).
        if m.len() >= MAX_SESSIONS && !matches!(who, Who::Operator(_)) {
            return Err(OpenError::Full);
        }
        m.insert(
            id.clone(),
            Session {
                who,
                csrf: csrf.clone(),
                until: now + SESSION_TTL,
                used: now,
            },
        );
        Ok((id, csrf))
    }

    /// The live session `id` (its use is recorded): who and the CSRF
    /// token.
    pub fn get(&self, id: &str) -> Option<(Who, String)> {
        let now = Instant::now();
        let mut m = lock(&self.map);
        let s = m.get_mut(id)?;
        if !live(s, now) {
            m.remove(id);
            return None;
        }
        s.used = now;
        Some((s.who.clone(), s.csrf.clone()))
    }

    /// Ends session `id`.
    pub fn close(&self, id: &str) {
        lock(&self.map).remove(id);
    }

    /// Ends every session of `principal` on this node (log out
    /// everywhere; a removed user); how many ended.
    pub fn close_all(&self, principal: &str) -> usize {
        let mut m = lock(&self.map);
        let before = m.len();
        m.retain(|_, s| s.who.principal() != principal);
        before - m.len()
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        lock(&self.map).values().filter(|s| live(s, now)).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Who {
        Who::User {
            name: name.into(),
            verifier: "v".into(),
            key: Arc::new(bzzz_crypto::NodeKey::generate().expect("key")),
        }
    }

    #[test]
    fn sessions_open_close_and_close_everywhere() {
        let s = Sessions::default();
        let (a, csrf_a) = s.open(user("ann")).expect("open");
        let (b, _) = s.open(user("ann")).expect("open");
        let (c, _) = s.open(user("bob")).expect("open");
        assert_ne!(a, b);
        assert_ne!(a, csrf_a);
        let (who, csrf) = s.get(&a).expect("live");
        assert_eq!(who.principal(), "user:ann");
        assert_eq!(csrf, csrf_a);
        s.close(&a);
        assert!(s.get(&a).is_none());
        assert_eq!(s.close_all("user:ann"), 1);
        assert!(s.get(&b).is_none());
        assert!(s.get(&c).is_some());
        assert!(format!("{:?}", s.get(&c).map(|x| x.0)).contains("bob"));
    }

    fn operator_key() -> bzzz_keys::OperatorKey {
        bzzz_keys::OperatorKey::from(bzzz_crypto::NodeKey::generate().expect("key"))
    }

    #[test]
    fn a_principal_ends_only_its_own_sessions_and_a_full_node_refuses() {
        let s = Sessions::default();
        let (operator, _) = s.open(Who::Operator(operator_key())).expect("open");
        // One user logging in again and again ends only its own oldest.
        let (first, _) = s.open(user("mallory")).expect("open");
        for _ in 0..MAX_SESSIONS {
            s.open(user("mallory")).expect("open");
        }
        assert!(s.get(&operator).is_some(), "the operator's session stays");
        assert!(s.get(&first).is_none(), "mallory's oldest went");
        assert_eq!(s.len(), 1 + MAX_PER_PRINCIPAL);
        // Many principals fill the node: a new login is refused, nobody
        // else's session ends.
        for i in 0..MAX_SESSIONS {
            let _ = s.open(user(&format!("u{i}")));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(matches!(s.open(user("late")), Err(OpenError::Full)));
        assert!(s.get(&operator).is_some());
        s.open(Who::Operator(operator_key()))
            .expect("the operator still logs in");
    }
}
