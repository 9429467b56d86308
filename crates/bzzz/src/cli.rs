//! Command-line interface (clap derive). Every read command takes `--json`
//! and `--api URL`; exit codes: 0 success, 1 runtime failure, 2 bad usage or
//! bad configuration.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bzzz",
    version,
    about = "One binary that turns a handful of machines into a self-forming, security-first cluster for AI work.",
    after_help = "Start here: `bzzz demo --nodes 4`, then open the printed addresses in a browser."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run and manage the node daemon.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Show this node: id, addresses, capabilities.
    Status(ReadArgs),
    /// List the other live nodes and their capabilities.
    Peers(ReadArgs),
    /// Start N nodes on 127.0.0.1 (mDNS off, bootstrap to the first) until Ctrl-C.
    Demo(DemoArgs),
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Run the node in the foreground (stops cleanly on SIGINT/SIGTERM).
    Run(RunArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print a commented config file with every field and its default.
    Example,
    /// Validate the configuration (file + BZZZ_* environment) and print it as the node would use it.
    Check {
        /// Config file (default: /etc/bzzz/bzzz.yaml when it exists).
        #[arg(long, env = "BZZZ_CONFIG", value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

/// Options of read commands.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Base URL of the node's HTTP API.
    #[arg(
        long,
        env = "BZZZ_API",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub api: String,
    /// Print JSON (stable fields) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config file (default: /etc/bzzz/bzzz.yaml when it exists, else built-in defaults).
    #[arg(long, env = "BZZZ_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Directory for the node identity and local state [default: /var/lib/bzzz].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP address for the API, web UI and metrics [default: 0.0.0.0:8080].
    #[arg(long, value_name = "IP:PORT")]
    pub http: Option<String>,
    /// P2P listen multiaddr (repeatable) [default: TCP and QUIC on port 4140].
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Peer to join through (repeatable), e.g. /ip4/10.0.0.5/tcp/4140/p2p/12D3KooW…
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Do not discover peers with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Log format: auto, human or json.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of nodes (1-32).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub nodes: u16,
    /// HTTP port of the first node; the others use the next ones (0: any free ports).
    #[arg(long, default_value_t = 8080)]
    pub base_port: u16,
    /// Directory for the nodes' data and logs (default: a new temporary directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the directory after exit.
    #[arg(long)]
    pub keep: bool,
    /// Print the node table as JSON once the cluster has formed.
    #[arg(long)]
    pub json: bool,
}
