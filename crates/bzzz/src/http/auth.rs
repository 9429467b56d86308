//! The guard in front of every route: who is calling ([`crate::access`]),
//! what the request does (the route's [`Permission`]: an action on the
//! resource the request names), and the one decision
//! ([`bzzz_proto::access::decide`]). 401 without a credential (with
//! `WWW-Authenticate: Bearer`, never `Basic`: a browser must not cache a
//! password a hostile page could then ride on), 403 naming the missing
//! permission as `action` on `resource`.
//!
//! Cross-site requests: a state-changing API request must carry
//! `Content-Type: application/json` (a hostile page cannot send that
//! without a CORS preflight, which this server never grants), and a
//! request whose `Origin` names another host is refused.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bzzz_proto::access::{Action, Decision, Resource, decide};
use serde_json::json;

use super::{ApiError, Kind, Permission, Res, Shared};
use crate::access::Caller;

/// The web UI session cookie.
pub const SESSION_COOKIE: &str = "bzzz_session";

/// The caller of a request, as the guard established it.
#[derive(Debug, Clone)]
pub enum Principal {
    Anonymous,
    Caller(Arc<Caller>),
}

impl Principal {
    /// The audit log's name of the caller.
    pub fn id(&self) -> &str {
        match self {
            Principal::Anonymous => "anonymous",
            Principal::Caller(c) => &c.id,
        }
    }

    pub fn caller(&self) -> Option<&Caller> {
        match self {
            Principal::Anonymous => None,
            Principal::Caller(c) => Some(c),
        }
    }
}

/// Extractor for handlers whose work the threshold signers approve: the
/// operator's key, derived from the checked operator password (user
/// `admin`); the signers check its authorization themselves, so an API
/// key cannot stand in for it.
#[derive(Debug)]
pub struct Operator(pub bzzz_keys::OperatorKey);

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.extensions.get::<Principal>() {
            Some(Principal::Caller(c)) => match &c.operator {
                Some(pw) => Ok(Self(pw.clone())),
                None => Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "this action is signed by the cluster admin key, whose signers check the operator's authorization: use the operator credential (user admin)",
                )),
            },
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "operator credential required",
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Principal>()
            .cloned()
            .unwrap_or(Principal::Anonymous))
    }
}

/// The value of cookie `name`, if it comes exactly once: a request with
/// two has none (another service on this host could plant one with a
/// narrower path to shadow the real one).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned());
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// The session id from the cookie (64 hex digits), if any.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    cookie(headers, SESSION_COOKIE)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The client address (for rate limits); "unknown" where the server did
/// not record it.
pub fn client_of(req_ext: &axum::http::Extensions) -> String {
    req_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Establishes the caller (see [`crate::access::Access::resolve`]). A
/// credential that fails is an error, never anonymous.
pub async fn principal(
    st: &crate::state::AppState,
    client: &str,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    Ok(match st.access.resolve(st, client, headers).await? {
        Some(c) => Principal::Caller(Arc::new(c)),
        None => Principal::Anonymous,
    })
}

/// What the guard of one route knows.
#[derive(Debug, Clone)]
pub struct Guard {
    pub state: Shared,
    pub permission: Permission,
    pub kind: Kind,
    pub body_limit: usize,
    pub json_body: bool,
    /// How a refused page request is answered.
    pub page_refusal: super::PageRefusal,
}

/// 403 naming the permission that is missing.
pub fn forbidden(action: Action, resource: &Resource, d: &Decision) -> ApiError {
    ApiError::forbidden(action, resource, &d.rule)
}

/// Whether `caller` may do `action` on `resource` by the roles in force.
pub fn decide_for(
    st: &crate::state::AppState,
    roles: &[String],
    action: Action,
    resource: &Resource,
) -> Decision {
    match st.control.get() {
        Some(c) => c.with_state(|s| decide(roles, &s.roles, action, resource)),
        None => decide(roles, &Default::default(), action, resource),
    }
}

/// Whether `p` may read the cluster's state (what public routes show in
/// full to members; anonymous callers get less). Before setup no
/// principal exists and everything is open.
pub fn reads_cluster(st: &crate::state::AppState, p: &Principal) -> bool {
    if !st.keys.is_initialized() {
        return true;
    }
    p.caller().is_some_and(|c| {
        decide_for(
            st,
            &c.roles,
            Action::Read,
            &Resource::Fixed(bzzz_proto::access::Fixed::Cluster),
        )
        .allowed
    })
}

/// Checks `action` on `resource` for a principal inside a handler (for
/// resources only the handler knows); counts a refusal for the audit log.
pub fn authorize(
    st: &crate::state::AppState,
    p: &Principal,
    action: Action,
    resource: &Resource,
) -> Result<(), ApiError> {
    let Some(c) = p.caller() else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "credential required",
        ));
    };
    let d = decide_for(st, &c.roles, action, resource);
    if d.allowed {
        return Ok(());
    }
    st.access
        .deny(&c.id, action.as_str(), &resource.to_string());
    Err(forbidden(action, resource, &d))
}

/// Methods that change something (cross-site checks apply).
fn changes(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a request comes from another site's page: `Sec-Fetch-Site`
/// (sent by current browsers) says `cross-site` or `same-site`, or an
/// `Origin` names another host. (`Origin: null`, which pages under
/// `no-referrer` send for their own forms, is left to `Sec-Fetch-Site`;
/// the session cookie is `SameSite=Strict` besides.)
fn cross_origin(headers: &HeaderMap) -> bool {
    let text = |h| {
        headers
            .get(h)
            .and_then(|v: &axum::http::HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text(axum::http::HeaderName::from_static("sec-fetch-site"))
        && !matches!(site, "same-origin" | "none")
    {
        return true;
    }
    let Some(origin) = text(header::ORIGIN).filter(|o| *o != "null") else {
        return false;
    };
    let host = text(header::HOST).unwrap_or("");
    let o = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    o != host || host.is_empty()
}

/// Whether the `Host` header names this machine: an IP address,
/// `localhost`, or its host name. Setup (before any credential exists)
/// answers only then, so a page under another DNS name that resolves here
/// (DNS rebinding) cannot drive it from the operator's browser.
pub fn host_is_this_machine(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        // HTTP/1.0 without Host: not a browser page.
        return true;
    };
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    if name.parse::<std::net::IpAddr>().is_ok() || name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    static ME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ME.get_or_init(|| sysinfo::System::host_name().ok())
        .as_deref()
        .is_some_and(|me| {
            let me = me.trim_end_matches('.');
            let name = name.trim_end_matches('.');
            !me.is_empty()
                && (name.eq_ignore_ascii_case(me)
                    || me
                        .split('.')
                        .next()
                        .is_some_and(|short| name.eq_ignore_ascii_case(short)))
        })
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// The guard in front of every handler: checks the route's permission and
/// puts the [`Principal`] into the request.
pub async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let openai = req.uri().path().starts_with("/v1/");
    match check(&g, req).await {
        Ok(req) => next.run(req).await,
        Err(e) if openai => openai_shape(e).into_response(),
        Err(e) => refuse(g.kind, g.page_refusal, e),
    }
}

/// OpenAI's routes answer refusals in OpenAI's error shape
/// (`{"error": {"message", "type", "code"}}`, which its SDK reads), with
/// the missing permission beside it.
fn openai_shape(mut e: ApiError) -> ApiError {
    let kind = match e.status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::FORBIDDEN => "permission_denied",
        _ => "invalid_request_error",
    };
    let mut body = e.body.take().unwrap_or_else(|| json!({}));
    body["error"] = json!({"message": e.message, "type": kind, "code": kind});
    e.body = Some(body);
    e
}

async fn check(g: &Guard, mut req: Request) -> Result<Request, ApiError> {
    let (action, res) = match g.permission {
        Permission::Public | Permission::Setup | Permission::DeployToken => {
            // Credential-free routes too: another site's page must not
            // post to them (a login flood locking the operator out, a
            // setup cancelled from a hostile page).
            if changes(req.method()) && cross_origin(req.headers()) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "a request from another site's page is refused (Origin is not this host)",
                ));
            }
            if matches!(g.permission, Permission::Setup) && !host_is_this_machine(req.headers()) {
                return Err(ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    "setup answers only under this machine's address or name (an IP address, localhost or its host name): another name could be a DNS-rebinding page",
                ));
            }
            // A public read with a credential answers by it (public
            // routes show more to members); a credential that fails here
            // is just not used (public routes never refuse).
            let mut p = Principal::Anonymous;
            if matches!(g.permission, Permission::Public) && !changes(req.method()) {
                let client = client_of(req.extensions());
                if let Ok(found) = principal(&g.state, &client, req.headers()).await {
                    p = found;
                }
            }
            req.extensions_mut().insert(p);
            return Ok(req);
        }
        Permission::Principal => (None, None),
        Permission::Need(a, r) => (Some(a), Some(r)),
    };
    if changes(req.method()) && cross_origin(req.headers()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a request from another site's page is refused (Origin is not this host)",
        ));
    }
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v != "0");
    let json_required = g.kind == Kind::Api && g.json_body && changes(req.method()) && has_body;
    if json_required && !is_json(req.headers()) && req.method() != Method::DELETE {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the API takes Content-Type: application/json",
        ));
    }
    let st = &g.state;
    let client = client_of(req.extensions());
    let p = principal(st, &client, req.headers()).await?;
    if let (Principal::Anonymous, Some(Action::Infer)) = (&p, action)
        && crate::access::anonymous_inference(st)
    {
        req.extensions_mut().insert(p);
        return Ok(req);
    }
    let Principal::Caller(caller) = &p else {
        let what = match (action, res) {
            (Some(a), Some(r)) => format!("credential required ({a} on {})", r.describe()),
            _ => "credential required".to_owned(),
        };
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, what));
    };
    if let (Some(action), Some(res)) = (action, res) {
        let (req2, resources) = resources_of(req, res, g.body_limit).await?;
        req = req2;
        let allowed = match &resources {
            Named::One(r) => {
                let d = decide_for(st, &caller.roles, action, r);
                (!d.allowed).then(|| (r.clone(), d))
            }
            Named::SomeModel => some_model(st, &caller.roles, action),
        };
        if let Some((r, d)) = allowed {
            st.access.deny(&caller.id, action.as_str(), &r.to_string());
            return Err(forbidden(action, &r, &d));
        }
    }
    if changes(req.method()) && !matches!(action, Some(Action::Infer | Action::Read)) {
        st.access.rate(&caller.id)?;
    }
    if g.kind == Kind::Page
        && changes(req.method())
        && let Some(expected) = &caller.csrf
    {
        req = check_csrf(req, expected, g.body_limit).await?;
    }
    req.extensions_mut().insert(p);
    Ok(req)
}

/// The form field that carries a web session's CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// The request's body, read whole up to `limit` bytes (413 beyond), and
/// the rest of the request to put it back into.
async fn read_body(
    req: Request,
    limit: usize,
) -> Result<(axum::http::request::Parts, axum::body::Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over {limit} bytes"),
        )
    })?;
    Ok((parts, bytes))
}

/// A form POST that came with a session cookie must bring the session's
/// CSRF token as the form field [`CSRF_FIELD`] (the body is read, bounded
/// by the route's limit, and put back): 403 otherwise.
async fn check_csrf(req: Request, expected: &str, limit: usize) -> Result<Request, ApiError> {
    let (parts, bytes) = read_body(req, limit).await?;
    let given = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|b| form_urlencoded_value(b, CSRF_FIELD))
        .unwrap_or_default();
    let same: bool = subtle::ConstantTimeEq::ct_eq(given.as_bytes(), expected.as_bytes()).into();
    if !same {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong (reload the page and submit again)",
        ));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The resource a request names.
enum Named {
    One(Resource),
    /// Any model the caller may act on (listings, blobs).
    SomeModel,
}

/// `None` when the caller may `action` some registered model (or every
/// model); else the refusal for `model:*`.
fn some_model(
    st: &crate::state::AppState,
    roles: &[String],
    action: Action,
) -> Option<(Resource, Decision)> {
    let every = Resource::Model("*".into());
    let d = decide_for(st, roles, action, &every);
    if d.allowed {
        return None;
    }
    let names: Vec<String> = st
        .control
        .get()
        .map(|c| c.with_state(|s| s.models.models.keys().cloned().collect()))
        .unwrap_or_default();
    let any = names
        .into_iter()
        .any(|m| decide_for(st, roles, action, &Resource::Model(m)).allowed);
    (!any).then_some((every, d))
}

/// Reads what the route's [`Res`] needs from the request (the body is
/// read, bounded by the route's limit, and put back).
async fn resources_of(req: Request, res: Res, limit: usize) -> Result<(Request, Named), ApiError> {
    let one = |r| Named::One(r);
    Ok(match res {
        Res::Is(f) => (req, one(Resource::Fixed(f))),
        Res::SomeModel => (req, Named::SomeModel),
        Res::AllNodes => (req, one(Resource::Node("*".into()))),
        Res::ModelInPath => {
            let (mut parts, body) = req.into_parts();
            let axum::extract::Path(params): axum::extract::Path<
                std::collections::HashMap<String, String>,
            > = axum::extract::Path::from_request_parts(&mut parts, &())
                .await
                .map_err(|e| ApiError::invalid(e.to_string()))?;
            let name = params.get("name").cloned().unwrap_or_default();
            (
                Request::from_parts(parts, body),
                one(Resource::Model(model_name(&name))),
            )
        }
        Res::AddressInQuery => {
            let q = req.uri().query().unwrap_or("");
            let addr = form_urlencoded_value(q, "address").unwrap_or_default();
            let a = addr
                .parse::<bzzz_proto::ucxl::Address>()
                .map_err(|e| ApiError::invalid(e.to_string()))?;
            (req, one(Resource::Ucxl(a)))
        }
        Res::ModelInBody | Res::AddressInBody | Res::NameInBody => {
            let (parts, bytes) = read_body(req, limit).await?;
            let field = match res {
                Res::ModelInBody => "model",
                Res::AddressInBody => "address",
                _ => "name",
            };
            let v = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get(field).and_then(|x| x.as_str()).map(str::to_owned))
                .unwrap_or_default();
            let r = if res == Res::AddressInBody {
                Resource::Ucxl(
                    v.parse::<bzzz_proto::ucxl::Address>()
                        .map_err(|e| ApiError::invalid(e.to_string()))?,
                )
            } else {
                Resource::Model(model_name(&v))
            };
            (Request::from_parts(parts, Body::from(bytes)), one(r))
        }
    })
}

/// A model name as the registry writes it (`smollm2` is
/// `smollm2:latest`), so rules match what is served.
fn model_name(s: &str) -> String {
    bzzz_proto::models::ModelName::parse(s)
        .map(|m| m.full())
        .unwrap_or_else(|_| s.to_owned())
}

/// The first value of `key` in a query string (percent-decoded).
fn form_urlencoded_value(q: &str, key: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(q)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// API routes answer JSON; pages answer with the login form (same status).
fn refuse(kind: Kind, page_refusal: super::PageRefusal, e: ApiError) -> Response {
    match kind {
        Kind::Api => e.into_response(),
        Kind::Page => page_refusal(e.status, &e.message),
    }
}

/// The JSON body of a 403 (see [`ApiError::forbidden`]).
pub fn forbidden_body(action: Action, resource: &Resource, rule: &str) -> serde_json::Value {
    json!({
        "error": format!("permission denied: {action} on {resource} ({rule})"),
        "action": action.as_str(),
        "resource": resource.to_string(),
        "rule": rule,
    })
}
