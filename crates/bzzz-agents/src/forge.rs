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
}

/// Runs git with a scrubbed, prompt-free environment.
pub async fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, ForgeError> {
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
            let branch = task.branch();
            git(Some(work), &["checkout", "-q", "-B", &branch]).await?;
            git(Some(work), &["add", "-A"]).await?;
            let author = format!("--author={}", self.author);
            let (name, email) = self
                .author
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
                    &author,
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
            git(
                Some(work),
                &["push", "-q", "--force", "--no-verify", "origin", &refspec],
            )
            .await?;
            Ok(Delivery {
                branch,
                pr_url: None,
            })
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
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].id, "a");
        let names: Vec<&str> = bad.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["tasks/b.md", "tasks/c.md", "tasks/d.md"], "{bad:?}");
    }
}
