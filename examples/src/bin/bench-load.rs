//! `bench-load`: a closed-loop HTTPS load generator for `scripts/bench`.
//!
//! bench-load --target HOST:PORT --connect ADDR --ca FILE [--proxy ADDR]
//!            [--mode h1|h2|newconn] [--conns N] [--streams N] [--seconds S]
//!
//! Prints one line: `mode=.. requests=.. rps=.. p50_us=.. p99_us=.. errors=..`.
//! `--connect` is where the TCP connection goes when there is no proxy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
struct Opts {
    target: String,
    host: String,
    connect: String,
    proxy: Option<String>,
    tls: Arc<rustls::ClientConfig>,
    mode: String,
}

async fn open(o: &Opts, alpn: &[u8]) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    let mut tcp = TcpStream::connect(o.proxy.as_deref().unwrap_or(&o.connect)).await?;
    tcp.set_nodelay(true)?;
    if o.proxy.is_some() {
        tcp.write_all(
            format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n", t = o.target).as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        let mut b = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut b).await? == 0 {
                return Err("proxy closed".into());
            }
            buf.push(b[0]);
        }
        if !buf.starts_with(b"HTTP/1.1 200") {
            return Err(format!("CONNECT: {}", String::from_utf8_lossy(&buf)).into());
        }
    }
    let mut cfg = (*o.tls).clone();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let name = ServerName::try_from(o.host.clone())?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await?)
}

fn req(o: &Opts, h2: bool) -> http::Request<Full<Bytes>> {
    let uri = if h2 {
        format!("https://{}/bench", o.target)
    } else {
        "/bench".to_owned()
    };
    let mut r = http::Request::get(uri);
    if !h2 {
        r = r.header("host", &o.target);
    }
    r.body(Full::new(Bytes::new())).unwrap_or_default()
}

/// Latencies of successful requests (µs) and the count of failed ones.
#[derive(Default)]
struct Stats {
    lat: Vec<u32>,
    errors: u64,
}

impl Stats {
    fn record(&mut self, started: Instant, ok: bool) {
        if ok {
            self.lat
                .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
        } else {
            self.errors += 1;
        }
    }

    fn merge(&mut self, other: Stats) {
        self.lat.extend(other.lat);
        self.errors += other.errors;
    }

    fn failed() -> Self {
        Stats {
            lat: Vec::new(),
            errors: 1,
        }
    }
}

/// One response, body included; false on any failure.
async fn exchange(
    send: impl std::future::Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>>,
) -> bool {
    match send.await {
        Ok(resp) => resp.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

/// One HTTP/1.1 worker: keep-alive on one connection, or (`newconn`) a new
/// connection and TLS handshake per request; requests until `end`.
async fn worker(o: Opts, end: Instant) -> Stats {
    let mut stats = Stats::default();
    if o.mode == "newconn" {
        while Instant::now() < end {
            let t = Instant::now();
            let ok = async {
                let tls = open(&o, b"http/1.1").await?;
                let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(c);
                let resp = s.send_request(req(&o, false)).await?;
                resp.into_body().collect().await?;
                Ok::<_, Error>(())
            }
            .await
            .is_ok();
            stats.record(t, ok);
        }
        return stats;
    }
    let Ok(tls) = open(&o, b"http/1.1").await else {
        return Stats::failed();
    };
    let Ok((mut s, c)) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await else {
        return Stats::failed();
    };
    tokio::spawn(c);
    while Instant::now() < end {
        let t = Instant::now();
        let ok = exchange(s.send_request(req(&o, false))).await;
        stats.record(t, ok);
    }
    stats
}

/// One HTTP/2 connection carrying `streams` concurrent request loops.
async fn h2_conn(o: Opts, streams: usize, end: Instant) -> Stats {
    let Ok(tls) = open(&o, b"h2").await else {
        return Stats::failed();
    };
    let Ok((s, c)) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await
    else {
        return Stats::failed();
    };
    tokio::spawn(c);
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let (mut s, o) = (s.clone(), o.clone());
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            while Instant::now() < end {
                let t = Instant::now();
                let ok = exchange(s.send_request(req(&o, true))).await;
                stats.record(t, ok);
            }
            stats
        }));
    }
    let mut all = Stats::default();
    for t in tasks {
        all.merge(t.await.unwrap_or_else(|_| Stats::failed()));
    }
    all
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut a = std::env::args().skip(1);
    let (mut target, mut connect, mut ca, mut proxy) = (None, None, None, None);
    let (mut mode, mut conns, mut streams, mut secs) = ("h1".to_owned(), 16usize, 8usize, 5u64);
    while let Some(f) = a.next() {
        let v = a.next().ok_or("flag needs a value")?;
        match f.as_str() {
            "--target" => target = Some(v),
            "--connect" => connect = Some(v),
            "--ca" => ca = Some(v),
            "--proxy" => proxy = Some(v),
            "--mode" => mode = v,
            "--conns" => conns = v.parse()?,
            "--streams" => streams = v.parse()?,
            "--seconds" => secs = v.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let target: String = target.ok_or("--target")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in lanyard_examples::pki::read_certs(std::path::Path::new(&ca.ok_or("--ca")?))? {
        roots.add(c)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let o = Opts {
        host: target.split(':').next().unwrap_or_default().to_owned(),
        connect: connect.unwrap_or_else(|| target.clone()),
        target,
        proxy,
        tls: Arc::new(tls),
        mode: mode.clone(),
    };
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let o = o.clone();
        if mode == "h2" {
            tasks.push(tokio::spawn(h2_conn(o, streams, end)));
        } else {
            tasks.push(tokio::spawn(worker(o, end)));
        }
    }
    let mut stats = Stats::default();
    for t in tasks {
        stats.merge(t.await?);
    }
    let (mut lat, errors) = (stats.lat, stats.errors);
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    // Percentile by rank, in per-mille, with integer arithmetic.
    let pct = |permille: usize| {
        let i = (lat.len() * permille / 1000).min(lat.len().saturating_sub(1));
        lat.get(i).copied().unwrap_or(0)
    };
    println!(
        "mode={mode} requests={} rps={:.0} p50_us={} p99_us={} errors={errors}",
        lat.len(),
        lat.len() as f64 / elapsed,
        pct(500),
        pct(990)
    );
    Ok(())
}
