//! Task sources behind one [`Forge`] trait. Plain Git: tasks are Markdown
//! files under `tasks/`, delivery is a pushed branch `bzzz/task-ID`.
//! Every git command runs outside the sandbox (the model never sees the
//! remote's credentials), without a terminal prompt, bounded in time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::task::{self, Task};

/// How long one git command may take.
pub const GIT_TIMEOUT: Duration = Duration::from_secs(120);
/// Most task files read from one repository.
pub const MAX_TASKS_PER_REPO: usize = 1000;

/// Errors of a forge.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("git {0}: {1}")]
    Git(String, String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The claim is no longer this node's: nothing was delivered.
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("{0}")]
    Other(String),
}

/// What a delivery left on the forge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub branch: String,
    /// A pull request (forges that have them).
    pub pr_url: Option<String>,
}

/// Checks, right before a side effect, that the claim is still current.
pub type FenceCheck<'a> = &'a (dyn Fn() -> BoxFuture<'a, bool> + Send + Sync);

/// A repository's tasks, and the files it could not read (path, why).
pub type TaskList = (Vec<Task>, Vec<(String, String)>);

/// A source of tasks and a place to deliver their work.
pub trait Forge: Send + Sync {
    /// The repository's open tasks, with the files it could not read
    /// (path, why).
    fn tasks(&self) -> BoxFuture<'_, Result<TaskList, ForgeError>>;
    /// A fresh checkout of the repository in `work` (which must not exist).
    fn checkout<'a>(&'a self, work: &'a Path) -> BoxFuture<'a, Result<(), ForgeError>>;
    /// Commits what `work` holds onto the task's branch and pushes it
    /// (idempotent: the branch is replaced); `still_current` is asked
    /// right before the push.
    fn deliver<'a>(
        &'a self,
        task: &'a Task,
        work: &'a Path,
        message: &'a str,
        still_current: FenceCheck<'a>,
    ) -> BoxFuture<'a, Result<Delivery, ForgeError>>;
    /// The task was claimed here (a forge marks its issue `in-progress`).
    fn started<'a>(&'a self, _task: &'a Task) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async { Ok(()) })
    }
    /// Reports the outcome on the task (a forge comments on its issue and
    /// labels it `done` or `failed`), after `still_current` confirms the
    /// claim.
    fn finished<'a>(
        &'a self,
        _task: &'a Task,
        _done: bool,
        _text: &'a str,
        _delivery: Option<&'a Delivery>,
        _still_current: FenceCheck<'a>,
    ) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A forge's API token. Zeroized on drop, never printed.
#[derive(Clone)]
pub struct Token(zeroize::Zeroizing<String>);

impl Token {
    pub fn new(t: &str) -> Self {
        Self(zeroize::Zeroizing::new(t.trim().to_owned()))
    }

    fn expose(&self) -> &str {
        &self.0
    }

    /// `GIT_CONFIG_*` variables giving git the token as an HTTP header
    /// (never on a command line, never in `.git/config`, which the
    /// sandbox can read).
    fn git_env(&self) -> Vec<(String, String)> {
        vec![
            ("GIT_CONFIG_COUNT".into(), "2".into()),
            ("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into()),
            (
                "GIT_CONFIG_VALUE_0".into(),
                format!("Authorization: Basic {}", self.basic()),
            ),
            // The header must not follow a redirect to another host.
            ("GIT_CONFIG_KEY_1".into(), "http.followRedirects".into()),
            ("GIT_CONFIG_VALUE_1".into(), "false".into()),
        ]
    }

    fn basic(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("bzzz:{}", self.expose()))
    }

    /// `text` without the token (or its Basic form): a forge or proxy that
    /// echoes headers must not put it into an error, a log or a task's
    /// reason.
    pub fn scrub(&self, text: &str) -> String {
        let mut t = text.to_owned();
        for secret in [self.expose().to_owned(), self.basic()] {
            if !secret.is_empty() {
                t = t.replace(&secret, "[redacted]");
            }
        }
        t
    }

    fn scrub_err(&self, e: ForgeError) -> ForgeError {
        match e {
            ForgeError::Git(w, m) => ForgeError::Git(w, self.scrub(&m)),
            ForgeError::Other(m) => ForgeError::Other(self.scrub(&m)),
            ForgeError::Fenced(m) => ForgeError::Fenced(self.scrub(&m)),
            other => other,
        }
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(redacted)")
    }
}

/// Runs git with a scrubbed, prompt-free environment.
pub async fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, ForgeError> {
    git_env(dir, args, &[]).await
}

/// [`git`] with extra environment variables (credentials as config).
pub async fn git_env(
    dir: Option<&Path>,
    args: &[&str],
    env: &[(String, String)],
) -> Result<String, ForgeError> {
    let mut c = tokio::process::Command::new("git");
    if let Some(d) = dir {
        c.arg("-C").arg(d);
    }
    // The work tree belongs to the sandbox user; this process commits it.
    c.args(["-c", "safe.directory=*", "-c", "core.hooksPath=/dev/null"]);
    c.args(args);
    c.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", "/nonexistent")
        .env("LANG", "C")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let what = args.first().copied().unwrap_or("").to_owned();
    let out = tokio::time::timeout(GIT_TIMEOUT, c.output())
        .await
        .map_err(|_| ForgeError::Git(what.clone(), "timed out".into()))?
        .map_err(|e| ForgeError::Git(what.clone(), e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(ForgeError::Git(
            what,
            err.trim().chars().take(2000).collect::<String>(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A plain Git repository (any URL git can clone and push: `http(s)://`,
/// `ssh://`, a path).
#[derive(Debug, Clone)]
pub struct GitForge {
    url: String,
    /// Where this node keeps a shallow copy to read the tasks from.
    cache: PathBuf,
    /// The commit author (`bzzz agent <agent@NODE>`).
    author: String,
}

impl GitForge {
    pub fn new(url: &str, cache: PathBuf, node: &str) -> Self {
        Self {
            url: url.to_owned(),
            cache,
            author: format!("bzzz agent <agent@{node}>"),
        }
    }

    async fn refresh(&self) -> Result<(), ForgeError> {
        if self.cache.join(".git").is_dir() {
            git(
                Some(&self.cache),
                &["fetch", "--depth", "1", "origin", "HEAD"],
            )
            .await?;
            git(Some(&self.cache), &["reset", "--hard", "FETCH_HEAD"]).await?;
        } else {
            if let Some(p) = self.cache.parent() {
                std::fs::create_dir_all(p)?;
            }
            let _ = std::fs::remove_dir_all(&self.cache);
            let cache = self.cache.to_string_lossy().into_owned();
            git(None, &["clone", "--depth", "1", "--", &self.url, &cache]).await?;
        }
        Ok(())
    }
}

/// Reads the task files under `dir/tasks` (regular files only: a
/// symlink could point anywhere on this node).
pub fn read_tasks(dir: &Path) -> (Vec<Task>, Vec<(String, String)>) {
    let mut tasks = Vec::new();
    let mut bad = Vec::new();
    // A symlinked `tasks` could point anywhere on this node.
    if !std::fs::symlink_metadata(dir.join("tasks")).is_ok_and(|m| m.is_dir()) {
        return (tasks, bad);
    }
    let Ok(rd) = std::fs::read_dir(dir.join("tasks")) else {
        return (tasks, bad);
    };
    let mut names: Vec<_> = rd.filter_map(Result::ok).collect();
    names.sort_by_key(|e| e.file_name());
    let mut seen = std::collections::BTreeSet::new();
    for e in names.into_iter().take(MAX_TASKS_PER_REPO) {
        let name = format!("tasks/{}", e.file_name().to_string_lossy());
        if !name.ends_with(".md") {
            continue;
        }
        let Ok(t) = e.file_type() else { continue };
        if !t.is_file() {
            bad.push((name, "not a regular file".into()));
            continue;
        }
        let text = match std::fs::metadata(e.path()) {
            Ok(m) if m.len() > task::MAX_TASK_FILE as u64 => {
                bad.push((name, format!("larger than {} bytes", task::MAX_TASK_FILE)));
                continue;
            }
            _ => match std::fs::read_to_string(e.path()) {
                Ok(t) => t,
                Err(err) => {
                    bad.push((name, err.to_string()));
                    continue;
                }
            },
        };
        match task::parse(&text) {
            Ok(t) if !seen.insert(t.id.clone()) => {
                bad.push((name, format!("id {:?} is used by another file", t.id)));
            }
            Ok(t) => tasks.push(t),
            Err(why) => bad.push((name, why)),
        }
    }
    (tasks, bad)
}

/// Commits `work` onto the task's branch and, once `still_current`
/// confirms the claim, pushes it (replacing the branch).
async fn commit_and_push(
    task: &Task,
    work: &Path,
    author: &str,
    message: &str,
    still_current: FenceCheck<'_>,
    env: &[(String, String)],
) -> Result<String, ForgeError> {
    let branch = task.branch();
    git(Some(work), &["checkout", "-q", "-B", &branch]).await?;
    git(Some(work), &["add", "-A"]).await?;
    let (name, email) = author
        .split_once(" <")
        .map_or(("bzzz agent", "agent@bzzz"), |(n, e)| {
            (n, e.trim_end_matches('>'))
        });
    git(
        Some(work),
        &[
            "-c",
            &format!("user.name={name}"),
            "-c",
            &format!("user.email={email}"),
            "commit",
            "-q",
            "--allow-empty",
            "--no-verify",
            &format!("--author={author}"),
            "-m",
            message,
        ],
    )
    .await?;
    if !still_current().await {
        return Err(ForgeError::Fenced(format!(
            "the claim on {} is no longer this node's; {branch} was not pushed",
            task.id
        )));
    }
    let refspec = format!("HEAD:refs/heads/{branch}");
    git_env(
        Some(work),
        &["push", "-q", "--force", "--no-verify", "origin", &refspec],
        env,
    )
    .await?;
    Ok(branch)
}

impl Forge for GitForge {
    fn tasks(&self) -> BoxFuture<'_, Result<TaskList, ForgeError>> {
        Box::pin(async move {
            self.refresh().await?;
            Ok(read_tasks(&self.cache))
        })
    }

    fn checkout<'a>(&'a self, work: &'a Path) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move {
            let w = work.to_string_lossy().into_owned();
            git(None, &["clone", "--depth", "1", "--", &self.url, &w]).await?;
            Ok(())
        })
    }

    fn deliver<'a>(
        &'a self,
        task: &'a Task,
        work: &'a Path,
        message: &'a str,
        still_current: FenceCheck<'a>,
    ) -> BoxFuture<'a, Result<Delivery, ForgeError>> {
        Box::pin(async move {
            let branch =
                commit_and_push(task, work, &self.author, message, still_current, &[]).await?;
            Ok(Delivery {
                branch,
                pr_url: None,
            })
        })
    }
}

/// Gitea and GitHub: tasks are open issues with the repository's label;
/// delivery is the pushed branch plus a pull request, a comment on the
/// issue (summary and link) and labels `in-progress` → `done`/`failed`.
/// Every call carries the token (`Authorization: token T`); the token is
/// never in a URL, a log line or the work tree.
#[derive(Debug, Clone)]
pub struct IssueForge {
    clone_url: String,
    /// API base: `…/api/v1` (Gitea), `https://api.github.com` or the
    /// host itself (GitHub's routes).
    api: String,
    owner_repo: String,
    label: String,
    token: Token,
    cache: PathBuf,
    author: String,
    http: reqwest::Client,
}

impl IssueForge {
    /// `url` is the clone URL (`http(s)://HOST/OWNER/REPO(.git)`).
    pub fn new(
        url: &str,
        github: bool,
        label: &str,
        token: Token,
        cache: PathBuf,
        node: &str,
    ) -> Result<Self, ForgeError> {
        let (scheme, rest) = url
            .split_once("://")
            .filter(|(s, _)| *s == "http" || *s == "https")
            .ok_or_else(|| {
                ForgeError::Other(format!("{url}: a forge URL is http(s)://HOST/OWNER/REPO"))
            })?;
        let mut parts = rest.trim_end_matches('/').splitn(2, '/');
        let host = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default().trim_end_matches(".git");
        if host.is_empty() || path.split('/').count() != 2 || path.contains("..") {
            return Err(ForgeError::Other(format!(
                "{url}: a forge URL is http(s)://HOST/OWNER/REPO"
            )));
        }
        let api = match (github, host) {
            (true, "github.com") => "https://api.github.com".to_owned(),
            (true, _) => format!("{scheme}://{host}"),
            (false, _) => format!("{scheme}://{host}/api/v1"),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ForgeError::Other(e.to_string()))?;
        Ok(Self {
            clone_url: url.to_owned(),
            api,
            owner_repo: path.to_owned(),
            label: label.to_owned(),
            token,
            cache,
            author: format!("bzzz agent <agent@{node}>"),
            http,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ForgeError> {
        let url = format!("{}/repos/{}{path}", self.api, self.owner_repo);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("Authorization", format!("token {}", self.token.expose()))
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ForgeError::Other(format!("{method} {path}: {}", e.without_url())))?;
        let status = resp.status();
        // Bounded: an answer is read up to 4 MiB.
        let mut body = Vec::new();
        let mut resp = resp;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| ForgeError::Other(format!("{method} {path}: {}", e.without_url())))?
        {
            if body.len() + chunk.len() > 4 << 20 {
                return Err(ForgeError::Other(format!(
                    "{method} {path}: the answer is larger than 4 MiB"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            return Err(ForgeError::Other(self.token.scrub(&format!(
                "{method} {path}: {status}: {}",
                text.chars().take(300).collect::<String>()
            ))));
        }
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    fn issue(task: &Task) -> Result<u64, ForgeError> {
        task.id
            .parse()
            .map_err(|_| ForgeError::Other(format!("{} is not an issue number", task.id)))
    }

    /// The open pull request from `branch`, or a new one.
    async fn pull_request(
        &self,
        task: &Task,
        branch: &str,
        message: &str,
    ) -> Result<String, ForgeError> {
        let find = || async {
            let list = self
                .call(reqwest::Method::GET, "/pulls?state=open", None)
                .await?;
            Ok::<_, ForgeError>(list.as_array().and_then(|l| {
                l.iter().find(|p| p["head"]["ref"] == branch).and_then(|p| {
                    p["html_url"]
                        .as_str()
                        .filter(|u| is_web(u))
                        .map(str::to_owned)
                })
            }))
        };
        if let Some(u) = find().await? {
            return Ok(u);
        }
        let repo = self.call(reqwest::Method::GET, "", None).await?;
        let base = repo["default_branch"].as_str().unwrap_or("main").to_owned();
        let made = self
            .call(
                reqwest::Method::POST,
                "/pulls",
                Some(serde_json::json!({
                    "title": format!("bzzz: {}", task.title),
                    "head": branch,
                    "base": base,
                    "body": format!("{message}\n\nCloses #{}", task.id),
                })),
            )
            .await;
        match made {
            Ok(p) => p["html_url"]
                .as_str()
                .filter(|u| is_web(u))
                .map(str::to_owned)
                .ok_or_else(|| ForgeError::Other("the pull request has no web address".into())),
            // Made meanwhile (a retry): the existing one.
            Err(e) => find().await?.ok_or(e),
        }
    }

    async fn label(&self, n: u64, add: &str, remove: &[&str]) -> Result<(), ForgeError> {
        for r in remove {
            // Absent labels are fine.
            let _ = self
                .call(
                    reqwest::Method::DELETE,
                    &format!("/issues/{n}/labels/{r}"),
                    None,
                )
                .await;
        }
        self.call(
            reqwest::Method::POST,
            &format!("/issues/{n}/labels"),
            Some(serde_json::json!({"labels": [add]})),
        )
        .await
        .map(|_| ())
    }
}

/// An `http(s)://` address without spaces or control characters.
fn is_web(u: &str) -> bool {
    (u.starts_with("https://") || u.starts_with("http://"))
        && !u
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '<')
}

impl Forge for IssueForge {
    fn tasks(&self) -> BoxFuture<'_, Result<TaskList, ForgeError>> {
        Box::pin(async move {
            let path = format!("/issues?state=open&type=issues&labels={}", self.label);
            let list = self.call(reqwest::Method::GET, &path, None).await?;
            let mut tasks = Vec::new();
            let mut bad = Vec::new();
            for i in list
                .as_array()
                .into_iter()
                .flatten()
                .take(MAX_TASKS_PER_REPO)
            {
                let Some(n) = i["number"].as_u64() else {
                    continue;
                };
                let labels: Vec<&str> = i["labels"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|l| l["name"].as_str())
                    .collect();
                if labels.contains(&"done") || i.get("pull_request").is_some_and(|p| !p.is_null()) {
                    continue;
                }
                let title: String = i["title"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect();
                let body = i["body"].as_str().unwrap_or("");
                if body.len() > task::MAX_TASK_FILE {
                    bad.push((format!("issue #{n}"), "its text is too long".into()));
                    continue;
                }
                tasks.push(Task {
                    id: n.to_string(),
                    priority: 0,
                    needs: Vec::new(),
                    model: None,
                    title: title.clone(),
                    body: format!("{title}\n\n{body}"),
                });
            }
            Ok((tasks, bad))
        })
    }

    fn checkout<'a>(&'a self, work: &'a Path) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move {
            let _ = &self.cache;
            let w = work.to_string_lossy().into_owned();
            git_env(
                None,
                &["clone", "--depth", "1", "--", &self.clone_url, &w],
                &self.token.git_env(),
            )
            .await
            .map_err(|e| self.token.scrub_err(e))?;
            Ok(())
        })
    }

    fn deliver<'a>(
        &'a self,
        task: &'a Task,
        work: &'a Path,
        message: &'a str,
        still_current: FenceCheck<'a>,
    ) -> BoxFuture<'a, Result<Delivery, ForgeError>> {
        Box::pin(async move {
            let branch = commit_and_push(
                task,
                work,
                &self.author,
                message,
                still_current,
                &self.token.git_env(),
            )
            .await
            .map_err(|e| self.token.scrub_err(e))?;
            let pr = self.pull_request(task, &branch, message).await?;
            Ok(Delivery {
                branch,
                pr_url: Some(pr),
            })
        })
    }

    fn started<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move {
            let n = Self::issue(task)?;
            self.label(n, "in-progress", &["failed"]).await
        })
    }

    fn finished<'a>(
        &'a self,
        task: &'a Task,
        done: bool,
        text: &'a str,
        delivery: Option<&'a Delivery>,
        still_current: FenceCheck<'a>,
    ) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move {
            let n = Self::issue(task)?;
            if !still_current().await {
                return Err(ForgeError::Fenced(format!(
                    "the claim on issue #{n} is no longer this node's; not reported"
                )));
            }
            let link = delivery
                .map(|d| match &d.pr_url {
                    Some(u) => format!("\n\nPull request: {u} (branch `{}`)", d.branch),
                    None => format!("\n\nBranch: `{}`", d.branch),
                })
                .unwrap_or_default();
            let head = if done { "Done" } else { "Failed" };
            self.call(
                reqwest::Method::POST,
                &format!("/issues/{n}/comments"),
                Some(serde_json::json!({"body": format!("bzzz agent: {head}. {text}{link}")})),
            )
            .await?;
            self.label(n, if done { "done" } else { "failed" }, &["in-progress"])
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, args: &[&str]) {
        let ok = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .status()
            .expect("git")
            .success();
        assert!(ok, "git {args:?}");
    }

    #[tokio::test]
    async fn delivery_pushes_only_while_the_claim_holds() {
        let d = tempfile::tempdir().expect("tmp");
        let bare = d.path().join("r.git");
        let seed = d.path().join("seed");
        std::fs::create_dir_all(seed.join("tasks")).expect("dirs");
        std::fs::write(seed.join("tasks/a.md"), "---\nid: a\n---\nDo a").expect("task");
        sh(d.path(), &["init", "-q", "--bare", "-b", "main", "r.git"]);
        sh(&seed, &["init", "-q", "-b", "main"]);
        sh(&seed, &["add", "-A"]);
        sh(&seed, &["commit", "-q", "-m", "seed"]);
        sh(
            &seed,
            &[
                "push",
                "-q",
                &bare.to_string_lossy(),
                "HEAD:refs/heads/main",
            ],
        );
        let url = format!("file://{}", bare.display());
        let f = GitForge::new(&url, d.path().join("cache"), "node1");
        let (tasks, bad) = f.tasks().await.expect("tasks");
        assert!(bad.is_empty(), "{bad:?}");
        let work = d.path().join("work");
        f.checkout(&work).await.expect("checkout");
        std::fs::write(work.join("out.txt"), "x").expect("write");
        let no = || -> BoxFuture<'_, bool> { Box::pin(async { false }) };
        let e = f
            .deliver(&tasks[0], &work, "m", &no)
            .await
            .expect_err("fenced");
        assert!(matches!(e, ForgeError::Fenced(_)), "{e}");
        let refs = git(Some(&bare), &["for-each-ref", "refs/heads"])
            .await
            .expect("refs");
        assert!(!refs.contains("bzzz/task-a"), "nothing pushed: {refs}");
        // Each claim works in a fresh checkout; a second delivery (a claim
        // taken over) replaces the branch, it does not add to it.
        for i in 0..2 {
            let work = d.path().join(format!("work{i}"));
            f.checkout(&work).await.expect("checkout");
            std::fs::write(work.join("out.txt"), "x").expect("write");
            let yes = || -> BoxFuture<'_, bool> { Box::pin(async { true }) };
            let d1 = f
                .deliver(&tasks[0], &work, "m", &yes)
                .await
                .expect("deliver");
            assert_eq!(d1.branch, "bzzz/task-a");
        }
        let n = git(Some(&bare), &["rev-list", "--count", "main..bzzz/task-a"])
            .await
            .expect("count");
        assert_eq!(n.trim(), "1");
    }

    #[test]
    fn tokens_never_print_and_are_scrubbed_from_errors() {
        let t = Token::new("s3cret-token\n");
        assert_eq!(format!("{t:?}"), "Token(redacted)");
        let echoed = format!(
            "401: bad header Authorization: Basic {} / token s3cret-token",
            t.basic()
        );
        let clean = t.scrub(&echoed);
        assert!(
            !clean.contains("s3cret") && !clean.contains(&t.basic()),
            "{clean}"
        );
        let env = t.git_env();
        assert!(
            env.iter()
                .any(|(k, v)| k == "GIT_CONFIG_VALUE_1" && v == "false")
        );
    }

    #[test]
    fn reads_task_files_and_names_the_bad_ones() {
        let d = tempfile::tempdir().expect("tmp");
        let t = d.path().join("tasks");
        std::fs::create_dir(&t).expect("dir");
        std::fs::write(t.join("a.md"), "---\nid: a\n---\nDo a").expect("a");
        std::fs::write(t.join("b.md"), "---\nid: a\n---\nDo b").expect("b");
        std::fs::write(t.join("c.md"), "no front matter").expect("c");
        std::fs::write(t.join("notes.txt"), "ignored").expect("txt");
        std::os::unix::fs::symlink("/etc/passwd", t.join("d.md")).expect("link");
        let (tasks, bad) = read_tasks(d.path());
        // A symlinked tasks directory is not read.
        let other = tempfile::tempdir().expect("tmp");
        std::os::unix::fs::symlink(&t, other.path().join("tasks")).expect("link");
        assert!(read_tasks(other.path()).0.is_empty());
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].id, "a");
        let names: Vec<&str> = bad.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["tasks/b.md", "tasks/c.md", "tasks/d.md"], "{bad:?}");
    }
}
