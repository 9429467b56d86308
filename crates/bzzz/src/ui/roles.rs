//! `/roles`: the role registry (name, authority, permission rules, roles
//! it reads, members) and a form to create or replace a role. The form's
//! submit is the API's role change: the threshold signers sign it with
//! the admin key, Raft commits it with its audit entry, and every node's
//! page shows it once applied.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use bzzz_proto::cluster::{Authority, RoleDef};
use maud::{Markup, html};
use serde::Deserialize;

use super::setup::form;
use super::{csrf_field, layout};
use crate::http::auth::{Operator, Principal};
use crate::http::{Action, Fixed, Permission, Res, Route, Shared};

type S = State<Shared>;

pub fn routes() -> Vec<Route> {
    vec![
        Route::page(
            Method::GET,
            "/roles",
            Permission::Need(Action::Read, Res::Is(Fixed::Cluster)),
            get(page),
        ),
        Route::page(
            Method::POST,
            "/roles",
            Permission::Need(Action::Manage, Res::Is(Fixed::Roles)),
            post(role_form),
        ),
    ]
}

const AUTHORITIES: &[&str] = &[
    "master",
    "decision",
    "coordination",
    "suggestion",
    "read_only",
];

fn render(st: &Shared, p: &Principal, code: StatusCode, notice: Markup) -> Response {
    let roles = st.control.get().map(|c| c.with_state(|s| s.roles.clone()));
    let content = html! {
        (notice)
        @match &roles {
            None => p class="err" { "The control plane is not running on this node yet." },
            Some(roles) => {
                table id="roles" {
                    tr { th { "role" } th { "authority" } th { "permissions" } th { "reads" } th { "members" } }
                    @for (name, r) in roles {
                        tr data-role=(name) {
                            td { b { (name) } }
                            td { (serde_json::to_value(r.authority).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()) }
                            td { @for rule in &r.permissions { code { (rule) } br; } }
                            td { (r.reads.join(", ")) }
                            td { @for m in &r.members { code { (m.as_str()) } br; } }
                        }
                    }
                }
                @if roles.is_empty() { p { "No role is defined yet; the built-in roles (admin, senior_software_architect, backend_developer, observer) apply." } }
            }
        }
        h2 { "Create or replace a role" }
        p { small { "The admin key signs the change (t of n share holders), so this needs the operator's session. Rules are " code { "ACTION:RESOURCE" } " or " code { "deny:ACTION:RESOURCE" } ", one per line, e.g. " code { "infer:model:smollm2*" } " or " code { "read:ucxl://*:*@proj:*/*" } "." } }
        form id="role-form" method="post" action="/roles" {
            (csrf_field(p))
            label for="role-name" { "Name (lower-case letters, digits, _ and -)" }
            input id="role-name" name="name" type="text" required maxlength="63";
            label for="role-authority" { "Authority" }
            select id="role-authority" name="authority" {
                @for a in AUTHORITIES {
                    option value=(a) selected[*a == "suggestion"] { (a) }
                }
            }
            label for="role-permissions" { "Permissions (one rule per line)" }
            textarea id="role-permissions" name="permissions" rows="4" cols="60" maxlength="16384" {}
            label for="role-reads" { "Reads the data of roles (comma-separated)" }
            input id="role-reads" name="reads" type="text" maxlength="4096";
            label for="role-members" { "Member node ids (comma-separated)" }
            input id="role-members" name="members" type="text" maxlength="65536";
            br;
            button id="save-role" type="submit" { "Save the role" }
        }
    };
    layout(code, "/roles", "Roles", content)
}

async fn page(State(st): S, p: Principal) -> Response {
    render(&st, &p, StatusCode::OK, html! {})
}

#[derive(Deserialize)]
struct RoleForm {
    name: String,
    authority: String,
    #[serde(default)]
    permissions: String,
    #[serde(default)]
    reads: String,
    #[serde(default)]
    members: String,
}

fn list(s: &str, sep: char) -> Vec<String> {
    s.split(sep)
        .map(|x| x.trim().to_owned())
        .filter(|x| !x.is_empty())
        .collect()
}

/// The role a form describes, or why not.
fn role_of(f: RoleForm) -> Result<RoleDef, String> {
    let authority: Authority = f.authority.parse()?;
    let members = list(&f.members, ',')
        .into_iter()
        .map(|m| {
            m.parse::<bzzz_proto::NodeId>()
                .map_err(|e| format!("member {m:?}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let role = RoleDef {
        name: f.name.trim().to_owned(),
        authority,
        permissions: list(&f.permissions, '\n'),
        reads: list(&f.reads, ','),
        members,
    };
    role.validate()?;
    Ok(role)
}

async fn role_form(State(st): S, p: Principal, Operator(pw): Operator, body: Bytes) -> Response {
    let bad = |e: String| {
        render(
            &st,
            &p,
            StatusCode::UNPROCESSABLE_ENTITY,
            html! { p class="err" id="error" { (e) } },
        )
    };
    let role = match form::<RoleForm>(&body).and_then(role_of) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let name = role.name.clone();
    match crate::http::control::put_role(&st, &pw, role).await {
        Ok(_) => render(
            &st,
            &p,
            StatusCode::OK,
            html! { p class="warn" id="notice" { "Role " b { (name) } " saved: signed by the admin key and committed." } },
        ),
        Err(e) => render(
            &st,
            &p,
            e.status,
            html! { p class="err" id="error" { (e.message) } },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_form_becomes_a_checked_role() {
        let f = |perms: &str, members: &str| RoleForm {
            name: "reviewer".into(),
            authority: "suggestion".into(),
            permissions: perms.into(),
            reads: "backend_developer, observer".into(),
            members: members.into(),
        };
        let r = role_of(f("infer:model:smollm2*\r\n\nread:cluster\n", "")).expect("role");
        assert_eq!(r.permissions, ["infer:model:smollm2*", "read:cluster"]);
        assert_eq!(r.reads, ["backend_developer", "observer"]);
        assert!(role_of(f("fly:model:x", "")).is_err(), "a bad rule");
        assert!(role_of(f("", "not-a-peer-id")).is_err(), "a bad member");
    }
}
