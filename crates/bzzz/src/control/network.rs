//! The openraft network over the mesh: each Raft RPC is one request on
//! `/bzzz/raft/1.0.0` (through `NetHandle`), JSON in the control wire format.

use super::*;

/// Raft's network over the mesh. `behind` is raised when a voter refuses
/// this node's candidacy because its log is more up to date (see
/// [`Control::stand_down_if_behind`]).
#[derive(Clone)]
pub(super) struct Net(
    pub(super) NetHandle,
    pub(super) Arc<std::sync::atomic::AtomicBool>,
);

pub(super) struct Conn {
    net: NetHandle,
    target: NodeIdU64,
    peer: Option<NodeId>,
    behind: Arc<std::sync::atomic::AtomicBool>,
}

impl RaftNetworkFactory<TypeConfig> for Net {
    type Network = Conn;
    async fn new_client(&mut self, target: NodeIdU64, node: &BasicNode) -> Conn {
        Conn {
            net: self.0.clone(),
            target,
            peer: NodeId::parse(&node.addr).ok(),
            behind: self.1.clone(),
        }
    }
}

pub(super) fn net_err<E: std::error::Error>(
    e: impl std::fmt::Display,
) -> RPCError<NodeIdU64, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
}

impl Conn {
    pub(super) async fn call<E: std::error::Error>(
        &self,
        rpc: &Rpc,
        ttl: Duration,
    ) -> Result<Reply, RPCError<NodeIdU64, BasicNode, E>> {
        let peer = self
            .peer
            .as_ref()
            .ok_or_else(|| net_err(format!("node {} has no valid address", self.target)))?;
        let sent = tokio::time::timeout(ttl, self.net.raft_request(peer, wire::encode(rpc))).await;
        let bytes = match sent {
            Err(_) => return Err(net_err(format!("no answer from {peer} within {ttl:?}"))),
            Ok(Err(e)) => {
                return Err(RPCError::Unreachable(Unreachable::new(
                    &std::io::Error::other(e.to_string()),
                )));
            }
            Ok(Ok(b)) => b,
        };
        wire::decode::<Reply>(&bytes).map_err(net_err)
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        AppendEntriesResponse<NodeIdU64>,
        RPCError<NodeIdU64, BasicNode, RaftError<NodeIdU64>>,
    > {
        match self.call(&Rpc::Append(rpc), option.hard_ttl()).await? {
            Reply::Append(Ok(r)) => Ok(r),
            Reply::Append(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(net_err(format!("unexpected answer {other:?}"))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeIdU64>,
        RPCError<NodeIdU64, BasicNode, RaftError<NodeIdU64, openraft::error::InstallSnapshotError>>,
    > {
        match self.call(&Rpc::Snapshot(rpc), option.hard_ttl()).await? {
            Reply::Snapshot(Ok(r)) => Ok(r),
            Reply::Snapshot(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(net_err(format!("unexpected answer {other:?}"))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeIdU64>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeIdU64>, RPCError<NodeIdU64, BasicNode, RaftError<NodeIdU64>>> {
        let mine = rpc.last_log_id;
        match self.call(&Rpc::Vote(rpc), option.hard_ttl()).await? {
            Reply::Vote(Ok(r)) => {
                // Refused by a voter whose log is ahead of ours: we cannot
                // win, and standing again would only keep raising the term
                // (openraft 0.9's voters do not adopt the term of a
                // candidate they refuse by log; there is no pre-vote).
                if !r.vote_granted && r.last_log_id > mine {
                    self.behind
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(r)
            }
            Reply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(net_err(format!("unexpected answer {other:?}"))),
        }
    }
}
