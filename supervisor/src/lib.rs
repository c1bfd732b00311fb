//! Lanyard's control plane: config, identity (JWT-SVIDs from the Workload
//! API), grants (token exchange and caching), and the `lanyard` command line.
//! The data plane lives in `lanyard-proxy`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lanyard_proxy::{StartError, StaticSource, TokenSource};

pub mod cache;
pub mod cli;
pub mod config;
pub mod dev;
pub mod grants;
pub mod identity;
pub mod logging;
pub mod netinit;
pub mod openshell;
pub mod ops;
pub mod paths;
pub mod policy;
pub mod run;

use config::{Config, ConfigFileError, ProviderKind, Validated};

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

/// The running providers and what they share.
pub struct Providers {
    /// Token sources by provider name, for the proxy.
    pub sources: HashMap<String, Arc<dyn TokenSource>>,
    /// The Workload API client, when any provider needs one.
    pub workload_api: Option<Arc<identity::WorkloadApi>>,
    /// Grant providers by name (revocation and `/debug/endpoints` reach them here).
    pub grants: BTreeMap<String, Arc<grants::GrantSource>>,
    /// Static providers' token files by name.
    pub statics: BTreeMap<String, PathBuf>,
    /// The identity, issuer client and token cache, with the settings they
    /// were built from: a reload that leaves those alone keeps them, and so
    /// keeps every token whose grant parameters did not change.
    grant_shared: Option<(String, grants::Shared)>,
}

impl Providers {
    /// The SVID cache, when any provider uses one.
    pub fn identity(&self) -> Option<&Arc<identity::Identity>> {
        self.grant_shared.as_ref().map(|(_, s)| &s.identity)
    }

    /// The token cache, when any provider exchanges.
    pub fn token_cache(&self) -> Option<&Arc<grants::TokenCache>> {
        self.grant_shared.as_ref().map(|(_, s)| &s.cache)
    }
}

/// Starts every provider in the config. Nothing here connects anywhere:
/// the Workload API and issuers are contacted on first use.
pub fn start_providers(v: &Validated, file: &Path) -> Result<Providers, ConfigFileError> {
    start_providers_with(v, file, &ops::metrics::Observe::default(), None)
}

/// [`start_providers`], reporting to `observe`; with `previous` (a reload),
/// the SVID and token caches are carried over when the Workload API
/// settings and cache policy are unchanged.
pub fn start_providers_with(
    v: &Validated,
    file: &Path,
    observe: &ops::metrics::Observe,
    previous: Option<&Providers>,
) -> Result<Providers, ConfigFileError> {
    let err = |field: String, reason: String| ConfigFileError {
        file: file.display().to_string(),
        field,
        reason,
    };
    let fingerprint = format!(
        "{:?}|{:?}|{:?}|{:?}",
        v.workload_endpoint, v.spiffe.id, v.spiffe.fetch_timeout, v.token_cache
    );
    let mut sources: HashMap<String, Arc<dyn TokenSource>> = HashMap::new();
    let mut grant_map = BTreeMap::new();
    let mut statics = BTreeMap::new();
    let mut grant_shared: Option<(String, grants::Shared)> = None;
    let mut workload_api = None;
    for (name, p) in &v.providers {
        let kind = p.kind().map_err(|r| err(format!("providers.{name}"), r))?;
        let source: Arc<dyn TokenSource> = match kind {
            ProviderKind::Static(s) => {
                statics.insert(name.clone(), s.token_file.clone());
                Arc::new(
                    StaticSource::new(&s.token_file)
                        .map_err(|e| err(format!("providers.{name}.static.token_file"), e.0))?,
                )
            }
            ProviderKind::TokenGrant(g) => {
                if grant_shared.is_none() {
                    let upstream = lanyard_proxy::tls::UpstreamTls::new(
                        &v.settings.config.upstream_tls,
                        &lanyard_proxy::tls::system_roots(),
                    )
                    .map_err(|e| err(e.field, e.reason))?;
                    let issuer =
                        grants::IssuerClient::new(upstream.h1_only(), v.settings.resolve.clone());
                    let kept = previous
                        .and_then(|p| p.grant_shared.as_ref().map(|g| (g, p.workload_api.clone())))
                        .filter(|((f, _), _)| *f == fingerprint);
                    let shared = match kept {
                        Some(((_, old), wl)) => {
                            workload_api = wl;
                            grants::Shared {
                                identity: old.identity.clone(),
                                issuer,
                                cache: old.cache.clone(),
                                observe: observe.clone(),
                            }
                        }
                        None => {
                            let socket = v
                                .workload_endpoint
                                .clone()
                                .map_err(|r| err("spiffe.endpoint_socket".into(), r))?
                                .ok_or_else(|| {
                                    err(
                                        "spiffe.endpoint_socket".into(),
                                        format!("provider '{name}' needs the Workload API: set spiffe.endpoint_socket or SPIFFE_ENDPOINT_SOCKET"),
                                    )
                                })?;
                            let id = v
                                .spiffe
                                .id
                                .as_deref()
                                .map(spiffe::SpiffeId::new)
                                .transpose()
                                .map_err(|e| err("spiffe.id".into(), e.to_string()))?;
                            let wl = Arc::new(
                                identity::WorkloadApi::new(
                                    socket,
                                    id,
                                    v.spiffe.fetch_timeout,
                                    v.token_cache.policy(),
                                )
                                .with_observe(observe.clone()),
                            );
                            let identity =
                                identity::Identity::new(wl.clone(), v.token_cache.policy());
                            identity.observe(&observe.metrics);
                            let cache = grants::TokenCache::new("token", v.token_cache.policy());
                            cache.observe(observe.metrics.cache_events.clone(), "token");
                            workload_api = Some(wl);
                            grants::Shared {
                                identity: Arc::new(identity),
                                issuer,
                                cache,
                                observe: observe.clone(),
                            }
                        }
                    };
                    grant_shared = Some((fingerprint.clone(), shared));
                }
                let shared = grant_shared.as_ref().map(|(_, s)| s).ok_or_else(|| {
                    err("providers".into(), "internal: grant state missing".into())
                })?;
                let g = Arc::new(
                    grants::GrantSource::build(name, g, &v.endpoints, shared)
                        .map_err(|(f, r)| err(f, r))?,
                );
                grant_map.insert(name.clone(), g.clone());
                g
            }
        };
        sources.insert(name.clone(), source);
    }
    Ok(Providers {
        sources,
        workload_api,
        grants: grant_map,
        statics,
        grant_shared,
    })
}

/// Loads, validates and binds: everything `lanyard proxy` does before
/// serving (the admin listener, reload watcher and Workload API warm-up are
/// already running when this returns).
pub async fn build_proxy(
    config: Config,
    file: &Path,
    opts: ops::StartOptions,
) -> Result<ops::Started, Error> {
    let v = config.validate(file)?;
    ops::start(v, file, opts).await
}

/// Maps a proxy start failure: config-caused ones (trust files, the CA
/// directory or key) exit 64 naming the field; the rest exit 1.
pub fn start_error(file: &Path, e: StartError) -> Error {
    match e {
        StartError::Config(c) => Error::Config(ConfigFileError::from_field(file, c)),
        StartError::Ca(c) => Error::Config(ConfigFileError::from_field(
            file,
            lanyard_proxy::ConfigError::new("ca", c.to_string()),
        )),
        other => Error::Start(other.to_string()),
    }
}

/// What `lanyard check` found.
#[derive(Debug)]
pub struct Checked {
    /// Problems only `lanyard run` would refuse (a hidden directory that
    /// would hide the CA directory), which do not stop `lanyard proxy`.
    pub notes: Vec<String>,
    /// The resolved endpoint table, one line per rule, in match order.
    pub table: String,
    /// The effective statements per endpoint and egress entry (empty when none).
    pub statements: String,
}

/// Checks a config as far as possible without binding: parse, validate, read
/// token files and CA/upstream trust files, and `agent.*` as `lanyard run`
/// would take it.
pub fn check(file: &Path) -> Result<Checked, Error> {
    let config = Config::load(file)?;
    let v = config.validate(file)?;
    let providers = start_providers(&v, file)?;
    let mut notes = Vec::new();
    match run::plan::plan(&v, file) {
        Ok(_) => {}
        Err(e) if e.field.starts_with("agent") => return Err(e.into()),
        Err(e) => notes.push(format!("lanyard run would refuse this config: {e}")),
    }
    let cfg = &v.settings.config;
    if let (Some(c), Some(k)) = (&cfg.ca.cert_file, &cfg.ca.key_file) {
        lanyard_proxy::SandboxCa::load(c, k).map_err(|e| {
            ConfigFileError::from_field(file, lanyard_proxy::ConfigError::new("ca", e.to_string()))
        })?;
    }
    lanyard_proxy::tls::UpstreamTls::new(&cfg.upstream_tls, &lanyard_proxy::tls::system_roots())
        .map_err(|e| ConfigFileError::from_field(file, e))?;
    Ok(Checked {
        notes,
        table: endpoint_table(&v, &providers),
        statements: policy::statements_table(&v),
    })
}

/// `lanyard check`'s table: every rule as the matcher holds it (normalised
/// path, methods) with the credential it gets.
fn endpoint_table(v: &Validated, providers: &Providers) -> String {
    let mut rows = vec![
        [
            "RULE",
            "HOST",
            "PORT",
            "PATH",
            "METHODS",
            "PROVIDER",
            "GRANT",
            "AUDIENCE",
            "SVID-AUDIENCE",
        ]
        .map(String::from),
    ];
    // The router holds its rules most specific first, not in file order:
    // each row takes the host as written from the entry of the same name.
    for rule in v.settings.router.rules() {
        let written = v
            .endpoints
            .iter()
            .find(|e| e.name == rule.name)
            .map_or("?", |e| e.host.as_str());
        let grant = providers.grants.get(&rule.provider);
        let key = grant.and_then(|g| g.keys().find(|(n, _)| *n == rule.name).map(|(_, k)| k));
        let methods = rule.methods.as_ref().map_or_else(
            || "*".to_owned(),
            |m| {
                m.iter()
                    .map(http::Method::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            },
        );
        let tls = if rule.tls == lanyard_proxy::config::TlsMode::Passthrough {
            " (passthrough)"
        } else {
            ""
        };
        rows.push([
            rule.name.clone(),
            format!("{written}{tls}"),
            rule.port.to_string(),
            // The matcher keeps a root prefix as the empty string.
            if rule.path.is_empty() {
                "/".to_owned()
            } else {
                rule.path.clone()
            },
            methods,
            rule.provider.clone(),
            grant.map_or_else(|| "static".to_owned(), |g| format!("{:?}", g.grant())),
            key.and_then(|k| k.params().audience.clone())
                .unwrap_or_else(|| "-".into()),
            // Which default applied (issuer, token endpoint) or the override.
            key.map(|k| k.params().svid_audience.clone())
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..9)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `lanyard ca export`: the sandbox CA certificate agents must trust, from
/// wherever this config keeps it.
pub fn ca_export(file: &Path) -> Result<String, Error> {
    let config = Config::load(file)?;
    let ca = &config.ca;
    let candidates: Vec<PathBuf> = [
        ca.cert_file.clone(),
        ca.key_dir.as_ref().map(|d| d.join("ca.pem")),
        Some(ca.dir.join("ca.pem")),
    ]
    .into_iter()
    .flatten()
    .collect();
    for path in &candidates {
        if let Ok(text) = std::fs::read_to_string(path) {
            if pem::parse(&text).is_ok_and(|p| p.tag() == "CERTIFICATE") {
                return Ok(text);
            }
            return Err(Error::Start(format!(
                "{} is not a PEM certificate",
                path.display()
            )));
        }
    }
    Err(Error::Start(format!(
        "no sandbox CA yet: this config generates one when Lanyard starts (looked in {}); start `lanyard proxy`, or set ca.key_dir so it persists",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// `lanyard probe`: whether the proxy this config describes is up. Reads
/// the config only for addresses and paths; dials each listener (an
/// unspecified address through loopback of its family) and checks that the
/// agent's trust files are there, since an agent started without them fails
/// every TLS handshake.
pub fn probe(file: &Path) -> Result<(), Error> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    let config = Config::load(file)?;
    let mut listeners = vec![config.listen];
    if let Some(t) = &config.transparent {
        listeners.push(t.listen);
    }
    for file in ["ca.pem", "bundle.pem"] {
        let path = config.ca.dir.join(file);
        if !path.is_file() {
            return Err(Error::Start(format!(
                "not ready: {} does not exist yet",
                path.display()
            )));
        }
    }
    for addr in listeners {
        let dial = match addr {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::from((Ipv4Addr::LOCALHOST, a.port()))
            }
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from((Ipv6Addr::LOCALHOST, a.port()))
            }
            a => a,
        };
        TcpStream::connect_timeout(&dial, std::time::Duration::from_secs(2))
            .map_err(|e| Error::Start(format!("not ready: {addr} does not accept: {e}")))?;
    }
    Ok(())
}
