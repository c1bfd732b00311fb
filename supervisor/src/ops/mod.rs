//! Operating a running Lanyard: the metrics registry, the audit sink, live
//! reload, revocation, readiness and the `/debug/endpoints` view. The admin
//! listener ([`admin`]) is the HTTP face of this module.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lanyard_proxy::config::EndpointConfig;
use lanyard_proxy::{Audit, Proxy, ProxyMetrics, Reloader, Secret, Telemetry};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use crate::config::{AdminConfig, AuditConfig, Config, ConfigFileError, Validated};
use crate::{Error, Providers};

pub mod admin;
pub mod metrics;
#[cfg(test)]
mod tests;

use metrics::{GrantMetrics, Observe};

/// How often the config file is checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The registry and everything reporting into it.
pub struct Ops {
    registry: Registry,
    /// Control-plane metrics and the shared telemetry.
    pub observe: Observe,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ops")
    }
}

impl Ops {
    /// Metrics registered under `lanyard_`, and the audit sink `audit` asks for.
    pub fn new(audit: &AuditConfig, file: &Path) -> Result<Self, ConfigFileError> {
        let err = |reason: String| ConfigFileError {
            file: file.display().to_string(),
            field: "audit.file".into(),
            reason,
        };
        let out: Option<Box<dyn std::io::Write + Send>> = if !audit.enabled {
            None
        } else if let Some(path) = &audit.file {
            Some(Box::new(open_audit(path).map_err(|e| {
                err(format!("cannot open {}: {e}", path.display()))
            })?))
        } else {
            Some(Box::new(std::io::stderr()))
        };
        let sink = out
            .map(Audit::new)
            .transpose()
            .map_err(|e| err(format!("cannot start the audit writer: {e}")))?;
        Ok(Self::with_audit(sink))
    }

    /// Metrics registered under `lanyard_`, with this audit sink.
    pub fn with_audit(sink: Option<Audit>) -> Self {
        let mut registry = Registry::with_prefix("lanyard");
        let proxy = ProxyMetrics::default();
        proxy.register(&mut registry);
        let grants = GrantMetrics::default();
        grants.register(&mut registry);
        Self {
            registry,
            observe: Observe {
                metrics: grants,
                telemetry: Arc::new(Telemetry::new(proxy, sink)),
            },
        }
    }

    /// The registry in OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

fn open_audit(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// What reload swaps and the admin listener reads.
struct State {
    providers: Providers,
    /// The config file and the overlays it names, as the watcher checks them.
    watched: Vec<PathBuf>,
    endpoints: Vec<EndpointConfig>,
    admin_token: Option<Secret>,
}

/// A running Lanyard, as the admin listener and the reload watcher see it.
pub struct Runtime {
    file: PathBuf,
    /// Metrics and telemetry.
    pub ops: Ops,
    reloader: Reloader,
    state: Mutex<State>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// A bound proxy and the runtime around it.
#[derive(Debug)]
pub struct Started {
    /// The proxy, ready to serve.
    pub proxy: Proxy,
    /// Reload, revocation and the admin view.
    pub runtime: Arc<Runtime>,
    /// The admin listener's address, when one is configured.
    pub admin: Option<std::net::SocketAddr>,
}

/// How [`start`] runs.
#[derive(Debug, Default)]
pub struct StartOptions {
    /// A listener bound by the caller (in the agent's network namespace)
    /// instead of `listen`.
    pub listener: Option<std::net::TcpListener>,
    /// Reload on SIGHUP as well as on file change (`lanyard run` forwards
    /// SIGHUP to the agent instead).
    pub sighup: bool,
}

/// Validated config to serving: the audit sink, providers, the proxy, the
/// admin listener, the reload watcher and the Workload API warm-up.
pub async fn start(v: Validated, file: &Path, opts: StartOptions) -> Result<Started, Error> {
    let ops = Ops::new(&v.audit, file)?;
    let providers = crate::start_providers_with(&v, file, &ops.observe, None)?;
    let telemetry = ops.observe.telemetry.clone();
    let proxy = match opts.listener {
        Some(l) => Proxy::with_std_listener(v.settings, providers.sources.clone(), l, telemetry),
        None => Proxy::bind_with(v.settings, providers.sources.clone(), telemetry).await,
    }
    .map_err(|e| crate::start_error(file, e))?;
    let admin_token = read_admin_token(v.admin.as_ref(), file)?;
    let runtime = Arc::new(Runtime {
        file: file.to_owned(),
        ops,
        reloader: proxy.reloader(),
        state: Mutex::new(State {
            providers,
            watched: watched(file, &v.overlays),
            endpoints: v.endpoints,
            admin_token,
        }),
    });
    let admin = match &v.admin {
        Some(a) => Some(admin::serve(runtime.clone(), a).await?),
        None => None,
    };
    tokio::spawn(watch(runtime.clone(), opts.sighup));
    tokio::spawn(warm_up(runtime.clone()));
    Ok(Started {
        proxy,
        runtime,
        admin,
    })
}

fn read_admin_token(
    admin: Option<&AdminConfig>,
    file: &Path,
) -> Result<Option<Secret>, ConfigFileError> {
    let Some(path) = admin.and_then(|a| a.token_file.as_ref()) else {
        return Ok(None);
    };
    let err = |reason: String| ConfigFileError {
        file: file.display().to_string(),
        field: "admin.token_file".into(),
        reason,
    };
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?,
    );
    let token = text.trim();
    if token.len() < 16 {
        return Err(err(format!(
            "{} holds fewer than 16 characters; use a random token",
            path.display()
        )));
    }
    Ok(Some(Secret::new(token)))
}

/// Which cached credentials `POST /revoke` drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every token and SVID.
    All,
    /// One provider's tokens and the SVIDs they were exchanged with.
    Provider(String),
    /// One endpoint's token and its SVID.
    Endpoint(String),
}

impl Scope {
    fn label(&self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Provider(_) => "provider",
            Scope::Endpoint(_) => "endpoint",
        }
    }
}

/// What a revocation dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    /// Tokens removed from the cache.
    pub tokens: usize,
    /// SVIDs removed from the cache.
    pub svids: usize,
}

impl Runtime {
    /// The config file this runtime reloads.
    pub fn file(&self) -> &Path {
        &self.file
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Ready to serve: the CA exists (it does once the proxy is bound) and,
    /// when any provider needs the Workload API, it has issued an SVID.
    /// `Err` says what is missing.
    pub fn ready(&self) -> Result<(), String> {
        let st = self.state();
        match &st.providers.workload_api {
            Some(wl) if !wl.answered() => Err("the Workload API has not issued an SVID yet".into()),
            _ => Ok(()),
        }
    }

    /// Whether `presented` is the admin token (always, when none is set).
    pub fn admin_allows(&self, presented: Option<&str>) -> bool {
        let st = self.state();
        let Some(want) = &st.admin_token else {
            return true;
        };
        presented.is_some_and(|p| constant_time_eq(p.as_bytes(), want.expose().as_bytes()))
    }

    /// Reads, validates and applies the config file. On error the running
    /// config is untouched. Returns notes for fields that need a restart.
    pub async fn reload(&self) -> Result<Vec<String>, Error> {
        let result = self.try_reload().await;
        let m = &self.ops.observe.metrics;
        let t = &self.ops.observe.telemetry;
        match &result {
            Ok(notes) => {
                GrantMetrics::inc(&m.reloads, "applied");
                tracing::info!(file = %self.file.display(), ?notes, "config reloaded");
                t.audit("reload", &json!({ "result": "applied", "notes": notes }));
            }
            Err(e) => {
                GrantMetrics::inc(&m.reloads, "rejected");
                tracing::warn!(error = %e, "config reload rejected; the last good config keeps serving");
                t.audit(
                    "reload",
                    &json!({ "result": "rejected", "error": e.to_string() }),
                );
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<Vec<String>, Error> {
        let file = &self.file;
        let config = Config::load(file)?;
        let v = config.validate(file)?;
        let admin_token = read_admin_token(v.admin.as_ref(), file)?;
        let (cache, live) = {
            let mut st = self.state();
            let providers =
                crate::start_providers_with(&v, file, &self.ops.observe, Some(&st.providers))?;
            let mut notes = self
                .reloader
                .apply(v.settings, providers.sources.clone())
                .map_err(|e| ConfigFileError::from_field(file, e))?;
            notes.push("admin and audit settings other than admin.token_file take effect when Lanyard restarts".into());
            let live: HashSet<crate::grants::TokenKey> = providers
                .grants
                .values()
                .flat_map(|g| g.keys().map(|(_, k)| k.clone()).collect::<Vec<_>>())
                .collect();
            let cache = providers.token_cache().cloned();
            st.providers = providers;
            st.endpoints = v.endpoints;
            st.watched = watched(file, &v.overlays);
            st.admin_token = admin_token;
            (cache, (live, notes))
        };
        let (live, notes) = live;
        // Tokens of removed providers, or minted with parameters that changed,
        // must not outlive the config that asked for them.
        if let Some(cache) = cache {
            let dropped = cache.invalidate_if(|k| !live.contains(k)).await;
            if dropped > 0 {
                tracing::info!(tokens = dropped, "dropped tokens no longer configured");
            }
        }
        Ok(notes)
    }

    /// Drops cached credentials in `scope` at once; the next request
    /// exchanges again, so the issuer's current decision applies.
    pub async fn revoke(&self, scope: &Scope) -> Result<Revoked, String> {
        let (cache, identity, keys) = {
            let st = self.state();
            let p = &st.providers;
            let keys: Vec<crate::grants::TokenKey> = match scope {
                Scope::All => p
                    .grants
                    .values()
                    .flat_map(|g| g.keys().map(|(_, k)| k.clone()).collect::<Vec<_>>())
                    .collect(),
                Scope::Provider(name) => {
                    if !p.grants.contains_key(name) && !p.statics.contains_key(name) {
                        return Err(format!("no provider named '{name}'"));
                    }
                    p.grants
                        .get(name)
                        .map(|g| g.keys().map(|(_, k)| k.clone()).collect())
                        .unwrap_or_default()
                }
                Scope::Endpoint(name) => {
                    if !st.endpoints.iter().any(|e| &e.name == name) {
                        return Err(format!("no endpoint named '{name}'"));
                    }
                    p.grants
                        .values()
                        .flat_map(|g| {
                            g.keys()
                                .filter(|(e, _)| e == name)
                                .map(|(_, k)| k.clone())
                                .collect::<Vec<_>>()
                        })
                        .collect()
                }
            };
            (p.token_cache().cloned(), p.identity().cloned(), keys)
        };
        let all = *scope == Scope::All;
        let wanted: HashSet<_> = keys.iter().cloned().collect();
        let audiences: HashSet<String> = keys
            .iter()
            .map(|k| k.params().svid_audience.clone())
            .collect();
        let tokens = match cache {
            Some(c) => c.invalidate_if(|k| all || wanted.contains(k)).await,
            None => 0,
        };
        let svids = match identity {
            Some(i) => i.revoke(|aud| all || audiences.contains(aud)).await,
            None => 0,
        };
        let m = &self.ops.observe.metrics;
        GrantMetrics::inc(&m.revocations, scope.label());
        let target = match scope {
            Scope::All => None,
            Scope::Provider(n) | Scope::Endpoint(n) => Some(n.as_str()),
        };
        tracing::info!(
            scope = scope.label(),
            target,
            tokens,
            svids,
            "credentials revoked"
        );
        self.ops.observe.telemetry.audit(
            "revoke",
            &json!({ "scope": scope.label(), "target": target, "tokens": tokens, "svids": svids }),
        );
        Ok(Revoked { tokens, svids })
    }

    /// `/debug/endpoints`: endpoints and providers with their token state.
    /// Never a token or an SVID: only names, times and errors (which the
    /// grant code already scrubs of both).
    pub fn debug_endpoints(&self) -> Value {
        let st = self.state();
        let p = &st.providers;
        let now = std::time::SystemTime::now();
        let endpoints: Vec<Value> = st
            .endpoints
            .iter()
            .map(|e| {
                let grant = p.grants.get(&e.provider);
                let key = grant.and_then(|g| g.keys().find(|(n, _)| *n == e.name).map(|(_, k)| k));
                let token = grant.and_then(|g| g.state(&e.name)).map(|s| {
                    json!({
                        "cached": s.valid_until.is_some(),
                        "valid_for_s": s.valid_until.and_then(|t| t.duration_since(now).ok()).map(|d| d.as_secs()),
                        "valid_until": s.valid_until.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
                        "last_error": s.last_error,
                        "next_retry_in_ms": s.retry_in.map(|d| d.as_millis()),
                    })
                });
                json!({
                    "name": e.name,
                    "host": e.host,
                    "port": e.port,
                    "path": e.path,
                    "methods": e.methods,
                    "provider": e.provider,
                    "kind": if grant.is_some() { "token_grant" } else { "static" },
                    "grant": grant.map(|g| format!("{:?}", g.grant())),
                    "audience": key.and_then(|k| k.params().audience.clone()),
                    "svid_audience": key.map(|k| k.params().svid_audience.clone()),
                    "scopes": key.map(|k| k.params().scopes.clone()),
                    "token": token,
                })
            })
            .collect();
        let mut providers: Vec<Value> = p
            .grants
            .values()
            .map(|g| {
                json!({
                    "name": g.name(),
                    "kind": "token_grant",
                    "grant": format!("{:?}", g.grant()),
                    "token_endpoint": g.token_endpoint(),
                })
            })
            .collect();
        providers.extend(p.statics.iter().map(|(name, path)| {
            json!({ "name": name, "kind": "static", "token_file": path.display().to_string() })
        }));
        json!({
            "spiffe_id": self.ops.observe.telemetry.spiffe_id().map(|s| s.to_string()),
            "workload_api_answered": p.workload_api.as_ref().map(|w| w.answered()),
            "endpoints": endpoints,
            "providers": providers,
        })
    }
}

/// Comparison whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reloads when the config file changes (size, mtime or inode, which also
/// catches Kubernetes' symlink swap of a mounted ConfigMap) and, with
/// `sighup`, on SIGHUP.
async fn watch(runtime: Arc<Runtime>, sighup: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = if sighup {
        signal(SignalKind::hangup()).ok()
    } else {
        None
    };
    let files = |r: &Runtime| r.state().watched.clone();
    let mut seen: Vec<_> = files(&runtime).iter().map(|f| stamp(f)).collect();
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let by_signal = tokio::select! {
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            _ = tick.tick() => false,
        };
        let now: Vec<_> = files(&runtime).iter().map(|f| stamp(f)).collect();
        if !by_signal && now == seen {
            continue;
        }
        seen = now;
        tracing::info!(
            trigger = if by_signal { "SIGHUP" } else { "file changed" },
            "reloading config"
        );
        let _ = runtime.reload().await;
    }
}

/// The files whose change triggers a reload: the config and its overlays.
fn watched(file: &Path, overlays: &[PathBuf]) -> Vec<PathBuf> {
    std::iter::once(file.to_owned())
        .chain(overlays.iter().cloned())
        .collect()
}

fn stamp(path: &Path) -> Option<(u64, Option<std::time::SystemTime>, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok(), m.ino()))
}

/// Asks the Workload API for one SVID as soon as Lanyard starts, so
/// `/readyz` turns ready without waiting for the agent's first request, and
/// that request finds its SVID cached. Retries until it succeeds.
async fn warm_up(runtime: Arc<Runtime>) {
    let (identity, audience) = {
        let st = runtime.state();
        let aud = st
            .providers
            .grants
            .values()
            .flat_map(|g| {
                g.keys()
                    .map(|(_, k)| k.params().svid_audience.clone())
                    .collect::<Vec<_>>()
            })
            .next();
        match (st.providers.identity().cloned(), aud) {
            (Some(i), Some(a)) => (i, a),
            _ => return,
        }
    };
    let mut delay = Duration::from_millis(200);
    loop {
        match identity.svid(&audience).await {
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(error = %e, "Workload API warm-up: no SVID yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
