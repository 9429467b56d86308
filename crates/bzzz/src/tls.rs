//! TLS on the node's HTTP listeners (issue #24): the node's own P-256 key
//! (bzzz-keys), a certificate from the cluster CA once the cluster has
//! one (renewed well before expiry and when the node's addresses change,
//! swapped in without a restart), a self-signed one before (its
//! fingerprint is logged, for the operator to check in the browser).
//!
//! For now a listener serves TLS and plain HTTP on the same port (the
//! first byte of a connection tells them apart), so every client keeps
//! working while clients learn to trust the CA; refusing plain HTTP on
//! non-loopback listeners is the next step of issue #24.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bzzz_crypto::ca::NodeNames;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use crate::state::AppState;

/// Renew when less than this is left of a certificate.
const RENEW_BEFORE: i64 = 10 * 24 * 3600;
/// How often the certificate is checked.
const CHECK_EVERY: Duration = Duration::from_secs(30);

/// The certificate the listeners present, swapped in place.
#[derive(Debug, Default)]
pub struct Resolver(RwLock<Option<Arc<CertifiedKey>>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the node presents now.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Current {
    /// PEM.
    pub cert: String,
    pub fingerprint: String,
    /// Issued by the cluster CA (else self-signed).
    pub from_ca: bool,
    pub not_after: i64,
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
}

/// The node's TLS: the server configuration its listeners use.
#[derive(Debug)]
pub struct Tls {
    resolver: Arc<Resolver>,
    pub config: Arc<rustls::ServerConfig>,
    current: RwLock<Current>,
}

impl Tls {
    pub fn new() -> anyhow::Result<Self> {
        let resolver = Arc::new(Resolver::default());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            resolver,
            config: Arc::new(config),
            current: RwLock::default(),
        })
    }

    pub fn current(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Presents `cert_pem` with `key_pem` from now on.
    fn set(&self, key_pem: &str, cur: Current) -> anyhow::Result<()> {
        let certs =
            CertificateDer::pem_slice_iter(cur.cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let ck = CertifiedKey::from_der(certs, key, &provider)?;
        *self.resolver.0.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(ck));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = cur;
        Ok(())
    }
}

/// The client for other nodes' APIs once the cluster has a CA: https,
/// trusting that CA only (forwarded inference and DHT reads carry the
/// caller's credential), with the CA's fingerprint it was made for.
static PEER: RwLock<Option<(String, reqwest::Client)>> = RwLock::new(None);

/// Makes the node-to-node client trust `ca_pem` (once per CA).
pub fn set_cluster_ca(ca_pem: &str) {
    let Ok(fp) = bzzz_crypto::ca::fingerprint(ca_pem) else {
        return;
    };
    if PEER
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(|(f, _)| *f == fp)
    {
        return;
    }
    let built = reqwest::Certificate::from_pem(ca_pem.as_bytes()).and_then(|ca| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .tls_certs_only([ca])
            .build()
    });
    match built {
        Ok(c) => *PEER.write().unwrap_or_else(|p| p.into_inner()) = Some((fp, c)),
        Err(e) => warn!("no node-to-node TLS client: {e}"),
    }
}

/// How this node reaches another node's API at `addr` (`host:port`):
/// https under the cluster CA once there is one, else plain HTTP.
pub fn peer(addr: &str) -> (String, Option<reqwest::Client>) {
    match PEER.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        Some((_, c)) => (format!("https://{addr}"), Some(c.clone())),
        None => (format!("http://{addr}"), None),
    }
}

/// The names this node's certificate carries: its listening addresses
/// (libp2p's, expanded per interface, and the API's), loopback, and its
/// host name under `.local` and `localhost`.
pub fn names(st: &AppState) -> NodeNames {
    let snap = st.net.snapshot();
    let api = st.api_addr.to_string();
    let mut ips = bzzz_keys::tls::ips_of(
        snap.listen_addrs
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(api.as_str())),
    );
    for lo in [IpAddr::from([127, 0, 0, 1]), "::1".parse().expect("ip")] {
        if !ips.contains(&lo) {
            ips.push(lo);
        }
    }
    ips.sort();
    ips.truncate(bzzz_keys::tls::MAX_IPS);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let mut dns = vec!["localhost".to_owned()];
    let local = format!("{host}.local");
    if !host.is_empty() && bzzz_keys::tls::dns_ok(&local) {
        dns.push(local);
    }
    NodeNames {
        node_id: st.net.local_id().to_string(),
        ips,
        dns,
    }
}

/// Keeps the presented certificate current until cancelled.
pub async fn run(st: Arc<AppState>, tls: Arc<Tls>) {
    let cancel = st.tasks.cancel.clone();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Membership (setup, a join) arrives with the node's own info.
    let mut local = st.local.clone();
    let mut last_error = String::new();
    loop {
        if let Err(e) = refresh(&st, &tls).await {
            let e = e.to_string();
            if e != last_error {
                warn!("TLS certificate: {e}");
                last_error = e;
            }
        } else {
            last_error.clear();
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            r = local.changed() => if r.is_err() { return },
        }
    }
}

/// Makes or renews the certificate when due.
async fn refresh(st: &AppState, tls: &Tls) -> anyhow::Result<()> {
    let names = names(st);
    let ca = st.keys.cluster().and_then(|c| c.genesis.ca_cert.clone());
    if let Some(ca) = &ca {
        set_cluster_ca(ca);
    }
    let cur = tls.current();
    let now = crate::control::now_ms() as i64 / 1000;
    let due = cur.cert.is_empty()
        || cur.from_ca != ca.is_some()
        || cur.ips != names.ips
        || cur.dns != names.dns
        || cur.not_after - now < RENEW_BEFORE
        || ca
            .as_deref()
            .is_some_and(|ca| bzzz_crypto::ca::verify_issued(&cur.cert, ca).is_err());
    if !due {
        return Ok(());
    }
    let key = st.keys.tls_key().map_err(anyhow::Error::msg)?;
    let cert = match &ca {
        Some(_) => st
            .keys
            .node_certificate(&names)
            .await
            .map_err(anyhow::Error::msg)?,
        None => bzzz_crypto::ca::self_signed(&key, &names)?,
    };
    let next = Current {
        fingerprint: bzzz_crypto::ca::fingerprint(&cert)?,
        not_after: bzzz_crypto::ca::not_after(&cert)?,
        from_ca: ca.is_some(),
        ips: names.ips.clone(),
        dns: names.dns.clone(),
        cert,
    };
    info!(
        fingerprint = %next.fingerprint,
        from_ca = next.from_ca,
        "TLS certificate in use{}",
        if next.from_ca { "" } else { " (self-signed until setup: check this fingerprint in the browser)" }
    );
    tls.set(key.expose_pem(), next)
}
