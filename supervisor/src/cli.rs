//! The `lanyard` command line.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::Error;
use crate::config::Config;

/// Lanyard: short-lived, endpoint-scoped credentials for sandboxed agents,
/// injected by an egress proxy the agent cannot bypass.
#[derive(Debug, Parser)]
#[command(name = "lanyard", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the egress proxy.
    Proxy {
        /// Path to lanyard.yaml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0, or 64 naming the file, field and reason.
    Check {
        /// Path to lanyard.yaml.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Runs a parsed command line; returns the process exit status.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Check { config } => match crate::check(&config) {
            Ok(()) => {
                println!("{}: ok", config.display());
                0
            }
            Err(e) => report(&e),
        },
        Command::Proxy { config } => {
            crate::logging::init();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return report(&Error::Start(format!("cannot start runtime: {e}"))),
            };
            match rt.block_on(proxy(config)) {
                Ok(()) => 0,
                Err(e) => report(&e),
            }
        }
    }
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
    let config = Config::load(&file)?;
    let proxy = crate::build_proxy(config, &file).await?;
    let addr = proxy
        .local_addr()
        .map_err(|e| Error::Start(format!("listener: {e}")))?;
    tracing::info!(%addr, ca = %proxy.trust_files().ca_pem.display(), bundle = %proxy.trust_files().bundle_pem.display(), "lanyard proxy ready");
    // One machine-readable line on stdout, so scripts and tests can use port 0.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {addr}");
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
