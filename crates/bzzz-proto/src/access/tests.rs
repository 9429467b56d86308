use super::*;
use proptest::prelude::*;

fn roles(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn addr(s: &str) -> Resource {
    Resource::Ucxl(s.parse().expect("address"))
}

fn custom(name: &str, permissions: &[&str], reads: &[&str]) -> RoleDef {
    RoleDef {
        name: name.into(),
        authority: Authority::Suggestion,
        permissions: roles(permissions),
        reads: roles(reads),
        members: vec![],
    }
}

#[test]
fn rules_parse_and_print() {
    for s in [
        "read:cluster",
        "deny:write:ucxl://any:backend_developer@any:any/*^/secrets/**",
        "infer:model:smollm2*",
        "*:*",
        "deploy:node:12D3*",
        "manage:users",
        "write:tasks:org/repo",
    ] {
        let r: Rule = s.parse().expect(s);
        assert_eq!(r.to_string(), s);
    }
    for bad in [
        "",
        "read",
        "fly:cluster",
        "read:galaxy",
        "read:model:",
        "read:ucxl://x",
    ] {
        assert!(bad.parse::<Rule>().is_err(), "{bad}");
    }
}

#[test]
fn builtin_roles_decide_as_documented() {
    let reg = BTreeMap::new();
    let dev_rec = addr("ucxl://alice:backend_developer@bzzz:api/*^/notes/a.md");
    for (who, allowed) in [
        ("backend_developer", true),
        ("senior_software_architect", true),
        ("admin", true),
        ("observer", false),
    ] {
        let d = decide(&roles(&[who]), &reg, Action::Read, &dev_rec);
        assert_eq!(d.allowed, allowed, "{who}: {d:?}");
    }
    // Only the developer role writes developer records.
    assert!(
        !decide(
            &roles(&["senior_software_architect"]),
            &reg,
            Action::Write,
            &dev_rec
        )
        .allowed
    );
    assert!(
        decide(
            &roles(&["backend_developer"]),
            &reg,
            Action::Write,
            &dev_rec
        )
        .allowed
    );
    let m = Resource::Model("smollm2:135m".into());
    assert!(decide(&roles(&["backend_developer"]), &reg, Action::Infer, &m).allowed);
    assert!(!decide(&roles(&["observer"]), &reg, Action::Infer, &m).allowed);
    assert!(!decide(&roles(&[]), &reg, Action::Read, &Resource::CLUSTER).allowed);
    assert!(
        !decide(
            &roles(&["no_such_role"]),
            &reg,
            Action::Read,
            &Resource::CLUSTER
        )
        .allowed
    );
}

#[test]
fn explicit_deny_wins_and_names_its_rule() {
    let mut reg = BTreeMap::new();
    reg.insert("a".into(), custom("a", &["infer:model:*"], &[]));
    reg.insert("b".into(), custom("b", &["deny:infer:model:big*"], &[]));
    let big = Resource::Model("big-70b".into());
    let d = decide(&roles(&["a", "b"]), &reg, Action::Infer, &big);
    assert!(!d.allowed);
    assert!(d.rule.contains("deny:infer:model:big*"), "{}", d.rule);
    assert!(
        decide(
            &roles(&["a", "b"]),
            &reg,
            Action::Infer,
            &Resource::Model("small".into())
        )
        .allowed
    );
    // The registry's definition replaces the built-in one.
    reg.insert("observer".into(), custom("observer", &[], &[]));
    assert!(
        !decide(
            &roles(&["observer"]),
            &reg,
            Action::Read,
            &Resource::CLUSTER
        )
        .allowed
    );
}

#[test]
fn escalation_is_refused() {
    assert!(may_grant(&roles(&["admin"]), &roles(&["observer", "x"])).is_ok());
    assert!(may_grant(&roles(&["observer"]), &roles(&["observer"])).is_ok());
    assert!(may_grant(&roles(&["observer"]), &roles(&["admin"])).is_err());
    assert!(
        may_grant(
            &roles(&["backend_developer"]),
            &roles(&["backend_developer", "observer"])
        )
        .is_err()
    );
}

#[test]
fn globs_match() {
    assert!(glob("*", ""));
    assert!(glob("a*c", "abbbc"));
    assert!(glob("a*b*c", "axxbyyc"));
    assert!(!glob("a*b*c", "axxbyy"));
    assert!(glob("smollm2:*", "smollm2:135m"));
    assert!(!glob("smollm2", "smollm2:135m"));
}

fn naive_glob(p: &[u8], t: &[u8]) -> bool {
    match (p.first(), t.first()) {
        (None, None) => true,
        (Some(b'*'), _) => naive_glob(&p[1..], t) || (!t.is_empty() && naive_glob(p, &t[1..])),
        (Some(a), Some(b)) if a == b => naive_glob(&p[1..], &t[1..]),
        _ => false,
    }
}

fn arb_rule() -> impl Strategy<Value = String> {
    let action = prop_oneof![
        Just("read"),
        Just("write"),
        Just("infer"),
        Just("manage"),
        Just("*")
    ];
    let res = prop_oneof![
        Just("cluster".to_owned()),
        Just("audit".to_owned()),
        Just("*".to_owned()),
        "[ab*]{1,3}".prop_map(|g| format!("model:{g}")),
    ];
    (any::<bool>(), action, res)
        .prop_map(|(deny, a, r)| format!("{}{a}:{r}", if deny { "deny:" } else { "" }))
}

fn arb_resource() -> impl Strategy<Value = Resource> {
    prop_oneof![
        Just(Resource::CLUSTER),
        Just(Resource::AUDIT),
        "[ab]{0,3}".prop_map(Resource::Model),
    ]
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop::sample::select(Action::ALL.to_vec())
}

proptest! {
    #[test]
    fn glob_agrees_with_the_definition(p in "[ab*]{0,6}", t in "[ab]{0,6}") {
        prop_assert_eq!(glob(&p, &t), naive_glob(p.as_bytes(), t.as_bytes()));
    }

    /// Deny by default, explicit deny wins, admin may do all, and a
    /// grant is never decided by a rule that does not match.
    #[test]
    fn decisions_follow_the_rules(
        rules_a in prop::collection::vec(arb_rule(), 0..5),
        rules_b in prop::collection::vec(arb_rule(), 0..5),
        action in arb_action(),
        res in arb_resource(),
        admin in any::<bool>(),
    ) {
        let mut reg = BTreeMap::new();
        let ra: Vec<&str> = rules_a.iter().map(String::as_str).collect();
        let rb: Vec<&str> = rules_b.iter().map(String::as_str).collect();
        reg.insert("ra".to_owned(), custom("ra", &ra, &[]));
        reg.insert("rb".to_owned(), custom("rb", &rb, &[]));
        let mut held = roles(&["ra", "rb"]);
        if admin {
            held.push("admin".into());
        }
        let d = decide(&held, &reg, action, &res);
        let parsed: Vec<Rule> = rules_a.iter().chain(&rules_b).map(|s| s.parse().expect("rule")).collect();
        let any_deny = parsed.iter().any(|r| r.deny && r.matches(action, &res));
        let any_allow = parsed.iter().any(|r| !r.deny && r.matches(action, &res));
        let expect = admin || (!any_deny && any_allow);
        prop_assert_eq!(d.allowed, expect, "{:?}", d);
        // Adding a role never turns a deny rule's verdict into an allow.
        if any_deny && !admin {
            let mut more = held.clone();
            more.push("observer".into());
            prop_assert!(!decide(&more, &reg, action, &res).allowed);
        }
        // No roles: nothing is allowed.
        prop_assert!(!decide(&[], &reg, action, &res).allowed);
    }

    #[test]
    fn rule_parser_never_panics(s in "\\PC{0,80}") {
        let _ = s.parse::<Rule>();
    }
}
