//! Node TLS keys and certificates under the cluster CA (issue #24).
//!
//! Each node makes its own P-256 key (it never leaves the node; kept
//! sealed with age to the node's identity, like its share). A node that
//! holds the CA key issues its own certificate; others ask a holder
//! ([`KeysRequest::IssueCert`]), who checks the names: only addresses the
//! requester announces (and loopback), none another member announces,
//! host names under local suffixes, a bounded count.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bzzz_crypto::ca::{NodeNames, TlsKey};
use bzzz_proto::NodeId;
use bzzz_proto::cluster::{KeysRequest, KeysResponse, RefusalCode};

use tracing::{info, warn};

use crate::Refusal;

use crate::{Keys, write_private};

/// The node's TLS key, sealed to itself.
pub const TLS_KEY_FILE: &str = "tls-key.age";
/// Which node each address and host name was first certified for (on
/// every holder of the CA key): a name once another member's is never
/// issued to another.
pub const NAMES_FILE: &str = "ca-names.json";
/// Most entries kept there.
const MAX_NAMES: usize = 4096;
/// One certificate per member at most this often (per holder).
const ISSUE_EVERY: Duration = Duration::from_secs(10);

/// Most addresses and names one certificate carries.
pub const MAX_IPS: usize = 16;
pub const MAX_DNS: usize = 8;

/// Whether `name` may be a host name in a node certificate (what the CA's
/// name constraints permit: a single label is refused, browsers would not
/// match it anyway).
pub fn dns_ok(name: &str) -> bool {
    let n = name.trim_end_matches('.');
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
        })
        && (n == "localhost"
            || ["localhost", "local", "lan", "internal", "home.arpa"]
                .iter()
                .any(|s| n.ends_with(&format!(".{s}"))))
}

/// The IP addresses in announced multiaddrs and `ip:port` strings.
pub fn ips_of<'a>(addrs: impl IntoIterator<Item = &'a str>) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for a in addrs {
        let ip = if let Some(rest) = a.strip_prefix("/ip4/").or_else(|| a.strip_prefix("/ip6/")) {
            rest.split('/').next().and_then(|s| s.parse().ok())
        } else {
            a.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
        };
        if let Some(ip) = ip
            && !ip.is_unspecified()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

impl Keys {
    /// This node's TLS key: made once, kept sealed to this node.
    pub fn tls_key(&self) -> Result<TlsKey, String> {
        let path = self.data_dir.join(TLS_KEY_FILE);
        if let Ok(sealed) = std::fs::read(&path) {
            let plain = self.open_sealed(&sealed)?;
            let pem = std::str::from_utf8(&plain).map_err(|e| e.to_string())?;
            return TlsKey::from_pem(pem).map_err(|e| e.to_string());
        }
        let key = TlsKey::generate().map_err(|e| e.to_string())?;
        let sealed = bzzz_crypto::seal::seal(&self.age.recipient(), key.expose_pem().as_bytes())
            .map_err(|e| e.to_string())?;
        write_private(&path, &sealed).map_err(|e| format!("cannot store the TLS key: {e}"))?;
        Ok(key)
    }

    /// A certificate for this node's TLS key from the cluster CA: issued
    /// here when this node holds the CA key, else by the first holder that
    /// answers.
    pub async fn node_certificate(&self, names: &NodeNames) -> Result<String, String> {
        let key = self.tls_key()?;
        let spki = key.public_der().map_err(|e| e.to_string())?;
        let c = self.cluster().ok_or("not a member yet")?;
        let ca = c.genesis.ca_cert.clone().ok_or("this cluster has no CA")?;
        if let Some(ca_key) = self.ca_key() {
            // This holder's own names, bound to it first.
            let mut bound = self.name_bindings();
            let me = self.node_id.to_string();
            for k in names
                .ips
                .iter()
                .filter(|ip| !ip.is_loopback())
                .map(ToString::to_string)
                .chain(names.dns.iter().filter(|d| *d != "localhost").cloned())
            {
                if bound.len() < MAX_NAMES {
                    bound.entry(k).or_insert_with(|| me.clone());
                }
            }
            self.save_name_bindings(&bound)?;
            return bzzz_crypto::ca::issue(&ca, &ca_key, &spki, names).map_err(|e| e.to_string());
        }
        let net = self.net().map_err(|e| e.to_string())?;
        let req = KeysRequest::IssueCert {
            spki_der: spki.clone(),
            ips: names.ips.iter().map(ToString::to_string).collect(),
            dns: names.dns.clone(),
        };
        let mut last = String::from("no holder of the CA key answered");
        for h in &c.genesis.holders {
            if h.node_id == self.node_id {
                continue;
            }
            match crate::wire::request(net, &h.node_id, &req).await {
                Ok(KeysResponse::Certificate { pem }) => {
                    // The certificate must be the CA's, for this key.
                    let ok = bzzz_crypto::ca::has_public_key(&pem, &spki).unwrap_or(false)
                        && bzzz_crypto::ca::verify_issued(&pem, &ca).is_ok();
                    if ok {
                        return Ok(pem);
                    }
                    last = format!(
                        "{} sent a certificate that is not the CA's for this key",
                        h.node_id
                    );
                }
                Ok(KeysResponse::Refused { reason, .. }) => {
                    last = format!("{}: {reason}", h.node_id)
                }
                Ok(other) => last = format!("{}: unexpected answer {other:?}", h.node_id),
                Err(e) => last = format!("{}: {e}", h.node_id),
            }
        }
        Err(last)
    }

    /// The names certified so far (name or address → node id).
    fn name_bindings(&self) -> BTreeMap<String, String> {
        std::fs::read(self.data_dir.join(NAMES_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_name_bindings(&self, m: &BTreeMap<String, String>) -> Result<(), String> {
        let b = serde_json::to_vec(m).map_err(|e| e.to_string())?;
        write_private(&self.data_dir.join(NAMES_FILE), &b)
            .map_err(|e| format!("cannot store {NAMES_FILE}: {e}"))
    }

    /// Issues a certificate to `peer` (a member; checked by the caller)
    /// for its key and the names it asks, when they are its own.
    pub(crate) fn issue_cert(
        &self,
        peer: &NodeId,
        spki_der: &[u8],
        ips: &[String],
        dns: &[String],
    ) -> Result<String, Refusal> {
        let invalid = |m: String| Refusal::new(RefusalCode::Invalid, m);
        // Cheap checks first: sizes, then this peer's rate.
        if spki_der.len() > 1024 || ips.len() > MAX_IPS || dns.len() > MAX_DNS {
            return Err(invalid(format!(
                "at most {MAX_IPS} addresses, {MAX_DNS} names and a 1 KiB key"
            )));
        }
        if let Some(bad) = dns.iter().find(|d| !dns_ok(d)) {
            return Err(invalid(format!(
                "{bad:?}: host names end in .local, .lan, .internal, .home.arpa or .localhost"
            )));
        }
        {
            static LAST: std::sync::LazyLock<Mutex<BTreeMap<NodeId, Instant>>> =
                std::sync::LazyLock::new(Mutex::default);
            let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            last.retain(|_, t| now.duration_since(*t) < ISSUE_EVERY);
            if last.contains_key(peer) {
                return Err(Refusal::new(
                    RefusalCode::Busy,
                    "one certificate per member every 10 s",
                ));
            }
            last.insert(peer.clone(), now);
        }
        let c = self
            .cluster()
            .ok_or_else(|| Refusal::new(RefusalCode::NotReady, "not initialized"))?;
        let ca = c
            .genesis
            .ca_cert
            .clone()
            .ok_or_else(|| Refusal::new(RefusalCode::NotReady, "this cluster has no CA"))?;
        let ca_key = self.ca_key().ok_or_else(|| {
            Refusal::new(
                RefusalCode::NotReady,
                "this node does not hold the cluster CA's key",
            )
        })?;
        let net = self
            .net()
            .map_err(|e| Refusal::new(RefusalCode::NotReady, e.message))?;
        let snap = net.snapshot();
        let announced = |id: &NodeId| -> Vec<IpAddr> {
            snap.peers
                .iter()
                .filter(|p| &p.announcement.node_id == id)
                .flat_map(|p| {
                    ips_of(
                        p.announcement
                            .addrs
                            .iter()
                            .map(String::as_str)
                            .chain(p.announcement.api_addr.as_deref()),
                    )
                })
                .collect()
        };
        let own = announced(peer);
        // Every other node's addresses, this holder's own included.
        let others: Vec<IpAddr> = snap
            .peers
            .iter()
            .filter(|p| &p.announcement.node_id != peer)
            .flat_map(|p| announced(&p.announcement.node_id))
            .chain(ips_of(snap.listen_addrs.iter().map(String::as_str)))
            .collect();
        let mut bound = self.name_bindings();
        let who = peer.to_string();
        let mut parsed = Vec::new();
        for ip in ips {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| invalid(format!("{ip:?} is not an address")))?;
            let owner = bound.get(&ip.to_string());
            // An address shared by hosts (a container bridge) or not the
            // requester's is left out, not fatal: the rest is certified.
            if !ip.is_loopback()
                && (!own.contains(&ip) || others.contains(&ip) || owner.is_some_and(|o| *o != who))
            {
                warn!(%peer, %ip, "address left out of a certificate: not the requester's alone");
                continue;
            }
            parsed.push(ip);
        }
        // A host name another member was certified for first (nodes that
        // share a host name: a one-machine lab) is left out too.
        let dns: Vec<String> = dns
            .iter()
            .filter(|d| {
                let taken = bound.get(*d).is_some_and(|o| *o != who);
                if taken {
                    warn!(%peer, name = %d, "name left out of a certificate: another member's");
                }
                !taken
            })
            .cloned()
            .collect();
        for k in parsed
            .iter()
            .filter(|ip| !ip.is_loopback())
            .map(ToString::to_string)
            .chain(dns.iter().filter(|d| *d != "localhost").cloned())
        {
            if bound.len() < MAX_NAMES {
                bound.entry(k).or_insert_with(|| who.clone());
            }
        }
        self.save_name_bindings(&bound)
            .map_err(|e| Refusal::new(RefusalCode::NotReady, e))?;
        let names = NodeNames {
            node_id: who,
            ips: parsed,
            dns,
        };
        let pem = bzzz_crypto::ca::issue(&ca, &ca_key, spki_der, &names)
            .map_err(|e| invalid(e.to_string()))?;
        info!(%peer, ips = ?names.ips, dns = ?names.dns, "issued a node certificate");
        Ok(pem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_are_checked() {
        for ok in [
            "gpu1.local",
            "a-b.lan",
            "x.home.arpa",
            "localhost",
            "n.localhost",
        ] {
            assert!(dns_ok(ok), "{ok}");
        }
        for bad in [
            "gpu1",
            "example.com",
            "-a.local",
            "a..local",
            "",
            "a_b.local",
        ] {
            assert!(!dns_ok(bad), "{bad}");
        }
        assert_eq!(
            ips_of([
                "/ip4/10.0.0.2/tcp/4001",
                "/ip4/0.0.0.0/tcp/1",
                "10.0.0.2:8080",
                "[::1]:80",
                "junk"
            ]),
            vec![
                "10.0.0.2".parse::<IpAddr>().expect("ip"),
                "::1".parse().expect("ip")
            ]
        );
    }
}
