//! The BZZZ node: the composition root of the workspace.
//!
//! * [`config`]: YAML + `BZZZ_*` environment + flags → validated [`config::Config`].
//! * [`detect`]: capability detection (CPU, memory, disk, NVML GPUs, Ollama).
//! * [`node`]: the daemon: identity, network, capability task, HTTP; task
//!   ownership and shutdown.
//! * [`keys`]: setup ceremony, admin key shares, threshold signing, join
//!   tokens, operator authentication.
//! * [`api`]: HTTP API, metrics, OpenAPI document, web UI pages.
//! * [`cli`], [`client`], [`demo`]: the command-line front end.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod demo;
pub mod deploy;
pub mod detect;
pub mod keys;
pub mod node;
pub mod setup_ui;
