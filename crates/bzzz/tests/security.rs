//! Security foundation (SPEC §3) with real node processes on 127.0.0.1:
//! setup through the CLI, one share per node, threshold signatures that
//! verify as plain Ed25519, recovery from the words, no leak of the master
//! key, tampered shares named, operator auth, join tokens.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use bzzz_testkit::{LocalCluster, LocalOpts, http, wait_until};
use frost_ed25519 as frost;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");
const PASSWORD: &str = "a long operator password";

fn bin() -> &'static Path {
    Path::new(BIN)
}

fn cli(args: &[&str]) -> Output {
    bzzz_testkit::cli(BIN, args)
}

fn cli_json(args: &[&str]) -> Value {
    bzzz_testkit::cli_json(BIN, args)
}

fn password_file(c: &LocalCluster) -> String {
    let p = c.dir.path().join("operator-password");
    std::fs::write(&p, format!("{PASSWORD}\n")).expect("write password");
    bzzz_testkit::act_as_operator(&p, PASSWORD);
    p.to_string_lossy().into_owned()
}

fn init(c: &LocalCluster, t: u16, n: u16) -> serde_json::Value {
    let pw = password_file(c);
    let (api, t, n) = (c.nodes[0].api(), t.to_string(), n.to_string());
    let holders = c.holder_args(0);
    let mut args = vec![
        "init",
        "--api",
        &api,
        "--cluster",
        "lab",
        "--threshold",
        &t,
        "--shares",
        &n,
        "--operator-password-file",
        &pw,
        "--json",
    ];
    args.extend(holders.iter().map(String::as_str));
    cli_json(&args)
}

fn sign(c: &LocalCluster, via: usize, signers: &[usize]) -> Output {
    let ids: Vec<&str> = signers.iter().map(|i| c.nodes[*i].node_id()).collect();
    let pw = c.dir.path().join("operator-password");
    cli(&[
        "keys",
        "sign",
        "--api",
        &c.nodes[via].api(),
        "--operator-password-file",
        &pw.to_string_lossy(),
        "--message",
        "grant role: reviewer",
        "--signers",
        &ids.join(","),
        "--json",
    ])
}

fn verify_plain_ed25519(pk_hex: &str, out: &Output) {
    assert!(
        out.status.success(),
        "signing failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let pk: [u8; 32] = hex::decode(pk_hex).expect("hex").try_into().expect("32");
    let sig: [u8; 64] = hex::decode(v["signature"].as_str().expect("sig"))
        .expect("hex")
        .try_into()
        .expect("64");
    let msg = hex::decode(v["signed_bytes_hex"].as_str().expect("bytes")).expect("hex");
    assert!(msg.ends_with(b"grant role: reviewer"));
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).expect("key");
    vk.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&sig))
        .expect("the threshold signature verifies as plain Ed25519");
}

/// Every file below `dir`, recursively.
#[test]
fn five_nodes_threshold_three_shares_signatures_recovery_and_no_leaks() {
    let mut c = LocalCluster::start(bin(), 5, &LocalOpts::default()).expect("start");
    c.wait_formed(Duration::from_secs(15)).expect("formed");

    let done = init(&c, 3, 5);
    let mnemonic = done["mnemonic"].as_str().expect("mnemonic").to_owned();
    let pk = done["admin_public_key"].as_str().expect("pk").to_owned();
    assert_eq!(mnemonic.split(' ').count(), 24);

    // Each node holds exactly one share; indices 1..=5 once each.
    let mut indices = Vec::new();
    for n in &c.nodes {
        let s = cli_json(&["keys", "status", "--api", &n.api(), "--json"]);
        assert_eq!(s["admin_public_key"], pk.as_str(), "{s}");
        assert_eq!(s["threshold"], 3);
        assert_eq!(s["shares"], 5);
        assert_eq!(s["share_state"], "valid", "{s}");
        indices.push(s["share_index"].as_u64().expect("index"));
    }
    indices.sort_unstable();
    assert_eq!(indices, vec![1, 2, 3, 4, 5]);

    // Members keep seeing each other once membership is enforced.
    c.wait_formed(Duration::from_secs(15))
        .expect("still formed after setup");

    // Any 3 sign; the result is plain Ed25519 under the admin key.
    for (via, signers) in [(0, vec![0, 1, 2]), (3, vec![2, 3, 4]), (1, vec![0, 3, 4])] {
        verify_plain_ed25519(&pk, &sign(&c, via, &signers));
    }
    // 2 cannot.
    let two = sign(&c, 0, &[0, 1]);
    assert!(!two.status.success(), "2 of t=3 signed");

    // Recovery from the words gives the same admin public key.
    let words = c.dir.path().join("words.txt");
    std::fs::write(&words, &mnemonic).expect("write words");
    let r = cli_json(&[
        "recover",
        "--mnemonic-file",
        &words.to_string_lossy(),
        "--json",
    ]);
    assert_eq!(r["admin_public_key"], pk.as_str());
    std::fs::remove_file(&words).expect("remove words");

    // No byte sequence of the master key under the data dirs or in logs.
    let master = bzzz_crypto::threshold::MasterKey::from_mnemonic(&mnemonic).expect("words");
    let ws: Vec<&str> = mnemonic.split(' ').collect();
    let mut needles: Vec<Vec<u8>> = vec![
        master.expose().to_vec(),
        master.hex().as_bytes().to_vec(),
        master.hex().to_uppercase().into_bytes(),
        mnemonic.as_bytes().to_vec(),
    ];
    for w in ws.windows(3) {
        needles.push(w.join(" ").into_bytes());
    }
    let mut files = Vec::new();
    bzzz_testkit::files_under(c.dir.path(), &mut files);
    assert!(files.len() >= 15, "expected data dirs and logs: {files:?}");
    for f in &files {
        let bytes = std::fs::read(f).expect("read");
        for n in &needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n.as_slice()),
                "master key material found in {}",
                f.display()
            );
        }
    }

    // Setup is locked; admin endpoints need the operator credential.
    let addr = c.nodes[2].api().trim_start_matches("http://").to_owned();
    let (code, _) = http::request(&addr, "POST", "/api/v1/setup", &[], "{}").expect("post");
    assert_eq!(code, 409);
    let (code, _) = http::raw(&addr, "POST", "/api/v1/tokens", &[], "{}").expect("post");
    assert_eq!(code, 401);
    let (code, _) = http::request(
        &addr,
        "POST",
        "/api/v1/tokens",
        &[("Authorization", "Basic b3BlcmF0b3I6d3Jvbmc=")],
        "{}",
    )
    .expect("post");
    assert_eq!(code, 401, "wrong password");
    let t = cli_json(&[
        "token",
        "create",
        "--api",
        &c.nodes[2].api(),
        "--operator-password-file",
        &c.dir.path().join("operator-password").to_string_lossy(),
        "--json",
    ]);
    assert!(
        t["token"]
            .as_str()
            .expect("token")
            .starts_with("bzzzjoin1.")
    );

    // A tampered share (re-sealed to its node, so only the commitment can
    // tell) is detected by its node and named when it is asked to sign.
    let victim = 4;
    let node = &mut c.nodes[victim];
    node.kill9();
    let key = bzzz_crypto::keyfile::load(&node.data_dir.join("node_key.json")).expect("node key");
    let age = bzzz_crypto::seal::AgeIdentity::derive(&key).expect("age");
    let share_path = node.data_dir.join("share.age");
    let plain = age
        .open(&std::fs::read(&share_path).expect("read share"))
        .expect("open");
    let share = frost::keys::SecretShare::deserialize(&plain).expect("share");
    let mut scalar = share.signing_share().serialize();
    scalar[0] ^= 0x01;
    let forged = frost::keys::SecretShare::new(
        *share.identifier(),
        frost::keys::SigningShare::deserialize(&scalar).expect("scalar"),
        share.commitment().clone(),
    );
    let sealed =
        bzzz_crypto::seal::seal(&age.recipient(), &forged.serialize().expect("enc")).expect("seal");
    std::fs::write(&share_path, sealed).expect("write share");
    node.restart(bin()).expect("restart");
    node.wait_ready(Duration::from_secs(20)).expect("ready");
    let s = cli_json(&["keys", "status", "--api", &c.nodes[victim].api(), "--json"]);
    assert_eq!(s["share_state"], "invalid", "{s}");
    assert!(
        s["share_error"]
            .as_str()
            .unwrap_or("")
            .contains("corrupted or forged"),
        "{s}"
    );
    c.wait_formed(Duration::from_secs(15))
        .expect("the restarted node rejoins");
    let out = sign(&c, 0, &[0, victim, 1]);
    assert!(!out.status.success(), "signed with a tampered share");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(c.nodes[victim].node_id()),
        "the tampered node is not named: {err}"
    );
}

fn member_lists(c: &LocalCluster, members: &[usize], id: &str) -> bool {
    members.iter().any(|i| {
        c.nodes[*i]
            .peer_ids()
            .unwrap_or_default()
            .iter()
            .any(|p| p == id)
    })
}

/// Runs `bzzz node run` expecting it to exit by itself; returns its output.
fn run_node_expecting_exit(c: &LocalCluster, name: &str, token: &str) -> Output {
    let dir = c.dir.path().join(name);
    let mut child = Command::new(BIN)
        .args([
            "node",
            "run",
            "--data-dir",
            &dir.to_string_lossy(),
            "--http",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--join-token",
            token,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let exited = wait_until(
        "the node to refuse the token and exit",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || child.try_wait().ok().flatten(),
    );
    if exited.is_err() {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let out = child.wait_with_output().expect("output");
    assert!(exited.is_ok(), "node kept running: {:?}", out);
    out
}

#[test]
fn join_tokens_admit_nodes_and_strangers_are_refused() {
    let mut c = LocalCluster::start(bin(), 3, &LocalOpts::default()).expect("start");
    c.wait_formed(Duration::from_secs(15)).expect("formed");
    init(&c, 2, 3);
    let members = [0, 1, 2];

    // A node without a token connects but never enters any member's view.
    let stranger = c.add_node(&LocalOpts::default()).expect("stranger");
    let sid = c.nodes[stranger].node_id().to_owned();
    wait_until(
        "a member to refuse the stranger",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            members
                .iter()
                .any(|i| {
                    let log = std::fs::read_to_string(&c.nodes[*i].log).unwrap_or_default();
                    log.lines()
                        .any(|l| l.contains("refused peer") && l.contains(&sid))
                })
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(!member_lists(&c, &members, &sid), "stranger listed");

    // With a token, a node joins and is listed by every member.
    let pw = c.dir.path().join("operator-password");
    let token = cli_json(&[
        "token",
        "create",
        "--api",
        &c.nodes[1].api(),
        "--operator-password-file",
        &pw.to_string_lossy(),
        "--json",
    ])["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let joiner = c
        .add_node(&LocalOpts {
            extra_args: vec!["--join-token".into(), token.clone()],
            ..Default::default()
        })
        .expect("joiner");
    let jid = c.nodes[joiner].node_id().to_owned();
    wait_until(
        "the token holder to be listed by every member",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            members
                .iter()
                .all(|i| c.nodes[*i].peer_ids().unwrap_or_default().contains(&jid))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // The leader re-deals the admin key to the four holders (a new key
    // epoch, majority: 3 of 4); no node sees the admin key, and the joiner
    // signs with two others.
    let s = wait_until(
        "the joiner's share to be re-dealt",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let s = cli_json(&["keys", "status", "--api", &c.nodes[joiner].api(), "--json"]);
            (s["share_state"] == "valid" && s["threshold"] == 3 && s["shares"] == 4).then_some(s)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(s["initialized"], true, "{s}");
    assert!(s["epoch"].as_u64() >= Some(1), "{s}");
    let index = s["share_index"].as_u64().expect("share index");
    assert!(index > 3, "{s}");
    let pk = s["admin_public_key"].as_str().expect("pk").to_owned();
    wait_until(
        "every member at the joiner's key epoch",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            members
                .iter()
                .all(|i| {
                    cli_json(&["keys", "status", "--api", &c.nodes[*i].api(), "--json"])["epoch"]
                        == s["epoch"]
                })
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    verify_plain_ed25519(&pk, &sign(&c, 1, &[joiner, 2, 0]));

    // The token was for one node: a second node with it is refused.
    let out = run_node_expecting_exit(&c, "again", &token);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("already used"), "unclear refusal: {err}");

    // A forged token (body edited, signature kept) is refused by the member.
    let (rec, mut body) = bzzz_crypto::records::decode_token(&token).expect("decode");
    body.expires_at += 60;
    let sig: [u8; 64] = hex::decode(&rec.signature)
        .expect("hex")
        .try_into()
        .expect("64");
    let forged = bzzz_crypto::records::encode_token(&bzzz_crypto::records::signed(
        serde_json::to_string(&body).expect("json"),
        &sig,
    ))
    .expect("encode");
    let out = run_node_expecting_exit(&c, "forged", &forged);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not signed by this cluster's admin key"),
        "unclear refusal: {err}"
    );

    // An expired token is refused with a clear message.
    let short = cli_json(&[
        "token",
        "create",
        "--api",
        &c.nodes[0].api(),
        "--operator-password-file",
        &pw.to_string_lossy(),
        "--ttl",
        "1s",
        "--json",
    ]);
    let expires_at = short["expires_at"].as_u64().expect("expiry");
    wait_until(
        "the token to expire",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || (bzzz::keys::unix_now() >= expires_at).then_some(()),
    )
    .expect("expired");
    let out = run_node_expecting_exit(&c, "late", short["token"].as_str().expect("token"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("expired"), "unclear refusal: {err}");

    assert!(
        !member_lists(&c, &[0, 1, 2, joiner], &sid),
        "stranger listed"
    );
}

/// Issue #22: a token that admits more than one node is not the
/// operator's act for any one of them: its joiners are members that hold
/// no share until the operator approves each (`bzzz member approve`).
/// Before, one malicious holder of a k-use token could spend the uses on
/// sybils and end up with t shares.
#[test]
fn a_multi_use_token_admits_pending_members_until_approved() {
    let mut c = LocalCluster::start(bin(), 3, &LocalOpts::default()).expect("start");
    c.wait_formed(Duration::from_secs(15)).expect("formed");
    init(&c, 2, 3);
    let pw = c.dir.path().join("operator-password");
    let api0 = c.nodes[0].api();
    let token = cli_json(&[
        "token",
        "create",
        "--api",
        &api0,
        "--operator-password-file",
        &pw.to_string_lossy(),
        "--uses",
        "2",
        "--json",
    ]);
    let joiner = c
        .add_node(&LocalOpts {
            extra_args: vec![
                "--join-token".into(),
                token["token"].as_str().expect("token").into(),
            ],
            ..Default::default()
        })
        .expect("joiner");
    let jid = c.nodes[joiner].node_id().to_owned();
    let state_of = |api: &str| {
        let list = cli_json(&["member", "ls", "--api", api, "--json"]);
        list.as_array()
            .expect("members")
            .iter()
            .find(|m| m["node_id"] == jid.as_str())
            .cloned()
    };
    let m = wait_until(
        "the joiner listed as pending",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || state_of(&api0).filter(|m| m["state"] == "pending"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(m["share_index"].is_null(), "{m}");
    // The leader's custody planner runs every 500 ms: over a few of its
    // rounds (an observation window, not a wait for an event) the key is
    // not re-dealt to the joiner.
    std::thread::sleep(Duration::from_secs(2));
    let s = cli_json(&["keys", "status", "--api", &c.nodes[joiner].api(), "--json"]);
    assert_eq!(s["share_state"], "none", "{s}");
    assert_eq!(s["shares"], 3, "{s}");
    // The cluster page shows it, with an approve button.
    let basic = {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"))
        )
    };
    let (code, page) = http::request(
        &c.nodes[0].api_addr(),
        "GET",
        "/cluster",
        &[("authorization", basic.as_str())],
        "",
    )
    .expect("page");
    assert_eq!(code, 200);
    assert!(page.contains("pending-joiners"), "{page}");
    // The operator approves it: the key is re-dealt to it.
    let out = cli(&[
        "member",
        "approve",
        &jid,
        "--api",
        &api0,
        "--operator-password-file",
        &pw.to_string_lossy(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the approved joiner's share",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let s = cli_json(&["keys", "status", "--api", &c.nodes[joiner].api(), "--json"]);
            (s["share_state"] == "valid" && s["shares"] == 4).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let m = state_of(&api0).expect("listed");
    assert_eq!(m["state"], "member", "{m}");
    // A member that is not pending cannot be approved.
    let out = cli(&[
        "member",
        "approve",
        c.nodes[1].node_id(),
        "--api",
        &api0,
        "--operator-password-file",
        &pw.to_string_lossy(),
    ]);
    assert!(!out.status.success());
}

/// Issue #22: a share at rest is sealed to the node key, which is on the
/// same disk. With `--share-passphrase-file` (kept off that disk: a
/// TPM-sealed systemd credential, a removable disk) the disk alone does
/// not open it, and a node started without the passphrase cannot sign.
#[test]
fn a_share_passphrase_keeps_the_disk_alone_from_opening_the_share() {
    let secret_dir = tempfile::tempdir().expect("dir");
    let pass = secret_dir.path().join("share-passphrase");
    std::fs::write(&pass, "a long share passphrase\n").expect("write");
    let flag = vec![
        "--share-passphrase-file".to_owned(),
        pass.to_string_lossy().into_owned(),
    ];
    let mut c = LocalCluster::start(
        bin(),
        1,
        &LocalOpts {
            extra_args: flag.clone(),
            ..Default::default()
        },
    )
    .expect("start");
    c.wait_formed(Duration::from_secs(15)).expect("formed");
    let done = init(&c, 1, 1);
    let pk = done["admin_public_key"].as_str().expect("pk").to_owned();
    let file = c.nodes[0].data_dir.join("share.age");
    let at_rest = std::fs::read(&file).expect("share");
    assert!(
        at_rest.starts_with(b"age-encryption.org/v1\n-> scrypt "),
        "the share at rest has its passphrase layer"
    );
    let key = bzzz_crypto::keyfile::load(&c.nodes[0].data_dir.join("node_key.json")).expect("key");
    let age = bzzz_crypto::seal::AgeIdentity::derive(&key).expect("age");
    assert!(age.open(&at_rest).is_err(), "the node key alone opens it");
    verify_plain_ed25519(&pk, &sign(&c, 0, &[0]));
    // Started without the passphrase: the share does not open.
    let bin_path = bin().to_path_buf();
    c.nodes[0].args.retain(|a| !flag.contains(a));
    c.nodes[0].restart(&bin_path).expect("restart");
    c.nodes[0]
        .wait_ready(Duration::from_secs(15))
        .expect("ready");
    let s = cli_json(&["keys", "status", "--api", &c.nodes[0].api(), "--json"]);
    assert_eq!(s["share_state"], "invalid", "{s}");
    assert!(!sign(&c, 0, &[0]).status.success());
    // With it again: it signs.
    c.nodes[0].args.extend(flag.iter().cloned());
    c.nodes[0].restart(&bin_path).expect("restart");
    c.nodes[0]
        .wait_ready(Duration::from_secs(15))
        .expect("ready");
    let s = cli_json(&["keys", "status", "--api", &c.nodes[0].api(), "--json"]);
    assert_eq!(s["share_state"], "valid", "{s}");
    verify_plain_ed25519(&pk, &sign(&c, 0, &[0]));
}

#[test]
fn recover_rebuilds_a_cluster_with_the_same_admin_key_and_fresh_shares() {
    let mut old = LocalCluster::start(bin(), 2, &LocalOpts::default()).expect("start");
    old.wait_formed(Duration::from_secs(15)).expect("formed");
    let done = init(&old, 2, 2);
    let pk = done["admin_public_key"].as_str().expect("pk").to_owned();
    let mnemonic = done["mnemonic"].as_str().expect("words").to_owned();
    drop(old);

    // A new set of machines, never initialized.
    let mut c = LocalCluster::start(bin(), 3, &LocalOpts::default()).expect("start");
    c.wait_formed(Duration::from_secs(15)).expect("formed");
    let words = c.dir.path().join("words.txt");
    std::fs::write(&words, mnemonic).expect("write");
    let pw = password_file(&c);
    let (words, api) = (words.to_string_lossy().into_owned(), c.nodes[0].api());
    let holders = c.holder_args(0);
    let mut args = vec![
        "recover",
        "--mnemonic-file",
        &words,
        "--api",
        &api,
        "--cluster",
        "lab",
        "--threshold",
        "2",
        "--operator-password-file",
        &pw,
        "--json",
    ];
    args.extend(holders.iter().map(String::as_str));
    let r = cli_json(&args);
    assert_eq!(r["admin_public_key"], pk.as_str(), "{r}");
    let mut indices = Vec::new();
    for n in &c.nodes {
        let s = cli_json(&["keys", "status", "--api", &n.api(), "--json"]);
        assert_eq!(s["admin_public_key"], pk.as_str(), "{s}");
        assert_eq!(s["share_state"], "valid", "{s}");
        indices.push(s["share_index"].as_u64().expect("index"));
    }
    indices.sort_unstable();
    assert_eq!(indices, vec![1, 2, 3]);
    c.wait_formed(Duration::from_secs(15)).expect("formed");
    verify_plain_ed25519(&pk, &sign(&c, 2, &[1, 2]));
}

/// Issue #22: a peer in view at setup (mDNS finds anyone on the LAN) gets
/// nothing unless the operator names it. Before, every peer in view
/// became a holder and the operator saw only a count.
#[test]
fn a_peer_in_view_at_setup_holds_nothing_unless_named() {
    let mut c = LocalCluster::start(bin(), 3, &LocalOpts::default()).expect("start");
    c.wait_formed(Duration::from_secs(15)).expect("formed");
    let pw = password_file(&c);
    let api = c.nodes[0].api();
    let (trusted, sybil) = (c.nodes[1].node_id(), c.nodes[2].node_id());
    // Shares for peers nobody named: refused, naming the peers and the flag.
    let out = cli(&[
        "init",
        "--api",
        &api,
        "--cluster",
        "lab",
        "--shares",
        "3",
        "--operator-password-file",
        &pw,
        "--json",
    ]);
    assert!(!out.status.success(), "three shares without holders");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--holder") && err.contains(trusted) && err.contains(sybil),
        "{err}"
    );
    assert!(err.contains("127.0.0.1:"), "addresses listed: {err}");
    // A node not in view cannot be named.
    let absent = bzzz_net::node_id_of(&bzzz_crypto::NodeKey::generate().expect("key").seed())
        .expect("id")
        .to_string();
    let out = cli(&[
        "init",
        "--api",
        &api,
        "--cluster",
        "lab",
        "--holder",
        &absent,
        "--operator-password-file",
        &pw,
        "--json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not in view"),
        "{err}"
    );
    // One peer named: it holds, the other stays outside the cluster.
    let done = cli_json(&[
        "init",
        "--api",
        &api,
        "--cluster",
        "lab",
        "--holder",
        trusted,
        "--operator-password-file",
        &pw,
        "--json",
    ]);
    assert_eq!(done["shares"], 2, "{done}");
    assert_eq!(done["threshold"], 2, "{done}");
    let holders: Vec<&str> = done["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .filter_map(|h| h["node_id"].as_str())
        .collect();
    assert_eq!(holders, vec![c.nodes[0].node_id(), trusted], "{done}");
    let s = cli_json(&["keys", "status", "--api", &c.nodes[1].api(), "--json"]);
    assert_eq!(s["share_state"], "valid", "{s}");
    let s = cli_json(&["keys", "status", "--api", &c.nodes[2].api(), "--json"]);
    assert_eq!(s["initialized"], false, "the sybil got records: {s}");
    assert_eq!(s["share_state"], "none", "the sybil got a share: {s}");
}

/// Issue #22: a peer that connects but is no member (a stranger on the LAN
/// running the BZZZ protocols) is refused by every members-only P2P
/// service: the DHT's listings and reads (which answered anyone before),
/// the models swarm, the control plane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_no_member_is_refused_by_every_p2p_service() {
    use bzzz_net::Service;
    let mut c = LocalCluster::start(bin(), 1, &LocalOpts::default()).expect("start");
    c.wait_formed(Duration::from_secs(30)).expect("formed");
    c.init(0, PASSWORD).expect("init");
    let addr = "ucxl://alice:backend_developer@bzzz:secrets/*^/plans.md";
    let api = c.nodes[0].api();
    let me = c.nodes[0].node_id().to_owned();
    wait_until(
        "a role and a DHT record of it",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let role = [
                "role",
                "create",
                "backend_developer",
                "--authority",
                "suggestion",
                "--member",
                &me,
                "--api",
                &api,
            ];
            (cli(&role).status.success()
                && cli(&["dht", "put", addr, "--value", "the plans", "--api", &api])
                    .status
                    .success())
            .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    // The stranger: a bare libp2p node of its own key, dialing node 0.
    let dir = tempfile::tempdir().expect("dir");
    let cfg_path = dir.path().join("bzzz.yaml");
    std::fs::write(&cfg_path, "").expect("config");
    let cfg = bzzz::config::load(
        Some(&cfg_path),
        Vec::new(),
        &bzzz::config::Overrides {
            data_dir: Some(dir.path().to_owned()),
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            bootstrap: vec![c.bootstrap_addr().expect("bootstrap")],
            no_mdns: true,
            ..Default::default()
        },
    )
    .expect("config");
    let key = bzzz_crypto::NodeKey::generate().expect("key");
    let (_local_tx, local_rx) = tokio::sync::watch::channel(bzzz_net::LocalInfo::default());
    let cancel = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let (net, _inbound) = bzzz_net::start(
        &key.seed(),
        cfg.net.clone(),
        local_rx,
        cancel.clone(),
        &tracker,
    )
    .expect("net");
    let target = bzzz_proto::NodeId::parse(c.nodes[0].node_id()).expect("id");
    let ask = |service: Service, payload: Vec<u8>| {
        let (net, target) = (net.clone(), target.clone());
        async move {
            // Until the connection is up (a refusal is an answer).
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                match net.call(service, &target, payload.clone()).await {
                    Ok(answer) => return String::from_utf8_lossy(&answer).into_owned(),
                    Err(e) if std::time::Instant::now() > deadline => {
                        panic!("{service:?}: no answer: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    };
    let list = ask(
        Service::Dht,
        br#"{"op":"list","pattern":"ucxl://any:backend_developer@any:any/*^/**"}"#.to_vec(),
    )
    .await;
    assert!(list.contains("not a member"), "DHT listing: {list}");
    assert!(!list.contains("plans.md"), "{list}");
    let models = ask(Service::Models, br#"{"op":"have"}"#.to_vec()).await;
    assert!(models.contains("not a member"), "models: {models}");
    let raft = ask(Service::Raft, b"{}".to_vec()).await;
    assert!(raft.contains("not a member"), "control plane: {raft}");
    // A certificate from the cluster CA (issue #24): members only.
    let spki = bzzz_crypto::ca::TlsKey::generate()
        .and_then(|k| k.public_der())
        .expect("key");
    let req = bzzz_proto::cluster::KeysRequest::IssueCert {
        spki_der: spki,
        ips: vec!["127.0.0.1".into()],
        dns: vec!["localhost".into()],
    };
    let cert = ask(Service::Keys, serde_json::to_vec(&req).expect("json")).await;
    assert!(cert.contains("not_member"), "certificate: {cert}");
    assert!(!cert.contains("BEGIN CERTIFICATE"), "{cert}");
    cancel.cancel();
}
