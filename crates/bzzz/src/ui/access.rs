//! `/access`: who you are, your API keys (every key with `manage` on
//! keys) with create and revoke, and the users (with `manage` on users)
//! with add and remove. Every form carries the session's CSRF token; the
//! handlers are the API's (`http::access`), so the same checks apply
//! (escalation rule, quotas, audit entry in the same Raft command).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use bzzz_proto::access::{ApiKeyCreate, Resource, UserAdd};
use maud::{Markup, html};
use serde::Deserialize;

use super::admin::logout_buttons;
use super::setup::form;
use super::{csrf_field, layout};
use crate::http::access::{add_user, create_key, list_keys, list_users, remove_user, revoke_key};
use crate::http::auth::{Principal, decide_for};
use crate::http::{Action, ApiError, Fixed, Permission, Res, Route, Shared};

type S = State<Shared>;

pub fn routes() -> Vec<Route> {
    let users = Permission::Need(Action::Manage, Res::Is(Fixed::Users));
    vec![
        Route::page(Method::GET, "/access", Permission::Principal, get(page)),
        Route::page(
            Method::POST,
            "/access/keys",
            Permission::Principal,
            post(key_form),
        ),
        Route::page(
            Method::POST,
            "/access/keys/revoke",
            Permission::Principal,
            post(revoke_form),
        ),
        Route::page(Method::POST, "/access/users", users, post(user_form)),
        Route::page(
            Method::POST,
            "/access/users/remove",
            users,
            post(user_remove_form),
        ),
    ]
}

/// A validity as the CLI's `--ttl` takes it (`30d`, `12h`, `90m`; the
/// `humantime` syntax) → seconds; empty: none.
pub fn parse_ttl(s: &str) -> Result<Option<u64>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    match humantime::parse_duration(s) {
        Ok(d) if d.as_secs() == 0 => Err("the validity must be at least a second".into()),
        Ok(d) => Ok(Some(d.as_secs())),
        Err(e) => Err(format!("{s:?} is not a duration such as 30d or 12h: {e}")),
    }
}

fn render(st: &Shared, p: &Principal, code: StatusCode, notice: Markup) -> Response {
    let Some(c) = p.caller() else {
        return super::admin::login_required(StatusCode::UNAUTHORIZED, "log in");
    };
    let manage_users = decide_for(st, &c.roles, Action::Manage, &Resource::USERS).allowed;
    let manage_keys = decide_for(st, &c.roles, Action::Manage, &Resource::KEYS).allowed;
    let keys = list_keys(st, p);
    let users = if manage_users {
        list_users(st).ok()
    } else {
        None
    };
    let me = c.id.strip_prefix("user:").unwrap_or("");
    let content = html! {
        (notice)
        p id="whoami" {
            "You are " b { (c.id) } " with role(s) " b { (c.roles.join(", ")) } ". "
            (logout_buttons(p))
        }
        h2 { "API keys" }
        p { small { "A key acts with one role; a key bound to a user stops working when the user is removed or loses the role. The secret is shown once." } }
        @match &keys {
            Ok(keys) => {
                table id="keys" {
                    tr { th { "id" } th { "name" } th { "role" } th { "user" } th { "state" } th {} }
                    @for k in keys {
                        tr data-key=(k.id) {
                            td { code { (k.id) } }
                            td { (k.name.as_deref().unwrap_or("")) }
                            td { (k.role) }
                            td { (k.user.as_deref().unwrap_or("")) }
                            td { (k.state) }
                            td {
                                @if k.state == "active" {
                                    form method="post" action="/access/keys/revoke" {
                                        (csrf_field(p))
                                        input type="hidden" name="id" value=(k.id);
                                        button type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Err(e) => { p class="err" { (e.message) } }
        }
        h3 { "Create an API key" }
        form id="key-form" method="post" action="/access/keys" {
            (csrf_field(p))
            label for="key-role" { "Role (one you hold)" }
            input id="key-role" name="role" type="text" required maxlength="63" value=(c.roles.first().map(String::as_str).unwrap_or(""));
            @if manage_keys {
                label for="key-user" { "Bound to user (empty: a key for the role, e.g. an agent)" }
                input id="key-user" name="user" type="text" maxlength="64" value=(me);
            } @else {
                input type="hidden" name="user" value=(me);
            }
            label for="key-name" { "Label" }
            input id="key-name" name="name" type="text" maxlength="128";
            label for="key-ttl" { "Valid for (e.g. 30d, 12h; empty: until revoked)" }
            input id="key-ttl" name="ttl" type="text" maxlength="16";
            br;
            button id="create-key" type="submit" { "Create the key" }
        }
        @if let Some(users) = &users {
            h2 { "Users" }
            table id="users" {
                tr { th { "name" } th { "roles" } th { "created by" } th {} }
                @for u in users {
                    tr data-user=(u.name) {
                        td { (u.name) }
                        td { (u.roles.join(", ")) }
                        td { (u.created_by) }
                        td {
                            @if u.created_by != "setup" {
                                form method="post" action="/access/users/remove" {
                                    (csrf_field(p))
                                    input type="hidden" name="name" value=(u.name);
                                    button type="submit" { "Remove" }
                                }
                            }
                        }
                    }
                }
            }
            h3 { "Add a user" }
            form id="user-form" method="post" action="/access/users" {
                (csrf_field(p))
                label for="user-name" { "Name" }
                input id="user-name" name="name" type="text" required maxlength="64";
                label for="user-roles" { "Roles (comma-separated; only roles you hold)" }
                input id="user-roles" name="roles" type="text" required maxlength="1024";
                label for="user-password" { "Password (at least 12 characters)" }
                input id="user-password" name="password" type="password" required autocomplete="new-password";
                br;
                button id="add-user" type="submit" { "Add the user" }
            }
        }
    };
    layout(code, "/access", "Users and API keys", content)
}

fn error(e: &ApiError) -> Markup {
    html! { p class="err" id="error" { (e.message) } }
}

/// A form's fields, or 422.
fn fields<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    form(body).map_err(ApiError::invalid)
}

/// The page again, with the notice of what was done or the error.
fn answer(st: &Shared, p: &Principal, r: Result<Markup, ApiError>) -> Response {
    match r {
        Ok(notice) => render(st, p, StatusCode::OK, notice),
        Err(e) => render(st, p, e.status, error(&e)),
    }
}

async fn page(State(st): S, p: Principal) -> Response {
    render(&st, &p, StatusCode::OK, html! {})
}

#[derive(Deserialize)]
struct KeyForm {
    role: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    ttl: String,
}

async fn key_form(State(st): S, p: Principal, body: Bytes) -> Response {
    let r = async {
        let f: KeyForm = fields(&body)?;
        let ttl_secs = parse_ttl(&f.ttl).map_err(ApiError::invalid)?;
        let nonempty = |s: String| {
            let s = s.trim().to_owned();
            (!s.is_empty()).then_some(s)
        };
        let req = ApiKeyCreate {
            role: f.role.trim().to_owned(),
            user: nonempty(f.user),
            name: nonempty(f.name),
            ttl_secs,
        };
        let k = create_key(&st, &p, req).await?;
        Ok(html! {
            div class="warn" id="new-key" {
                "API key " code { (k.id) } " for role " b { (k.role) }
                " (shown once: copy it now; send it as " code { "Authorization: Bearer …" } "):"
                br;
                code id="secret" { (k.secret.expose()) }
            }
        })
    }
    .await;
    answer(&st, &p, r)
}

#[derive(Deserialize)]
struct IdForm {
    id: String,
}

async fn revoke_form(State(st): S, p: Principal, body: Bytes) -> Response {
    let r = async {
        let f: IdForm = fields(&body)?;
        revoke_key(&st, &p, &f.id).await?;
        Ok(
            html! { p class="warn" id="notice" { "Key " code { (f.id) } " revoked: every node refuses it once it applies the change." } },
        )
    }
    .await;
    answer(&st, &p, r)
}

#[derive(Deserialize)]
struct UserForm {
    name: String,
    roles: String,
    password: String,
}

async fn user_form(State(st): S, p: Principal, body: Bytes) -> Response {
    let r = async {
        let f: UserForm = fields(&body)?;
        let req = UserAdd {
            name: f.name.trim().to_owned(),
            roles: f
                .roles
                .split(',')
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty())
                .collect(),
            password: bzzz_proto::cluster::WireSecret::new(f.password),
        };
        add_user(&st, &p, &req).await?;
        Ok(
            html! { p class="warn" id="notice" { "User " b { (req.name) } " added with role(s) " (req.roles.join(", ")) "." } },
        )
    }
    .await;
    answer(&st, &p, r)
}

#[derive(Deserialize)]
struct NameForm {
    name: String,
}

async fn user_remove_form(State(st): S, p: Principal, body: Bytes) -> Response {
    let r = async {
        let f: NameForm = fields(&body)?;
        remove_user(&st, &p, &f.name).await?;
        st.access.sessions.close_all(&format!("user:{}", f.name));
        Ok(
            html! { p class="warn" id="notice" { "User " b { (f.name) } " removed; its keys and sessions stop working." } },
        )
    }
    .await;
    answer(&st, &p, r)
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn ttls_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_ttl(""), Ok(None));
        assert_eq!(parse_ttl("30d"), Ok(Some(30 * 86_400)));
        assert_eq!(parse_ttl("90m"), Ok(Some(5400)));
        assert!(parse_ttl("0h").is_err());
        assert!(parse_ttl("3 parsecs").is_err());
        assert!(parse_ttl("d").is_err());
        assert!(parse_ttl("99999999999999999999d").is_err());
        assert!(parse_ttl("18446744073709551615d").is_err());
    }
}
