//! Unit tests of the keys service, one node in-process (no network): its
//! custody on a temp dir, the ceremony's checks and dealing, operator
//! authentication, and threshold signing with t = 1 through the signer's
//! own approval path.

use std::sync::Barrier;

use super::*;

const PASSWORD: &str = "a long operator password";

fn node(dir: &Path) -> Keys {
    node_with(dir, &bzzz_crypto::NodeKey::generate().expect("key"))
}

fn node_with(dir: &Path, key: &bzzz_crypto::NodeKey) -> Keys {
    let key = bzzz_crypto::NodeKey::from_seed(&key.seed());
    let id = bzzz_net::node_id_of(&key.seed()).expect("id");
    let (tx, _rx) = watch::channel(LocalInfo::default());
    Keys::load(dir, &key, id, tx).expect("load")
}

/// A one-member cluster dealt to `k` (t = 1, n = 1) by a fresh master key.
fn bundle_for(k: &Keys, cluster: &str) -> (InstallBundle, String) {
    let (b, admin, _) = bundle_with_master(k, cluster);
    (b, admin)
}

fn bundle_with_master(k: &Keys, cluster: &str) -> (InstallBundle, String, MasterKey) {
    let master = MasterKey::generate().expect("master");
    let operator = hex::encode(
        OperatorPassword::new(PASSWORD.into())
            .expect("pw")
            .operator_key(cluster)
            .expect("key")
            .public(),
    );
    let members = vec![(k.node_id().clone(), k.age_recipient())];
    let (holders, mut bundles) =
        ceremony::deal(&master, cluster, 1, 1, operator, &members, None).expect("deal");
    assert_eq!(holders.len(), 1);
    let admin = hex::encode(master.admin_key().public());
    (bundles.remove(0).1, admin, master)
}

#[test]
fn a_fresh_node_holds_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let k = node(dir.path());
    let s = k.status();
    assert!(!s.initialized);
    assert_eq!(s.share_state, "none");
    assert!(!dir.path().join(CLUSTER_FILE).exists());
}

#[test]
fn an_installed_bundle_survives_a_restart_with_its_share_sealed() {
    let dir = tempfile::tempdir().expect("dir");
    let key = bzzz_crypto::NodeKey::generate().expect("key");
    let k = node_with(dir.path(), &key);
    let (b, admin) = bundle_for(&k, "lab");
    k.install(&b, None).expect("install");
    assert_eq!(k.status().share_state, "valid");
    // A second bundle is refused: a node belongs to one cluster.
    let (b2, _) = bundle_for(&k, "other");
    assert!(k.install(&b2, None).is_err());
    use std::os::unix::fs::PermissionsExt as _;
    for f in [CLUSTER_FILE, SHARE_FILE] {
        let mode = std::fs::metadata(dir.path().join(f))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f}: {mode:o}");
    }
    let sealed = std::fs::read(dir.path().join(SHARE_FILE)).expect("share");
    assert!(
        sealed.starts_with(b"age-encryption.org/"),
        "sealed with age"
    );
    drop(k);
    // A restart (same node key) finds its cluster and opens its share.
    let again = node_with(dir.path(), &key);
    let s = again.status();
    assert!(s.initialized);
    assert_eq!(s.admin_public_key.as_deref(), Some(admin.as_str()));
    assert_eq!(s.share_state, "valid");
    // Another node's key cannot load these records: refused, named.
    let Err(e) = Keys::load(
        dir.path(),
        &bzzz_crypto::NodeKey::generate().expect("key"),
        bzzz_net::node_id_of(&bzzz_crypto::SecretBytes32::random().expect("rng")).expect("id"),
        watch::channel(LocalInfo::default()).0,
    ) else {
        panic!("records of another node were loaded")
    };
    assert!(e.message.contains("certificate is for node"), "{e}");
}

#[test]
fn two_bundles_arriving_at_once_leave_exactly_one_cluster() {
    for round in 0..3 {
        let dir = tempfile::tempdir().expect("dir");
        let k = Arc::new(node(dir.path()));
        let (a, admin_a) = bundle_for(&k, "a");
        let (b, admin_b) = bundle_for(&k, "b");
        // Each install, once its bundle is checked, waits (up to 300 ms)
        // for the other to get that far too: without a lock over check and
        // write both get there, and both used to succeed.
        let checked = Arc::new((Mutex::new(0u32), std::sync::Condvar::new()));
        let hook_state = checked.clone();
        *lock(&k.install_hook) = Some(Arc::new(move || {
            let (n, cv) = &*hook_state;
            let mut n = lock(n);
            *n += 1;
            cv.notify_all();
            let _ = cv.wait_timeout_while(n, Duration::from_millis(300), |n| *n < 2);
        }));
        let go = Arc::new(Barrier::new(2));
        let results: Vec<(Result<(), String>, String)> = [(a, admin_a), (b, admin_b)]
            .into_iter()
            .map(|(bundle, admin)| {
                let (k, go) = (k.clone(), go.clone());
                std::thread::spawn(move || {
                    go.wait();
                    (k.install(&bundle, None), admin)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let winners: Vec<&String> = results
            .iter()
            .filter(|(r, _)| r.is_ok())
            .map(|(_, a)| a)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        // The other is refused cleanly, not half-written (without the lock
        // the two wrote the same files: one failed on a vanished temp
        // file, or both succeeded and the files were mixed).
        let loser = results
            .iter()
            .find_map(|(r, _)| r.as_ref().err())
            .expect("a loser");
        assert!(
            loser.contains("already belongs to cluster"),
            "round {round}: {loser}"
        );
        // What is on disk is the winner's, whole.
        let file: ClusterFile =
            serde_json::from_slice(&std::fs::read(dir.path().join(CLUSTER_FILE)).expect("read"))
                .expect("parse");
        let genesis: Genesis = serde_json::from_str(&file.genesis.body).expect("genesis");
        assert_eq!(&genesis.admin_public_key, winners[0], "round {round}");
        assert_eq!(k.status().share_state, "valid");
    }
}

#[test]
fn setup_parameters_are_checked_and_the_words_are_shown_once() {
    let dir = tempfile::tempdir().expect("dir");
    let k = node(dir.path());
    let params = |cluster: &str, t: Option<u16>, n: Option<u16>| SetupParams {
        cluster: cluster.into(),
        threshold: t,
        shares: n,
        holders: Vec::new(),
        operator_password: OperatorPassword::new_for_setup(PASSWORD.into()).expect("pw"),
        recover_from: None,
    };
    for (p, why) in [
        (params("Bad Name", None, None), "cluster name"),
        (params("lab", None, Some(2)), "shares"),
        (params("lab", Some(2), Some(1)), "threshold"),
    ] {
        let e = k.start_setup(p, true).expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(e.message.contains(why), "{e}");
    }
    k.start_setup(params("lab", None, None), false)
        .expect("start");
    let shown = k.reveal_pending().expect("first reveal");
    assert_eq!(shown.mnemonic.expose().split(' ').count(), 24);
    assert_eq!(
        k.reveal_pending().expect_err("second").kind,
        ErrorKind::Gone
    );
    let positions = ceremony::confirm_positions().expect("positions");
    assert_eq!(positions.len(), CONFIRM_WORDS);
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    assert!(positions.iter().all(|p| (1..=24).contains(p)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_checks_limit_failures_and_a_one_of_one_key_signs() {
    let dir = tempfile::tempdir().expect("dir");
    let k = node(dir.path());
    let pw = || OperatorPassword::new(PASSWORD.into()).expect("pw");
    let wrong = || OperatorPassword::new("not the password at all".into()).expect("pw");
    assert_eq!(
        k.operator_login("c", Some(pw()))
            .await
            .expect_err("no cluster")
            .kind,
        ErrorKind::Conflict
    );
    let stranger = OperatorKey::from(bzzz_crypto::NodeKey::generate().expect("key"));
    assert_eq!(
        k.sign_message(vec![1], &stranger, None)
            .await
            .expect_err("no cluster")
            .kind,
        ErrorKind::Conflict
    );
    let (b, admin) = bundle_for(&k, "lab");
    k.install(&b, None).expect("install");
    assert_eq!(
        k.operator_login("c", None).await.expect_err("none").kind,
        ErrorKind::Unauthorized
    );
    let key = k
        .operator_login("c", Some(pw()))
        .await
        .expect("right password");
    assert_eq!(format!("{key:?}"), "OperatorKey(..)");
    for _ in 0..limiter::FAILURES_PER_WINDOW {
        assert_eq!(
            k.operator_login("c", Some(wrong()))
                .await
                .expect_err("wrong")
                .kind,
            ErrorKind::Unauthorized
        );
    }
    assert_eq!(
        k.operator_login("c", Some(pw()))
            .await
            .expect_err("limited")
            .kind,
        ErrorKind::Limited
    );
    k.operator_login("other client", Some(pw()))
        .await
        .expect("not limited");

    // t = 1: this node alone signs, approving through its own signer path
    // (which checks the operator's authorization); plain Ed25519 verifies.
    let me = k.node_id().clone();
    let sig = k
        .sign_message(b"hello".to_vec(), &key, Some(vec![me.clone()]))
        .await
        .expect("sign");
    assert_eq!(sig.admin_public_key, admin);
    assert_eq!(sig.signers, vec![me.clone()]);
    let raw: [u8; 64] = hex::decode(&sig.signature)
        .expect("hex")
        .try_into()
        .expect("64");
    let pk = records::parse_public_key(&admin).expect("pk");
    let msg = hex::decode(&sig.signed_bytes_hex).expect("hex");
    bzzz_crypto::verify_ed25519(&pk, &msg, &raw).expect("verifies");
    let refused = k
        .sign_message(b"hello".to_vec(), &stranger, Some(vec![me.clone()]))
        .await
        .expect_err("another key");
    assert_eq!(refused.kind, ErrorKind::Peer, "{refused}");
    // A lone holder: custody needs no re-deal, and the status warns that
    // this node alone holds the key.
    assert!(k.next_plan(None).expect("plan").is_none());
    let st = k.status();
    assert_eq!(
        (st.epoch, st.policy.as_deref()),
        (Some(0), Some("majority"))
    );
    assert!(
        st.warnings.iter().any(|w| w.contains("only this node")),
        "{st:?}"
    );
}

/// The exploit of issue #22: a signer that records every request it is
/// sent during admin signatures learns nothing that signs anything else.
/// Before operator keys the requests carried the operator password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_operator_authorization_signs_nothing_else() {
    let dir = tempfile::tempdir().expect("dir");
    let k = node(dir.path());
    let (b, _) = bundle_for(&k, "lab");
    k.install(&b, None).expect("install");
    let key = k
        .operator_login(
            "c",
            Some(OperatorPassword::new(PASSWORD.into()).expect("pw")),
        )
        .await
        .expect("login");
    let me = k.node_id().clone();
    // What a signer receives: the purpose, with the authorization.
    let mut recorded = Vec::new();
    for i in 0..10u8 {
        let message = vec![i];
        let bytes = records::signing_bytes(Domain::OperatorMessage, &message);
        let auth = key.authorize("lab", "message", &bytes).expect("auth");
        let purpose = SignPurpose::Message {
            message,
            operator: auth,
        };
        let text = serde_json::to_string(&purpose).expect("json");
        assert!(!text.contains(PASSWORD), "no password on the wire");
        k.approve_and_commit(&me, format!("s{i}"), purpose.clone())
            .expect("the operator's request");
        recorded.push(purpose);
    }
    // Replayed as is: refused (the nonce was taken).
    let e = k
        .approve_and_commit(&me, "replay".into(), recorded[0].clone())
        .expect_err("replay");
    assert!(e.reason.contains("used already"), "{e:?}");
    // Its authorization on another message, or as another purpose: refused.
    let SignPurpose::Message { operator, .. } = recorded[9].clone() else {
        unreachable!()
    };
    for forged in [
        SignPurpose::Message {
            message: b"transfer everything".to_vec(),
            operator: operator.clone(),
        },
        SignPurpose::AdminChange {
            body: "{}".into(),
            operator: operator.clone(),
        },
    ] {
        let e = k
            .approve_and_commit(&me, "forged".into(), forged)
            .expect_err("forged");
        assert!(e.reason.contains("does not verify"), "{e:?}");
    }
    // A stale one (an old recording): refused for its time.
    let bytes = records::signing_bytes(Domain::OperatorMessage, b"late");
    let mut late = key.authorize("lab", "message", &bytes).expect("auth");
    late.time -= bzzz_proto::cluster::OPERATOR_AUTH_WINDOW_SECS + 5;
    let e = k
        .approve_and_commit(
            &me,
            "late".into(),
            SignPurpose::Message {
                message: b"late".to_vec(),
                operator: late,
            },
        )
        .expect_err("stale");
    assert!(e.reason.contains("not fresh"), "{e:?}");
}

/// Issue #22 review: the operator key and the approvals come from the
/// Raft state, which a hostile leader's snapshot could fill. The keys
/// service takes only admin-signed records, newest first, and keeps the
/// operator key across a restart.
#[test]
fn only_admin_signed_records_replace_the_operator_key_or_approve() {
    use bzzz_proto::cluster::{AdminAction, AdminChange};
    let dir = tempfile::tempdir().expect("dir");
    let node_key = bzzz_crypto::NodeKey::generate().expect("key");
    let k = node_with(dir.path(), &node_key);
    let (b, _, master) = bundle_with_master(&k, "lab");
    k.install(&b, None).expect("install");
    let genesis_key = k.operator_public_key().expect("genesis key");
    let record = |seq: u64, action: AdminAction, by: &dyn Fn(&[u8]) -> [u8; 64]| {
        let change = AdminChange {
            v: RECORD_VERSION,
            cluster: "lab".into(),
            seq,
            issued_at: unix_now(),
            action,
            role_keys: BTreeMap::new(),
        };
        let text = records::body_text(&change).expect("text");
        let sig = by(&records::signing_bytes(
            Domain::AdminChange,
            text.as_bytes(),
        ));
        records::signed(text, &sig)
    };
    let admin = master.admin_key();
    let by_admin = |m: &[u8]| admin.sign(m);
    let mallory = bzzz_crypto::NodeKey::generate().expect("key");
    let by_mallory = |m: &[u8]| mallory.sign(m);
    let set = |key: &bzzz_crypto::NodeKey| AdminAction::SetOperatorKey {
        public_key: hex::encode(key.public()),
    };
    // Forged (another key): refused, the genesis key stays.
    let forged = record(9, set(&mallory), &by_mallory);
    assert!(k.adopt_operator_change(&forged).is_err());
    assert_eq!(
        k.operator_public_key().as_deref(),
        Some(genesis_key.as_str())
    );
    // Admin-signed: adopted.
    let new_key = bzzz_crypto::NodeKey::generate().expect("key");
    assert_eq!(
        k.adopt_operator_change(&record(5, set(&new_key), &by_admin)),
        Ok(true)
    );
    assert_eq!(k.operator_public_key(), Some(hex::encode(new_key.public())));
    // An older admin-signed one (a replayed earlier password): ignored.
    let older = bzzz_crypto::NodeKey::generate().expect("key");
    assert_eq!(
        k.adopt_operator_change(&record(4, set(&older), &by_admin)),
        Ok(false)
    );
    assert_eq!(k.operator_public_key(), Some(hex::encode(new_key.public())));
    // Another action under the admin key is not an operator key change.
    let other = record(6, AdminAction::RoleKeys {}, &by_admin);
    assert!(k.adopt_operator_change(&other).is_err());
    // Approvals: only the admin-signed one for the node it names counts.
    let sybil = bzzz_net::node_id_of(&mallory.seed()).expect("id");
    let friend = bzzz_net::node_id_of(&new_key.seed()).expect("id");
    let approve = |n: &NodeId| AdminAction::ApproveMember { node_id: n.clone() };
    let mut approvals = BTreeMap::new();
    approvals.insert(sybil.clone(), record(7, approve(&sybil), &by_mallory));
    approvals.insert(friend.clone(), record(8, approve(&friend), &by_admin));
    // An admin-signed approval of one node does not approve another.
    approvals.insert(k.node_id().clone(), record(8, approve(&friend), &by_admin));
    k.set_approved(&approvals);
    assert_eq!(
        read(&k.approved).iter().cloned().collect::<Vec<_>>(),
        vec![friend]
    );
    // A re-deal plan that names a holder with another certificate than
    // the one it presents (a second certificate for its id, sealed to
    // someone else's age key): refused by every dealer and signer.
    let c = k.cluster().expect("cluster");
    let mine = records::open_cert(&c.cert, &c.admin_public_key, None).expect("cert");
    let thief = AgeIdentity::derive(&mallory).expect("age");
    let forged_cert = MembershipCert {
        age_recipient: Some(thief.recipient()),
        ..mine.clone()
    };
    let text = records::body_text(&forged_cert).expect("text");
    let forged_cert = records::signed(
        text.clone(),
        &admin.sign(&records::signing_bytes(
            Domain::MembershipCert,
            text.as_bytes(),
        )),
    );
    let plan = |cert: Signed| RedealPlan {
        epoch: c.epoch + 1,
        policy: c.policy,
        threshold: 1,
        holders: vec![bzzz_proto::cluster::PlannedHolder {
            index: mine.share_index.expect("index"),
            node_id: k.node_id().clone(),
            cert,
        }],
        dealers: vec![mine.share_index.expect("index")],
    };
    let e = k
        .check_plan(&c, &plan(forged_cert), false)
        .expect_err("a certificate the node does not present");
    assert!(e.reason.contains("not the one that node presents"), "{e:?}");
    k.check_plan(&c, &plan(c.cert.clone()), false)
        .expect("its own certificate");
    // A restart keeps the adopted operator key.
    drop(k);
    let k = node_with(dir.path(), &node_key);
    assert_eq!(k.operator_public_key(), Some(hex::encode(new_key.public())));
}

#[test]
fn the_token_use_record_is_versioned_and_migrated() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join(USED_TOKENS_FILE);
    assert!(custody::load_used_tokens(&path).expect("none").is_empty());
    // The map releases before versions wrote.
    std::fs::write(&path, r#"{"abc":[1,99]}"#).expect("write");
    let legacy = custody::load_used_tokens(&path).expect("legacy");
    assert_eq!(legacy.get("abc"), Some(&(1, 99)));
    let now = custody::encode_used_tokens(&legacy).expect("encode");
    assert!(String::from_utf8_lossy(&now).contains("\"v\":1"));
    std::fs::write(&path, &now).expect("write");
    assert_eq!(custody::load_used_tokens(&path).expect("v1"), legacy);
    std::fs::write(&path, r#"{"v":9,"tokens":{}}"#).expect("write");
    assert!(
        custody::load_used_tokens(&path).is_err(),
        "newer version refused"
    );
    std::fs::write(&path, "garbage").expect("write");
    let e = custody::load_used_tokens(&path).expect_err("damaged refused");
    assert!(e.message.contains("damaged"), "{e}");
}
