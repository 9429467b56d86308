//! `/deploy`: the deploy page (operator session): a form, a fingerprint
//! confirmation step, a live table fed by the event stream. Its script
//! talks to the JSON API (`http::deploy`) with the session cookie.

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use maud::{PreEscaped, html};

use super::layout;
use crate::http::{Action, Res};
use crate::http::{Operator, Permission, Route, Shared};

pub fn routes() -> Vec<Route> {
    vec![Route::page(
        Method::GET,
        "/deploy",
        Permission::Need(Action::Deploy, Res::AllNodes),
        get(deploy_page),
    )]
}

async fn deploy_page(State(_): State<Shared>, _: Operator) -> Response {
    layout(
        StatusCode::OK,
        "/deploy",
        "Deploy nodes over SSH",
        html! {
            (PreEscaped(FORM))
            script { (PreEscaped(SCRIPT)) }
        },
    )
}

/// The static part of the page (no data in it).
const FORM: &str = r##"<p>BZZZ logs in to each host over SSH, checks it, uploads this node's binary, installs the service and waits until the node has joined. <a href="/">Overview</a> · <a href="/admin">Administration</a></p>
<form id="deploy-form" onsubmit="return false">
<label for="hosts">Hosts (IPs, names, ranges such as 10.0.0.5-9, one per line or comma-separated)</label>
<textarea id="hosts" rows="3" cols="50" required></textarea>
<label for="ssh-user">SSH user</label><input id="ssh-user" value="root" required>
<label for="ssh-port">SSH port</label><input id="ssh-port" type="number" value="22" min="1" max="65535">
<label for="ssh-key">SSH private key (OpenSSH text; or leave empty and give a password)</label>
<textarea id="ssh-key" rows="4" cols="50" spellcheck="false"></textarea>
<label for="ssh-password">SSH password</label><input id="ssh-password" type="password" autocomplete="off">
<label for="prefix">Install prefix on the hosts (optional)</label><input id="prefix" placeholder="/opt/bzzz">
<label for="http-port">HTTP port / P2P port on the hosts</label><input id="http-port" type="number" value="8080"> <input id="p2p-port" type="number" value="4140">
<p><button id="scan" type="button">1. Read host keys</button></p>
</form>
<div id="keys" hidden><h2>Host keys</h2><p>Compare each fingerprint with the host's own (<code>ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub</code>) and tick the ones you trust. Changed keys are refused.</p>
<table id="key-table"><thead><tr><th>Host</th><th>Fingerprint</th><th>Trust</th></tr></thead><tbody></tbody></table>
<p><button id="start" type="button">2. Deploy</button></p></div>
<div id="progress" hidden><h2>Progress</h2><table id="hosts-table"><thead><tr><th>Host</th><th>State</th><th>Detail</th></tr></thead><tbody></tbody></table>
<p id="summary"></p></div>
<p class="err" id="error" hidden></p>"##;

const SCRIPT: &str = r##"
const $ = (id) => document.getElementById(id);
function fail(msg) { const e = $("error"); e.textContent = msg; e.hidden = false; }
async function post(path, body) {
  const r = await fetch(path, {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body), credentials: "same-origin"});
  const v = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(v.error || ("HTTP " + r.status));
  return v;
}
function cell(tr, text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); return td; }
$("scan").onclick = async () => {
  $("error").hidden = true;
  try {
    const v = await post("/api/v1/deploy/scan", {hosts: $("hosts").value, ssh_port: Number($("ssh-port").value)});
    const tb = document.querySelector("#key-table tbody"); tb.textContent = "";
    for (const h of v.hosts) {
      const tr = document.createElement("tr"); tr.dataset.host = h.host;
      cell(tr, h.host);
      cell(tr, h.fingerprint || h.error, h.fingerprint ? "fp" : "err");
      const td = cell(tr, "");
      if (h.fingerprint && !h.changed) {
        const cb = document.createElement("input"); cb.type = "checkbox"; cb.className = "trust";
        cb.dataset.host = h.host; cb.dataset.fp = h.fingerprint; cb.checked = h.pinned; cb.disabled = h.pinned;
        td.appendChild(cb); if (h.pinned) td.append(" pinned");
      } else if (h.changed) { td.textContent = "CHANGED: refused"; }
      tb.appendChild(tr);
    }
    $("keys").hidden = false;
  } catch (e) { fail(e.message); }
};
$("start").onclick = async () => {
  $("error").hidden = true;
  const confirmed = {};
  for (const cb of document.querySelectorAll("input.trust")) if (cb.checked) confirmed[cb.dataset.host] = cb.dataset.fp;
  const body = {hosts: $("hosts").value, ssh_user: $("ssh-user").value, ssh_port: Number($("ssh-port").value),
    http_port: Number($("http-port").value), p2p_port: Number($("p2p-port").value), confirmed_fingerprints: confirmed};
  if ($("ssh-key").value.trim()) body.ssh_key = $("ssh-key").value; else body.ssh_password = $("ssh-password").value;
  if ($("prefix").value.trim()) body.prefix = $("prefix").value.trim();
  let run;
  try { run = await post("/api/v1/deploy", body); } catch (e) { fail(e.message); return; }
  $("start").disabled = true;
  const tb = document.querySelector("#hosts-table tbody"); tb.textContent = "";
  const rows = {};
  for (const h of run.hosts) {
    const tr = document.createElement("tr"); tr.dataset.host = h;
    cell(tr, h); rows[h] = [cell(tr, "queued", "state"), cell(tr, "")]; tb.appendChild(tr);
  }
  $("progress").hidden = false;
  const es = new EventSource(run.events);
  es.onmessage = (m) => {
    const e = JSON.parse(m.data); const r = rows[e.host]; if (!r) return;
    r[0].textContent = e.state; r[0].parentNode.dataset.state = e.state;
    r[1].textContent = (e.cause ? e.cause + ": " : "") + (e.message || e.node_id || "");
  };
  es.addEventListener("done", (m) => {
    es.close(); const v = JSON.parse(m.data);
    const ok = v.outcomes.filter((o) => o.ok).length;
    $("summary").textContent = ok + " of " + v.outcomes.length + " hosts joined" + (v.ok ? "." : "; see the failures above.");
    $("summary").dataset.done = v.ok ? "ok" : "failed";
    $("start").disabled = false;
  });
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) fail("the event stream closed"); };
};
"##;
