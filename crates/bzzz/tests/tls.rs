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
fn a_cluster_ca_endorsed_by_the_admin_key_kept_by_the_holders_and_every_member_serves_tls_under_it()
{
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
    // The listeners speak TLS with a certificate from the CA (`curl
    // --cacert`, a client no one here wrote, is the judge), beside plain
    // HTTP on the same port for now.
    let ca_file = c.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pem).expect("ca.pem");
    let ca_arg = ca_file.to_string_lossy().into_owned();
    let curl = |extra: &[&str], api: &str| {
        std::process::Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .args(extra)
            .arg(format!(
                "https://{}/api/v1/status",
                api.trim_start_matches("http://")
            ))
            .output()
            .expect("curl")
    };
    for api in [&api0, &api1] {
        bzzz_testkit::wait_until(
            "the node presents a certificate from the cluster CA",
            Duration::from_secs(30),
            Duration::from_millis(250),
            || {
                let o = curl(&["--cacert", &ca_arg], api);
                (o.status.success() && o.stdout == b"200").then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}: {api}\n{}", c.logs()));
        assert_eq!(
            get(api, "/api/v1/status").0,
            200,
            "plain HTTP still answers"
        );
    }
    // The console over TLS: HSTS, a `Secure` session cookie, the CA's
    // fingerprint on the overview; none of that over plain HTTP.
    let https0 = api0.replacen("http://", "https://", 1);
    let raw = |url: &str, extra: &[&str]| {
        let o = std::process::Command::new("curl")
            .args(["-sS", "-i", "--max-time", "5", "--cacert", &ca_arg])
            .args(extra)
            .arg(url)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&o.stdout).to_ascii_lowercase()
    };
    let page = raw(&format!("{https0}/"), &[]);
    assert!(
        page.contains("strict-transport-security: max-age="),
        "{page}"
    );
    assert!(
        page.contains(&fp.to_ascii_lowercase()),
        "the overview shows the CA"
    );
    assert!(!raw(&format!("{api0}/"), &[]).contains("strict-transport-security"));
    let login = |base: &str| {
        raw(
            &format!("{base}/login"),
            &[
                "--data-urlencode",
                "user=admin",
                "--data-urlencode",
                "password=a long operator password",
            ],
        )
    };
    let cookie = |r: &str| {
        r.lines()
            .find(|l| l.starts_with("set-cookie:"))
            .unwrap_or_default()
            .to_owned()
    };
    let over_tls = cookie(&login(&https0));
    assert!(
        over_tls.contains("httponly") && over_tls.contains("; secure"),
        "{over_tls}"
    );
    let plain = cookie(&login(&api0));
    assert!(
        plain.contains("httponly") && !plain.contains("secure"),
        "{plain}"
    );
    // The CLI over https: trusting the CA from a file, from a pinned
    // fingerprint (checked before any credential is sent, then saved),
    // never silently.
    let conf = tempfile::tempdir().expect("config dir");
    let https1 = api1.replacen("http://", "https://", 1);
    let bzzz = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .env_remove("BZZZ_API")
            .env("XDG_CONFIG_HOME", conf.path())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("bzzz")
    };
    let o = bzzz(&["status", "--api", &https1, "--json", "--ca-cert", &ca_arg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = bzzz(&["status", "--api", &https1, "--json"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains(&fp),
        "never silently: {err}"
    );
    let wrong = format!("SHA256:{}", "0".repeat(64));
    let o = bzzz(&["status", "--api", &https1, "--ca-fingerprint", &wrong]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("nothing was sent"),
        "{err}"
    );
    let o = bzzz(&[
        "status",
        "--api",
        &https1,
        "--json",
        "--ca-fingerprint",
        &fp,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Saved: the next call needs no option.
    let o = bzzz(&["peers", "--api", &https1, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Outside the cluster: a self-signed certificate, which the CA does
    // not vouch for (curl: 60, the peer certificate cannot be
    // authenticated).
    let o = curl(&["--cacert", &ca_arg], &api2);
    assert_eq!(
        o.status.code(),
        Some(60),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = curl(&["--insecure"], &api2);
    assert_eq!(o.stdout, b"200", "TLS before setup (self-signed)");
    // A member without the CA key (a joiner) gets its certificate from a
    // holder.
    let token = bzzz_testkit::wait_until(
        "a join token",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let out = cli(
                BIN,
                &[
                    "token",
                    "create",
                    "--api",
                    &api0,
                    "--operator-password-file",
                    &pw_arg,
                    "--json",
                ],
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v["token"].as_str().map(str::to_owned)
        },
    )
    .expect("token");
    let j = c
        .add_node(&LocalOpts {
            extra_args: vec!["--join-token".into(), token],
            ..Default::default()
        })
        .expect("joiner");
    let api3 = c.nodes[j].api();
    bzzz_testkit::wait_until(
        "the joiner presents a certificate from the cluster CA",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let o = curl(&["--cacert", &ca_arg], &api3);
            (o.status.success() && o.stdout == b"200").then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(!c.nodes[j].data_dir.join("ca-key.age").exists());
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
