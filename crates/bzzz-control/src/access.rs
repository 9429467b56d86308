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
    ADMIN_USER, Action, ApiKeyRecord, AuditHead, AuditNote, AuditRecord, Resource, decide,
    may_grant, validate_user_name,
};

use crate::raft::ClusterState;

/// Most users and API keys the state holds.
pub const MAX_USERS: usize = 1_000;
pub const MAX_KEYS: usize = 10_000;
/// Most active keys a principal other than admin may have created.
pub const MAX_KEYS_PER_PRINCIPAL: usize = 100;
/// Most notes in one [`crate::raft::Command::Audited`].
pub const MAX_NOTES: usize = 256;

pub use bzzz_proto::access::AccessChange;

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
    /// exists and holds that role and the principal that made it still
    /// stands (a user that exists and holds the role; a key that is not
    /// revoked or expired and stands itself; the operator), plus, as
    /// deny-only entries (`!NAME`, see [`bzzz_proto::access::DENY_ONLY`]),
    /// the roles with deny rules of that user and of that maker. So a key
    /// made by a user, or by a key, ends when its maker is removed or
    /// revoked, and never escapes a deny its maker or user is bound by.
    pub fn key_roles(&self, k: &ApiKeyRecord) -> Option<Vec<String>> {
        self.key_roles_at(k, 0)
    }

    fn key_roles_at(&self, k: &ApiKeyRecord, depth: u32) -> Option<Vec<String>> {
        // Keys made by keys: a chain this long is refused.
        if depth > 8 {
            return None;
        }
        let mut roles = vec![k.role.clone()];
        let denies = |of: &[String]| -> Vec<String> {
            of.iter()
                .filter(|r| bzzz_proto::access::has_denies(r, &self.roles))
                .map(|r| {
                    let base = r.strip_prefix(bzzz_proto::access::DENY_ONLY).unwrap_or(r);
                    format!("{}{base}", bzzz_proto::access::DENY_ONLY)
                })
                .collect()
        };
        if let Some(u) = &k.user
            && u != ADMIN_USER
        {
            let user = self.users.get(u)?;
            may_grant(&user.roles, std::slice::from_ref(&k.role)).ok()?;
            roles.extend(denies(&user.roles));
        }
        if let Some(name) = k.created_by.strip_prefix("user:") {
            let maker = self.users.get(name)?;
            may_grant(&maker.roles, std::slice::from_ref(&k.role)).ok()?;
            roles.extend(denies(&maker.roles));
        } else if let Some(id) = k.created_by.strip_prefix("key:") {
            let maker = self.api_keys.get(id)?;
            let now = self.audit_clock_ms / 1000;
            if maker.revoked_at.is_some() || maker.expires_at.is_some_and(|e| now >= e) {
                return None;
            }
            let held = self.key_roles_at(maker, depth + 1)?;
            may_grant(&held, std::slice::from_ref(&k.role)).ok()?;
            roles.extend(denies(&held));
        }
        roles.sort();
        roles.dedup();
        // The key's own role first (the one it acts with).
        if let Some(i) = roles.iter().position(|r| *r == k.role) {
            roles.swap(0, i);
        }
        Some(roles)
    }

    /// Checks that `principal` (a user or a key) signed `change` as
    /// recorded by `note`: the signature by the key its credential
    /// derives. The operator's changes come admin-signed instead.
    pub(crate) fn check_proof(
        &self,
        note: &AuditNote,
        change: &AccessChange,
        proof: Option<&str>,
    ) -> Result<(), String> {
        let principal = note.principal.as_str();
        let public = if let Some(name) = principal.strip_prefix("user:") {
            self.users.get(name).map(|u| u.public.clone())
        } else if let Some(id) = principal.strip_prefix("key:") {
            let k = self.api_keys.get(id);
            // An expired key signs nothing (by the cluster's audit clock:
            // the latest time any applied entry named).
            if let Some(e) = k.and_then(|k| k.expires_at)
                && e.saturating_mul(1000) <= self.audit_clock_ms.max(note.time_ms)
            {
                return Err(format!("{principal} has expired"));
            }
            k.map(|k| k.public.clone())
        } else {
            return Err(format!(
                "changes to users and keys by {principal} must be signed by the admin key"
            ));
        };
        let public =
            public.ok_or_else(|| format!("{principal} is no principal of this cluster"))?;
        let proof = proof.ok_or("a change to users and keys needs its principal's signature")?;
        // Single use: a principal's changes come in the order of their
        // (signed) times; a replayed one is older than the last.
        if let Some(last) = self.last_change_ms.get(principal)
            && note.time_ms <= *last
        {
            return Err(format!(
                "a change by {principal} no newer than its last one (a replay?)"
            ));
        }
        let cluster = self.cluster.as_ref().map_or("", |c| c.name.as_str());
        bzzz_crypto::access::verify_hex(
            &public,
            &bzzz_proto::access::proof_bytes(cluster, note, change),
            proof,
        )
        .map_err(|_| format!("the signature of {principal} does not verify"))
    }

    /// Records that `principal` made a proven change at `time_ms`.
    pub(crate) fn proven_change(&mut self, principal: &str, time_ms: u64) {
        if self.last_change_ms.len() >= MAX_USERS + MAX_KEYS
            && !self.last_change_ms.contains_key(principal)
        {
            // Principals that are gone make room.
            let live = |p: &String| self.principal_roles(p).is_some();
            let gone: Vec<String> = self
                .last_change_ms
                .keys()
                .filter(|p| !live(p))
                .cloned()
                .collect();
            for p in gone {
                self.last_change_ms.remove(&p);
            }
        }
        self.last_change_ms.insert(principal.to_owned(), time_ms);
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
        let may = |r: &Resource| decide(&held, &self.roles, Action::Manage, r).allowed;
        let (manages_users, manages_keys) = (may(&Resource::USERS), may(&Resource::KEYS));
        let is_users = matches!(
            change,
            AccessChange::UserPut { .. } | AccessChange::UserRemove { .. }
        );
        if is_users && !manages_users {
            return Err(format!("{principal} may not manage users"));
        }
        match change {
            AccessChange::UserPassword {
                name,
                verifier,
                public,
            } => {
                let user = self
                    .users
                    .get(&name)
                    .ok_or_else(|| format!("no user {name:?}"))?;
                let own = principal == format!("user:{name}");
                if !own {
                    if !manages_users {
                        return Err(format!(
                            "{principal} may change only its own password (manage on users is needed for others)"
                        ));
                    }
                    may_grant(&held, &user.roles)?;
                }
                if !verifier.starts_with("$argon2id$")
                    || verifier.len() > 512
                    || public.len() != 64
                    || !hex_ok(&public)
                {
                    return Err("a user's verifier is an Argon2id PHC string".into());
                }
                let user = self.users.get_mut(&name).ok_or("no user")?;
                user.verifier = verifier;
                user.public = public;
                Ok(None)
            }
            AccessChange::UserPut { user } => {
                validate_user_name(&user.name)?;
                if bzzz_proto::access::RESERVED_USERS.contains(&user.name.as_str()) {
                    return Err(format!(
                        "{} is reserved for the operator, whose password is the operator password",
                        user.name
                    ));
                }
                if user.roles.is_empty() || user.roles.len() > 32 {
                    return Err("a user holds 1 to 32 roles".into());
                }
                for r in &user.roles {
                    bzzz_proto::cluster::validate_cluster_name(r)
                        .map_err(|e| format!("role {r:?}: {e}"))?;
                }
                let public_ok = user.public.len() == 64 && hex_ok(&user.public);
                if !user.verifier.starts_with("$argon2id$")
                    || user.verifier.len() > 512
                    || !public_ok
                {
                    return Err("a user's verifier is an Argon2id PHC string".into());
                }
                bzzz_proto::access::may_grant_keeping_denies(&held, &user.roles, &self.roles)?;
                // Replacing a user also needs every role it holds now (no
                // taking over a stronger account).
                if let Some(old) = self.users.get(&user.name) {
                    may_grant(&held, &old.roles)?;
                }
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
                // Its keys, and the keys it made, end with it (a user of
                // the same name made later does not bring them back; keys
                // made by those keys stand no longer, their maker being
                // revoked).
                let at = self.audit_clock_ms / 1000;
                let maker = format!("user:{name}");
                for k in self.api_keys.values_mut() {
                    if k.user.as_deref() == Some(name.as_str()) || k.created_by == maker {
                        k.revoked_at.get_or_insert(at);
                    }
                }
                Ok(None)
            }
            AccessChange::KeyPut { mut key } => {
                key.created_by = principal.to_owned();
                // The same key again (a retried write that did commit).
                if self
                    .api_keys
                    .get(&key.id)
                    .is_some_and(|k| k.hash == key.hash && k.public == key.public)
                {
                    return Ok(None);
                }
                bzzz_proto::cluster::validate_cluster_name(&key.role)
                    .map_err(|e| format!("role {:?}: {e}", key.role))?;
                if key.hash.len() != 64
                    || !key.id.starts_with('k')
                    || key.id.len() != 17
                    || key.public.len() != 64
                    || !hex_ok(&key.public)
                {
                    return Err("malformed key record".into());
                }
                if key.name.as_ref().is_some_and(|n| n.len() > 128) {
                    return Err("a key's name is at most 128 bytes".into());
                }
                let own = key
                    .user
                    .as_ref()
                    .is_some_and(|u| principal == format!("user:{u}"));
                if !own && !manages_keys {
                    return Err(format!(
                        "{principal} may create keys only for itself (manage on keys is needed for others)"
                    ));
                }
                if self.api_keys.contains_key(&key.id) {
                    return Err(format!("key {} exists", key.id));
                }
                let admin = held.iter().any(|r| r == bzzz_proto::dht::ADMIN_ROLE);
                let active = self
                    .api_keys
                    .values()
                    .filter(|k| k.created_by == principal && k.revoked_at.is_none())
                    .count();
                if !admin && active >= MAX_KEYS_PER_PRINCIPAL {
                    return Err(format!(
                        "{principal} holds {MAX_KEYS_PER_PRINCIPAL} active keys: revoke some first"
                    ));
                }
                if self.api_keys.len() >= MAX_KEYS {
                    // Make room: revoked keys are kept only for the record.
                    let oldest_revoked = self
                        .api_keys
                        .values()
                        .filter(|k| k.revoked_at.is_some())
                        .min_by_key(|k| k.revoked_at)
                        .map(|k| k.id.clone());
                    if let Some(id) = oldest_revoked {
                        self.api_keys.remove(&id);
                    }
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
                // The key itself or its own user may revoke it; anyone
                // else needs manage on keys (checked by the node) and the
                // key's role.
                let own = key
                    .user
                    .as_ref()
                    .is_some_and(|u| principal == format!("user:{u}"))
                    || principal == format!("key:{id}");
                if !own && !manages_keys {
                    return Err(format!(
                        "{principal} may revoke only its own keys (manage on keys is needed for others)"
                    ));
                }
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
    /// Whether this copy of the chain holds entry `seq` with `hash` (the
    /// head, or one of the recent entries).
    pub fn holds_audit_entry(&self, seq: u64, hash: &str) -> bool {
        (self.audit_head.seq == seq && self.audit_head.hash == hash)
            || self
                .audit_recent
                .iter()
                .any(|(s, h)| *s == seq && h == hash)
    }

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
        if self.audit_recent.len() >= crate::raft::RECENT_HASHES {
            self.audit_recent.pop_front();
        }
        self.audit_recent.push_back((seq, rec.hash.clone()));
        if self.audit_out.len() < 100_000 {
            self.audit_out.push(rec);
        }
    }
}

fn hex_ok(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
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
