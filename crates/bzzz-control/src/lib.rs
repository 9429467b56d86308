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
//! The Raft state machine (openraft) and the SLURP planners build on these.

pub mod leadership;
pub mod raft;
pub mod score;
pub mod store;
