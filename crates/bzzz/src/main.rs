//! `bzzz`: entry point. Parses the command line, sets up logging, runs the
//! command, and maps failures to exit codes (1 runtime, 2 usage/config).

use std::io::IsTerminal;
use std::process::ExitCode;

use bzzz::cli::{
    ApikeyCmd, AuditCmd, CaCmd, Cli, Cmd, ConfigCmd, DhtCmd, KeysCmd, MemberCmd, ModelCmd, NodeCmd,
    RepoCmd, RoleCmd, RunArgs, TaskCmd, TokenCmd, UserCmd,
};
use bzzz::config::{self, Config, LogFormat, Overrides};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // Setup and recovery read their password file themselves (it may be
    // a new password); every other command sends its credential.
    if !matches!(cli.cmd, Cmd::Init(_) | Cmd::Recover(_) | Cmd::Node { .. })
        && let Err(e) = bzzz::cli::install_credential(&matches)
    {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    bzzz::cli::client::set_trust(bzzz::cli::client::Trust {
        ca_cert: cli.ca_cert.clone(),
        fingerprint: cli.ca_fingerprint.clone(),
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(dispatch(cli))
}

fn load_config(path: Option<&std::path::Path>, flags: &Overrides) -> Result<Config, ExitCode> {
    config::load(path, std::env::vars(), flags).map_err(|e| {
        eprintln!("error: invalid configuration: {e}");
        ExitCode::from(2)
    })
}

fn init_logging(format: LogFormat, level: &str) {
    let mut filter = std::env::var("BZZZ_LOG").unwrap_or_else(|_| level.to_owned());
    // openraft narrates every RPC at info; its warnings and errors are what
    // an operator needs (name `openraft` in the filter to see more).
    if !filter.contains("openraft") {
        filter.push_str(",openraft=warn");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("warning: log filter {filter:?} is invalid ({e}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cli: Cli) -> ExitCode {
    match cli.cmd {
        Cmd::Node {
            cmd: NodeCmd::Run(args),
        } => run_node(args).await,
        Cmd::Status(a) => report(bzzz::cli::node::status(&a).await),
        Cmd::Peers(a) => report(bzzz::cli::node::peers(&a).await),
        Cmd::Demo(a) => report(bzzz::demo::run(&a).await),
        Cmd::Init(a) => report(bzzz::cli::keys::init(&a).await),
        Cmd::Recover(a) => report(bzzz::cli::keys::recover(&a).await),
        Cmd::Keys {
            cmd: KeysCmd::Status(a),
        } => report(bzzz::cli::keys::keys_status(&a).await),
        Cmd::Keys {
            cmd: KeysCmd::Sign(a),
        } => report(bzzz::cli::keys::keys_sign(&a).await),
        Cmd::Keys {
            cmd: KeysCmd::Policy(a),
        } => report(bzzz::cli::members::policy(&a).await),
        Cmd::Dht { cmd } => report(match cmd {
            DhtCmd::Put(a) => bzzz::cli::dht::put(&a).await,
            DhtCmd::Get(a) => bzzz::cli::dht::get_cmd(&a).await,
            DhtCmd::History(a) => bzzz::cli::dht::history(&a).await,
            DhtCmd::Ls(a) => bzzz::cli::dht::ls(&a).await,
        }),
        Cmd::Config {
            cmd: ConfigCmd::Migrate(a),
        } => report(bzzz::cli::dht::migrate(&a).await),
        Cmd::Ca {
            cmd: CaCmd::Show(a),
        } => report(bzzz::cli::ca::show(&a).await),
        Cmd::Repo { cmd } => report(match cmd {
            RepoCmd::Add(a) => bzzz::cli::agents::repo_add(&a).await,
            RepoCmd::Ls(a) => bzzz::cli::agents::repo_ls(&a).await,
        }),
        Cmd::Task { cmd } => report(match cmd {
            TaskCmd::Ls(a) => bzzz::cli::agents::task_ls(&a).await,
            TaskCmd::Show(a) => bzzz::cli::agents::task_show(&a).await,
            TaskCmd::Retry(a) => bzzz::cli::agents::task_op(&a, "retry").await,
            TaskCmd::Cancel(a) => bzzz::cli::agents::task_op(&a, "cancel").await,
        }),
        Cmd::Member { cmd } => report(match cmd {
            MemberCmd::Ls(a) => bzzz::cli::members::ls(&a).await,
            MemberCmd::Remove(a) => bzzz::cli::members::remove(&a).await,
            MemberCmd::Approve(a) => bzzz::cli::members::approve(&a).await,
        }),
        Cmd::Token {
            cmd: TokenCmd::Create(a),
        } => report(bzzz::cli::keys::token_create(&a).await),
        Cmd::Leader(a) => report(bzzz::cli::control::leader(&a).await),
        // 0: every host made it; 1: some host failed; 2: the run did not start.
        Cmd::Deploy(a) => match bzzz::cli::deploy::deploy(&a).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Cmd::Role {
            cmd: RoleCmd::Create(a),
        } => report(bzzz::cli::control::role_create(&a).await),
        Cmd::Role {
            cmd: RoleCmd::Ls(a),
        } => report(bzzz::cli::control::role_ls(&a).await),
        Cmd::Model { cmd } => report(match cmd {
            ModelCmd::Add(a) => bzzz::cli::models::add(&a).await,
            ModelCmd::Ls(a) => bzzz::cli::models::ls(&a).await,
            ModelCmd::Status(a) => bzzz::cli::models::status(&a).await,
            ModelCmd::Rm(a) => bzzz::cli::models::rm(&a).await,
        }),
        Cmd::User { cmd } => report(match cmd {
            UserCmd::Add(a) => bzzz::cli::access::user_add(&a).await,
            UserCmd::Ls(a) => bzzz::cli::access::user_ls(&a).await,
            UserCmd::Rm(a) => bzzz::cli::access::user_rm(&a).await,
            UserCmd::Passwd(a) => bzzz::cli::access::user_passwd(&a).await,
        }),
        Cmd::Apikey { cmd } => report(match cmd {
            ApikeyCmd::Create(a) => bzzz::cli::access::apikey_create(&a).await,
            ApikeyCmd::Ls(a) => bzzz::cli::access::apikey_ls(&a).await,
            ApikeyCmd::Revoke(a) => bzzz::cli::access::apikey_revoke(&a).await,
        }),
        Cmd::Audit { cmd } => report(match cmd {
            AuditCmd::Ls(a) => bzzz::cli::access::audit_ls(&a).await,
            AuditCmd::Verify(a) => bzzz::cli::access::audit_verify(&a).await,
        }),
        Cmd::Config {
            cmd: ConfigCmd::Example,
        } => {
            print!("{}", config::example());
            ExitCode::SUCCESS
        }
        Cmd::Config {
            cmd: ConfigCmd::Check { config },
        } => match load_config(config.as_deref(), &Overrides::default()) {
            Ok(c) => {
                println!("configuration is valid");
                println!("{c:#?}");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}

async fn run_node(args: RunArgs) -> ExitCode {
    let join_token = match (&args.join_token, &args.join_token_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(p)) => match std::fs::read_to_string(p) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => {
                eprintln!("error: cannot read --join-token-file {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        (None, None) => None,
    };
    if let Some(t) = &join_token
        && let Err(e) = bzzz_crypto::records::decode_token(t)
    {
        eprintln!("error: invalid --join-token: {e}");
        return ExitCode::from(2);
    }
    let join_token = join_token.map(bzzz_proto::cluster::WireSecret::new);
    let flags = Overrides {
        data_dir: args.data_dir,
        http: args.http,
        listen: args.listen,
        bootstrap: args.bootstrap,
        no_mdns: args.no_mdns,
        log_format: args.log_format,
        models_dir: args.models_dir,
        share_passphrase_file: args.share_passphrase_file,
    };
    let cfg = match load_config(args.config.as_deref(), &flags) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(cfg.log_format, &cfg.log_level);
    if let Some(src) = &cfg.source {
        tracing::info!(config = %src.display(), "configuration loaded");
    }
    report(bzzz::node::run(cfg, join_token, CancellationToken::new()).await)
}
