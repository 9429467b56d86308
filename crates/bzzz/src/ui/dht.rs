//! `/dht`: the DHT browser. Lists the records matching a pattern (every
//! member is asked), and for one address its versions, author, the roles
//! whose members read it, and whether this node can.

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use bzzz_proto::ucxl::Address;
use maud::html;
use serde::Deserialize;

use super::layout;
use crate::http::{Action, Fixed, Res};
use crate::http::{Permission, Route, Shared};

pub fn routes() -> Vec<Route> {
    vec![Route::page(
        Method::GET,
        "/dht",
        Permission::Need(Action::Read, Res::Is(Fixed::Cluster)),
        get(page),
    )]
}

/// The pattern listed when none is given: everything.
const ALL: &str = "ucxl://any:any@any:any/*^/**";

#[derive(Deserialize)]
struct Q {
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    address: Option<String>,
}

async fn page(State(st): State<Shared>, p: crate::http::Principal, Query(q): Query<Q>) -> Response {
    if let Some(c) = st.control.get() {
        crate::dht::sync(&st.dht, &st.keys, c);
    }
    let pattern = q.pattern.clone().unwrap_or_else(|| ALL.to_owned());
    let list = match pattern.parse::<Address>() {
        Ok(p) => st.dht.ls(&p).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let authz = st.dht.authz();
    let detail = match q.address.as_deref().map(str::parse::<Address>) {
        None => None,
        Some(Err(e)) => Some(Err(e.to_string())),
        // A record's details (history, readers) need read on its address.
        Some(Ok(a))
            if crate::http::authorize(
                &st,
                &p,
                Action::Read,
                &bzzz_proto::access::Resource::Ucxl(a.clone()),
            )
            .is_err() =>
        {
            Some(Err(format!("permission denied: read on {}", a.key_text())))
        }
        Some(Ok(a)) => Some(match st.dht.resolve(&a).await {
            Ok(c) => {
                let readable = bzzz_dht::readable_by(&authz, &c);
                let can = st.dht.open(&c).is_ok();
                let history = st.dht.history(&a).await.unwrap_or_default();
                Ok((c, readable, can, history))
            }
            Err(e) => Err(e.to_string()),
        }),
    };
    let content = html! {
        form method="get" action="/dht" {
            label { "Pattern " input type="text" name="pattern" size="70" value=(pattern); }
            " " button type="submit" { "List" }
        }
        @match &list {
            Err(e) => p class="err" id="error" { (e) },
            Ok(l) if l.is_empty() => p id="empty" { "No records match." },
            Ok(l) => table id="records" {
                tr { th { "Address" } th { "Version" } th { "Role" } th { "Readable by" } th { "This node" } }
                @for e in l {
                    @let readers = bzzz_proto::dht::reading_roles(&e.role, &authz.roles);
                    @let mine = e.address.parse::<Address>().ok().and_then(|a| bzzz_proto::dht::chain_of(&a))
                        .and_then(|ch| authz.role_keys.get(&ch).and_then(|v| v.last()).map(|k| st.dht.keyring().get(&ch, k.epoch).is_some()))
                        .unwrap_or(false);
                    tr {
                        td { a href={ "/dht?address=" (urlenc(&e.address)) } { (e.address) } }
                        td { (e.version) }
                        td { (e.role) }
                        td { (readers.join(", ")) }
                        td { @if mine { "can read" } @else { "cannot read" } }
                    }
                }
            },
        }
        @if let Some(d) = &detail {
            @match d {
                Err(e) => p class="err" id="detail-error" { (e) },
                Ok((c, readable, can, history)) => {
                    h2 { (c.body.address) }
                    p id="detail" {
                        "Version " (c.body.version) " by " code { (c.body.author) } " at " (bzzz_dht::rfc3339(c.body.timestamp_ms))
                        ". Readable by members of " (readable.join(", ")) ". "
                        @if *can { strong { "This node can read it." } } @else { strong { "This node cannot read it." } }
                    }
                    table id="versions" {
                        tr { th { "Version" } th { "Time" } th { "Author" } }
                        @for h in history {
                            tr { td { (h.version) } td { (h.timestamp) } td { code { (h.author) } } }
                        }
                    }
                }
            }
        }
    };
    layout(StatusCode::OK, "/dht", "DHT", content)
}

fn urlenc(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|x| x.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}
