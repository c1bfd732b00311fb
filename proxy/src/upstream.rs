//! The upstream side of an intercepted tunnel: hyper-util's pooled client
//! behind a connector that can reach one destination only.
//!
//! The first connection is the one dialled (and TLS-verified) before the
//! agent got its `200` to CONNECT, so an unreachable or unverifiable upstream
//! is still reported on the CONNECT itself. After that the pool re-dials on
//! demand, whenever the upstream closed a connection (idle close, restart,
//! GOAWAY): requests that were never sent are retried by the client, HTTP/2
//! connections are kept alive with pings, HTTP/1.1 connections are pooled so
//! an HTTP/2 agent's streams are not serialised onto one of them, and a
//! failing upstream is re-dialled no sooner than a capped backoff allows.
//!
//! The connector dials `target` through [`relay::dial`] (Lanyard's own
//! resolution, `resolve:` pins first) whatever the request URI says, and
//! verifies TLS for `target`'s name: the URI only selects the pool.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
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
/// Idle upstream connections kept per tunnel.
const MAX_IDLE: usize = 8;
/// Re-dial backoff after consecutive failures: doubles from the first step
/// up to the cap.
const REDIAL_FIRST: Duration = Duration::from_millis(100);
const REDIAL_MAX: Duration = Duration::from_secs(5);

/// The pooled upstream of one intercepted tunnel.
pub(crate) struct Upstream {
    client: Client<Connector, Incoming>,
    client_connector: Arc<ConnectorInner>,
    /// The first connection negotiated HTTP/2 (every later one is asked for the same).
    pub(crate) h2: bool,
}

impl Upstream {
    /// A pool whose first connection is `first` (or whose first attempt
    /// failed with that error, to be retried on demand).
    pub(crate) fn new(shared: Arc<Shared>, target: Target, first: Result<Tls, ProxyError>) -> Self {
        let h2 = matches!(&first, Ok(t) if relay::negotiated_h2(t));
        // Later dials offer only what the first negotiated, so request
        // shaping (HTTP/2 or HTTP/1.1 with Host) stays right.
        let tls = if h2 {
            shared.upstream_tls.h2_only()
        } else {
            shared.upstream_tls.h1_only()
        };
        let limits = &shared.settings.config.limits;
        // Connection tasks log inside the tunnel's span (peer, destination).
        let mut b = Client::builder(crate::io::SpanExecutor(tracing::Span::current()));
        b.timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(limits.idle_timeout)
            .pool_max_idle_per_host(MAX_IDLE)
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
        let (first, failure) = match first {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e)),
        };
        let inner = Arc::new(ConnectorInner {
            shared,
            target,
            tls,
            state: Mutex::new(DialState {
                first,
                failures: u32::from(failure.is_some()),
                retry_at: failure.as_ref().map(|_| Instant::now() + REDIAL_FIRST),
                last: failure,
            }),
        });
        Self {
            client: b.build(Connector {
                inner: inner.clone(),
            }),
            client_connector: inner,
            h2,
        }
    }

    /// The last dial error while re-dialling is backing off: requests fail
    /// with it at once, before any credential is fetched for them.
    pub(crate) fn failing(&self) -> Option<ProxyError> {
        let st = self.client_connector.lock();
        match (&st.first, st.retry_at, &st.last) {
            (None, Some(at), Some(last)) if Instant::now() < at => Some(last.clone()),
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

struct DialState {
    /// The connection made before the CONNECT was answered, handed out first.
    first: Option<Tls>,
    failures: u32,
    retry_at: Option<Instant>,
    last: Option<ProxyError>,
}

struct ConnectorInner {
    shared: Arc<Shared>,
    target: Target,
    tls: Arc<rustls::ClientConfig>,
    state: Mutex<DialState>,
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

    async fn connect(self: Arc<Self>) -> Result<Conn, ProxyError> {
        {
            let mut st = self.lock();
            if let Some(t) = st.first.take() {
                return Ok(Conn(TokioIo::new(t)));
            }
            if let (Some(at), Some(last)) = (st.retry_at, &st.last)
                && Instant::now() < at
            {
                return Err(last.clone());
            }
        }
        let result = async {
            let dialed = relay::dial(&self.shared, &self.target, Purpose::Endpoint).await?;
            relay::tls_connect(&self.shared, dialed.stream, &self.target, self.tls.clone()).await
        }
        .await;
        let mut st = self.lock();
        match result {
            Ok(t) => {
                st.failures = 0;
                st.retry_at = None;
                st.last = None;
                Ok(Conn(TokioIo::new(t)))
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let step = REDIAL_FIRST
                    .saturating_mul(1 << st.failures.saturating_sub(1).min(10))
                    .min(REDIAL_MAX);
                st.retry_at = Some(Instant::now() + step);
                st.last = Some(e.clone());
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

/// One pooled connection; reports the ALPN outcome to the pool.
pub(crate) struct Conn(TokioIo<Tls>);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if relay::negotiated_h2(self.0.inner()) {
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
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}
