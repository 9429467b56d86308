//! `install.sh` on this machine (SPEC §2), unattended into a temporary
//! prefix. There is no systemd here, so this covers the fallback service:
//! install → the node serves `/setup` → re-run (nothing changes, same
//! process) → uninstall (process gone, files gone). The checks' refusals
//! (port taken, bad options) give clear messages and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use bzzz_testkit::{http, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_bzzz");

fn installer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../install.sh")
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn sh(args: &[&str]) -> Output {
    // `setsid`: no controlling terminal, as under CI.
    Command::new("setsid")
        .args(["-w", "sh"])
        .arg(installer())
        .args(args)
        .env_remove("BZZZ_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run install.sh")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Kills the installed node if a test fails half-way.
struct Guard(PathBuf);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("run/bzzz.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

fn pid_of(prefix: &Path) -> Option<i32> {
    std::fs::read_to_string(prefix.join("run/bzzz.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn installs_serves_setup_reruns_idempotently_and_uninstalls() {
    let dir = tempfile::tempdir().expect("tmp");
    let prefix = dir.path().join("bzzz");
    let _guard = Guard(prefix.clone());
    let (http_port, p2p_port) = (free_port(), free_port());
    let (hp, pp) = (http_port.to_string(), p2p_port.to_string());
    let p = prefix.to_string_lossy().into_owned();
    let common = [
        "--prefix",
        &p,
        "--http-port",
        &hp,
        "--p2p-port",
        &pp,
        "--no-mdns",
    ];

    // Install.
    let mut args = vec!["--yes", "--binary", BIN];
    args.extend(common);
    let o = sh(&args);
    let out = text(&o);
    assert!(o.status.success(), "install failed:\n{out}");
    for check in [
        "os", "arch", "init", "memory", "disk", "gpu", "ollama", "http", "p2p",
    ] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with("ok") && l.contains(check)),
            "no passing `{check}` line in the report:\n{out}"
        );
    }
    assert!(out.contains("/setup"), "{out}");
    assert!(prefix.join("bin/bzzz").exists());
    assert!(prefix.join("bin/bzzz-service").exists());
    let cfg = std::fs::read_to_string(prefix.join("etc/bzzz.yaml")).expect("config");
    assert!(cfg.contains(&format!("http: 0.0.0.0:{http_port}")), "{cfg}");
    let pid = pid_of(&prefix).expect("pid file");
    assert!(alive(pid));

    // The node serves the setup page.
    let addr = format!("127.0.0.1:{http_port}");
    let (code, body) = wait_until(
        "/setup",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || http::get(&addr, "/setup").ok(),
    )
    .expect("setup page");
    assert_eq!(code, 200);
    assert!(body.contains("setup") || body.contains("Setup"), "{body}");

    // Re-run: nothing changes, the same process keeps running.
    let o = sh(&args);
    let out = text(&o);
    assert!(o.status.success(), "re-run failed:\n{out}");
    assert!(out.contains("nothing changed"), "{out}");
    assert!(
        out.contains(&format!("in use by this BZZZ installation (pid {pid})")),
        "{out}"
    );
    assert_eq!(pid_of(&prefix), Some(pid), "re-run restarted the node");
    assert!(alive(pid));

    // A second installation on the same ports is refused, naming the port.
    let other = dir.path().join("other");
    let o2 = other.to_string_lossy().into_owned();
    let o = sh(&[
        "--yes",
        "--binary",
        BIN,
        "--prefix",
        &o2,
        "--http-port",
        &hp,
        "--p2p-port",
        &pp,
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains(&format!(
            "{http_port}/tcp is already in use by another program"
        )),
        "{out}"
    );
    assert!(out.contains("refusing to install"), "{out}");
    assert!(
        !other.join("bin/bzzz").exists(),
        "nothing installed after a refusal"
    );

    // Uninstall: the process stops, the files go, the data stays.
    let mut un = vec!["--yes", "--uninstall"];
    un.extend(common);
    let o = sh(&un);
    let out = text(&o);
    assert!(o.status.success(), "uninstall failed:\n{out}");
    wait_until(
        "the node stops",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || (!alive(pid)).then_some(()),
    )
    .expect("stopped");
    assert!(!prefix.join("bin/bzzz").exists());
    assert!(!prefix.join("etc/bzzz.yaml").exists());
    assert!(
        prefix.join("data").exists(),
        "identity kept without --purge"
    );
    assert!(
        http::get(&addr, "/setup").is_err(),
        "still serving after uninstall"
    );
    // Uninstalling twice is fine.
    assert!(sh(&un).status.success());
}

#[test]
fn checks_refuse_with_clear_reasons() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("p").to_string_lossy().into_owned();
    // A port held by another program.
    let held = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = held.local_addr().expect("addr").port().to_string();
    let o = sh(&[
        "--check",
        "--prefix",
        &p,
        "--http-port",
        &port,
        "--p2p-port",
        "1",
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("FAIL") && out.contains(&format!("{port}/tcp is already in use")),
        "{out}"
    );
    assert!(out.contains("--http-port"), "the fix is named: {out}");
    // Machine-readable report for scripts (and `bzzz deploy`).
    let o = sh(&[
        "--check",
        "--report",
        "kv",
        "--prefix",
        &p,
        "--http-port",
        &port,
        "--p2p-port",
        "1",
    ]);
    let out = text(&o);
    assert!(
        out.contains(&format!("check\thttp\tfail\t{port}/tcp")),
        "{out}"
    );
    assert!(out.contains("fact\tinstalled_sha256\tnone"), "{out}");
    // Bad options.
    for (args, msg) in [
        (vec!["--http-port", "99999"], "--http-port must be a number"),
        (
            vec!["--http-port", "7000", "--p2p-port", "7000"],
            "must differ",
        ),
        (vec!["--frobnicate"], "unknown option --frobnicate"),
        (vec!["--service", "upstart"], "--service must be"),
        (vec!["--sha256", "XYZ"], "--sha256 must be"),
    ] {
        let o = sh(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(msg), "{args:?}: {}", text(&o));
    }
    // Unattended without --yes and without a terminal: refused, not hung.
    let free = free_port().to_string();
    let o = sh(&[
        "--binary",
        BIN,
        "--prefix",
        &p,
        "--http-port",
        &free,
        "--p2p-port",
        &free_port().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("--yes"), "{}", text(&o));
    // A binary whose checksum does not match is refused.
    let o = sh(&[
        "--yes",
        "--binary",
        BIN,
        "--sha256",
        &"0".repeat(64),
        "--prefix",
        &p,
        "--http-port",
        &free,
        "--p2p-port",
        &free_port().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("checksum mismatch"), "{}", text(&o));
    drop(held);
}
