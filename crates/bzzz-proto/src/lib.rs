//! Identifiers, capability records and API/wire types shared by every BZZZ crate.
//!
//! This crate does no IO and knows nothing about tokio or libp2p: it defines
//! *what* travels (between nodes, and between the API and the CLI), with the
//! validation every value from the network or a user must pass. Encodings are
//! versioned: every wire envelope carries a `v` field so later releases can
//! read what earlier ones wrote.

pub mod access;
pub mod api;
pub mod caps;
pub mod cluster;
pub mod dht;
pub mod id;
pub mod models;
pub mod ucxl;

pub use caps::{Capabilities, CpuInfo, GpuInfo, Labels, OllamaInfo, OllamaModel};
pub use id::{NodeId, NodeIdError};

/// The BZZZ version compiled into this binary (announced to peers).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
