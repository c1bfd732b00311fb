//! Lanyard's control plane: config, credential providers and the `lanyard`
//! command line. The data plane lives in `lanyard-proxy`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use lanyard_proxy::{Proxy, StartError, StaticSource, TokenSource};

pub mod cli;
pub mod config;
pub mod logging;

use config::{Config, ConfigFileError, ProviderConfig, ProviderKind};

/// Exit status for configuration errors (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// Why `lanyard` could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file is wrong (exit 64).
    #[error("config error: {0}")]
    Config(#[from] ConfigFileError),
    /// Something outside the config failed at start (exit 1).
    #[error("{0}")]
    Start(String),
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => EXIT_CONFIG,
            Error::Start(_) => 1,
        }
    }
}

/// Starts every provider named in the config.
pub fn start_providers(
    providers: &BTreeMap<String, ProviderConfig>,
    file: &Path,
) -> Result<HashMap<String, Arc<dyn TokenSource>>, ConfigFileError> {
    let mut out: HashMap<String, Arc<dyn TokenSource>> = HashMap::new();
    for (name, p) in providers {
        let kind = p.kind().map_err(|reason| ConfigFileError {
            file: file.display().to_string(),
            field: format!("providers.{name}"),
            reason,
        })?;
        let source: Arc<dyn TokenSource> =
            match kind {
                ProviderKind::Static(s) => Arc::new(StaticSource::new(&s.token_file).map_err(
                    |e| ConfigFileError {
                        file: file.display().to_string(),
                        field: format!("providers.{name}.static.token_file"),
                        reason: e.0,
                    },
                )?),
            };
        out.insert(name.clone(), source);
    }
    Ok(out)
}

/// Loads, validates and binds: everything `lanyard proxy` does before serving.
pub async fn build_proxy(config: Config, file: &Path) -> Result<Proxy, Error> {
    let (settings, providers) = config.validate(file)?;
    let sources = start_providers(&providers, file)?;
    Proxy::bind(settings, sources).await.map_err(|e| match e {
        StartError::Config(c) => Error::Config(ConfigFileError::from_field(file, c)),
        StartError::Ca(c) => Error::Config(ConfigFileError::from_field(
            file,
            lanyard_proxy::ConfigError::new("ca", c.to_string()),
        )),
        other => Error::Start(other.to_string()),
    })
}

/// Checks a config as far as possible without binding: parse, validate, read
/// token files and CA/upstream trust files.
pub fn check(file: &Path) -> Result<(), Error> {
    let config = Config::load(file)?;
    let (settings, providers) = config.validate(file)?;
    start_providers(&providers, file)?;
    let cfg = &settings.config;
    if let (Some(c), Some(k)) = (&cfg.ca.cert_file, &cfg.ca.key_file) {
        lanyard_proxy::SandboxCa::load(c, k).map_err(|e| {
            ConfigFileError::from_field(file, lanyard_proxy::ConfigError::new("ca", e.to_string()))
        })?;
    }
    lanyard_proxy::tls::UpstreamTls::new(&cfg.upstream_tls, &lanyard_proxy::tls::system_roots())
        .map_err(|e| ConfigFileError::from_field(file, e))?;
    Ok(())
}
