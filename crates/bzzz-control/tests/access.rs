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

/// A role of coordination authority with these rules.
fn role(name: &str, perms: &[&str]) -> bzzz_proto::cluster::RoleDef {
    bzzz_proto::cluster::RoleDef {
        name: name.into(),
        authority: bzzz_proto::cluster::Authority::Coordination,
        permissions: perms.iter().map(|p| (*p).to_owned()).collect(),
        reads: vec![],
        members: vec![],
    }
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
        role("lead", &["manage:users", "manage:keys"]),
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

/// A checkpoint of entry `seq` with `hash`, signed by `admin` (a plain
/// Ed25519 key stands for the threshold admin key: the signature is the
/// same kind).
fn checkpoint(admin: &NodeKey, seq: u64, hash: &str) -> bzzz_proto::cluster::Signed {
    let body = serde_json::to_string(&bzzz_proto::access::AuditCheckpoint {
        v: bzzz_proto::cluster::RECORD_VERSION,
        cluster: "lab".into(),
        seq,
        hash: hash.into(),
        time_ms: 1_800_000_000_000,
    })
    .expect("json");
    let sig = admin.sign(&bzzz_crypto::records::signing_bytes(
        bzzz_crypto::records::Domain::AuditCheckpoint,
        body.as_bytes(),
    ));
    bzzz_crypto::records::signed(body, &sig)
}

#[test]
fn checkpoints_catch_a_consistent_rewrite_of_the_history() {
    let k = NodeKey::generate().expect("key");
    let admin = NodeKey::generate().expect("admin key");
    let mut s = ClusterState::default();
    for i in 1..=10 {
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
    let pk = |_: &NodeId| Some(k.public());
    let cp = checkpoint(&admin, 8, &recs[7].hash);
    assert!(s.holds_audit_entry(8, &recs[7].hash));
    assert!(!s.holds_audit_entry(8, &recs[6].hash));
    assert_eq!(
        audit::verify_checkpoints(&recs, std::slice::from_ref(&cp), &admin.public(), "lab"),
        Ok(1)
    );
    // Entries before the run (compacted) are not checked; a checkpoint
    // beyond the run is an error.
    assert_eq!(
        audit::verify_checkpoints(
            &recs[8..],
            std::slice::from_ref(&cp),
            &admin.public(),
            "lab"
        ),
        Ok(0)
    );
    assert!(
        audit::verify_checkpoints(
            &recs[..5],
            std::slice::from_ref(&cp),
            &admin.public(),
            "lab"
        )
        .is_err()
    );

    // The accepting node rewrites entry 5 and every later hash, and signs
    // its own note again: the chain itself verifies...
    let mut forged = recs.clone();
    forged[4].note.resource = "nothing happened".into();
    forged[4].note.signature = hex::encode(k.sign(&forged[4].note.signed_bytes()));
    for i in 4..forged.len() {
        if i > 4 {
            forged[i].prev_hash = forged[i - 1].hash.clone();
        }
        forged[i].hash = audit::hash_record(&forged[i]);
    }
    audit::verify(&forged, pk).expect("a consistent rewrite verifies as a chain");
    // ...but not against the threshold-signed checkpoint.
    let bad = audit::verify_checkpoints(&forged, std::slice::from_ref(&cp), &admin.public(), "lab")
        .expect_err("caught");
    assert_eq!(bad.seq, 8, "{bad:?}");
    // A node that shows no checkpoint, or only old ones, fails once the
    // log is longer than the allowance.
    let head = |seq: u64| bzzz_proto::access::AuditHead {
        seq,
        hash: String::new(),
    };
    assert!(audit::verify_coverage(&head(10), &[], 0, 16).is_ok());
    assert_eq!(
        audit::verify_coverage(&head(10), &[], 0, 4).map_err(|b| b.seq),
        Err(1)
    );
    assert!(audit::verify_coverage(&head(10), std::slice::from_ref(&cp), 1, 4).is_ok());
    assert_eq!(
        audit::verify_coverage(&head(20), std::slice::from_ref(&cp), 1, 4).map_err(|b| b.seq),
        Err(9)
    );
    assert!(audit::verify_coverage(&head(20), std::slice::from_ref(&cp), 0, 16).is_err());
    // Nor can it sign a checkpoint of its own: only the admin key counts.
    let own = checkpoint(&k, 8, &forged[7].hash);
    let bad = audit::verify_checkpoints(&forged, &[own], &admin.public(), "lab")
        .expect_err("not the admin key");
    assert!(bad.why.contains("admin key"), "{bad:?}");
}

/// Review findings: a narrower key or user never escapes a deny of its
/// user or maker, and keys end with the principal that made them.
#[test]
fn keys_keep_their_makers_denies_and_end_with_their_maker() {
    use bzzz_proto::access::{Action, Resource, decide};
    let k = NodeKey::generate().expect("key");
    let mut s = ClusterState::default();
    s.roles.insert(
        "lead".into(),
        role("lead", &["manage:users", "manage:keys"]),
    );
    s.roles.insert(
        "no_secret".into(),
        role("no_secret", &["deny:infer:model:secret*"]),
    );
    s.users.insert(
        "bob".into(),
        user("bob", &["lead", "backend_developer", "no_secret"]),
    );
    let secret = Resource::Model("secret-x:latest".into());
    let open = Resource::Model("open:latest".into());
    let infer = |roles: &[String], r: &Resource| decide(roles, &s.roles, Action::Infer, r).allowed;
    assert!(!infer(
        &s.principal_roles("user:bob").expect("bob"),
        &secret
    ));

    // A key of one role, bound to bob: the deny still holds.
    let mut bound = key("k000000000000000b", "backend_developer", Some("bob"));
    bound.created_by = "user:bob".into();
    let roles = s.key_roles(&bound).expect("stands");
    assert_eq!(roles[0], "backend_developer");
    assert!(roles.contains(&"!no_secret".to_owned()), "{roles:?}");
    assert!(infer(&roles, &open));
    assert!(
        !infer(&roles, &secret),
        "the key escapes bob's deny: {roles:?}"
    );
    // An unbound key bob made: the same.
    let mut unbound = key("k000000000000000c", "backend_developer", None);
    unbound.created_by = "user:bob".into();
    let roles = s.key_roles(&unbound).expect("stands");
    assert!(!infer(&roles, &secret), "{roles:?}");
    // A key made by that key: the same, and it ends with it.
    s.api_keys.insert(unbound.id.clone(), unbound.clone());
    let mut child = key("k000000000000000d", "backend_developer", None);
    child.created_by = format!("key:{}", unbound.id);
    let roles = s.key_roles(&child).expect("stands");
    assert!(!infer(&roles, &secret), "{roles:?}");
    s.api_keys.get_mut(&unbound.id).expect("key").revoked_at = Some(1);
    assert_eq!(s.key_roles(&child), None, "its maker was revoked");

    // Bob may not make a user without his deny role.
    let r = s.apply_command(
        1,
        audited(
            note(&k, "user:bob", "manage"),
            AccessChange::UserPut {
                user: user("carol", &["backend_developer"]),
            },
        ),
    );
    assert!(
        r.rejected
            .as_deref()
            .is_some_and(|w| w.contains("no_secret")),
        "{r:?}"
    );
    let r = s.apply_command(
        2,
        audited(
            note(&k, "user:bob", "manage"),
            AccessChange::UserPut {
                user: user("carol", &["backend_developer", "no_secret"]),
            },
        ),
    );
    assert_eq!(r.rejected, None);

    // Bob leaves: the keys he made end with him.
    s.users.remove("bob");
    assert_eq!(s.key_roles(&bound), None);
    let mut again = unbound.clone();
    again.revoked_at = None;
    assert_eq!(s.key_roles(&again), None, "made by a user who is gone");
}

#[test]
fn removing_a_user_revokes_the_keys_it_made_for_good() {
    let k = NodeKey::generate().expect("key");
    let mut s = ClusterState::default();
    s.roles.insert(
        "lead".into(),
        role("lead", &["manage:users", "manage:keys"]),
    );
    s.users.insert(
        "alice".into(),
        user("alice", &["lead", "backend_developer"]),
    );
    s.users
        .insert("bob".into(), user("bob", &["lead", "backend_developer"]));
    // Bob makes a key for the role, bound to nobody.
    let mut made = key("k000000000000000e", "backend_developer", None);
    made.created_by = "user:bob".into();
    s.api_keys.insert(made.id.clone(), made.clone());
    assert!(s.key_roles(&made).is_some());
    let r = s.apply_command(
        1,
        audited(
            note(&k, "user:alice", "manage"),
            AccessChange::UserRemove { name: "bob".into() },
        ),
    );
    assert_eq!(r.rejected, None);
    assert!(
        s.api_keys[&made.id].revoked_at.is_some(),
        "revoked with its maker"
    );
    // A new user of the same name does not bring it back.
    s.users
        .insert("bob".into(), user("bob", &["lead", "backend_developer"]));
    assert!(s.api_keys[&made.id].revoked_at.is_some());
}
