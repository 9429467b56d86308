//! SSH deployment of BZZZ nodes (SPEC §4).
//!
//! - [`hosts`]: the host-list syntax (lists, ranges, CIDR blocks, files).
//! - [`ssh`]: russh sessions with host-key verification (pins, known_hosts,
//!   confirmed fingerprints, trust-on-first-use) and remote commands.
//! - [`job`]: the per-host procedure (preflight → upload → install → start →
//!   joined) with its progress events; the caller supplies what only a node
//!   knows (the join token, how to tell that a node joined).
//!
//! No networking besides SSH, no knowledge of the mesh or Raft: the node
//! (`bzzz`) wires this to the API, the web UI and the CLI.

pub mod hosts;
pub mod job;
pub mod ssh;

pub use hosts::{HostsError, MAX_HOSTS, parse_hosts};
