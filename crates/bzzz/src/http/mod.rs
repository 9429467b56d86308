//! HTTP: ONE route table ([`routes`]) that builds both the router and the
//! OpenAPI document. Every route names the [`Permission`] it needs; a guard
//! in front of each handler checks it and hands the handler a
//! [`Principal`]. A route cannot be added without a permission: the table
//! is the only way into the router ([`router`]), and [`Route`] has no
//! constructor without one. A test walks the real router and checks that
//! every route outside the public list answers 401 to an anonymous caller.
//!
//! Files: one per feature (`status`, `keys`, `control`, `deploy`) with its
//! routes and JSON handlers; `auth` (credentials, the guard), `serve` (the
//! bounded server: connection cap, header and request timeouts),
//! `openapi` (the document from the table). Pages live in `crate::ui`;
//! `crate::app` joins both into the node's router (this module imports
//! no page).

pub mod access;
pub mod agents;
pub mod auth;
pub mod ca;
pub mod control;
pub mod deploy;
pub mod dht;
pub mod inference;
pub mod keys;
pub mod members;
pub mod models;
pub mod ollama;
pub mod openapi;
pub mod serve;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use bzzz_keys::{ErrorKind, KeysError};
pub use bzzz_proto::access::{Action, Fixed};
use serde_json::Value;

pub use auth::{Operator, Principal, authorize};

use crate::state::AppState;

/// The state every handler gets.
pub type Shared = Arc<AppState>;

/// Default request body limit (JSON requests are small).
pub const BODY_LIMIT: usize = 64 * 1024;
/// A handler that has not answered in this long gets 408 (threshold
/// signing waits on peers, setup delivers records to every node).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Who may call a route: each route maps a request to the action it
/// does and the resource it does it on (or is one of the reviewed public
/// routes). There is no default: a route cannot be built without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Anyone (the reviewed list in `docs/security.md`): this node's own
    /// status, the peers and leader the public overview shows, the admin
    /// public key, metrics, the OpenAPI document, the overview and login
    /// pages.
    Public,
    /// Anyone while this node is not initialized (the setup wizard); the
    /// handler answers 409 once it is.
    Setup,
    /// A deploy run's random download token in the query (the hosts of
    /// the run fetch the binary with it); 401 without it.
    DeployToken,
    /// Any authenticated principal; the handler decides (creating an API
    /// key for oneself, revoking one's own key), and the state machine
    /// applies the escalation rule.
    Principal,
    /// A principal allowed `Action` on the resource the request names.
    /// Inference (`Action::Infer`) is open to anonymous callers when the
    /// cluster says so (`anonymous_inference`).
    Need(Action, Res),
}

impl Permission {
    /// Routes an anonymous caller may use.
    pub fn is_public(self) -> bool {
        matches!(self, Self::Public | Self::Setup)
    }

    /// A label for the OpenAPI document and the matrix test.
    pub fn describe(self) -> String {
        match self {
            Self::Public => "public".into(),
            Self::Setup => "setup".into(),
            Self::DeployToken => "deploy token".into(),
            Self::Principal => "any principal".into(),
            Self::Need(a, r) => format!("{a} on {}", r.describe()),
        }
    }
}

/// Where the resource of a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Res {
    /// A fixed resource (`cluster`, `audit`, `users`, `keys`, `roles`,
    /// `members`).
    Is(Fixed),
    /// `model:NAME` from the path parameter `{name}`.
    ModelInPath,
    /// `model:NAME` from the JSON body's `model` field.
    ModelInBody,
    /// `model:NAME` from the JSON body's `name` field.
    NameInBody,
    /// Any model the caller may act on (listings; content-addressed
    /// blobs).
    SomeModel,
    /// The UCXL address in the query parameter `address`.
    AddressInQuery,
    /// The UCXL address in the JSON body's `address` field.
    AddressInBody,
    /// `node:*` (a deploy may reach any host).
    AllNodes,
}

impl Res {
    pub fn describe(self) -> String {
        match self {
            Res::Is(f) => f.as_str().into(),
            Res::ModelInPath | Res::ModelInBody | Res::NameInBody => "model:NAME".into(),
            Res::SomeModel => "some model".into(),
            Res::AddressInQuery | Res::AddressInBody => "ucxl://ADDRESS".into(),
            Res::AllNodes => "node:*".into(),
        }
    }
}

/// A JSON API route (in the OpenAPI document) or an HTML page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Api,
    Page,
}

/// One entry of the route table.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub permission: Permission,
    pub kind: Kind,
    pub body_limit: usize,
    /// A state-changing API request must say `application/json` (false:
    /// binary uploads, and the inference dialects, whose clients are
    /// authenticated by a bearer key, not an ambient credential).
    pub json_body: bool,
    /// A handler that has not answered in this long gets 408.
    pub timeout: Duration,
    /// The OpenAPI operation object (API routes).
    pub openapi: Option<Value>,
    handler: MethodRouter<Shared>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({:?})", self.method, self.path, self.permission)
    }
}

impl Route {
    /// A JSON route with its OpenAPI operation.
    pub fn api(
        method: Method,
        path: &'static str,
        permission: Permission,
        handler: MethodRouter<Shared>,
        openapi: Value,
    ) -> Self {
        Self {
            method,
            path,
            permission,
            kind: Kind::Api,
            json_body: !matches!(permission, Permission::Need(Action::Infer, _)),
            body_limit: BODY_LIMIT,
            timeout: REQUEST_TIMEOUT,
            openapi: Some(openapi),
            handler,
        }
    }

    /// An HTML page or form target.
    pub fn page(
        method: Method,
        path: &'static str,
        permission: Permission,
        handler: MethodRouter<Shared>,
    ) -> Self {
        Self {
            method,
            path,
            permission,
            kind: Kind::Page,
            json_body: false,
            body_limit: BODY_LIMIT,
            timeout: REQUEST_TIMEOUT,
            openapi: None,
            handler,
        }
    }

    /// A body that is not JSON (uploads).
    pub fn raw_body(mut self) -> Self {
        self.json_body = false;
        self
    }

    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// A longer handler timeout (uploads).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
}

/// Every route of the node, feature by feature.
pub fn routes() -> Vec<Route> {
    let mut all = Vec::new();
    all.extend(status::routes());
    all.extend(agents::routes());
    all.extend(access::routes());
    all.extend(keys::routes());
    all.extend(ca::routes());
    all.extend(members::routes());
    all.extend(control::routes());
    all.extend(deploy::routes());
    all.extend(models::routes());
    all.extend(dht::routes());
    all.extend(inference::routes());
    all.extend(ollama::routes());
    all
}

/// How a refused page request is answered (the login form, from `ui`;
/// given by whoever builds the router, so `http` does not import the
/// pages).
pub type PageRefusal = fn(StatusCode, &str) -> Response;

/// The inference API alone (Ollama's and OpenAI's routes), for the second
/// listen address `serve.listen` (clients that expect Ollama's port).
pub fn inference_router(state: Shared) -> Router {
    let mut all = inference::routes();
    all.extend(ollama::routes());
    router_of(all, state, |code, message| {
        ApiError::new(code, message).into_response()
    })
}

/// A router of `table`: each handler behind its permission guard and
/// body limit; a request timeout; a JSON 404 for the rest. Refused page
/// requests are answered by `page_refusal`.
pub fn router_of(table: Vec<Route>, state: Shared, page_refusal: PageRefusal) -> Router {
    let mut r: Router<Shared> = Router::new();
    for route in table {
        let guard = axum::middleware::from_fn_with_state(
            auth::Guard {
                state: state.clone(),
                permission: route.permission,
                kind: route.kind,
                body_limit: route.body_limit,
                json_body: route.json_body,
                page_refusal,
            },
            auth::guard,
        );
        let handler: MethodRouter<Shared> = route
            .handler
            .layer::<_, std::convert::Infallible>(guard)
            .layer::<_, std::convert::Infallible>(DefaultBodyLimit::max(route.body_limit))
            .layer::<_, std::convert::Infallible>(
                tower_http::timeout::TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    route.timeout,
                ),
            );
        r = r.route(route.path, handler);
    }
    r.fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers on every answer: no framing by other sites (clickjacking of
/// the console's forms), no content-type sniffing, no referrer leaks.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see /api/v1/openapi.json",
    )
    .into_response()
}

/// An API error: a status and a message, answered as `{"error": …}` with
/// `Cache-Control: no-store` (and `WWW-Authenticate: Bearer` on 401; a
/// 403 names the missing permission as `action` on `resource`).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The whole JSON body, when it says more than `error`.
    pub body: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            body: None,
        }
    }

    /// 403: `action` on `resource` is not allowed (`rule` says why).
    pub fn forbidden(action: Action, resource: &bzzz_proto::access::Resource, rule: &str) -> Self {
        let body = auth::forbidden_body(action, resource, rule);
        Self {
            status: StatusCode::FORBIDDEN,
            message: body["error"]
                .as_str()
                .unwrap_or("permission denied")
                .to_owned(),
            body: Some(body),
        }
    }

    /// 422: the request is wrong (the message names what).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// 503: the control plane is not running.
    pub fn no_control() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the control plane is not running (is the cluster initialized?)",
        )
    }
}

/// The HTTP status of a keys error.
pub fn status_of_kind(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Gone => StatusCode::GONE,
        ErrorKind::Limited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Peer => StatusCode::BAD_GATEWAY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<KeysError> for ApiError {
    fn from(e: KeysError) -> Self {
        Self::new(status_of_kind(e.kind), e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = match self.body {
            Some(b) => (self.status, axum::Json(b)).into_response(),
            None => (
                self.status,
                axum::Json(bzzz_proto::api::ApiError {
                    error: self.message,
                }),
            )
                .into_response(),
        };
        if self.status == StatusCode::UNAUTHORIZED {
            // Bearer, never Basic: a browser would cache a Basic password
            // and send it with any page's requests to this host.
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"bzzz\""),
            );
        }
        no_store(r)
    }
}

/// A JSON answer with `no-store`; a value that cannot be serialized is a
/// 500, never a `null` with a success status.
pub fn json<T: serde::Serialize>(code: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => no_store(
            (
                code,
                [(header::CONTENT_TYPE, "application/json")],
                axum::body::Bytes::from(body),
            )
                .into_response(),
        ),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {e}"),
        )
        .into_response(),
    }
}

/// Parses a JSON request body; `what` names it in the 422.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid {what}: {e}")))
}

pub fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, max-age=0"),
    );
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

pub fn see_other(to: &'static str) -> Response {
    no_store(
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, HeaderValue::from_static(to))],
        )
            .into_response(),
    )
}

/// 409: once the cluster exists, every setup endpoint refuses.
pub fn setup_locked() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "this node is already initialized; setup is locked",
    )
}

#[cfg(test)]
mod tests;
