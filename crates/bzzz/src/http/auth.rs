//! Who is calling: the operator credential (HTTP Basic, any user name, the
//! operator password; or the web session cookie from `/login`), checked by
//! the guard in front of every route against the route's permission.
//!
//! The password check itself (rate limit before hashing, at most a few
//! Argon2id hashes at once) is `bzzz_keys::Keys::check_operator`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bzzz_crypto::operator::OperatorPassword;

use super::{ApiError, Kind, Permission, Shared};

/// The web UI session cookie.
pub const SESSION_COOKIE: &str = "bzzz_session";

/// The caller of a request, as the guard established it. Role-bound
/// credentials will add variants here.
#[derive(Clone)]
pub enum Principal {
    Anonymous,
    /// The operator, with the credential (signers approve operator
    /// requests with it).
    Operator(OperatorPassword),
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Anonymous => "Anonymous",
            Self::Operator(_) => "Operator(..)",
        })
    }
}

/// Extractor for handlers behind [`Permission::Operator`]: the checked
/// operator credential.
#[derive(Debug)]
pub struct Operator(pub OperatorPassword);

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.extensions.get::<Principal>() {
            Some(Principal::Operator(pw)) => Ok(Self(pw.clone())),
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

/// The session id from the cookie (64 hex digits), if any.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
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

/// The operator password from `Authorization: Basic …` (user name ignored).
fn basic_credential(headers: &HeaderMap) -> Option<OperatorPassword> {
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

/// The client address (for rate limits); "unknown" where the server did
/// not record it.
pub fn client_of(req_ext: &axum::http::Extensions) -> String {
    req_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Establishes the caller: a live web session, or HTTP Basic checked
/// against the operator verifier (rate limited), or anonymous. An HTTP
/// Basic credential that fails is an error, not anonymous.
pub async fn principal(
    st: &crate::node::AppState,
    client: &str,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    if let Some(pw) = session_id(headers).and_then(|id| st.keys.web_session(&id)) {
        return Ok(Principal::Operator(pw));
    }
    match basic_credential(headers) {
        Some(pw) => {
            st.keys.check_operator(client, Some(pw.clone())).await?;
            Ok(Principal::Operator(pw))
        }
        None if headers.contains_key(header::AUTHORIZATION) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "malformed Authorization header (HTTP Basic with the operator password)",
        )),
        None => Ok(Principal::Anonymous),
    }
}

/// What the guard of one route knows.
#[derive(Debug, Clone)]
pub struct Guard {
    pub state: Shared,
    pub permission: Permission,
    pub kind: Kind,
}

/// The guard in front of every handler: checks the route's permission and
/// puts the [`Principal`] into the request.
pub async fn guard(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    let principal = match g.permission {
        Permission::Public | Permission::Setup | Permission::DeployToken => Principal::Anonymous,
        Permission::Inference if !g.state.inference_auth => Principal::Anonymous,
        Permission::Operator | Permission::Inference => {
            let client = client_of(req.extensions());
            match principal(&g.state, &client, req.headers()).await {
                Ok(p @ Principal::Operator(_)) => p,
                Ok(Principal::Anonymous) => {
                    return refuse(
                        g.kind,
                        ApiError::new(StatusCode::UNAUTHORIZED, "operator credential required"),
                    );
                }
                Err(e) => return refuse(g.kind, e),
            }
        }
    };
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// API routes answer JSON; pages answer with the login form (same status).
fn refuse(kind: Kind, e: ApiError) -> Response {
    match kind {
        Kind::Api => e.into_response(),
        Kind::Page => crate::ui::admin::login_required(e.status, &e.message),
    }
}
