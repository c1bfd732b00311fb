//! TLS configuration for both sides of an interception: the upstream client
//! (verifying the real server) and the per-connection server config that
//! presents a sandbox-CA leaf to the agent.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerConfig, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::UpstreamTlsConfig;
use crate::settings::ConfigError;

/// ALPN ids this proxy understands.
pub const H2: &[u8] = b"h2";
/// HTTP/1.1 ALPN id.
pub const H1: &[u8] = b"http/1.1";

/// Upstream client configs, one per ALPN offer, sharing one resumption store.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    both: Arc<ClientConfig>,
    h1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
    none: Arc<ClientConfig>,
}

/// The crypto provider used everywhere (one TLS backend: ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Roots from the operating system store (also what goes into the agent's bundle).
pub fn system_roots() -> Vec<CertificateDer<'static>> {
    let loaded = rustls_native_certs::load_native_certs();
    for e in &loaded.errors {
        tracing::debug!(error = %e, "skipping unreadable system root");
    }
    loaded.certs
}

impl UpstreamTls {
    /// Builds the upstream trust from config; `system` is the OS root store.
    pub fn new(
        cfg: &UpstreamTlsConfig,
        system: &[CertificateDer<'static>],
    ) -> Result<Self, ConfigError> {
        let mut roots = RootCertStore::empty();
        if cfg.webpki_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if cfg.system_roots {
            // Some OS bundles carry certificates webpki rejects; skipping them is what browsers do.
            let _ = roots.add_parsable_certificates(system.iter().cloned());
        }
        for (i, path) in cfg.extra_ca_files.iter().enumerate() {
            let field = format!("upstream_tls.extra_ca_files[{i}]");
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ConfigError::new(&field, format!("{}: {e}", path.display())))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConfigError::new(&field, format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(ConfigError::new(
                    &field,
                    format!("{}: no PEM certificate found", path.display()),
                ));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| ConfigError::new(&field, format!("{}: {e}", path.display())))?;
            }
        }
        if roots.is_empty() {
            return Err(ConfigError::new(
                "upstream_tls",
                "no trusted roots: enable system_roots or webpki_roots, or add extra_ca_files",
            ));
        }
        let roots = Arc::new(roots);
        let base = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new("upstream_tls", e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let with = |alpn: &[&[u8]]| {
            let mut c = base.clone();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(c)
        };
        Ok(Self {
            both: with(&[H2, H1]),
            h1: with(&[H1]),
            h2: with(&[H2]),
            none: with(&[]),
        })
    }

    /// The config offering the protocols the agent offered (of those we
    /// speak), plus HTTP/1.1 when the agent offered only h2: an upstream that
    /// speaks only HTTP/1.1 (and refuses a handshake without a common
    /// protocol) is then still reached, and the agent's h2 streams are
    /// relayed onto it.
    pub fn for_offer(&self, offer: &AlpnOffer) -> Arc<ClientConfig> {
        match (offer.h2, offer.h1) {
            (true, _) => self.both.clone(),
            (false, true) => self.h1.clone(),
            (false, false) => self.none.clone(),
        }
    }

    /// The HTTP/1.1-only config (token endpoints, re-dials of HTTP/1.1 upstreams).
    pub fn h1_only(&self) -> Arc<ClientConfig> {
        self.h1.clone()
    }

    /// The HTTP/2-only config (re-dials of an upstream that chose HTTP/2).
    pub fn h2_only(&self) -> Arc<ClientConfig> {
        self.h2.clone()
    }
}

/// What a client offered in ALPN, restricted to the protocols Lanyard relays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlpnOffer {
    /// `h2` offered.
    pub h2: bool,
    /// `http/1.1` offered.
    pub h1: bool,
}

impl AlpnOffer {
    /// From a ClientHello's ALPN extension.
    pub fn from_hello(hello: &ClientHello<'_>) -> Self {
        let mut o = AlpnOffer::default();
        if let Some(protos) = hello.alpn() {
            for p in protos {
                o.h2 |= p == H2;
                o.h1 |= p == H1;
            }
        }
        o
    }
}

/// Presents one fixed leaf regardless of SNI: the certificate is chosen by the
/// CONNECT authority (the destination Lanyard dialed), never by the client's SNI.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Builds per-connection server configs that share one session cache, so
/// agents resume TLS sessions across connections.
#[derive(Debug, Clone)]
pub struct ServerTls {
    provider: Arc<CryptoProvider>,
    sessions: Arc<dyn StoresServerSessions>,
}

impl Default for ServerTls {
    fn default() -> Self {
        Self {
            provider: provider(),
            sessions: ServerSessionMemoryCache::new(4096),
        }
    }
}

impl ServerTls {
    /// A server config presenting `cert` and offering exactly `alpn`.
    pub fn config(
        &self,
        cert: Arc<CertifiedKey>,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut c = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FixedCert(cert)));
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        c.session_storage = self.sessions.clone();
        Ok(Arc::new(c))
    }
}
