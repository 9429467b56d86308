//! What a node does about the registry: a pure function of the
//! replicated registry and the manifests in its own store.
//!
//! - placed here and the store lacks the current content → fetch it
//!   (the old manifest stays, and Ollama keeps serving it, until the new
//!   one is written: a version rolls out without a gap);
//! - what the registry says this node holds differs from its store →
//!   report it;
//! - holds a model it is not placed for (it added it, or it lost its place
//!   on a re-plan) → keep it until the placed copies are ready, then
//!   delete it; a removed model → delete it.
//!
//! Blobs are garbage-collected separately: after any manifest change, a
//! blob BZZZ wrote that no manifest uses any more is deleted.

use std::collections::{BTreeMap, BTreeSet};

use bzzz_proto::NodeId;
use bzzz_proto::models::Registry;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fetch the current content of the model and write its manifest.
    Fetch(String),
    /// Tell the registry what this node holds of the model.
    Report {
        name: String,
        digest: Option<String>,
    },
    /// Delete the model's manifest here.
    Drop(String),
}

/// `local`: model name → digest of the manifest in this node's store, for
/// the models the registry knows.
pub fn decide(me: &NodeId, reg: &Registry, local: &BTreeMap<String, String>) -> Vec<Action> {
    let mut out = Vec::new();
    for (name, e) in &reg.models {
        let placed = reg
            .placements
            .get(name)
            .is_some_and(|p| p.iter().any(|x| &x.node == me));
        let here = local.get(name);
        let reported = reg.held.get(name).and_then(|h| h.get(me));
        if e.removed {
            if here.is_some() {
                out.push(Action::Drop(name.clone()));
            } else if reported.is_some() {
                out.push(Action::Report {
                    name: name.clone(),
                    digest: None,
                });
            }
            continue;
        }
        if reported != here {
            out.push(Action::Report {
                name: name.clone(),
                digest: here.cloned(),
            });
        }
        if placed {
            if here != Some(&e.digest) {
                out.push(Action::Fetch(name.clone()));
            }
            continue;
        }
        if here.is_some() {
            let wanted = reg.placements.get(name).map_or(0, Vec::len);
            if wanted > 0 && reg.ready(name) >= wanted {
                out.push(Action::Drop(name.clone()));
            }
        }
    }
    out
}

/// Every node that may have pieces of a blob: holders and placed nodes of
/// every model naming it.
pub fn swarm_peers(reg: &Registry, blob: &str) -> Vec<NodeId> {
    let mut peers = BTreeSet::new();
    for (name, e) in &reg.models {
        if !e.blobs.iter().any(|b| b.digest == blob) {
            continue;
        }
        if let Some(h) = reg.held.get(name) {
            peers.extend(h.keys().cloned());
        }
        if let Some(p) = reg.placements.get(name) {
            peers.extend(p.iter().map(|x| x.node.clone()));
        }
    }
    peers.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bzzz_proto::models::{ModelEntry, Placed};

    fn node(i: u8) -> NodeId {
        // A syntactically valid base58 peer id per index.
        let base = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2X";
        NodeId::parse(&format!("{base}{}", (b'a' + i) as char)).unwrap()
    }

    fn entry(digest: char) -> ModelEntry {
        ModelEntry {
            name: "m:1".into(),
            digest: format!("sha256:{}", digest.to_string().repeat(64)),
            spread_zones: false,
            ..ModelEntry::sample("m:1", 1, 1)
        }
    }

    #[test]
    fn fetch_report_keep_drop() {
        let (a, b) = (node(0), node(1));
        let mut reg = Registry::default();
        let e = entry('a');
        let d = e.digest.clone();
        reg.put(e).unwrap();
        reg.place(
            "m:1",
            vec![Placed {
                node: b.clone(),
                cpu_only: false,
            }],
        )
        .unwrap();
        // a added it (holds it, reported); b is placed and lacks it.
        reg.set_held("m:1", a.clone(), Some(d.clone())).unwrap();
        let mut a_local = BTreeMap::new();
        a_local.insert("m:1".to_string(), d.clone());
        assert_eq!(
            decide(&a, &reg, &a_local),
            vec![],
            "keep until the copy is ready"
        );
        assert_eq!(
            decide(&b, &reg, &BTreeMap::new()),
            vec![Action::Fetch("m:1".into())]
        );
        assert_eq!(
            swarm_peers(&reg, &format!("sha256:{}", "b".repeat(64))),
            vec![a.clone(), b.clone()]
        );
        // b got it: it reports; once reported, a drops its extra copy.
        let mut b_local = BTreeMap::new();
        b_local.insert("m:1".to_string(), d.clone());
        assert_eq!(
            decide(&b, &reg, &b_local),
            vec![Action::Report {
                name: "m:1".into(),
                digest: Some(d.clone())
            }]
        );
        reg.set_held("m:1", b.clone(), Some(d.clone())).unwrap();
        assert_eq!(decide(&a, &reg, &a_local), vec![Action::Drop("m:1".into())]);
        // A new version: b fetches it while keeping the old one.
        reg.put(entry('c')).unwrap();
        assert_eq!(
            decide(&b, &reg, &b_local),
            vec![Action::Fetch("m:1".into())]
        );
        // Removal: both delete, then the entry goes.
        reg.remove("m:1").unwrap();
        assert_eq!(decide(&b, &reg, &b_local), vec![Action::Drop("m:1".into())]);
        assert_eq!(
            decide(&a, &reg, &BTreeMap::new()),
            vec![Action::Report {
                name: "m:1".into(),
                digest: None
            }]
        );
        reg.set_held("m:1", a, None).unwrap();
        reg.set_held("m:1", b, None).unwrap();
        assert!(
            reg.models.is_empty(),
            "the tombstone goes once no node holds it"
        );
    }
}
