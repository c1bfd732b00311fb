//! Load and soak, loopback only, against the real binary: 1000 keep-alive
//! connections (half HTTP/1.1, half HTTP/2) through interception with
//! injection, plus a stream of short connections to ever-new names that
//! keeps the leaf-certificate cache evicting. Zero errors; the proxy's RSS
//! grows less than 5 % between the end of the warm-up (the first minute of a
//! long run) and the end of the run;
//! its descriptors return to the baseline once the clients leave; its log
//! (our crates at TRACE) never carries the token.
//!
//! CI runs 60 s. The long run: `LANYARD_SOAK_SECS=300 cargo test -p
//! lanyard-supervisor --test soak -- --nocapture` (`LANYARD_SOAK_CONNS` sets
//! the connection count).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    reason = "integration tests: a panic is a failed assertion; the figures are printed"
)]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LANYARD: &str = env!("CARGO_BIN_EXE_lanyard");
const TOKEN: &str = "soak-token-3f9b0c2a7e";
const CHURN_NAMES: usize = 600;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// CONNECT through the proxy, then TLS to the sandbox CA with `alpn`.
async fn tunnel(
    proxy: std::net::SocketAddr,
    authority: &str,
    sni: &str,
    alpn: &[u8],
    tls: &tokio_rustls::TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let _ = alpn;
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ));
    }
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    tls.connect(name, s).await
}

fn connector(ca: &[u8], alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    errors: AtomicU64,
    churned: AtomicU64,
}

impl Tally {
    fn error(&self, what: String) {
        if self.errors.fetch_add(1, Ordering::SeqCst) < 5 {
            eprintln!("soak error: {what}");
        }
    }
}

async fn keep_alive(
    proxy: std::net::SocketAddr,
    authority: String,
    h2: bool,
    tls: tokio_rustls::TlsConnector,
    until: Instant,
    tally: Arc<Tally>,
) {
    let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
    let io = match tunnel(proxy, &authority, "alpha.test", alpn, &tls).await {
        Ok(io) => TokioIo::new(io),
        Err(e) => return tally.error(format!("tunnel: {e}")),
    };
    let want = format!("authorization: Bearer {TOKEN}");
    macro_rules! run {
        ($sender:expr, $uri:expr) => {{
            let mut sender = $sender;
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let req = http::Request::get($uri(n))
                    .header("host", authority.as_str())
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                if sender.ready().await.is_err() {
                    return tally.error("connection closed".into());
                }
                match sender.send_request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        match resp.into_body().collect().await.map(|b| b.to_bytes()) {
                            Ok(b) if String::from_utf8_lossy(&b).contains(&want) => {
                                tally.requests.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => return tally.error("no credential upstream".into()),
                            Err(e) => return tally.error(format!("body: {e}")),
                        }
                    }
                    Ok(resp) => return tally.error(format!("status {}", resp.status())),
                    Err(e) => return tally.error(format!("send: {e}")),
                }
            }
        }};
    }
    if h2 {
        let Ok((sender, conn)) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await
        else {
            return tally.error("h2 handshake".into());
        };
        tokio::spawn(conn);
        let auth = authority.clone();
        run!(sender, |n| format!("https://{auth}/soak/{n}"));
    } else {
        let Ok((sender, conn)) = hyper::client::conn::http1::handshake(io).await else {
            return tally.error("h1 handshake".into());
        };
        tokio::spawn(conn);
        run!(sender, |n| format!("/soak/{n}"));
    }
}

/// Short connections to ever-new names under the wildcard endpoint.
async fn churn(
    proxy: std::net::SocketAddr,
    port: u16,
    tls: tokio_rustls::TlsConnector,
    until: Instant,
    tally: Arc<Tally>,
) {
    let mut k = 0usize;
    while Instant::now() < until {
        k += 1;
        let name = format!("n{}.churn.test", k % CHURN_NAMES);
        let authority = format!("{name}:{port}");
        let io = match tunnel(proxy, &authority, &name, b"http/1.1", &tls).await {
            Ok(io) => TokioIo::new(io),
            Err(e) => return tally.error(format!("churn tunnel {name}: {e}")),
        };
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(io).await else {
            return tally.error("churn handshake".into());
        };
        tokio::spawn(conn);
        let req = http::Request::get("/churn")
            .header("host", authority.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap();
        match sender.send_request(req).await {
            Ok(r) if r.status() == 200 => {
                let _ = r.into_body().collect().await;
                tally.churned.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => return tally.error(format!("churn status {}", r.status())),
            Err(e) => return tally.error(format!("churn send: {e}")),
        }
    }
}

/// The admin listener's address, from the line Lanyard logs when it binds.
fn admin_addr(log: &std::path::Path) -> std::net::SocketAddr {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("admin listener ready")) {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .unwrap_or_else(|| panic!("no addr= in {line:?}"));
            return addr.parse().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the admin listener never started:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `lanyard_upstream_connections` from `/metrics`.
fn upstream_connections(admin: std::net::SocketAddr) -> usize {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("lanyard_upstream_connections "))
        .unwrap_or_else(|| panic!("no upstream gauge in {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_thousand_keep_alive_connections_hold_steady() {
    let secs = env_or("LANYARD_SOAK_SECS", 60);
    let conns = usize::try_from(env_or("LANYARD_SOAK_CONNS", 1000)).unwrap();
    // Client, upstream and proxy sockets: three per connection, all on this host.
    let (_, hard) = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .map_or((0, u64::MAX), |m| (0, m));
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(hard.min(65536)),
            maximum: Some(hard),
        },
    );

    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pki = lanyard_examples::pki::Pki::new("soak upstream CA").unwrap();
    let up_ca = dir.path().join("up-ca.pem");
    pki.write_ca(&up_ca).unwrap();
    let tls_up = pki
        .leaf(&["alpha.test", "*.churn.test"])
        .unwrap()
        .server_config(&[b"h2", b"http/1.1"])
        .unwrap();
    let up = rt
        .block_on(lanyard_examples::echo::start(
            ([127, 0, 0, 1], 0).into(),
            "alpha",
            Some(tls_up),
        ))
        .unwrap();
    let port = up.addr.port();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let mut resolve = String::from("alpha.test: 127.0.0.1");
    for k in 0..CHURN_NAMES {
        resolve.push_str(&format!(", n{k}.churn.test: 127.0.0.1"));
    }
    let cfg = dir.path().join("lanyard.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\nca: {{ dir: {ca} }}\nupstream_tls: {{ extra_ca_files: [{up}] }}\nresolve: {{ {resolve} }}\nproviders:\n  s: {{ static: {{ token_file: {tok} }} }}\nendpoints:\n  - {{ name: alpha, host: alpha.test, port: {port}, provider: s }}\n  - {{ name: churn, host: \"*.churn.test\", port: {port}, provider: s }}\nlimits: {{ max_connections: {max}, cert_cache_size: 128 }}\nadmin: {{ listen: 127.0.0.1:0 }}\n",
            ca = dir.path().join("ca").display(),
            up = up_ca.display(),
            tok = token.display(),
            max = conns + 64,
        ),
    )
    .unwrap();
    let log_path = dir.path().join("lanyard.log");
    let mut child = Command::new(LANYARD)
        .args(["proxy", "--config"])
        .arg(&cfg)
        .env(
            "LANYARD_LOG",
            "info,lanyard=trace,lanyard_proxy=trace,lanyard_supervisor=trace",
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let proxy: std::net::SocketAddr = common::listening_addr(&mut child).parse().unwrap();
    let ca = std::fs::read(dir.path().join("ca/ca.pem")).unwrap();
    let fds_idle = fds(pid);
    let rss_idle = rss_kib(pid);

    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let (rss_warm, rss_end, fds_busy) = rt.block_on(async {
        let mut tasks = Vec::new();
        let (c1, c2) = (connector(&ca, b"http/1.1"), connector(&ca, b"h2"));
        for i in 0..conns {
            let tls = if i % 2 == 0 { c1.clone() } else { c2.clone() };
            tasks.push(tokio::spawn(keep_alive(
                proxy,
                format!("alpha.test:{port}"),
                i % 2 == 1,
                tls,
                until,
                tally.clone(),
            )));
        }
        tasks.push(tokio::spawn(churn(
            proxy,
            port,
            c1.clone(),
            until,
            tally.clone(),
        )));
        // A trace of RSS for the record (--nocapture shows it).
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            let mut trace = Vec::new();
            while Instant::now() < until {
                tick.tick().await;
                trace.push(rss_kib(pid) / 1024);
            }
            eprintln!("soak: RSS every 5 s (MiB): {trace:?}");
        });
        // The warm-up: every connection open, caches full, and per-connection
        // buffers grown to their working size, which takes about a minute at
        // 1000 connections on two cores (RSS rises steeply, then flattens).
        // A long run compares its first minute with its end, as a soak
        // should; a short one its last third with the rest.
        let warm = if secs >= 180 {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(secs) * 2 / 3
        };
        tokio::time::sleep_until((start + warm).into()).await;
        let rss_warm = rss_kib(pid);
        tokio::time::sleep_until((until - Duration::from_millis(500)).into()).await;
        let rss_end = rss_kib(pid);
        let fds_busy = fds(pid);
        for t in tasks {
            t.await.unwrap();
        }
        sampler.await.unwrap();
        (rss_warm, rss_end, fds_busy)
    });
    let elapsed = start.elapsed().as_secs_f64();
    let requests = tally.requests.load(Ordering::SeqCst);
    // Clients are gone: the proxy's descriptors come back to the baseline,
    // plus the idle upstream connections its pools keep for the next agent
    // connection, as `/metrics` counts them (read first: it only falls).
    let admin = admin_addr(&log_path);
    let settle = Instant::now();
    let mut pooled = upstream_connections(admin);
    let mut fds_after = fds(pid);
    while fds_after > fds_idle + 4 + pooled && settle.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
        pooled = upstream_connections(admin);
        fds_after = fds(pid);
    }
    eprintln!(
        "soak: {conns} connections, {secs} s: {requests} requests ({:.0}/s), {} churned connections, {} errors; \
         RSS idle {rss_idle} KiB, after warm-up {rss_warm} KiB, at the end {rss_end} KiB ({:.1} KiB per connection); \
         fds idle {fds_idle}, busy {fds_busy}, after {fds_after} ({pooled} pooled upstream connections)",
        requests as f64 / elapsed,
        tally.churned.load(Ordering::SeqCst),
        tally.errors.load(Ordering::SeqCst),
        (rss_end.saturating_sub(rss_idle)) as f64 / conns as f64,
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let mut log = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();

    assert_eq!(tally.errors.load(Ordering::SeqCst), 0, "errors under load");
    assert!(
        requests >= conns as u64,
        "only {requests} requests in {secs} s"
    );
    assert!(
        tally.churned.load(Ordering::SeqCst) > 0,
        "the churn never ran"
    );
    assert!(
        fds_busy >= conns,
        "the proxy held {fds_busy} descriptors: the connections were not all open"
    );
    assert!(
        rss_end * 100 <= rss_warm * 105,
        "RSS grew from {rss_warm} KiB to {rss_end} KiB after the warm-up"
    );
    assert!(
        fds_after <= fds_idle + 4 + pooled,
        "descriptors leaked: {fds_idle} idle, {fds_after} after the clients left, {pooled} of them pooled upstream connections"
    );
    assert!(log.contains("request"), "the log is empty: is TRACE on?");
    assert!(!log.contains(TOKEN), "the token reached the log");
}
