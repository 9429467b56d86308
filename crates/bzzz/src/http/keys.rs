//! The keys feature over HTTP: setup (`/api/v1/setup…`, open until the
//! cluster exists, 409 after), key status, threshold signing and join
//! tokens (operator). Every answer carries `Cache-Control: no-store`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use bzzz_crypto::operator::OperatorPassword;
use bzzz_keys::SetupParams;
use bzzz_proto::NodeId;
use bzzz_proto::api::{SetupConfirm, SignRequest, TokenCreated, TokenRequest};
use bzzz_proto::cluster::WireSecret;
use serde::Deserialize;
use serde_json::json;

use super::{
    Action, ApiError, Fixed, Operator, Permission, Res, Route, Shared, json, parse, setup_locked,
};

type S = State<Shared>;

pub fn routes() -> Vec<Route> {
    use Permission::{Public, Setup};
    vec![
        Route::api(
            Method::POST,
            "/api/v1/setup",
            Setup,
            post(api_setup),
            json!(
            {"summary": "Start the setup: generates the master key and returns it once (24 words and hex). 409 once initialized.", "operationId": "setupStart",
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["cluster", "operator_password"], "properties": {
                    "cluster": {"type": "string"}, "threshold": {"type": ["integer", "null"]}, "shares": {"type": ["integer", "null"]}, "holders": {"type": "array", "items": {"type": "string"}, "description": "node ids of the share holders besides this node (default: none, this node alone)"}, "operator_password": {"type": "string", "minLength": 12}}}}}},
                "responses": {"201": {"description": "Pending setup: setup_id, mnemonic, master_key_hex, admin_public_key, confirm_positions"}, "409": {"description": "Already initialized"}, "422": {"description": "Invalid input"}}}),
        ),
        Route::api(
            Method::POST,
            "/api/v1/setup/confirm",
            Setup,
            post(api_setup_confirm),
            json!(
            {"summary": "Confirm the setup with the re-typed words: creates the cluster and forgets the master key.", "operationId": "setupConfirm",
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["setup_id", "words"], "properties": {
                    "setup_id": {"type": "string"}, "words": {"type": "object", "additionalProperties": {"type": "string"}}}}}}},
                "responses": {"200": {"description": "Cluster created"}, "409": {"description": "Already initialized or replaced"}, "422": {"description": "A word does not match"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/keys",
            Public,
            get(api_keys),
            json!(
            {"summary": "Cluster admin key status (never secret material)", "operationId": "keys",
                "responses": {"200": {"description": "admin_public_key, threshold, shares, share_index, share_state"}}}),
        ),
        Route::api(
            Method::POST,
            "/api/v1/keys/sign",
            Permission::Need(Action::Manage, Res::Is(Fixed::Cluster)),
            post(api_sign),
            json!(
            {"summary": "Threshold-sign a message with the cluster admin key (operator)", "operationId": "keysSign",
                "responses": {"200": {"description": "signature, signers, signed_bytes_hex"}, "429": {"description": "Too many failures"}, "502": {"description": "A signer refused or sent an invalid share (named)"}}}),
        ),
        Route::api(
            Method::POST,
            "/api/v1/tokens",
            Permission::Need(Action::Manage, Res::Is(Fixed::Members)),
            post(api_tokens),
            json!(
            {"summary": "Create a join token (operator)", "operationId": "tokenCreate",
                "responses": {"201": {"description": "token, id, expires_at"}, "429": {"description": "Too many failures"}}}),
        ),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetupBody {
    cluster: String,
    #[serde(default)]
    threshold: Option<u16>,
    #[serde(default)]
    shares: Option<u16>,
    /// The holders besides this node (node ids); none: this node alone.
    #[serde(default)]
    holders: Vec<bzzz_proto::NodeId>,
    operator_password: String,
    /// Recovery: the 24 words of an existing cluster's master key.
    #[serde(default)]
    mnemonic: Option<String>,
}

async fn api_setup(State(st): S, body: Bytes) -> Result<Response, ApiError> {
    if st.keys.is_initialized() {
        return Err(setup_locked());
    }
    // A setup under way in the wizard belongs to its browser: the API does
    // not replace it (which would hand a new master key to the caller).
    if crate::ui::setup::started_in_a_browser(&st) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "a setup is under way in a browser: finish or start over there, or wait until it expires",
        ));
    }
    let b: SetupBody = parse(&body, "setup request")?;
    let password = OperatorPassword::new_for_setup(b.operator_password)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let recover_from = match b.mnemonic.map(zeroize::Zeroizing::new) {
        Some(words) => Some(
            bzzz_crypto::threshold::MasterKey::from_mnemonic(&words)
                .map_err(|e| ApiError::invalid(format!("mnemonic: {e}")))?,
        ),
        None => None,
    };
    let params = SetupParams {
        cluster: b.cluster,
        threshold: b.threshold,
        shares: b.shares,
        holders: b.holders,
        operator_password: password,
        recover_from,
    };
    let started = st.keys.start_setup(params, true)?;
    Ok(json(StatusCode::CREATED, &started))
}

async fn api_setup_confirm(State(st): S, body: Bytes) -> Result<Response, ApiError> {
    if st.keys.is_initialized() {
        return Err(setup_locked());
    }
    let b: SetupConfirm = parse(&body, "confirm request")?;
    let mut words = BTreeMap::new();
    for (k, v) in b.words {
        match k.parse::<usize>() {
            Ok(p) if (1..=24).contains(&p) => {
                words.insert(p, v);
            }
            _ => {
                return Err(ApiError::invalid(format!(
                    "word position {k:?} is not 1 to 24"
                )));
            }
        }
    }
    let done = st.keys.confirm_setup(&b.setup_id, &words).await?;
    Ok(json(StatusCode::OK, &done))
}

async fn api_keys(State(st): S) -> Response {
    json(StatusCode::OK, &st.keys.status())
}

async fn api_sign(State(st): S, Operator(pw): Operator, body: Bytes) -> Result<Response, ApiError> {
    let b: SignRequest = parse(&body, "sign request")?;
    if b.message.len() > 16 * 1024 {
        return Err(ApiError::invalid("message longer than 16 KiB"));
    }
    crate::access::record(
        &st,
        bzzz_proto::access::ADMIN_USER,
        Action::Manage,
        &bzzz_proto::access::Resource::KEYS,
    )
    .await?;
    let signers = match b.signers {
        Some(list) => Some(
            list.iter()
                .map(|s| {
                    NodeId::parse(s).map_err(|e| ApiError::invalid(format!("signer {s:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    let sig = st
        .keys
        .sign_message(b.message.into_bytes(), &pw, signers)
        .await?;
    Ok(json(StatusCode::OK, &sig))
}

async fn api_tokens(
    State(st): S,
    Operator(pw): Operator,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: TokenRequest = if body.is_empty() {
        TokenRequest::default()
    } else {
        parse(&body, "token request")?
    };
    let ttl = Duration::from_secs(b.ttl_secs.unwrap_or(3600));
    crate::access::record(
        &st,
        bzzz_proto::access::ADMIN_USER,
        Action::Manage,
        &bzzz_proto::access::Resource::MEMBERS,
    )
    .await?;
    let (token, body) = st.keys.create_token(ttl, b.uses.unwrap_or(1), &pw).await?;
    Ok(json(
        StatusCode::CREATED,
        &TokenCreated {
            token: WireSecret::new(token.to_string()),
            id: body.id,
            expires_at: body.expires_at,
            uses: body.uses,
            cluster: body.cluster,
        },
    ))
}
