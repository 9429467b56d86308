//! Access control (SPEC §9): principals, permissions as *action on
//! resource pattern*, and the one pure function that decides.
//!
//! * A permission rule is `ACTION:RESOURCE` or `deny:ACTION:RESOURCE`.
//!   ACTION is `read`, `write`, `infer`, `deploy`, `manage` or `*`.
//!   RESOURCE is a `ucxl://` pattern (`any` components, `*`/`**` path
//!   segments), `model:GLOB`, `node:GLOB`, `tasks:GLOB`, one of the words
//!   `cluster`, `audit`, `users`, `keys`, `roles`, `members`, or `*`.
//!   Globs know `*` (any run of characters) only.
//! * [`decide`]: deny by default; an explicit deny wins over every allow;
//!   the `admin` role may do everything (Vault's root policy, etcd's root
//!   role). Each role also reads the DHT records of itself and of the
//!   roles its `reads` names, and writes its own (implicit rules, so a
//!   role's `reads` means one thing for node keys and for principals).
//! * [`may_grant`]: Kubernetes' escalation rule: no principal creates a
//!   user, key or role holding more than it holds itself.
//!
//! Users and API keys ([`UserRecord`], [`ApiKeyRecord`]) live in the
//! replicated state; only an API key's SHA-256 is ever stored.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cluster::{Authority, RoleDef};
use crate::dht::ADMIN_ROLE;
use crate::ucxl::Address;

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Read,
    Write,
    Infer,
    Deploy,
    Manage,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Read,
        Action::Write,
        Action::Infer,
        Action::Deploy,
        Action::Manage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Infer => "infer",
            Action::Deploy => "deploy",
            Action::Manage => "manage",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not an action (read, write, infer, deploy, manage)"))
    }
}

/// The fixed resources (no name inside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fixed {
    /// Cluster facts and settings: members, roles, placements, tokens,
    /// key policy, the registry.
    Cluster,
    Audit,
    Users,
    Keys,
    Roles,
    Members,
}

impl Fixed {
    pub const ALL: [Fixed; 6] = [
        Fixed::Cluster,
        Fixed::Audit,
        Fixed::Users,
        Fixed::Keys,
        Fixed::Roles,
        Fixed::Members,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Fixed::Cluster => "cluster",
            Fixed::Audit => "audit",
            Fixed::Users => "users",
            Fixed::Keys => "keys",
            Fixed::Roles => "roles",
            Fixed::Members => "members",
        }
    }
}

/// A concrete resource a request acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Ucxl(Address),
    Model(String),
    Node(String),
    Tasks(String),
    Fixed(Fixed),
}

impl Resource {
    pub const CLUSTER: Resource = Resource::Fixed(Fixed::Cluster);
    pub const AUDIT: Resource = Resource::Fixed(Fixed::Audit);
    pub const USERS: Resource = Resource::Fixed(Fixed::Users);
    pub const KEYS: Resource = Resource::Fixed(Fixed::Keys);
    pub const ROLES: Resource = Resource::Fixed(Fixed::Roles);
    pub const MEMBERS: Resource = Resource::Fixed(Fixed::Members);
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Ucxl(a) => write!(f, "{}", a.key_text()),
            Resource::Model(m) => write!(f, "model:{m}"),
            Resource::Node(n) => write!(f, "node:{n}"),
            Resource::Tasks(r) => write!(f, "tasks:{r}"),
            Resource::Fixed(x) => f.write_str(x.as_str()),
        }
    }
}

/// The resource side of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Any,
    Ucxl(Address),
    Model(String),
    Node(String),
    Tasks(String),
    Fixed(Fixed),
}

impl Pattern {
    pub fn matches(&self, r: &Resource) -> bool {
        match (self, r) {
            (Pattern::Any, _) => true,
            (Pattern::Ucxl(p), Resource::Ucxl(a)) => p.matches(a),
            // A pattern without a tag (`llama3`, `llama3*`) is about the
            // name: it matches every tag of it.
            (Pattern::Model(g), Resource::Model(m)) if !g.contains(':') => {
                glob(g, m.split(':').next().unwrap_or(m))
            }
            (Pattern::Model(g), Resource::Model(m)) => glob(g, m),
            (Pattern::Node(g), Resource::Node(n)) => glob(g, n),
            (Pattern::Tasks(g), Resource::Tasks(t)) => glob(g, t),
            (Pattern::Fixed(a), Resource::Fixed(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Any => f.write_str("*"),
            Pattern::Ucxl(a) => write!(f, "{a}"),
            Pattern::Model(m) => write!(f, "model:{m}"),
            Pattern::Node(n) => write!(f, "node:{n}"),
            Pattern::Tasks(t) => write!(f, "tasks:{t}"),
            Pattern::Fixed(x) => f.write_str(x.as_str()),
        }
    }
}

/// Longest glob in a rule.
const MAX_GLOB: usize = 256;

fn parse_glob(s: &str, what: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_GLOB {
        return Err(format!("{what} pattern must be 1–{MAX_GLOB} characters"));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("{what} pattern: {c:?} is not allowed"));
    }
    Ok(s.to_owned())
}

impl std::str::FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Pattern::Any);
        }
        if s.get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("ucxl://"))
        {
            return s
                .parse::<Address>()
                .map(Pattern::Ucxl)
                .map_err(|e| e.to_string());
        }
        if let Some(m) = s.strip_prefix("model:") {
            return parse_glob(m, "model").map(Pattern::Model);
        }
        if let Some(n) = s.strip_prefix("node:") {
            return parse_glob(n, "node").map(Pattern::Node);
        }
        if let Some(t) = s.strip_prefix("tasks:") {
            return parse_glob(t, "tasks").map(Pattern::Tasks);
        }
        Fixed::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .map(Pattern::Fixed)
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a resource (ucxl://…, model:GLOB, node:GLOB, tasks:GLOB, cluster, audit, users, keys, roles, members, *)"
                )
            })
    }
}

/// `*` matches any run of characters; everything else itself. Linear
/// time (greedy with one back-tracking point, no blow-up).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == t[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == b'*')
}

/// One permission rule of a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub deny: bool,
    /// `None`: every action (`*`).
    pub action: Option<Action>,
    pub resource: Pattern,
}

impl Rule {
    pub fn matches(&self, action: Action, r: &Resource) -> bool {
        self.action.is_none_or(|a| a == action) && self.resource.matches(r)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.deny {
            f.write_str("deny:")?;
        }
        match self.action {
            Some(a) => write!(f, "{a}:{}", self.resource),
            None => write!(f, "*:{}", self.resource),
        }
    }
}

impl std::str::FromStr for Rule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() > 512 {
            return Err("a permission is longer than 512 bytes".into());
        }
        let (deny, rest) = match s.strip_prefix("deny:") {
            Some(r) => (true, r),
            None => (false, s),
        };
        let (action, resource) = rest
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: a permission is ACTION:RESOURCE"))?;
        let action = match action {
            "*" => None,
            a => Some(a.parse::<Action>().map_err(|e| format!("{s:?}: {e}"))?),
        };
        let resource = resource
            .parse::<Pattern>()
            .map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Rule {
            deny,
            action,
            resource,
        })
    }
}

/// A pattern for every record of `role` (any agent, project, task, path).
pub fn role_records(role: &str) -> Pattern {
    // Role names are validated names, so this always parses.
    format!("ucxl://any:{role}@any:any/*^/**")
        .parse()
        .unwrap_or(Pattern::Fixed(Fixed::Cluster))
}

/// The roles BZZZ starts with (SPEC §9). A definition in the registry
/// (admin-signed) replaces the built-in one of the same name.
pub fn builtin_role(name: &str) -> Option<RoleDef> {
    let def = |authority, permissions: &[&str], reads: &[&str]| RoleDef {
        name: name.to_owned(),
        authority,
        permissions: permissions.iter().map(|s| (*s).to_owned()).collect(),
        reads: reads.iter().map(|s| (*s).to_owned()).collect(),
        members: Vec::new(),
    };
    Some(match name {
        ADMIN_ROLE => def(Authority::Master, &["*:*"], &[]),
        "senior_software_architect" => def(
            Authority::Decision,
            &[
                "read:cluster",
                "read:audit",
                "infer:model:*",
                "read:tasks:*",
                "write:tasks:*",
            ],
            &["backend_developer", "observer"],
        ),
        "backend_developer" => def(
            Authority::Coordination,
            &[
                "read:cluster",
                "infer:model:*",
                "read:tasks:*",
                "write:tasks:*",
            ],
            &[],
        ),
        "observer" => def(Authority::ReadOnly, &["read:cluster"], &[]),
        _ => return None,
    })
}

/// The names of the built-in roles.
pub const BUILTIN_ROLES: [&str; 4] = [
    ADMIN_ROLE,
    "senior_software_architect",
    "backend_developer",
    "observer",
];

/// A role as in force: the registry's definition, else the built-in one.
pub fn role_def<'a>(
    name: &str,
    registry: &'a BTreeMap<String, RoleDef>,
) -> Option<std::borrow::Cow<'a, RoleDef>> {
    registry
        .get(name)
        .map(std::borrow::Cow::Borrowed)
        .or_else(|| builtin_role(name).map(std::borrow::Cow::Owned))
}

/// A rule string parsed once per thread (roles' rules are few and
/// reused; parsing a `ucxl://` pattern on every request would cost more
/// than the decision). `None` for a rule that does not parse (role
/// definitions are validated when made; older ones may hold others).
fn parsed(text: &str) -> Option<std::rc::Rc<Rule>> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;
    thread_local! {
        static CACHE: RefCell<HashMap<String, Option<Rc<Rule>>>> = RefCell::new(HashMap::new());
    }
    CACHE.with(|c| {
        if let Some(r) = c.borrow().get(text) {
            return r.clone();
        }
        let r = text.parse::<Rule>().ok().map(Rc::new);
        let mut c = c.borrow_mut();
        if c.len() >= 4096 {
            c.clear();
        }
        c.insert(text.to_owned(), r.clone());
        r
    })
}

/// The outcome of [`decide`], with the rule that decided (for the audit
/// log and the 403's body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub rule: String,
}

/// Whether a caller holding `roles` may do `action` on `resource`.
pub fn decide(
    roles: &[String],
    registry: &BTreeMap<String, RoleDef>,
    action: Action,
    resource: &Resource,
) -> Decision {
    if roles.iter().any(|r| r == ADMIN_ROLE) {
        return Decision {
            allowed: true,
            rule: "role admin may do everything".into(),
        };
    }
    let mut allow: Option<String> = None;
    for name in roles {
        // `!NAME`: only the deny rules of role NAME apply (see
        // [`DENY_ONLY`]).
        let (name, deny_only) = match name.strip_prefix(DENY_ONLY) {
            Some(n) => (n, true),
            None => (name.as_str(), false),
        };
        let Some(def) = role_def(name, registry) else {
            continue;
        };
        if deny_only {
            for rule in def.permissions.iter().filter_map(|t| parsed(t)) {
                if rule.deny && rule.matches(action, resource) {
                    return Decision {
                        allowed: false,
                        rule: format!("rule {rule} of role {name} denies {action} on {resource}"),
                    };
                }
            }
            continue;
        }
        // Implicit rules: read the records of this role and of the roles
        // it reads, write its own (matched on the address's role, which
        // is what `role_records` patterns would match).
        if let Resource::Ucxl(a) = resource {
            let role_is = |r: &str| matches!(&a.role, crate::ucxl::Component::Name(n) if n == r);
            let hit = match action {
                Action::Read => role_is(name) || def.reads.iter().any(|r| role_is(r)),
                Action::Write => role_is(name),
                _ => false,
            };
            if hit && allow.is_none() {
                allow = Some(format!(
                    "rule {action}:{} of role {name}",
                    role_records(a.role.to_string().as_str())
                ));
            }
        }
        for text in &def.permissions {
            let Some(rule) = parsed(text) else {
                continue;
            };
            if !rule.matches(action, resource) {
                continue;
            }
            if rule.deny {
                return Decision {
                    allowed: false,
                    rule: format!("rule {rule} of role {name} denies {action} on {resource}"),
                };
            }
            allow.get_or_insert_with(|| format!("rule {rule} of role {name}"));
        }
    }
    match allow {
        Some(rule) => Decision {
            allowed: true,
            rule,
        },
        None => Decision {
            allowed: false,
            rule: format!(
                "no rule of the caller's roles allows {action} on {resource} (deny by default)"
            ),
        },
    }
}

/// The escalation rule: may a caller holding `holder` give `granted` to
/// a new user or key? Only roles it holds itself (admin may give any).
/// A principal's role list entry `!NAME` stands for "the deny rules of
/// role NAME apply, its allows do not": a key acts with its one role, and
/// the denies of the user it is bound to and of the principal that made
/// it still hold (so a narrower key never escapes a deny).
pub const DENY_ONLY: &str = "!";

/// Whether role `name` (as in force) carries any deny rule.
pub fn has_denies(name: &str, registry: &BTreeMap<String, RoleDef>) -> bool {
    let name = name.strip_prefix(DENY_ONLY).unwrap_or(name);
    role_def(name, registry).is_some_and(|d| {
        d.permissions
            .iter()
            .filter_map(|t| parsed(t))
            .any(|r| r.deny)
    })
}

/// [`may_grant`], and a granter that holds roles with deny rules (not
/// admin) gives every one of them too: a user made by a principal never
/// escapes that principal's denies.
pub fn may_grant_keeping_denies(
    holder: &[String],
    granted: &[String],
    registry: &BTreeMap<String, RoleDef>,
) -> Result<(), String> {
    may_grant(holder, granted)?;
    if holder.iter().any(|r| r == ADMIN_ROLE) {
        return Ok(());
    }
    for h in holder.iter().filter(|h| has_denies(h, registry)) {
        let base = h.strip_prefix(DENY_ONLY).unwrap_or(h);
        if !granted.iter().any(|g| g == base) {
            return Err(format!(
                "cannot leave out role {base}: its deny rules bind the granter, so they bind whom it grants to"
            ));
        }
    }
    Ok(())
}

pub fn may_grant(holder: &[String], granted: &[String]) -> Result<(), String> {
    if holder.iter().any(|r| r == ADMIN_ROLE) {
        return Ok(());
    }
    match granted.iter().find(|g| !holder.contains(g)) {
        Some(g) => Err(format!(
            "cannot grant role {g}: a principal grants only roles it holds itself"
        )),
        None => Ok(()),
    }
}

mod records;
pub use records::*;

#[cfg(test)]
mod tests;
