//! Request-response services, each on its own libp2p protocol (so bulk
//! data never queues behind Raft): one mechanism for all of them. A
//! service is a [`Service`] entry (protocol, inbound queue, timeout); its
//! payloads are opaque bytes (CBOR byte strings on the wire), encoded and
//! decoded by the crate that owns the service. Inbound requests go to the
//! service's bounded queue as [`ServiceRequest`]s; a full queue or a
//! dropped `respond` leaves the request unanswered (the sender sees a
//! failure and may retry). Adding a service (DHT, model blobs) is one
//! variant here and one field in the swarm's behaviour.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::{NetError, signed};
use bzzz_proto::NodeId;

/// The request-response services of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Setup records, threshold signing rounds, joins, enrollment
    /// (`bzzz-keys`; JSON payloads).
    Keys,
    /// Raft RPCs, hand-offs, forwarded proposals (the control plane).
    Raft,
    /// Model blobs: piece manifests, bitfields, blocks of at most 256 KiB
    /// (`bzzz-models`). Its own protocol, so bulk data never queues with
    /// Raft's requests; the fetcher bounds its requests in flight per peer
    /// so what waits in a connection's buffers stays small.
    Models,
    /// DHT listings (`bzzz-dht`: which records a node holds, by pattern);
    /// records themselves travel on Kademlia's protocol.
    Dht,
}

impl Service {
    pub const ALL: [Service; 4] = [Service::Keys, Service::Raft, Service::Models, Service::Dht];

    pub fn protocol(self) -> StreamProtocol {
        match self {
            // 2.0.0: payloads are bytes the keys service encodes (JSON);
            // 1.0.0 carried CBOR-encoded messages.
            Service::Keys => StreamProtocol::new("/bzzz/keys/2.0.0"),
            Service::Raft => StreamProtocol::new("/bzzz/raft/1.0.0"),
            Service::Models => StreamProtocol::new("/bzzz/models/1.0.0"),
            Service::Dht => StreamProtocol::new("/bzzz/dht/1.0.0"),
        }
    }

    /// Inbound requests waiting for the node; more are left unanswered.
    pub fn queue(self) -> usize {
        match self {
            Service::Keys => 32,
            Service::Raft => 256,
            Service::Models => 256,
            Service::Dht => 64,
        }
    }

    /// An exchange must finish in this (a threshold-signing round, a
    /// snapshot chunk).
    pub fn timeout(self) -> Duration {
        match self {
            Service::Keys => Duration::from_secs(20),
            Service::Raft => Duration::from_secs(10),
            Service::Models => Duration::from_secs(20),
            Service::Dht => Duration::from_secs(10),
        }
    }

    /// Concurrent streams per connection.
    pub fn max_streams(self) -> usize {
        match self {
            Service::Keys => 100,
            Service::Raft => 256,
            Service::Models => 128,
            Service::Dht => 64,
        }
    }

    pub(crate) fn behaviour(self) -> Rr {
        request_response::cbor::Behaviour::new(
            [(self.protocol(), request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(self.timeout())
                .with_max_concurrent_streams(self.max_streams()),
        )
    }
}

/// A request from a peer, answered through `respond`.
#[derive(Debug)]
pub struct ServiceRequest {
    /// The peer, authenticated by the connection's Noise handshake.
    pub peer: NodeId,
    pub payload: Vec<u8>,
    pub respond: oneshot::Sender<Vec<u8>>,
}

/// Serves a service's inbound requests: each on its own task on `tracker`,
/// at most `limit` at once (more wait in the bounded queue, beyond which
/// the network leaves them unanswered), all stopped by `cancel`. `handle`
/// gets the authenticated peer and the payload and returns the answer
/// (`None`: no answer; the sender sees a failure).
pub async fn serve<F, Fut>(
    mut rx: mpsc::Receiver<ServiceRequest>,
    limit: usize,
    tracker: tokio_util::task::TaskTracker,
    cancel: tokio_util::sync::CancellationToken,
    handle: F,
) where
    F: Fn(NodeId, Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Option<Vec<u8>>> + Send + 'static,
{
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(limit));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let req = tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.recv() => match r { Some(r) => r, None => return },
        };
        let answer = handle(req.peer, req.payload);
        let respond = req.respond;
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = cancel.cancelled() => {}
                a = answer => if let Some(a) = a {
                    let _ = respond.send(a);
                },
            }
        });
    }
}

/// A payload, carried as a CBOR byte string.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Frame(#[serde(with = "serde_bytes")] pub(crate) Vec<u8>);

/// The behaviour of one service.
pub(crate) type Rr = request_response::cbor::Behaviour<Frame, Frame>;

type Answer = (Service, Option<(ResponseChannel<Frame>, Vec<u8>)>);
/// Where the answer to an outbound request goes.
type Reply = oneshot::Sender<Result<Vec<u8>, NetError>>;

/// The swarm task's state for every service: inbound queues, answers
/// being prepared, requests awaiting answers.
pub(crate) struct Services {
    inbound: HashMap<Service, mpsc::Sender<ServiceRequest>>,
    answering: FuturesUnordered<BoxFuture<'static, Answer>>,
    outbound: HashMap<(Service, OutboundRequestId), Reply>,
}

impl Services {
    /// The services' state and the receivers of their inbound queues.
    pub(crate) fn new() -> (Self, HashMap<Service, mpsc::Receiver<ServiceRequest>>) {
        let mut inbound = HashMap::new();
        let mut receivers = HashMap::new();
        for s in Service::ALL {
            let (tx, rx) = mpsc::channel(s.queue());
            inbound.insert(s, tx);
            receivers.insert(s, rx);
        }
        (
            Self {
                inbound,
                answering: FuturesUnordered::new(),
                outbound: HashMap::new(),
            },
            receivers,
        )
    }

    /// Sends a request; the answer (or failure) goes to `reply`.
    pub(crate) fn request(
        &mut self,
        rr: &mut Rr,
        service: Service,
        peer: &NodeId,
        payload: Vec<u8>,
        reply: Reply,
    ) {
        let Ok(p) = peer.as_str().parse::<PeerId>() else {
            let _ = reply.send(Err(NetError::Request {
                peer: peer.clone(),
                reason: "not a peer id".into(),
            }));
            return;
        };
        let id = rr.send_request(&p, Frame(payload));
        self.outbound.insert((service, id), reply);
    }

    /// The next prepared answer (to send with the service's behaviour).
    pub(crate) async fn next_answer(&mut self) -> Option<Answer> {
        if self.answering.is_empty() {
            return std::future::pending().await;
        }
        self.answering.next().await
    }

    pub(crate) fn on_event(
        &mut self,
        service: Service,
        ev: request_response::Event<Frame, Frame>,
        local: &NodeId,
    ) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                // Each service decides whom it answers (members only): the
                // network only authenticates the peer.
                let Ok(node) = signed::node_id(&peer) else {
                    return;
                };
                let (respond, rx) = oneshot::channel();
                let req = ServiceRequest {
                    peer: node,
                    payload: request.0,
                    respond,
                };
                let queued = self
                    .inbound
                    .get(&service)
                    .is_some_and(|tx| tx.try_send(req).is_ok());
                if queued {
                    self.answering.push(Box::pin(async move {
                        (service, rx.await.ok().map(|r| (channel, r)))
                    }));
                } else {
                    debug!(%peer, ?service, "inbound queue full; request dropped");
                }
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.outbound.remove(&(service, request_id)) {
                    let _ = reply.send(Ok(response.0));
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.outbound.remove(&(service, request_id)) {
                    let peer = signed::node_id(&peer).unwrap_or_else(|_| local.clone());
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, ?service, "inbound request failed: {error}");
            }
            Event::ResponseSent { .. } => {}
        }
    }
}
