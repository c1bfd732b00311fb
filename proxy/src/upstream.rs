//! The upstream side of intercepted tunnels: one hyper-util pooled client
//! per destination (and ALPN class), shared by every tunnel to it under one
//! config generation, behind a connector that can reach that destination only.
//!
//! Sharing is what lets a new agent connection reuse a warm upstream
//! connection instead of paying a second TLS handshake, and what keeps an
//! idle agent connection from pinning an upstream connection of its own.
//! All tunnels belong to one sandbox, and every request is shaped and
//! credentialed on its own, so nothing of one tunnel leaks into another
//! through a shared connection.
//!
//! A pool with a live connection is *warm*: a CONNECT to its destination is
//! answered without a dial. Otherwise the connection dialled (and
//! TLS-verified) before the CONNECT was answered seeds the pool, so an
//! unreachable or unverifiable upstream is still reported on the CONNECT
//! itself. After that the pool re-dials on demand, whenever the upstream
//! closed a connection (idle close, restart, GOAWAY): requests that were
//! never sent are retried by the client, HTTP/2 connections are kept alive
//! with pings, HTTP/1.1 connections are pooled so an HTTP/2 agent's streams
//! are not serialised onto one of them, and a failing upstream is re-dialled
//! no sooner than a capped backoff allows.
//!
//! The connector dials `target` through [`relay::dial`] (Lanyard's own
//! resolution, `resolve:` pins first) whatever the request URI says, and
//! verifies TLS for `target`'s name: the URI only selects the pool.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::Shared;
use crate::error::ProxyError;
use crate::io::IdleIo;
use crate::parse::Target;
use crate::relay::{self, Purpose};

/// A verified TLS connection to the tunnel's destination.
pub(crate) type Tls = TlsStream<IdleIo<TcpStream>>;

/// Interval of HTTP/2 keep-alive pings to an idle upstream connection, and
/// how long a ping may go unanswered before the connection is dropped.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Destinations with pools of their own per config generation. A full map
/// first forgets destinations whose pools no tunnel uses and no connection
/// keeps alive; a tunnel that still finds no room gets a pool of its own,
/// as before sharing.
pub(crate) const MAX_POOLS: usize = 256;
/// Connections dialled for CONNECTs while another tunnel seeded the same
/// pool are handed to the pool, at most this many at a time, and closed if
/// they wait this long unused: nothing polls a seed, so nothing else would
/// notice it idle.
const MAX_SEEDS: usize = 8;
const SEED_MAX_AGE: Duration = Duration::from_secs(10);
/// Idle upstream connections are closed after this long, or after
/// `limits.idle_timeout` if that is shorter (90 s, as Go's `http.Transport`
/// does, so a pool does not hold sockets for a burst long past it).
const POOL_IDLE_MAX: Duration = Duration::from_secs(90);
/// Re-dial backoff after consecutive failures: doubles from the first step
/// up to the cap.
const REDIAL_FIRST: Duration = Duration::from_millis(100);
const REDIAL_MAX: Duration = Duration::from_secs(5);

/// A destination's pools, one per ALPN class of the agents using it: what
/// the upstream chose for the first offer holds for a pool's life, and an
/// agent that offers no HTTP/2 must not get a pool that speaks only HTTP/2.
#[derive(Default)]
struct Classes {
    /// For agents that offered h2.
    h2: Option<Arc<Upstream>>,
    /// For agents that did not.
    h1: Option<Arc<Upstream>>,
}

impl Classes {
    fn slot(&mut self, offers_h2: bool) -> &mut Option<Arc<Upstream>> {
        if offers_h2 {
            &mut self.h2
        } else {
            &mut self.h1
        }
    }

    /// Nothing uses either pool: no tunnel holds it, no connection keeps it alive.
    fn idle(&self) -> bool {
        [&self.h2, &self.h1]
            .into_iter()
            .flatten()
            .all(|u| Arc::strong_count(u) == 1 && u.inner.live.load(Ordering::Relaxed) == 0)
    }
}

/// The upstream pools of one config generation, by destination (looked up
/// by reference: a CONNECT clones nothing to find its pool).
#[derive(Default)]
pub(crate) struct Pools {
    map: Mutex<HashMap<Target, Classes>>,
}

impl Pools {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Target, Classes>> {
        match self.map.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The address of a warm pool to `target`, whatever the ALPN class: a
    /// CONNECT there needs no dial of its own.
    pub(crate) fn warm(&self, target: &Target) -> Option<SocketAddr> {
        let map = self.lock();
        let c = map.get(target)?;
        [&c.h2, &c.h1].into_iter().flatten().find_map(|u| u.warm())
    }

    /// The pool a tunnel to `target` uses, given what its agent offered.
    /// `dialed` is the connection made before the CONNECT was answered, if
    /// the destination was cold then; with neither a warm pool nor `dialed`
    /// the destination is dialled now.
    pub(crate) async fn tunnel(
        &self,
        shared: &Arc<Shared>,
        target: &Target,
        offer: &crate::tls::AlpnOffer,
        dialed: Option<relay::Dialed>,
    ) -> (Arc<Upstream>, Option<SocketAddr>) {
        let existing = self
            .lock()
            .get_mut(target)
            .and_then(|c| c.slot(offer.h2).clone());
        if let Some(pool) = &existing
            && let Some(addr) = pool.warm()
        {
            return (pool.clone(), Some(addr));
        }
        let tls = shared.upstream_tls.for_offer(offer);
        let first = match dialed {
            Some(d) => Ok(d),
            None => relay::dial(shared, target, Purpose::of(shared, target)).await,
        };
        let first = match first {
            Ok(d) => relay::tls_connect(shared, d.stream, target, tls)
                .await
                .map(|t| (t, d.addr)),
            Err(e) => Err(e),
        };
        if let Some(pool) = existing {
            let addr = pool.seed(first);
            return (pool, addr);
        }
        let addr = first.as_ref().ok().map(|(_, a)| *a);
        let failed = first.is_err();
        let fresh = Arc::new(Upstream::new(shared, target.clone(), first));
        if failed {
            // A pool seeded by a failure has not learnt the upstream's
            // protocol; it stays this tunnel's own.
            return (fresh, addr);
        }
        let mut map = self.lock();
        if let Some(pool) = map.get_mut(target).and_then(|c| c.slot(offer.h2).clone()) {
            // Another tunnel seeded it meanwhile: this connection joins it.
            drop(map);
            let addr = fresh
                .take_first()
                .map_or(addr, |first| pool.seed(Ok(first)));
            return (pool, addr);
        }
        if map.len() >= MAX_POOLS && !map.contains_key(target) {
            map.retain(|_, c| !c.idle());
        }
        if map.len() < MAX_POOLS || map.contains_key(target) {
            *map.entry(target.clone()).or_default().slot(offer.h2) = Some(fresh.clone());
        }
        (fresh, addr)
    }
}

/// The pooled upstream of the tunnels to one destination.
pub(crate) struct Upstream {
    client: Client<Connector, Incoming>,
    inner: Arc<ConnectorInner>,
    /// The first connection negotiated HTTP/2 (every later one is asked for the same).
    pub(crate) h2: bool,
}

impl Upstream {
    /// A pool whose first connection is `first` (or whose first attempt
    /// failed with that error, to be retried on demand).
    fn new(
        shared: &Arc<Shared>,
        target: Target,
        first: Result<(Tls, SocketAddr), ProxyError>,
    ) -> Self {
        let h2 = matches!(&first, Ok((t, _)) if relay::negotiated_h2(t));
        // Later dials offer only what the first negotiated, so request
        // shaping (HTTP/2 or HTTP/1.1 with Host) stays right.
        let tls = if h2 {
            shared.upstream_tls.h2_only()
        } else {
            shared.upstream_tls.h1_only()
        };
        let limits = &shared.settings.config.limits;
        // Connection tasks outlive the tunnel that dialled them: they log in
        // a span of the destination's own.
        let span = tracing::info_span!("upstream", dest = %target);
        let mut b = Client::builder(crate::io::SpanExecutor(span));
        b.timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(limits.idle_timeout.min(POOL_IDLE_MAX))
            // As many idle connections as there can be client connections:
            // a smaller cap makes a busy agent's HTTP/1.1 connections churn (a
            // response returns its connection to a full pool, which closes
            // it; the next request dials again), a TLS handshake per request.
            // The idle timeout reaps what a burst leaves.
            .pool_max_idle_per_host(limits.max_connections)
            .retry_canceled_requests(true)
            .set_host(false)
            .http1_max_buf_size(limits.max_header_bytes)
            .http2_only(h2)
            .http2_max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .http2_max_concurrent_reset_streams(crate::io::h2::MAX_PENDING_RESETS)
            .http2_initial_stream_window_size(crate::io::h2::STREAM_WINDOW)
            .http2_initial_connection_window_size(crate::io::h2::CONN_WINDOW)
            .http2_max_send_buf_size(crate::io::h2::MAX_SEND_BUF)
            .http2_keep_alive_interval(H2_PING_INTERVAL)
            .http2_keep_alive_timeout(H2_PING_TIMEOUT)
            .http2_keep_alive_while_idle(true);
        let mut st = DialState::default();
        let seeded = first.is_ok();
        match first {
            Ok((t, addr)) => {
                st.seeds.push((t, Instant::now()));
                st.addr = Some(addr);
            }
            Err(e) => {
                st.failed(e);
            }
        }
        // The connector holds the generation weakly: the generation holds
        // the pool, and a reload must be able to free both.
        let inner = Arc::new(ConnectorInner {
            shared: Arc::downgrade(shared),
            target,
            tls,
            state: Mutex::new(st),
            live: Arc::new(AtomicUsize::new(0)),
            gauge: shared.telemetry.metrics.upstream_connections.clone(),
        });
        if seeded {
            inner.expire_seeds_later();
        }
        Self {
            client: b.build(Connector {
                inner: inner.clone(),
            }),
            inner,
            h2,
        }
    }

    /// The last address dialled, when a connection is open and no re-dial
    /// is backing off.
    fn warm(&self) -> Option<SocketAddr> {
        let st = self.inner.lock();
        let open = self.inner.live.load(Ordering::Relaxed) > 0 || !st.seeds.is_empty();
        (open && st.retry_at.is_none()).then_some(st.addr).flatten()
    }

    fn take_first(&self) -> Option<(Tls, SocketAddr)> {
        let mut st = self.inner.lock();
        let addr = st.addr?;
        st.seeds.pop().map(|(t, _)| (t, addr))
    }

    /// Hands a connection dialled for a CONNECT to the pool (or records why
    /// there is none); returns the address the tunnel is reported against.
    fn seed(&self, first: Result<(Tls, SocketAddr), ProxyError>) -> Option<SocketAddr> {
        let mut st = self.inner.lock();
        match first {
            // A connection of the other protocol would mis-shape requests.
            Ok((t, addr)) if relay::negotiated_h2(&t) == self.h2 => {
                if st.seeds.len() < MAX_SEEDS {
                    st.seeds.push((t, Instant::now()));
                    self.inner.expire_seeds_later();
                }
                st.succeeded(addr);
                Some(addr)
            }
            Ok((_, addr)) => Some(addr),
            Err(e) => {
                st.failed(e);
                st.addr
            }
        }
    }

    /// The last dial error while re-dialling is backing off: requests fail
    /// with it at once, before any credential is fetched for them.
    pub(crate) fn failing(&self) -> Option<ProxyError> {
        let st = self.inner.lock();
        match (st.seeds.is_empty(), st.retry_at, &st.last) {
            (true, Some(at), Some(last)) if Instant::now() < at => Some(last.clone()),
            _ => None,
        }
    }

    /// Sends `req` (absolute URI) and waits for the response head.
    pub(crate) async fn send(
        &self,
        shared: &Shared,
        dest: &Target,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let limit = shared.settings.config.limits.response_header_timeout;
        match tokio::time::timeout(limit, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(dest, &e)),
            Err(_) => Err(ProxyError::UpstreamTimeout {
                dest: dest.to_string(),
                phase: "response headers",
                after_ms: limit.as_millis(),
            }),
        }
    }
}

/// Maps a pooled-client error to the side that failed: the connector's own
/// error as it was; a failing request body is the agent's (400); anything
/// else the upstream's.
fn classify(dest: &Target, e: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(p) = s.downcast_ref::<ProxyError>() {
            return p.clone();
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && h.is_user()
        {
            return relay::classify_send_error(dest, h);
        }
        source = s.source();
    }
    let detail = std::error::Error::source(e).map_or_else(String::new, |s| format!(": {s}"));
    ProxyError::Upstream {
        dest: dest.to_string(),
        reason: format!("{e}{detail}"),
    }
}

#[derive(Default)]
struct DialState {
    /// Connections made for CONNECTs, handed out before any re-dial.
    seeds: Vec<(Tls, Instant)>,
    /// The address of the last successful dial.
    addr: Option<SocketAddr>,
    failures: u32,
    retry_at: Option<Instant>,
    last: Option<ProxyError>,
}

impl DialState {
    fn succeeded(&mut self, addr: SocketAddr) {
        self.addr = Some(addr);
        self.failures = 0;
        self.retry_at = None;
        self.last = None;
    }

    /// Records a failed dial; returns the backoff before the next one.
    fn failed(&mut self, e: ProxyError) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let step = REDIAL_FIRST
            .saturating_mul(1 << self.failures.saturating_sub(1).min(10))
            .min(REDIAL_MAX);
        self.retry_at = Some(Instant::now() + step);
        self.last = Some(e);
        step
    }
}

struct ConnectorInner {
    shared: Weak<Shared>,
    target: Target,
    tls: Arc<rustls::ClientConfig>,
    state: Mutex<DialState>,
    /// Open connections of this pool (seeds not counted).
    live: Arc<AtomicUsize>,
    /// The same, summed over every pool, for `/metrics`.
    gauge: prometheus_client::metrics::gauge::Gauge,
}

/// Dials the tunnel's destination, whatever URI it is asked for.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: Arc<ConnectorInner>,
}

impl ConnectorInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, DialState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Closes seeds nobody took once they are too old to trust.
    fn expire_seeds_later(self: &Arc<Self>) {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(SEED_MAX_AGE).await;
            if let Some(pool) = pool.upgrade() {
                pool.lock()
                    .seeds
                    .retain(|(_, at)| at.elapsed() < SEED_MAX_AGE);
            }
        });
    }

    async fn connect(self: Arc<Self>) -> Result<Conn, ProxyError> {
        {
            let mut st = self.lock();
            while let Some((t, at)) = st.seeds.pop() {
                if at.elapsed() < SEED_MAX_AGE {
                    return Ok(Conn::new(t, &self));
                }
            }
            if let (Some(at), Some(last)) = (st.retry_at, &st.last)
                && Instant::now() < at
            {
                return Err(last.clone());
            }
        }
        let Some(shared) = self.shared.upgrade() else {
            // Only reachable once every tunnel of the generation has ended.
            return Err(ProxyError::Internal("the config generation ended".into()));
        };
        let result = async {
            let dialed =
                relay::dial(&shared, &self.target, Purpose::of(&shared, &self.target)).await?;
            let addr = dialed.addr;
            relay::tls_connect(&shared, dialed.stream, &self.target, self.tls.clone())
                .await
                .map(|t| (t, addr))
        }
        .await;
        let mut st = self.lock();
        match result {
            Ok((t, addr)) => {
                st.succeeded(addr);
                Ok(Conn::new(t, &self))
            }
            Err(e) => {
                let step = st.failed(e.clone());
                tracing::info!(error = %e, retry_in_ms = step.as_millis(), "upstream re-dial failed");
                Err(e)
            }
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        Box::pin(self.inner.clone().connect())
    }
}

/// One pooled connection; reports the ALPN outcome to the pool and counts
/// itself among the pool's open connections while it lives.
pub(crate) struct Conn {
    io: TokioIo<Tls>,
    _live: LiveGuard,
}

impl Conn {
    fn new(t: Tls, pool: &ConnectorInner) -> Self {
        pool.live.fetch_add(1, Ordering::Relaxed);
        pool.gauge.inc();
        Self {
            io: TokioIo::new(t),
            _live: LiveGuard {
                pool: pool.live.clone(),
                gauge: pool.gauge.clone(),
            },
        }
    }
}

struct LiveGuard {
    pool: Arc<AtomicUsize>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.pool.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if relay::negotiated_h2(self.io.inner()) {
            c.negotiated_h2()
        } else {
            c
        }
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
