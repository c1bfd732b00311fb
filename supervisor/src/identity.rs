//! Identity: JWT-SVIDs from the SPIFFE Workload API, one cached SVID per
//! audience, fetched again ahead of expiry.
//!
//! One client serves every fetch. A transport failure drops it; the next
//! fetch reconnects, no sooner than a capped, jittered backoff allows, so a
//! missing socket costs one connection attempt per step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use lanyard_proxy::Secret;
use lanyard_proxy::source::BoxFuture;
use spiffe::WorkloadApiClient;
use tokio::sync::Mutex;

use crate::cache::{self, CacheError, Fresh, Policy, Refreshing};

/// A JWT-SVID as Lanyard keeps it.
#[derive(Debug, Clone)]
pub struct Svid {
    /// The compact JWT.
    pub token: Secret,
    /// The `sub` claim.
    pub spiffe_id: String,
}

/// Where SVIDs come from (the Workload API; a fake in unit tests).
pub trait SvidFetcher: Send + Sync + 'static {
    /// Fetches a JWT-SVID for `audience`; returns it with its remaining lifetime.
    fn fetch(&self, audience: &str) -> BoxFuture<'_, Result<(Svid, Duration), String>>;
}

/// The Workload API over its unix socket.
pub struct WorkloadApi {
    endpoint: spiffe::transport::Endpoint,
    /// For messages.
    display: String,
    /// `spiffe.id`: the identity requested, and required of every SVID.
    id: Option<spiffe::SpiffeId>,
    timeout: Duration,
    reconnect: Policy,
    client: Mutex<Conn>,
    fetches: AtomicU64,
    connected_once: std::sync::atomic::AtomicBool,
    observe: crate::ops::metrics::Observe,
}

struct Conn {
    client: Option<WorkloadApiClient>,
    failures: u32,
    retry_at: Option<Instant>,
}

impl std::fmt::Debug for WorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadApi")
            .field("endpoint", &self.display)
            .finish()
    }
}

impl WorkloadApi {
    /// A client for `endpoint` (as [`crate::paths::workload_endpoint`] resolved
    /// it); connects lazily, and after a failure no sooner than `reconnect`'s
    /// backoff allows.
    pub fn new(
        endpoint: spiffe::transport::Endpoint,
        id: Option<spiffe::SpiffeId>,
        timeout: Duration,
        reconnect: Policy,
    ) -> Self {
        let display = match &endpoint {
            spiffe::transport::Endpoint::Unix(p) => format!("unix:{}", p.display()),
            other => format!("{other:?}"),
        };
        Self {
            endpoint,
            display,
            id,
            timeout,
            reconnect,
            client: Mutex::new(Conn {
                client: None,
                failures: 0,
                retry_at: None,
            }),
            fetches: AtomicU64::new(0),
            connected_once: std::sync::atomic::AtomicBool::new(false),
            observe: crate::ops::metrics::Observe::default(),
        }
    }

    /// Reports fetches, reconnects and the SPIFFE ID to `observe`.
    pub fn with_observe(mut self, observe: crate::ops::metrics::Observe) -> Self {
        self.observe = observe;
        self
    }

    /// Whether the Workload API has issued an SVID yet (readiness).
    pub fn answered(&self) -> bool {
        self.observe.telemetry.spiffe_id().is_some()
    }

    /// FetchJWTSVID calls made so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    async fn client(&self) -> Result<WorkloadApiClient, String> {
        let mut conn = self.client.lock().await;
        if let Some(c) = &conn.client {
            return Ok(c.clone());
        }
        if let Some(at) = conn.retry_at {
            let now = Instant::now();
            if now < at {
                return Err(format!(
                    "Workload API at {} unreachable; reconnecting in {} ms",
                    self.display,
                    (at - now).as_millis()
                ));
            }
        }
        match tokio::time::timeout(
            self.timeout,
            WorkloadApiClient::connect(self.endpoint.clone()),
        )
        .await
        {
            Ok(Ok(c)) => {
                if self.connected_once.swap(true, Ordering::Relaxed) {
                    self.observe.metrics.workload_api_reconnects.inc();
                }
                conn.client = Some(c.clone());
                conn.failures = 0;
                conn.retry_at = None;
                Ok(c)
            }
            Ok(Err(e)) => Err(self.connect_failed(&mut conn, e.to_string())),
            Err(_) => Err(self.connect_failed(&mut conn, "connect timed out".into())),
        }
    }

    fn connect_failed(&self, conn: &mut Conn, why: String) -> String {
        conn.failures += 1;
        conn.retry_at = Some(Instant::now() + cache::backoff(&self.reconnect, conn.failures));
        format!(
            "cannot connect to the Workload API at {}: {why}",
            self.display
        )
    }

    async fn drop_client(&self) {
        self.client.lock().await.client = None;
    }
}

impl SvidFetcher for WorkloadApi {
    fn fetch(&self, audience: &str) -> BoxFuture<'_, Result<(Svid, Duration), String>> {
        let audience = audience.to_owned();
        Box::pin(async move {
            let got = self.fetch_once(audience).await;
            let m = &self.observe.metrics;
            match &got {
                Ok((svid, _)) => {
                    crate::ops::metrics::GrantMetrics::inc(&m.workload_api_fetches, "ok");
                    self.observe.telemetry.set_spiffe_id(&svid.spiffe_id);
                }
                Err(_) => crate::ops::metrics::GrantMetrics::inc(&m.workload_api_fetches, "error"),
            }
            got
        })
    }
}

impl WorkloadApi {
    async fn fetch_once(&self, audience: String) -> Result<(Svid, Duration), String> {
        {
            let client = self.client().await?;
            self.fetches.fetch_add(1, Ordering::Relaxed);
            let call = client.fetch_jwt_svid([audience.as_str()], self.id.as_ref());
            let svid = match tokio::time::timeout(self.timeout, call).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) if is_permission_denied(&e) => {
                    // An answer, not a transport failure: the channel is fine.
                    return Err(format!(
                        "Workload API FetchJWTSVID(audience={audience}): PermissionDenied: this process was not attested to {} (no registration entry matches Lanyard's selectors, e.g. unix:uid:{})",
                        self.id
                            .as_ref()
                            .map_or_else(|| "any identity".to_owned(), ToString::to_string),
                        nix::unistd::Uid::effective()
                    ));
                }
                Ok(Err(e)) => {
                    // Any transport-level failure may mean the agent restarted:
                    // reconnect next time rather than reuse a dead channel.
                    self.drop_client().await;
                    return Err(format!(
                        "Workload API FetchJWTSVID(audience={audience}): {e}"
                    ));
                }
                Err(_) => {
                    self.drop_client().await;
                    return Err(format!(
                        "Workload API FetchJWTSVID(audience={audience}) timed out"
                    ));
                }
            };
            if let Some(want) = &self.id
                && svid.spiffe_id() != want
            {
                return Err(format!(
                    "Workload API returned a JWT-SVID for {}, not the configured spiffe.id {want}",
                    svid.spiffe_id()
                ));
            }
            let exp = svid.expiry().unix_timestamp();
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let left = u64::try_from(exp.saturating_sub(now)).unwrap_or(0);
            if left == 0 {
                return Err(format!(
                    "Workload API returned an already expired JWT-SVID for {audience}"
                ));
            }
            Ok((
                Svid {
                    token: Secret::new(svid.token()),
                    spiffe_id: svid.spiffe_id().to_string(),
                },
                Duration::from_secs(left),
            ))
        }
    }
}

/// SPIFFE's answer for "this caller has no identity" (gRPC PermissionDenied,
/// which the `spiffe` crate reports as `NoIdentityIssued` or `PermissionDenied`).
fn is_permission_denied(e: &spiffe::WorkloadApiError) -> bool {
    use spiffe::transport::{GrpcStatusCode, TransportError};
    matches!(
        e,
        spiffe::WorkloadApiError::NoIdentityIssued | spiffe::WorkloadApiError::PermissionDenied(_)
    ) || matches!(
        e,
        spiffe::WorkloadApiError::Transport(TransportError::Status(s))
            if s.code() == GrpcStatusCode::PermissionDenied
    )
}

/// JWT-SVIDs by audience.
pub struct Identity {
    fetcher: Arc<dyn SvidFetcher>,
    cache: Arc<Refreshing<String, Svid>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cache", &self.cache)
            .finish()
    }
}

impl Identity {
    /// Caches SVIDs from `fetcher` under `policy`.
    pub fn new(fetcher: Arc<dyn SvidFetcher>, policy: Policy) -> Self {
        Self {
            fetcher,
            cache: Refreshing::new("JWT-SVID", policy),
        }
    }

    /// Counts this identity's cache events in `metrics`.
    pub fn observe(&self, metrics: &crate::ops::metrics::GrantMetrics) {
        self.cache.observe(metrics.cache_events.clone(), "svid");
    }

    /// Drops cached SVIDs whose audience `drop` selects; returns how many.
    pub async fn revoke(&self, drop: impl Fn(&str) -> bool) -> usize {
        self.cache.invalidate_if(|aud: &String| drop(aud)).await
    }

    /// A valid SVID for `audience`.
    pub async fn svid(&self, audience: &str) -> Result<Arc<Fresh<Svid>>, CacheError> {
        let fetcher = self.fetcher.clone();
        let aud = audience.to_owned();
        self.cache
            .get(&aud.clone(), move || {
                let (fetcher, aud) = (fetcher.clone(), aud.clone());
                async move { fetcher.fetch(&aud).await }
            })
            .await
    }
}
