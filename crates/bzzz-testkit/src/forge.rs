//! Agent test harness: Git repositories served by the real `git
//! http-backend` (behind a minimal CGI server on 127.0.0.1), and a
//! **scripted LLM**: a named fake of an OpenAI-compatible
//! `/v1/chat/completions`, for what a real model cannot do reliably in CI.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Runs git in `dir`, failing on a non-zero exit.
pub fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@test",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .context("git")?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A server that stops when dropped.
#[derive(Debug)]
struct Server {
    addr: String,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> anyhow::Result<Server> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?.to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for c in l.incoming() {
            if s.load(Ordering::SeqCst) {
                return;
            }
            if let Ok(c) = c {
                let h = handler.clone();
                std::thread::spawn(move || h(c));
            }
        }
    });
    Ok(Server { addr, stop })
}

/// A request: method, path with query, headers (lower-case names), body.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn read_request(c: &TcpStream) -> Option<Request> {
    let mut r = BufReader::new(c.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        r.read_exact(&mut body).ok()?;
    }
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

/// Bare repositories under one root, served over smart HTTP by `git
/// http-backend` (clone, fetch and push; no authentication).
#[derive(Debug)]
pub struct GitServer {
    root: PathBuf,
    server: Server,
    /// Pushes received (receive-pack requests).
    pub pushes: Arc<AtomicU64>,
}

impl GitServer {
    pub fn start(root: &Path) -> anyhow::Result<Self> {
        let root = root.to_path_buf();
        let pushes = Arc::new(AtomicU64::new(0));
        let (r, p) = (root.clone(), pushes.clone());
        let server = serve(move |c| {
            let _ = cgi(&r, &p, c);
        })?;
        Ok(Self {
            root,
            server,
            pushes,
        })
    }

    /// The clone URL of repository `name` (`NAME.git` under the root).
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.server.addr)
    }

    /// Creates bare repository `name` holding `files` (path, content) in
    /// one commit on `main`.
    pub fn create(&self, name: &str, files: &[(&str, &str)]) -> anyhow::Result<()> {
        let bare = self.root.join(format!("{name}.git"));
        std::fs::create_dir_all(&bare)?;
        git(&bare, &["init", "-q", "--bare", "-b", "main"])?;
        let work = tempfile::tempdir()?;
        git(work.path(), &["init", "-q", "-b", "main"])?;
        for (p, content) in files {
            let f = work.path().join(p);
            if let Some(d) = f.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(f, content)?;
        }
        git(work.path(), &["add", "-A"])?;
        git(work.path(), &["commit", "-q", "-m", "tasks"])?;
        git(
            work.path(),
            &[
                "push",
                "-q",
                &bare.to_string_lossy(),
                "HEAD:refs/heads/main",
            ],
        )?;
        Ok(())
    }

    /// The branches of repository `name`.
    pub fn branches(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let bare = self.root.join(format!("{name}.git"));
        Ok(git(
            &bare,
            &["for-each-ref", "--format=%(refname:short)", "refs/heads"],
        )?
        .lines()
        .map(str::to_owned)
        .collect())
    }

    /// File `path` on `branch` of repository `name`.
    pub fn show(&self, name: &str, branch: &str, path: &str) -> anyhow::Result<String> {
        let bare = self.root.join(format!("{name}.git"));
        git(&bare, &["show", &format!("{branch}:{path}")])
    }

    /// The author (`name <email>`) of `branch`'s newest commit.
    pub fn log_author(&self, name: &str, branch: &str) -> anyhow::Result<String> {
        let bare = self.root.join(format!("{name}.git"));
        Ok(git(&bare, &["log", "-1", "--format=%an <%ae>", branch])?
            .trim()
            .to_owned())
    }

    /// How many commits `branch` has on top of `main`.
    pub fn commits_ahead(&self, name: &str, branch: &str) -> anyhow::Result<usize> {
        let bare = self.root.join(format!("{name}.git"));
        Ok(
            git(&bare, &["rev-list", "--count", &format!("main..{branch}")])?
                .trim()
                .parse()?,
        )
    }
}

fn cgi(root: &Path, pushes: &AtomicU64, c: TcpStream) -> anyhow::Result<()> {
    let Some(req) = read_request(&c) else {
        return Ok(());
    };
    cgi_with(root, pushes, c, req)
}

fn cgi_with(root: &Path, pushes: &AtomicU64, mut c: TcpStream, req: Request) -> anyhow::Result<()> {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    if path.ends_with("/git-receive-pack") {
        pushes.fetch_add(1, Ordering::SeqCst);
    }
    let header = |n: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut child = Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REMOTE_USER", "bzzz-test")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REQUEST_METHOD", &req.method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", req.body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let body = req.body;
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .context("stdout")?
        .read_to_end(&mut out)?;
    let _ = feeder.join();
    let _ = child.wait();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((i, n)) = split else {
        c.write_all(b"HTTP/1.0 500 Internal Server Error\r\n\r\n")?;
        return Ok(());
    };
    let head = String::from_utf8_lossy(&out[..i]).into_owned();
    let mut status = "200 OK".to_owned();
    let mut lines = Vec::new();
    for l in head.lines() {
        match l.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_owned(),
            _ => lines.push(l.to_owned()),
        }
    }
    let mut resp = format!("HTTP/1.0 {status}\r\n");
    for l in lines {
        resp.push_str(&l);
        resp.push_str("\r\n");
    }
    resp.push_str("Connection: close\r\n\r\n");
    c.write_all(resp.as_bytes())?;
    c.write_all(&out[i + n..])?;
    Ok(())
}

/// **A scripted LLM (a named fake)** answering OpenAI's chat completions:
/// model `scripted` reads the task for lines `run: CMD` and `write PATH:
/// CONTENT` and answers a `run` or `write_file` action for each in turn,
/// then `finish`; model
/// `scripted-loop` lists files forever (it never finishes); model
/// `scripted-help` runs `false` until other agents' suggestions arrive,
/// then writes the first one into `help.txt` and finishes. Any model
/// answers a help request (another agent's) with a `write_file` of
/// `fix.txt`. It checks
/// that each request asks for a JSON-schema response, like a real
/// constrained backend would honour.
#[derive(Debug)]
pub struct ScriptedLlm {
    server: Server,
    /// Completions answered.
    pub calls: Arc<AtomicU64>,
}

impl ScriptedLlm {
    pub fn start() -> anyhow::Result<Self> {
        let calls = Arc::new(AtomicU64::new(0));
        let n = calls.clone();
        let server = serve(move |mut c| {
            let Some(req) = read_request(&c) else { return };
            n.fetch_add(1, Ordering::SeqCst);
            let (code, body) = match serde_json::from_slice::<Value>(&req.body) {
                Ok(v) if req.target.ends_with("/chat/completions") => answer(&v),
                _ => (404, json!({"error": "not found"})),
            };
            let text = body.to_string();
            let _ = write!(
                c,
                "HTTP/1.0 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        })?;
        Ok(Self { server, calls })
    }

    /// The base URL (`…/v1`).
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.server.addr)
    }
}

fn answer(req: &Value) -> (u16, Value) {
    if req["response_format"]["type"] != "json_schema" {
        return (400, json!({"error": "a JSON schema response is expected"}));
    }
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    // The task is the last user turn that opens with "Task " (worked
    // examples may come before it); the steps done are the answers after.
    let at = messages
        .iter()
        .rposition(|m| {
            m["role"] == "user"
                && m["content"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("Task "))
        })
        .unwrap_or(0);
    let task = messages
        .get(at)
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let done = messages[at..]
        .iter()
        .filter(|m| m["role"] == "assistant")
        .count();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let suggested = messages.iter().find_map(|m| {
        let c = m["content"].as_str()?;
        let (_, after) = c.split_once("Suggestions from other agents:\n- ")?;
        Some(after.lines().next().unwrap_or_default().to_owned())
    });
    let action = if last_user.starts_with("Help request") {
        json!({"tool": "write_file", "path": "fix.txt", "content": "peer fix"})
    } else if req["model"] == "scripted-loop" {
        json!({"tool": "list_files"})
    } else if req["model"] == "scripted-help" {
        match suggested {
            Some(s)
                if done < 4
                    && !messages.iter().any(|m| {
                        m["role"] == "assistant"
                            && m["content"]
                                .as_str()
                                .is_some_and(|c| c.contains("help.txt"))
                    }) =>
            {
                json!({"tool": "write_file", "path": "help.txt", "content": format!("{s}\n")})
            }
            Some(_) => json!({"tool": "finish", "summary": "helped"}),
            None => json!({"tool": "run", "command": "false"}),
        }
    } else {
        // The task's script, in order: `run: CMD`, `write PATH: CONTENT`.
        let steps: Vec<Value> = task
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                if let Some(cmd) = l.strip_prefix("run: ") {
                    return Some(json!({"tool": "run", "command": cmd}));
                }
                let (path, content) = l.strip_prefix("write ")?.split_once(": ")?;
                Some(json!({"tool": "write_file", "path": path, "content": format!("{content}\n")}))
            })
            .collect();
        steps
            .get(done)
            .cloned()
            .unwrap_or_else(|| json!({"tool": "finish", "summary": format!("did {done} step(s)")}))
    };
    (
        200,
        json!({
            "id": "scripted",
            "object": "chat.completion",
            "model": req["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": action.to_string()}}]
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripted_model_follows_the_task_script() {
        let task = "Task t1: Greet\n\n# Greet\n\nrun: sleep 2\nwrite out/t1.txt: hello t1\n\nFiles in the repository:\nREADME.md";
        let mut messages = vec![
            json!({"role": "system", "content": "x"}),
            json!({"role": "user", "content": task}),
        ];
        let mut tools = Vec::new();
        for _ in 0..3 {
            let req = json!({"model": "scripted", "messages": messages, "response_format": {"type": "json_schema"}});
            let (code, v) = answer(&req);
            assert_eq!(code, 200);
            let content = v["choices"][0]["message"]["content"]
                .as_str()
                .expect("content")
                .to_owned();
            let a: Value = serde_json::from_str(&content).expect("action");
            tools.push(a["tool"].as_str().expect("tool").to_owned());
            messages.push(json!({"role": "assistant", "content": content}));
            messages.push(json!({"role": "user", "content": "Result"}));
        }
        assert_eq!(tools, ["run", "write_file", "finish"]);
    }
}

/// A receiver for webhooks: records every POST body (JSON) it gets.
#[derive(Debug)]
pub struct Recorder {
    server: Server,
    /// The bodies received, oldest first.
    pub received: Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Recorder {
    pub fn start() -> anyhow::Result<Self> {
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let r = received.clone();
        let server = serve(move |mut c| {
            let Some(req) = read_request(&c) else { return };
            if let Ok(v) = serde_json::from_slice::<Value>(&req.body) {
                r.lock().unwrap_or_else(|p| p.into_inner()).push(v);
            }
            let _ = c.write_all(b"HTTP/1.0 204 No Content\r\nConnection: close\r\n\r\n");
        })?;
        Ok(Self { server, received })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.server.addr)
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// **A fake Gitea (a named fake)**: the subset of Gitea's API agents use
/// (`/api/v1/repos/{o}/{r}` for the default branch, `…/issues` (open,
/// by label), `…/issues/{n}/comments`, `…/issues/{n}/labels`, `…/pulls`),
/// token auth (`Authorization: token T`), every request recorded; with
/// `github`, GitHub's routes (the same without the `/api/v1` prefix). The
/// repositories themselves are real, served by [`GitServer`]'s `git
/// http-backend` under `/{o}/{r}.git`, where a push needs the token as
/// the Basic password.
#[derive(Debug)]
pub struct FakeForge {
    server: Server,
    state: Arc<std::sync::Mutex<ForgeState>>,
    git_root: PathBuf,
    prefix: &'static str,
}

/// What the fake forge holds and saw.
#[derive(Debug, Default, Clone)]
pub struct ForgeState {
    /// (owner/repo, number) → issue JSON.
    pub issues: std::collections::BTreeMap<(String, u64), Value>,
    pub comments: Vec<(String, u64, String)>,
    pub pulls: Vec<Value>,
    /// Every request: (method, path, whether its token was right).
    pub requests: Vec<(String, String, bool)>,
    /// Every request's headers and body, as text (to search for leaks).
    pub raw: Vec<String>,
}

impl FakeForge {
    /// A fake Gitea (`github`: GitHub's routes) accepting `token`.
    pub fn start(git_root: &Path, token: &str, github: bool) -> anyhow::Result<Self> {
        let state = Arc::new(std::sync::Mutex::new(ForgeState::default()));
        let prefix = if github { "" } else { "/api/v1" };
        let (st, root, token) = (state.clone(), git_root.to_path_buf(), token.to_owned());
        let pushes = Arc::new(AtomicU64::new(0));
        let server = serve(move |c| {
            let _ = forge_request(&st, &root, &token, prefix, &pushes, c);
        })?;
        Ok(Self {
            server,
            state,
            git_root: git_root.to_path_buf(),
            prefix,
        })
    }

    /// The clone URL of `owner/repo`.
    pub fn url(&self, owner_repo: &str) -> String {
        format!("http://{}/{owner_repo}.git", self.server.addr)
    }

    /// Creates `owner/repo` (bare, one commit on `main` with `files`).
    pub fn create(&self, owner_repo: &str, files: &[(&str, &str)]) -> anyhow::Result<()> {
        GitServer {
            root: self.git_root.clone(),
            server: Server {
                addr: String::new(),
                stop: Arc::new(AtomicBool::new(true)),
            },
            pushes: Arc::default(),
        }
        .create(owner_repo, files)
    }

    /// Opens issue `n` of `owner/repo` with `labels`.
    pub fn issue(&self, owner_repo: &str, n: u64, title: &str, body: &str, labels: &[&str]) {
        let labels: Vec<Value> = labels.iter().map(|l| json!({"name": l})).collect();
        self.state().issues.insert(
            (owner_repo.to_owned(), n),
            json!({"number": n, "title": title, "body": body, "state": "open", "labels": labels,
                   "html_url": format!("http://{}/{owner_repo}/issues/{n}", self.server.addr)}),
        );
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, ForgeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The labels of issue `n`.
    pub fn labels(&self, owner_repo: &str, n: u64) -> Vec<String> {
        self.state()
            .issues
            .get(&(owner_repo.to_owned(), n))
            .and_then(|i| i["labels"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// Where its bare repositories are (`OWNER/REPO.git`).
    pub fn git_root(&self) -> PathBuf {
        self.git_root.clone()
    }

    /// The API prefix (`/api/v1`, or empty for GitHub's routes).
    pub fn prefix(&self) -> &'static str {
        self.prefix
    }
}

fn respond(c: &mut TcpStream, code: u16, body: &Value) {
    let text = body.to_string();
    let _ = write!(
        c,
        "HTTP/1.0 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

fn forge_request(
    st: &std::sync::Mutex<ForgeState>,
    root: &Path,
    token: &str,
    prefix: &str,
    pushes: &AtomicU64,
    mut c: TcpStream,
) -> anyhow::Result<()> {
    let Some(req) = read_request(&c) else {
        return Ok(());
    };
    let header = |n: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let auth = header("authorization");
    {
        let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
        s.raw.push(format!(
            "{} {}\n{:?}\n{}",
            req.method,
            req.target,
            req.headers,
            String::from_utf8_lossy(&req.body)
        ));
    }
    // Git over HTTP: real git http-backend; a push needs the token.
    if path.contains(".git/") {
        if path.ends_with("/git-receive-pack") || query.contains("service=git-receive-pack") {
            use base64::Engine as _;
            let ok = auth
                .strip_prefix("Basic ")
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .is_some_and(|up| up.split_once(':').is_some_and(|(_, p)| p == token));
            if !ok {
                let _ = c.write_all(
                    b"HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\n\r\n",
                );
                return Ok(());
            }
        }
        // Hand the request (already read) to the CGI runner.
        return cgi_with(root, pushes, c, req);
    }
    let ok = auth == format!("token {token}") || auth == format!("Bearer {token}");
    let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
    s.requests
        .push((req.method.clone(), req.target.clone(), ok));
    if !ok {
        drop(s);
        respond(&mut c, 401, &json!({"message": "token is required"}));
        return Ok(());
    }
    let Some(rest) = path
        .strip_prefix(prefix)
        .and_then(|p| p.strip_prefix("/repos/"))
    else {
        drop(s);
        respond(&mut c, 404, &json!({"message": "not found"}));
        return Ok(());
    };
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() < 2 {
        drop(s);
        respond(&mut c, 404, &json!({"message": "not found"}));
        return Ok(());
    }
    let repo = format!("{}/{}", parts[0], parts[1]);
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let (code, out) = match (req.method.as_str(), &parts[2..]) {
        ("GET", []) => (200, json!({"full_name": repo, "default_branch": "main"})),
        ("GET", ["issues"]) => {
            let label = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("labels="))
                .unwrap_or("");
            let list: Vec<Value> = s
                .issues
                .iter()
                .filter(|((r, _), i)| {
                    *r == repo
                        && i["state"] == "open"
                        && (label.is_empty()
                            || i["labels"]
                                .as_array()
                                .is_some_and(|l| l.iter().any(|x| x["name"] == label)))
                })
                .map(|(_, i)| i.clone())
                .collect();
            (200, Value::Array(list))
        }
        ("POST", ["issues", n, "comments"]) => {
            let n: u64 = n.parse().unwrap_or(0);
            let text = body["body"].as_str().unwrap_or("").to_owned();
            s.comments.push((repo.clone(), n, text.clone()));
            (201, json!({"id": s.comments.len(), "body": text}))
        }
        ("POST", ["issues", n, "labels"]) => {
            let n: u64 = n.parse().unwrap_or(0);
            let add: Vec<String> = body["labels"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect();
            match s.issues.get_mut(&(repo.clone(), n)) {
                Some(i) => {
                    let mut have: Vec<Value> = i["labels"].as_array().cloned().unwrap_or_default();
                    for a in add {
                        if !have.iter().any(|x| x["name"] == a.as_str()) {
                            have.push(json!({"name": a}));
                        }
                    }
                    i["labels"] = Value::Array(have.clone());
                    (200, Value::Array(have))
                }
                None => (404, json!({"message": "no issue"})),
            }
        }
        ("DELETE", ["issues", n, "labels", name]) => {
            let n: u64 = n.parse().unwrap_or(0);
            match s.issues.get_mut(&(repo.clone(), n)) {
                Some(i) => {
                    let have: Vec<Value> = i["labels"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|x| x["name"] != *name)
                        .collect();
                    i["labels"] = Value::Array(have);
                    (204, Value::Null)
                }
                None => (404, json!({"message": "no issue"})),
            }
        }
        ("GET", ["pulls"]) => {
            let list: Vec<Value> = s
                .pulls
                .iter()
                .filter(|p| p["repo"] == repo.as_str() && p["state"] == "open")
                .cloned()
                .collect();
            (200, Value::Array(list))
        }
        ("POST", ["pulls"]) => {
            let head = body["head"].as_str().unwrap_or("").to_owned();
            if s.pulls
                .iter()
                .any(|p| p["repo"] == repo.as_str() && p["head"]["ref"] == head.as_str())
            {
                (409, json!({"message": "pull request already exists"}))
            } else {
                let n = 1000 + s.pulls.len() as u64;
                let pr = json!({"number": n, "repo": repo, "state": "open",
                    "title": body["title"], "body": body["body"],
                    "head": {"ref": head}, "base": {"ref": body["base"]},
                    "html_url": format!("http://forge/{repo}/pulls/{n}")});
                s.pulls.push(pr.clone());
                (201, pr)
            }
        }
        _ => (404, json!({"message": "not found"})),
    };
    drop(s);
    respond(&mut c, code, &out);
    Ok(())
}
