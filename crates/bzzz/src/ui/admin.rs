//! Login (`/login`: a user, or `admin` for the operator; a session
//! cookie: HttpOnly, SameSite=Strict, see [`crate::sessions`]), logout
//! (this session, or every session of the caller on this node) and the
//! administration page (`/admin`: join tokens, link to deploy). A page
//! behind a permission, asked for without a session, answers 401 with
//! the login form; a login lands on `/admin` for the operator and on
//! `/access` for a user.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use bzzz_crypto::operator::OperatorPassword;
use maud::{Markup, html};
use serde::Deserialize;

use super::setup::form;
use super::{csrf_field, layout};
use crate::http::auth::{Principal, SESSION_COOKIE, client_of, session_id};
use crate::http::{Action, Fixed, Res};
use crate::http::{Operator, Permission, Route, Shared, see_other, status_of_kind};

type S = State<Shared>;

pub fn routes() -> Vec<Route> {
    use Permission::Public;
    vec![
        Route::page(Method::GET, "/login", Public, get(login_page)),
        Route::page(Method::POST, "/login", Public, post(login_form)),
        Route::page(
            Method::POST,
            "/logout",
            Permission::Principal,
            post(logout_form),
        ),
        Route::page(
            Method::GET,
            "/admin",
            Permission::Need(Action::Manage, Res::Is(Fixed::Cluster)),
            get(admin_page),
        ),
        Route::page(
            Method::POST,
            "/admin/token",
            Permission::Need(Action::Manage, Res::Is(Fixed::Members)),
            post(admin_token_form),
        ),
    ]
}

fn login_form_markup() -> Markup {
    html! {
        form id="login-form" method="post" action="/login" {
            label for="user" { "User name (" code { "admin" } " for the operator)" }
            input id="user" name="user" type="text" value="admin" autocomplete="username" maxlength="64";
            label for="password" { "Password" }
            input id="password" name="password" type="password" required autocomplete="current-password";
            br;
            button id="login" type="submit" { "Log in" }
        }
    }
}

/// The answer to a page request without a valid session: the status (401,
/// or 429 when rate limited) with the login form.
pub fn login_required(code: StatusCode, message: &str) -> Response {
    layout(
        code,
        "/admin",
        "Log in",
        html! {
            @if code != StatusCode::UNAUTHORIZED { p class="err" id="error" { (message) } }
            (login_form_markup())
        },
    )
}

async fn login_page(State(st): S) -> Response {
    if !st.keys.is_initialized() {
        return see_other("/setup");
    }
    layout(StatusCode::OK, "/admin", "Log in", login_form_markup())
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    user: String,
    password: String,
}

fn login_error(code: StatusCode, message: &str) -> Response {
    layout(
        code,
        "/admin",
        "Log in",
        html! {
            p class="err" id="error" { (message) }
            (login_form_markup())
        },
    )
}

/// The session cookie; `Secure` when the request came over TLS (a
/// browser then never sends it over plain HTTP).
fn session_cookie(id: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    ))
    .ok()
}

async fn login_form(State(st): S, req_parts: axum::http::Extensions, body: Bytes) -> Response {
    if !st.keys.is_initialized() {
        return see_other("/setup");
    }
    let f: LoginForm = match form(&body) {
        Ok(f) => f,
        Err(e) => return login_error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    let pw = match OperatorPassword::new(f.password) {
        Ok(p) => p,
        Err(e) => return login_error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    };
    let client = client_of(&req_parts);
    let name = f.user.trim();
    let (id, _csrf) = match st.access.login(&st, &client, name, pw).await {
        Ok(s) => s,
        Err(e) => return login_error(e.status, &e.message),
    };
    let operator = name.is_empty() || name == bzzz_proto::access::ADMIN_USER;
    let mut r = see_other(if operator { "/admin" } else { "/access" });
    let secure = req_parts.get::<crate::http::serve::Secure>().is_some();
    if let Some(v) = session_cookie(&id, crate::sessions::SESSION_TTL.as_secs(), secure) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    everywhere: Option<String>,
}

/// `POST /logout`: ends this session; with `everywhere`, every session
/// of the caller on this node.
async fn logout_form(State(st): S, p: Principal, headers: HeaderMap, body: Bytes) -> Response {
    let everywhere = form::<LogoutForm>(&body).is_ok_and(|f| f.everywhere.is_some());
    if everywhere {
        st.access.sessions.close_all(p.id());
    } else if let Some(id) = session_id(&headers) {
        st.access.sessions.close(&id);
    }
    let mut r = see_other("/login");
    if let Some(v) = session_cookie("", 0, false) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// The log-out buttons (this session; every session on this node).
pub fn logout_buttons(p: &Principal) -> Markup {
    html! {
        form method="post" action="/logout" style="display:inline" {
            (csrf_field(p))
            button id="logout" type="submit" { "Log out" }
        }
        " "
        form method="post" action="/logout" style="display:inline" {
            (csrf_field(p))
            input type="hidden" name="everywhere" value="1";
            button id="logout-everywhere" type="submit" { "Log out everywhere on this node" }
        }
    }
}

fn admin(st: &Shared, p: &Principal, code: StatusCode, extra: Markup) -> Response {
    let s = st.keys.status();
    layout(
        code,
        "/admin",
        "Cluster administration",
        html! {
            p {
                "Cluster " b { (s.cluster.as_deref().unwrap_or("")) } ", admin public key "
                code { (s.admin_public_key.as_deref().unwrap_or("")) } "; admin signatures need "
                (s.threshold.unwrap_or(0)) " of " (s.shares.unwrap_or(0)) " shares."
            }
            (extra)
            h2 { "Add nodes" }
            p {
                a id="deploy-link" href="/deploy" { "Deploy to machines over SSH" }
                " (BZZZ installs itself and joins them), or create a token for a node you install yourself:"
            }
            form id="token-form" method="post" action="/admin/token" {
                (csrf_field(p))
                label for="ttl" { "Valid for (minutes)" }
                input id="ttl" name="ttl_minutes" type="number" min="1" max="43200" value="60";
                label for="uses" { "Nodes that may use it" }
                input id="uses" name="uses" type="number" min="1" max=(bzzz_keys::MAX_TOKEN_USES) value="1";
                br;
                button id="create-token" type="submit" { "Create a join token" }
            }
            p { "On the new node: " code { "bzzz node run --join-token-file FILE" } "." }
            p { a id="access-link" href="/access" { "Users, API keys and roles" } ", " a href="/audit" { "the audit log" } "." }
            (logout_buttons(p))
        },
    )
}

async fn admin_page(State(st): S, p: Principal, _: Operator) -> Response {
    admin(&st, &p, StatusCode::OK, html! {})
}

#[derive(Deserialize)]
struct TokenForm {
    ttl_minutes: u64,
    uses: u32,
}

async fn admin_token_form(
    State(st): S,
    p: Principal,
    Operator(pw): Operator,
    body: Bytes,
) -> Response {
    let f: TokenForm = match form(&body) {
        Ok(f) => f,
        Err(e) => {
            return admin(
                &st,
                &p,
                StatusCode::UNPROCESSABLE_ENTITY,
                html! { p class="err" id="error" { (e) } },
            );
        }
    };
    let ttl = Duration::from_secs(f.ttl_minutes.saturating_mul(60));
    if let Err(e) = crate::access::record(
        &st,
        bzzz_proto::access::ADMIN_USER,
        bzzz_proto::access::Action::Manage,
        &bzzz_proto::access::Resource::MEMBERS,
    )
    .await
    {
        return admin(
            &st,
            &p,
            e.status,
            html! { p class="err" id="error" { (e.message) } },
        );
    }
    match st.keys.create_token(ttl, f.uses, &pw).await {
        Ok((token, body)) => admin(
            &st,
            &p,
            StatusCode::OK,
            html! {
                div class="warn" {
                    "Join token (shown once; valid until unix time " (body.expires_at) ", for " (body.uses) " node(s)):"
                    br;
                    code id="token" { (token.as_str()) }
                }
            },
        ),
        Err(e) => admin(
            &st,
            &p,
            status_of_kind(e.kind),
            html! { p class="err" id="error" { (e.message) } },
        ),
    }
}
