//! The command line: exit codes and messages for bad input.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");

fn bzzz(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("BZZZ_API");
    for (k, v) in env {
        c.env(k, v);
    }
    // A command expected to fail must not hang the suite if it starts a node:
    // wait for its exit with a deadline, and kill it past that. (Its output
    // is small, so the pipes cannot fill while it runs.)
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run bzzz");
    let exited = bzzz_testkit::wait_until(
        "bzzz to exit",
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(10),
        || child.try_wait().ok().flatten(),
    );
    if exited.is_err() {
        let _ = child.kill();
    }
    child.wait_with_output().expect("wait")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn node_run(extra: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().to_string_lossy().into_owned();
    let mut args = vec!["node", "run", "--data-dir", &d, "--no-mdns"];
    args.extend_from_slice(extra);
    // The HTTP default comes from the environment, so `--http` in `extra`
    // also checks that flags win over it.
    let mut env = env.to_vec();
    env.push(("BZZZ_HTTP", "127.0.0.1:0"));
    bzzz(&args, &env)
}

#[test]
fn a_bad_config_file_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases = [
        ("network:\n  mdsn: false\n", "mdsn"),
        ("network:\n  max_peers: -3\n", "network.max_peers"),
        ("network:\n  peer_timeout: 1s\n", "network.peer_timeout"),
        ("log_format: [1, 2]\n", "log_format"),
        ("labels: {extra: {\"bad key\": x}}\n", "labels.extra"),
        ("{{{ not yaml", "not valid YAML"),
    ];
    for (yaml, needle) in cases {
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, yaml).expect("write");
        let o = node_run(&["--config", &f.to_string_lossy()], &[]);
        assert_eq!(o.status.code(), Some(2), "{yaml:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("invalid configuration") && e.contains(needle),
            "{yaml:?}: {e}"
        );
        assert!(!e.contains("panicked"), "{e}");
    }
    let o = node_run(&["--config", "/nonexistent/bzzz.yaml"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/bzzz.yaml"));
}

#[test]
fn bad_flag_values_exit_2_with_a_clear_message() {
    let o = node_run(&["--http", "localhost"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("http: \"localhost\" is not an IP:PORT"),
        "{}",
        stderr(&o)
    );

    let o = node_run(&["--bootstrap", "10.0.0.1:4140"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("network.bootstrap[0]"),
        "{}",
        stderr(&o)
    );

    let o = node_run(&["--listen", "tcp://0.0.0.0:1"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("network.listen[0]"), "{}", stderr(&o));

    let o = node_run(&["--log-format", "xml"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("log_format"));

    let o = bzzz(&["demo", "--nodes", "0"], &[]);
    assert_eq!(o.status.code(), Some(2));

    let o = bzzz(&["node", "run", "--frobnicate"], &[]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn environment_overrides_are_checked_like_the_file() {
    let o = node_run(&[], &[("BZZZ_NETWORK__MDSN", "false")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("BZZZ_NETWORK__MDSN"), "{}", stderr(&o));

    let o = node_run(&[], &[("BZZZ_NETWORK__ANNOUNCE_INTERVAL", "whenever")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("network.announce_interval"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_taken_http_port_is_a_clear_runtime_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let o = node_run(&["--http", &addr], &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains(&format!("cannot serve HTTP on {addr}")), "{e}");
}

#[test]
fn the_example_config_is_valid() {
    let o = bzzz(&["config", "example"], &[]);
    assert!(o.status.success());
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("example.yaml");
    std::fs::write(&f, &o.stdout).expect("write");
    let o = bzzz(&["config", "check", "--config", &f.to_string_lossy()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("configuration is valid"));
}

#[test]
fn read_commands_explain_an_unreachable_api() {
    let o = bzzz(&["status", "--api", "http://127.0.0.1:9"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot reach the BZZZ API at http://127.0.0.1:9"),
        "{}",
        stderr(&o)
    );
    let o = bzzz(&["peers", "--json", "--api", "127.0.0.1:9"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is not an http"), "{}", stderr(&o));
}
