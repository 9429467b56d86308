//! Users, API keys and the audit chain in the replicated state (SPEC §9).
//!
//! * Changes to users and keys ([`AccessChange`]) are applied only inside
//!   an audited command ([`crate::raft::Command::Audited`]): the entry and
//!   the change commit together or not at all (fail closed, like Vault).
//!   The state machine re-checks the escalation rule against the
//!   principal the entry names, so a change can never grant more than
//!   that principal holds, whatever node proposed it.
//! * Every audited command appends one [`AuditRecord`] to the chain:
//!   `seq` + 1, the previous entry's hash, the hash over both and the
//!   node-signed note. The state keeps only the head ([`AuditHead`]), so
//!   snapshots stay small and the chain verifies from any snapshot on;
//!   the entries themselves go to each node's audit file
//!   ([`crate::audit`]).

use bzzz_proto::access::{
    ADMIN_USER, ApiKeyRecord, AuditHead, AuditNote, AuditRecord, UserRecord, may_grant,
    validate_user_name,
};
use serde::{Deserialize, Serialize};

use crate::raft::ClusterState;

/// Most users and API keys the state holds.
pub const MAX_USERS: usize = 1_000;
pub const MAX_KEYS: usize = 10_000;
/// Most notes in one [`crate::raft::Command::Audited`].
pub const MAX_NOTES: usize = 256;

/// A change to users or API keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum AccessChange {
    UserPut { user: UserRecord },
    UserRemove { name: String },
    KeyPut { key: ApiKeyRecord },
    KeyRevoke { id: String, at: u64 },
}

impl ClusterState {
    /// The roles a principal named in an audit note holds now (`admin`,
    /// `user:NAME`, `key:ID`); `None` for anyone else.
    pub fn principal_roles(&self, principal: &str) -> Option<Vec<String>> {
        if principal == ADMIN_USER {
            return Some(vec![bzzz_proto::dht::ADMIN_ROLE.to_owned()]);
        }
        if let Some(name) = principal.strip_prefix("user:") {
            return self.users.get(name).map(|u| u.roles.clone());
        }
        if let Some(id) = principal.strip_prefix("key:") {
            let k = self.api_keys.get(id)?;
            if k.revoked_at.is_some() {
                return None;
            }
            return self.key_roles(k);
        }
        None
    }

    /// The roles a key acts with: its role, while its user (if bound)
    /// exists and holds that role.
    pub fn key_roles(&self, k: &ApiKeyRecord) -> Option<Vec<String>> {
        match &k.user {
            None => Some(vec![k.role.clone()]),
            Some(u) if u == ADMIN_USER => Some(vec![k.role.clone()]),
            Some(u) => {
                let user = self.users.get(u)?;
                let admin = user.roles.iter().any(|r| r == bzzz_proto::dht::ADMIN_ROLE);
                (admin || user.roles.contains(&k.role)).then(|| vec![k.role.clone()])
            }
        }
    }

    /// Applies a change to users or keys made by `principal`.
    pub(crate) fn apply_access(
        &mut self,
        principal: &str,
        change: AccessChange,
    ) -> Result<Option<String>, String> {
        let held = self
            .principal_roles(principal)
            .ok_or_else(|| format!("{principal} is no principal of this cluster"))?;
        match change {
            AccessChange::UserPut { user } => {
                validate_user_name(&user.name)?;
                if user.name == ADMIN_USER {
                    return Err(
                        "the admin user is the operator; its password is the operator password"
                            .into(),
                    );
                }
                if user.roles.is_empty() || user.roles.len() > 32 {
                    return Err("a user holds 1 to 32 roles".into());
                }
                for r in &user.roles {
                    bzzz_proto::cluster::validate_cluster_name(r)
                        .map_err(|e| format!("role {r:?}: {e}"))?;
                }
                if !user.verifier.starts_with("$argon2id$") || user.verifier.len() > 512 {
                    return Err("a user's verifier is an Argon2id PHC string".into());
                }
                may_grant(&held, &user.roles)?;
                if !self.users.contains_key(&user.name) && self.users.len() >= MAX_USERS {
                    return Err(format!("too many users (at most {MAX_USERS})"));
                }
                self.users.insert(user.name.clone(), user);
                Ok(None)
            }
            AccessChange::UserRemove { name } => {
                let user = self
                    .users
                    .get(&name)
                    .ok_or_else(|| format!("no user {name:?}"))?;
                may_grant(&held, &user.roles)?;
                self.users.remove(&name);
                Ok(None)
            }
            AccessChange::KeyPut { key } => {
                bzzz_proto::cluster::validate_cluster_name(&key.role)
                    .map_err(|e| format!("role {:?}: {e}", key.role))?;
                if key.hash.len() != 64 || !key.id.starts_with('k') || key.id.len() != 17 {
                    return Err("malformed key record".into());
                }
                if key.name.as_ref().is_some_and(|n| n.len() > 128) {
                    return Err("a key's name is at most 128 bytes".into());
                }
                if self.api_keys.contains_key(&key.id) {
                    return Err(format!("key {} exists", key.id));
                }
                if self.api_keys.len() >= MAX_KEYS {
                    return Err(format!("too many API keys (at most {MAX_KEYS})"));
                }
                may_grant(&held, std::slice::from_ref(&key.role))?;
                if let Some(u) = &key.user
                    && u != ADMIN_USER
                {
                    let user = self.users.get(u).ok_or_else(|| format!("no user {u:?}"))?;
                    may_grant(&user.roles, std::slice::from_ref(&key.role))
                        .map_err(|_| format!("user {u} does not hold role {}", key.role))?;
                }
                self.api_keys.insert(key.id.clone(), key);
                Ok(None)
            }
            AccessChange::KeyRevoke { id, at } => {
                let key = self
                    .api_keys
                    .get(&id)
                    .ok_or_else(|| format!("no API key {id:?}"))?;
                // A key's own user may revoke it; others need its role.
                let own = key
                    .user
                    .as_ref()
                    .is_some_and(|u| principal == format!("user:{u}"))
                    || principal == format!("key:{id}");
                if !own {
                    may_grant(&held, std::slice::from_ref(&key.role))?;
                }
                if let Some(k) = self.api_keys.get_mut(&id) {
                    k.revoked_at.get_or_insert(at);
                }
                Ok(None)
            }
        }
    }

    /// Appends an entry to the audit chain (the record goes to
    /// `audit_out`, for the node's audit file).
    pub(crate) fn append_audit(
        &mut self,
        log_index: u64,
        note: AuditNote,
        refused: Option<String>,
    ) {
        let seq = self.audit_head.seq + 1;
        let prev_hash = if self.audit_head.hash.is_empty() {
            bzzz_proto::access::AUDIT_GENESIS_HASH.to_owned()
        } else {
            self.audit_head.hash.clone()
        };
        let rec = crate::audit::record(seq, prev_hash, note, log_index, refused);
        self.audit_head = AuditHead {
            seq,
            hash: rec.hash.clone(),
        };
        if self.audit_out.len() < 100_000 {
            self.audit_out.push(rec);
        }
    }
}

/// Checks a note's shape before it enters the chain.
pub(crate) fn check_note(note: &AuditNote) -> Result<(), String> {
    note.validate()?;
    if note.count == 0 {
        return Err("an audit note stands for at least one event".into());
    }
    Ok(())
}

/// The hash of an entry as the chain computes it (also used by verifiers).
pub fn hash_of(r: &AuditRecord) -> String {
    crate::audit::hash_record(r)
}
