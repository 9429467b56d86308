//! `/models`: model × node table (ready, fetching with %, planned, extra)
//! and each node's VRAM: total, free, and what placed models take.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use bzzz_proto::models::ReplicaState;
use maud::{PreEscaped, html};

use super::{gib, layout};
use crate::http::{Action, Fixed, Res};
use crate::http::{Permission, Route, Shared};

pub fn routes() -> Vec<Route> {
    vec![Route::page(
        Method::GET,
        "/models",
        Permission::Need(Action::Read, Res::Is(Fixed::Cluster)),
        get(page),
    )]
}

/// Streams a chat answer through this node's router (`/api/chat`, NDJSON).
const TRY_SCRIPT: &str = r#"
document.getElementById('try').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const out = document.getElementById('try-out');
  out.textContent = '';
  const body = JSON.stringify({model: document.getElementById('try-model').value,
    messages: [{role: 'user', content: document.getElementById('try-prompt').value}]});
  try {
    const r = await fetch('/api/chat', {method: 'POST', headers: {'content-type': 'application/json'}, body});
    if (!r.ok) { out.textContent = 'error ' + r.status + ': ' + await r.text(); return; }
    const reader = r.body.getReader(); const dec = new TextDecoder(); let buf = '';
    for (;;) {
      const {done, value} = await reader.read(); if (done) break;
      buf += dec.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf('
')) >= 0) {
        const line = buf.slice(0, i); buf = buf.slice(i + 1);
        if (!line.trim()) continue;
        const m = JSON.parse(line);
        if (m.message) out.textContent += m.message.content;
        if (m.error) out.textContent += '
error: ' + m.error;
      }
    }
  } catch (e) { out.textContent += '
error: ' + e; }
});
"#;

/// Each placed node's managed backends (its `/api/v1/serve/backends`,
/// asked with a short timeout; this node's own directly).
async fn backends_of(
    st: &Shared,
    models: &[bzzz_proto::models::ModelStatus],
) -> Vec<(String, serde_json::Value)> {
    let me = st.net.local_id().clone();
    let mut nodes: BTreeSet<bzzz_proto::NodeId> = BTreeSet::new();
    for m in models {
        nodes.extend(m.nodes.iter().map(|n| n.node_id.clone()));
    }
    let mut out = Vec::new();
    for n in nodes {
        let list: Vec<serde_json::Value> = if n == me {
            st.models
                .serve
                .as_ref()
                .map(|s| {
                    s.list()
                        .iter()
                        .filter_map(|b| serde_json::to_value(b).ok())
                        .collect()
                })
                .unwrap_or_default()
        } else {
            let Some(addr) = crate::http::inference::api_of(st, &n) else {
                continue;
            };
            let (base, peer) = crate::tls::peer(&addr);
            let url = format!("{base}/api/v1/serve/backends");
            let get = peer.unwrap_or_default().get(&url).send();
            match tokio::time::timeout(std::time::Duration::from_secs(1), get).await {
                Ok(Ok(r)) => r.json().await.unwrap_or_default(),
                _ => Vec::new(),
            }
        };
        out.extend(list.into_iter().map(|b| (n.as_str().to_owned(), b)));
    }
    out
}

fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(10)..]
}

async fn page(State(st): State<Shared>) -> Response {
    let (models, vram) = match crate::http::models::statuses(&st).await {
        Ok(x) => x,
        Err(e) => {
            return layout(
                StatusCode::OK,
                "/models",
                "Models",
                html! { p { "No registry yet: " (e.message) } },
            );
        }
    };
    let backends = backends_of(&st, &models).await;
    let mut nodes: BTreeSet<String> = vram.keys().map(|n| n.as_str().to_owned()).collect();
    for m in &models {
        nodes.extend(m.nodes.iter().map(|n| n.node_id.as_str().to_owned()));
    }
    let content = html! {
        p { "Add a model with " code { "bzzz model add FILE --name NAME:TAG --replicas N" } "; the leader places copies on nodes with room and they fetch it from each other." }
        @if models.is_empty() {
            p { em { "No models yet." } }
        } @else {
            table id="models" {
                tr {
                    th { "Model" } th { "Size" } th { "VRAM (est.)" } th { "Ready / wanted" }
                    @for n in &nodes { th title=(n) { code { "…" (short(n)) } } }
                }
                @for m in &models {
                    tr {
                        td { (m.name) br; code { (m.digest.get(..19).unwrap_or(&m.digest)) } }
                        td { (gib(m.size_bytes)) }
                        td { (gib(m.vram_bytes)) }
                        td { (m.ready) " / " (m.replicas) }
                        @for n in &nodes {
                            @match m.nodes.iter().find(|r| r.node_id.as_str() == n) {
                                None => td { "" },
                                Some(r) => td class=(format!("{:?}", r.state).to_lowercase()) {
                                    @match r.state {
                                        ReplicaState::Ready => "held",
                                        ReplicaState::Fetching => (format!("fetching {}%", (r.bytes_done * 100).checked_div(r.bytes_total).unwrap_or(0))),
                                        ReplicaState::Planned => "planned",
                                        ReplicaState::Extra => "extra (leaving)",
                                    }
                                    @if r.cpu_only { " (CPU)" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Serving" }
        @if backends.is_empty() {
            p { em { "No backend runs a model yet (see " code { "serve.managed" } " in the configuration)." } }
        } @else {
            table id="backends" {
                tr { th { "Model" } th { "Node" } th { "Backend" } th { "Restarts" } th { "In flight" } th { "Requests" } }
                @for (node, b) in &backends {
                    tr {
                        td { (b["model"].as_str().unwrap_or("")) }
                        td { code { "…" (short(node)) } }
                        td class=(b["state"].as_str().unwrap_or("")) { (b["state"].as_str().unwrap_or("?")) }
                        td { (b["restarts"].as_u64().unwrap_or(0)) }
                        td { (b["in_flight"].as_u64().unwrap_or(0)) }
                        td { (b["requests"].as_u64().unwrap_or(0)) }
                    }
                }
            }
        }
        @if !models.is_empty() {
            h2 { "Try it" }
            form id="try" {
                label for="try-model" { "Model" }
                select id="try-model" {
                    @for m in &models { option value=(m.name) { (m.name) } }
                }
                label for="try-prompt" { "Message" }
                textarea id="try-prompt" rows="3" cols="60" { "Say hello in one sentence." }
                p { button type="submit" { "Send" } }
            }
            pre id="try-out" {}
            script { (PreEscaped(TRY_SCRIPT)) }
        }
        h2 { "VRAM per node" }
        table id="vram" {
            tr { th { "Node" } th { "Total" } th { "Free" } th { "Placed models" } }
            @for (id, v) in &vram {
                tr {
                    td { code { (id.as_str()) } }
                    td { (gib(v.vram_total_bytes)) }
                    td { (gib(v.vram_free_bytes)) }
                    td { (gib(v.vram_placed_bytes)) }
                }
            }
        }
    };
    layout(StatusCode::OK, "/models", "Models", content)
}
