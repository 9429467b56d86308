//! Operator login (`/login`, a session cookie: HttpOnly, SameSite=Strict)
//! and the administration page (`/admin`: join tokens, link to deploy).
//! A page behind the operator permission, asked for without a session,
//! answers 401 with the login form; a login lands on `/admin` (links to
//! every operator page, and the log-out button).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use bzzz_crypto::operator::OperatorPassword;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout;
use super::setup::form;
use crate::http::auth::{SESSION_COOKIE, client_of, session_id};
use crate::http::{Action, Fixed, Res};
use crate::http::{Operator, Permission, Route, Shared, see_other, status_of_kind};

type S = State<Shared>;

pub fn routes() -> Vec<Route> {
    use Permission::Public;
    vec![
        Route::page(Method::GET, "/login", Public, get(login_page)),
        Route::page(Method::POST, "/login", Public, post(login_form)),
        Route::page(Method::POST, "/logout", Public, post(logout_form)),
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
            label for="password" { "Operator password" }
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
        "Operator login",
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
    layout(
        StatusCode::OK,
        "/admin",
        "Operator login",
        login_form_markup(),
    )
}

#[derive(Deserialize)]
struct LoginForm {
    password: String,
}

fn login_error(code: StatusCode, message: &str) -> Response {
    layout(
        code,
        "/admin",
        "Operator login",
        html! {
            p class="err" id="error" { (message) }
            (login_form_markup())
        },
    )
}

async fn login_form(State(st): S, req_parts: axum::http::Extensions, body: Bytes) -> Response {
    let f: LoginForm = match form(&body) {
        Ok(f) => f,
        Err(e) => return login_error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    let pw = match OperatorPassword::new(f.password) {
        Ok(p) => p,
        Err(e) => return login_error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    };
    let client = client_of(&req_parts);
    if let Err(e) = st.keys.check_operator(&client, Some(pw.clone())).await {
        return login_error(status_of_kind(e.kind), &e.message);
    }
    let id = match st.keys.open_web_session(pw) {
        Ok(id) => id,
        Err(e) => return login_error(StatusCode::INTERNAL_SERVER_ERROR, &e.message),
    };
    let mut r = see_other("/admin");
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        bzzz_keys::WEB_SESSION_TTL.as_secs()
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout_form(State(st): S, headers: HeaderMap) -> Response {
    if let Some(id) = session_id(&headers) {
        st.keys.close_web_session(&id);
    }
    let mut r = see_other("/login");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("bzzz_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    r
}

fn admin(st: &Shared, code: StatusCode, extra: Markup) -> Response {
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
                label for="ttl" { "Valid for (minutes)" }
                input id="ttl" name="ttl_minutes" type="number" min="1" max="43200" value="60";
                label for="uses" { "Nodes that may use it" }
                input id="uses" name="uses" type="number" min="1" max=(bzzz_keys::MAX_TOKEN_USES) value="1";
                br;
                button id="create-token" type="submit" { "Create a join token" }
            }
            p { "On the new node: " code { "bzzz node run --join-token-file FILE" } "." }
            form method="post" action="/logout" { button id="logout" type="submit" { "Log out" } }
        },
    )
}

async fn admin_page(State(st): S, _: Operator) -> Response {
    admin(&st, StatusCode::OK, html! {})
}

#[derive(Deserialize)]
struct TokenForm {
    ttl_minutes: u64,
    uses: u32,
}

async fn admin_token_form(State(st): S, Operator(pw): Operator, body: Bytes) -> Response {
    let f: TokenForm = match form(&body) {
        Ok(f) => f,
        Err(e) => {
            return admin(
                &st,
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
            e.status,
            html! { p class="err" id="error" { (e.message) } },
        );
    }
    match st.keys.create_token(ttl, f.uses, &pw).await {
        Ok((token, body)) => admin(
            &st,
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
            status_of_kind(e.kind),
            html! { p class="err" id="error" { (e.message) } },
        ),
    }
}
