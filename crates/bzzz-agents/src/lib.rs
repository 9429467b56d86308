//! BZZZ agents (SPEC §10): the tasks of configured repositories, worked
//! by a local model in a sandbox and delivered as branches.
//!
//! - [`task`]: plain-Git task files (`tasks/NAME.md` with front matter).
//! - [`forge`]: task sources behind one [`forge::Forge`] trait (plain Git).
//! - [`sandbox`]: bubblewrap with limits, for every command and file
//!   operation the model asks for.
//! - [`worker`]: the fixed program around the model: tools, JSON-schema
//!   constrained replies, caps.
//!
//! Claims (exactly once across the cluster) live in the replicated state
//! (`bzzz_control::tasks`); the node's runner (`bzzz::agents`) joins them.

pub mod forge;
pub mod repo;
pub mod sandbox;
pub mod schema;
pub mod task;
pub mod worker;
