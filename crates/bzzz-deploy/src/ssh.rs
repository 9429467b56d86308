//! SSH sessions (russh) with host-key verification.
//!
//! A host listed in the given known_hosts file with a different key of the
//! same type is always refused. Otherwise a host key is accepted, in this
//! order, when
//! 1. it equals the fingerprint pinned for `host:port` in cluster state
//!    (a pinned host whose key differs is always refused),
//! 2. the known_hosts file lists it,
//! 3. the operator confirmed exactly this fingerprint (web UI),
//! 4. trust-on-first-use was asked for (`--accept-new-host-keys`); the
//!    fingerprint is reported so the caller pins it.
//!
//! Anything else is refused, naming the fingerprint so the operator can
//! check it out of band and confirm it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, Disconnect};
use serde::Serialize;
use zeroize::Zeroizing;

/// How the client authenticates.
#[derive(Clone)]
pub enum Credential {
    /// An OpenSSH private key (decoded; zeroized by `ssh-key` on drop).
    Key(Arc<PrivateKey>),
    /// A password.
    Password(Arc<Zeroizing<String>>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Key(k) => write!(f, "Credential::Key({})", k.algorithm()),
            Credential::Password(_) => f.write_str("Credential::Password(<redacted>)"),
        }
    }
}

impl Credential {
    /// Decodes an OpenSSH/PEM private key (optionally passphrase-protected).
    pub fn from_key_text(text: &str, passphrase: Option<&str>) -> Result<Self, String> {
        russh::keys::decode_secret_key(text, passphrase)
            .map(|k| Credential::Key(Arc::new(k)))
            .map_err(|e| format!("cannot read the SSH private key: {e}"))
    }

    pub fn password(p: String) -> Self {
        Credential::Password(Arc::new(Zeroizing::new(p)))
    }
}

/// Which host keys are accepted (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct HostKeyPolicy {
    /// A file in OpenSSH known_hosts format.
    pub known_hosts: Option<PathBuf>,
    /// `host:port` → `SHA256:…`, pinned by earlier deploys (cluster state).
    pub pinned: BTreeMap<String, String>,
    /// `host` → `SHA256:…` the operator confirmed for this run.
    pub confirmed: BTreeMap<String, String>,
    /// Trust on first use.
    pub accept_new: bool,
}

/// Why a host key was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyTrust {
    Pinned,
    KnownHosts,
    Confirmed,
    /// Trust on first use: the caller pins it.
    AcceptedNew,
}

/// The outcome of the host-key check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyCheck {
    Accepted {
        fingerprint: String,
        trust: KeyTrust,
    },
    Refused {
        fingerprint: String,
        reason: String,
    },
}

impl HostKeyPolicy {
    /// Decides on `key` offered by `host:port`.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> HostKeyCheck {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let refuse = |reason: String| HostKeyCheck::Refused {
            fingerprint: fingerprint.clone(),
            reason,
        };
        let accept = |trust| HostKeyCheck::Accepted {
            fingerprint: fingerprint.clone(),
            trust,
        };
        // A known_hosts entry that disagrees is refused first, so a pin
        // (operations data in cluster state) can never override it.
        let mut listed = false;
        if let Some(path) = &self.known_hosts {
            match russh::keys::check_known_hosts_path(host, port, key, path) {
                Ok(found) => listed = found,
                Err(russh::keys::Error::KeyChanged { line }) => {
                    return refuse(format!(
                        "HOST KEY CHANGED: {}:{line} lists another key; offered {fingerprint}; refusing",
                        path.display()
                    ));
                }
                Err(e) => {
                    return refuse(format!("cannot read {}: {e}", path.display()));
                }
            }
        }
        if let Some(pin) = self.pinned.get(&format!("{host}:{port}")) {
            return if *pin == fingerprint {
                accept(KeyTrust::Pinned)
            } else {
                refuse(format!(
                    "HOST KEY CHANGED: pinned {pin}, offered {fingerprint}; refusing (possible man-in-the-middle; if the host was reinstalled, check the new key and update its pin first)"
                ))
            };
        }
        if listed {
            return accept(KeyTrust::KnownHosts);
        }
        if let Some(c) = self.confirmed.get(host) {
            return if *c == fingerprint {
                accept(KeyTrust::Confirmed)
            } else {
                refuse(format!(
                    "the offered key {fingerprint} is not the one confirmed ({c}); refusing"
                ))
            };
        }
        if self.accept_new {
            return accept(KeyTrust::AcceptedNew);
        }
        refuse(format!(
            "unknown host key {fingerprint}: check it out of band, then confirm it, list it in known_hosts, or pass --accept-new-host-keys"
        ))
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub credential: Credential,
    pub connect_timeout: Duration,
}

/// What went wrong, by cause.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{reason}")]
    HostKey { fingerprint: String, reason: String },
    #[error("authentication failed for user {user} ({method})")]
    Auth { user: String, method: &'static str },
    #[error("SSH: {0}")]
    Protocol(String),
    #[error("the remote command did not finish within {0:?}")]
    Timeout(std::time::Duration),
}

/// A remote command must finish within this (an install, a download of
/// the binary on a slow link); `exec_within` takes another deadline.
pub const EXEC_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);
/// Most bytes kept of a remote command's stdout and of its stderr; the rest
/// is dropped (and counted).
pub const MAX_OUTPUT: usize = 1 << 20;

/// Appends `data` to `buf` up to [`MAX_OUTPUT`]; returns the bytes dropped.
fn append_capped(buf: &mut Vec<u8>, data: &[u8]) -> usize {
    let room = MAX_OUTPUT.saturating_sub(buf.len());
    let take = room.min(data.len());
    buf.extend_from_slice(&data[..take]);
    data.len() - take
}

struct Handler {
    host: String,
    port: u16,
    policy: Arc<HostKeyPolicy>,
    seen: Arc<Mutex<Option<HostKeyCheck>>>,
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let check = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                self.policy.check(&self.host, self.port, key)
            }
            russh::keys::PublicKeyOrCertificate::Certificate(_) => HostKeyCheck::Refused {
                fingerprint: String::new(),
                reason: "host certificates are not supported; offer a plain host key".into(),
            },
        };
        let ok = matches!(check, HostKeyCheck::Accepted { .. });
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(check);
        }
        Ok(ok)
    }
}

/// Output of one remote command.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Output bytes beyond [`MAX_OUTPUT`] that were dropped.
    pub dropped: usize,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// The last lines of stderr (for error messages).
    pub fn stderr_tail(&self) -> String {
        let t = String::from_utf8_lossy(&self.stderr);
        let lines: Vec<&str> = t.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join(" / ")
    }
}

/// An authenticated SSH connection.
pub struct Session {
    handle: client::Handle<Handler>,
    pub fingerprint: String,
    pub trust: KeyTrust,
    /// This side's address on the connection: how the host reaches us.
    pub local_ip: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Connects and returns the host key without authenticating (for the web
/// UI's "confirm these fingerprints" step).
pub async fn scan_host_key(host: &str, port: u16, timeout: Duration) -> Result<String, SshError> {
    let policy = Arc::new(HostKeyPolicy::default());
    let seen = Arc::new(Mutex::new(None));
    let handler = Handler {
        host: host.to_owned(),
        port,
        policy,
        seen: seen.clone(),
    };
    let _ = connect_raw(host, port, timeout, handler).await;
    let s = seen.lock().ok().and_then(|s| s.clone());
    match s {
        Some(
            HostKeyCheck::Refused { fingerprint, .. } | HostKeyCheck::Accepted { fingerprint, .. },
        ) if !fingerprint.is_empty() => Ok(fingerprint),
        _ => Err(SshError::Connect(format!(
            "{host}:{port}: no host key received"
        ))),
    }
}

async fn connect_raw(
    host: &str,
    port: u16,
    timeout: Duration,
    handler: Handler,
) -> Result<(client::Handle<Handler>, Option<std::net::IpAddr>), SshError> {
    let config = Arc::new(client::Config {
        inactivity_timeout: Some(Duration::from_secs(300)),
        keepalive_interval: Some(Duration::from_secs(15)),
        // Bulk upload: a large window and packets keep the pipe full.
        window_size: 16 * 1024 * 1024,
        maximum_packet_size: 65535,
        // AES-GCM first: hardware AES (both russh's aws-lc backend and
        // OpenSSH use it) moves the binary several times faster than
        // ChaCha20-Poly1305, on both ends.
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(&[
                russh::cipher::AES_256_GCM,
                russh::cipher::CHACHA20_POLY1305,
                russh::cipher::AES_256_CTR,
            ]),
            ..Default::default()
        },
        ..Default::default()
    });
    let addr = (host.trim_matches(|c| c == '[' || c == ']'), port);
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| SshError::Connect(format!("{host}:{port}: no answer within {timeout:?}")))?
        .map_err(|e| SshError::Connect(format!("{host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok().map(|a| a.ip());
    let h = tokio::time::timeout(timeout, client::connect_stream(config, tcp, handler))
        .await
        .map_err(|_| SshError::Connect(format!("{host}:{port}: SSH handshake timed out")))?
        .map_err(|e| SshError::Protocol(e.to_string()))?;
    Ok((h, local))
}

impl Session {
    /// Connects, checks the host key against `policy`, authenticates.
    pub async fn connect(target: &Target, policy: Arc<HostKeyPolicy>) -> Result<Self, SshError> {
        let seen = Arc::new(Mutex::new(None));
        let handler = Handler {
            host: target.host.clone(),
            port: target.port,
            policy,
            seen: seen.clone(),
        };
        let result = connect_raw(&target.host, target.port, target.connect_timeout, handler).await;
        let check = seen.lock().ok().and_then(|s| s.clone());
        let (mut handle, local_ip) = match (result, check) {
            (
                _,
                Some(HostKeyCheck::Refused {
                    fingerprint,
                    reason,
                }),
            ) => {
                return Err(SshError::HostKey {
                    fingerprint,
                    reason,
                });
            }
            (Err(e), _) => return Err(e),
            (Ok(h), _) => h,
        };
        let Some(HostKeyCheck::Accepted { fingerprint, trust }) =
            seen.lock().ok().and_then(|s| s.clone())
        else {
            return Err(SshError::Protocol("no host key was checked".into()));
        };
        let auth = match &target.credential {
            Credential::Key(k) => {
                let hash = handle
                    .best_supported_rsa_hash()
                    .await
                    .map_err(|e| SshError::Protocol(e.to_string()))?
                    .flatten();
                handle
                    .authenticate_publickey(
                        &target.user,
                        PrivateKeyWithHashAlg::new(k.clone(), hash),
                    )
                    .await
            }
            Credential::Password(p) => handle.authenticate_password(&target.user, p.as_str()).await,
        }
        .map_err(|e| SshError::Protocol(e.to_string()))?;
        if !auth.success() {
            return Err(SshError::Auth {
                user: target.user.clone(),
                method: match target.credential {
                    Credential::Key(_) => "public key",
                    Credential::Password(_) => "password",
                },
            });
        }
        Ok(Session {
            handle,
            fingerprint,
            trust,
            local_ip,
        })
    }

    /// Runs `command` with `stdin` (then EOF) and collects its output
    /// (at most [`MAX_OUTPUT`] bytes of each stream), within
    /// [`EXEC_DEADLINE`].
    pub async fn exec(&self, command: &str, stdin: &[u8]) -> Result<Output, SshError> {
        self.exec_within(command, stdin, EXEC_DEADLINE).await
    }

    /// [`Session::exec`] with another deadline; past it the channel is
    /// closed and the command reported as timed out.
    pub async fn exec_within(
        &self,
        command: &str,
        stdin: &[u8],
        deadline: std::time::Duration,
    ) -> Result<Output, SshError> {
        tokio::time::timeout(deadline, self.exec_unbounded(command, stdin))
            .await
            .map_err(|_| SshError::Timeout(deadline))?
    }

    async fn exec_unbounded(&self, command: &str, stdin: &[u8]) -> Result<Output, SshError> {
        let perr = |e: russh::Error| SshError::Protocol(e.to_string());
        let mut ch = self.handle.channel_open_session().await.map_err(perr)?;
        ch.exec(true, command).await.map_err(perr)?;
        if !stdin.is_empty() {
            ch.data(stdin).await.map_err(perr)?;
        }
        ch.eof().await.map_err(perr)?;
        let mut out = Output::default();
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    out.dropped += append_capped(&mut out.stdout, &data);
                }
                ChannelMsg::ExtendedData { data, ext: 1 } => {
                    out.dropped += append_capped(&mut out.stderr, &data);
                }
                ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                _ => {}
            }
        }
        Ok(out)
    }

    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// Single-quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_output_is_capped() {
        let mut buf = Vec::new();
        assert_eq!(append_capped(&mut buf, &[1; 1000]), 0);
        let dropped = append_capped(&mut buf, &vec![2; MAX_OUTPUT]);
        assert_eq!(buf.len(), MAX_OUTPUT);
        assert_eq!(dropped, 1000);
        assert_eq!(append_capped(&mut buf, b"more"), 4);
    }

    fn key(seed: u8) -> PublicKey {
        let k = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]);
        PublicKey::from(k.public)
    }

    #[test]
    fn pins_win_and_a_changed_key_is_always_refused() {
        let a = key(1);
        let b = key(2);
        let fa = a.fingerprint(HashAlg::Sha256).to_string();
        let mut p = HostKeyPolicy {
            accept_new: true,
            ..Default::default()
        };
        assert_eq!(
            p.check("h", 22, &a),
            HostKeyCheck::Accepted {
                fingerprint: fa.clone(),
                trust: KeyTrust::AcceptedNew
            }
        );
        p.pinned.insert("h:22".into(), fa.clone());
        assert!(matches!(
            p.check("h", 22, &a),
            HostKeyCheck::Accepted {
                trust: KeyTrust::Pinned,
                ..
            }
        ));
        // Even with --accept-new-host-keys, a changed key is refused.
        match p.check("h", 22, &b) {
            HostKeyCheck::Refused { reason, .. } => assert!(reason.contains("CHANGED"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Another port is another pin.
        assert!(matches!(
            p.check("h", 2222, &b),
            HostKeyCheck::Accepted {
                trust: KeyTrust::AcceptedNew,
                ..
            }
        ));
    }

    #[test]
    fn unknown_keys_need_a_confirmation_and_known_hosts_changes_are_refused() {
        let a = key(1);
        let b = key(2);
        let fa = a.fingerprint(HashAlg::Sha256).to_string();
        let mut p = HostKeyPolicy::default();
        match p.check("h", 22, &a) {
            HostKeyCheck::Refused {
                fingerprint,
                reason,
            } => {
                assert_eq!(fingerprint, fa);
                assert!(reason.contains("unknown host key"));
            }
            other => panic!("{other:?}"),
        }
        p.confirmed.insert("h".into(), fa.clone());
        assert!(matches!(
            p.check("h", 22, &a),
            HostKeyCheck::Accepted {
                trust: KeyTrust::Confirmed,
                ..
            }
        ));
        assert!(matches!(p.check("h", 22, &b), HostKeyCheck::Refused { .. }));

        let dir = std::env::temp_dir().join(format!("bzzz-kh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kh = dir.join("known_hosts");
        std::fs::write(&kh, format!("[h]:2222 {}\n", a.to_openssh().unwrap())).unwrap();
        let p = HostKeyPolicy {
            known_hosts: Some(kh),
            accept_new: true,
            ..Default::default()
        };
        assert!(matches!(
            p.check("h", 2222, &a),
            HostKeyCheck::Accepted {
                trust: KeyTrust::KnownHosts,
                ..
            }
        ));
        match p.check("h", 2222, &b) {
            HostKeyCheck::Refused { reason, .. } => assert!(reason.contains("CHANGED"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // A tampered pin cannot override known_hosts.
        let mut p = p;
        p.pinned
            .insert("h:2222".into(), b.fingerprint(HashAlg::Sha256).to_string());
        assert!(matches!(
            p.check("h", 2222, &b),
            HostKeyCheck::Refused { .. }
        ));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn quoting_survives_hostile_text() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
    }
}
