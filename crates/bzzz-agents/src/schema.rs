//! The JSON schemas the model's replies follow (llama.cpp turns them into
//! a grammar), narrowed by what the task text names ([`Hints`]): the
//! harness's side of SPEC §10's constrained actions.

use serde_json::{Value, json};

use crate::worker::check_path;

/// The JSON schema every reply must follow (one of the actions).
pub fn action_schema() -> Value {
    schema_of(
        &[
            "write_file",
            "append",
            "replace",
            "read_file",
            "list_files",
            "run",
            "finish",
        ],
        &Hints::default(),
    )
}

/// What the task text tells the harness, to narrow the model's choices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// The paths the task names (existing or not), in order. When there
    /// are any, the model may only write those: a task that names its
    /// files is worked on them (a small model otherwise invents a path of
    /// its own; measured with SmolLM2-135M, docs/benchmarks.md). Other
    /// files remain reachable through `run` after the first change.
    pub paths: Vec<String>,
    /// Those of `paths` that exist. Before the first change, a file that
    /// exists is edited (`replace`, `append`), one that does not is
    /// created (`write_file`): rewriting a whole file is where a small
    /// model goes wrong (it repeats lines until the token cap).
    pub existing: Vec<String>,
    /// The words and lines of the named files that exist: `replace`
    /// searches for one of them, so its search always matches.
    pub snippets: Vec<String>,
}

/// Most snippets offered to `replace`.
const MAX_SNIPPETS: usize = 256;

/// A token of the task text that names a file: relative, `[A-Za-z0-9_./-]`,
/// with a `/` or an extension that has a letter (`notes/a.txt`,
/// `README.md`; not `e.g.` or `1.5`).
fn path_token(tok: &str) -> Option<String> {
    let t = tok.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '/')));
    if t.is_empty()
        || t.len() > 200
        || !t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
    {
        return None;
    }
    let file = t.rsplit('/').next().unwrap_or(t);
    let named = match file.rsplit_once('.') {
        Some((stem, ext)) => {
            !stem.is_empty()
                && (t.contains('/') || stem.len() >= 2)
                && (1..=8).contains(&ext.len())
                && ext.chars().any(|c| c.is_ascii_alphabetic())
        }
        None => t.contains('/') && !file.is_empty() && !t.starts_with('/'),
    };
    if !named || t.starts_with("//") {
        return None;
    }
    check_path(t).ok()
}

/// The hints of a task: the paths its text names, and the words and lines
/// of those files that exist (`named`: path and content).
pub fn hints(text: &str, named: &[(String, String)]) -> Hints {
    let mut paths: Vec<String> = Vec::new();
    for tok in text.split_whitespace() {
        if let Some(p) = path_token(tok)
            && !paths.contains(&p)
            && !tok.contains("://")
        {
            paths.push(p);
        }
    }
    let mut snippets: Vec<String> = Vec::new();
    for (_, content) in named {
        for line in content.lines() {
            let line = line.trim();
            for w in line
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .chain(std::iter::once(line).filter(|l| !l.is_empty() && l.len() <= 200))
            {
                if snippets.len() < MAX_SNIPPETS && !snippets.iter().any(|s| s == w) {
                    snippets.push(w.to_owned());
                }
            }
        }
    }
    for (p, _) in named {
        if !paths.contains(p) {
            paths.push(p.clone());
        }
    }
    paths.truncate(16);
    let existing = paths
        .iter()
        .filter(|p| named.iter().any(|(n, _)| n == *p))
        .cloned()
        .collect();
    Hints {
        paths,
        existing,
        snippets,
    }
}

/// The tools offered at a step: before the work tree changed, those that
/// change a file (the listing and the files the task names are shown
/// already, and there is nothing to finish yet); after a change,
/// `finish` and every tool that changes or checks. A small model under a
/// grammar otherwise picks the shortest valid action (`list_files`), or
/// runs the tools' names as commands, forever (measured with
/// SmolLM2-135M: docs/benchmarks.md).
pub fn step_schema(changed: bool, hints: &Hints) -> Value {
    if changed {
        return schema_of(&["finish", "write_file", "append", "replace", "run"], hints);
    }
    if hints.paths.is_empty() {
        return schema_of(&["write_file", "append", "replace"], hints);
    }
    let new: Vec<String> = hints
        .paths
        .iter()
        .filter(|p| !hints.existing.contains(p))
        .cloned()
        .collect();
    let mut any = Vec::new();
    if !new.is_empty() {
        any.extend(alternatives(
            &["write_file"],
            &Hints {
                paths: new,
                ..hints.clone()
            },
        ));
    }
    if !hints.existing.is_empty() {
        any.extend(alternatives(
            &["append", "replace"],
            &Hints {
                paths: hints.existing.clone(),
                ..hints.clone()
            },
        ));
    }
    json!({ "anyOf": any })
}

/// The JSON schema of the actions among `tools`.
fn schema_of(tools: &[&str], hints: &Hints) -> Value {
    json!({ "anyOf": alternatives(tools, hints) })
}

/// One schema per tool among `tools`, in that order.
fn alternatives(tools: &[&str], hints: &Hints) -> Vec<Value> {
    let s = json!({"type": "string"});
    let path = if hints.paths.is_empty() {
        s.clone()
    } else {
        json!({"enum": hints.paths})
    };
    let search = if hints.snippets.is_empty() {
        s.clone()
    } else {
        json!({"enum": hints.snippets})
    };
    let obj = |tool: &str, props: Vec<(&str, Value)>| {
        let mut p = serde_json::Map::new();
        p.insert("tool".into(), json!({"const": tool}));
        let mut req = vec![json!("tool")];
        for (k, v) in props {
            req.push(json!(k));
            p.insert(k.into(), v);
        }
        json!({"type": "object", "properties": p, "required": req, "additionalProperties": false})
    };
    let all = [
        (
            "write_file",
            vec![("path", path.clone()), ("content", s.clone())],
        ),
        ("append", vec![("path", path.clone()), ("line", s.clone())]),
        (
            "replace",
            vec![("path", path), ("search", search), ("replace", s.clone())],
        ),
        ("read_file", vec![("path", s.clone())]),
        ("list_files", vec![]),
        ("run", vec![("command", s.clone())]),
        ("finish", vec![("summary", s)]),
    ];
    let mut any = Vec::new();
    for t in tools {
        if let Some((name, props)) = all.iter().find(|(n, _)| n == t) {
            any.push(obj(name, props.clone()));
        }
    }
    any
}
