//! Plain-Git task files: `tasks/NAME.md`, front matter between `---`
//! lines (`id`, optional `priority`, `needs`, `model`, `title`), the body
//! is the task text.

use serde::{Deserialize, Serialize};

/// Largest task file read (bigger ones are reported and skipped).
pub const MAX_TASK_FILE: usize = 64 * 1024;
/// Longest task id.
pub const MAX_ID: usize = 64;

/// A task as its source describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Unique within its repository: `[A-Za-z0-9._-]`, 1 to 64 characters
    /// (it names the branch `bzzz/task-ID`).
    pub id: String,
    /// Higher first (default 0).
    pub priority: i32,
    /// Capabilities a node needs to take it (`gpu`, or a model name).
    pub needs: Vec<String>,
    /// The model to work it with (default: the repository's, then the
    /// node's `agents.model`).
    pub model: Option<String>,
    /// A one-line title (front matter `title`, else the body's first line).
    pub title: String,
    /// The task text.
    pub body: String,
}

impl Task {
    /// The branch its work is delivered on.
    pub fn branch(&self) -> String {
        format!("bzzz/task-{}", self.id)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FrontMatter {
    id: serde_norway::Value,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    needs: Vec<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    title: Option<String>,
}

/// Whether `id` may name a task (and a branch).
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID {
        return Err(format!("a task id has 1 to {MAX_ID} characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("a task id may not contain {c:?}"));
    }
    if id.starts_with(['.', '-']) || id.ends_with('.') || id.contains("..") {
        return Err(format!("{id:?} cannot name a branch"));
    }
    Ok(())
}

/// Parses a task file's text.
pub fn parse(text: &str) -> Result<Task, String> {
    if text.len() > MAX_TASK_FILE {
        return Err(format!("a task file is at most {MAX_TASK_FILE} bytes"));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let rest = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
        .ok_or("a task file starts with a `---` line (front matter)")?;
    let end = rest
        .match_indices("\n---")
        .find(|(i, _)| {
            let after = &rest[i + 4..];
            after.is_empty() || after.starts_with('\n') || after.starts_with("\r\n")
        })
        .map(|(i, _)| i)
        .ok_or("the front matter has no closing `---` line")?;
    let fm: FrontMatter =
        serde_norway::from_str(&rest[..end]).map_err(|e| format!("front matter: {e}"))?;
    let id = match fm.id {
        serde_norway::Value::String(s) => s,
        serde_norway::Value::Number(n) => n.to_string(),
        _ => return Err("front matter: `id` is a string or a number".into()),
    };
    check_id(&id)?;
    for n in &fm.needs {
        if n.is_empty() || n.len() > 128 {
            return Err("front matter: each of `needs` has 1 to 128 characters".into());
        }
    }
    if fm.needs.len() > 16 {
        return Err("front matter: at most 16 `needs`".into());
    }
    let body = rest[end + 4..]
        .trim_start_matches(['\r', '\n'])
        .trim_end()
        .to_owned();
    let title = fm
        .title
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| {
            body.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .trim_start_matches('#')
                .trim()
                .to_owned()
        })
        .chars()
        .take(200)
        .collect();
    Ok(Task {
        id,
        priority: fm.priority,
        needs: fm.needs,
        model: fm.model.filter(|m| !m.is_empty()),
        title,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_front_matter_and_body() {
        let t = parse(
            "---\nid: add-hello\npriority: 5\nneeds: [gpu]\nmodel: smollm2\n---\n# Add hello\n\nCreate hello.txt containing `hi`.\n",
        )
        .expect("parse");
        assert_eq!(t.id, "add-hello");
        assert_eq!(t.priority, 5);
        assert_eq!(t.needs, ["gpu"]);
        assert_eq!(t.model.as_deref(), Some("smollm2"));
        assert_eq!(t.title, "Add hello");
        assert!(t.body.ends_with("`hi`."));
        assert_eq!(t.branch(), "bzzz/task-add-hello");
        let n = parse("---\nid: 7\n---\nbody").expect("numeric id");
        assert_eq!(n.id, "7");
        assert_eq!(n.priority, 0);
    }

    #[test]
    fn names_what_is_wrong() {
        for (text, want) in [
            ("id: x\n", "starts with"),
            ("---\nid: x\n", "closing"),
            ("---\nid: ../x\n---\n", "may not contain"),
            ("---\nid: x\nowner: me\n---\n", "unknown field"),
            ("---\npriority: 1\n---\n", "id"),
            ("---\nid: [1]\n---\n", "string or a number"),
            ("---\nid: -x\n---\n", "branch"),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,400}") {
            let _ = parse(&s);
            let _ = parse(&format!("---\n{s}"));
            let _ = parse(&format!("---\nid: a\n---\n{s}"));
        }

        #[test]
        fn accepted_ids_are_safe_branch_names(id in "[A-Za-z0-9._-]{1,70}") {
            if check_id(&id).is_ok() {
                prop_assert!(!id.contains("..") && !id.starts_with('-') && id.len() <= MAX_ID);
            }
        }
    }
}
