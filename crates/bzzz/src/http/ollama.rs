//! Ollama's API on every node: `/api/tags`, `/api/ps`, `/api/chat`,
//! `/api/generate` (NDJSON streaming by default, `"stream": false` for one
//! object, with Ollama's final statistics fields). Requests are routed like
//! the OpenAI ones ([`super::inference::dispatch`]); the node that serves
//! one translates it for its backend (llama.cpp's OpenAI-compatible
//! server) and translates the answer back.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bzzz_serve::translate::{stats, stream_event, to_openai};
use futures::StreamExt as _;
use serde_json::{Value, json};

use super::inference::{Dialect, DialectError as _, MAX_REQUEST, dispatch};
use super::{Action, Permission, Res, Route, Shared};

pub fn routes() -> Vec<Route> {
    let long = std::time::Duration::from_secs(3600);
    vec![
        Route::api(
            Method::GET,
            "/api/tags",
            Permission::Need(Action::Infer, Res::SomeModel),
            get(tags),
            json!({"summary": "Ollama: the models this cluster serves", "operationId": "ollamaTags",
                "responses": {"200": {"description": "{models: [{name, model, modified_at, size, digest, details}]}"}}}),
        ),
        Route::api(
            Method::GET,
            "/api/ps",
            Permission::Need(Action::Infer, Res::SomeModel),
            get(ps),
            json!({"summary": "Ollama: models with a running backend on this node", "operationId": "ollamaPs",
                "responses": {"200": {"description": "{models: [...]}"}}}),
        ),
        Route::api(
            Method::POST,
            "/api/chat",
            Permission::Need(Action::Infer, Res::ModelInBody),
            post(chat),
            json!({"summary": "Ollama: chat, routed to a replica (NDJSON stream unless stream: false)", "operationId": "ollamaChat",
                "responses": {"200": {"description": "Ollama's answer"}, "404": {"description": "Unknown model"}, "503": {"description": "No replica serving"}}}),
        )
        .body_limit(MAX_REQUEST)
        .timeout(long),
        Route::api(
            Method::POST,
            "/api/generate",
            Permission::Need(Action::Infer, Res::ModelInBody),
            post(generate),
            json!({"summary": "Ollama: completion of a prompt, routed to a replica (NDJSON stream unless stream: false)", "operationId": "ollamaGenerate",
                "responses": {"200": {"description": "Ollama's answer"}, "404": {"description": "Unknown model"}, "503": {"description": "No replica serving"}}}),
        )
        .body_limit(MAX_REQUEST)
        .timeout(long),
    ]
}

async fn chat(State(st): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    dispatch(&st, &headers, body, Dialect::OllamaChat).await
}

async fn generate(State(st): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    dispatch(&st, &headers, body, Dialect::OllamaGenerate).await
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

/// A registry entry as Ollama lists it (`digest`: bare hex, as Ollama).
fn listed(e: &bzzz_proto::models::ModelEntry) -> Value {
    let family = e.facts.architecture.clone().unwrap_or_default();
    let params = e.facts.parameters.map(bzzz_models::ollama::human_params);
    let modified = humantime::format_rfc3339(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.added_at),
    )
    .to_string();
    json!({
        "name": e.name, "model": e.name, "modified_at": modified, "size": e.size_bytes,
        "digest": e.digest.trim_start_matches("sha256:"),
        "details": {"parent_model": "", "format": "gguf", "family": family, "families": [family],
            "parameter_size": params.unwrap_or_default(),
            "quantization_level": e.facts.quantization.clone().unwrap_or_default()}
    })
}

async fn tags(State(st): State<Shared>) -> Response {
    let models: Vec<Value> = st
        .control
        .get()
        .map(|c| {
            c.with_state(|s| {
                s.models
                    .models
                    .values()
                    .filter(|e| !e.removed)
                    .map(listed)
                    .collect()
            })
        })
        .unwrap_or_default();
    super::json(StatusCode::OK, &json!({"models": models}))
}

async fn ps(State(st): State<Shared>) -> Response {
    let ready: Vec<String> = st
        .models
        .serve
        .as_ref()
        .map(|s| {
            s.list()
                .into_iter()
                .filter(|b| b.state == bzzz_serve::State::Ready)
                .map(|b| b.model)
                .collect()
        })
        .unwrap_or_default();
    let models: Vec<Value> = st
        .control
        .get()
        .map(|c| {
            c.with_state(|s| {
                ready
                    .iter()
                    .filter_map(|n| s.models.models.get(n))
                    .map(|e| {
                        let mut v = listed(e);
                        v["size_vram"] = json!(e.vram_bytes);
                        v["expires_at"] = json!("0001-01-01T00:00:00Z");
                        v
                    })
                    .collect()
            })
        })
        .unwrap_or_default();
    super::json(StatusCode::OK, &json!({"models": models}))
}

/// One Ollama answer object, stamped now.
fn ollama_obj(
    model: &str,
    dialect: Dialect,
    text: &str,
    done: Option<(&str, serde_json::Map<String, Value>)>,
) -> Value {
    bzzz_serve::translate::ollama_obj(model, dialect, text, done, &now_rfc3339())
}

/// Serves an Ollama request with this node's OpenAI-compatible backend on
/// `port`. Streaming answers are translated line by line as they arrive;
/// when the client goes away the backend request is dropped with it (its
/// slot is freed).
pub async fn serve_locally(
    st: &Shared,
    base: &str,
    model: &str,
    req: &Value,
    dialect: Dialect,
    busy: Option<bzzz_serve::Busy>,
) -> Result<Response, String> {
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(true);
    let body = to_openai(req, dialect, stream);
    let started = Instant::now();
    let resp = super::inference::client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().is_server_error() {
        return Err(format!("answered {}", resp.status()));
    }
    if !resp.status().is_success() {
        let code = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let text = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        return Ok(dialect.error(code, "backend", msg));
    }
    if !stream {
        let v: Value = resp.json().await.map_err(|e| e.to_string())?;
        let text = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
        let reason = v["choices"][0]["finish_reason"].as_str().unwrap_or("stop");
        let out = ollama_obj(
            model,
            dialect,
            text,
            Some((reason, stats(v.get("timings"), started))),
        );
        return Ok(super::json(StatusCode::OK, &out));
    }
    // SSE from the backend → NDJSON to the client, through a bounded
    // channel fed by a task on the node's tracker.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let model = model.to_owned();
    let cancel = st.tasks.cancel.clone();
    st.tasks.tracker.spawn(async move {
        let _busy = busy;
        let mut src = resp.bytes_stream();
        let mut buf = Vec::<u8>::new();
        let mut reason = "stop".to_owned();
        let mut timings: Option<Value> = None;
        let line = |v: &Value| {
            let mut b = serde_json::to_vec(v).unwrap_or_default();
            b.push(b'\n');
            Bytes::from(b)
        };
        loop {
            let chunk = tokio::select! {
                _ = cancel.cancelled() => return,
                c = src.next() => c,
            };
            let Some(Ok(chunk)) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = buf.drain(..=pos).collect();
                let Some(ev) = stream_event(&String::from_utf8_lossy(&raw)) else {
                    continue;
                };
                if let Some(r) = ev.finish_reason {
                    reason = r;
                }
                if ev.timings.is_some() {
                    timings = ev.timings;
                }
                if !ev.delta.is_empty()
                    && tx
                        .send(line(&ollama_obj(&model, dialect, &ev.delta, None)))
                        .await
                        .is_err()
                {
                    // The client went away: dropping `src` ends the
                    // backend request.
                    return;
                }
            }
        }
        let last = ollama_obj(
            &model,
            dialect,
            "",
            Some((&reason, stats(timings.as_ref(), started))),
        );
        let _ = tx.send(line(&last)).await;
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    let mut r = (StatusCode::OK, Body::from_stream(body)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(r)
}
