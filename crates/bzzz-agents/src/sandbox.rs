//! The sandbox every command and file operation the model asks for runs
//! in: bubblewrap (Debian `bubblewrap`) with every namespace unshared (no
//! network: only a loopback of its own; its own PIDs, so no other
//! process's `/proc/*/environ`), the work directory the only writable path
//! (its `.git` read-only), the system directories read-only, an empty
//! `/tmp`, a scrubbed environment, and limits: address space, processes,
//! CPU time, file size, open files (`prlimit`), wall time (killed). Run as
//! root, the node drops to `nobody` first (`setpriv`), which makes the
//! process limit bind and leaves every root-only file unreadable.
//!
//! What it does not contain (see `docs/security.md`): kernel exploits
//! (it shares the kernel), reading world-readable files of the system
//! directories, and CPU use up to its limit.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The user the sandbox runs as when the node runs as root.
pub const SANDBOX_UID: u32 = 65534;

/// Limits of one command.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall time; the command is killed after it.
    pub wall: Duration,
    /// CPU seconds.
    pub cpu_secs: u64,
    /// Address space, bytes.
    pub memory_bytes: u64,
    /// Processes (and threads) of the sandbox user.
    pub processes: u64,
    /// Largest file the command may write, bytes.
    pub file_bytes: u64,
    /// Output kept (stdout and stderr each), bytes.
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            wall: Duration::from_secs(60),
            cpu_secs: 60,
            memory_bytes: 1 << 30,
            processes: 64,
            file_bytes: 64 << 20,
            output_bytes: 16 * 1024,
        }
    }
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Exit code (`None`: killed by a signal or the wall-time limit).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    /// Output beyond [`Limits::output_bytes`] was cut.
    pub truncated: bool,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
}

/// Errors starting the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "the sandbox needs bubblewrap (`bwrap`), util-linux's `prlimit` and `setpriv`: {0} (Debian: apt-get install bubblewrap util-linux)"
    )]
    Missing(String),
    #[error("cannot run the sandbox: {0}")]
    Io(#[from] std::io::Error),
}

/// A sandbox over one work directory.
#[derive(Debug, Clone)]
pub struct Sandbox {
    work: PathBuf,
    limits: Limits,
    as_root: bool,
}

fn find(tool: &str) -> Option<PathBuf> {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

/// Whether the sandbox can run here (the tools exist).
pub fn check_tools() -> Result<(), SandboxError> {
    for t in ["bwrap", "prlimit", "setpriv"] {
        if find(t).is_none() {
            return Err(SandboxError::Missing(format!("{t} not found")));
        }
    }
    Ok(())
}

impl Sandbox {
    /// A sandbox writing only to `work` (which must exist). When this
    /// process is root, `work` is handed to [`SANDBOX_UID`].
    pub fn new(work: &Path, limits: Limits) -> Result<Self, SandboxError> {
        check_tools()?;
        let work = work.canonicalize()?;
        let as_root = rustix_is_root();
        if as_root {
            chown_tree(&work, SANDBOX_UID)?;
        }
        Ok(Self {
            work,
            limits,
            as_root,
        })
    }

    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn command(&self, argv: &[&str]) -> tokio::process::Command {
        let l = &self.limits;
        // Absolute paths: the node's own PATH may be anything.
        let tool = |t: &str| find(t).unwrap_or_else(|| PathBuf::from(t));
        let mut c = if self.as_root {
            let mut c = tokio::process::Command::new(tool("setpriv"));
            c.args([
                &format!("--reuid={SANDBOX_UID}"),
                &format!("--regid={SANDBOX_UID}"),
                "--clear-groups",
                "--",
            ]);
            c.arg(tool("prlimit"));
            c
        } else {
            tokio::process::Command::new(tool("prlimit"))
        };
        c.args([
            format!("--as={}", l.memory_bytes),
            format!("--nproc={}", l.processes),
            format!("--cpu={}", l.cpu_secs),
            format!("--fsize={}", l.file_bytes),
            "--nofile=256".to_owned(),
            "--core=0".to_owned(),
            "--".to_owned(),
        ]);
        c.arg(tool("bwrap"));
        c.args([
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/local/bin:/usr/bin:/bin",
            "--setenv",
            "HOME",
            "/work",
            "--setenv",
            "LANG",
            "C.UTF-8",
            "--ro-bind",
            "/usr",
            "/usr",
            "--ro-bind-try",
            "/etc/alternatives",
            "/etc/alternatives",
            "--ro-bind-try",
            "/etc/ld.so.cache",
            "/etc/ld.so.cache",
            "--ro-bind-try",
            "/etc/passwd",
            "/etc/passwd",
            "--ro-bind-try",
            "/etc/group",
            "/etc/group",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
        ]);
        for top in ["bin", "sbin", "lib", "lib64", "lib32"] {
            let p = Path::new("/").join(top);
            match std::fs::read_link(&p) {
                Ok(target) => {
                    c.arg("--symlink").arg(target).arg(&p);
                }
                Err(_) if p.is_dir() => {
                    c.arg("--ro-bind").arg(&p).arg(&p);
                }
                Err(_) => {}
            }
        }
        c.arg("--bind").arg(&self.work).arg("/work");
        let git = self.work.join(".git");
        if git.exists() {
            c.arg("--ro-bind").arg(&git).arg("/work/.git");
        }
        // The sandbox's own root (where /etc's few files are mounted) is
        // read-only too: /work and /tmp are the only writable places.
        c.args(["--remount-ro", "/", "--chdir", "/work", "--"]);
        c.args(argv);
        c.env_clear();
        c.env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
        c.kill_on_drop(true);
        c
    }

    /// Runs `argv` in the sandbox with `stdin` as its input.
    pub async fn run(&self, argv: &[&str], stdin: &[u8]) -> Result<Outcome, SandboxError> {
        let started = Instant::now();
        let mut child = self
            .command(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => SandboxError::Missing(e.to_string()),
                _ => SandboxError::Io(e),
            })?;
        let mut input = child.stdin.take();
        let data = stdin.to_vec();
        let feed = async move {
            if let Some(i) = input.as_mut() {
                let _ = i.write_all(&data).await;
            }
            drop(input);
        };
        let max = self.limits.output_bytes;
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let run = async {
            let ((), (o, ot), (e, et), status) = tokio::join!(
                feed,
                read_capped(out.take(), max),
                read_capped(err.take(), max),
                child.wait()
            );
            (o, e, ot || et, status)
        };
        match tokio::time::timeout(self.limits.wall, run).await {
            Ok((o, e, truncated, status)) => Ok(Outcome {
                code: status.ok().and_then(|s| s.code()),
                stdout: o,
                stderr: e,
                timed_out: false,
                truncated,
                elapsed: started.elapsed(),
            }),
            Err(_) => Ok(Outcome {
                code: None,
                stdout: String::new(),
                stderr: format!(
                    "killed after {} s (the wall-time limit)",
                    self.limits.wall.as_secs()
                ),
                timed_out: true,
                truncated: false,
                elapsed: started.elapsed(),
            }),
        }
    }

    /// Runs a shell command line in the sandbox.
    pub async fn shell(&self, line: &str) -> Result<Outcome, SandboxError> {
        self.run(&["sh", "-c", line], b"").await
    }
}

/// Reads a stream to its end, keeping the first `max` bytes (the rest is
/// drained so the writer never blocks).
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(r: Option<R>, max: usize) -> (String, bool) {
    let Some(mut r) = r else {
        return (String::new(), false);
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut cut = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                cut |= n > room;
            }
        }
    }
    (String::from_utf8_lossy(&kept).into_owned(), cut)
}

fn rustix_is_root() -> bool {
    // The effective uid, without unsafe code: `/proc/self/status`.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Hands `dir` and everything under it (symlinks themselves, never their
/// targets) to `uid`, except a top-level `.git`: it stays the node's
/// (the sandbox only reads it), so no process of the sandbox user can
/// plant configuration that the node's git would run.
fn chown_tree(dir: &Path, uid: u32) -> std::io::Result<()> {
    chown_below(dir, uid, true)
}

fn chown_below(dir: &Path, uid: u32, top: bool) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid))?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if top && e.file_name() == ".git" {
            continue;
        }
        if t.is_dir() {
            chown_below(&e.path(), uid, false)?;
        } else {
            std::os::unix::fs::lchown(e.path(), Some(uid), Some(uid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(dir: &Path) -> Option<Sandbox> {
        match Sandbox::new(dir, Limits::default()) {
            Ok(s) => Some(s),
            Err(SandboxError::Missing(m)) if std::env::var_os("CI").is_none() => {
                eprintln!("skipped: {m}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn writes_only_the_work_dir_and_sees_no_network_or_environment() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(dir.path().join(".git")).expect("git");
        let Some(s) = sandbox(dir.path()) else { return };
        // `.git` stays this process's own (only the work tree is handed
        // to the sandbox user).
        {
            use std::os::unix::fs::MetadataExt as _;
            let me = std::fs::metadata("/proc/self").expect("me").uid();
            let git = std::fs::metadata(dir.path().join(".git")).expect("git");
            assert_eq!(git.uid(), me);
        }
        // The scrubbed environment: this process's variables stay out.
        let o = s
            .shell("echo ok > made.txt && cat made.txt && env")
            .await
            .expect("run");
        assert!(o.success(), "{o:?}");
        assert!(o.stdout.starts_with("ok\n"), "{o:?}");
        assert!(!o.stdout.contains("CARGO"), "scrubbed environment: {o:?}");
        assert!(dir.path().join("made.txt").exists());
        for line in [
            "echo x > /etc/bzzz-escape",
            "echo x > /usr/bzzz-escape",
            "echo x > .git/config",
        ] {
            let o = s.shell(line).await.expect("run");
            assert!(!o.success(), "{line}: {o:?}");
        }
        // No network: not even a socket to an address outside.
        // No network: no interface but a loopback of its own.
        let o = s
            .shell("grep ':' /proc/net/dev | grep -vc 'lo:'")
            .await
            .expect("run");
        assert_eq!(o.stdout.trim(), "0", "only lo: {o:?}");
    }

    #[tokio::test]
    async fn a_fork_bomb_and_a_huge_allocation_are_contained() {
        let dir = tempfile::tempdir().expect("tmp");
        let Some(s) = sandbox(dir.path()) else { return };
        let o = s
            .shell("for i in $(seq 200); do sleep 5 & done; echo done")
            .await
            .expect("run");
        assert!(
            o.stderr.contains("fork") || o.stderr.contains("Resource"),
            "process limit: {o:?}"
        );
        // Doubling a string until the address-space cap stops it.
        let o = s
            .shell("awk 'BEGIN { s = \"x\"; while (1) s = s s }'")
            .await
            .expect("run");
        assert!(!o.success() && !o.timed_out, "memory cap: {o:?}");
        let limits = Limits {
            wall: Duration::from_millis(500),
            ..Limits::default()
        };
        let s = Sandbox::new(dir.path(), limits).expect("sandbox");
        let o = s.shell("sleep 30").await.expect("run");
        assert!(o.timed_out, "{o:?}");
    }
}
