//! The `lanyard` command line.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::Error;
use crate::config::Config;

/// Lanyard: short-lived, endpoint-scoped credentials for sandboxed agents,
/// injected by an egress proxy the agent cannot bypass.
#[derive(Debug, Parser)]
#[command(
    name = "lanyard",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LANYARD_COMMIT"), ")"),
    after_help = EXAMPLES,
)]
pub struct Cli {
    /// Log lines as human-readable text or as JSON objects.
    #[arg(long, value_enum, global = true, default_value_t = crate::logging::LogFormat::Text)]
    pub log_format: crate::logging::LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
Examples:
  lanyard check --config lanyard.yaml          validate, print the endpoint table
  lanyard policy test --config lanyard.yaml GET https://api.example.com/v1/items
  lanyard run --config lanyard.yaml -- curl https://api.example.com/v1/items
  lanyard proxy --config lanyard.yaml          the proxy alone (sidecar, or beside an agent)
  lanyard ca export --config lanyard.yaml      the sandbox CA certificate, for a truststore
  lanyard completions bash > /etc/bash_completion.d/lanyard";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the egress proxy. Reloads its config on SIGHUP and when the file
    /// changes; prints `listening on ADDR` (and `admin on ADDR`) on stdout.
    #[command(
        after_help = "Example:\n  LANYARD_LOG=debug lanyard proxy --config /etc/lanyard/lanyard.yaml"
    )]
    Proxy {
        /// Path to lanyard.yaml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and print the resolved endpoint table: exit 0,
    /// or 64 naming the file, field and reason.
    #[command(after_help = "Example:\n  lanyard check --config lanyard.yaml")]
    Check {
        /// Path to lanyard.yaml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Exit 0 once a running `lanyard proxy` with this config is ready: the
    /// agent's trust files exist and every listener accepts. For probes in
    /// images without a shell (the chart's startup probe).
    #[command(
        after_help = "Example:\n  lanyard probe --config /etc/lanyard/lanyard.yaml && echo ready"
    )]
    Probe {
        /// Path to lanyard.yaml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run an agent command that can reach the world only through Lanyard:
    /// `lanyard run --config lanyard.yaml -- CMD ARGS...`. Exits with the agent's status.
    #[command(
        after_help = "Examples:\n  lanyard run --config lanyard.yaml -- python3 agent.py\n  lanyard run --config lanyard.yaml -- curl -sS https://api.example.com/v1/items"
    )]
    Run {
        /// Path to lanyard.yaml.
        #[arg(long, short)]
        config: PathBuf,
        /// The agent command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Install the pod's redirection rules for transparent interception
    /// (nftables, one `table inet lanyard`); the init container's job.
    #[command(
        after_help = "Example:\n  lanyard init --proxy-uid 15101 --port 15001 --admin-port 9901"
    )]
    Init(crate::netinit::InitArgs),
    /// The sandbox CA.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Statement policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Print the Lanyard config equivalent to another tool's configuration.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  lanyard completions zsh > \"${fpath[1]}/_lanyard\"")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Development tools. Never for production.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Internal: the launcher `lanyard run` uses to become the agent.
    #[command(name = "__agent-exec", hide = true)]
    AgentExec(crate::run::launch::LaunchArgs),
}

/// `lanyard ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the sandbox CA certificate (PEM) that agents must trust: from
    /// `ca.cert_file`, the persisted `ca.key_dir`, or the `ca.pem` a running
    /// Lanyard wrote into `ca.dir`.
    #[command(after_help = "Example:\n  lanyard ca export --config lanyard.yaml > sandbox-ca.pem")]
    Export {
        /// Path to lanyard.yaml.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// `lanyard policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Whether the proxy running this config (overlays applied) would let
    /// `METHOD URL` through, and which statement decided: exit 0 when
    /// allowed, 1 when denied, 64 for a config error.
    #[command(after_help = "Examples:
  lanyard policy test --config lanyard.yaml GET https://api.example.com/repos/acme/widgets/issues
  lanyard policy test --config lanyard.yaml DELETE https://api.example.com/repos/acme/widgets")]
    Test {
        /// Path to lanyard.yaml.
        #[arg(long, short)]
        config: PathBuf,
        /// The request method (GET, POST, ...).
        method: String,
        /// The URL the agent would request (http:// or https://).
        url: String,
    },
}

/// `lanyard import ...`.
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// An NVIDIA OpenShell provider profile, as it is: prints the providers,
    /// endpoints and token cache bound that do the same, or exits 64 naming
    /// the profile field Lanyard cannot honour.
    #[command(after_help = "Example:
  lanyard import openshell tracker-profile.yaml >> lanyard.yaml && lanyard check --config lanyard.yaml")]
    Openshell {
        /// The profile (YAML).
        profile: PathBuf,
    },
}

/// `lanyard dev ...`.
#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// A development SPIFFE Workload API that mints JWT-SVIDs for one SPIFFE ID
    /// with a local key. No attestation: anything that can open the socket gets the identity.
    WorkloadApi {
        /// Unix socket path to serve on.
        #[arg(long)]
        socket: PathBuf,
        /// The SPIFFE ID to issue (spiffe://trust-domain/path).
        #[arg(long)]
        spiffe_id: String,
        /// SVID lifetime (e.g. 300s, 5m).
        #[arg(long, default_value = "5m", value_parser = lanyard_proxy::config::parse_duration)]
        ttl: std::time::Duration,
    },
}

/// Runs a parsed command line; returns the process exit status.
pub fn run(cli: Cli) -> i32 {
    let log = cli.log_format;
    match cli.command {
        Command::Check { config } => match crate::check(&config) {
            Ok(checked) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}: ok", config.display());
                let _ = write!(out, "{}", checked.table);
                let _ = write!(out, "{}", checked.statements);
                for n in checked.notes {
                    let _ = writeln!(out, "note: {n}");
                }
                0
            }
            Err(e) => report(&e),
        },
        Command::Policy(PolicyCommand::Test {
            config,
            method,
            url,
        }) => match crate::policy::test(&config, &method, &url) {
            Ok(answer) => {
                let _ = std::io::stdout().lock().write_all(answer.text.as_bytes());
                i32::from(!answer.allowed)
            }
            Err(e) => report(&e),
        },
        Command::Proxy { config } => block_on(log, proxy(config)),
        Command::Probe { config } => match crate::probe(&config) {
            Ok(()) => 0,
            Err(e) => report(&e),
        },
        Command::Run { config, command } => block_on(log, crate::run::run(&config, command)),
        Command::AgentExec(args) => crate::run::launch::exec(&args),
        Command::Init(args) => crate::netinit::run(&args),
        Command::Ca(CaCommand::Export { config }) => match crate::ca_export(&config) {
            Ok(pem) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(pem.as_bytes());
                0
            }
            Err(e) => report(&e),
        },
        Command::Import(ImportCommand::Openshell { profile }) => {
            match crate::openshell::import(&profile) {
                Ok(text) => {
                    let _ = std::io::stdout().lock().write_all(text.as_bytes());
                    0
                }
                Err(e) => report(&Error::Config(e)),
            }
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "lanyard", &mut std::io::stdout());
            0
        }
        Command::Dev(DevCommand::WorkloadApi {
            socket,
            spiffe_id,
            ttl,
        }) => block_on(log, dev_workload_api(socket, spiffe_id, ttl)),
    }
}

/// Runs `fut` on a fresh runtime with logging; `Ok` carries the exit status.
fn block_on<T: ExitStatus>(
    log: crate::logging::LogFormat,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> i32 {
    crate::logging::init(log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(&Error::Start(format!("cannot start runtime: {e}"))),
    };
    match rt.block_on(fut) {
        Ok(v) => v.status(),
        Err(e) => report(&e),
    }
}

/// What a successful command exits with.
trait ExitStatus {
    fn status(self) -> i32;
}

impl ExitStatus for () {
    fn status(self) -> i32 {
        0
    }
}

impl ExitStatus for i32 {
    fn status(self) -> i32 {
        self
    }
}

async fn dev_workload_api(
    socket: PathBuf,
    spiffe_id: String,
    ttl: std::time::Duration,
) -> Result<(), Error> {
    let api = crate::dev::DevWorkloadApi::new(&spiffe_id, ttl).map_err(|e| {
        Error::Config(crate::config::ConfigFileError {
            file: "(command line)".into(),
            field: "--spiffe-id/--ttl".into(),
            reason: e,
        })
    })?;
    let running = api
        .serve(&socket)
        .await
        .map_err(|e| Error::Start(format!("cannot serve on {}: {e}", socket.display())))?;
    tracing::warn!(
        "DEVELOPMENT ONLY: this Workload API issues {spiffe_id} to anyone who can open {} (no attestation). Use a SPIRE agent in production.",
        socket.display()
    );
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {}", running.endpoint());
    let _ = out.flush();
    drop(out);
    shutdown_signal().await;
    running.stop().await;
    Ok(())
}

fn report(e: &Error) -> i32 {
    // The one place the binary writes errors for humans; logs may not be set up yet.
    #[allow(clippy::print_stderr, reason = "final error report of the CLI")]
    {
        eprintln!("lanyard: {e}");
    }
    e.exit_code()
}

async fn proxy(file: PathBuf) -> Result<(), Error> {
    // Nobody but root may ptrace Lanyard or read its memory.
    let _ = nix::sys::prctl::set_dumpable(false);
    let config = Config::load(&file)?;
    let started = crate::build_proxy(
        config,
        &file,
        crate::ops::StartOptions {
            listener: None,
            sighup: true,
        },
    )
    .await?;
    let proxy = started.proxy;
    let addr = proxy
        .local_addr()
        .map_err(|e| Error::Start(format!("listener: {e}")))?;
    tracing::info!(%addr, ca = %proxy.trust_files().ca_pem.display(), bundle = %proxy.trust_files().bundle_pem.display(), "lanyard proxy ready");
    // One machine-readable line on stdout, so scripts and tests can use port 0.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {addr}");
    for t in proxy.transparent_addrs() {
        let _ = writeln!(out, "transparent on {t}");
    }
    if let Some(a) = started.admin {
        let _ = writeln!(out, "admin on {a}");
    }
    let _ = out.flush();
    drop(out);
    proxy.serve(shutdown_signal()).await;
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => tracing::info!("SIGTERM"),
                _ = i.recv() => tracing::info!("SIGINT"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
