//! Headless Chromium over WebDriver (Debian `chromium` + `chromium-driver`,
//! driven by fantoccini), for the web UI tests.
//!
//! Tests skip with a reason when Chromium is not installed, except under CI
//! (`CI` set), where `scripts/test.sh` installs it and a skip would hide a
//! missing feature: there they fail instead.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A running chromedriver (killed on drop).
#[derive(Debug)]
pub struct Driver(Child);

impl Drop for Driver {
    /// Kills chromedriver's whole process group: the Chromium it started
    /// too, also when a test panicked before closing its session.
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether the browser tests can run here (see the module docs).
pub fn available() -> bool {
    let ok = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the browser tests: install chromium and chromium-driver (scripts/test.sh does)"
        );
        eprintln!(
            "SKIP: {CHROMIUM} or {CHROMEDRIVER} missing (apt install chromium chromium-driver)"
        );
    }
    ok
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts chromedriver on a free loopback port, optionally inside a network
/// namespace (`prefix` such as `["ip", "netns", "exec", NS]`); returns its
/// URL. The caller must connect from the same namespace.
pub fn start_driver(dir: &Path, prefix: &[&str]) -> (Driver, u16) {
    let port = free_port();
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(CHROMEDRIVER);
            c
        }
        None => Command::new(CHROMEDRIVER),
    };
    // Its own process group, so that dropping the driver ends Chromium too.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .arg(format!("--port={port}"))
        .arg(format!(
            "--log-path={}",
            dir.join("chromedriver.log").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromedriver");
    (Driver(child), port)
}

/// A WebDriver session with headless Chromium (profile under `dir`); waits
/// for chromedriver to accept it.
pub async fn session(dir: &Path, port: u16) -> fantoccini::Client {
    let profile = dir.join("chromium-profile");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage",
                     format!("--user-data-dir={}", profile.display())],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => return c,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("no WebDriver session at {url}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits (up to `secs`) for an element: a click that submits a form
/// returns before the next page has loaded.
pub async fn wait_for_secs(
    c: &fantoccini::Client,
    css: &str,
    secs: u64,
) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(secs))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

/// [`wait_for_secs`] with 15 s.
pub async fn wait_for(c: &fantoccini::Client, css: &str) -> fantoccini::elements::Element {
    wait_for_secs(c, css, 15).await
}

pub async fn text_of(c: &fantoccini::Client, css: &str) -> String {
    wait_for(c, css).await.text().await.expect("text")
}
