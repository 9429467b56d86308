//! Repositories configured for the cluster (`bzzz repo add`), kept as one
//! JSON list in the DHT's cluster configuration ([`REPOS_ADDRESS`], sealed
//! to every member, written with the threshold admin signature).

use serde::{Deserialize, Serialize};

/// Where the list lives.
pub const REPOS_ADDRESS: &str = "ucxl://any:admin@cluster:config/*^/agents/repos";
/// Most repositories.
pub const MAX_REPOS: usize = 64;
/// The label that marks forge issues as tasks, by default.
pub const DEFAULT_LABEL: &str = "bzzz-task";

/// Kinds of task source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Task files under `tasks/`; delivery is a pushed branch.
    Git,
    /// Gitea issues with the label; delivery is a pull request.
    Gitea,
    /// GitHub issues with the label; delivery is a pull request.
    Github,
}

impl Kind {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "git" => Ok(Self::Git),
            "gitea" => Ok(Self::Gitea),
            "github" => Ok(Self::Github),
            _ => Err(format!("{s:?} is not git, gitea or github")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Git => "git",
            Self::Gitea => "gitea",
            Self::Github => "github",
        }
    }
}

/// One configured repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repo {
    /// What `git clone` takes (`http(s)://`, `ssh://`, `file://`, a path).
    pub url: String,
    pub kind: Kind,
    /// Forge issues carrying it are tasks (gitea, github).
    #[serde(default = "default_label")]
    pub label: String,
    /// The model its tasks are worked with (unless a task names one).
    #[serde(default)]
    pub model: Option<String>,
    /// The step cap of its tasks (at most 30).
    #[serde(default)]
    pub max_steps: Option<u32>,
    /// The forge's API token, sealed (age) to each member that was in
    /// reach when it was added: node id → base64 ciphertext. Never shown
    /// back (the API answers `token: true`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub token_sealed: std::collections::BTreeMap<String, String>,
}

/// `POST /api/v1/repos`: a repository, with its token in clear (sealed
/// by the node that takes the request, then dropped).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepoAdd {
    pub url: String,
    pub kind: Kind,
    #[serde(default = "default_label")]
    pub label: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_steps: Option<u32>,
    #[serde(default)]
    pub token: Option<String>,
}

fn default_label() -> String {
    DEFAULT_LABEL.into()
}

impl Repo {
    pub fn validate(&self) -> Result<(), String> {
        let u = &self.url;
        if u.is_empty() || u.len() > 1024 || u.chars().any(|c| c.is_control() || c == ' ') {
            return Err("a repository URL is 1 to 1024 characters without spaces".into());
        }
        if u.starts_with('-') || u.contains("::") || u.starts_with("ext:") {
            return Err(format!("{u:?} is not a URL git may clone safely"));
        }
        if self.label.is_empty() || self.label.len() > 64 {
            return Err("a label is 1 to 64 characters".into());
        }
        if self
            .label
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(c)))
        {
            return Err("a label is letters, digits and - _ . :".into());
        }
        if self
            .model
            .as_ref()
            .is_some_and(|m| m.is_empty() || m.len() > 256)
        {
            return Err("a model name is 1 to 256 characters".into());
        }
        if self
            .max_steps
            .is_some_and(|n| n == 0 || n > crate::worker::MAX_STEPS)
        {
            return Err(format!("max_steps is 1 to {}", crate::worker::MAX_STEPS));
        }
        Ok(())
    }
}

/// Parses the stored list (an absent record is an empty list).
pub fn parse_list(text: &str) -> Result<Vec<Repo>, String> {
    let v: Vec<Repo> = serde_json::from_str(text).map_err(|e| format!("agents/repos: {e}"))?;
    for r in &v {
        r.validate()?;
    }
    Ok(v)
}

/// `list` with `repo` added (replacing one with the same URL).
pub fn with(mut list: Vec<Repo>, repo: Repo) -> Result<Vec<Repo>, String> {
    repo.validate()?;
    let full = list.len() >= MAX_REPOS;
    match list.iter_mut().find(|r| r.url == repo.url) {
        Some(r) => *r = repo,
        None if full => return Err(format!("at most {MAX_REPOS} repositories")),
        None => list.push(repo),
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repos_are_validated_and_replaced_by_url() {
        let r = |url: &str| Repo {
            url: url.into(),
            kind: Kind::Git,
            label: DEFAULT_LABEL.into(),
            model: None,
            max_steps: None,
            token_sealed: Default::default(),
        };
        let l = with(vec![], r("http://h/a.git")).expect("add");
        let l = with(l, r("http://h/a.git")).expect("same");
        assert_eq!(l.len(), 1);
        for bad in ["", "-uupload-pack=x", "ext::sh -c x", "a b"] {
            assert!(with(l.clone(), r(bad)).is_err(), "{bad}");
        }
        let text = serde_json::to_string(&l).expect("json");
        assert_eq!(parse_list(&text).expect("parse"), l);
        assert!(parse_list("{}").is_err());
    }
}
