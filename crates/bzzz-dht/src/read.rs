//! Reads: lookups (the closest members asked directly when the routing
//! table knows every member, Kademlia's lookup otherwise), the newest head
//! with read repair, one version, and temporal segments resolved against
//! the head (`*~N` one lookup, `~~N`/`^^N` two, a time a binary search on
//! the versions' timestamps).

use std::time::Duration;

use bzzz_net::Service;
use bzzz_proto::NodeId;
use bzzz_proto::ucxl::{Address, Component, Temporal};
use futures::StreamExt as _;
use tracing::debug;

use crate::{Checked, Dht, DhtError, READ_QUORUM, Request, record, rfc3339};

impl Dht {
    /// Looks a key up and returns the valid records found (with holders).
    async fn lookup(
        &self,
        key: Vec<u8>,
        want: usize,
    ) -> Result<Vec<(Option<NodeId>, Vec<u8>, Checked)>, DhtError> {
        let found = match self.net.dht_closest(key.clone()).await {
            Some(peers) if !peers.is_empty() => {
                let direct = self.ask_closest(&key, peers, want).await;
                if direct.is_empty() {
                    // Not where it belongs now (the closest nodes changed
                    // since it was written): Kademlia's lookup finds it.
                    self.kad_get(&key, want).await?
                } else {
                    direct
                }
            }
            _ => self.kad_get(&key, want).await?,
        };
        let authz = self.authz();
        let mut out = Vec::new();
        for (who, raw) in found {
            match record::check(&authz, Some(&key), &raw) {
                Ok(c) => out.push((who, raw, c)),
                Err(e) => {
                    debug!(holder = ?who, "a holder returned a record that fails the checks: {e}")
                }
            }
        }
        Ok(out)
    }

    async fn kad_get(&self, key: &[u8], want: usize) -> Result<Vec<bzzz_net::Found>, DhtError> {
        self.net
            .dht_get(key.to_vec(), want)
            .await
            .map_err(|e| DhtError::Unavailable(e.to_string()))
    }

    /// Reads a key here and from the closest members at once (one round
    /// trip); returns once `want` copies are in, or every one answered.
    async fn ask_closest(
        &self,
        key: &[u8],
        peers: Vec<NodeId>,
        want: usize,
    ) -> Vec<bzzz_net::Found> {
        let mut found = Vec::new();
        if let Some(v) = self.store.value(key) {
            found.push((None, v));
        }
        let me = self.net.local_id();
        let req = match serde_json::to_vec(&Request::Get {
            key: hex::encode(key),
        }) {
            Ok(r) => r,
            Err(_) => return found,
        };
        let mut asks: futures::stream::FuturesUnordered<_> = peers
            .into_iter()
            .filter(|p| p != me)
            .map(|p| {
                let req = req.clone();
                async move {
                    let r = tokio::time::timeout(
                        Duration::from_secs(3),
                        self.net.call(Service::Dht, &p, req),
                    )
                    .await;
                    (p, r)
                }
            })
            .collect();
        while found.len() < want {
            let Some((p, r)) = asks.next().await else {
                break;
            };
            if let Ok(Ok(v)) = r
                && !v.is_empty()
            {
                found.push((Some(p), v));
            }
        }
        found
    }

    /// The newest version of an address (with read repair), if any.
    pub async fn head(&self, addr: &Address) -> Result<Option<Checked>, DhtError> {
        let key = record::head_key(addr);
        let found = self.lookup(key.clone(), READ_QUORUM).await?;
        let Some(best) = found
            .iter()
            .max_by_key(|(_, _, c)| (c.body.version, c.body.timestamp_ms))
            .map(|(_, raw, c)| (raw.clone(), c.clone()))
        else {
            return Ok(None);
        };
        let stale: Vec<NodeId> = found
            .iter()
            .filter(|(_, _, c)| c.body.version < best.1.body.version)
            .filter_map(|(w, _, _)| w.clone())
            .collect();
        if !stale.is_empty() {
            debug!(count = stale.len(), "read repair: sending the newest head");
            self.net
                .dht_put_to(key.clone(), best.0.clone(), stale)
                .await;
        }
        if found
            .iter()
            .any(|(w, _, c)| w.is_none() && c.body.version < best.1.body.version)
        {
            use bzzz_net::store::RecordStore as _;
            let mut s = self.store.clone();
            let _ = s.put(bzzz_net::Record::new(
                bzzz_net::RecordKey::new(&key),
                best.0,
            ));
        }
        Ok(Some(best.1))
    }

    /// One version of an address, if stored.
    pub async fn version(&self, addr: &Address, version: u64) -> Result<Option<Checked>, DhtError> {
        let found = self.lookup(record::version_key(addr, version), 1).await?;
        Ok(found
            .into_iter()
            .map(|(_, _, c)| c)
            .find(|c| c.body.version == version))
    }

    /// The record an address names, its temporal segment resolved.
    pub async fn resolve(&self, addr: &Address) -> Result<Checked, DhtError> {
        // AGENT `any` names records no particular agent wrote (the
        // cluster configuration): a plain address, not a pattern.
        let pattern = [&addr.role, &addr.project, &addr.task]
            .iter()
            .any(|c| matches!(c, Component::Any))
            || addr
                .path
                .iter()
                .any(|s| !matches!(s, bzzz_proto::ucxl::Segment::Name(_)));
        if pattern {
            return Err(DhtError::Invalid(format!(
                "{addr} is a pattern; list it with `bzzz dht ls` (get takes one address)"
            )));
        }
        let base = record::write_address(addr);
        let missing = || DhtError::NotFound(format!("no record at {base}"));
        let wanted = match &addr.temporal {
            Temporal::Latest => return self.head(&base).await?.ok_or_else(missing),
            Temporal::First => 1,
            Temporal::Version(n) => *n,
            Temporal::Back(n) => {
                let head = self.head(&base).await?.ok_or_else(missing)?;
                let latest = head.body.version;
                if *n >= latest {
                    return Err(DhtError::NotFound(format!(
                        "~~{n} asks for {n} versions back from version {latest}; the history starts at version 1 (at most ~~{})",
                        latest - 1
                    )));
                }
                if *n == 0 {
                    return Ok(head);
                }
                latest - n
            }
            Temporal::Forward(n) => {
                let head = self.head(&base).await?.ok_or_else(missing)?;
                let latest = head.body.version;
                let v = n.saturating_add(1);
                if v > latest {
                    return Err(DhtError::NotFound(format!(
                        "^^{n} asks for version {v}; the latest is {latest} (at most ^^{})",
                        latest - 1
                    )));
                }
                if v == latest {
                    return Ok(head);
                }
                v
            }
            Temporal::At { secs, nanos } => {
                let t_ms = secs.saturating_mul(1000) + u64::from(*nanos) / 1_000_000;
                return self.at_time(&base, t_ms).await;
            }
        };
        if let Some(c) = self.version(&base, wanted).await? {
            return Ok(c);
        }
        match self.head(&base).await? {
            None => Err(missing()),
            Some(h) if wanted > h.body.version => Err(DhtError::NotFound(format!(
                "version {wanted} of {base} does not exist; the latest is {}",
                h.body.version
            ))),
            Some(h) if wanted == h.body.version => Ok(h),
            Some(_) => Err(DhtError::Unavailable(format!(
                "version {wanted} of {base} exists but no holder answered"
            ))),
        }
    }

    /// The version current at `t_ms`: the newest written at or before it.
    async fn at_time(&self, base: &Address, t_ms: u64) -> Result<Checked, DhtError> {
        let head = self
            .head(base)
            .await?
            .ok_or_else(|| DhtError::NotFound(format!("no record at {base}")))?;
        if head.body.timestamp_ms <= t_ms {
            return Ok(head);
        }
        // Versions' timestamps never decrease: binary search 1..latest.
        let (mut lo, mut hi) = (1u64, head.body.version - 1);
        let mut best: Option<Checked> = None;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let c = self.version(base, mid).await?.ok_or_else(|| {
                DhtError::Unavailable(format!("version {mid} of {base}: no holder answered"))
            })?;
            if c.body.timestamp_ms <= t_ms {
                best = Some(c);
                lo = mid + 1;
            } else {
                if mid == 1 {
                    break;
                }
                hi = mid - 1;
            }
        }
        best.ok_or_else(|| {
            DhtError::NotFound(format!(
                "{base} did not exist at {} (the history starts later)",
                rfc3339(t_ms)
            ))
        })
    }
}
