//! Role keys on this node: the epochs it can open ([`Keyring`]), new
//! epochs for an admin change ([`new_keys`]), and grants of held epochs
//! to readers that lack them ([`grants`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bzzz_crypto::seal::{AgeIdentity, RoleSecret};
use bzzz_proto::NodeId;
use bzzz_proto::dht::RoleKey;
use tracing::warn;

use crate::Authz;

/// This node's opened role keys: (chain, epoch) → key.
#[derive(Default)]
pub struct Keyring(HashMap<(String, u32), RoleSecret>);

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} keys)", self.0.len())
    }
}

impl Keyring {
    /// Opens every epoch sealed to `me` (a sealed key that does not open,
    /// or does not match its public key, is skipped with a warning).
    pub fn open(authz: &Authz, me: &NodeId, age: &AgeIdentity) -> Self {
        use base64::Engine as _;
        let mut out = HashMap::new();
        for (chain, keys) in &authz.role_keys {
            for k in keys {
                let Some(sealed) = k.sealed.get(me) else {
                    continue;
                };
                let opened = base64::engine::general_purpose::STANDARD
                    .decode(sealed)
                    .map_err(|e| e.to_string())
                    .and_then(|b| RoleSecret::open(age, &b, &k.public).map_err(|e| e.to_string()));
                match opened {
                    Ok(s) => {
                        out.insert((chain.clone(), k.epoch), s);
                    }
                    Err(e) => warn!(
                        chain,
                        epoch = k.epoch,
                        "a role key sealed to this node does not open: {e}"
                    ),
                }
            }
        }
        Self(out)
    }

    pub fn get(&self, chain: &str, epoch: u32) -> Option<&RoleSecret> {
        self.0.get(&(chain.to_owned(), epoch))
    }

    /// (chain, epoch) pairs held.
    pub fn held(&self) -> Vec<(String, u32)> {
        let mut v: Vec<_> = self.0.keys().cloned().collect();
        v.sort();
        v
    }

    /// Every key held (any chain, any epoch).
    pub fn all(&self) -> impl Iterator<Item = &RoleSecret> {
        self.0.values()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// New keys for `chains` (the next epoch of each), sealed to the readers
/// with a known age recipient (the others get it later by a grant).
pub fn new_keys(
    chains: &[String],
    current: &BTreeMap<String, Vec<RoleKey>>,
    readers: impl Fn(&str) -> BTreeSet<NodeId>,
    recipients: &BTreeMap<NodeId, String>,
    now_secs: u64,
) -> Result<BTreeMap<String, RoleKey>, String> {
    use base64::Engine as _;
    let mut out = BTreeMap::new();
    for chain in chains {
        let secret = RoleSecret::generate();
        let mut sealed = BTreeMap::new();
        for n in readers(chain) {
            if let Some(r) = recipients.get(&n) {
                let s = secret.seal_to(r).map_err(|e| e.to_string())?;
                sealed.insert(n, base64::engine::general_purpose::STANDARD.encode(s));
            }
        }
        let epoch = current
            .get(chain)
            .and_then(|v| v.last())
            .map_or(1, |k| k.epoch + 1);
        out.insert(
            chain.clone(),
            RoleKey {
                epoch,
                public: secret.public(),
                readers: sealed.keys().cloned().collect(),
                sealed,
                created_at: now_secs,
                made_by: None,
            },
        );
    }
    Ok(out)
}

/// Grants this node can make: for every epoch it holds, the current
/// readers that lack it and have a known recipient.
pub fn grants(
    authz: &Authz,
    keyring: &Keyring,
    readers: impl Fn(&str) -> BTreeSet<NodeId>,
    recipients: &BTreeMap<NodeId, String>,
) -> Vec<(String, u32, BTreeMap<NodeId, String>)> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for (chain, keys) in &authz.role_keys {
        let now = readers(chain);
        for k in keys {
            let Some(secret) = keyring.get(chain, k.epoch) else {
                continue;
            };
            let mut g = BTreeMap::new();
            for n in now.iter().filter(|n| !k.sealed.contains_key(*n)) {
                if let Some(r) = recipients.get(n)
                    && let Ok(s) = secret.seal_to(r)
                {
                    g.insert(
                        n.clone(),
                        base64::engine::general_purpose::STANDARD.encode(s),
                    );
                }
            }
            if !g.is_empty() {
                out.push((chain.clone(), k.epoch, g));
            }
        }
    }
    out
}
