//! Relay phase: dial the real destination (Lanyard's own resolution, so the
//! address injected into is the one Lanyard chose), verify its TLS, and move
//! requests, responses, upgrades and tunnel bytes between the two sides.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tracing::{Instrument, debug};

use crate::Shared;
use crate::error::ProxyError;
use crate::io::IdleIo;
use crate::matcher::{is_hop_by_hop, is_non_public};
use crate::parse::{Host, Target};
use crate::tls::H2;

/// Body of every response the proxy returns: relayed, or generated.
pub(crate) type ResBody = Either<Incoming, Full<Bytes>>;

/// Why Lanyard is dialing: endpoints are trusted config, egress is policy-checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Endpoint,
    /// An endpoint over plain HTTP without `allow_cleartext`: loopback only,
    /// refused before any connection is attempted.
    CleartextEndpoint(&'static str),
    Egress,
}

impl Purpose {
    /// Why an intercepted tunnel's pool dials `target`: an endpoint's host
    /// is trusted config; a host intercepted only for an egress entry's
    /// statements is egress, private-address checks and all.
    pub(crate) fn of(shared: &Shared, target: &Target) -> Self {
        match shared.settings.router.connect_plan(target) {
            crate::matcher::ConnectPlan::Unmatched | crate::matcher::ConnectPlan::Inspect => {
                Purpose::Egress
            }
            _ => Purpose::Endpoint,
        }
    }
}

/// A connected upstream socket.
pub(crate) struct Dialed {
    pub(crate) stream: IdleIo<TcpStream>,
    pub(crate) addr: SocketAddr,
}

/// Resolves (pinned names first) and connects, trying each address in turn.
pub(crate) async fn dial(
    shared: &Shared,
    target: &Target,
    purpose: Purpose,
) -> Result<Dialed, ProxyError> {
    let limits = &shared.settings.config.limits;
    let dest = target.to_string();
    // DNS and every connection attempt share this one deadline.
    let deadline = tokio::time::Instant::now() + limits.connect_timeout;
    let resolved = crate::resolve::resolve(
        &shared.settings.resolve,
        &target.host,
        target.port,
        deadline,
    )
    .await
    .map_err(|e| match e {
        crate::resolve::ResolveError::Timeout => ProxyError::UpstreamTimeout {
            dest: dest.clone(),
            phase: "dns",
            after_ms: limits.connect_timeout.as_millis(),
        },
        e => ProxyError::Upstream {
            dest: dest.clone(),
            reason: e.to_string(),
        },
    })?;
    let (addrs, pinned) = (resolved.addrs, resolved.pinned);
    let addrs = if purpose == Purpose::Egress
        && !pinned
        && !shared.settings.egress.allow_private_addresses
    {
        let (public, private): (Vec<IpAddr>, Vec<IpAddr>) =
            addrs.into_iter().partition(|ip| !is_non_public(*ip));
        if public.is_empty() && !private.is_empty() {
            let list: Vec<String> = private.iter().map(IpAddr::to_string).collect();
            return Err(ProxyError::Denied(format!(
                "{dest} resolves only to non-public addresses ({}); set egress.allow_private_addresses or pin the name in resolve",
                list.join(", ")
            )));
        }
        public
    } else {
        addrs
    };
    // A deny on an address or block holds for whatever name resolved there.
    let mut denied = None;
    let addrs: Vec<IpAddr> = addrs
        .into_iter()
        .filter(|ip| {
            match shared
                .settings
                .egress
                .denies_address(SocketAddr::new(*ip, target.port))
            {
                Some(rule) => {
                    denied.get_or_insert(rule);
                    false
                }
                None => true,
            }
        })
        .collect();
    if let (true, Some(rule)) = (addrs.is_empty(), denied) {
        return Err(ProxyError::Denied(format!(
            "{dest} resolves to an address denied by {rule}"
        )));
    }
    if let Purpose::CleartextEndpoint(why) = purpose
        && let Some(ip) = addrs.iter().find(|ip| !ip.is_loopback())
    {
        return Err(ProxyError::Denied(format!(
            "{why}: {dest} resolves to {ip}, which is not loopback; use https:// or set allow_cleartext on the endpoint"
        )));
    }
    match crate::resolve::connect(&addrs, target.port, deadline).await {
        Ok((stream, addr)) => {
            // Nagle plus delayed ACK costs ~40 ms per small request/response.
            let _ = stream.set_nodelay(true);
            Ok(Dialed {
                stream: IdleIo::new(stream, limits.idle_timeout),
                addr,
            })
        }
        Err(crate::resolve::ConnectError::Timeout) => Err(ProxyError::UpstreamTimeout {
            dest,
            phase: "connect",
            after_ms: limits.connect_timeout.as_millis(),
        }),
        Err(crate::resolve::ConnectError::Failed(reason)) => {
            Err(ProxyError::Upstream { dest, reason })
        }
    }
}

/// TLS to the upstream, verifying it against the configured roots for the
/// name Lanyard dialed.
pub(crate) async fn tls_connect<IO>(
    shared: &Shared,
    io: IO,
    target: &Target,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<IO>, ProxyError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &shared.settings.config.limits;
    let name = match &target.host {
        Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        Host::Name(n) => ServerName::try_from(n.clone()).map_err(|e| ProxyError::Upstream {
            dest: target.to_string(),
            reason: format!("invalid server name: {e}"),
        })?,
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    let metrics = &shared.telemetry.metrics;
    match timeout(limits.tls_handshake_timeout, connector.connect(name, io)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            let reason = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(rustls::Error::InvalidCertificate(_)) => "bad_certificate",
                _ => "protocol",
            };
            metrics.handshake_failed("upstream", reason);
            Err(ProxyError::Upstream {
                dest: target.to_string(),
                reason: format!("TLS handshake failed: {e}"),
            })
        }
        Err(_) => {
            metrics.handshake_failed("upstream", "timeout");
            Err(ProxyError::UpstreamTimeout {
                dest: target.to_string(),
                phase: "tls handshake",
                after_ms: limits.tls_handshake_timeout.as_millis(),
            })
        }
    }
}

/// Where a request goes: the plain front end's single HTTP/1.1 connection,
/// or an intercepted tunnel's pool.
pub(crate) enum Origin<'a> {
    /// `http://` forwarding.
    Plain(&'a mut Sender),
    /// An intercepted tunnel.
    Pool(&'a crate::upstream::Upstream),
}

/// The size an upstream response head had on the wire (near enough: status
/// line plus `name: value\r\n` per field), bounded like request heads.
fn check_head_size<B>(resp: &Response<B>, limit: usize, dest: &Target) -> Result<(), ProxyError> {
    let size = 16
        + resp
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if size > limit {
        return Err(ProxyError::Upstream {
            dest: dest.to_string(),
            reason: format!(
                "response head of {size} bytes exceeds limits.max_header_bytes ({limit})"
            ),
        });
    }
    Ok(())
}

/// An HTTP/1.1 request sender on one upstream connection (plain forwarding).
pub(crate) struct Sender(http1::SendRequest<Incoming>);

impl Sender {
    /// HTTP/1.1 handshake on an established stream, driving the connection
    /// in a task tied to the current span; response heads are bounded by
    /// `max_header_bytes`.
    pub(crate) async fn handshake<IO>(
        io: IO,
        dest: &Target,
        max_header_bytes: usize,
    ) -> Result<Self, ProxyError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(max_header_bytes.max(8192))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::Upstream {
                dest: dest.to_string(),
                reason: format!("HTTP handshake failed: {e}"),
            })?;
        tokio::spawn(
            async move {
                if let Err(e) = conn.with_upgrades().await {
                    debug!(error = %e, "upstream h1 connection ended");
                }
            }
            .in_current_span(),
        );
        Ok(Sender(sender))
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Sends one request and waits for the response head (bounded by
    /// `response_header_timeout`); bodies then stream without buffering.
    pub(crate) async fn send(
        &mut self,
        shared: &Shared,
        dest: &Target,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let limit = shared.settings.config.limits.response_header_timeout;
        let fail = |e: hyper::Error| classify_send_error(dest, &e);
        let fut = async {
            self.0.ready().await.map_err(fail)?;
            self.0.send_request(req).await.map_err(fail)
        };
        timeout(limit, fut)
            .await
            .map_err(|_| ProxyError::UpstreamTimeout {
                dest: dest.to_string(),
                phase: "response headers",
                after_ms: limit.as_millis(),
            })?
    }
}

/// A request body that fails to arrive (malformed chunking, a client that
/// hung up) is the client's error; anything else the upstream's.
pub(crate) fn classify_send_error(dest: &Target, e: &hyper::Error) -> ProxyError {
    if e.is_user() {
        let cause = std::error::Error::source(e).map_or_else(|| e.to_string(), ToString::to_string);
        return ProxyError::BadRequest(format!("request body: {cause}"));
    }
    ProxyError::Upstream {
        dest: dest.to_string(),
        reason: format!("request failed: {e}"),
    }
}

/// True for an HTTP/1.1 protocol upgrade request (websocket and friends).
pub(crate) fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() <= http::Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers and anything the `Connection` header names.
/// With `keep_upgrade`, `Upgrade` and `Connection: upgrade` survive.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(h)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let upgrade = h.get(header::UPGRADE).cloned();
    let te_trailers = h
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for n in named {
        h.remove(n);
    }
    let hop: Vec<HeaderName> = h.keys().filter(|k| is_hop_by_hop(k)).cloned().collect();
    for n in hop {
        h.remove(n);
    }
    // gRPC needs `te: trailers` end to end; it is the one TE value HTTP/2 allows.
    if te_trailers {
        h.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
    if keep_upgrade && let Some(u) = upgrade {
        h.insert(header::UPGRADE, u);
        h.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
    }
}

/// Sends `req` upstream and prepares the response for the client. For an
/// upgrade answered with 101, splices the two upgraded streams together.
pub(crate) async fn forward(
    shared: &Arc<Shared>,
    origin: Origin<'_>,
    dest: &Target,
    mut req: Request<Incoming>,
    upgrade: bool,
    permit: &crate::accept::ConnPermit,
) -> Result<Response<ResBody>, ProxyError> {
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut resp = match origin {
        Origin::Plain(sender) => sender.send(shared, dest, req).await?,
        Origin::Pool(pool) => pool.send(shared, dest, req).await?,
    };
    check_head_size(&resp, shared.settings.config.limits.max_header_bytes, dest)?;
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let span = tracing::Span::current();
        // The splice is the client connection now: it keeps its place under max_connections.
        let permit = permit.clone();
        shared.drain.spawn(move |_watch| {
            async move {
                let _permit = permit;
                let (c, u) = tokio::join!(client_upgrade, upstream_upgrade);
                match (c, u) {
                    (Ok(c), Ok(u)) => {
                        splice(TokioIo::new(c), TokioIo::new(u)).await;
                    }
                    (c, u) => debug!(
                        client_ok = c.is_ok(),
                        upstream_ok = u.is_ok(),
                        "upgrade abandoned"
                    ),
                }
            }
            .instrument(span)
        });
    } else if switching {
        return Err(ProxyError::Upstream {
            dest: dest.to_string(),
            reason: "answered 101 to a request that did not ask to upgrade".into(),
        });
    }
    strip_hop_by_hop(resp.headers_mut(), switching);
    Ok(resp.map(Either::Left))
}

/// Copies bytes both ways until either side closes. Both sides already sit on
/// [`IdleIo`] sockets, so an idle pair is cut by the idle timeout.
/// Copy buffer per direction of a spliced stream.
const SPLICE_BUF: usize = 64 * 1024;

/// Returns the bytes copied from `a` to `b` and back, as far as known.
pub(crate) async fn splice<A, B>(mut a: A, mut b: B) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    // 64 KiB a direction rather than tokio's 8 KiB: an eighth of the read and
    // write calls on a bulk transfer (bench/run `bulk`), for memory a tunnel
    // holds only while it lives.
    match tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, SPLICE_BUF, SPLICE_BUF).await {
        Ok((up, down)) => {
            debug!(bytes_up = up, bytes_down = down, "tunnel closed");
            (up, down)
        }
        Err(e) => {
            debug!(error = %e, "tunnel ended");
            (0, 0)
        }
    }
}

/// A tunnel Lanyard does not decrypt: spliced, and its bytes counted.
pub(crate) async fn blind<A, B>(shared: &Shared, a: A, b: B)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (up, down) = splice(a, b).await;
    shared.telemetry.tunnel_bytes(up, down);
}

/// Whether an upstream response speaks h2 (for logs and URI shaping).
pub(crate) fn negotiated_h2<IO>(tls: &TlsStream<IO>) -> bool {
    tls.get_ref().1.alpn_protocol() == Some(H2)
}
