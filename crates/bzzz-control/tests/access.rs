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
        time_ms: 1_800_000_000_000,
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

fn user(name: &str, roles: &[&str]) -> UserRecord {
    UserRecord {
        name: name.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        verifier: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
        created_at: 1,
        created_by: "admin".into(),
    }
}

fn key(id: &str, role: &str, user: Option<&str>) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        name: None,
        hash: "ab".repeat(32),
        role: role.into(),
        user: user.map(str::to_owned),
        created_at: 1,
        created_by: "admin".into(),
        expires_at: None,
        revoked_at: None,
    }
}

fn audited(n: AuditNote, change: AccessChange) -> Command {
    Command::Audited {
        notes: vec![n],
        cmd: None,
        access: Some(change),
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
    let r = apply(
        &mut s,
        1,
        audited(
            note(&k, "admin", "manage"),
            AccessChange::UserPut {
                user: user("alice", &["backend_developer"]),
            },
        ),
    );
    assert_eq!(r.rejected, None);
    assert_eq!(
        s.principal_roles("user:alice"),
        Some(vec!["backend_developer".to_owned()])
    );
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
    // Revocation: the key stops acting at once.
    let r = apply(
        &mut s,
        6,
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
    // Removing the user ends the keys bound to it.
    apply(
        &mut s,
        7,
        audited(
            note(&k, "admin", "manage"),
            AccessChange::KeyPut {
                key: key("k0000000000000003", "backend_developer", Some("alice")),
            },
        ),
    );
    assert!(s.principal_roles("key:k0000000000000003").is_some());
    apply(
        &mut s,
        8,
        audited(
            note(&k, "admin", "manage"),
            AccessChange::UserRemove {
                name: "alice".into(),
            },
        ),
    );
    assert_eq!(s.principal_roles("key:k0000000000000003"), None);
    // Every attempt, refused ones too, is one entry of the chain.
    assert_eq!(records.len(), 8);
    assert_eq!(s.audit_head.seq, 8);
    assert_eq!(s.audit_head.hash, records[7].hash);
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
