//! Log setup: human-readable lines on stderr, filtered by `LANYARD_LOG`
//! (`info` by default; `debug`, or `lanyard_proxy=debug,info` style targets).

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// Installs the global subscriber. A bad `LANYARD_LOG` falls back to `info`
/// with a warning rather than refusing to start.
pub fn init() {
    let spec = std::env::var("LANYARD_LOG").unwrap_or_else(|_| "info".into());
    let (filter, bad) = match spec.parse::<Targets>() {
        Ok(t) => (t, None),
        Err(e) => (
            Targets::new().with_default(tracing::Level::INFO),
            Some(e.to_string()),
        ),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .try_init();
    if let Some(e) = bad {
        tracing::warn!(error = %e, "LANYARD_LOG is not a valid filter; using info");
    }
}
