//! Lanyard's data plane: an explicit forward proxy that intercepts TLS to
//! configured endpoints and injects a credential obtained from a
//! [`TokenSource`]. It knows nothing of SPIFFE.
//!
//! The request path is split by phase: [`accept`](crate::accept) →
//! [`parse`] → [`matcher`] → [`intercept`](crate::intercept) →
//! [`inject`](crate::inject) → [`relay`](crate::relay).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

mod accept;
pub mod ca;
pub mod config;
pub mod error;
pub mod inject;
mod intercept;
pub mod io;
pub mod matcher;
pub mod parse;
mod plain;
mod relay;
pub mod resolve;
pub mod secret;
pub mod settings;
pub mod source;
pub mod tls;
pub mod transparent;
mod upstream;

pub use ca::{CertCache, SandboxCa, TrustFiles};
pub use config::ProxyConfig;
pub use error::{ErrorSource, ProxyError};
pub use secret::Secret;
pub use settings::{ConfigError, Settings};
pub use source::{SourceError, StaticSource, TokenSource};

/// State shared by every connection.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) sources: HashMap<String, Arc<dyn TokenSource>>,
    pub(crate) certs: CertCache,
    pub(crate) upstream_tls: tls::UpstreamTls,
    pub(crate) server_tls: tls::ServerTls,
    pub(crate) drain: io::Drain,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Config that only fails when used (unreadable CA files, TLS roots).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The sandbox CA could not be created, loaded or written.
    #[error("sandbox CA: {0}")]
    Ca(#[from] ca::CaError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A bound, ready proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    listener: TcpListener,
    transparent: Vec<TcpListener>,
    trust: TrustFiles,
    ca_pem: String,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Creates or loads the sandbox CA, writes the agent's trust files, builds
    /// upstream TLS and binds the listener. `sources` maps provider names to
    /// token sources; every endpoint's provider must be present.
    pub async fn bind(
        settings: Settings,
        sources: HashMap<String, Arc<dyn TokenSource>>,
    ) -> Result<Self, StartError> {
        let addr = settings.config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let transparent = match &settings.config.transparent {
            Some(t) => transparent::bind(t.listen).map_err(|source| StartError::Bind {
                addr: t.listen,
                source,
            })?,
            None => Vec::new(),
        };
        let mut proxy = Self::with_listener(settings, sources, listener)?;
        proxy.transparent = transparent;
        Ok(proxy)
    }

    /// Like [`Proxy::bind`] on a listener bound by the caller (for example
    /// inside the agent's network namespace); `settings.config.listen` is ignored.
    pub fn with_std_listener(
        settings: Settings,
        sources: HashMap<String, Arc<dyn TokenSource>>,
        listener: std::net::TcpListener,
    ) -> Result<Self, StartError> {
        let addr = listener.local_addr().unwrap_or(settings.config.listen);
        let bind_err = |source| StartError::Bind { addr, source };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let listener = TcpListener::from_std(listener).map_err(bind_err)?;
        Self::with_listener(settings, sources, listener)
    }

    fn with_listener(
        settings: Settings,
        sources: HashMap<String, Arc<dyn TokenSource>>,
        listener: TcpListener,
    ) -> Result<Self, StartError> {
        for r in settings.router.rules() {
            if !sources.contains_key(&r.provider) {
                return Err(ConfigError::new(
                    "providers",
                    format!(
                        "endpoint '{}' needs provider '{}', which is not running",
                        r.name, r.provider
                    ),
                )
                .into());
            }
        }
        let cfg = &settings.config;
        let ca = match (&cfg.ca.cert_file, &cfg.ca.key_file, &cfg.ca.key_dir) {
            (Some(c), Some(k), _) => SandboxCa::load(c, k)?,
            (_, _, Some(dir)) => SandboxCa::load_or_generate_in(dir)?,
            _ => SandboxCa::generate()?,
        };
        let system = tls::system_roots();
        let trust = ca.write_trust_files(&cfg.ca.dir, &system)?;
        let upstream_tls = tls::UpstreamTls::new(&cfg.upstream_tls, &system)?;
        let ca_pem = ca.cert_pem().to_owned();
        let certs = CertCache::new(Arc::new(ca), cfg.limits.cert_cache_size);
        Ok(Proxy {
            shared: Arc::new(Shared {
                settings,
                sources,
                certs,
                upstream_tls,
                server_tls: tls::ServerTls::default(),
                drain: io::Drain::default(),
            }),
            listener,
            transparent: Vec::new(),
            trust,
            ca_pem,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The transparent listeners' addresses (empty without `transparent`).
    pub fn transparent_addrs(&self) -> Vec<SocketAddr> {
        self.transparent
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Where `ca.pem` and `bundle.pem` were written.
    pub fn trust_files(&self) -> &TrustFiles {
        &self.trust
    }

    /// The sandbox CA certificate in PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight
    /// requests finish within `limits.drain_timeout` and cuts the rest.
    /// Returns how many connections were cut.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> usize {
        accept::serve(self.shared, self.listener, self.transparent, shutdown).await
    }
}
