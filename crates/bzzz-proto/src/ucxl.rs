//! UCXL addresses (SPEC §7): a strict parser whose errors name the bad
//! component, a canonical form that round-trips, and wildcard patterns.
//!
//! `ucxl://AGENT:ROLE@PROJECT:TASK/TEMPORAL/PATH[?QUERY][#FRAGMENT]`
//!
//! * AGENT, ROLE, PROJECT, TASK: 1–64 of ASCII letters, digits, `_`, `-`,
//!   or the wildcard `any` (patterns and reads only).
//! * TEMPORAL: `*^` latest, `*~` first, `*~N` version N (from 1), `~~N` N
//!   versions back from the latest, `^^N` N versions forward from the first,
//!   or an RFC 3339 / ISO-8601 UTC time (`2026-11-30T12:00:00Z`: the
//!   version current then).
//! * PATH: zero or more `/`-separated segments of letters, digits, `_`, `-`,
//!   `.`, never `.` or `..` alone, at most 64 characters each and 32
//!   segments; `*` (one segment) and `**` (any number) in patterns only.
//! * QUERY and FRAGMENT: kept (printable ASCII, no spaces, `#` not in the
//!   query), not part of the record's key.
//!
//! The canonical form is the address printed by `Display`: lower-case
//! scheme, the components as given (they are case-sensitive), the temporal
//! segment normalized (times in UTC with `Z`, whole seconds unless given
//! finer), no trailing `/`.

use std::fmt;

/// Longest address accepted (bytes).
pub const MAX_ADDRESS_LEN: usize = 2048;
const MAX_COMPONENT: usize = 64;
const MAX_SEGMENT: usize = 64;
const MAX_SEGMENTS: usize = 32;
const MAX_EXTRA: usize = 512;

/// Why an address is refused: which component and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid UCXL address: {component}: {reason}")]
pub struct UcxlError {
    /// `scheme`, `agent`, `role`, `project`, `task`, `temporal`, `path`,
    /// `query`, `fragment`, or `address` (the whole).
    pub component: &'static str,
    pub reason: String,
}

fn err(component: &'static str, reason: impl Into<String>) -> UcxlError {
    UcxlError {
        component,
        reason: reason.into(),
    }
}

/// AGENT, ROLE, PROJECT or TASK: a name or the wildcard `any`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Any,
    Name(String),
}

impl Component {
    fn parse(s: &str, which: &'static str) -> Result<Self, UcxlError> {
        if s == "any" {
            return Ok(Self::Any);
        }
        if s.is_empty() {
            return Err(err(which, "is empty"));
        }
        if s.len() > MAX_COMPONENT {
            return Err(err(
                which,
                format!("is longer than {MAX_COMPONENT} characters"),
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(err(
                which,
                format!("{c:?} is not allowed (letters, digits, '_', '-')"),
            ));
        }
        Ok(Self::Name(s.to_owned()))
    }

    fn matches(&self, other: &Component) -> bool {
        match (self, other) {
            (Component::Any, _) => true,
            (Component::Name(a), Component::Name(b)) => a == b,
            (Component::Name(_), Component::Any) => false,
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Component::Any => f.write_str("any"),
            Component::Name(n) => f.write_str(n),
        }
    }
}

/// Which version of a record an address means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Temporal {
    /// `*^`: the latest version.
    Latest,
    /// `*~`: the first version.
    First,
    /// `*~N`: version N (from 1).
    Version(u64),
    /// `~~N`: N versions back from the latest (`~~0` is the latest).
    Back(u64),
    /// `^^N`: N versions forward from the first (`^^0` is the first).
    Forward(u64),
    /// An instant (Unix seconds and nanoseconds, UTC): the version current
    /// then.
    At { secs: u64, nanos: u32 },
}

fn number(s: &str, what: &str) -> Result<u64, UcxlError> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("temporal", format!("{what} needs a whole number")));
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(err("temporal", format!("{what}: no leading zeros")));
    }
    s.parse()
        .map_err(|_| err("temporal", format!("{what}: number out of range")))
}

impl Temporal {
    fn parse(s: &str) -> Result<Self, UcxlError> {
        if s.is_empty() {
            return Err(err("temporal", "is empty (use *^ for the latest version)"));
        }
        if s == "*^" {
            return Ok(Self::Latest);
        }
        if s == "*~" {
            return Ok(Self::First);
        }
        if let Some(n) = s.strip_prefix("*~") {
            let n = number(n, "*~N")?;
            if n == 0 {
                return Err(err("temporal", "versions count from 1 (*~1 is the first)"));
            }
            return Ok(Self::Version(n));
        }
        if let Some(n) = s.strip_prefix("~~") {
            return Ok(Self::Back(number(n, "~~N")?));
        }
        if let Some(n) = s.strip_prefix("^^") {
            return Ok(Self::Forward(number(n, "^^N")?));
        }
        if s.len() <= 40 && s.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
            let t = humantime::parse_rfc3339(s).map_err(|e| {
                err(
                    "temporal",
                    format!("{s:?} is not an RFC 3339 UTC time (e.g. 2026-11-30T12:00:00Z): {e}"),
                )
            })?;
            let d = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| err("temporal", "times before 1970 are not supported"))?;
            return Ok(Self::At {
                secs: d.as_secs(),
                nanos: d.subsec_nanos(),
            });
        }
        Err(err(
            "temporal",
            format!("{s:?} is not one of *^, *~, *~N, ~~N, ^^N or an RFC 3339 time"),
        ))
    }
}

impl fmt::Display for Temporal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Temporal::Latest => f.write_str("*^"),
            Temporal::First => f.write_str("*~"),
            Temporal::Version(n) => write!(f, "*~{n}"),
            Temporal::Back(n) => write!(f, "~~{n}"),
            Temporal::Forward(n) => write!(f, "^^{n}"),
            Temporal::At { secs, nanos } => {
                let t = std::time::UNIX_EPOCH + std::time::Duration::new(*secs, *nanos);
                if *nanos == 0 {
                    write!(f, "{}", humantime::format_rfc3339_seconds(t))
                } else {
                    write!(f, "{}", humantime::format_rfc3339_nanos(t))
                }
            }
        }
    }
}

/// A PATH segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    Name(String),
    /// `*`: any one segment (patterns).
    One,
    /// `**`: any number of segments, none included (patterns).
    Many,
}

impl Segment {
    fn parse(s: &str) -> Result<Self, UcxlError> {
        match s {
            "*" => return Ok(Self::One),
            "**" => return Ok(Self::Many),
            "" => return Err(err("path", "has an empty segment ('//' or a trailing '/')")),
            "." | ".." => return Err(err("path", format!("segment {s:?} is not allowed"))),
            _ => {}
        }
        if s.len() > MAX_SEGMENT {
            return Err(err(
                "path",
                format!("a segment is longer than {MAX_SEGMENT} characters"),
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(err(
                "path",
                format!("{c:?} is not allowed in a segment (letters, digits, '_', '-', '.')"),
            ));
        }
        Ok(Self::Name(s.to_owned()))
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Segment::Name(n) => f.write_str(n),
            Segment::One => f.write_str("*"),
            Segment::Many => f.write_str("**"),
        }
    }
}

/// A parsed UCXL address or pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    pub agent: Component,
    pub role: Component,
    pub project: Component,
    pub task: Component,
    pub temporal: Temporal,
    pub path: Vec<Segment>,
    pub query: Option<String>,
    pub fragment: Option<String>,
}

fn extra(s: &str, which: &'static str, hash_ok: bool) -> Result<String, UcxlError> {
    if s.len() > MAX_EXTRA {
        return Err(err(which, format!("is longer than {MAX_EXTRA} characters")));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !c.is_ascii_graphic() || (!hash_ok && *c == '#'))
    {
        return Err(err(which, format!("{c:?} is not allowed")));
    }
    Ok(s.to_owned())
}

impl std::str::FromStr for Address {
    type Err = UcxlError;

    fn from_str(s: &str) -> Result<Self, UcxlError> {
        if s.len() > MAX_ADDRESS_LEN {
            return Err(err(
                "address",
                format!("is longer than {MAX_ADDRESS_LEN} bytes"),
            ));
        }
        let rest = s
            .strip_prefix("ucxl://")
            .or_else(|| {
                s.get(..7)
                    .filter(|p| p.eq_ignore_ascii_case("ucxl://"))
                    .and_then(|_| s.get(7..))
            })
            .ok_or_else(|| err("scheme", "the address must start with ucxl://"))?;
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(extra(f, "fragment", true)?)),
            None => (rest, None),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(extra(q, "query", false)?)),
            None => (rest, None),
        };
        let (authority, rest) = rest.split_once('/').ok_or_else(|| {
            err(
                "temporal",
                "missing (ucxl://AGENT:ROLE@PROJECT:TASK/TEMPORAL/…)",
            )
        })?;
        let (who, what) = authority
            .split_once('@')
            .ok_or_else(|| err("project", "missing: AGENT:ROLE@PROJECT:TASK needs the '@'"))?;
        let (agent, role) = who
            .split_once(':')
            .ok_or_else(|| err("role", "missing: AGENT:ROLE needs the ':'"))?;
        let (project, task) = what
            .split_once(':')
            .ok_or_else(|| err("task", "missing: PROJECT:TASK needs the ':'"))?;
        let (temporal, path) = match rest.split_once('/') {
            Some((t, p)) => (t, Some(p)),
            None => (rest, None),
        };
        let path = match path {
            None => Vec::new(),
            Some(p) => {
                let segs: Vec<Segment> =
                    p.split('/').map(Segment::parse).collect::<Result<_, _>>()?;
                if segs.len() > MAX_SEGMENTS {
                    return Err(err(
                        "path",
                        format!("has more than {MAX_SEGMENTS} segments"),
                    ));
                }
                segs
            }
        };
        Ok(Self {
            agent: Component::parse(agent, "agent")?,
            role: Component::parse(role, "role")?,
            project: Component::parse(project, "project")?,
            task: Component::parse(task, "task")?,
            temporal: Temporal::parse(temporal)?,
            path,
            query,
            fragment,
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ucxl://{}:{}@{}:{}/{}",
            self.agent, self.role, self.project, self.task, self.temporal
        )?;
        for s in &self.path {
            write!(f, "/{s}")?;
        }
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        if let Some(x) = &self.fragment {
            write!(f, "#{x}")?;
        }
        Ok(())
    }
}

impl Address {
    /// Whether this is a pattern (a wildcard anywhere).
    pub fn is_pattern(&self) -> bool {
        [&self.agent, &self.role, &self.project, &self.task]
            .iter()
            .any(|c| matches!(c, Component::Any))
            || self.path.iter().any(|s| !matches!(s, Segment::Name(_)))
    }

    /// Checks an address a write may name: concrete ROLE, PROJECT, TASK
    /// and path, temporal `*^` (a write makes the next version). AGENT may
    /// be `any`: a record no particular agent wrote, such as the cluster
    /// configuration at `ucxl://any:admin@cluster:config/*^/…` (the
    /// address issue #14 documents); it is then part of the key as `any`.
    pub fn check_writable(&self) -> Result<(), UcxlError> {
        for (c, which) in [
            (&self.role, "role"),
            (&self.project, "project"),
            (&self.task, "task"),
        ] {
            if matches!(c, Component::Any) {
                return Err(err(
                    which,
                    "a write names it ('any' is for patterns and reads)",
                ));
            }
        }
        if self.path.iter().any(|s| !matches!(s, Segment::Name(_))) {
            return Err(err(
                "path",
                "a write names every segment ('*' and '**' are for patterns)",
            ));
        }
        if self.temporal != Temporal::Latest {
            return Err(err(
                "temporal",
                "a write uses *^ (it makes the next version)",
            ));
        }
        Ok(())
    }

    /// The record key's text: the canonical address without its temporal
    /// segment, query and fragment (hash it for the DHT key).
    pub fn key_text(&self) -> String {
        let mut out = format!(
            "ucxl://{}:{}@{}:{}",
            self.agent, self.role, self.project, self.task
        );
        for s in &self.path {
            out.push('/');
            out.push_str(&s.to_string());
        }
        out
    }

    /// Whether `self` (a pattern, or a plain address) matches the concrete
    /// address `addr` (temporal, query and fragment are not compared).
    pub fn matches(&self, addr: &Address) -> bool {
        self.agent.matches(&addr.agent)
            && self.role.matches(&addr.role)
            && self.project.matches(&addr.project)
            && self.task.matches(&addr.task)
            && path_matches(&self.path, &addr.path)
    }
}

/// Glob matching of path segments by dynamic programming (at most 33 × 33
/// cells: no backtracking blow-up on patterns full of `**`).
fn path_matches(pattern: &[Segment], path: &[Segment]) -> bool {
    let (m, n) = (pattern.len(), path.len());
    // ok[i][j]: pattern[i..] matches path[j..].
    let mut ok = vec![vec![false; n + 1]; m + 1];
    ok[m][n] = true;
    for i in (0..m).rev() {
        for j in (0..=n).rev() {
            ok[i][j] = match &pattern[i] {
                Segment::Many => ok[i + 1][j] || (j < n && ok[i][j + 1]),
                Segment::One => j < n && ok[i + 1][j + 1],
                Segment::Name(want) => {
                    j < n
                        && matches!(&path[j], Segment::Name(have) if have == want)
                        && ok[i + 1][j + 1]
                }
            };
        }
    }
    ok[0][0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(s: &str) -> Address {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn addresses_parse_and_print_canonically() {
        for s in [
            "ucxl://claude:backend_developer@bzzz:api-v2/*^/src/main.rs",
            "ucxl://any:admin@cluster:config/*^/control/weights",
            "ucxl://a:b@c:d/*~",
            "ucxl://a:b@c:d/*~3/x",
            "ucxl://a:b@c:d/~~2/x",
            "ucxl://a:b@c:d/^^1/x",
            "ucxl://a:b@c:d/2026-11-30T12:00:00Z/x?v=1#top",
            "ucxl://any:any@any:any/*^/**",
        ] {
            assert_eq!(a(s).to_string(), s);
        }
        assert_eq!(
            a("UCXL://a:b@c:d/2026-11-30T12:00:00.5Z").to_string(),
            "ucxl://a:b@c:d/2026-11-30T12:00:00.500000000Z"
        );
    }

    #[test]
    fn errors_name_the_bad_component() {
        for (s, which) in [
            ("http://a:b@c:d/*^", "scheme"),
            ("ucxl://a b:b@c:d/*^", "agent"),
            ("ucxl://a@c:d/*^", "role"),
            ("ucxl://a:b@c/*^", "task"),
            ("ucxl://a:b:c:d/*^", "project"),
            ("ucxl://a:b@c:d", "temporal"),
            ("ucxl://a:b@c:d/latest", "temporal"),
            ("ucxl://a:b@c:d/*~0", "temporal"),
            ("ucxl://a:b@c:d/~~01", "temporal"),
            ("ucxl://a:b@c:d/2026-13-01T00:00:00Z", "temporal"),
            ("ucxl://a:b@c:d/*^/..", "path"),
            ("ucxl://a:b@c:d/*^/a//b", "path"),
            ("ucxl://a:b@c:d/*^/a/", "path"),
            ("ucxl://a:b@c:d/*^/x?a b", "query"),
            ("ucxl://a:b@c:d/*^/x#a b", "fragment"),
        ] {
            let e = s.parse::<Address>().expect_err(s);
            assert_eq!(e.component, which, "{s}: {e}");
        }
        let long = format!("ucxl://{}:b@c:d/*^", "a".repeat(65));
        assert_eq!(
            long.parse::<Address>().expect_err("long").component,
            "agent"
        );
    }

    #[test]
    fn patterns_match() {
        let addr = a("ucxl://claude:backend@bzzz:api/*^/src/net/mod.rs");
        for (p, yes) in [
            ("ucxl://any:backend@bzzz:any/*^/**", true),
            ("ucxl://any:any@any:any/*^/src/*/mod.rs", true),
            ("ucxl://any:any@any:any/*^/src/**/mod.rs", true),
            ("ucxl://any:any@any:any/*^/**/mod.rs", true),
            ("ucxl://any:any@any:any/*^/src/*", false),
            ("ucxl://any:frontend@any:any/*^/**", false),
            ("ucxl://claude:backend@bzzz:api/*~/src/net/mod.rs", true),
        ] {
            assert_eq!(a(p).matches(&addr), yes, "{p}");
        }
        assert!(a("ucxl://any:b@c:d/*^").is_pattern());
        // Many `**` against a long path: answered at once.
        let deep = format!("ucxl://a:b@c:d/*^/{}", vec!["x"; 32].join("/"));
        let stars = format!("ucxl://a:b@c:d/*^/{}/y", vec!["**"; 31].join("/"));
        assert!(!a(&stars).matches(&a(&deep)));
        assert!(a("ucxl://a:b@c:d/*^/x").check_writable().is_ok());
        assert!(
            a("ucxl://any:admin@cluster:config/*^/x")
                .check_writable()
                .is_ok()
        );
        assert_eq!(
            a("ucxl://a:any@c:d/*^/x")
                .check_writable()
                .expect_err("w")
                .component,
            "role"
        );
        assert_eq!(
            a("ucxl://a:b@c:d/*~/x")
                .check_writable()
                .expect_err("w")
                .component,
            "temporal"
        );
        assert_eq!(
            a("ucxl://a:b@c:d/*^/x/v1?q#f").key_text(),
            a("ucxl://a:b@c:d/~~3/x/v1").key_text()
        );
    }

    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-]{1,12}".prop_filter("not the wildcard", |s| s != "any")
    }

    fn component() -> impl Strategy<Value = Component> {
        prop_oneof![Just(Component::Any), name().prop_map(Component::Name)]
    }

    fn temporal() -> impl Strategy<Value = Temporal> {
        prop_oneof![
            Just(Temporal::Latest),
            Just(Temporal::First),
            (1u64..1_000_000).prop_map(Temporal::Version),
            (0u64..1000).prop_map(Temporal::Back),
            (0u64..1000).prop_map(Temporal::Forward),
            (
                0u64..4_000_000_000,
                prop_oneof![Just(0u32), 0u32..1_000_000_000]
            )
                .prop_map(|(secs, nanos)| Temporal::At { secs, nanos }),
        ]
    }

    fn segment() -> impl Strategy<Value = Segment> {
        prop_oneof![
            8 => "[A-Za-z0-9_.-]{1,10}"
                .prop_filter("not . or ..", |s| s != "." && s != "..")
                .prop_map(Segment::Name),
            1 => Just(Segment::One),
            1 => Just(Segment::Many),
        ]
    }

    fn address() -> impl Strategy<Value = Address> {
        (
            (component(), component(), component(), component()),
            temporal(),
            proptest::collection::vec(segment(), 0..6),
            proptest::option::of("[A-Za-z0-9=&_.-]{0,10}"),
            proptest::option::of("[A-Za-z0-9#_.-]{0,10}"),
        )
            .prop_map(
                |((agent, role, project, task), temporal, path, query, fragment)| Address {
                    agent,
                    role,
                    project,
                    task,
                    temporal,
                    path,
                    query,
                    fragment,
                },
            )
    }

    proptest! {
        #[test]
        fn the_canonical_form_round_trips(addr in address()) {
            let text = addr.to_string();
            let back: Address = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(&back, &addr);
            prop_assert_eq!(back.to_string(), text);
            // A concrete address matches itself as a pattern.
            if !addr.is_pattern() {
                prop_assert!(addr.matches(&addr));
            }
        }
    }

    /// 100 000 random and mutated inputs: the parser never panics, and
    /// whatever it accepts prints to a form that parses to the same value.
    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let seeds = [
            "ucxl://claude:backend_developer@bzzz:api-v2/*^/src/main.rs?x=1#y",
            "ucxl://any:admin@cluster:config/2026-11-30T12:00:00Z/control/weights",
            "ucxl://a:b@c:d/~~2/**/x",
        ];
        let alphabet: &[u8] = b"ucxl:/@*^~#?.-_azAZ09 \x00\xff%";
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for i in 0..100_000 {
            let mut bytes: Vec<u8> = if i % 4 == 0 {
                (0..next() % 80)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect()
            } else {
                seeds[i % seeds.len()].as_bytes().to_vec()
            };
            for _ in 0..1 + next() % 4 {
                if bytes.is_empty() {
                    break;
                }
                let at = (next() % bytes.len() as u64) as usize;
                match next() % 3 {
                    0 => bytes[at] = alphabet[(next() % alphabet.len() as u64) as usize],
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, alphabet[(next() % alphabet.len() as u64) as usize]),
                }
            }
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            if let Ok(addr) = text.parse::<Address>() {
                let again: Address = addr.to_string().parse().expect("canonical form parses");
                assert_eq!(again, addr, "{text}");
            }
        }
    }
}
