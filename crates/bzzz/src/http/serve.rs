//! The HTTP server with bounds at the edge: at most [`MAX_CONNECTIONS`]
//! open connections (more wait in the kernel's accept queue), request
//! headers within [`HEADER_TIMEOUT`] (a client that trickles headers is
//! dropped), HTTP/1.1 only. Handler time and body sizes are bounded per
//! route by the router (`http::router`). Each connection is a task on the
//! node's tracker; cancel stops accepting and closes connections
//! gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
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
/// Request headers must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection left open when the server stops is closed after this.
const DRAIN: Duration = Duration::from_secs(2);

/// Serves `app` on `listener` until `cancel`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let svc =
            app.clone()
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(ConnectInfo::<SocketAddr>(remote));
                    req.map(axum::body::Body::new)
                });
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let mut builder = Builder::new(TokioExecutor::new()).http1_only();
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(svc),
            );
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
        });
    }
}
