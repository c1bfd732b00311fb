//! Accept phase: the listener, per-connection tasks and their limits, the
//! front-end HTTP/1.1 server that dispatches CONNECT and absolute-form
//! requests, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

use crate::observe::{OpenGuard, Record};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::Shared;
use crate::config::LimitsConfig;
use crate::error::ProxyError;
use crate::inject;
use crate::intercept;
use crate::io::{DrainWatch, IdleIo};
use crate::matcher::ConnectPlan;
use crate::parse::Target;
use crate::plain;
use crate::relay::{self, Purpose, ResBody, Sender};

/// The HTTP/1.1 server settings shared by the front end and intercepted tunnels.
pub(crate) fn http1_server(limits: &LimitsConfig) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    b
}

/// Accepts until `shutdown` resolves, then drains.
pub(crate) async fn serve(
    live: crate::Live,
    listener: TcpListener,
    transparent: Vec<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> usize {
    // Connections redirected here, and the addresses that mean "Lanyard
    // itself" to the loop check.
    let own: Arc<Vec<SocketAddr>> = Arc::new(
        std::iter::once(&listener)
            .chain(&transparent)
            .filter_map(|l| l.local_addr().ok())
            .collect(),
    );
    let first = crate::current(&live);
    let permits = Arc::new(Semaphore::new(first.settings.config.limits.max_connections));
    let (drain, telemetry) = (first.drain.clone(), first.telemetry.clone());
    drop(first);
    tokio::pin!(shutdown);
    loop {
        // Backpressure: past max_connections, new clients wait in the kernel's
        // accept queue instead of costing memory here.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => break,
        };
        let (accepted, redirected) = tokio::select! {
            r = listener.accept() => (r, false),
            r = accept_any(&transparent) => (r, true),
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // The config generation current now is the one this connection keeps.
        let conn_shared = crate::current(&live);
        let held = Held {
            _permit: permit,
            _open: telemetry.connection(if redirected {
                "transparent"
            } else {
                "explicit"
            }),
        };
        if redirected {
            let span = info_span!("transparent", %peer);
            let own = own.clone();
            drain.spawn(move |watch| {
                crate::transparent::serve(conn_shared, stream, held, watch, own).instrument(span)
            });
        } else {
            let span = info_span!("conn", %peer);
            drain.spawn(move |watch| {
                serve_conn(conn_shared, stream, peer, held, watch).instrument(span)
            });
        }
    }
    drop(listener);
    drop(transparent);
    info!("shutting down: draining connections");
    let deadline = crate::current(&live).settings.config.limits.drain_timeout;
    let left = drain.shutdown(deadline).await;
    if left > 0 {
        warn!(connections = left, "drain deadline passed; connections cut");
    }
    left
}

/// A transparently redirected origin-form request in the absolute form the
/// plain path takes: `http://` + its Host (with the dialled port when the
/// Host names none) + its path.
fn absolute_from_host(
    mut req: Request<Incoming>,
    port: u16,
) -> Result<Request<Incoming>, ProxyError> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| ProxyError::BadRequest("a redirected request needs a Host header".into()))?;
    let target = Target::parse_authority(host, Some(port))
        .map_err(|e| ProxyError::BadRequest(format!("Host header: {e}")))?;
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri: http::Uri = format!("http://{target}{pq}")
        .parse()
        .map_err(|e| ProxyError::BadRequest(format!("cannot form the request target: {e}")))?;
    *req.uri_mut() = uri;
    Ok(req)
}

/// The next connection on any of `listeners` (never, when there are none).
async fn accept_any(
    listeners: &[TcpListener],
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    if listeners.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for l in listeners {
            if let std::task::Poll::Ready(r) = l.poll_accept(cx) {
                return std::task::Poll::Ready(r);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// A client connection's place under `limits.max_connections`, held by
/// everything that still carries its bytes (the connection, a CONNECT tunnel,
/// an interception, a spliced upgrade).
pub(crate) type ConnPermit = Arc<Held>;

/// A connection's place under `max_connections` and in the open-connection gauge.
pub(crate) struct Held {
    _permit: OwnedSemaphorePermit,
    _open: OpenGuard,
}

/// Per-client-connection state of the front end.
pub(crate) struct Front {
    shared: Arc<Shared>,
    /// Shared with tunnels and upgrades spawned from this connection, so they
    /// keep counting against max_connections after the HTTP layer hands them off.
    pub(crate) permit: ConnPermit,
    /// Upstream for plain `http://` forwarding, reused while the client keeps
    /// asking for the same destination.
    pub(crate) plain: Mutex<Option<(Target, SocketAddr, Sender)>>,
    /// A transparently redirected plain-HTTP connection: its origin-form
    /// requests name their host in `Host`; this is the port the agent dialled.
    transparent_port: Option<u16>,
}

async fn serve_conn(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: Held,
    watch: DrainWatch,
) {
    serve_http1(shared, stream, peer, Arc::new(permit), watch, None).await;
}

/// The HTTP/1.1 front end on one client connection: explicit-proxy requests,
/// or (with `transparent_port`) a redirected plain-HTTP connection.
pub(crate) async fn serve_http1(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: ConnPermit,
    mut watch: DrainWatch,
    transparent_port: Option<u16>,
) {
    let limits = &shared.settings.config.limits;
    let io = TokioIo::new(IdleIo::new(stream, limits.idle_timeout));
    let front = Arc::new(Front {
        shared: shared.clone(),
        permit,
        plain: Mutex::new(None),
        transparent_port,
    });
    let svc = service_fn(move |req| {
        let f = front.clone();
        // Boxed: the request future is several KB, and hyper moves it into a
        // task per request (per stream on HTTP/2); a box makes that a pointer copy.
        Box::pin(async move { Ok::<_, Infallible>(f.handle(req).await) })
    });
    let conn = http1_server(limits)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        () = watch.signalled() => { conn.as_mut().graceful_shutdown(); conn.await }
    };
    if let Err(e) = r {
        debug!(%peer, error = %e, "client connection ended");
    }
}

impl Front {
    async fn handle(&self, req: Request<Incoming>) -> Response<ResBody> {
        if let Err(e) =
            inject::check_head_size(&req, self.shared.settings.config.limits.max_header_bytes)
        {
            info!(status = e.status().as_u16(), error = %e, "request refused");
            return e.to_response().map(Either::Right);
        }
        if req.method() == Method::CONNECT && self.transparent_port.is_some() {
            let e = ProxyError::BadRequest(
                "CONNECT on a redirected connection: the agent already chose its destination"
                    .into(),
            );
            return e.to_response().map(Either::Right);
        }
        if req.method() == Method::CONNECT {
            let dest = req.uri().authority().map_or("-", |a| a.as_str()).to_owned();
            return match self.connect(req).await {
                Ok(r) => r,
                Err(e) => {
                    info!(status = e.status().as_u16(), error = ?e.to_string(), "CONNECT refused");
                    self.shared.telemetry.connection_failed(&e, &dest);
                    e.to_response().map(Either::Right)
                }
            };
        }
        let host = match self.transparent_port {
            Some(_) => req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("-")
                .to_owned(),
            None => req.uri().authority().map_or("-", |a| a.as_str()).to_owned(),
        };
        let mut rec = Record::start(&req, Arc::from(host));
        let result = if req.uri().scheme().is_some() {
            plain::forward(self, req, &mut rec).await
        } else if let Some(port) = self.transparent_port {
            match absolute_from_host(req, port) {
                Ok(req) => plain::forward(self, req, &mut rec).await,
                Err(e) => Err(e),
            }
        } else {
            Err(ProxyError::BadRequest(
                "Lanyard is a forward proxy: send absolute-form requests (http://host/path) or CONNECT host:port".into(),
            ))
        };
        let telemetry = &self.shared.telemetry;
        match result {
            Ok(resp) => {
                telemetry.finish(&rec, Ok(resp.status().as_u16()));
                resp
            }
            Err(e) => {
                telemetry.finish(&rec, Err(&e));
                e.to_response().map(Either::Right)
            }
        }
    }

    async fn connect(&self, req: Request<Incoming>) -> Result<Response<ResBody>, ProxyError> {
        let authority = req.uri().authority().ok_or_else(|| {
            ProxyError::BadRequest("CONNECT needs an authority (host:port)".into())
        })?;
        let target = Target::parse_authority(authority.as_str(), None)
            .map_err(|e| ProxyError::BadRequest(format!("CONNECT authority: {e}")))?;
        let span = info_span!("connect", dest = %target);
        let shared = &self.shared;
        let plan = shared
            .settings
            .connect_plan(&target)
            .map_err(|rule| ProxyError::Denied(format!("CONNECT to {target} denied by {rule}")))?;
        let (purpose, how) = match plan {
            ConnectPlan::Intercept => (Purpose::Endpoint, "intercept"),
            ConnectPlan::Passthrough => (Purpose::Endpoint, "passthrough"),
            ConnectPlan::Inspect => (Purpose::Egress, "inspect"),
            ConnectPlan::Unmatched => (Purpose::Egress, "tunnel"),
        };
        // Dial before answering 200, so an unreachable destination is a 502 on
        // the CONNECT itself and no byte of the tunnel is relayed. An
        // interception whose destination has a warm upstream pool needs no
        // dial: the pool has just reached it.
        let warm = match plan {
            ConnectPlan::Intercept | ConnectPlan::Inspect => shared.pools.warm(&target),
            _ => None,
        };
        let dialed = match warm {
            Some(addr) => {
                info!(parent: &span, mode = how, %addr, pooled = true, "CONNECT");
                None
            }
            None => {
                let d = relay::dial(shared, &target, purpose)
                    .instrument(span.clone())
                    .await?;
                info!(parent: &span, mode = how, addr = %d.addr, "CONNECT");
                Some(d)
            }
        };
        shared.telemetry.tunnel_opened(plan.label());
        let on_upgrade = hyper::upgrade::on(req);
        let task_shared = shared.clone();
        let permit = self.permit.clone();
        shared.drain.spawn(move |watch| {
            async move {
                let client = match on_upgrade.await {
                    Ok(u) => u,
                    Err(e) => return debug!(error = %e, "CONNECT upgrade failed"),
                };
                match (plan, dialed) {
                    (ConnectPlan::Intercept | ConnectPlan::Inspect, dialed) => {
                        intercept::run(
                            task_shared,
                            TokioIo::new(client),
                            target,
                            dialed,
                            watch,
                            permit,
                        )
                        .await;
                    }
                    (_, Some(dialed)) => {
                        let _permit = permit;
                        relay::blind(&task_shared, TokioIo::new(client), dialed.stream).await;
                    }
                    (_, None) => debug!("no connection to relay to"),
                }
            }
            .instrument(span)
        });
        Response::builder()
            .status(StatusCode::OK)
            .body(Either::Right(Full::new(Bytes::new())))
            .map_err(|e| ProxyError::Internal(e.to_string()))
    }
}

impl Front {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}
