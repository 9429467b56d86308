//! The setup wizard (`/setup…`, server-rendered, no script). The page that
//! shows the master key is served once per setup: reloading it (or going
//! back to it) shows that the words are gone. Once the cluster exists,
//! every setup page says so (409 for the forms).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use bzzz_crypto::operator::OperatorPassword;
use bzzz_keys::{ErrorKind, SetupParams};
use maud::{Markup, html};

use super::layout;
use crate::http::{Permission, Route, Shared, see_other};

type S = State<Shared>;

/// The cookie that binds a setup started in the wizard to the browser
/// that started it: only that browser sees the words (`/setup/reveal`),
/// the confirm form and may start over. A setup started by the CLI
/// (`bzzz init`) has no browser: the wizard only says one is under way.
pub const SETUP_COOKIE: &str = "bzzz_setup";

/// Whether the pending setup was started in the wizard (it belongs to a
/// browser: no one else may replace it).
pub fn started_in_a_browser(st: &Shared) -> bool {
    let Some((pending, _)) = st.keys.pending_positions() else {
        return false;
    };
    st.access
        .setup_owner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(|(id, _)| *id == pending)
}

/// Whether this request comes from the browser that started the pending
/// setup.
fn owns_setup(st: &Shared, headers: &HeaderMap) -> bool {
    let Some((pending, _)) = st.keys.pending_positions() else {
        return false;
    };
    let owner = st
        .access
        .setup_owner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match (owner, crate::http::auth::cookie(headers, SETUP_COOKIE)) {
        (Some((id, hash)), Some(c)) => {
            id == pending
                && bool::from(subtle::ConstantTimeEq::ct_eq(
                    &hash[..],
                    &st.access.setup_cookie_hash(&c)[..],
                ))
        }
        _ => false,
    }
}

fn not_yours() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Setup in progress elsewhere",
        html! {
            p class="err" id="error" {
                "A setup is under way, started in another browser or by the CLI: only there are the words shown and confirmed. Finish or start over there."
            }
        },
    )
}

pub fn routes() -> Vec<Route> {
    use Permission::Setup;
    vec![
        Route::page(Method::GET, "/setup", Setup, get(setup_page)),
        Route::page(Method::POST, "/setup/start", Setup, post(setup_start_form)),
        Route::page(Method::GET, "/setup/reveal", Setup, get(setup_reveal_page)),
        Route::page(
            Method::POST,
            "/setup/confirm",
            Setup,
            post(setup_confirm_form),
        ),
        Route::page(
            Method::POST,
            "/setup/cancel",
            Setup,
            post(setup_cancel_form),
        ),
    ]
}

fn page(code: StatusCode, title: &str, content: Markup) -> Response {
    layout(code, "/setup", title, content)
}

fn initialized_page(st: &Shared, code: StatusCode) -> Response {
    let s = st.keys.status();
    page(
        code,
        "Cluster initialized",
        html! {
            p id="setup-state" data-state="initialized" {
                "This node belongs to cluster " b id="cluster-name" { (s.cluster.as_deref().unwrap_or("")) }
                ". Setup is locked: the master key was shown once and is not kept anywhere."
            }
            p { "Cluster admin public key: " code id="admin-public-key" { (s.admin_public_key.as_deref().unwrap_or("")) } }
            p {
                "Admin signatures need " b { (s.threshold.unwrap_or(0)) } " of " b { (s.shares.unwrap_or(0)) }
                " shares. This node holds share "
                (s.share_index.map(|i| format!("#{i}")).unwrap_or_else(|| "none".into())) "."
            }
            p { a href="/" { "Cluster overview" } " · " a id="login-link" href="/login" { "Operator login" } }
        },
    )
}

fn confirm_form(setup_id: &str, positions: &[usize]) -> Markup {
    html! {
        form id="confirm-form" method="post" action="/setup/confirm" {
            input type="hidden" name="setup_id" value=(setup_id);
            @for p in positions {
                label for=(format!("w{p}")) { "Word #" (p) }
                input id=(format!("w{p}")) name=(format!("w{p}")) autocomplete="off" autocapitalize="none" spellcheck="false" required;
            }
            br;
            button id="confirm" type="submit" { "Confirm and create the cluster" }
        }
    }
}

fn start_over() -> Markup {
    html! {
        form method="post" action="/setup/cancel" {
            button id="start-over" type="submit" { "Start over with a new master key" }
        }
    }
}

fn pending_form(st: &Shared) -> Markup {
    match st.keys.pending_positions() {
        Some((id, p)) => confirm_form(&id, &p),
        None => html! {},
    }
}

async fn setup_page(State(st): S, headers: HeaderMap) -> Response {
    if st.keys.is_initialized() {
        return initialized_page(&st, StatusCode::OK);
    }
    if st.keys.pending_positions().is_some() && !owns_setup(&st, &headers) {
        return page(
            StatusCode::OK,
            "Setup in progress",
            html! {
                p id="setup-state" data-state="pending-elsewhere" {
                    "A setup is under way, started in another browser or by the CLI. Its words are shown and confirmed only there."
                }
            },
        );
    }
    if let Some((id, positions)) = st.keys.pending_positions() {
        return page(
            StatusCode::OK,
            "Confirm the master key",
            html! {
                p id="setup-state" data-state="pending" {
                    "A setup is in progress. Its master key was already shown and cannot be shown again. Re-type the requested words from your copy, or start over."
                }
                (confirm_form(&id, &positions))
                (start_over())
            },
        );
    }
    let snap = st.net.snapshot();
    let n = snap.peers.len() + 1;
    page(
        StatusCode::OK,
        "Set up your BZZZ cluster",
        html! {
            p id="setup-state" data-state="new" {
                "This node holds a share of the cluster admin key. Tick the other nodes you trust to hold one: any "
                i { "t" } " holders can sign for the key. A node you do not tick gets nothing now (it can join later with a join token)."
            }
            form id="setup-form" method="post" action="/setup/start" {
                label for="cluster" { "Cluster name" }
                input id="cluster" name="cluster" required pattern="[a-z0-9_-]{1,63}" value="bzzz";
                fieldset id="holders" {
                    legend { "Share holders (" (n - 1) " other node(s) in view)" }
                    p { "This node: " code { (st.keys.node_id()) } }
                    @for (i, p) in snap.peers.iter().enumerate() {
                        @let a = &p.announcement;
                        @let addr = a.api_addr.clone().or_else(|| a.addrs.first().cloned()).unwrap_or_default();
                        div {
                            input type="checkbox" id=(format!("holder-{i}")) name="holder" value=(a.node_id) data-node=(a.node_id);
                            label for=(format!("holder-{i}")) {
                                code { (a.node_id) } " at " (addr)
                                @if !p.proven { " (not a proven member)" }
                            }
                        }
                    }
                }
                label for="shares" { "Shares (n) [default: this node and each ticked one]" }
                input id="shares" name="shares" type="number" min="1" max=(n);
                label for="threshold" { "Threshold (t of n) [default: a majority]" }
                input id="threshold" name="threshold" type="number" min="1" max=(n);
                label for="password" { "Operator password (at least 12 characters; for logging in later)" }
                input id="password" name="password" type="password" minlength="12" required autocomplete="new-password";
                label for="password2" { "Operator password again" }
                input id="password2" name="password2" type="password" minlength="12" required autocomplete="new-password";
                br;
                button id="start" type="submit" { "Generate the master key" }
            }
        },
    )
}

#[derive(Default)]
struct StartForm {
    cluster: String,
    shares: String,
    threshold: String,
    /// Ticked holders (node ids); the field repeats.
    holders: Vec<String>,
    password: String,
    password2: String,
}

impl StartForm {
    fn parse(body: &[u8]) -> Result<Self, String> {
        let pairs: Vec<(String, String)> = form(body)?;
        let mut f = StartForm::default();
        for (k, v) in pairs {
            match k.as_str() {
                "cluster" => f.cluster = v,
                "shares" => f.shares = v,
                "threshold" => f.threshold = v,
                "holder" if f.holders.len() < 256 => f.holders.push(v),
                "holder" => return Err("at most 256 holders".into()),
                "password" => f.password = v,
                "password2" => f.password2 = v,
                _ => {}
            }
        }
        if f.cluster.is_empty() || f.password.is_empty() {
            return Err("invalid form: the cluster name and password are required".into());
        }
        Ok(f)
    }
}

fn opt_num(s: &str, what: &str) -> Result<Option<u16>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("{what} must be a whole number"))
}

/// Parses a form body.
pub(crate) fn form<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_urlencoded::from_bytes(body).map_err(|e| format!("invalid form: {e}"))
}

fn fail(m: &str) -> Response {
    page(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Setup",
        html! {
            p class="err" id="error" { (m) }
            p { a href="/setup" { "Back" } }
        },
    )
}

async fn setup_start_form(
    State(st): S,
    secure: Option<axum::Extension<crate::http::serve::Secure>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if st.keys.is_initialized() {
        return initialized_page(&st, StatusCode::CONFLICT);
    }
    // Another browser's setup is not replaced (its starter may start over).
    if started_in_a_browser(&st) && !owns_setup(&st, &headers) {
        return not_yours();
    }
    let f = match StartForm::parse(&body) {
        Ok(f) => f,
        Err(e) => return fail(&e),
    };
    let mut holders = Vec::new();
    for h in &f.holders {
        match h.parse::<bzzz_proto::NodeId>() {
            Ok(id) => holders.push(id),
            Err(e) => return fail(&format!("holder {h:?}: {e}")),
        }
    }
    if f.password != f.password2 {
        return fail("the two passwords differ");
    }
    let (shares, threshold) = match (
        opt_num(&f.shares, "shares"),
        opt_num(&f.threshold, "threshold"),
    ) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) | (_, Err(e)) => return fail(&e),
    };
    let password = match OperatorPassword::new_for_setup(f.password) {
        Ok(p) => p,
        Err(e) => return fail(&e.to_string()),
    };
    let params = SetupParams {
        cluster: f.cluster.trim().to_owned(),
        threshold,
        shares,
        holders,
        operator_password: password,
        recover_from: None,
    };
    match st.keys.start_setup(params, false) {
        Ok(started) => {
            let mut secret = [0u8; 32];
            if getrandom::fill(&mut secret).is_err() {
                st.keys.cancel_setup();
                return fail("no randomness for the setup cookie");
            }
            let cookie = hex::encode(secret);
            *st.access
                .setup_owner
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some((
                started.setup_id.clone(),
                st.access.setup_cookie_hash(&cookie),
            ));
            let mut r = see_other("/setup/reveal");
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{SETUP_COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/setup{}",
                if secure.is_some() { "; Secure" } else { "" }
            )) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) if e.kind == ErrorKind::Conflict => initialized_page(&st, StatusCode::CONFLICT),
        Err(e) => fail(&e.message),
    }
}

async fn setup_reveal_page(State(st): S, headers: HeaderMap) -> Response {
    if st.keys.is_initialized() {
        return initialized_page(&st, StatusCode::GONE);
    }
    if st.keys.pending_positions().is_some() && !owns_setup(&st, &headers) {
        return not_yours();
    }
    match st.keys.reveal_pending() {
        Ok(s) => page(
            StatusCode::OK,
            "Your master key",
            html! {
                div class="warn" {
                    b { "Write these 24 words down now, on paper, in order." }
                    " They are shown " b { "once" } ": this page cannot be shown again, and BZZZ never stores them. Anyone who has them controls cluster "
                    b { (s.cluster) } "; without them, a lost cluster cannot be recovered."
                }
                ol id="mnemonic" { @for w in s.mnemonic.expose().split(' ') { li { (w) } } }
                p { "The same key in hex: " code id="master-hex" { (s.master_key_hex.expose()) } }
                p { "Admin public key (derived): " code { (s.admin_public_key) } }
                p { "To continue, re-type the requested words from your copy." }
                (confirm_form(&s.setup_id, &s.confirm_positions))
                (start_over())
            },
        ),
        Err(e) if e.kind == ErrorKind::Gone => page(
            StatusCode::GONE,
            "Master key already shown",
            html! {
                p class="err" id="words-gone" {
                    "The master key was already shown and cannot be shown again. Re-type the requested words from your copy, or start over if you did not write them down."
                }
                (pending_form(&st))
                (start_over())
            },
        ),
        Err(e) => page(
            StatusCode::NOT_FOUND,
            "No setup in progress",
            html! {
                p class="err" id="error" { (e.message) }
                p { a href="/setup" { "Start a setup" } }
            },
        ),
    }
}

async fn setup_confirm_form(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    if st.keys.is_initialized() {
        return initialized_page(&st, StatusCode::CONFLICT);
    }
    if st.keys.pending_positions().is_some() && !owns_setup(&st, &headers) {
        return not_yours();
    }
    let fields: BTreeMap<String, String> = match form(&body) {
        Ok(f) => f,
        Err(e) => return fail(&e),
    };
    let setup_id = fields.get("setup_id").cloned().unwrap_or_default();
    let words: BTreeMap<usize, String> = fields
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix('w')?.parse().ok()?, v.clone())))
        .collect();
    match st.keys.confirm_setup(&setup_id, &words).await {
        Ok(_) => see_other("/setup"),
        Err(e) => page(
            crate::http::status_of_kind(e.kind),
            "Confirm the master key",
            html! {
                p class="err" id="error" { (e.message) }
                (pending_form(&st))
                (start_over())
            },
        ),
    }
}

async fn setup_cancel_form(State(st): S, headers: HeaderMap) -> Response {
    if st.keys.is_initialized() {
        return initialized_page(&st, StatusCode::CONFLICT);
    }
    if st.keys.pending_positions().is_some() && !owns_setup(&st, &headers) {
        return not_yours();
    }
    st.keys.cancel_setup();
    see_other("/setup")
}
