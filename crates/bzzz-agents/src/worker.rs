//! The fixed program around the model: it shows the task and the files,
//! asks the model for one action at a time (each reply constrained by a
//! JSON schema, which llama.cpp turns into a grammar, so even a 135M model
//! always answers with a valid action), runs the action in the sandbox,
//! and shows the result, until `finish` or a cap.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::sandbox::{Limits, Sandbox};
use crate::task::Task;

/// Most steps a task may take (the configured cap is clamped to it).
pub const MAX_STEPS: u32 = 30;
/// Default step cap.
pub const DEFAULT_STEPS: u32 = 20;
/// Largest file the model may write.
pub const MAX_WRITE: usize = 256 * 1024;
/// Lines `read_file` shows at once.
pub const READ_WINDOW: u64 = 200;

/// Where the model is asked (an OpenAI-compatible `/v1`), as whom.
#[derive(Debug, Clone)]
pub struct Llm {
    /// Base URL ending in `/v1`, e.g. `http://127.0.0.1:8080/v1`.
    pub url: String,
    /// Sent as `Authorization: Bearer` (the agent's API key).
    pub api_key: Option<String>,
    pub model: String,
}

/// The caps of one task.
#[derive(Debug, Clone)]
pub struct Caps {
    pub max_steps: u32,
    pub wall: Duration,
    /// Each command's limits (its wall time is the per-command time).
    pub command: Limits,
    /// Consecutive failed steps (bad reply, failed tool) before giving up.
    pub max_errors: u32,
    /// Bytes of a tool's result shown to the model.
    pub observation_bytes: usize,
    /// Timeout of one model call.
    pub llm_timeout: Duration,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            max_steps: DEFAULT_STEPS,
            wall: Duration::from_secs(15 * 60),
            command: Limits::default(),
            max_errors: 5,
            observation_bytes: 4096,
            llm_timeout: Duration::from_secs(120),
        }
    }
}

/// One action of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "tool", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    ListFiles {},
    ReadFile {
        path: String,
        #[serde(default)]
        start: Option<u64>,
    },
    WriteFile {
        path: String,
        content: String,
    },
    /// Adds one line at the end of a file (made if missing).
    Append {
        path: String,
        line: String,
    },
    Replace {
        path: String,
        search: String,
        replace: String,
    },
    Run {
        command: String,
    },
    Finish {
        summary: String,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Self::ListFiles {} => "list_files",
            Self::ReadFile { .. } => "read_file",
            Self::WriteFile { .. } => "write_file",
            Self::Append { .. } => "append",
            Self::Replace { .. } => "replace",
            Self::Run { .. } => "run",
            Self::Finish { .. } => "finish",
        }
    }
}

pub use crate::schema::{Hints, action_schema, hints, step_schema};

/// One step, for the live log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub n: u32,
    pub tool: String,
    /// A short description (path, command; never file contents).
    pub detail: String,
    pub ok: bool,
    /// The first line of the result or error.
    pub result: String,
}

/// Failed steps in a row after which a worker asks other agents.
pub const HELP_AFTER: u32 = 2;

/// What a stuck worker tells other agents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelpRequest {
    /// The task text (title and body, cut to 4 KiB).
    pub task: String,
    /// The last action tried (its JSON, cut to 1 KiB).
    pub tried: String,
    /// What it got (cut to 1 KiB).
    pub error: String,
}

/// One other agent's answer: the action it would take next.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Suggestion {
    /// The answering node.
    pub from: String,
    /// An action (JSON of [`Action`]).
    pub action: String,
}

/// Other agents a stuck worker may ask (coordination, SPEC §10): the
/// runner asks them on the task's gossip topic, bounded in time and in
/// how many answer.
pub trait Helpers: Send + Sync {
    fn ask(&self, req: HelpRequest) -> futures::future::BoxFuture<'_, Vec<Suggestion>>;
}

/// Answers another agent's help request with the action this node's model
/// would take next (validated as an [`Action`]).
pub async fn suggest(req: &HelpRequest, llm: &Llm, timeout: Duration) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let mut messages = vec![json!({"role": "system", "content": system_prompt()})];
    messages.extend(examples());
    messages.push(json!({"role": "user", "content": format!(
        "Help request: another agent works this task.\n\nTask: {}\n\nIt tried {} and got:\n{}\n\nAnswer with the one action it should take next.",
        cut(&req.task, 4096), cut(&req.tried, 1024), cut(&req.error, 1024)
    )}));
    let (_, raw) = ask(&client, llm, &messages, &action_schema()).await?;
    Ok(raw)
}

/// How the work ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Finished { summary: String },
    Failed { reason: String },
}

/// Checks a path the model names: relative, inside the work tree, not
/// under `.git` (the sandbox enforces it anyway; this gives a clear
/// error).
pub fn check_path(p: &str) -> Result<String, String> {
    let p = p.trim().trim_start_matches("./");
    if p.is_empty() || p.len() > 512 || p.contains('\0') {
        return Err("a path is 1 to 512 characters".into());
    }
    if p.starts_with('/') {
        return Err(format!("{p}: paths are relative to the repository"));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(format!("{p}: `..` leaves the repository"));
    }
    if p == ".git" || p.starts_with(".git/") {
        return Err(format!("{p}: .git is read-only"));
    }
    Ok(p.to_owned())
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[… cut at {max} bytes]", &s[..end])
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

/// The files of the work tree (as the model sees them).
pub async fn list_files(sb: &Sandbox) -> Result<String, String> {
    let o = sb
        .shell(
            "find . -path ./.git -prune -o -type f -print | sed 's|^\\./||' | sort | head -n 500",
        )
        .await
        .map_err(|e| e.to_string())?;
    if !o.success() {
        return Err(first_line(&o.stderr));
    }
    Ok(if o.stdout.trim().is_empty() {
        "(no files)".into()
    } else {
        o.stdout
    })
}

async fn read_whole(sb: &Sandbox, path: &str) -> Result<String, String> {
    let big = Sandbox::new(
        sb.work_dir(),
        Limits {
            output_bytes: MAX_WRITE + 1,
            ..sb.limits().clone()
        },
    )
    .map_err(|e| e.to_string())?;
    let o = big
        .run(&["cat", "--", path], b"")
        .await
        .map_err(|e| e.to_string())?;
    if !o.success() {
        return Err(format!("cannot read {path}: {}", first_line(&o.stderr)));
    }
    if o.truncated {
        return Err(format!("{path} is larger than {MAX_WRITE} bytes"));
    }
    Ok(o.stdout)
}

async fn write(sb: &Sandbox, path: &str, content: &str) -> Result<(), String> {
    if content.len() > MAX_WRITE {
        return Err(format!("content is larger than {MAX_WRITE} bytes"));
    }
    let o = sb
        .run(
            &[
                "sh",
                "-c",
                "d=$(dirname -- \"$1\") && mkdir -p -- \"$d\" && cat > \"$1\"",
                "sh",
                path,
            ],
            content.as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
    if !o.success() {
        return Err(format!("cannot write {path}: {}", first_line(&o.stderr)));
    }
    Ok(())
}

/// Runs one action; `Ok` is the result shown to the model.
pub async fn act(sb: &Sandbox, a: &Action, max: usize) -> Result<String, String> {
    match a {
        Action::ListFiles {} => list_files(sb).await.map(|s| cut(&s, max)),
        Action::ReadFile { path, start } => {
            let path = check_path(path)?;
            let from = start.unwrap_or(1).max(1);
            let to = from + READ_WINDOW - 1;
            let o = sb
                .run(&["sed", "-n", &format!("{from},{to}p"), "--", &path], b"")
                .await
                .map_err(|e| e.to_string())?;
            if !o.success() {
                return Err(format!("cannot read {path}: {}", first_line(&o.stderr)));
            }
            Ok(cut(
                &format!("{path}, lines {from} to {to}:\n{}", o.stdout),
                max,
            ))
        }
        Action::WriteFile { path, content } => {
            let path = check_path(path)?;
            write(sb, &path, content).await?;
            Ok(format!("wrote {path} ({} bytes)", content.len()))
        }
        Action::Append { path, line } => {
            let path = check_path(path)?;
            if line.contains('\n') {
                return Err("append adds one line (no newline in it)".into());
            }
            let mut text = match read_whole(sb, &path).await {
                Ok(t) => t,
                Err(_) if !sb.work_dir().join(&path).exists() => String::new(),
                Err(e) => return Err(e),
            };
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(line);
            text.push('\n');
            write(sb, &path, &text).await?;
            Ok(format!("appended a line to {path}"))
        }
        Action::Replace {
            path,
            search,
            replace,
        } => {
            let path = check_path(path)?;
            if search.is_empty() {
                return Err("search is empty".into());
            }
            let text = read_whole(sb, &path).await?;
            let n = text.matches(search.as_str()).count();
            if n == 0 {
                return Err(format!("{search:?} is not in {path}"));
            }
            write(sb, &path, &text.replace(search.as_str(), replace)).await?;
            Ok(format!("replaced {n} occurrence(s) in {path}"))
        }
        Action::Run { command } => {
            if command.trim().is_empty() || command.len() > 4096 {
                return Err("a command is 1 to 4096 characters".into());
            }
            let o = sb.shell(command).await.map_err(|e| e.to_string())?;
            let status = if o.timed_out {
                "killed: the per-command time limit".to_owned()
            } else {
                o.code
                    .map_or_else(|| "killed by a signal".into(), |c| format!("exit {c}"))
            };
            let text = format!("{status}\nstdout:\n{}\nstderr:\n{}", o.stdout, o.stderr);
            if o.success() {
                Ok(cut(&text, max))
            } else {
                Err(cut(&text, max))
            }
        }
        Action::Finish { summary } => Ok(summary.clone()),
    }
}

fn system_prompt() -> String {
    "You are a careful coding agent working in a Git repository. Each turn you reply with \
exactly one JSON action:\n\
- {\"tool\":\"write_file\",\"path\":P,\"content\":C} writes the whole file P (creates it).\n\
- {\"tool\":\"append\",\"path\":P,\"line\":L} adds the line L at the end of P.\n\
- {\"tool\":\"replace\",\"path\":P,\"search\":S,\"replace\":R} replaces every S in P by R.\n\
- {\"tool\":\"read_file\",\"path\":P} shows a file.\n\
- {\"tool\":\"list_files\"} lists the files.\n\
- {\"tool\":\"run\",\"command\":CMD} runs a shell command (no network).\n\
- {\"tool\":\"finish\",\"summary\":S} ends the task when it is done.\n\
Paths are relative to the repository: use the exact path the task names. \
Do exactly what the task asks, then finish."
        .to_owned()
}

/// Worked examples shown before the task, as earlier turns of the
/// conversation: each tool that changes a file, asked in more than one
/// wording (a small model follows turns better than a description).
fn examples() -> Vec<Value> {
    let pairs = [
        (
            "Task 1: Append the line: two\nto the end of the file n.txt.\n\n--- n.txt ---\none\n--- end of n.txt ---",
            r#"{"tool":"append","path":"n.txt","line":"two"}"#,
        ),
        (
            "Task 2: Create the file docs/x.txt containing exactly the text: good day",
            r#"{"tool":"write_file","path":"docs/x.txt","content":"good day"}"#,
        ),
        (
            "Task 3: In the file src/m.txt, replace the word red with the word blue.\n\n--- src/m.txt ---\nA red car.\n--- end of src/m.txt ---",
            r#"{"tool":"replace","path":"src/m.txt","search":"red","replace":"blue"}"#,
        ),
        (
            "Task 4: At the bottom of todo.txt, one more line is wanted: buy bread\n\n--- todo.txt ---\nwash car\n--- end of todo.txt ---",
            r#"{"tool":"append","path":"todo.txt","line":"buy bread"}"#,
        ),
        (
            "Task 5: Turn each one into two in a/b.txt.\n\n--- a/b.txt ---\none step\n--- end of a/b.txt ---",
            r#"{"tool":"replace","path":"a/b.txt","search":"one","replace":"two"}"#,
        ),
    ];
    pairs
        .iter()
        .flat_map(|(task, action)| {
            [
                json!({"role": "user", "content": task}),
                json!({"role": "assistant", "content": action}),
            ]
        })
        .collect()
}

/// The files the task names (paths of the listing that occur in its
/// text) with their content, when small: a small model then need not
/// read them first.
async fn named_files(sb: &Sandbox, text: &str, listing: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for path in listing
        .lines()
        .filter(|p| !p.is_empty() && text.contains(*p))
        .take(8)
    {
        if let Ok(content) = read_whole(sb, path).await
            && content.len() <= 4096
        {
            out.push((path.to_owned(), content));
        }
    }
    out
}

/// The named files as shown to the model, at most about `max` bytes.
fn show_files(named: &[(String, String)], max: usize) -> String {
    let mut out = String::new();
    for (path, content) in named {
        out.push_str(&format!("\n--- {path} ---\n{content}"));
        if !content.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("--- end of {path} ---\n"));
        if out.len() > max {
            break;
        }
    }
    out
}

/// Works `task` in the sandbox with the model; `on_step` sees each step.
pub async fn work(
    task: &Task,
    sb: &Sandbox,
    llm: &Llm,
    caps: &Caps,
    helpers: Option<&dyn Helpers>,
    mut on_step: impl FnMut(Step) + Send,
) -> Outcome {
    let started = Instant::now();
    let max_steps = caps.max_steps.clamp(1, MAX_STEPS);
    let files = list_files(sb)
        .await
        .unwrap_or_else(|e| format!("(cannot list: {e})"));
    let text = format!("{}\n{}", task.title, task.body);
    let named_list = named_files(sb, &text, &files).await;
    let hints = hints(&text, &named_list);
    let named = show_files(&named_list, caps.observation_bytes);
    let mut messages = vec![json!({"role": "system", "content": system_prompt()})];
    messages.extend(examples());
    messages.extend([json!({"role": "user", "content": format!(
        "Task {}: {}\n{named}{}",
        task.id,
        if task.body.trim_start().starts_with(task.title.trim()) {
            task.body.trim().to_owned()
        } else {
            format!("{}\n\n{}", task.title, task.body.trim())
        },
        // The listing only when the task names no file: for a small
        // model it is noise beside the named ones (`list_files` and `run`
        // show it later).
        if hints.paths.is_empty() {
            format!("\nFiles in the repository:\n{}", cut(&files, caps.observation_bytes))
        } else {
            String::new()
        },
    )})]);
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(caps.llm_timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed {
                reason: format!("no HTTP client: {e}"),
            };
        }
    };
    let mut changed = false;
    let mut last_ok: Option<Action> = None;
    let mut errors = 0;
    let mut asked = false;
    for n in 1..=max_steps {
        if started.elapsed() > caps.wall {
            return Outcome::Failed {
                reason: format!("wall-time cap ({} s) reached", caps.wall.as_secs()),
            };
        }
        let reply = ask(&client, llm, &messages, &step_schema(changed, &hints)).await;
        let (action, raw) = match reply {
            Ok((a, raw)) => {
                tracing::debug!(task = %task.id, n, action = %raw, "model action");
                (a, raw)
            }
            Err(e) => {
                errors += 1;
                on_step(Step {
                    n,
                    tool: "model".into(),
                    detail: String::new(),
                    ok: false,
                    result: first_line(&e),
                });
                if errors >= caps.max_errors {
                    return Outcome::Failed {
                        reason: format!("{errors} failed steps in a row; last: {e}"),
                    };
                }
                continue;
            }
        };
        // The same change again, or one that restates what the last change
        // wrote: the model has nothing more to do (small models repeat
        // themselves instead of finishing). Not run (an append would add
        // its line twice).
        if changed && last_ok.as_ref().is_some_and(|l| restates(l, &action)) {
            on_step(Step {
                n,
                tool: action.name().into(),
                detail: String::new(),
                ok: true,
                result: "repeated; taken as done".into(),
            });
            return Outcome::Finished {
                summary: format!("{} repeated; taken as done", action.name()),
            };
        }
        let detail = match &action {
            Action::ReadFile { path, .. }
            | Action::WriteFile { path, .. }
            | Action::Append { path, .. }
            | Action::Replace { path, .. } => path.chars().take(200).collect(),
            Action::Run { command } => command.chars().take(200).collect(),
            Action::ListFiles {} | Action::Finish { .. } => String::new(),
        };
        let result = act(sb, &action, caps.observation_bytes).await;
        let ok = result.is_ok();
        on_step(Step {
            n,
            tool: action.name().into(),
            detail,
            ok,
            result: first_line(result.as_ref().unwrap_or_else(|e| e)),
        });
        if let Action::Finish { summary } = &action {
            return Outcome::Finished {
                summary: summary.chars().take(2000).collect(),
            };
        }
        last_ok = ok.then(|| action.clone());
        changed |= ok
            && matches!(
                action,
                Action::WriteFile { .. }
                    | Action::Append { .. }
                    | Action::Replace { .. }
                    | Action::Run { .. }
            );
        errors = if ok { 0 } else { errors + 1 };
        if errors >= caps.max_errors {
            return Outcome::Failed {
                reason: format!(
                    "{errors} failed steps in a row; last: {}",
                    first_line(result.as_ref().unwrap_or_else(|e| e))
                ),
            };
        }
        let mut answer = match &result {
            Ok(r) => format!("Result of {}:\n{r}", action.name()),
            Err(e) => format!("Error from {}:\n{e}", action.name()),
        };
        // Stuck: ask the other agents once (bounded by the runner).
        if errors >= HELP_AFTER
            && !asked
            && let (Some(h), Err(e)) = (helpers, &result)
        {
            asked = true;
            let got = h
                .ask(HelpRequest {
                    task: cut(&text, 4096),
                    tried: cut(&raw, 1024),
                    error: cut(e, 1024),
                })
                .await;
            on_step(Step {
                n,
                tool: "help".into(),
                detail: String::new(),
                ok: !got.is_empty(),
                result: format!("{} suggestion(s) from other agents", got.len()),
            });
            if !got.is_empty() {
                answer.push_str("\n\nSuggestions from other agents:");
                for s in &got {
                    answer.push_str(&format!("\n- {}: {}", s.from, cut(&s.action, 1024)));
                }
            }
        }
        messages.push(json!({"role": "assistant", "content": raw}));
        messages.push(json!({"role": "user", "content": answer}));
    }
    Outcome::Failed {
        reason: format!("step cap ({max_steps}) reached without finish"),
    }
}

/// Whether `next` repeats `last` (a successful change): the same action,
/// or an `append`/`write_file` of the same file whose text is the text
/// `last` wrote there.
fn restates(last: &Action, next: &Action) -> bool {
    if last == next {
        return true;
    }
    let wrote = |a: &Action| match a {
        Action::WriteFile { path, content } => Some((path.clone(), content.trim().to_owned())),
        Action::Append { path, line } => Some((path.clone(), line.trim().to_owned())),
        _ => None,
    };
    matches!((wrote(last), wrote(next)), (Some(a), Some(b)) if a == b)
}

/// Asks the model for the next action.
async fn ask(
    client: &reqwest::Client,
    llm: &Llm,
    messages: &[Value],
    schema: &Value,
) -> Result<(Action, String), String> {
    // The same OpenAI dialect the node's routes speak (bzzz-serve).
    let body = bzzz_serve::translate::chat_request(&llm.model, messages, Some(schema), 1024);
    let mut req = client
        .post(format!(
            "{}/chat/completions",
            llm.url.trim_end_matches('/')
        ))
        .json(&body);
    if let Some(k) = &llm.api_key {
        req = req.bearer_auth(k);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("the model did not answer: {}", e.without_url()))?;
    let status = resp.status();
    let v: Value = resp
        .json()
        .await
        .map_err(|e| format!("the model's answer is not JSON ({status}): {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "the model answered {status}: {}",
            cut(&v.to_string(), 300)
        ));
    }
    let content = bzzz_serve::translate::reply_content(&v)
        .ok_or("the model's answer has no message")?
        .trim()
        .to_owned();
    let action: Action = serde_json::from_str(&content)
        .map_err(|e| format!("the reply is not an action ({e}): {}", cut(&content, 200)))?;
    Ok((action, content))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_from_the_schema_shapes() {
        let a: Action =
            serde_json::from_str(r#"{"tool":"write_file","path":"a.txt","content":"x"}"#)
                .expect("write");
        assert_eq!(a.name(), "write_file");
        let a: Action = serde_json::from_str(r#"{"tool":"list_files"}"#).expect("list");
        assert_eq!(a, Action::ListFiles {});
        assert!(serde_json::from_str::<Action>(r#"{"tool":"rm","path":"/"}"#).is_err());
        let s = action_schema().to_string();
        for t in [
            "write_file",
            "replace",
            "read_file",
            "list_files",
            "run",
            "finish",
        ] {
            assert!(s.contains(t), "{t}");
        }
    }

    #[test]
    fn hints_take_the_paths_the_task_names_and_the_words_of_its_files() {
        let h = hints(
            "In the file words/r1.txt, replace cat (see README.md). e.g. 1.5 times; \
             not /etc/passwd, ../x.txt or https://x.org/a.txt. Also list/a.txt.",
            &[("words/r1.txt".into(), "The cat sat.\n".into())],
        );
        assert_eq!(h.paths, ["words/r1.txt", "README.md", "list/a.txt"]);
        assert_eq!(h.snippets, ["The", "cat", "sat", "The cat sat."]);
        let schema = step_schema(false, &h).to_string();
        assert_eq!(h.existing, ["words/r1.txt"]);
        // Before a change: new files are written, existing ones edited.
        assert!(
            schema.contains(
                r#""tool":{"const":"write_file"},"path":{"enum":["README.md","list/a.txt"]}"#
            ),
            "{schema}"
        );
        assert!(
            schema.contains(r#""tool":{"const":"replace"},"path":{"enum":["words/r1.txt"]},"search":{"enum":["The","cat","sat","The cat sat."]}"#),
            "{schema}"
        );
        assert!(!schema.contains("finish"), "{schema}");
        assert!(step_schema(true, &h).to_string().contains("finish"));
        // No paths named: any path.
        let free = step_schema(false, &hints("fix the bug", &[])).to_string();
        assert!(!free.contains("enum"), "{free}");
    }

    #[test]
    fn restating_the_last_write_is_a_repeat() {
        let w = |p: &str, c: &str| Action::WriteFile {
            path: p.into(),
            content: c.into(),
        };
        let a = |p: &str, l: &str| Action::Append {
            path: p.into(),
            line: l.into(),
        };
        assert!(restates(&w("a", "x\n"), &a("a", "x")));
        assert!(restates(&a("a", "x"), &a("a", "x")));
        assert!(!restates(&a("a", "x"), &a("a", "y")));
        assert!(!restates(&w("a", "x"), &a("b", "x")));
        assert!(!restates(&w("a", "x"), &Action::ListFiles {}));
    }

    #[test]
    fn paths_stay_in_the_work_tree() {
        assert_eq!(check_path("./src/a.rs").as_deref(), Ok("src/a.rs"));
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            ".git/config",
            ".git",
            "",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod sandboxed {
    use super::*;

    #[tokio::test]
    async fn tools_write_replace_read_and_list_in_the_sandbox() {
        let dir = tempfile::tempdir().expect("tmp");
        let sb = match Sandbox::new(dir.path(), Limits::default()) {
            Ok(s) => s,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("skipped: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let w = Action::WriteFile {
            path: "out/a.txt".into(),
            content: "hello world\n".into(),
        };
        act(&sb, &w, 4096).await.expect("write");
        let r = Action::Replace {
            path: "out/a.txt".into(),
            search: "world".into(),
            replace: "bzzz".into(),
        };
        act(&sb, &r, 4096).await.expect("replace");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out/a.txt")).expect("read"),
            "hello bzzz\n"
        );
        let read = act(
            &sb,
            &Action::ReadFile {
                path: "out/a.txt".into(),
                start: None,
            },
            4096,
        )
        .await
        .expect("read");
        assert!(read.contains("hello bzzz"), "{read}");
        for line in ["one", "two"] {
            act(
                &sb,
                &Action::Append {
                    path: "out/a.txt".into(),
                    line: line.into(),
                },
                4096,
            )
            .await
            .expect("append");
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out/a.txt")).expect("read"),
            "hello bzzz\none\ntwo\n"
        );
        let list = act(&sb, &Action::ListFiles {}, 4096).await.expect("list");
        assert_eq!(list.trim(), "out/a.txt");
        let e = act(
            &sb,
            &Action::WriteFile {
                path: "../x".into(),
                content: String::new(),
            },
            4096,
        )
        .await
        .expect_err("outside");
        assert!(e.contains(".."), "{e}");
    }
}
