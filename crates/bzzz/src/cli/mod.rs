//! Command-line interface (clap derive). Every read command takes `--json`
//! and `--api URL`; exit codes: 0 success, 1 runtime failure, 2 bad usage or
//! bad configuration.
//!
//! The arguments are here; each command group runs in its own file
//! (`node`, `keys`, `control`, `deploy`), all through the typed client
//! (`client`: request and response types from `bzzz_proto::api`, one
//! Server-Sent Events reader).

pub mod access;
pub mod agents;
pub mod ca;
pub mod client;
pub mod control;
pub mod deploy;
pub mod dht;
pub mod keys;
pub mod members;
pub mod models;
pub mod node;

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
    /// Trust this cluster CA (PEM) for https:// API URLs (see `bzzz ca
    /// show --pem`). Without it: the CA saved for that address by
    /// `bzzz init` or an earlier confirmation, else `--ca-fingerprint`.
    #[arg(long, global = true, env = "BZZZ_CA_CERT", value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
    /// Trust the cluster CA the node presents only if its fingerprint is
    /// this (`SHA256:HEX`, from `bzzz init --json` or `bzzz ca show`);
    /// checked before any credential is sent, then saved.
    #[arg(
        long,
        global = true,
        env = "BZZZ_CA_FINGERPRINT",
        value_name = "SHA256:HEX"
    )]
    pub ca_fingerprint: Option<String>,
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
    /// Initialize the cluster (the setup wizard's twin): generates the master
    /// key, prints it once as 24 words, splits the admin key across the nodes.
    ///
    /// The password file holds the operator password to create (at least 12
    /// characters). With --json, one object is printed (the mnemonic
    /// included) and the words are confirmed without asking.
    Init(InitArgs),
    /// From the 24 words: print the cluster admin public key (offline), or
    /// with --api rebuild the cluster with fresh shares under the same key.
    Recover(RecoverArgs),
    /// The cluster admin key: status of this node's share, threshold signing.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Join tokens for new nodes.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Show the Raft leader, term, voters and node scores as this node sees them.
    Leader(ReadArgs),
    /// Deploy BZZZ to other machines over SSH (through a running node), or remove it.
    Deploy(DeployArgs),
    /// Roles (SPEC §9): changes are signed by the cluster admin key.
    Role {
        #[command(subcommand)]
        cmd: RoleCmd,
    },
    /// Models (SPEC §8): add to the registry, list, follow, remove. The
    /// leader places each model on nodes with room; they fetch it from
    /// each other into Ollama's store.
    Model {
        #[command(subcommand)]
        cmd: ModelCmd,
    },
    /// Cluster members (SPEC §3): list them; remove one for good (its
    /// share is made useless by a re-deal).
    Member {
        #[command(subcommand)]
        cmd: MemberCmd,
    },
    /// The cluster CA (TLS for the API and console; docs/security.md).
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Repositories agents take tasks from (SPEC §10; docs/agents.md).
    Repo {
        #[command(subcommand)]
        cmd: RepoCmd,
    },
    /// Agent tasks: the cluster's board (claims, states, branches), a
    /// task's live log, retry, cancel.
    Task {
        #[command(subcommand)]
        cmd: TaskCmd,
    },
    /// The DHT (SPEC §7): records under UCXL addresses, signed, sealed to
    /// the roles that may read them, with their version history.
    Dht {
        #[command(subcommand)]
        cmd: DhtCmd,
    },
    /// Users (SPEC §9): people with a password and roles. The operator is
    /// the user `admin`.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// API keys (SPEC §9): for scripts and agents; `bzzz_…`, shown once,
    /// stored as a hash, bound to a role (and a user), revocable.
    Apikey {
        #[command(subcommand)]
        cmd: ApikeyCmd,
    },
    /// The audit log (SPEC §9): every privileged action and refusal, hash
    /// chained, signed by the accepting node, replicated through Raft.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Add (or replace) a user; the caller must hold every role it grants.
    Add(UserAddArgs),
    /// List users and their roles (never passwords).
    Ls(ReadArgs),
    /// Remove a user; its API keys stop working at once.
    Rm(NameArgs),
    /// Change a user's password (your own, or any with manage on users):
    /// the old one, its sessions and cached logins end on every node.
    Passwd(UserPasswdArgs),
}

#[derive(Debug, Args)]
pub struct UserPasswdArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// The user name.
    pub name: String,
    /// File whose first line is the new password (at least 12 characters).
    #[arg(long, value_name = "PATH")]
    pub new_password_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct UserAddArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// User name (a-z, 0-9, '-', '_'; not `admin`).
    pub name: String,
    /// A role the user holds (repeatable, at least one).
    #[arg(long = "role", value_name = "ROLE", required = true)]
    pub roles: Vec<String>,
    /// File whose first line is the user's password (at least 12 characters).
    #[arg(long, value_name = "PATH")]
    pub password_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// The user name or key id.
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum ApikeyCmd {
    /// Create a key; `--json` prints `{id, secret, …}` (the secret only this once).
    Create(ApiKeyCreateArgs),
    /// List keys (never secrets): all with manage on keys, else your own.
    Ls(ReadArgs),
    /// Revoke a key: every node refuses it as soon as it applies the change.
    Revoke(NameArgs),
}

#[derive(Debug, Args)]
pub struct ApiKeyCreateArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// The role the key acts with.
    #[arg(long, value_name = "ROLE")]
    pub role: String,
    /// Bind the key to a user (it dies with the user and acts only while
    /// the user holds the role).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// A label for people.
    #[arg(long, value_name = "LABEL")]
    pub name: Option<String>,
    /// Validity, e.g. 30d, 12h (default: until revoked).
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<humantime::Duration>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Entries this node holds, oldest first.
    Ls(AuditLsArgs),
    /// Check every hash, link, signature and threshold-signed checkpoint
    /// here; exit 1 naming the first bad `seq`.
    Verify(AuditVerifyArgs),
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// The cluster's admin public key (hex, as `bzzz init` and
    /// `bzzz recover` print it) to check checkpoints against; without it,
    /// the key the node reports is used (and the output says so).
    #[arg(long, value_name = "HEX")]
    pub admin_key: Option<String>,
    /// With --admin-key: at most this many entries may follow the newest
    /// checkpoint (a node could rewrite only those); more, or no
    /// checkpoint over a longer log, fails. Raise it with
    /// `control.audit_checkpoint_every` above 512.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_unchecked: u64,
}

#[derive(Debug, Args)]
pub struct AuditLsArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// Only entries after this sequence number.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub since: u64,
}

#[derive(Debug, Subcommand)]
pub enum DhtCmd {
    /// Write the next version of an address (operator only); the node at
    /// --api is the author and must be a member of the address's ROLE.
    Put(DhtPutArgs),
    /// Read a record; the temporal segment picks the version (`*^`
    /// latest, `*~` first, `*~N`, `~~N` back, `^^N` forward, an ISO time).
    Get(DhtAddrArgs),
    /// The versions of an address (the newest 1024): version, author, time.
    History(DhtAddrArgs),
    /// Records whose address matches a pattern (`any`, `*`, `**`).
    Ls(DhtLsArgs),
}

#[derive(Debug, Args)]
pub struct DhtPutArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// `ucxl://AGENT:ROLE@PROJECT:TASK/*^/PATH`.
    pub address: String,
    /// The value (UTF-8 text).
    #[arg(long, conflicts_with = "file")]
    pub value: Option<String>,
    /// Read the value from a file (at most 256 KiB; any bytes).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DhtAddrArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// `ucxl://AGENT:ROLE@PROJECT:TASK/TEMPORAL/PATH`.
    pub address: String,
}

#[derive(Debug, Args)]
pub struct DhtLsArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// A pattern, e.g. `ucxl://any:backend_developer@any:any/*^/**`.
    pub pattern: String,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// The node's config file to migrate (rewritten without the moved
    /// sections; the old one is kept as `<file>.pre-migrate`).
    #[arg(long, env = "BZZZ_CONFIG", value_name = "PATH")]
    pub config: PathBuf,
    /// Print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum MemberCmd {
    /// List members: state (member, pending, gone, removed), share index,
    /// Raft role.
    Ls(ReadArgs),
    /// Remove a member (operator only): an admin-signed revocation; every
    /// node refuses it, Raft drops it, the admin key is re-dealt without it.
    Remove(MemberRemoveArgs),
    /// Approve a pending member (one admitted by a join token with
    /// --uses N > 1) as a share holder (operator only): an admin-signed
    /// approval; the admin key is then re-dealt to it.
    Approve(MemberRemoveArgs),
}

#[derive(Debug, Subcommand)]
pub enum RepoCmd {
    /// Add a repository (or replace the one with the same URL; operator
    /// only): every node with `agents.enabled` takes its tasks.
    Add(RepoAddArgs),
    /// List the repositories.
    Ls(ReadArgs),
}

#[derive(Debug, Args)]
pub struct RepoAddArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// What `git clone` takes (http(s)://, ssh://, file://).
    pub url: String,
    /// `git` (task files under tasks/, delivered as a pushed branch),
    /// `gitea` or `github` (labelled issues, delivered as pull requests).
    #[arg(long, value_name = "KIND")]
    pub kind: String,
    /// A file holding the forge's API token (gitea, github).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// The label that marks issues as tasks.
    #[arg(long, default_value = bzzz_agents::repo::DEFAULT_LABEL)]
    pub label: String,
    /// The model its tasks are worked with (unless a task names one).
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// The step cap of its tasks (1 to 30; default 20).
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// The cluster CA: its fingerprint, checked against the admin key that
    /// endorses it (the admin-signed genesis record contains it).
    Show(CaShowArgs),
}

#[derive(Debug, Args)]
pub struct CaShowArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// Print only the certificate (PEM), e.g. for `curl --cacert` or a
    /// browser's trust store.
    #[arg(long)]
    pub pem: bool,
    /// The admin public key (hex) you expect, e.g. from `bzzz recover`:
    /// refuse a CA endorsed by another key.
    #[arg(long, value_name = "HEX")]
    pub admin_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// Every task: id, repository, state (open, claimed, working, done,
    /// failed, needs-human), claim holder, claims so far, branch.
    Ls(ReadArgs),
    /// One task (by key `REPO#ID`, or by id when one repository has it)
    /// and, from the node working it, its live step log.
    Show(TaskArgs),
    /// Open a failed or needs-human task again (operator only).
    Retry(TaskOpArgs),
    /// Stop a task (operator only): needs-human; its holder is fenced out.
    Cancel(TaskOpArgs),
}

#[derive(Debug, Args)]
pub struct TaskArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// `REPO#ID`, or an id one repository has.
    pub task: String,
}

#[derive(Debug, Args)]
pub struct TaskOpArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// `REPO#ID`, or an id one repository has.
    pub task: String,
}

#[derive(Debug, Args)]
pub struct MemberRemoveArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// The node id (to remove: ask any other member's API).
    pub node_id: String,
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// `majority` (t = ⌊n/2⌋ + 1) or `fixed:T` (T ≥ 2, clamped to n).
    pub policy: String,
}

#[derive(Debug, Subcommand)]
pub enum ModelCmd {
    /// Add (or update) a model from a GGUF file, a directory in Ollama's
    /// layout, or the local Ollama store (operator only).
    Add(ModelAddArgs),
    /// List the models and where their copies are.
    Ls(ReadArgs),
    /// One model: each copy's state (planned, fetching, ready) and progress.
    Status(ModelNameArgs),
    /// Remove a model: every node deletes its copy (operator only).
    Rm(ModelRmArgs),
}

#[derive(Debug, Args)]
pub struct ModelAddArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// A GGUF file, or a directory in Ollama's layout (with
    /// `manifests/registry.ollama.ai/…` and `blobs/`).
    #[arg(value_name = "FILE|DIR", required_unless_present = "from_ollama")]
    pub path: Option<PathBuf>,
    /// Take the model NAME:TAG from the local Ollama store (see --ollama-dir).
    #[arg(long, value_name = "NAME:TAG", conflicts_with = "path")]
    pub from_ollama: Option<String>,
    /// The local Ollama store for --from-ollama [default: $OLLAMA_MODELS,
    /// /usr/share/ollama/.ollama/models if it exists, ~/.ollama/models].
    #[arg(long, value_name = "DIR", requires = "from_ollama")]
    pub ollama_dir: Option<PathBuf>,
    /// The model's name in the cluster, NAME:TAG (required with FILE|DIR;
    /// default with --from-ollama: the same name).
    #[arg(long, value_name = "NAME:TAG")]
    pub name: Option<String>,
    /// Copies to keep (1-64).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub replicas: u16,
    /// Do not spread the copies over different zones (`labels.zone`).
    #[arg(long)]
    pub no_spread: bool,
    /// A node that must hold a copy (repeatable).
    #[arg(long, value_name = "NODE_ID")]
    pub pin: Vec<String>,
    /// A node that must not hold a copy (repeatable).
    #[arg(long, value_name = "NODE_ID")]
    pub exclude: Vec<String>,
    /// Wait until every placed copy is ready (progress on stderr).
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct ModelNameArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// NAME:TAG
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ModelRmArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// NAME:TAG
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum RoleCmd {
    /// Create or replace a role (operator only; threshold-signed, committed through Raft).
    Create(RoleArgs),
    /// List the roles.
    Ls(ReadArgs),
}

#[derive(Debug, Args)]
pub struct RoleArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// Role name (a-z, 0-9, '-', '_').
    pub name: String,
    /// Authority level: master, decision, coordination, suggestion or read_only.
    #[arg(long, value_name = "LEVEL")]
    pub authority: String,
    /// A permission rule (repeatable): ACTION:RESOURCE or deny:ACTION:RESOURCE, e.g. infer:model:smollm2* or read:ucxl://any:backend_developer@any:any/*^/** (docs/access.md).
    #[arg(long = "permission", value_name = "PERMISSION")]
    pub permissions: Vec<String>,
    /// A role whose data this role may read (repeatable).
    #[arg(long = "reads", value_name = "ROLE")]
    pub reads: Vec<String>,
    /// A member node id (repeatable).
    #[arg(long = "member", value_name = "NODE_ID")]
    pub members: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Show the cluster admin public key, t and n, and this node's share index (never secrets).
    Status(ReadArgs),
    /// Have t share holders sign a message with the cluster admin key (operator only).
    Sign(SignArgs),
    /// Change the threshold policy (operator only): `majority` or
    /// `fixed:T`; the admin key is re-dealt in a new key epoch.
    Policy(PolicyArgs),
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a join token (operator only): `bzzz node run --join-token TOKEN` on the new node.
    Create(TokenArgs),
}

/// `bzzz deploy`: the node at `--api` does the work (it uploads its own
/// binary); this command sends the request and shows the progress.
#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// Hosts: names, IPs, ranges (10.0.0.5-9 or 10.0.0.5-10.0.0.9), CIDR
    /// blocks (10.0.0.0/29), comma-separated; `@FILE` reads a file (one
    /// or more per line, `#` comments).
    #[arg(long, value_name = "HOSTS")]
    pub hosts: String,
    /// SSH user on the hosts.
    #[arg(long, value_name = "USER", default_value = "root")]
    pub ssh_user: String,
    /// SSH port on the hosts.
    #[arg(long, value_name = "PORT", default_value_t = 22)]
    pub ssh_port: u16,
    /// SSH private key file (OpenSSH format).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "ssh_password_file"
    )]
    pub ssh_key: Option<PathBuf>,
    /// File whose first line is the key's passphrase.
    #[arg(long, value_name = "PATH", requires = "ssh_key")]
    pub ssh_key_passphrase_file: Option<PathBuf>,
    /// File whose first line is the SSH password (instead of a key).
    #[arg(long, value_name = "PATH", conflicts_with = "ssh_key")]
    pub ssh_password_file: Option<PathBuf>,
    /// Accept hosts listed in this known_hosts file (a listed host with another key is refused).
    #[arg(long, value_name = "PATH", conflicts_with = "accept_new_host_keys")]
    pub known_hosts: Option<PathBuf>,
    /// Trust on first use: accept unknown host keys, print their fingerprints and pin them in
    /// cluster state. A pinned host whose key changed is always refused.
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Install prefix on the hosts [default: system paths as root, ~/.bzzz otherwise].
    #[arg(long, value_name = "DIR")]
    pub prefix: Option<String>,
    /// HTTP port of the deployed nodes.
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// P2P port (TCP and QUIC) of the deployed nodes.
    #[arg(long, value_name = "PORT", default_value_t = 4140)]
    pub p2p_port: u16,
    /// Deployed nodes do not use mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Hosts handled at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// How long a started node may take to join the mesh.
    #[arg(long, value_name = "DURATION", default_value = "90s")]
    pub join_timeout: humantime::Duration,
    /// Stop and remove BZZZ from the hosts instead (their data directories are kept).
    #[arg(long)]
    pub uninstall: bool,
}

/// Options of commands that act as the operator.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// Base URL of the node's HTTP API.
    #[arg(
        long,
        env = "BZZZ_API",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub api: String,
    /// File whose first line is the operator password (user admin; keeps it
    /// out of the process list). Actions signed by the cluster admin key
    /// (roles, members, tokens, policy, deploy) need it.
    #[arg(long, env = "BZZZ_OPERATOR_PASSWORD_FILE", value_name = "PATH")]
    pub operator_password_file: Option<PathBuf>,
    /// File whose first line is an API key (`bzzz apikey create`); the
    /// environment variable BZZZ_API_KEY may hold the key itself instead.
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl OperatorArgs {
    /// The credential these options name (an error when there is none).
    pub fn credential(&self) -> anyhow::Result<client::Credential> {
        client::Credential::from_options(
            self.api_key_file.as_deref(),
            self.operator_password_file.as_deref(),
        )?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "a credential is needed: --operator-password-file F, --api-key-file F or BZZZ_API_KEY"
            )
        })
    }

    /// The operator password (for setup and recovery, which create it).
    pub fn operator_password_path(&self) -> anyhow::Result<&std::path::Path> {
        self.operator_password_file
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--operator-password-file is required"))
    }
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// Cluster name (a-z, 0-9, '-', '_'; up to 63 characters).
    #[arg(long, value_name = "NAME")]
    pub cluster: String,
    /// Shares needed for an admin signature [default: ⌊n/2⌋+1, the majority policy; another T makes the policy fixed:T].
    #[arg(long, value_name = "T")]
    pub threshold: Option<u16>,
    /// Shares to deal, one per holder [default: this node and each --holder].
    #[arg(long, value_name = "N")]
    pub shares: Option<u16>,
    /// A node to hold a share besides this one (repeat the flag; each must
    /// be in view). Without it this node alone holds the admin key; peers
    /// that are merely in view, e.g. found by mDNS, get nothing.
    #[arg(long = "holder", value_name = "NODE_ID")]
    pub holders: Vec<String>,
    /// Do not ask to re-type words even on a terminal (unattended use).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// File with the 24 words.
    #[arg(long, value_name = "PATH")]
    pub mnemonic_file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Rebuild the cluster on the (uninitialized) nodes reachable from this
    /// node's API: same admin public key, fresh shares. Without it, only
    /// prints the admin public key (offline).
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
    /// Cluster name for the rebuilt cluster (with --api).
    #[arg(long, value_name = "NAME", requires = "api")]
    pub cluster: Option<String>,
    /// Threshold for the fresh shares (with --api) [default: ⌈n/2⌉+1].
    #[arg(long, value_name = "T", requires = "api")]
    pub threshold: Option<u16>,
    /// Number of fresh shares (with --api) [default: this node and each --holder].
    #[arg(long, value_name = "N", requires = "api")]
    pub shares: Option<u16>,
    /// A node to hold a fresh share besides the API's node (with --api;
    /// repeat the flag). Without it that node alone holds.
    #[arg(long = "holder", value_name = "NODE_ID", requires = "api")]
    pub holders: Vec<String>,
    /// New operator password file (with --api).
    #[arg(long, value_name = "PATH", requires = "api")]
    pub operator_password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// The message to sign (UTF-8 text).
    #[arg(long, value_name = "TEXT")]
    pub message: String,
    /// Node ids of the signers, comma-separated [default: this node and reachable holders].
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub signers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub op: OperatorArgs,
    /// How long the token stays valid (e.g. 30m, 1h, 7d; at most 30 days).
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    pub ttl: humantime::Duration,
    /// How many nodes may join with it (1-100).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub uses: u32,
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
    /// Move the cluster-wide sections of a node's config file
    /// (`control.weights`, `control.leadership`) into the DHT under
    /// `ucxl://any:admin@cluster:config/*^/control/…`; every node then
    /// applies them from there. Idempotent; `--dry-run` shows the plan.
    Migrate(MigrateArgs),
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
    /// File whose first line is an API key (or BZZZ_API_KEY: the key).
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// File whose first line is the operator password (user admin).
    #[arg(long, env = "BZZZ_OPERATOR_PASSWORD_FILE", value_name = "PATH")]
    pub operator_password_file: Option<PathBuf>,
}

/// Reads the credential the command line names (`--api-key-file`,
/// `BZZZ_API_KEY`, `--operator-password-file`, on whichever subcommand)
/// and sends it with every request of this process.
pub fn install_credential(m: &clap::ArgMatches) -> anyhow::Result<()> {
    let mut m = m;
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    let get = |id: &str| m.try_get_one::<PathBuf>(id).ok().flatten().cloned();
    if let Some(c) = client::Credential::from_options(
        get("api_key_file").as_deref(),
        get("operator_password_file").as_deref(),
    )? {
        client::set_credential(c);
    }
    Ok(())
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
    /// Ollama models directory placed models land in (`models.ollama_dir`).
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Join an initialized cluster with a token from `bzzz token create`.
    #[arg(long, value_name = "TOKEN", conflicts_with = "join_token_file")]
    pub join_token: Option<String>,
    /// Read the join token from a file instead (keeps it out of the process list).
    #[arg(long, value_name = "PATH")]
    pub join_token_file: Option<PathBuf>,
    /// A file whose first line is a passphrase that also protects this
    /// node's admin key share at rest (age scrypt over the share sealed
    /// to the node key). Put it where the data dir is not, e.g. a
    /// systemd credential (LoadCredentialEncrypted=, TPM-sealed) or a
    /// removable disk; without it the node cannot sign after a restart.
    #[arg(long, env = "BZZZ_SHARE_PASSPHRASE_FILE", value_name = "PATH")]
    pub share_passphrase_file: Option<PathBuf>,
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
    /// Print the node table as JSON once the cluster has formed (and,
    /// with a model, a second line once it is served).
    #[arg(long)]
    pub json: bool,
    /// A GGUF model file to place and serve on the demo cluster
    /// (`scripts/demo.sh` passes SmolLM2-135M unless `--no-model`). With
    /// it, every node also runs an agent, and a sample Git repository
    /// with one task is added for them.
    #[arg(long, value_name = "FILE")]
    pub model_gguf: Option<PathBuf>,
    /// The registry name of that model.
    #[arg(long, value_name = "NAME:TAG", default_value = "smollm2:135m")]
    pub model_name: String,
    /// A Python with the `xllamacpp` wheel: it runs llama.cpp's server
    /// for the model (`scripts/serve-llamacpp.py`).
    #[arg(long, value_name = "PATH", default_value = "python3")]
    pub python: PathBuf,
    /// The serving script (default: scripts/serve-llamacpp.py beside the
    /// current directory, as `scripts/demo.sh` runs it).
    #[arg(long, value_name = "PATH", default_value = "scripts/serve-llamacpp.py")]
    pub serve_script: PathBuf,
}
