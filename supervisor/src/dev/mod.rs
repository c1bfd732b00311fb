//! `lanyard dev workload-api`: a development SPIFFE Workload API server.
//!
//! It serves the JWT half of the Workload API (FetchJWTSVID, FetchJWTBundles,
//! ValidateJWTSVID) on a unix socket, for one SPIFFE ID, signing with a key
//! generated at start. It does no workload attestation: anything that can
//! open the socket gets the identity. Development and tests only; production
//! uses a SPIRE agent.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub mod jwt;
pub mod proto;

/// gRPC status codes used here.
const OK: u8 = 0;
const INVALID_ARGUMENT: u8 = 3;
const PERMISSION_DENIED: u8 = 7;
const UNIMPLEMENTED: u8 = 12;
const INTERNAL: u8 = 13;

/// Counters, for tests and for the operator.
#[derive(Debug, Default)]
pub struct Stats {
    /// FetchJWTSVID calls answered with an SVID.
    pub jwt_svids: AtomicU64,
    /// FetchJWTBundles streams opened.
    pub bundle_streams: AtomicU64,
    /// Calls refused (missing security header, bad request).
    pub refused: AtomicU64,
}

/// The server's identity and key. Clone the `Arc` to restart on the same
/// key after a simulated outage.
#[derive(Debug)]
pub struct DevWorkloadApi {
    signer: jwt::Signer,
    spiffe_id: String,
    trust_domain: String,
    ttl: Duration,
    /// Counters.
    pub stats: Stats,
}

impl DevWorkloadApi {
    /// A server for `spiffe_id` (`spiffe://trust-domain/path`) minting SVIDs valid for `ttl`.
    pub fn new(spiffe_id: &str, ttl: Duration) -> Result<Arc<Self>, String> {
        let id: spiffe::SpiffeId = spiffe_id
            .parse()
            .map_err(|e| format!("'{spiffe_id}' is not a SPIFFE ID: {e}"))?;
        if ttl.is_zero() {
            return Err("ttl must be greater than zero".into());
        }
        Ok(Arc::new(Self {
            signer: jwt::Signer::generate()?,
            trust_domain: id.trust_domain().to_string(),
            spiffe_id: id.to_string(),
            ttl,
            stats: Stats::default(),
        }))
    }

    /// The signing key (to verify SVIDs in tests and demos).
    pub fn signer(&self) -> &jwt::Signer {
        &self.signer
    }

    /// Serves on `socket` until [`Running::stop`]. Only a stale socket (one
    /// nobody answers on) is replaced: a live one, or anything that is not a
    /// socket, is refused rather than removed.
    pub async fn serve(self: &Arc<Self>, socket: &Path) -> std::io::Result<Running> {
        claim_socket_path(socket)?;
        let listener = UnixListener::bind(socket)?;
        {
            // Like a SPIRE agent socket: reachable by any uid; attestation would decide.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o777))?;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let api = self.clone();
        let join = tokio::spawn(accept_loop(api, listener, stop_rx));
        Ok(Running {
            socket: socket.to_owned(),
            stop: stop_tx,
            join,
        })
    }
}

fn claim_socket_path(socket: &Path) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; not removing it",
                socket.display()
            ),
        ));
    }
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => Err(Error::new(
            ErrorKind::AddrInUse,
            format!(
                "a server already answers on {}; not replacing it",
                socket.display()
            ),
        )),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => std::fs::remove_file(socket),
        Err(e) => Err(Error::new(
            e.kind(),
            format!("cannot tell whether {} is stale: {e}", socket.display()),
        )),
    }
}

/// A serving instance.
#[derive(Debug)]
pub struct Running {
    socket: PathBuf,
    stop: watch::Sender<bool>,
    join: tokio::task::JoinHandle<()>,
}

impl Running {
    /// `unix://` URL for `SPIFFE_ENDPOINT_SOCKET`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Stops accepting, cuts open connections and removes the socket file.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.join.await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn accept_loop(
    api: Arc<DevWorkloadApi>,
    listener: UnixListener,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            _ = stop.wait_for(|v| *v) => break,
        };
        while conns.try_join_next().is_some() {}
        let (api, stop) = (api.clone(), stop.clone());
        conns.spawn(async move {
            let svc = service_fn(move |req| {
                let (api, stop) = (api.clone(), stop.clone());
                async move { Ok::<_, Infallible>(handle(&api, req, stop).await) }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
    // An agent that goes away takes its connections with it.
    conns.abort_all();
}

async fn handle(
    api: &DevWorkloadApi,
    req: Request<Incoming>,
    stop: watch::Receiver<bool>,
) -> Response<GrpcBody> {
    let path = req.uri().path().to_owned();
    let secured = req
        .headers()
        .get("workload.spiffe.io")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    if !secured {
        api.stats.refused.fetch_add(1, Ordering::Relaxed);
        return status(INVALID_ARGUMENT, "security header missing from request");
    }
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(INVALID_ARGUMENT, "request body unreadable or too large"),
    };
    let msg = match proto::unframe(&body) {
        Ok(m) => m,
        Err(e) => return status(INVALID_ARGUMENT, &e),
    };
    match path.as_str() {
        "/SpiffeWorkloadAPI/FetchJWTSVID" => {
            let Ok(r) = proto::JwtSvidRequest::decode(msg) else {
                return status(INVALID_ARGUMENT, "malformed JWTSVIDRequest");
            };
            if r.audience.is_empty() || r.audience.iter().any(String::is_empty) {
                api.stats.refused.fetch_add(1, Ordering::Relaxed);
                return status(INVALID_ARGUMENT, "audience must be specified");
            }
            if !r.spiffe_id.is_empty() && r.spiffe_id != api.spiffe_id {
                return status(
                    PERMISSION_DENIED,
                    "no identity issued for the requested SPIFFE ID",
                );
            }
            match api.signer.mint(&api.spiffe_id, &r.audience, api.ttl) {
                Ok(svid) => {
                    api.stats.jwt_svids.fetch_add(1, Ordering::Relaxed);
                    let resp = proto::JwtSvidResponse {
                        svids: vec![proto::JwtSvid {
                            spiffe_id: api.spiffe_id.clone(),
                            svid,
                            hint: String::new(),
                        }],
                    };
                    unary(proto::frame(&resp))
                }
                Err(e) => status(INTERNAL, &e),
            }
        }
        "/SpiffeWorkloadAPI/FetchJWTBundles" => {
            api.stats.bundle_streams.fetch_add(1, Ordering::Relaxed);
            let mut bundles = std::collections::HashMap::new();
            bundles.insert(api.trust_domain.clone(), api.signer.jwks().into_bytes());
            let first = proto::frame(&proto::JwtBundlesResponse { bundles });
            let mut stop = stop;
            grpc_response(GrpcBody {
                data: Some(first),
                wait: Some(Box::pin(async move {
                    let _ = stop.wait_for(|v| *v).await;
                })),
                trailers: Some(trailers(OK, "")),
            })
        }
        "/SpiffeWorkloadAPI/ValidateJWTSVID" => {
            let Ok(r) = proto::ValidateJwtSvidRequest::decode(msg) else {
                return status(INVALID_ARGUMENT, "malformed ValidateJWTSVIDRequest");
            };
            match api.signer.verify(&r.svid, &r.audience) {
                Ok(sub) => unary(proto::frame(&proto::ValidateJwtSvidResponse {
                    spiffe_id: sub,
                })),
                Err(e) => status(INVALID_ARGUMENT, &e),
            }
        }
        _ => status(
            UNIMPLEMENTED,
            "the development Workload API serves JWT-SVIDs only",
        ),
    }
}

fn trailers(code: u8, message: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(i32::from(code)));
    if !message.is_empty()
        && let Ok(v) = HeaderValue::from_str(message)
    {
        t.insert("grpc-message", v);
    }
    t
}

fn grpc_response(body: GrpcBody) -> Response<GrpcBody> {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

fn unary(msg: Bytes) -> Response<GrpcBody> {
    grpc_response(GrpcBody {
        data: Some(msg),
        wait: None,
        trailers: Some(trailers(OK, "")),
    })
}

/// A trailers-only response: the status travels in the headers.
fn status(code: u8, message: &str) -> Response<GrpcBody> {
    let mut r = grpc_response(GrpcBody {
        data: None,
        wait: None,
        trailers: None,
    });
    r.headers_mut().extend(trailers(code, message));
    r
}

/// One message, optionally a wait (a stream held open), then trailers.
pub struct GrpcBody {
    data: Option<Bytes>,
    wait: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(w) = self.wait.as_mut() {
            if w.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.wait.is_none() && self.trailers.is_none()
    }
}
