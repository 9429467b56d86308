//! `/tasks`: the agents' task board (SPEC §10): every task with its
//! state, claim holder, lease, claims so far, branch and reason; with
//! `?key=`, a task and its live step log when this node works it (the
//! page reloads itself every 2 s while the task runs).

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use maud::html;
use serde::Deserialize;

use super::{layout, layout_refreshed};
use crate::http::{Action, Fixed, Permission, Res, Route, Shared};

pub fn routes() -> Vec<Route> {
    vec![Route::page(
        Method::GET,
        "/tasks",
        Permission::Need(Action::Read, Res::Is(Fixed::Cluster)),
        get(page),
    )]
}

#[derive(Debug, Default, Deserialize)]
struct Q {
    #[serde(default)]
    key: Option<String>,
}

async fn page(State(st): State<Shared>, Query(q): Query<Q>) -> Response {
    let Some(control) = st.control.get() else {
        return layout(
            StatusCode::SERVICE_UNAVAILABLE,
            "/tasks",
            "Tasks",
            html! { p class="err" id="error" { "The control plane is not running on this node yet." } },
        );
    };
    let now = crate::control::now_ms();
    let (board, clock) = control.with_state(|s| (s.tasks.tasks.clone(), s.tasks.clock_ms.max(now)));
    let me = st.net.local_id().clone();
    let here = st.agents.availability();
    if let Some(key) = q.key {
        let Some(t) = board.get(&key) else {
            return layout(
                StatusCode::NOT_FOUND,
                "/tasks",
                "Task",
                html! { p class="err" id="error" { "No task " code { (key) } "." } },
            );
        };
        let live = t.live_claim(clock);
        let log = st.agents.log(&key);
        let content = html! {
            table id="task" {
                tr { th { "Task" } td { code { (t.id) } } }
                tr { th { "Title" } td { (t.title) } }
                tr { th { "Repository" } td { code { (t.repo) } } }
                tr { th { "State" } td class="state" { (t.state.as_str()) } }
                tr { th { "Claim holder" } td { code { (t.node.as_ref().map_or("-", |n| n.as_str())) } } }
                tr { th { "Claims" } td { (t.claims) } }
                tr { th { "Attempts failed" } td { (t.attempts) } }
                tr { th { "Branch" } td { code { (t.branch.as_deref().unwrap_or("-")) } } }
                @if let Some(u) = &t.pr_url {
                    tr { th { "Pull request" } td {
                        @if bzzz_control::tasks::is_web_url(u) { a href=(u) rel="noreferrer" { (u) } } @else { code { (u) } }
                    } }
                }
                @if let Some(r) = &t.reason { tr { th { "Reason" } td { (r) } } }
            }
            h2 { "Steps" }
            @match log {
                Some(steps) => {
                    table id="log" {
                        tr { th { "#" } th { "Tool" } th { "" } th { "Detail" } th { "Result" } }
                        @for s in &steps {
                            tr class=(if s.ok { "ok" } else { "failed" }) {
                                td { (s.n) } td { (s.tool) } td { (if s.ok { "ok" } else { "error" }) }
                                td { code { (s.detail) } } td { (s.result) }
                            }
                        }
                    }
                    @if steps.is_empty() { p { "No step yet." } }
                }
                None => {
                    @if t.node.as_ref() == Some(&me) {
                        p { "This node has no log of it (it was worked before the node restarted)." }
                    } @else {
                        p { "The log lives on the node that works the task: open this page there." }
                    }
                }
            }
        };
        let refresh = (live && t.node.as_ref() == Some(&me)).then_some(2);
        return layout_refreshed(StatusCode::OK, "/tasks", "Task", refresh, content);
    }
    let mut rows: Vec<_> = board.iter().collect();
    rows.sort_by(|a, b| b.1.priority.cmp(&a.1.priority).then(a.0.cmp(b.0)));
    let content = html! {
        p id="agents" {
            "This node's agents: " strong { (here.state) }
            " (" (here.current) " of " (here.max) " tasks)."
        }
        @if rows.is_empty() {
            p { "No task yet: add a repository with " code { "bzzz repo add" } "." }
        } @else {
            table id="tasks" {
                tr { th { "Task" } th { "State" } th { "Holder" } th { "Lease" } th { "Claims" } th { "Branch" } th { "Repository" } th { "Reason" } }
                @for (key, t) in &rows {
                    tr data-id=(t.id) data-state=(t.state.as_str()) {
                        td { a href={ "/tasks?" (serde_urlencoded::to_string([("key", key.as_str())]).unwrap_or_default()) } { (t.id) } }
                        td class="state" { (t.state.as_str()) }
                        td { code { (t.node.as_ref().map_or("-", |n| n.short())) } }
                        td { (if t.live_claim(clock) { format!("{} s left", t.lease_until_ms.saturating_sub(clock) / 1000) } else { "-".into() }) }
                        td { (t.claims) }
                        td { code { (t.branch.as_deref().unwrap_or("-")) } }
                        td { code { (t.repo) } }
                        td { (t.reason.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    };
    let running = rows.iter().any(|(_, t)| t.live_claim(clock));
    layout_refreshed(
        StatusCode::OK,
        "/tasks",
        "Tasks",
        running.then_some(2),
        content,
    )
}
