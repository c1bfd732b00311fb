//! Intercept phase: terminate the agent's TLS inside a CONNECT tunnel with a
//! sandbox-CA leaf for the CONNECT authority, open verified TLS to the real
//! upstream with the agent's own ALPN offer, and serve the agent's requests
//! (HTTP/1.1 or HTTP/2, whichever it chose) over that pair.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::time::timeout;
use tokio_rustls::LazyConfigAcceptor;
use tracing::{debug, info, warn};

use crate::Shared;
use crate::accept::ConnPermit;
use crate::error::ProxyError;
use crate::inject::{self, Scheme, Shape};
use crate::io::DrainWatch;
use crate::observe::Record;
use crate::parse::Target;
use crate::relay::{self, Dialed, Origin, ResBody};
use crate::tls::{AlpnOffer, H1, H2};
use crate::upstream::Upstream;

/// One intercepted tunnel.
struct Tunnel {
    shared: Arc<Shared>,
    target: Target,
    /// Set when SNI disagrees with the CONNECT authority: every request is refused.
    sni_problem: Option<String>,
    client_h2: bool,
    /// The destination's pooled upstream, or why it cannot be reached
    /// (answered as 502/504).
    upstream: Arc<Upstream>,
    /// Held by upgrades spliced out of this interception too.
    permit: ConnPermit,
    /// The address of the upstream when the tunnel started, if one answered.
    addr: Option<std::net::SocketAddr>,
    /// `target` as text, for every request's record (formatted once per tunnel).
    dest: Arc<str>,
}

/// Runs an interception on `client` (the upgraded CONNECT stream, or a
/// transparently redirected connection) towards `target`: through a warm
/// upstream pool, or `dialed` (the TCP connection Lanyard opened to `target`
/// when none was warm).
pub(crate) async fn run<IO>(
    shared: Arc<Shared>,
    client: IO,
    target: Target,
    dialed: Option<Dialed>,
    mut watch: DrainWatch,
    permit: ConnPermit,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let hs = shared.settings.config.limits.tls_handshake_timeout;
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client);
    let metrics = &shared.telemetry.metrics;
    let start = match timeout(hs, acceptor).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            metrics.handshake_failed("client", "no_hello");
            return info!(error = %e, "client sent no usable TLS ClientHello");
        }
        Err(_) => {
            metrics.handshake_failed("client", "timeout");
            return info!("client TLS hello timed out");
        }
    };
    let (sni, offer, any_alpn) = {
        let hello = start.client_hello();
        (
            hello.server_name().map(str::to_owned),
            AlpnOffer::from_hello(&hello),
            hello.alpn().is_some(),
        )
    };

    // The upstream sees the agent's own ALPN offer, so whatever it picks (h2
    // for gRPC) can be offered back to the agent unchanged.
    let (upstream, addr) = shared.pools.tunnel(&shared, &target, &offer, dialed).await;
    let upstream_h2 = upstream.h2;
    let server_alpn: &[&[u8]] = match (any_alpn, upstream_h2, offer.h1, offer.h2) {
        (false, ..) => &[],
        (true, true, _, true) => &[H2],
        (true, _, true, _) => &[H1],
        (true, _, false, true) => &[H2],
        (true, ..) => &[],
    };
    let cert = match shared.certs.get(&target.host).await {
        Ok(c) => c,
        Err(e) => return warn!(error = %e, "cannot mint a leaf certificate"),
    };
    let config = match shared.server_tls.config(cert, server_alpn) {
        Ok(c) => c,
        Err(e) => return warn!(error = %e, "cannot build the client-facing TLS config"),
    };
    let tls = match timeout(hs, start.into_stream(config)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let (reason, hint) = crate::observe::classify_client_tls(&e);
            warn!(error = %e, reason, "client TLS handshake failed: {hint}");
            return metrics.handshake_failed("client", reason);
        }
        Err(_) => {
            metrics.handshake_failed("client", "timeout");
            return info!("client TLS handshake timed out");
        }
    };
    let client_h2 = tls.get_ref().1.alpn_protocol() == Some(H2);

    let sni_problem = crate::inject::sni_problem(sni.as_deref(), &target);
    if let Some(e) = upstream.failing() {
        info!(error = %e, "upstream unusable; requests in this tunnel get 502 until a re-dial succeeds");
    }
    let dest: Arc<str> = Arc::from(target.to_string());
    let tunnel = Arc::new(Tunnel {
        shared: shared.clone(),
        target,
        sni_problem,
        client_h2,
        upstream,
        permit,
        addr,
        dest,
    });
    let svc = service_fn(move |req| {
        let t = tunnel.clone();
        // Boxed: the request future is several KB, and hyper moves it into a
        // task per request (per stream on HTTP/2); a box makes that a pointer copy.
        Box::pin(async move { Ok::<_, Infallible>(t.handle(req).await) })
    });
    let io = TokioIo::new(tls);
    let limits = &shared.settings.config.limits;
    let result = if client_h2 {
        let conn = hyper::server::conn::http2::Builder::new(crate::io::SpanExecutor(
            tracing::Span::current(),
        ))
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(crate::io::h2::MAX_STREAMS)
        .max_send_buf_size(crate::io::h2::MAX_SEND_BUF)
        .initial_stream_window_size(crate::io::h2::STREAM_WINDOW)
        .initial_connection_window_size(crate::io::h2::CONN_WINDOW)
        .max_pending_accept_reset_streams(crate::io::h2::MAX_PENDING_RESETS)
        .serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            () = watch.signalled() => { conn.as_mut().graceful_shutdown(); conn.await }
        }
    } else {
        let conn = crate::accept::http1_server(limits)
            .serve_connection(io, svc)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            () = watch.signalled() => { conn.as_mut().graceful_shutdown(); conn.await }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "intercepted connection ended");
    }
}

impl Tunnel {
    async fn handle(&self, req: Request<Incoming>) -> Response<ResBody> {
        let mut rec = Record::start(&req, self.dest.clone());
        rec.upstream = self.addr;
        match self.relay(req, &mut rec).await {
            Ok(resp) => {
                self.shared
                    .telemetry
                    .finish(&rec, Ok(resp.status().as_u16()));
                resp
            }
            Err(e) => {
                self.shared.telemetry.finish(&rec, Err(&e));
                let mut resp = e.to_response();
                if !self.client_h2 && e.source_side() == crate::ErrorSource::Upstream {
                    // Keep-alive clients would otherwise stay on a tunnel
                    // whose upstream is gone; a new CONNECT dials afresh.
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                resp.map(Either::Right)
            }
        }
    }

    async fn relay(
        &self,
        req: Request<Incoming>,
        rec: &mut Record,
    ) -> Result<Response<ResBody>, ProxyError> {
        if let Some(p) = &self.sni_problem {
            return Err(ProxyError::Misdirected(p.clone()));
        }
        inject::check_head_size(&req, self.shared.settings.config.limits.max_header_bytes)?;
        let mut req = req;
        if let Some(local) = inject::max_forwards(&mut req)? {
            return Ok(local.map(Either::Right));
        }
        let shared = &self.shared;
        // A broken upstream is reported before any credential is fetched.
        if let Some(e) = self.upstream.failing() {
            return Err(e);
        }
        let h2 = self.upstream.h2;
        let shape = Shape {
            scheme: Scheme::Https,
            upstream_h2: h2,
            upgrade_ok: !self.client_h2 && !h2,
            cleartext_to: None,
            absolute: true,
        };
        let p = inject::prepare(shared, &self.target, shape, req, rec).await?;
        let mut resp = relay::forward(
            shared,
            Origin::Pool(&self.upstream),
            &self.target,
            p.req,
            p.upgrade,
            &self.permit,
        )
        .await?;
        inject::scrub_echo(&mut resp, p.credential.as_ref());
        Ok(resp)
    }
}
