//! `/`: the cluster overview (nodes and their capabilities, leadership).

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};

use super::{gib, layout};
use crate::http::status::{leader_of, peers_of, status_of};
use crate::http::{Permission, Route, Shared};

pub fn routes() -> Vec<Route> {
    vec![Route::page(
        Method::GET,
        "/",
        Permission::Public,
        get(index),
    )]
}

fn node_row(id: &str, c: &bzzz_proto::Capabilities, this: bool) -> Markup {
    let gpus = if c.gpus.is_empty() {
        "none".to_owned()
    } else {
        c.gpus
            .iter()
            .map(|g| {
                format!(
                    "{} ({}){}",
                    g.model,
                    gib(g.vram_total_bytes),
                    if g.declared { " [declared]" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    html! {
        tr {
            td { code { (id) } @if this { " " em { "(this node)" } } }
            td { (c.cpu.cores) " × " (c.cpu.model) }
            td { (format!("{:.2}", c.cpu.load_1m)) }
            td { (gib(c.memory_free_bytes)) " / " (gib(c.memory_total_bytes)) }
            td { (gpus) }
            td {
                @if c.ollama.present { (c.ollama.models.len()) " models" } @else { "absent" }
            }
            td { (c.labels.zone.as_deref().unwrap_or("-")) }
        }
    }
}

async fn index(State(st): State<Shared>) -> Response {
    let me = status_of(&st);
    let peers = peers_of(&st);
    let l = leader_of(&st);
    let ca = st
        .keys
        .cluster()
        .and_then(|c| c.genesis.ca_cert.clone())
        .and_then(|pem| bzzz_crypto::ca::fingerprint(&pem).ok());
    layout(
        StatusCode::OK,
        "/",
        "Cluster overview",
        html! {
            p {
                "Node " code id="node-id" { (me.node_id.as_str()) } ", version " (me.version)
                ", up " (me.uptime_secs) "s. " span id="peer-count" { (peers.len()) } " other live node(s)."
            }
            table id="nodes" {
                tr { th { "Node" } th { "CPU" } th { "Load" } th { "Memory free/total" } th { "GPUs" } th { "Ollama" } th { "Zone" } }
                (node_row(me.node_id.as_str(), &me.capabilities, true))
                @for p in &peers { (node_row(p.node_id.as_str(), &p.capabilities, false)) }
            }
            h2 { "Control plane" }
            p {
                "Leader " code id="leader" { (l.leader.as_deref().unwrap_or("none")) }
                ", term " span id="term" { (l.term) } "; this node is " span id="raft-state" { (l.state) } "."
            }
            table id="scores" {
                tr { th { "Member" } th { "Role" } th { "Score" } }
                @for (id, score) in &l.scores {
                    tr { td { code { (id) } } td { (l.role_of(id)) } td { (format!("{score:.1}")) } }
                }
            }
            h2 { "TLS" }
            @if let Some(fp) = &ca {
                p {
                    "Cluster CA " code id="ca-fingerprint" { (fp) } ". Every node serves "
                    code { "https://" } " with a certificate from it. To trust it: download "
                    a href="/api/v1/ca.pem" download="bzzz-cluster-ca.pem" { "the CA certificate" }
                    ", check that its fingerprint is the one " code { "bzzz init" }
                    " printed (or " code { "bzzz ca show --admin-key HEX" }
                    " against the admin key), then import it: Firefox, Settings → Privacy & Security → Certificates → Import; Chromium, Settings → Privacy and security → Security → Manage certificates → Authorities → Import; Debian, copy it to "
                    code { "/usr/local/share/ca-certificates/bzzz.crt" } " and run " code { "update-ca-certificates" }
                    "; curl, " code { "--cacert bzzz-cluster-ca.pem" } "."
                }
            } @else {
                p { "No cluster CA yet: until setup, the node's certificate is self-signed (its fingerprint is in the node's log)." }
            }
            p {
                "API: " a href="/api/v1/status" { "status" } " · " a href="/api/v1/peers" { "peers" }
                " · " a href="/api/v1/leader" { "leader" } " · " a href="/api/v1/cluster" { "cluster state" }
                " · " a href="/api/v1/openapi.json" { "OpenAPI" } " · " a href="/metrics" { "metrics" }
            }
        },
    )
}
