//! Serving (SPEC §8, serving half): managed model backends on each node
//! ([`managed`]), the choice of a replica for each request ([`route`]),
//! and the dialects of inference with the translation between them
//! ([`translate`], shared with the agents' model client). The HTTP side
//! (the OpenAI- and Ollama-compatible routes, forwarding between nodes)
//! lives in `bzzz::http::inference`.

pub mod managed;
pub mod route;
pub mod translate;

pub use managed::{BackendStatus, Busy, ManagedConfig, State, Supervisor, Want};
