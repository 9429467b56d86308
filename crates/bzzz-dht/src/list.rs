//! Listings and the [`Service::Dht`] protocol: which heads a node holds
//! that match a pattern, the union over every member, and the answers to
//! peers' requests (listings, direct reads of a key).

use std::collections::BTreeMap;
use std::time::Duration;

use bzzz_net::Service;
use bzzz_proto::NodeId;
use bzzz_proto::dht::ListEntry;
use bzzz_proto::ucxl::{Address, Component};
use serde::{Deserialize, Serialize};

use crate::{Dht, DhtError, MAX_LIST, record};

/// Request on [`Service::Dht`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    List {
        pattern: String,
    },
    /// The record this node stores under a key (hex); the answer is the
    /// raw value, empty when it holds none.
    Get {
        key: String,
    },
}
impl Dht {
    /// Heads held here that match `pattern`.
    pub fn list_local(&self, pattern: &Address) -> Vec<ListEntry> {
        let mut out = Vec::new();
        self.store.scan(|key, value| {
            if let Ok(env) = serde_json::from_slice::<bzzz_proto::dht::Envelope>(value)
                && let Ok(body) = serde_json::from_str::<bzzz_proto::dht::RecordBody>(&env.body)
                && let Ok(addr) = body.address.parse::<Address>()
                && record::head_key(&addr) == key
                && pattern.matches(&addr)
            {
                out.push(ListEntry {
                    role: match &addr.role {
                        Component::Name(r) => r.clone(),
                        Component::Any => String::new(),
                    },
                    address: body.address,
                    version: body.version,
                    author: Some(body.author),
                    timestamp_ms: body.timestamp_ms,
                });
            }
            out.len() < MAX_LIST
        });
        out
    }

    /// Every record in the cluster matching `pattern` (asks every member).
    pub async fn ls(&self, pattern: &Address) -> Result<Vec<ListEntry>, DhtError> {
        let mut all = self.list_local(pattern);
        let peers: Vec<NodeId> = self
            .net
            .snapshot()
            .peers
            .iter()
            .filter(|p| p.proven)
            .map(|p| p.announcement.node_id.clone())
            .collect();
        let req = serde_json::to_vec(&Request::List {
            pattern: pattern.to_string(),
        })
        .map_err(|e| DhtError::Invalid(e.to_string()))?;
        let answers = futures::future::join_all(peers.iter().map(|p| {
            let req = req.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(3), self.net.call(Service::Dht, p, req))
                    .await
            }
        }))
        .await;
        for a in answers.into_iter().flatten().flatten() {
            if let Ok(list) = serde_json::from_slice::<Vec<ListEntry>>(&a) {
                all.extend(list.into_iter().take(MAX_LIST));
            }
        }
        let mut best: BTreeMap<String, ListEntry> = BTreeMap::new();
        for e in all {
            if e.address
                .parse::<Address>()
                .is_ok_and(|a| pattern.matches(&a))
            {
                match best.get(&e.address) {
                    Some(b) if b.version >= e.version => {}
                    _ => {
                        best.insert(e.address.clone(), e);
                    }
                }
            }
        }
        Ok(best.into_values().collect())
    }

    /// Answers a peer's [`Service::Dht`] request.
    pub fn serve(&self, payload: &[u8]) -> Option<Vec<u8>> {
        match serde_json::from_slice::<Request>(payload).ok()? {
            Request::List { pattern } => {
                let p: Address = pattern.parse().ok()?;
                serde_json::to_vec(&self.list_local(&p)).ok()
            }
            Request::Get { key } => {
                let key = hex::decode(key).ok().filter(|k| k.len() <= 64)?;
                Some(self.store.value(&key).unwrap_or_default())
            }
        }
    }
}
