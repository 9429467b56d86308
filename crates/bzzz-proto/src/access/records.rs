//! Users, API keys, access changes and audit records: what the
//! replicated state holds and what travels (no decisions here).

use serde::{Deserialize, Serialize};

use crate::cluster::validate_cluster_name;

/// The user name of the setup ceremony's operator (the operator password
/// is its password; it holds the admin role).
pub const ADMIN_USER: &str = "admin";

/// User names that are the operator's (HTTP Basic with any of these, or
/// with a name that is no user, is the operator).
pub const RESERVED_USERS: [&str; 3] = [ADMIN_USER, "operator", "root"];

/// Checks a user name: like role names, and never `admin` (the operator).
pub fn validate_user_name(name: &str) -> Result<(), String> {
    validate_cluster_name(name).map_err(|e| format!("user name: {e}"))
}

/// A user (a person): roles and an Argon2id verifier of the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub roles: Vec<String>,
    /// Argon2id PHC string.
    pub verifier: String,
    /// Ed25519 public key (hex) derived from the password with Argon2id
    /// under a second salt (`bzzz_crypto::access::user_signer`): the
    /// user's changes to users and keys carry a signature with it, which
    /// every node checks (no node can act as the user without the
    /// password).
    #[serde(default)]
    pub public: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The principal that created it.
    pub created_by: String,
}

/// Prefix of every API key secret (secret scanners find leaked keys).
pub const API_KEY_PREFIX: &str = "bzzz_";

/// An API key: its SHA-256 (hex), never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// `k` + the first 16 hex digits of the secret's SHA-256.
    pub id: String,
    /// A label for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// SHA-256 of the secret (hex).
    pub hash: String,
    /// Ed25519 public key (hex) derived from the secret
    /// (`bzzz_crypto::access::api_key_signer`): changes made with the key
    /// carry a signature with it.
    #[serde(default)]
    pub public: String,
    /// The role the key acts with.
    pub role: String,
    /// The user it is bound to (the key dies with the user, and acts only
    /// while the user holds `role`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub created_at: u64,
    pub created_by: String,
    /// Unix seconds after which it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// When it was revoked (refused from then on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

/// A change to users or API keys. The operator's are admin-signed
/// (threshold, `AdminAction::Access`); a user's or a key's carry a
/// signature by the key its credential derives ([`proof_bytes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum AccessChange {
    UserPut {
        user: UserRecord,
    },
    UserRemove {
        name: String,
    },
    KeyPut {
        key: ApiKeyRecord,
    },
    KeyRevoke {
        id: String,
        at: u64,
    },
    /// A user's new password: its Argon2id verifier and the public key
    /// the new password derives (the user itself, or a principal that
    /// manages users and holds its roles). Its sessions and cached
    /// credentials end: they are checked against the verifier.
    UserPassword {
        name: String,
        verifier: String,
        public: String,
    },
}

impl AccessChange {
    pub fn summary(&self) -> String {
        match self {
            AccessChange::UserPut { user } => {
                format!("put user {} ({})", user.name, user.roles.join(","))
            }
            AccessChange::UserRemove { name } => format!("remove user {name}"),
            AccessChange::KeyPut { key } => format!("create API key {} ({})", key.id, key.role),
            AccessChange::KeyRevoke { id, .. } => format!("revoke API key {id}"),
            AccessChange::UserPassword { name, .. } => {
                format!("change the password of user {name}")
            }
        }
    }
}

/// What a principal signs to make `change` (recorded by `note`) in
/// `cluster`. The note's time makes it single-use: the state machine
/// takes a principal's change only with a time after its last one.
pub fn proof_bytes(cluster: &str, note: &AuditNote, change: &AccessChange) -> Vec<u8> {
    let mut out = b"bzzz access change v1\0".to_vec();
    out.extend_from_slice(cluster.as_bytes());
    out.push(0);
    out.extend_from_slice(&note.signed_bytes());
    out.push(0);
    out.extend_from_slice(serde_json::to_string(change).unwrap_or_default().as_bytes());
    out
}

/// An API key as listed (no hash, no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyView {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub created_at: u64,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
    /// `active`, `expired` or `revoked` (at the answering node's time).
    pub state: String,
}

impl ApiKeyRecord {
    pub fn view(&self, now: u64) -> ApiKeyView {
        let state = if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|e| now >= e) {
            "expired"
        } else {
            "active"
        };
        ApiKeyView {
            id: self.id.clone(),
            name: self.name.clone(),
            role: self.role.clone(),
            user: self.user.clone(),
            created_at: self.created_at,
            created_by: self.created_by.clone(),
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            state: state.into(),
        }
    }
}

/// A user as listed (no verifier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    pub name: String,
    pub roles: Vec<String>,
    pub created_at: u64,
    pub created_by: String,
}

/// `POST /api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserAdd {
    pub name: String,
    pub roles: Vec<String>,
    pub password: crate::cluster::WireSecret,
}

/// `POST /api/v1/apikeys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyCreate {
    pub role: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Seconds of validity (none: until revoked).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// The answer to [`ApiKeyCreate`]: the secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    pub id: String,
    pub secret: crate::cluster::WireSecret,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// What a privileged action or a refusal leaves in the audit log (the
/// part the accepting node signs; the chain adds `seq` and the hashes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditNote {
    /// Unix milliseconds at the accepting node.
    pub time_ms: u64,
    /// `admin`, `user:NAME`, `key:ID`, or `anonymous`.
    pub principal: String,
    pub action: String,
    pub resource: String,
    /// `ok`, `denied` (with the count of refusals aggregated in the
    /// minute), or `refused: WHY` (the state machine refused the change).
    pub outcome: String,
    /// The accepting node.
    pub node: crate::NodeId,
    /// Refusals this entry stands for (aggregated per principal and
    /// minute); 1 for actions.
    #[serde(default = "one")]
    pub count: u32,
    /// Ed25519 signature (hex) of the accepting node over
    /// [`AuditNote::signed_bytes`].
    pub signature: String,
}

fn one() -> u32 {
    1
}

impl AuditNote {
    /// The bytes the node signs: every field but the signature, as JSON
    /// in a fixed order, after a domain tag.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let body = serde_json::json!([
            self.time_ms,
            self.principal,
            self.action,
            self.resource,
            self.outcome,
            self.node.as_str(),
            self.count,
        ]);
        let mut out = b"bzzz audit note v1\0".to_vec();
        out.extend_from_slice(body.to_string().as_bytes());
        out
    }

    /// Checks the bounds of a note that arrives in a command.
    pub fn validate(&self) -> Result<(), String> {
        let long = [&self.principal, &self.action, &self.outcome]
            .iter()
            .any(|s| s.len() > 256)
            || self.resource.len() > 2048
            || self.signature.len() != 128
            || self.time_ms > MAX_TIME_MS;
        if long {
            return Err("audit note out of bounds".into());
        }
        Ok(())
    }
}

/// The last millisecond of the year 9999 (notes name a time before it).
pub const MAX_TIME_MS: u64 = 253_402_300_799_999;

/// One entry of the audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// RFC 3339 of `time_ms`.
    pub time: String,
    #[serde(flatten)]
    pub note: AuditNote,
    /// The Raft log index that committed it.
    pub log_index: u64,
    /// SHA-256 (hex) of the previous entry (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 (hex) over `seq`, `prev_hash`, the signed note and
    /// `refused`.
    pub hash: String,
    /// Set when the state machine refused the change the entry records
    /// (nothing changed; the attempt is still on record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// The head of the chain kept in the replicated state (and so in every
/// snapshot): entries before it may be compacted away and the chain
/// still verifies from here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
}

/// A checkpoint of the audit chain (SPEC §10): entry `seq` has `hash`,
/// signed by the threshold admin key. Each signer checks the entry in its
/// own copy of the chain before it signs, so a node that rewrites its
/// history (even consistently, re-hashing every later entry) no longer
/// matches a checkpoint, and forging one takes t colluders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    pub v: u32,
    pub cluster: String,
    pub seq: u64,
    pub hash: String,
    /// When the leader asked for it (Unix ms).
    pub time_ms: u64,
}

impl AuditCheckpoint {
    pub fn validate(&self) -> Result<(), String> {
        if self.seq == 0 {
            return Err("a checkpoint names an entry (seq ≥ 1)".into());
        }
        if self.hash.len() != 64 || !self.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("a checkpoint's hash is 64 hex digits".into());
        }
        if self.cluster.is_empty() || self.cluster.len() > 128 {
            return Err("a checkpoint names its cluster".into());
        }
        Ok(())
    }
}

/// The hash of the first entry's predecessor.
pub const AUDIT_GENESIS_HASH: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";
