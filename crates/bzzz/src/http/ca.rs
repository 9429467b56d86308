//! The cluster CA (issue #24): public, so any client can fetch it, and
//! check it against the admin public key it knows (the certificate is
//! part of the admin-signed genesis record, which comes with it).

use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{ApiError, Permission, Route, Shared, json};

type S = State<Shared>;

pub fn routes() -> Vec<Route> {
    vec![
        Route::api(
            Method::GET,
            "/api/v1/ca.pem",
            Permission::Public,
            get(api_ca_pem),
            json!({"summary": "The cluster CA's certificate (PEM), to import into a browser or OS trust store or give to `curl --cacert`", "operationId": "caPem",
                "responses": {"200": {"description": "PEM"}, "404": {"description": "No cluster CA (not set up yet, or set up before CAs)"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/v1/ca",
            Permission::Public,
            get(api_ca),
            json!({"summary": "The cluster CA with its endorsement: the admin-signed genesis record that contains it", "operationId": "ca",
                "responses": {"200": {"description": "fingerprint, pem, cluster, admin_public_key, genesis (body, signature)"}, "404": {"description": "No cluster CA"}}}),
        ),
    ]
}

fn no_ca() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "this cluster has no CA (not set up yet, or set up before cluster CAs)",
    )
}

async fn api_ca_pem(State(st): S) -> Result<Response, ApiError> {
    let c = st.keys.cluster().ok_or_else(no_ca)?;
    let pem = c.genesis.ca_cert.clone().ok_or_else(no_ca)?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response())
}

async fn api_ca(State(st): S) -> Result<Response, ApiError> {
    let c = st.keys.cluster().ok_or_else(no_ca)?;
    let pem = c.genesis.ca_cert.clone().ok_or_else(no_ca)?;
    let fingerprint = bzzz_crypto::ca::fingerprint(&pem)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(json(
        StatusCode::OK,
        &json!({
            "fingerprint": fingerprint,
            "pem": pem,
            "cluster": c.genesis.cluster,
            "admin_public_key": c.genesis.admin_public_key,
            "genesis": c.genesis_signed,
        }),
    ))
}
