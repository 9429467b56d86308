//! The BZZZ node: the composition root of the workspace.
//!
//! * [`config`]: YAML + `BZZZ_*` environment + flags → validated [`config::Config`].
//! * [`detect`]: capability detection (CPU, memory, disk, NVML GPUs, Ollama).
//! * [`node`]: the daemon: identity, network, capability task, HTTP; task
//!   ownership and shutdown.
//! * [`keys`]: the `bzzz-keys` crate (setup ceremony, admin key shares,
//!   threshold signing, join tokens, operator authentication).
//! * [`http`]: the one route table (permission per route), the bounded
//!   server, JSON handlers per feature, OpenAPI from the table.
//! * [`ui`]: web pages (maud templates in one layout), one file per feature.
//! * [`cli`] (one file per command group, a typed client), [`demo`]: the
//!   command-line front end.

pub mod access;
pub mod agents;
pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod deploy;
pub mod detect;
pub mod dht;
pub use bzzz_keys as keys;
pub mod http;
pub mod models;
pub mod node;
pub mod sessions;
pub mod state;
pub mod tls;
pub mod ui;
