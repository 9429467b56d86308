//! Users, API keys and the audit chain in the state machine: changes
//! commit with their entry, the escalation rule holds whatever node
//! proposes, the chain verifies and names the first edited entry.

use bzzz_control::access::AccessChange;
use bzzz_control::audit;
use bzzz_control::raft::{ClusterState, Command};
use bzzz_crypto::NodeKey;
use bzzz_proto::NodeId;
use bzzz_proto::access::{ApiKeyRecord, AuditNote, AuditRecord, UserRecord};

const NODE: &str = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xa";

fn note(key: &NodeKey, principal: &str, action: &str) -> AuditNote {
    let mut n = AuditNote {
        time_ms: {
            // Each note later than the last (a principal's changes must
            // come in time order).
            static T: std::sync::atomic::AtomicU64 =
                std::sync::atomic::AtomicU64::new(1_800_000_000_000);
            T.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        },
        principal: principal.into(),
        action: action.into(),
        resource: "users".into(),
        outcome: "ok".into(),
        node: NodeId::parse(NODE).expect("id"),
        count: 1,
        signature: "00".repeat(64),
    };
    n.signature = hex::encode(key.sign(&n.signed_bytes()));
    n
}

/// Every test user's password.
const PW: &str = "a user password";

fn user(name: &str, roles: &[&str]) -> UserRecord {
    let signer = bzzz_crypto::access::user_signer(name, PW).expect("signer");
    UserRecord {
        name: name.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        verifier: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
        public: hex::encode(signer.public()),
        created_at: 1,
        created_by: "admin".into(),
    }
}

fn key(id: &str, role: &str, user: Option<&str>) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        name: None,
        hash: "ab".repeat(32),
        public: hex::encode(bzzz_crypto::access::api_key_signer(id).public()),
        role: role.into(),
        user: user.map(str::to_owned),
        created_at: 1,
        created_by: "admin".into(),
        expires_at: None,
        revoked_at: None,
    }
}

/// A change by a user (signed with the key its password derives) or a
/// key (the test's key ids double as their secrets).
fn audited(n: AuditNote, change: AccessChange) -> Command {
    let signer = match n.principal.split_once(':') {
        Some(("user", name)) => bzzz_crypto::access::user_signer(name, PW).ok(),
        Some(("key", id)) => Some(bzzz_crypto::access::api_key_signer(id)),
        _ => None,
    };
    let proof =
        signer.map(|k| hex::encode(k.sign(&bzzz_proto::access::proof_bytes("", &n, &change))));
    Command::Audited {
        notes: vec![n],
        cmd: None,
        access: Some(change),
        proof,
    }
}

#[test]
fn access_changes_commit_with_their_entries_and_never_escalate() {
    let k = NodeKey::generate().expect("key");
    let mut s = ClusterState::default();
    let mut records: Vec<AuditRecord> = Vec::new();
    let mut apply = |s: &mut ClusterState, i: u64, c: Command| {
        let r = s.apply_command(i, c);
        records.append(&mut s.audit_out);
        r
    };
    // A note naming the operator is no proof: the operator's changes
    // come admin-signed (a member node forging one is refused).
    let r = apply(
        &mut s,
        1,
        audited(
            note(&k, "admin", "manage"),
            AccessChange::UserPut {
                user: user("mallory", &["admin"]),
            },
        ),
    );
    assert!(
        r.rejected
            .expect("refused")
            .contains("signed by the admin key")
    );
    assert!(s.users.is_empty());
    // As an admin-signed change would: alice leads (manages users and
    // keys) and develops; bob develops.
    s.roles.insert(
        "lead".into(),
        bzzz_proto::cluster::RoleDef {
            name: "lead".into(),
            authority: bzzz_proto::cluster::Authority::Coordination,
            permissions: vec!["manage:users".into(), "manage:keys".into()],
            reads: vec![],
            members: vec![],
        },
    );
    s.users.insert(
        "alice".into(),
        user("alice", &["lead", "backend_developer"]),
    );
    s.users
        .insert("bob".into(), user("bob", &["backend_developer"]));
    // alice cannot make an admin, nor a key with a role she lacks.
    let r = apply(
        &mut s,
        2,
        audited(
            note(&k, "user:alice", "manage"),
            AccessChange::UserPut {
                user: user("mallory", &["admin"]),
            },
        ),
    );
    assert!(
        r.rejected
            .expect("refused")
            .contains("cannot grant role admin")
    );
    assert!(!s.users.contains_key("mallory"));
    let r = apply(
        &mut s,
        3,
        audited(
            note(&k, "user:alice", "manage"),
            AccessChange::KeyPut {
                key: key("k0000000000000001", "observer", Some("alice")),
            },
        ),
    );
    assert!(r.rejected.is_some());
    let r = apply(
        &mut s,
        4,
        audited(
            note(&k, "user:alice", "manage"),
            AccessChange::KeyPut {
                key: key("k0000000000000002", "backend_developer", Some("alice")),
            },
        ),
    );
    assert_eq!(r.rejected, None);
    assert_eq!(
        s.principal_roles("key:k0000000000000002"),
        Some(vec!["backend_developer".to_owned()])
    );
    // The very same command again (a member replaying it): refused.
    let replay = audited(
        note(&k, "user:alice", "manage"),
        AccessChange::UserRemove { name: "bob".into() },
    );
    assert_eq!(s.clone().apply_command(40, replay.clone()).rejected, None);
    let mut later = s.clone();
    later.apply_command(40, replay.clone());
    let again = later.apply_command(41, replay);
    assert!(again.rejected.expect("refused").contains("replay"));
    // A principal that is not one cannot change anything.
    let r = apply(
        &mut s,
        5,
        audited(
            note(&k, "user:nobody", "manage"),
            AccessChange::UserRemove {
                name: "alice".into(),
            },
        ),
    );
    assert!(r.rejected.is_some());
    // A change signed with the wrong password is refused.
    let n = note(&k, "user:alice", "manage");
    let change = AccessChange::UserRemove { name: "bob".into() };
    let wrong = bzzz_crypto::access::user_signer("alice", "not her password").expect("signer");
    let r = apply(
        &mut s,
        6,
        Command::Audited {
            proof: Some(hex::encode(
                wrong.sign(&bzzz_proto::access::proof_bytes("", &n, &change)),
            )),
            notes: vec![n],
            cmd: None,
            access: Some(change),
        },
    );
    assert!(r.rejected.expect("refused").contains("does not verify"));
    assert!(s.users.contains_key("bob"));
    // bob (no manage on keys) cannot revoke alice's key; she can.
    let r = apply(
        &mut s,
        7,
        audited(
            note(&k, "user:bob", "manage"),
            AccessChange::KeyRevoke {
                id: "k0000000000000002".into(),
                at: 9,
            },
        ),
    );
    assert!(r.rejected.expect("refused").contains("only its own keys"));
    let r = apply(
        &mut s,
        8,
        audited(
            note(&k, "user:alice", "manage"),
            AccessChange::KeyRevoke {
                id: "k0000000000000002".into(),
                at: 9,
            },
        ),
    );
    assert_eq!(r.rejected, None);
    assert_eq!(s.principal_roles("key:k0000000000000002"), None);
    // bob may not take over alice's account (she holds more than he does).
    let r = apply(
        &mut s,
        9,
        audited(
            note(&k, "user:bob", "manage"),
            AccessChange::UserPut {
                user: user("alice", &["backend_developer"]),
            },
        ),
    );
    assert!(r.rejected.is_some());
    assert!(s.users["alice"].roles.contains(&"lead".to_owned()));
    // Every attempt, refused ones too, is one entry of the chain.
    assert_eq!(records.len(), 9);
    assert_eq!(s.audit_head.seq, 9);
    assert_eq!(s.audit_head.hash, records[8].hash);
    assert!(records[1].refused.is_some());
    let pk = k.public();
    assert_eq!(audit::verify(&records, |_| Some(pk)), Ok(()));
    // An edited entry is named, whatever field changed.
    let mut edited = records.clone();
    edited[4].note.principal = "admin".into();
    assert_eq!(
        audit::verify(&edited, |_| Some(pk)).map_err(|b| b.seq),
        Err(5)
    );
    let mut edited = records.clone();
    edited[2].refused = None;
    assert_eq!(
        audit::verify(&edited, |_| Some(pk)).map_err(|b| b.seq),
        Err(3)
    );
    // Re-hashing an edited entry breaks the next link.
    let mut edited = records.clone();
    edited[2].note.action = "read".into();
    edited[2].hash = audit::hash_record(&edited[2]);
    let bad = audit::verify(&edited, |_| Some(pk)).expect_err("broken");
    assert!(bad.seq == 3 || bad.seq == 4, "{bad:?}");
    // A forged signature is named.
    let other = NodeKey::generate().expect("key").public();
    assert_eq!(
        audit::verify(&records, |_| Some(other)).map_err(|b| b.seq),
        Err(1)
    );
}

#[test]
fn the_audit_file_keeps_what_was_written_and_cuts_a_torn_line() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("audit.jsonl");
    let k = NodeKey::generate().expect("key");
    let mut s = ClusterState::default();
    for i in 1..=3 {
        s.apply_command(
            i,
            Command::Audited {
                notes: vec![note(&k, "admin", "write")],
                cmd: None,
                access: None,
                proof: None,
            },
        );
    }
    let recs = std::mem::take(&mut s.audit_out);
    let mut f = audit::AuditFile::open(&path).expect("open");
    f.append(&recs).expect("append");
    f.append(&recs).expect("append again writes nothing");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"seq\":4,"))
        .expect("torn");
    let _ = audit::AuditFile::open(&path).expect("reopen");
    let back = audit::read(&path, 0, 100).expect("read");
    assert_eq!(back, recs);
    assert_eq!(audit::read(&path, 2, 100).expect("read").len(), 1);
}
