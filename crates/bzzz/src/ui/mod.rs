//! The web UI: server-rendered pages, all with maud templates (text is
//! escaped by the template engine) in one [`layout`] with the navigation
//! between pages and one small stylesheet. One file per feature: `overview`
//! (`/`), `setup` (the wizard), `admin` (login, administration), `deploy`.
//! Later pages (members, DHT, models, roles, tasks) add a file, their
//! routes in [`routes`] and an entry in [`NAV`].

pub mod access;
pub mod admin;
pub mod audit;
pub mod cluster;
pub mod deploy;
pub mod dht;
pub mod models;
pub mod overview;
pub mod roles;
pub mod setup;
pub mod tasks;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use crate::http::{Route, no_store};

/// Every page route.
pub fn routes() -> Vec<Route> {
    let mut all = Vec::new();
    all.extend(overview::routes());
    all.extend(setup::routes());
    all.extend(admin::routes());
    all.extend(cluster::routes());
    all.extend(deploy::routes());
    all.extend(models::routes());
    all.extend(dht::routes());
    all.extend(access::routes());
    all.extend(roles::routes());
    all.extend(audit::routes());
    all.extend(tasks::routes());
    all
}

/// The navigation: (path, label).
pub const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/setup", "Setup"),
    ("/admin", "Administration"),
    ("/deploy", "Deploy"),
    ("/models", "Models"),
    ("/cluster", "Cluster"),
    ("/dht", "DHT"),
    ("/access", "Access"),
    ("/roles", "Roles"),
    ("/audit", "Audit"),
    ("/tasks", "Tasks"),
];

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#222}\
nav{background:#222;padding:.5rem 2rem}nav a{color:#eee;margin-right:1.2rem;text-decoration:none}\
nav a.here{color:#fc0;font-weight:bold}main{margin:1.5rem 2rem;max-width:72rem}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}\
th{background:#f4f4f4}code{font-size:.85em;word-break:break-all}\
label{display:block;margin:.6rem 0 .2rem}input,textarea{padding:.3rem;font-size:1rem}\
.warn{background:#fff3cd;border:1px solid #e0c36b;padding:.8rem}\
.err{background:#fde2e1;border:1px solid #d99;padding:.8rem}\
ol#mnemonic{columns:4;font-family:monospace;font-size:1.1rem;background:#f6f6f6;padding:1rem 1rem 1rem 2.5rem}\
button{margin-top:1rem;padding:.4rem 1rem;font-size:1rem}footer{margin:2rem;color:#777;font-size:.85em}";

/// A whole page: title, navigation (`here` marked), content; answered with
/// `Cache-Control: no-store` and no referrer.
pub fn layout(code: StatusCode, here: &str, title: &str, content: Markup) -> Response {
    layout_refreshed(code, here, title, None, content)
}

/// [`layout`] for a live page: the browser reloads it every `refresh`
/// seconds (no script needed).
pub fn layout_refreshed(
    code: StatusCode,
    here: &str,
    title: &str,
    refresh: Option<u32>,
    content: Markup,
) -> Response {
    let doc = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="referrer" content="no-referrer";
                @if let Some(s) = refresh {
                    meta http-equiv="refresh" content=(s);
                }
                title { "BZZZ — " (title) }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                nav {
                    @for (path, label) in NAV {
                        a href=(path) class=[(*path == here).then_some("here")] { (label) }
                    }
                    a href="/api/v1/openapi.json" { "API" }
                }
                main {
                    h1 { (title) }
                    (content)
                }
            }
        }
    };
    no_store((code, doc).into_response())
}

/// The hidden form field with the caller's session CSRF token (every
/// form that POSTs to a guarded page route carries it; see
/// `http::auth::check_csrf`). Empty for callers without a session.
pub fn csrf_field(p: &crate::http::auth::Principal) -> Markup {
    match p.caller().and_then(|c| c.csrf.clone()) {
        Some(t) => html! { input type="hidden" name=(crate::http::auth::CSRF_FIELD) value=(t); },
        None => html! {},
    }
}

/// `1.5 GiB`.
pub fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_by_the_templates() {
        let m = html! { p { ("<a href='x'>&\"") } };
        assert_eq!(m.into_string(), "<p>&lt;a href='x'&gt;&amp;&quot;</p>");
    }
}
