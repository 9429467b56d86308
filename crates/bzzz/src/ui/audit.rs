//! `/audit`: the audit log this node holds, newest first, filtered by
//! principal, action and outcome (substring matches), and whether the
//! whole chain this node holds verifies (hashes, links, every accepting
//! node's signature, the replicated head, the checkpoints signed by the
//! threshold admin key): the same check as `bzzz audit verify`.

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use maud::html;
use serde::Deserialize;

use super::layout;
use crate::http::{Action, Fixed, Permission, Res, Route, Shared};

/// Entries the page reads and verifies at most (the newest ones shown).
const READ_MAX: usize = 100_000;
/// Rows shown at most.
const SHOW_MAX: usize = 500;

pub fn routes() -> Vec<Route> {
    vec![Route::page(
        Method::GET,
        "/audit",
        Permission::Need(Action::Read, Res::Is(Fixed::Audit)),
        get(page),
    )]
}

#[derive(Debug, Default, Deserialize)]
struct Filter {
    #[serde(default)]
    principal: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    outcome: String,
}

async fn page(State(st): State<Shared>, Query(f): Query<Filter>) -> Response {
    let (head, records) = match crate::http::access::audit_entries(&st, 0, READ_MAX).await {
        Ok(x) => x,
        Err(e) => {
            return layout(
                e.status,
                "/audit",
                "Audit log",
                html! { p class="err" id="error" { (e.message) } },
            );
        }
    };
    let verdict = if records.len() >= READ_MAX {
        Err((
            0,
            format!("over {READ_MAX} entries: verify with `bzzz audit verify`"),
        ))
    } else {
        bzzz_control::audit::verify_to_head(&records, &head, bzzz_net::signed::public_key_of)
            .map_err(|b| (b.seq, b.why))
    };
    let checkpoints = st
        .control
        .get()
        .map(|c| c.with_state(|s| s.audit_checkpoints.clone()))
        .unwrap_or_default();
    let verdict = verdict.and_then(|()| {
        let Some(c) = st.keys.cluster() else {
            return Ok(0);
        };
        let pk = bzzz_crypto::records::parse_public_key(&c.genesis.admin_public_key)
            .map_err(|e| (0, e.to_string()))?;
        bzzz_control::audit::verify_checkpoints(&records, &checkpoints, &pk, &c.genesis.cluster)
            .map_err(|b| (b.seq, b.why))
    });
    let keep = |have: &str, want: &str| want.is_empty() || have.contains(want);
    let shown: Vec<_> = records
        .iter()
        .rev()
        .filter(|r| {
            keep(&r.note.principal, &f.principal)
                && keep(&r.note.action, &f.action)
                && keep(&r.note.outcome, &f.outcome)
        })
        .take(SHOW_MAX)
        .collect();
    let content = html! {
        @match &verdict {
            Ok(inside) => p id="verdict" class="ok" {
                "The chain verifies: " (records.len()) " entries, head seq " (head.seq) " " code { (head.hash) } "; "
                (checkpoints.len()) " checkpoint(s) signed by the threshold admin key (" (inside) " checked against entries held here)."
            },
            Err((seq, why)) => p id="verdict" class="err" {
                "The chain does NOT verify at seq " (seq) ": " (why)
            },
        }
        form method="get" action="/audit" {
            label for="f-principal" { "Principal" }
            input id="f-principal" name="principal" type="text" value=(f.principal) maxlength="256";
            label for="f-action" { "Action" }
            input id="f-action" name="action" type="text" value=(f.action) maxlength="256";
            label for="f-outcome" { "Outcome (ok, denied, refused)" }
            input id="f-outcome" name="outcome" type="text" value=(f.outcome) maxlength="64";
            br;
            button type="submit" { "Filter" }
        }
        p { small { (shown.len()) " of " (records.len()) " entries shown (newest first, " (SHOW_MAX) " at most)." } }
        table id="audit" {
            tr { th { "seq" } th { "time" } th { "principal" } th { "action" } th { "resource" } th { "outcome" } th { "count" } th { "node" } }
            @for r in &shown {
                tr data-seq=(r.seq) {
                    td { (r.seq) }
                    td { (r.time) }
                    td { (r.note.principal) }
                    td { (r.note.action) }
                    td { code { (r.note.resource) } }
                    td { (r.note.outcome) @if let Some(why) = &r.refused { " (refused: " (why) ")" } }
                    td { (r.note.count) }
                    td { code { (r.note.node.as_str().get(r.note.node.as_str().len().saturating_sub(8)..).unwrap_or("")) } }
                }
            }
        }
    };
    layout(StatusCode::OK, "/audit", "Audit log", content)
}
