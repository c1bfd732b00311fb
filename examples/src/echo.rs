//! An HTTPS (or plain HTTP) upstream that answers with what it received.
//!
//! - any path: `200`, body lines `method`, `path`, `version`, `host`,
//!   `authorization` (one line per value, `-` if none), `x-test` and the
//!   listening upstream's `name`;
//! - `content-type: application/grpc`: echoes the request body back as a
//!   gRPC response with `grpc-status: 0` trailers;
//! - `/stream`: streams the request body straight back;
//! - `.../hold`: answers `200` and then never finishes the body;
//! - `.../bighead`: answers with a 20 KB response header;
//! - `/claims`: the `sub` and `aud` of a bearer JWT, never the token itself
//!   (so a client can see what was injected without learning it);
//! - `/reflect`: like any path, and also hands the request's `authorization`
//!   back in an `x-echo-authorization` response header, as debug endpoints do;
//! - `Upgrade` requests: `101`, then echoes raw bytes on the upgraded stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::pki::Error;

type Body = Either<Either<Full<Bytes>, Incoming>, Either<GrpcBody, Held>>;

/// A response body that never ends (until the connection is dropped): keeps
/// an HTTP/1.1 connection busy, as a long download or a server stream does.
pub struct Held;

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Pending
    }
}

/// One data frame, then trailers: the shape of a unary gRPC response.
pub struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(d))));
        }
        std::task::Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// A running echo upstream.
pub struct Echo {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests it has received (all paths).
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted (TLS handshakes completed, for HTTPS).
    pub connections: Arc<AtomicUsize>,
    kick: Arc<tokio::sync::Notify>,
    refusing: Arc<std::sync::atomic::AtomicBool>,
}

impl Echo {
    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Closes every open connection, as a restart or an idle timeout would.
    pub fn drop_connections(&self) {
        self.kick.notify_waiters();
    }

    /// While set, new connections are closed at once (the upstream is down).
    pub fn set_refusing(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::SeqCst);
    }
}

/// Starts an echo upstream on `bind` (use port 0). With `tls`, serves HTTPS
/// and picks HTTP/2 or HTTP/1.1 by ALPN; without, plain HTTP/1.1.
pub async fn start(
    bind: SocketAddr,
    name: &str,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Echo, Error> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let hits = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let kick = Arc::new(tokio::sync::Notify::new());
    let refusing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let name: Arc<str> = Arc::from(name);
    let acceptor = tls.map(TlsAcceptor::from);
    let (task_hits, task_conns, task_kick, task_refusing) = (
        hits.clone(),
        connections.clone(),
        kick.clone(),
        refusing.clone(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            if task_refusing.load(Ordering::SeqCst) {
                drop(tcp);
                continue;
            }
            let _ = tcp.set_nodelay(true);
            let (hits, name, acceptor) = (task_hits.clone(), name.clone(), acceptor.clone());
            let (conns, kick) = (task_conns.clone(), task_kick.clone());
            tokio::spawn(async move {
                // Registered before serving, so a kick reaches every open connection.
                let kicked = kick.notified();
                tokio::pin!(kicked);
                kicked.as_mut().enable();
                let serve = async move {
                    let svc = service_fn(move |req| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let name = name.clone();
                        async move { Ok::<_, Infallible>(handle(req, &name).await) }
                    });
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            conns.fetch_add(1, Ordering::SeqCst);
                            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                            let io = TokioIo::new(tls);
                            if h2 {
                                let _ =
                                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                        .serve_connection(io, svc)
                                        .await;
                            } else {
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(io, svc)
                                    .with_upgrades()
                                    .await;
                            }
                        }
                        None => {
                            conns.fetch_add(1, Ordering::SeqCst);
                            let io = TokioIo::new(tcp);
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .with_upgrades()
                                .await;
                        }
                    }
                };
                tokio::select! {
                    () = serve => {}
                    () = kicked => {}
                }
            });
        }
    });
    Ok(Echo {
        addr,
        hits,
        connections,
        kick,
        refusing,
    })
}

async fn handle(mut req: Request<Incoming>, name: &str) -> Response<Body> {
    if req.headers().contains_key(header::UPGRADE) {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut resp = Response::new(Either::Left(Either::Left(Full::new(Bytes::new()))));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let up = req
            .headers()
            .get(header::UPGRADE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("websocket"));
        resp.headers_mut().insert(header::UPGRADE, up);
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return resp;
    }
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("ok"));
        let mut resp = Response::new(Either::Right(Either::Left(GrpcBody {
            data: Some(body),
            trailers: Some(trailers),
        })));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        return resp;
    }
    if req.uri().path() == "/claims" {
        return Response::new(Either::Left(Either::Left(Full::new(Bytes::from(claims(
            req.headers(),
        ))))));
    }
    if req.uri().path().ends_with("/bighead") {
        let mut resp = Response::new(Either::Left(Either::Left(Full::new(Bytes::new()))));
        if let Ok(v) = HeaderValue::from_str(&"a".repeat(20_000)) {
            resp.headers_mut().insert("x-big", v);
        }
        return resp;
    }
    if req.uri().path().ends_with("/hold") {
        return Response::new(Either::Right(Either::Right(Held)));
    }
    if req.uri().path() == "/stream" {
        return Response::new(Either::Left(Either::Right(req.into_body())));
    }
    let mut text = String::new();
    text.push_str(&format!("name: {name}\n"));
    text.push_str(&format!("method: {}\n", req.method()));
    text.push_str(&format!(
        "path: {}\n",
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    ));
    text.push_str(&format!("version: {:?}\n", req.version()));
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "-".into());
    text.push_str(&format!("host: {host}\n"));
    let mut any = false;
    for v in req.headers().get_all(header::AUTHORIZATION) {
        any = true;
        text.push_str(&format!(
            "authorization: {}\n",
            v.to_str().unwrap_or("<binary>")
        ));
    }
    if !any {
        text.push_str("authorization: -\n");
    }
    for v in req.headers().get_all("x-test") {
        text.push_str(&format!("x-test: {}\n", v.to_str().unwrap_or("<binary>")));
    }
    for v in req.headers().get_all(header::MAX_FORWARDS) {
        text.push_str(&format!(
            "max-forwards: {}\n",
            v.to_str().unwrap_or("<binary>")
        ));
    }
    let mut resp = Response::new(Either::Left(Either::Left(Full::new(Bytes::from(text)))));
    if req.uri().path().ends_with("/reflect")
        && let Some(a) = req.headers().get(header::AUTHORIZATION)
    {
        resp.headers_mut().insert("x-echo-authorization", a.clone());
    }
    resp
}

fn claims(headers: &HeaderMap) -> String {
    use base64::Engine as _;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return "bearer: none\n".into();
    };
    let payload = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    match payload {
        Some(c) => format!(
            "sub: {}\naud: {}\n",
            c["sub"].as_str().unwrap_or("-"),
            c["aud"]
        ),
        None => "bearer: not a JWT\n".into(),
    }
}
