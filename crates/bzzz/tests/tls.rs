//! TLS under a cluster CA (issue #24): the CA made at setup, endorsed by
//! the admin key, its key kept by the share holders only.

use std::path::Path;
use std::time::Duration;

use bzzz_testkit::{LocalCluster, LocalOpts, cli, cli_json};
use sha2::Digest as _;

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");

fn get(api: &str, path: &str) -> (u16, String) {
    bzzz_testkit::http::get(api.trim_start_matches("http://"), path).unwrap_or((0, String::new()))
}

#[test]
fn setup_makes_a_cluster_ca_endorsed_by_the_admin_key_and_kept_by_the_holders_only() {
    let mut c = LocalCluster::start(Path::new(BIN), 3, &LocalOpts::default()).expect("start");
    c.wait_formed(Duration::from_secs(30)).expect("formed");
    let pw = c.dir.path().join("operator-password");
    std::fs::write(&pw, "a long operator password\n").expect("pw");
    let (api0, api1, api2) = (c.nodes[0].api(), c.nodes[1].api(), c.nodes[2].api());
    // Nodes 0 and 1 hold shares; node 2, not named, stays outside.
    let pw_arg = pw.to_string_lossy().into_owned();
    let done = cli_json(
        BIN,
        &[
            "init",
            "--api",
            &api0,
            "--cluster",
            "lab",
            "--operator-password-file",
            &pw_arg,
            "--holder",
            c.nodes[1].node_id(),
            "--json",
        ],
    );
    let fp = done["ca_fingerprint"]
        .as_str()
        .expect("ca_fingerprint")
        .to_owned();
    assert!(fp.starts_with("SHA256:") && fp.len() == 71, "{done}");
    let admin = done["admin_public_key"]
        .as_str()
        .expect("admin key")
        .to_owned();
    // Public on every member (here node 1, not the one that ran setup).
    let pem = bzzz_testkit::wait_until(
        "node 1 serves the CA",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let (status, body) = get(&api1, "/api/v1/ca.pem");
            (status == 200).then_some(body)
        },
    )
    .expect("ca.pem");
    let der = bzzz_crypto::ca::der_of(&pem).expect("PEM");
    assert_eq!(
        fp,
        format!("SHA256:{}", hex::encode(sha2::Sha256::digest(&der))),
        "the fingerprint is the SHA-256 of the certificate's DER"
    );
    // Checked against the admin key the operator knows.
    let shown = cli_json(
        BIN,
        &[
            "ca",
            "show",
            "--api",
            &api1,
            "--json",
            "--admin-key",
            &admin,
        ],
    );
    assert_eq!(shown["fingerprint"], fp.as_str(), "{shown}");
    assert_eq!(shown["endorsed"], true);
    assert_eq!(shown["cluster"], "lab");
    let other = "11".repeat(32);
    let refused = cli(BIN, &["ca", "show", "--api", &api1, "--admin-key", &other]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a CA endorsed by another key is refused"
    );
    assert!(err.contains("different cluster admin key"), "{err}");
    // Outside the cluster: no CA.
    assert_eq!(get(&api2, "/api/v1/ca.pem").0, 404);
    // The CA key: on the holders only, sealed (never PEM on disk).
    for (i, holds) in [(0, true), (1, true), (2, false)] {
        let f = c.nodes[i].data_dir.join("ca-key.age");
        assert_eq!(f.exists(), holds, "node {i}");
        if holds {
            let bytes = std::fs::read(&f).expect("read");
            assert!(
                !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
                "node {i} keeps the CA key in plaintext"
            );
        }
    }
}
