//! Serving (SPEC §8, serving half): managed model backends on each node
//! ([`managed`]) and the choice of a replica for each request ([`route`]).
//! The HTTP side (the OpenAI- and Ollama-compatible routes, forwarding
//! between nodes) lives in `bzzz::http::inference`.

pub mod managed;
pub mod route;

pub use managed::{BackendStatus, Busy, ManagedConfig, State, Supervisor, Want};
