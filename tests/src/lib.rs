//! Helpers for the workspace integration tests: start the proxy in-process
//! from YAML (through the same config path as the binary), and talk to it as
//! a client would, over real sockets and real TLS.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    reason = "test support: a failed expectation is a failed test"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lanyard_examples::echo::{self, Echo};
use lanyard_examples::pki::{Leaf, Pki};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

pub mod issuer;
pub mod k8s;
pub mod keycloak;
pub mod logs;
pub mod ops;
pub mod oracle;
pub mod spire;

/// The token the static provider serves in tests. Long and distinctive so a
/// leak is easy to grep for.
pub const TOKEN: &str = "lanyard-test-token-7f3a9c2e1d";
/// What a client sends to check that it is replaced.
pub const CLIENT_AUTH: &str = "Bearer agent-supplied-value";

/// A temp directory with an upstream PKI and a token file.
pub struct World {
    /// Scratch space; removed on drop.
    pub dir: tempfile::TempDir,
    /// The upstreams' CA.
    pub pki: Pki,
    /// `pki`'s certificate, for `upstream_tls.extra_ca_files`.
    pub upstream_ca: PathBuf,
    /// The static token file.
    pub token_file: PathBuf,
}

impl World {
    /// A fresh world.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new("test upstream CA").expect("pki");
        let upstream_ca = dir.path().join("upstream-ca.pem");
        pki.write_ca(&upstream_ca).expect("write ca");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
        Self {
            dir,
            pki,
            upstream_ca,
            token_file,
        }
    }

    /// A leaf from the upstream PKI.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.pki.leaf(names).expect("leaf")
    }

    /// An HTTPS echo upstream on loopback presenting a cert for `names`,
    /// offering `alpn`.
    pub async fn upstream(&self, name: &str, names: &[&str], alpn: &[&[u8]]) -> Echo {
        let cfg = self.leaf(names).server_config(alpn).expect("server config");
        echo::start(loopback(), name, Some(cfg))
            .await
            .expect("echo")
    }

    /// The config header every test shares: listener, CA dir, trust, the
    /// static provider. Append `resolve`, `endpoints`, `egress`, `limits`.
    pub fn base_yaml(&self) -> String {
        format!(
            "listen: 127.0.0.1:0\nca: {{ dir: {} }}\nupstream_tls: {{ extra_ca_files: [{}] }}\nproviders:\n  test-static: {{ static: {{ token_file: {} }} }}\n",
            self.dir.path().join("ca").display(),
            self.upstream_ca.display(),
            self.token_file.display()
        )
    }
}

impl World {
    /// [`World::base_yaml`] plus one endpoint `alpha` (alpha.test on 127.0.0.1:`port`,
    /// static provider) and any further top-level YAML in `extra`.
    pub fn alpha_yaml(&self, port: u16, extra: &str) -> String {
        format!(
            "{}resolve: {{ alpha.test: 127.0.0.1 }}\nendpoints:\n  - {{ name: alpha, host: alpha.test, port: {port}, provider: test-static }}\n{extra}",
            self.base_yaml()
        )
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// `127.0.0.1:0`.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A proxy running in this process.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The sandbox CA the agent would trust.
    pub ca: CertificateDer<'static>,
    /// Path of `ca.pem`.
    pub ca_file: PathBuf,
    /// Reload, revocation and the admin view.
    pub runtime: std::sync::Arc<lanyard_supervisor::ops::Runtime>,
    /// The admin listener, when the config has one.
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<usize>>,
}

impl Running {
    /// The audit trail so far, one JSON value per line: [`try_start`] sends
    /// it to `audit.jsonl` beside the config unless the config says otherwise.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        self.runtime.ops.observe.telemetry.flush_audit();
        let file = self.runtime.file().with_file_name("audit.jsonl");
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// Triggers graceful shutdown and waits for it; returns connections cut at the deadline.
    pub async fn shutdown(mut self) -> usize {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.join.take() {
            Some(j) => j.await.expect("serve task"),
            None => 0,
        }
    }

    /// Starts graceful shutdown without waiting; returns the serve task.
    pub fn begin_shutdown(&mut self) -> JoinHandle<usize> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.join.take().expect("already shut down")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(j) = self.join.take() {
            j.abort();
        }
    }
}

/// Parses `yaml` as `lanyard.yaml` in `dir` and starts the proxy.
pub async fn start(yaml: &str, dir: &Path) -> Running {
    try_start(yaml, dir)
        .await
        .unwrap_or_else(|e| panic!("proxy failed to start: {e}"))
}

/// Like [`start`], returning the error instead of panicking.
pub async fn try_start(yaml: &str, dir: &Path) -> Result<Running, lanyard_supervisor::Error> {
    let file = dir.join("lanyard.yaml");
    // The audit trail goes to a file the test can read, not into the test output.
    let with_audit;
    let yaml = if yaml.contains("\naudit:") || yaml.starts_with("audit:") {
        yaml
    } else {
        with_audit = format!(
            "{yaml}\naudit: {{ file: {} }}\n",
            dir.join("audit.jsonl").display()
        );
        &with_audit
    };
    std::fs::write(&file, yaml).expect("write config");
    let config = lanyard_supervisor::config::Config::parse(yaml, &file)?;
    let started = lanyard_supervisor::build_proxy(config, &file, Default::default()).await?;
    let (runtime, admin) = (started.runtime, started.admin);
    let proxy = started.proxy;
    let addr = proxy.local_addr().expect("addr");
    let ca_file = proxy.trust_files().ca_pem.clone();
    let ca = CertificateDer::from_pem_slice(proxy.ca_pem().as_bytes()).expect("ca pem");
    let (tx, rx) = oneshot::channel::<()>();
    let join = tokio::spawn(proxy.serve(async move {
        let _ = rx.await;
    }));
    Ok(Running {
        addr,
        ca,
        ca_file,
        runtime,
        admin,
        stop: Some(tx),
        join: Some(join),
    })
}

/// An HTTP response head and body read off a raw stream.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// The head as text.
    pub head: String,
    /// The body (as far as Content-Length says).
    pub body: String,
}

/// Reads one HTTP/1.1 response (head plus Content-Length body) from `io`.
pub async fn read_response<S: AsyncRead + Unpin>(io: &mut S) -> RawResponse {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    // Byte at a time so nothing after the head (tunnel bytes) is consumed.
    while !buf.ends_with(b"\r\n\r\n") {
        let n = io.read(&mut byte).await.expect("read head");
        assert!(
            n > 0,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await.expect("read body");
    RawResponse {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Sends `CONNECT authority` and reads the proxy's answer.
pub async fn connect(proxy: SocketAddr, authority: &str) -> (TcpStream, RawResponse) {
    let mut s = TcpStream::connect(proxy).await.expect("connect proxy");
    s.set_nodelay(true).expect("nodelay");
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write CONNECT");
    let resp = read_response(&mut s).await;
    (s, resp)
}

/// A TLS client handshake trusting only `roots`.
pub async fn tls<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    sni: &str,
    alpn: &[&[u8]],
    roots: &[CertificateDer<'static>],
) -> Result<TlsStream<S>, std::io::Error> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).expect("root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(store)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(sni.to_owned()).expect("server name");
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, io)
        .await
}

/// CONNECT through the proxy and complete TLS towards the sandbox CA.
pub async fn intercepted(
    p: &Running,
    authority: &str,
    sni: &str,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let (s, resp) = connect(p.addr, authority).await;
    assert_eq!(resp.status, 200, "CONNECT {authority}: {resp:?}");
    tls(s, sni, alpn, std::slice::from_ref(&p.ca))
        .await
        .expect("TLS to the proxy")
}

/// GETs `path` on a fresh intercepted HTTP/1.1 tunnel to `host:port`.
pub async fn get_via(p: &Running, host: &str, port: u16, path: &str) -> Collected {
    let auth = format!("{host}:{port}");
    let tls = intercepted(p, &auth, host, &[b"http/1.1"]).await;
    let mut c = Client::new(tls, false).await;
    c.send(get(path, &auth)).await
}

/// A collected response.
#[derive(Debug)]
pub struct Collected {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body text.
    pub body: String,
    /// Trailers, if any.
    pub trailers: Option<HeaderMap>,
}

/// HTTP/1.1 or HTTP/2 client sender over `io`.
pub enum Client {
    /// HTTP/1.1.
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    /// HTTP/2.
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Client {
    /// Handshakes HTTP/2 when `h2`, else HTTP/1.1 (with upgrades).
    pub async fn new<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: S, h2: bool) -> Self {
        let io = TokioIo::new(io);
        if h2 {
            let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
            tokio::spawn(c);
            Client::H2(s)
        } else {
            let (s, c) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("h1 handshake");
            tokio::spawn(c.with_upgrades());
            Client::H1(s)
        }
    }

    /// Sends and collects the whole response.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Collected {
        let resp = self.send_raw(req).await;
        collect(resp).await
    }

    /// Sends and returns the response with its body unread.
    pub async fn send_raw(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> http::Response<hyper::body::Incoming> {
        match self {
            Client::H1(s) => {
                s.ready().await.expect("ready");
                s.send_request(req).await.expect("send")
            }
            Client::H2(s) => {
                s.ready().await.expect("ready");
                s.send_request(req).await.expect("send")
            }
        }
    }
}

/// Reads a response fully, keeping trailers.
pub async fn collect(resp: http::Response<hyper::body::Incoming>) -> Collected {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    Collected {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        trailers,
    }
}

/// A GET for `uri` with `Host: host` and the client's own Authorization.
pub fn get(uri: &str, host: &str) -> Request<Full<Bytes>> {
    Request::get(uri)
        .header("host", host)
        .header("authorization", CLIENT_AUTH)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// The `authorization:` lines an echo upstream reported.
pub fn auth_lines(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|l| l.strip_prefix("authorization: "))
        .collect()
}
