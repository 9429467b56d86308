use super::*;
use serde_json::json;

fn req(v: serde_json::Value) -> Result<DeployRequest, serde_json::Error> {
    serde_json::from_value(v)
}

#[test]
fn requests_are_validated_before_anything_runs() {
    let ok = req(json!({"hosts": "10.0.0.1-2", "ssh_user": "root", "ssh_password": "x"})).unwrap();
    assert_eq!(validate(&ok).unwrap(), ["10.0.0.1", "10.0.0.2"]);
    for (bad, why) in [
        (
            json!({"hosts": "", "ssh_user": "root", "ssh_password": "x"}),
            "hosts",
        ),
        (
            json!({"hosts": "h", "ssh_user": "-oProxyCommand=x", "ssh_password": "x"}),
            "ssh_user",
        ),
        (
            json!({"hosts": "h", "ssh_user": "root"}),
            "ssh_key or ssh_password",
        ),
        (
            json!({"hosts": "h", "ssh_user": "root", "ssh_password": "x", "prefix": "rel"}),
            "prefix",
        ),
        (
            json!({"hosts": "h", "ssh_user": "root", "ssh_password": "x", "http_port": 4140}),
            "differ",
        ),
    ] {
        let e = validate(&req(bad).unwrap()).unwrap_err();
        assert!(e.contains(why), "{e}");
    }
    assert!(req(json!({"hosts": "h", "ssh_user": "root", "bogus": 1})).is_err());
}

#[test]
fn a_failing_random_source_is_an_error_not_a_predictable_token() {
    let e = random_id_from(|_| Err(getrandom::Error::UNSUPPORTED)).unwrap_err();
    assert!(e.contains("random number generator"), "{e}");
    let a = random_id().expect("id");
    assert_eq!(a.len(), 16);
    assert_ne!(a, random_id().expect("id"));
}

#[test]
fn a_run_cancelled_by_shutdown_reports_every_host() {
    let ev = |host: &str, state: job::State| Event {
        changed: Some(true),
        ..Event::new(host, state, 5)
    };
    let (tick, _) = watch::channel(0);
    let run = Arc::new(Run {
        events: Mutex::new(vec![
            ev("a", job::State::Joined),
            ev("b", job::State::Uploading),
        ]),
        outcomes: Mutex::new(None),
        tick,
        payload: Mutex::new(None),
        download_token: String::new(),
    });
    let sink_run = run.clone();
    let sink: job::Sink = Arc::new(move |e: Event| lock(&sink_run.events).push(e));
    let hosts = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
    let out = cancelled(&run, &hosts, &sink);
    assert!(out[0].ok && out[0].changed);
    for o in &out[1..] {
        assert!(!o.ok);
        assert_eq!(o.cause, Some(Cause::Cancelled));
    }
    // b and c got a last event saying so, with what they were doing.
    let events = lock(&run.events);
    let last_b = events.iter().rev().find(|e| e.host == "b").expect("b");
    assert_eq!(last_b.state, job::State::Failed);
    assert!(last_b.message.contains("uploading"), "{}", last_b.message);
    assert!(
        events
            .iter()
            .any(|e| e.host == "c" && e.cause == Some(Cause::Cancelled))
    );
}

#[test]
fn known_hosts_goes_to_a_fresh_private_file() {
    use std::os::unix::fs::PermissionsExt as _;
    // What a local attacker could pre-create under the old scheme.
    let old = std::env::temp_dir().join(format!("bzzz-deploy-{}", std::process::id()));
    let a = write_known_hosts("h ssh-ed25519 AAAA\n").expect("write");
    let b = write_known_hosts("h ssh-ed25519 AAAA\n").expect("write");
    assert_ne!(a.path(), b.path());
    assert!(!a.path().starts_with(&old), "{}", a.path().display());
    let mode = std::fs::metadata(a.path())
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    let path = a.path().to_owned();
    drop(a);
    assert!(!path.exists(), "removed when the run ends");
}
