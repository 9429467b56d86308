//! `/cluster`: a server-rendered SVG of the members (leader, voter,
//! learner; share holder or not; in sight, gone, removed) and their links
//! (Raft replication from the leader; this node's own connections), the
//! admin key's policy (t of n, key epoch), warnings, a remove button per
//! member and an approve button per pending joiner (operator session).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use super::{csrf_field, layout};
use crate::http::auth::{Operator, Principal};
use crate::http::members::{approve_member, member_views, remove_member};
use crate::http::{Action, Fixed, Res};
use crate::http::{Permission, Route, Shared};

pub fn routes() -> Vec<Route> {
    vec![
        Route::page(
            Method::GET,
            "/cluster",
            Permission::Need(Action::Read, Res::Is(Fixed::Cluster)),
            get(page),
        ),
        Route::page(
            Method::POST,
            "/cluster/remove",
            Permission::Need(Action::Manage, Res::Is(Fixed::Members)),
            post(remove_form),
        ),
        Route::page(
            Method::POST,
            "/cluster/approve",
            Permission::Need(Action::Manage, Res::Is(Fixed::Members)),
            post(approve_form),
        ),
    ]
}

fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(8)..]
}

/// Warnings about the admin key's custody, for the page and tests.
pub fn custody_warnings(st: &Shared) -> Vec<String> {
    let status = st.keys.status();
    let mut out = status.warnings.clone();
    let views = member_views(st);
    let (Some(t), Some(n)) = (status.threshold, status.shares) else {
        return out;
    };
    let holders_in_sight = views
        .iter()
        .filter(|v| v.share_index.is_some() && v.state == "member")
        .count() as u16;
    let away = n.saturating_sub(holders_in_sight);
    if holders_in_sight < t {
        out.push(format!(
            "{away} of {n} share holders unreachable: admin actions are blocked ({t} needed, {holders_in_sight} reachable)"
        ));
    } else if away > 0 && holders_in_sight == t {
        out.push(format!(
            "{away} of {n} share holders unreachable: one more loss blocks admin actions"
        ));
    }
    out
}

fn picture(st: &Shared) -> Markup {
    let views = member_views(st);
    let n = views.len().max(1) as f64;
    let (w, h, r) = (640.0_f64, 420.0_f64, 150.0_f64);
    let pos: Vec<(f64, f64)> = (0..views.len())
        .map(|i| {
            let a = std::f64::consts::TAU * i as f64 / n - std::f64::consts::FRAC_PI_2;
            (w / 2.0 + r * a.cos(), h / 2.0 + r * a.sin())
        })
        .collect();
    let leader = views.iter().position(|v| v.raft == "leader");
    let me = views.iter().position(|v| v.this_node);
    let connected: std::collections::BTreeSet<bzzz_proto::NodeId> = st
        .net
        .snapshot()
        .peers
        .iter()
        .filter(|p| p.connected && p.proven)
        .map(|p| p.announcement.node_id.clone())
        .collect();
    html! {
        svg id="cluster-svg" xmlns="http://www.w3.org/2000/svg" width=(w) height=(h) viewBox={"0 0 " (w) " " (h)} role="img" aria-label="cluster members and links" {
            @if let Some(l) = leader {
                @for (i, v) in views.iter().enumerate() {
                    @if i != l && (v.raft == "voter" || v.raft == "learner") {
                        line class="raft-link" x1=(pos[l].0) y1=(pos[l].1) x2=(pos[i].0) y2=(pos[i].1) stroke="#888" stroke-width="2" {}
                    }
                }
            }
            @if let Some(m) = me {
                @for (i, v) in views.iter().enumerate() {
                    @if connected.contains(&v.node_id) {
                        line class="mesh-link" x1=(pos[m].0) y1=(pos[m].1) x2=(pos[i].0) y2=(pos[i].1) stroke="#4a90d9" stroke-dasharray="4 4" {}
                    }
                }
            }
            @for (i, v) in views.iter().enumerate() {
                @let fill = match v.state.as_str() { "member" => "#5cb85c", "gone" => "#aaa", _ => "#d9534f" };
                @let stroke = if v.share_index.is_some() { "#f0ad4e" } else { "#333" };
                g class={"node " (v.state)} data-node=(v.node_id.as_str()) data-raft=(v.raft) data-share=(v.share_index.map_or(String::new(), |i| i.to_string())) {
                    circle cx=(pos[i].0) cy=(pos[i].1) r=(if v.raft == "leader" { 24 } else { 18 }) fill=(fill) stroke=(stroke) stroke-width=(if v.share_index.is_some() { 5 } else { 1 }) {}
                    text x=(pos[i].0) y=(pos[i].1 + 38.0) text-anchor="middle" font-size="12" {
                        (short(v.node_id.as_str())) " " (v.raft)
                        @if let Some(ix) = v.share_index { " #" (ix) }
                        @if v.this_node { " (this)" }
                    }
                }
            }
        }
        p { small { "Circles: green in sight, grey gone, red removed; a thick orange ring holds an admin key share; the larger circle leads Raft. Grey lines: Raft replication from the leader; dashed blue: this node's connections." } }
    }
}

fn render(st: &Shared, p: &Principal, code: StatusCode, notice: Markup) -> Response {
    let status = st.keys.status();
    let views = member_views(st);
    let warnings = custody_warnings(st);
    let content = html! {
        (notice)
        @if !status.initialized {
            p { "Not initialized yet: " a href="/setup" { "set the cluster up" } "." }
        } @else {
            p id="key-policy" {
                "Admin key: " strong { (status.threshold.unwrap_or(0)) " of " (status.shares.unwrap_or(0)) }
                " share holders sign (policy " code { (status.policy.clone().unwrap_or_default()) } ", key epoch " (status.epoch.unwrap_or(0)) ")."
            }
            @for w in &warnings {
                p class="warn" { (w) }
            }
            (picture(st))
            table id="members" {
                tr { th { "node" } th { "state" } th { "share" } th { "Raft" } th {} }
                @for v in &views {
                    tr data-node=(v.node_id.as_str()) {
                        td { code { (v.node_id.as_str()) } @if v.this_node { " (this node)" } }
                        td {
                            (v.state)
                            @if let Some(s) = v.gone_secs { " for " (s / 3600) " h " ((s % 3600) / 60) " min" }
                        }
                        td { (v.share_index.map_or("-".to_owned(), |i| format!("#{i}"))) }
                        td { (v.raft) }
                        td {
                            @if v.state == "pending" {
                                form method="post" action="/cluster/approve" {
                                    (csrf_field(p))
                                    input type="hidden" name="node_id" value=(v.node_id.as_str());
                                    button type="submit" class="approve" { "Approve as holder" }
                                }
                            }
                            @if !v.this_node && v.state != "removed" {
                                form method="post" action="/cluster/remove" {
                                    (csrf_field(p))
                                    input type="hidden" name="node_id" value=(v.node_id.as_str());
                                    button type="submit" { "Remove" }
                                }
                            }
                        }
                    }
                }
            }
            @let pending = views.iter().filter(|v| v.state == "pending").count();
            @if pending > 0 {
                p id="pending-joiners" class="warn" {
                    (pending) " pending joiner(s): admitted by a join token that admits more than one node, they hold no share until you approve them."
                }
            }
            p { small { "Remove and approve need an operator session (" a href="/login" { "log in" } "). Remove is an admin-signed revocation: every node refuses the member, Raft drops it, and the admin key is re-dealt without it. Approve makes a pending joiner a share holder: the admin key is re-dealt to it." } }
        }
    };
    layout(code, "/cluster", "Cluster", content)
}

async fn page(State(st): State<Shared>, p: Principal) -> Response {
    render(&st, &p, StatusCode::OK, html! {})
}

#[derive(Deserialize)]
struct MemberForm {
    node_id: String,
}

/// A member form's answer: the page with `done` (naming the node) as
/// notice, or the error.
async fn member_form<F, Fut>(
    st: &Shared,
    p: &Principal,
    body: &[u8],
    done: &str,
    act: F,
) -> Response
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, crate::http::ApiError>>,
{
    let f: MemberForm = match serde_urlencoded::from_bytes(body) {
        Ok(f) => f,
        Err(e) => {
            return render(
                st,
                p,
                StatusCode::UNPROCESSABLE_ENTITY,
                html! { p class="err" id="error" { "bad form: " (e) } },
            );
        }
    };
    match act(f.node_id.clone()).await {
        Ok(_) => render(
            st,
            p,
            StatusCode::OK,
            html! { p class="warn" id="notice" { (f.node_id) (done) } },
        ),
        Err(e) => render(
            st,
            p,
            e.status,
            html! { p class="err" id="error" { (e.message) } },
        ),
    }
}

async fn remove_form(
    State(st): State<Shared>,
    p: Principal,
    Operator(key): Operator,
    body: Bytes,
) -> Response {
    let done = " removed; the admin key is re-dealt without it.";
    let s = st.clone();
    member_form(&st, &p, &body, done, |id| async move {
        remove_member(&s, &key, &id).await
    })
    .await
}

async fn approve_form(
    State(st): State<Shared>,
    p: Principal,
    Operator(key): Operator,
    body: Bytes,
) -> Response {
    let done = " approved; the admin key is re-dealt to it.";
    let s = st.clone();
    member_form(&st, &p, &body, done, |id| async move {
        approve_member(&s, &key, &id).await
    })
    .await
}
