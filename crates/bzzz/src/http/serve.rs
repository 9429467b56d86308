//! The HTTP server with bounds at the edge: at most [`MAX_CONNECTIONS`]
//! open connections (more wait in the kernel's accept queue), at most
//! [`MAX_PER_SOURCE`] of them from one address (one more is answered
//! `429` at once and closed, without taking a slot, so one client cannot
//! hold every slot or stall the accept loop), request
//! headers within [`HEADER_TIMEOUT`] (a client that trickles headers is
//! dropped), HTTP/1.1 only. Handler time and body sizes are bounded per
//! route by the router (`http::router`). Each connection is a task on the
//! node's tracker; cancel stops accepting and closes connections
//! gracefully. With a TLS configuration (`crate::tls`), a connection whose
//! first byte opens a TLS handshake is served over TLS, any other as
//! plain HTTP on the same port.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::debug;

/// Open connections at most.
pub const MAX_CONNECTIONS: usize = 512;
/// Open connections from one address at most.
pub const MAX_PER_SOURCE: u32 = 64;
/// Refusals (`429`, see [`MAX_PER_SOURCE`]) being written at once at
/// most; each lasts [`REFUSAL_TIME`] at most.
const MAX_REFUSALS: usize = 256;
const REFUSAL_TIME: Duration = Duration::from_millis(200);
/// Request headers must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection left open when the server stops is closed after this.
const DRAIN: Duration = Duration::from_secs(2);

/// The kernel's accept queue for a listener (capped by
/// `net.core.somaxconn`). The default of the socket libraries (128) is
/// too short for a burst of clients: a full queue drops SYNs, and every
/// client then waits a 1 s retransmission, a stranger's flood included.
pub const BACKLOG: u32 = 4096;

/// A listener on `addr` with a [`BACKLOG`] accept queue.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(BACKLOG)
}

/// Serves `app` on `listener` until `cancel` (TLS too, with `tls`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    exempt: Exempt,
    tracker: TaskTracker,
    cancel: CancellationToken,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let sources = Arc::new(Sources::default());
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, remote) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Some(source) = Sources::take(&sources, remote.ip(), &exempt) else {
            debug!(%remote, "too many connections from one address");
            // The global slot goes back at once: refusals have their own
            // few slots, and without one the connection is just closed.
            drop(permit);
            if let Ok(slot) = refusals.clone().try_acquire_owned() {
                tracker.spawn(async move {
                    too_many(stream).await;
                    drop(slot);
                });
            }
            continue;
        };
        // Requests carry who sent them and, over TLS, [`Secure`]; answers
        // over TLS carry HSTS.
        let app = app.clone();
        let svc = move |secure: bool| {
            app.clone()
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(ConnectInfo::<SocketAddr>(remote));
                    if secure {
                        req.extensions_mut().insert(Secure);
                    }
                    req.map(axum::body::Body::new)
                })
                .map_response(move |mut r: axum::response::Response| {
                    if secure {
                        r.headers_mut().insert(
                            axum::http::header::STRICT_TRANSPORT_SECURITY,
                            // Short while plain HTTP is still served (a
                            // re-setup makes a new CA; a long pin would
                            // lock browsers out of the node).
                            axum::http::HeaderValue::from_static("max-age=300"),
                        );
                    }
                    r
                })
        };
        let cancel = cancel.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let _source = source;
            let Some(config) = tls else {
                return serve_conn(stream, svc(false), remote, cancel).await;
            };
            // A TLS handshake starts with a record of type 22.
            let mut first = [0u8; 1];
            let is_tls = matches!(
                tokio::time::timeout(HEADER_TIMEOUT, stream.peek(&mut first)).await,
                Ok(Ok(1))
            ) && first[0] == 0x16;
            if !is_tls {
                return serve_conn(stream, svc(false), remote, cancel).await;
            }
            let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
            match tokio::time::timeout(HEADER_TIMEOUT, accept).await {
                Ok(Ok(s)) => serve_conn(s, svc(true), remote, cancel).await,
                Ok(Err(e)) => debug!(%remote, "TLS handshake failed: {e}"),
                Err(_) => debug!(%remote, "TLS handshake timed out"),
            }
        });
    }
}

/// In a request's extensions when it came over TLS (cookies get `Secure`).
#[derive(Debug, Clone, Copy)]
pub struct Secure;

/// Serves one connection (plain or TLS) until it ends or `cancel`.
async fn serve_conn<I, S>(io: I, svc: S, remote: SocketAddr, cancel: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%remote, "connection ended: {e}");
            }
        }
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}

/// Addresses the per-source limit does not apply to (the cluster's proven
/// members: a node forwards many callers' requests from its one address).
pub type Exempt = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// Open connections per source address.
#[derive(Debug, Default)]
struct Sources(Mutex<HashMap<IpAddr, u32>>);

/// One connection counted for its source (uncounted on drop).
struct Source {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Sources {
    fn take(this: &Arc<Self>, ip: IpAddr, exempt: &Exempt) -> Option<Source> {
        let mut m = this.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        // Asked only at the limit: the common case costs no lookup.
        if *n >= MAX_PER_SOURCE && !exempt(ip) {
            return None;
        }
        *n += 1;
        Some(Source {
            sources: this.clone(),
            ip,
        })
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let mut m = self.sources.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// The whole answer to a connection over its source's limit (written
/// without parsing the request; what the client sends is read and
/// dropped until it closes, so the answer is not lost to a reset;
/// bounded in time).
async fn too_many(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const BODY: &str = "{\"error\":\"too many open connections from this address\"}";
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of clients beyond the libraries' default backlog (128)
    /// completes its handshakes while nothing accepts (no SYN dropped).
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_a_long_accept_queue() {
        let l = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = l.local_addr().expect("addr");
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(128);
        let n = (4096u32.min(somaxconn) as usize).min(400);
        let mut held = Vec::new();
        for i in 0..n {
            let c = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            .unwrap_or_else(|_| panic!("connection {i} of {n} waited: the accept queue is short"))
            .expect("connect");
            held.push(c);
        }
        drop(l);
    }

    #[test]
    fn the_per_source_limit_counts_per_address_and_spares_members() {
        let sources = Arc::new(Sources::default());
        let stranger: IpAddr = "10.0.0.9".parse().expect("ip");
        let member: IpAddr = "10.0.0.2".parse().expect("ip");
        let exempt: Exempt = Arc::new(move |ip| ip == member);
        let held: Vec<_> = (0..MAX_PER_SOURCE)
            .map(|_| Sources::take(&sources, stranger, &exempt).expect("under the limit"))
            .collect();
        assert!(Sources::take(&sources, stranger, &exempt).is_none());
        let more: Vec<_> = (0..MAX_PER_SOURCE * 2)
            .map(|_| Sources::take(&sources, member, &exempt).expect("a member is spared"))
            .collect();
        drop(held.into_iter().next());
        assert!(
            Sources::take(&sources, stranger, &exempt).is_some(),
            "a closed connection frees its count"
        );
        drop(more);
        assert!(!sources.0.lock().expect("lock").contains_key(&member));
    }
}
