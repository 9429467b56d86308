//! The BZZZ control plane (SPEC §6).
//!
//! This crate holds the decisions, as pure functions of state, so they are
//! unit- and property-tested without a network:
//!
//! * [`score`]: a node's weighted score from its capabilities, uptime, load
//!   and link quality; weights come from config.
//! * [`leadership`]: which node should lead (the best-scored healthy voter,
//!   with a margin and a minimum tenure so close or noisy scores never make
//!   leadership flap) and which nodes vote (a bounded set of the best, with
//!   the same hysteresis).
//!
//! * [`raft`]: openraft's type configuration and the replicated cluster
//!   state machine (inventory, roles, rules; admin changes need the cluster
//!   admin signature), on the log store in [`store`].
//! * [`slurp`]: the leader's planners (state, observation → commands) and
//!   the Raft membership plan.
//! * [`placement`]: where each model's copies go (VRAM fit, CPU fallback,
//!   replicas, zones, holders first, hysteresis).
//! * [`wire`]: the messages of the control-plane protocol.
//! * [`access`]: users, API keys and the audit chain in the state;
//!   [`audit`]: the chain's records, their verification, the audit file.

pub mod access;
pub mod audit;
pub mod leadership;
pub mod placement;
pub mod raft;
pub mod score;
pub mod slurp;
pub mod store;
pub mod tasks;
pub mod wire;
