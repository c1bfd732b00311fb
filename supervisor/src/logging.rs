//! Log setup: lines on stderr, filtered by `LANYARD_LOG` (`info` by
//! default; `debug`, or `lanyard_proxy=debug,info` style targets). Text for
//! people (coloured on a terminal), or one JSON object per line for log
//! pipelines (`--log-format json`).

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (tracing-subscriber's JSON layer), with the
    /// span fields (peer, destination) of the connection.
    Json,
}

/// Installs the global subscriber. A bad `LANYARD_LOG` falls back to `info`
/// with a warning rather than refusing to start.
pub fn init(format: LogFormat) {
    let spec = std::env::var("LANYARD_LOG").unwrap_or_else(|_| "info".into());
    let (filter, bad) = match spec.parse::<Targets>() {
        Ok(t) => (t, None),
        Err(e) => (
            Targets::new().with_default(tracing::Level::INFO),
            Some(e.to_string()),
        ),
    };
    let registry = tracing_subscriber::registry();
    let _ = match format {
        LogFormat::Text => {
            let fmt = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false);
            registry.with(fmt.with_filter(filter)).try_init()
        }
        LogFormat::Json => {
            let fmt = tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .with_current_span(true)
                .with_span_list(false)
                .with_target(false);
            registry.with(fmt.with_filter(filter)).try_init()
        }
    };
    if let Some(e) = bad {
        tracing::warn!(error = %e, "LANYARD_LOG is not a valid filter; using info");
    }
}
