use super::*;

fn load_str(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("c.yaml");
    std::fs::write(&p, yaml).expect("write");
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    load(Some(&p), env, &Overrides::default())
}

#[test]
fn the_example_file_parses_to_the_defaults() {
    let c = load_str(&example(), &[]).expect("example is valid");
    assert_eq!(c.http.to_string(), "0.0.0.0:8080");
    assert!(c.net.mdns);
    assert_eq!(c.net.listen.len(), 2);
    assert_eq!(c.net.peer_timeout, Duration::from_secs(6));
}

#[test]
fn unknown_fields_and_bad_values_name_the_field() {
    let e = load_str("network:\n  mdsn: true\n", &[]).unwrap_err();
    assert_eq!(e.field, "network.mdsn");
    assert!(e.problem.contains("unknown field"), "{e}");

    let e = load_str("network:\n  max_peers: lots\n", &[]).unwrap_err();
    assert_eq!(e.field, "network.max_peers", "{e}");

    let e = load_str("http: nope\n", &[]).unwrap_err();
    assert_eq!(e.field, "http");

    let e = load_str("network:\n  bootstrap: [\"10.0.0.1:4140\"]\n", &[]).unwrap_err();
    assert_eq!(e.field, "network.bootstrap[0]");

    let e = load_str("network:\n  peer_timeout: 1s\n", &[]).unwrap_err();
    assert_eq!(e.field, "network.peer_timeout");

    let e = load_str("network:\n  announce_interval: soon\n", &[]).unwrap_err();
    assert_eq!(e.field, "network.announce_interval");

    let e = load_str("labels:\n  zonee: x\n", &[]).unwrap_err();
    assert!(e.problem.contains("zonee"), "{e}");

    let e = load_str("labels:\n  zone: \"\"\n", &[]).unwrap_err();
    assert_eq!(e.field, "labels.zone");

    let e = load_str("- a\n- b\n", &[]).unwrap_err();
    assert!(e.problem.contains("mapping"), "{e}");
}

#[test]
fn environment_overrides_the_file_and_flags_override_both() {
    let c = load_str(
        "http: 127.0.0.1:1\n",
        &[
            ("BZZZ_HTTP", "127.0.0.1:2"),
            ("BZZZ_NETWORK__MDNS", "false"),
            (
                "BZZZ_NETWORK__BOOTSTRAP",
                "/ip4/10.1.1.1/tcp/4140, /ip4/10.1.1.2/tcp/4140",
            ),
            ("BZZZ_LABELS__ZONE", "eu-1"),
            ("BZZZ_CONFIG", "/ignored"),
            ("BZZZ_SHARE_PASSPHRASE_FILE", "/ignored"),
            ("OTHER", "x"),
        ],
    )
    .expect("valid");
    assert_eq!(c.http.to_string(), "127.0.0.1:2");
    assert!(!c.net.mdns);
    assert_eq!(c.net.bootstrap.len(), 2);
    assert_eq!(c.labels.zone.as_deref(), Some("eu-1"));

    let e = load_str("", &[("BZZZ_NETWORK__MDSN", "false")]).unwrap_err();
    assert_eq!(e.field, "BZZZ_NETWORK__MDSN");
    let e = load_str("", &[("BZZZ_NETWORK__MAX_PEERS", "many")]).unwrap_err();
    assert_eq!(e.field, "network.max_peers");

    let flags = Overrides {
        http: Some("127.0.0.1:3".into()),
        no_mdns: true,
        ..Default::default()
    };
    let c = load(
        None::<&Path>,
        [("BZZZ_HTTP".to_string(), "127.0.0.1:2".to_string())],
        &flags,
    );
    // No file given and (on test machines) no system file: defaults apply.
    if !Path::new(SYSTEM_CONFIG).exists() {
        let c = c.expect("valid");
        assert_eq!(c.http.to_string(), "127.0.0.1:3");
        assert!(!c.net.mdns);
    }
}

#[test]
fn declared_capabilities_are_checked_and_marked() {
    let c = load_str(
        "capabilities:\n  declared:\n    gpus:\n      - {vendor: NVIDIA, model: H100, vram_total_bytes: 85899345920}\n    cpu_cores: 64\n",
        &[],
    )
    .expect("valid");
    assert_eq!(c.declared_gpus.len(), 1);
    assert!(c.declared_gpus[0].declared);
    assert_eq!(c.declared_gpus[0].vendor, "nvidia");
    assert_eq!(c.declared_cpu_cores, Some(64));

    let e = load_str(
        "capabilities:\n  declared:\n    gpus:\n      - {vendor: x, model: y, vram_total_bytes: 0}\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(e.field, "capabilities.declared.gpus[0].vram_total_bytes");
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let e = load(
        Some(Path::new("/nonexistent/bzzz.yaml")),
        std::iter::empty(),
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.field, "/nonexistent/bzzz.yaml");
}
