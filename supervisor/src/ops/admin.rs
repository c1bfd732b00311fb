//! The admin listener: `/metrics`, `/healthz`, `/readyz`,
//! `/debug/endpoints` and `POST /revoke`, on an address of its own that the
//! agent cannot reach (`lanyard run` binds it in Lanyard's namespace; the
//! pod rules from `lanyard init --admin-port` reject the agent's uid).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::{Runtime, Scope};
use crate::Error;
use crate::config::AdminConfig;

/// Connections the admin listener serves at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 32;
/// Bound on reading a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// OpenMetrics' content type, which Prometheus negotiates for this format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `cfg.listen` and serves in the background; returns the bound address.
pub async fn serve(runtime: Arc<Runtime>, cfg: &AdminConfig) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Error::Start(format!("admin: cannot listen on {}: {e}", cfg.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Start(format!("admin: {e}")))?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, _) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let rt = runtime.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let svc = service_fn(move |req| {
                    let rt = rt.clone();
                    async move { Ok::<_, Infallible>(handle(&rt, req).await) }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    tracing::info!(%addr, "admin listener ready");
    Ok(addr)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = text(status, format!("{v:#}\n"));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(rt: &Runtime, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let open = matches!(path, "/healthz" | "/readyz");
    if !open {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !rt.admin_allows(presented) {
            let mut r = text(StatusCode::UNAUTHORIZED, "admin token required\n");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    match (req.method(), path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => match rt.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        (&Method::GET, "/metrics") => {
            let mut r = text(StatusCode::OK, rt.ops.encode());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(OPENMETRICS),
            );
            r
        }
        (&Method::GET, "/debug/endpoints") => json(StatusCode::OK, &rt.debug_endpoints()),
        (&Method::POST, "/revoke") => {
            let scope = match scope(req.uri().query()) {
                Ok(s) => s,
                Err(why) => return text(StatusCode::BAD_REQUEST, format!("{why}\n")),
            };
            match rt.revoke(&scope).await {
                Ok(r) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "tokens": r.tokens, "svids": r.svids }),
                ),
                Err(why) => text(StatusCode::NOT_FOUND, format!("{why}\n")),
            }
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/debug/endpoints") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        (_, "/revoke") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz, /readyz, /debug/endpoints, POST /revoke[?provider=NAME|?endpoint=NAME]\n",
        ),
    }
}

/// `?provider=NAME`, `?endpoint=NAME`, or nothing (everything).
fn scope(query: Option<&str>) -> Result<Scope, String> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    match pairs.as_slice() {
        [] => Ok(Scope::All),
        [(k, v)] if k == "provider" && !v.is_empty() => Ok(Scope::Provider(v.clone())),
        [(k, v)] if k == "endpoint" && !v.is_empty() => Ok(Scope::Endpoint(v.clone())),
        _ => Err("revoke takes one of ?provider=NAME or ?endpoint=NAME, or nothing for all".into()),
    }
}
