//! HTTP for the keys service: the setup wizard pages (`/setup…`,
//! server-rendered, no script) and the JSON endpoints (`/api/v1/setup…`,
//! `/api/v1/keys…`, `/api/v1/tokens`).
//!
//! Every response here carries `Cache-Control: no-store`. The page that
//! shows the master key is served once per setup: reloading it (or going
//! back to it) shows that the words are gone. Once the cluster exists, every
//! setup endpoint answers 409. Operator endpoints take HTTP Basic
//! credentials (any user name, the operator password), checked against the
//! Argon2id verifier in the genesis record, 5 failures per client per
//! minute at most.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use bzzz_crypto::operator::OperatorPassword;
use bzzz_proto::NodeId;
use bzzz_proto::api::ApiError;
use serde::Deserialize;
use serde_json::json;

use crate::api::esc;
use crate::keys::{KeysError, SetupParams};
use crate::node::AppState;

type S = State<Arc<AppState>>;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/setup", get(setup_page))
        .route("/setup/start", post(setup_start_form))
        .route("/setup/reveal", get(setup_reveal_page))
        .route("/setup/confirm", post(setup_confirm_form))
        .route("/setup/cancel", post(setup_cancel_form))
        .route("/api/v1/setup", post(api_setup))
        .route("/api/v1/setup/confirm", post(api_setup_confirm))
        .route("/api/v1/keys", get(api_keys))
        .route("/api/v1/keys/sign", post(api_sign))
        .route("/api/v1/tokens", post(api_tokens))
        .route("/api/v1/roles", get(api_roles).post(api_role_put))
        .route("/api/v1/admin/changes", post(api_admin_change))
        .route("/api/v1/registry", get(api_registry).post(api_registry_set))
        .route("/login", get(login_page).post(login_form))
        .route("/logout", post(logout_form))
        .route("/admin", get(admin_page))
        .route("/admin/token", post(admin_token_form))
}

const SESSION_COOKIE: &str = "bzzz_session";

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_owned())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub(crate) fn web_credential(st: &AppState, headers: &HeaderMap) -> Option<OperatorPassword> {
    session_id(headers).and_then(|id| st.keys.web_session(&id))
}

pub(crate) fn see_other(to: &'static str) -> Response {
    no_store(
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, HeaderValue::from_static(to))],
        )
            .into_response(),
    )
}

pub(crate) fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, max-age=0"),
    );
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

pub(crate) fn api_error(e: KeysError) -> Response {
    let code = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (code, axum::Json(ApiError { error: e.message })).into_response();
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"bzzz operator\""),
        );
    }
    no_store(r)
}

/// 409: once the cluster exists, every setup endpoint refuses.
fn setup_locked() -> Response {
    api_error(KeysError {
        status: 409,
        message: "this node is already initialized; setup is locked".into(),
    })
}

pub(crate) fn bad_request(msg: impl Into<String>) -> Response {
    api_error(KeysError {
        status: 422,
        message: msg.into(),
    })
}

pub(crate) fn json_ok(code: StatusCode, v: serde_json::Value) -> Response {
    no_store((code, axum::Json(v)).into_response())
}

/// The operator password from `Authorization: Basic …` (user name ignored).
fn operator_credential(headers: &HeaderMap) -> Option<OperatorPassword> {
    use base64::Engine as _;
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ")?;
    let decoded = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?,
    );
    let text = std::str::from_utf8(&decoded).ok()?;
    let (_, pw) = text.split_once(':')?;
    OperatorPassword::new(pw.to_owned()).ok()
}

pub(crate) async fn authorize(
    st: &AppState,
    peer: &SocketAddr,
    headers: &HeaderMap,
) -> Result<OperatorPassword, Response> {
    // A web UI session (cookie, SameSite=Strict) stands for the credential.
    if let Some(pw) = web_credential(st, headers) {
        return Ok(pw);
    }
    let cred = operator_credential(headers);
    let pw = cred.clone();
    st.keys
        .check_operator(&peer.ip().to_string(), cred)
        .await
        .map_err(api_error)?;
    pw.ok_or_else(|| bad_request("credential missing"))
}

/// An operator's JSON request: the credential checked, then the body
/// parsed (`what` names it in the error).
pub(crate) async fn operator_json<T: serde::de::DeserializeOwned>(
    st: &AppState,
    peer: &SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
    what: &str,
) -> Result<(OperatorPassword, T), Response> {
    let pw = authorize(st, peer, headers).await?;
    let v =
        serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid {what}: {e}")))?;
    Ok((pw, v))
}

// ---- JSON API ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetupBody {
    cluster: String,
    #[serde(default)]
    threshold: Option<u16>,
    #[serde(default)]
    shares: Option<u16>,
    operator_password: String,
    /// Recovery: the 24 words of an existing cluster's master key.
    #[serde(default)]
    mnemonic: Option<String>,
}

async fn api_setup(State(st): S, body: Bytes) -> Response {
    if st.keys.is_initialized() {
        return setup_locked();
    }
    let b: SetupBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(format!("invalid setup request: {e}")),
    };
    let password = match OperatorPassword::new_for_setup(b.operator_password) {
        Ok(p) => p,
        Err(e) => return bad_request(e.to_string()),
    };
    let recover_from = match b.mnemonic.map(zeroize::Zeroizing::new) {
        Some(words) => match bzzz_crypto::threshold::MasterKey::from_mnemonic(&words) {
            Ok(m) => Some(m),
            Err(e) => return bad_request(format!("mnemonic: {e}")),
        },
        None => None,
    };
    let params = SetupParams {
        cluster: b.cluster,
        threshold: b.threshold,
        shares: b.shares,
        operator_password: password,
        recover_from,
    };
    match st.keys.start_setup(params, true) {
        Ok(s) => json_ok(
            StatusCode::CREATED,
            serde_json::to_value(&s).unwrap_or_default(),
        ),
        Err(e) => api_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    setup_id: String,
    words: BTreeMap<String, String>,
}

async fn api_setup_confirm(State(st): S, body: Bytes) -> Response {
    if st.keys.is_initialized() {
        return setup_locked();
    }
    let b: ConfirmBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(format!("invalid confirm request: {e}")),
    };
    let mut words = BTreeMap::new();
    for (k, v) in b.words {
        match k.parse::<usize>() {
            Ok(p) if (1..=24).contains(&p) => {
                words.insert(p, v);
            }
            _ => return bad_request(format!("word position {k:?} is not 1 to 24")),
        }
    }
    match st.keys.confirm_setup(&b.setup_id, &words).await {
        Ok(d) => json_ok(StatusCode::OK, serde_json::to_value(&d).unwrap_or_default()),
        Err(e) => api_error(e),
    }
}

async fn api_keys(State(st): S) -> Response {
    json_ok(
        StatusCode::OK,
        serde_json::to_value(st.keys.status()).unwrap_or_default(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
    message: String,
    #[serde(default)]
    signers: Option<Vec<String>>,
}

async fn api_sign(
    State(st): S,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (pw, b): (_, SignBody) =
        match operator_json(&st, &peer, &headers, &body, "sign request").await {
            Ok(v) => v,
            Err(r) => return r,
        };
    if b.message.len() > 16 * 1024 {
        return bad_request("message longer than 16 KiB");
    }
    let signers = match b.signers {
        Some(list) => {
            let mut out = Vec::new();
            for s in list {
                match NodeId::parse(&s) {
                    Ok(id) => out.push(id),
                    Err(e) => return bad_request(format!("signer {s:?}: {e}")),
                }
            }
            Some(out)
        }
        None => None,
    };
    match st
        .keys
        .sign_message(b.message.into_bytes(), &pw, signers)
        .await
    {
        Ok(sig) => json_ok(
            StatusCode::OK,
            serde_json::to_value(&sig).unwrap_or_default(),
        ),
        Err(e) => api_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    uses: Option<u32>,
}

async fn api_tokens(
    State(st): S,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pw = match authorize(&st, &peer, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let b: TokenBody = if body.is_empty() {
        TokenBody {
            ttl_secs: None,
            uses: None,
        }
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return bad_request(format!("invalid token request: {e}")),
        }
    };
    let ttl = Duration::from_secs(b.ttl_secs.unwrap_or(3600));
    match st.keys.create_token(ttl, b.uses.unwrap_or(1), &pw).await {
        Ok((token, body)) => json_ok(
            StatusCode::CREATED,
            json!({ "token": token, "id": body.id, "expires_at": body.expires_at,
                    "uses": body.uses, "cluster": body.cluster }),
        ),
        Err(e) => api_error(e),
    }
}

// ---- admin changes (roles, rules) --------------------------------------------

fn no_control() -> Response {
    api_error(KeysError {
        status: 503,
        message: "the control plane is not running (is the cluster initialized?)".into(),
    })
}

/// Proposes a signed admin change; 200 when every node applies it, 422 when
/// the state machine refuses it (the reason names why), 503 without a
/// leader.
async fn propose_admin(
    control: &crate::control::Control,
    change: bzzz_proto::cluster::Signed,
) -> Response {
    match control
        .propose(bzzz_control::raft::Command::Admin { change })
        .await
    {
        Ok(r) => match r.rejected {
            Some(why) => bad_request(why),
            None => json_ok(StatusCode::OK, json!({ "applied": true })),
        },
        Err(e) => api_error(KeysError {
            status: 503,
            message: e,
        }),
    }
}

async fn api_roles(State(st): S) -> Response {
    match st.control.get() {
        Some(c) => json_ok(StatusCode::OK, json!(c.state().roles)),
        None => no_control(),
    }
}

/// `POST /api/v1/roles` (operator): a role definition; signs an admin
/// change with the cluster key (threshold) and commits it.
async fn api_role_put(
    State(st): S,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (pw, role): (_, bzzz_proto::cluster::RoleDef) =
        match operator_json(&st, &peer, &headers, &body, "role").await {
            Ok(v) => v,
            Err(r) => return r,
        };
    if let Err(e) = role.validate() {
        return bad_request(e);
    }
    let Some(control) = st.control.get().cloned() else {
        return no_control();
    };
    let Some(cluster) = st.keys.cluster() else {
        return api_error(KeysError {
            status: 409,
            message: "the cluster is not initialized yet".into(),
        });
    };
    // A seq after every applied change, and time-ordered across proposers.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let change = bzzz_proto::cluster::AdminChange {
        v: bzzz_proto::cluster::RECORD_VERSION,
        cluster: cluster.genesis.cluster.clone(),
        seq: now_ms.max(control.state().admin_seq + 1),
        issued_at: crate::keys::unix_now(),
        action: bzzz_proto::cluster::AdminAction::PutRole { role },
    };
    let signed = match st.keys.sign_admin_change(&change, &pw).await {
        Ok(s) => s,
        Err(e) => return api_error(e),
    };
    propose_admin(&control, signed).await
}

/// `POST /api/v1/admin/changes` (operator): commits an already signed admin
/// change (`{"body": …, "signature": …}`) as is. Every node checks the
/// signature when applying it; an unsigned or forged one is refused (422).
async fn api_admin_change(
    State(st): S,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, change): (_, bzzz_proto::cluster::Signed) =
        match operator_json(&st, &peer, &headers, &body, "signed change").await {
            Ok(v) => v,
            Err(r) => return r,
        };
    match st.control.get() {
        Some(c) => propose_admin(c, change).await,
        None => no_control(),
    }
}

/// `GET /api/v1/registry`: the cluster's key-value registry (operations
/// data, replicated through Raft).
async fn api_registry(State(st): S) -> Response {
    match st.control.get() {
        Some(c) => json_ok(StatusCode::OK, json!(c.state().kv)),
        None => no_control(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistrySet {
    key: String,
    value: String,
}

/// `POST /api/v1/registry` (operator): sets a key; 200 only once the write
/// is committed by a quorum (acknowledged), 503 when no quorum is reachable.
async fn api_registry_set(
    State(st): S,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, b): (_, RegistrySet) =
        match operator_json(&st, &peer, &headers, &body, "registry write").await {
            Ok(v) => v,
            Err(r) => return r,
        };
    let Some(c) = st.control.get() else {
        return no_control();
    };
    match c
        .propose(bzzz_control::raft::Command::Set {
            key: b.key,
            value: b.value,
        })
        .await
    {
        Ok(r) => match r.rejected {
            Some(why) => bad_request(why),
            None => json_ok(
                StatusCode::OK,
                json!({ "committed": true, "previous": r.previous }),
            ),
        },
        Err(e) => api_error(KeysError {
            status: 503,
            message: e,
        }),
    }
}

// ---- wizard pages --------------------------------------------------------------

pub(crate) fn page(code: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>BZZZ — {t}</title>
<meta name="referrer" content="no-referrer">
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:46rem;color:#222}}
label{{display:block;margin:.6rem 0 .2rem}}input{{padding:.3rem;font-size:1rem}}
.warn{{background:#fff3cd;border:1px solid #e0c36b;padding:.8rem}}.err{{background:#fde2e1;border:1px solid #d99;padding:.8rem}}
ol#mnemonic{{columns:4;font-family:monospace;font-size:1.1rem;background:#f6f6f6;padding:1rem 1rem 1rem 2.5rem}}
code{{word-break:break-all}}button{{margin-top:1rem;padding:.4rem 1rem;font-size:1rem}}</style></head>
<body><h1>{t}</h1>{body}</body></html>"#,
        t = esc(title),
    );
    no_store((code, Html(html)).into_response())
}

fn initialized_page(st: &AppState, code: StatusCode) -> Response {
    let s = st.keys.status();
    page(
        code,
        "Cluster initialized",
        &format!(
            r#"<p id="setup-state" data-state="initialized">This node belongs to cluster <b id="cluster-name">{}</b>. Setup is locked: the master key was shown once and is not kept anywhere.</p>
<p>Cluster admin public key: <code id="admin-public-key">{}</code></p>
<p>Admin signatures need <b>{}</b> of <b>{}</b> shares. This node holds share {}.</p>
<p><a href="/">Cluster overview</a> · <a id="login-link" href="/login">Operator login</a></p>"#,
            esc(s.cluster.as_deref().unwrap_or("")),
            esc(s.admin_public_key.as_deref().unwrap_or("")),
            s.threshold.unwrap_or(0),
            s.shares.unwrap_or(0),
            s.share_index
                .map(|i| format!("#{i}"))
                .unwrap_or_else(|| "none".into()),
        ),
    )
}

fn confirm_form(setup_id: &str, positions: &[usize]) -> String {
    let mut inputs = String::new();
    for p in positions {
        let _ = write!(
            inputs,
            r#"<label for="w{p}">Word #{p}</label><input id="w{p}" name="w{p}" autocomplete="off" autocapitalize="none" spellcheck="false" required>"#
        );
    }
    format!(
        r#"<form id="confirm-form" method="post" action="/setup/confirm">
<input type="hidden" name="setup_id" value="{}">{inputs}
<br><button id="confirm" type="submit">Confirm and create the cluster</button></form>"#,
        esc(setup_id)
    )
}

const START_OVER: &str = r#"<form method="post" action="/setup/cancel"><button id="start-over" type="submit">Start over with a new master key</button></form>"#;

async fn setup_page(State(st): S) -> Response {
    if st.keys.is_initialized() {
        return initialized_page(&st, StatusCode::OK);
    }
    if let Some((id, positions)) = st.keys.pending_positions() {
        return page(
            StatusCode::OK,
            "Confirm the master key",
            &format!(
                r#"<p id="setup-state" data-state="pending">A setup is in progress. Its master key was already shown and cannot be shown again. Re-type the requested words from your copy, or start over.</p>{}{}"#,
                confirm_form(&id, &positions),
                START_OVER
            ),
        );
    }
    let n = st.net.snapshot().peers.len() + 1;
    let t = bzzz_proto::cluster::default_threshold(n as u16);
    page(
        StatusCode::OK,
        "Set up your BZZZ cluster",
        &format!(
            r#"<p id="setup-state" data-state="new">{n} node(s) are present (this one and its peers). Each will hold one share of the cluster admin key; any <i>t</i> of them can sign for it.</p>
<form id="setup-form" method="post" action="/setup/start">
<label for="cluster">Cluster name</label><input id="cluster" name="cluster" required pattern="[a-z0-9_-]{{1,63}}" value="bzzz">
<label for="shares">Shares (n, one per node)</label><input id="shares" name="shares" type="number" min="1" max="{n}" value="{n}">
<label for="threshold">Threshold (t of n)</label><input id="threshold" name="threshold" type="number" min="1" max="{n}" value="{t}">
<label for="password">Operator password (at least 12 characters; for logging in later)</label><input id="password" name="password" type="password" minlength="12" required autocomplete="new-password">
<label for="password2">Operator password again</label><input id="password2" name="password2" type="password" minlength="12" required autocomplete="new-password">
<br><button id="start" type="submit">Generate the master key</button></form>"#
        ),
    )
}

#[derive(Deserialize)]
struct StartForm {
    cluster: String,
    #[serde(default)]
    shares: String,
    #[serde(default)]
    threshold: String,
    password: String,
    password2: String,
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

async fn setup_start_form(State(st): S, body: Bytes) -> Response {
    if st.keys.is_initialized() {
        return initialized_page(&st, StatusCode::CONFLICT);
    }
    let back = r#"<p><a href="/setup">Back</a></p>"#;
    let f: StartForm = match serde_urlencoded_from(&body) {
        Ok(f) => f,
        Err(e) => {
            return page(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Setup",
                &format!(r#"<p class="err">{}</p>{back}"#, esc(&e)),
            );
        }
    };
    let fail = |m: String| {
        page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Setup",
            &format!(r#"<p class="err" id="error">{}</p>{back}"#, esc(&m)),
        )
    };
    if f.password != f.password2 {
        return fail("the two passwords differ".into());
    }
    let (shares, threshold) = match (
        opt_num(&f.shares, "shares"),
        opt_num(&f.threshold, "threshold"),
    ) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    let password = match OperatorPassword::new_for_setup(f.password) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    let params = SetupParams {
        cluster: f.cluster.trim().to_owned(),
        threshold,
        shares,
        operator_password: password,
        recover_from: None,
    };
    match st.keys.start_setup(params, false) {
        Ok(_) => no_store(
            (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, HeaderValue::from_static("/setup/reveal"))],
            )
                .into_response(),
        ),
        Err(e) if e.status == 409 => initialized_page(&st, StatusCode::CONFLICT),
        Err(e) => fail(e.message),
    }
}

fn serde_urlencoded_from<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_urlencoded::from_bytes(body).map_err(|e| format!("invalid form: {e}"))
}

async fn setup_reveal_page(State(st): S) -> Response {
    if st.keys.is_initialized() {
        return initialized_page(&st, StatusCode::GONE);
    }
    match st.keys.reveal_pending() {
        Ok(s) => {
            let mut words = String::new();
            for w in s.mnemonic.split(' ') {
                let _ = write!(words, "<li>{}</li>", esc(w));
            }
            page(
                StatusCode::OK,
                "Your master key",
                &format!(
                    r#"<div class="warn"><b>Write these 24 words down now, on paper, in order.</b> They are shown <b>once</b>: this page cannot be shown again, and BZZZ never stores them. Anyone who has them controls cluster <b>{cluster}</b>; without them, a lost cluster cannot be recovered.</div>
<ol id="mnemonic">{words}</ol>
<p>The same key in hex: <code id="master-hex">{hex}</code></p>
<p>Admin public key (derived): <code>{pk}</code></p>
<p>To continue, re-type the requested words from your copy.</p>{form}{start_over}"#,
                    cluster = esc(&s.cluster),
                    hex = esc(&s.master_key_hex),
                    pk = esc(&s.admin_public_key),
                    form = confirm_form(&s.setup_id, &s.confirm_positions),
                    start_over = START_OVER,
                ),
            )
        }
        Err(e) if e.status == 410 => {
            let form = st
                .keys
                .pending_positions()
                .map(|(id, p)| confirm_form(&id, &p))
                .unwrap_or_default();
            page(
                StatusCode::GONE,
                "Master key already shown",
                &format!(
                    r#"<p class="err" id="words-gone">The master key was already shown and cannot be shown again. Re-type the requested words from your copy, or start over if you did not write them down.</p>{form}{START_OVER}"#
                ),
            )
        }
        Err(e) => page(
            StatusCode::NOT_FOUND,
            "No setup in progress",
            &format!(
                r#"<p class="err" id="error">{}</p><p><a href="/setup">Start a setup</a></p>"#,
                esc(&e.message)
            ),
        ),
    }
}

async fn setup_confirm_form(State(st): S, body: Bytes) -> Response {
    if st.keys.is_initialized() {
        return initialized_page(&st, StatusCode::CONFLICT);
    }
    let form: BTreeMap<String, String> = match serde_urlencoded_from(&body) {
        Ok(f) => f,
        Err(e) => return page(StatusCode::UNPROCESSABLE_ENTITY, "Setup", &esc(&e)),
    };
    let setup_id = form.get("setup_id").cloned().unwrap_or_default();
    let words: BTreeMap<usize, String> = form
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix('w')?.parse().ok()?, v.clone())))
        .collect();
    match st.keys.confirm_setup(&setup_id, &words).await {
        Ok(_) => no_store(
            (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, HeaderValue::from_static("/setup"))],
            )
                .into_response(),
        ),
        Err(e) => {
            let form = st
                .keys
                .pending_positions()
                .map(|(id, p)| confirm_form(&id, &p))
                .unwrap_or_default();
            page(
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
                "Confirm the master key",
                &format!(
                    r#"<p class="err" id="error">{}</p>{form}{START_OVER}"#,
                    esc(&e.message)
                ),
            )
        }
    }
}

async fn setup_cancel_form(State(st): S) -> Response {
    if st.keys.is_initialized() {
        return initialized_page(&st, StatusCode::CONFLICT);
    }
    st.keys.cancel_setup();
    no_store(
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, HeaderValue::from_static("/setup"))],
        )
            .into_response(),
    )
}

// ---- operator login and admin page ----------------------------------------------

async fn login_page(State(st): S) -> Response {
    if !st.keys.is_initialized() {
        return see_other("/setup");
    }
    page(StatusCode::OK, "Operator login", LOGIN_FORM)
}

const LOGIN_FORM: &str = r#"<form id="login-form" method="post" action="/login">
<label for="password">Operator password</label><input id="password" name="password" type="password" required autocomplete="current-password">
<br><button id="login" type="submit">Log in</button></form>"#;

#[derive(Deserialize)]
struct LoginForm {
    password: String,
}

async fn login_form(
    State(st): S,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let f: LoginForm = match serde_urlencoded_from(&body) {
        Ok(f) => f,
        Err(e) => return page(StatusCode::UNPROCESSABLE_ENTITY, "Operator login", &esc(&e)),
    };
    let pw = match OperatorPassword::new(f.password) {
        Ok(p) => p,
        Err(e) => {
            return page(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Operator login",
                &esc(&e.to_string()),
            );
        }
    };
    if let Err(e) = st
        .keys
        .check_operator(&peer.ip().to_string(), Some(pw.clone()))
        .await
    {
        let code = StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNAUTHORIZED);
        return page(
            code,
            "Operator login",
            &format!(
                r#"<p class="err" id="error">{}</p>{LOGIN_FORM}"#,
                esc(&e.message)
            ),
        );
    }
    let id = match st.keys.open_web_session(pw) {
        Ok(id) => id,
        Err(e) => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Operator login",
                &esc(&e.message),
            );
        }
    };
    let mut r = see_other("/admin");
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        crate::keys::WEB_SESSION_TTL.as_secs()
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

fn admin_body(st: &AppState, extra: &str) -> String {
    let s = st.keys.status();
    format!(
        r#"<p>Cluster <b>{}</b>, admin public key <code>{}</code>; admin signatures need {} of {} shares.</p>
{extra}
<h2>Add nodes</h2>
<p><a id="deploy-link" href="/deploy">Deploy to machines over SSH</a> (BZZZ installs itself and joins them), or create a token for a node you install yourself:</p>
<form id="token-form" method="post" action="/admin/token">
<label for="ttl">Valid for (minutes)</label><input id="ttl" name="ttl_minutes" type="number" min="1" max="43200" value="60">
<label for="uses">Nodes that may use it</label><input id="uses" name="uses" type="number" min="1" max="100" value="1">
<br><button id="create-token" type="submit">Create a join token</button></form>
<p>On the new node: <code>bzzz node run --join-token-file FILE</code>.</p>
<form method="post" action="/logout"><button id="logout" type="submit">Log out</button></form>"#,
        esc(s.cluster.as_deref().unwrap_or("")),
        esc(s.admin_public_key.as_deref().unwrap_or("")),
        s.threshold.unwrap_or(0),
        s.shares.unwrap_or(0),
    )
}

async fn admin_page(State(st): S, headers: HeaderMap) -> Response {
    if web_credential(&st, &headers).is_none() {
        return see_other("/login");
    }
    page(
        StatusCode::OK,
        "Cluster administration",
        &admin_body(&st, ""),
    )
}

#[derive(Deserialize)]
struct TokenForm {
    ttl_minutes: u64,
    uses: u32,
}

async fn admin_token_form(State(st): S, headers: HeaderMap, body: Bytes) -> Response {
    let Some(pw) = web_credential(&st, &headers) else {
        return see_other("/login");
    };
    let f: TokenForm = match serde_urlencoded_from(&body) {
        Ok(f) => f,
        Err(e) => {
            return page(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Cluster administration",
                &admin_body(
                    &st,
                    &format!(r#"<p class="err" id="error">{}</p>"#, esc(&e)),
                ),
            );
        }
    };
    let ttl = Duration::from_secs(f.ttl_minutes.saturating_mul(60));
    match st.keys.create_token(ttl, f.uses, &pw).await {
        Ok((token, body)) => page(
            StatusCode::OK,
            "Cluster administration",
            &admin_body(
                &st,
                &format!(
                    r#"<div class="warn">Join token (shown once; valid until unix time {}, for {} node(s)):<br><code id="token">{}</code></div>"#,
                    body.expires_at,
                    body.uses,
                    esc(&token)
                ),
            ),
        ),
        Err(e) => page(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_GATEWAY),
            "Cluster administration",
            &admin_body(
                &st,
                &format!(r#"<p class="err" id="error">{}</p>"#, esc(&e.message)),
            ),
        ),
    }
}
