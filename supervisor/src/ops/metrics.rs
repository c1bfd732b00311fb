//! The control plane's metrics: grant exchanges, the SVID and token caches,
//! the Workload API, reloads and revocations. Provider names are label
//! values only because config validation keeps them to `[A-Za-z0-9._-]`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::cache::CacheEvents;

/// `lanyard_grant_exchanges_total` labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExchangeLabels {
    /// The provider's name from config.
    pub provider: String,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels keyed by one provider.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    /// The provider's name from config.
    pub provider: String,
}

/// Labels keyed by one fixed word.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok`/`error`, `applied`/`rejected`, or a revocation scope.
    pub result: &'static str,
}

/// Exchange latency buckets, seconds: 5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The control plane's families. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GrantMetrics {
    /// Exchanges at token endpoints by provider and result.
    pub exchanges: Family<ExchangeLabels, Counter>,
    /// Exchange latency by provider.
    pub exchange_seconds: Family<ProviderLabel, Histogram, fn() -> Histogram>,
    /// Cache events (`cache` = `token` or `svid`).
    pub cache_events: CacheEvents,
    /// FetchJWTSVID calls by result.
    pub workload_api_fetches: Family<ResultLabel, Counter>,
    /// Connections to the Workload API after the first (the agent restarted
    /// or the socket moved).
    pub workload_api_reconnects: Counter,
    /// Config reloads by result (`applied`, `rejected`).
    pub reloads: Family<ResultLabel, Counter>,
    /// Revocations by scope (`all`, `provider`, `endpoint`).
    pub revocations: Family<ResultLabel, Counter>,
}

impl Default for GrantMetrics {
    fn default() -> Self {
        Self {
            exchanges: Family::default(),
            exchange_seconds: Family::new_with_constructor(latency),
            cache_events: CacheEvents::default(),
            workload_api_fetches: Family::default(),
            workload_api_reconnects: Counter::default(),
            reloads: Family::default(),
            revocations: Family::default(),
        }
    }
}

impl GrantMetrics {
    /// Registers every family under `r`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "grant_exchanges",
            "Token endpoint exchanges by provider and result",
            self.exchanges.clone(),
        );
        r.register(
            "grant_exchange_duration_seconds",
            "Token endpoint exchange latency by provider",
            self.exchange_seconds.clone(),
        );
        r.register(
            "cache_events",
            "SVID and token cache hits, misses, refreshes ahead of expiry, expiries and fail-fast backoffs",
            self.cache_events.clone(),
        );
        r.register(
            "workload_api_fetches",
            "FetchJWTSVID calls to the Workload API by result",
            self.workload_api_fetches.clone(),
        );
        r.register(
            "workload_api_reconnects",
            "Connections to the Workload API after the first",
            self.workload_api_reconnects.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads by result",
            self.reloads.clone(),
        );
        r.register(
            "revocations",
            "Revocations through the admin listener by scope",
            self.revocations.clone(),
        );
    }

    /// Counts `result` in a single-label family.
    pub fn inc(family: &Family<ResultLabel, Counter>, result: &'static str) {
        family.get_or_create(&ResultLabel { result }).inc();
    }
}

/// What the control plane reports to: its own metrics and the data plane's
/// telemetry (audit trail, SPIFFE ID).
#[derive(Debug, Clone, Default)]
pub struct Observe {
    /// Control-plane metrics.
    pub metrics: GrantMetrics,
    /// Audit trail and identity, shared with the proxy.
    pub telemetry: Arc<lanyard_proxy::Telemetry>,
}
