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
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;

mod accept;
pub mod ca;
pub mod config;
pub mod error;
pub mod inject;
mod intercept;
pub mod io;
pub mod matcher;
pub mod observe;
pub mod parse;
mod plain;
pub mod policy;
mod relay;
pub mod resolve;
pub mod secret;
pub mod settings;
pub mod source;
pub mod tls;
pub mod transparent;
pub mod truststore;
mod upstream;

pub use ca::{CertCache, SandboxCa, TrustFiles};
pub use config::ProxyConfig;
pub use error::{ErrorSource, ProxyError};
pub use observe::{Audit, ProxyMetrics, Telemetry};
pub use secret::Secret;
pub use settings::{ConfigError, Settings};
pub use source::{SourceError, StaticSource, TokenSource};

/// State shared by every connection that started under one config. A
/// reload builds a new one; connections keep the one they started with.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) sources: HashMap<String, Arc<dyn TokenSource>>,
    pub(crate) upstream_tls: tls::UpstreamTls,
    /// Upstream connections shared by this generation's tunnels.
    pub(crate) pools: upstream::Pools,
    // Kept across reloads: the CA and its leaves, the task set shutdown
    // drains, and what is reported.
    pub(crate) certs: CertCache,
    pub(crate) server_tls: tls::ServerTls,
    pub(crate) drain: Arc<io::Drain>,
    pub(crate) telemetry: Arc<Telemetry>,
}

/// The config generation new connections are served under.
pub(crate) type Live = Arc<RwLock<Arc<Shared>>>;

/// Swaps the config new connections get; in-flight connections finish
/// under the one they started with. Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    live: Live,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

impl Reloader {
    /// Validates `settings` against `sources` and the running proxy, then
    /// serves new connections with them. Returns notes for changes that only
    /// take effect at the next start (listeners, the CA, connection and
    /// leaf-cache bounds); on error nothing changes.
    pub fn apply(
        &self,
        settings: Settings,
        sources: HashMap<String, Arc<dyn TokenSource>>,
    ) -> Result<Vec<String>, ConfigError> {
        check_sources(&settings, &sources)?;
        let old = current(&self.live);
        let upstream_tls =
            tls::UpstreamTls::new(&settings.config.upstream_tls, &tls::system_roots())?;
        let (a, b) = (&old.settings.config, &settings.config);
        let mut notes = Vec::new();
        let mut restart = |field: &str, changed: bool| {
            if changed {
                notes.push(format!(
                    "{field} changed; it takes effect when Lanyard restarts"
                ));
            }
        };
        restart("listen", a.listen != b.listen);
        restart(
            "transparent",
            a.transparent.as_ref().map(|t| t.listen) != b.transparent.as_ref().map(|t| t.listen),
        );
        restart(
            "ca",
            (&a.ca.dir, &a.ca.cert_file, &a.ca.key_file, &a.ca.key_dir)
                != (&b.ca.dir, &b.ca.cert_file, &b.ca.key_file, &b.ca.key_dir),
        );
        restart(
            "limits.max_connections",
            a.limits.max_connections != b.limits.max_connections,
        );
        restart(
            "limits.cert_cache_size",
            a.limits.cert_cache_size != b.limits.cert_cache_size,
        );
        let next = Arc::new(Shared {
            settings,
            sources,
            upstream_tls,
            pools: upstream::Pools::default(),
            certs: old.certs.clone(),
            server_tls: old.server_tls.clone(),
            drain: old.drain.clone(),
            telemetry: old.telemetry.clone(),
        });
        match self.live.write() {
            Ok(mut g) => *g = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(notes)
    }
}

/// The generation a new connection starts under.
pub(crate) fn current(live: &Live) -> Arc<Shared> {
    match live.read() {
        Ok(g) => g.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Every endpoint's provider must be running.
fn check_sources(
    settings: &Settings,
    sources: &HashMap<String, Arc<dyn TokenSource>>,
) -> Result<(), ConfigError> {
    for r in settings.router.rules() {
        if !sources.contains_key(&r.provider) {
            return Err(ConfigError::new(
                "providers",
                format!(
                    "endpoint '{}' needs provider '{}', which is not running",
                    r.name, r.provider
                ),
            ));
        }
    }
    Ok(())
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
    live: Live,
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
        Self::bind_with(settings, sources, Arc::default()).await
    }

    /// [`Proxy::bind`], reporting to `telemetry`.
    pub async fn bind_with(
        settings: Settings,
        sources: HashMap<String, Arc<dyn TokenSource>>,
        telemetry: Arc<Telemetry>,
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
        let mut proxy = Self::with_listener(settings, sources, listener, telemetry)?;
        proxy.transparent = transparent;
        Ok(proxy)
    }

    /// Like [`Proxy::bind`] on a listener bound by the caller (for example
    /// inside the agent's network namespace); `settings.config.listen` is ignored.
    pub fn with_std_listener(
        settings: Settings,
        sources: HashMap<String, Arc<dyn TokenSource>>,
        listener: std::net::TcpListener,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self, StartError> {
        let addr = listener.local_addr().unwrap_or(settings.config.listen);
        let bind_err = |source| StartError::Bind { addr, source };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let listener = TcpListener::from_std(listener).map_err(bind_err)?;
        Self::with_listener(settings, sources, listener, telemetry)
    }

    fn with_listener(
        settings: Settings,
        sources: HashMap<String, Arc<dyn TokenSource>>,
        listener: TcpListener,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self, StartError> {
        check_sources(&settings, &sources)?;
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
        let certs = CertCache::new(
            Arc::new(ca),
            cfg.limits.cert_cache_size,
            telemetry.metrics.clone(),
        );
        Ok(Proxy {
            live: Arc::new(RwLock::new(Arc::new(Shared {
                settings,
                sources,
                certs,
                upstream_tls,
                pools: upstream::Pools::default(),
                server_tls: tls::ServerTls::default(),
                drain: Arc::default(),
                telemetry,
            }))),
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

    /// A handle that swaps the config new connections are served under.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            live: self.live.clone(),
        }
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight
    /// requests finish within `limits.drain_timeout` and cuts the rest.
    /// Returns how many connections were cut.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> usize {
        accept::serve(self.live, self.listener, self.transparent, shutdown).await
    }
}
