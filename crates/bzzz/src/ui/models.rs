//! `/models`: model × node table (ready, fetching with %, planned, extra)
//! and each node's VRAM: total, free, and what placed models take.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use bzzz_proto::models::ReplicaState;
use maud::html;

use super::{gib, layout};
use crate::http::{Permission, Route, Shared};

pub fn routes() -> Vec<Route> {
    vec![Route::page(
        Method::GET,
        "/models",
        Permission::Public,
        get(page),
    )]
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
