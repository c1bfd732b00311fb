//! `bench-load`: the load generator of `bench/run`.
//!
//! bench-load --target HOST:PORT --connect ADDR --ca FILE [--proxy ADDR]
//!            [--mode h1|h2|grpc|newconn|plain|bulk|hold] [--conns N] [--streams N]
//!            [--seconds S] [--rate R] [--hosts N] [--bytes B]
//!
//! Prints one line: `mode=.. requests=.. rps=.. p50_us=.. p99_us=.. errors=.. mbps=..`.
//!
//! - `--connect`: where the TCP connection goes when there is no proxy.
//! - `--rate R`: open loop at R requests/s in all (each connection or
//!   stream its share); a request's latency counts from the moment it was
//!   due, so queueing behind a slow proxy shows in p99 instead of silently
//!   lowering the offered load (closed loop, the default).
//! - `--hosts N` (newconn): SNI and authority cycle through `h0.TARGET` ..
//!   `h{N-1}.TARGET` (the upstream holds a wildcard certificate), so an
//!   intercepting proxy mints and caches N leaves.
//! - `bulk`: each connection sends `--bytes` through a tunnel to a byte sink
//!   (`demo-upstream` prints `sink on ADDR`), which answers with the count.
//! - `hold`: opens `--conns` intercepted keep-alive connections, sends one
//!   request on each, prints `held N` and keeps them open until stdin closes
//!   (so `bench/run` can read the proxy's RSS with N connections open).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
struct Opts {
    /// `host:port` of the default destination.
    target: String,
    /// The names requests go to (one unless `--hosts`).
    hosts: Arc<Vec<String>>,
    port: String,
    connect: String,
    proxy: Option<String>,
    tls: Arc<rustls::ClientConfig>,
    mode: String,
    /// Seconds between requests per loop (open loop), if paced.
    interval: Option<Duration>,
    bytes: u64,
}

/// A TCP stream to `authority`, through the proxy's CONNECT when there is one.
async fn tcp(o: &Opts, authority: &str) -> Result<TcpStream, Error> {
    let mut tcp = TcpStream::connect(o.proxy.as_deref().unwrap_or(&o.connect)).await?;
    tcp.set_nodelay(true)?;
    if o.proxy.is_some() {
        tcp.write_all(
            format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes(),
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
    Ok(tcp)
}

async fn open(
    o: &Opts,
    host: &str,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    let tcp = tcp(o, &format!("{host}:{}", o.port)).await?;
    let mut cfg = (*o.tls).clone();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let name = ServerName::try_from(host.to_owned())?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await?)
}

fn req(o: &Opts, host: &str, h2: bool) -> http::Request<Full<Bytes>> {
    let authority = format!("{host}:{}", o.port);
    if o.mode == "grpc" {
        // A unary call: 5-byte gRPC frame header, 16-byte message.
        let mut msg = vec![0u8, 0, 0, 0, 16];
        msg.extend_from_slice(&[7u8; 16]);
        return http::Request::post(format!("https://{authority}/bench.Echo/Unary"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(msg)))
            .unwrap_or_default();
    }
    let uri = match (h2, o.mode.as_str(), &o.proxy) {
        (true, ..) => format!("https://{authority}/bench"),
        (false, "plain", Some(_)) => format!("http://{authority}/bench"),
        _ => "/bench".to_owned(),
    };
    let mut r = http::Request::get(uri);
    if !h2 {
        r = r.header("host", &authority);
    }
    r.body(Full::new(Bytes::new())).unwrap_or_default()
}

/// Latencies of successful requests (µs), failures, bytes moved.
#[derive(Default)]
struct Stats {
    lat: Vec<u32>,
    errors: u64,
    bytes: u64,
}

impl Stats {
    fn record(&mut self, since: Instant, ok: bool) {
        if ok {
            self.lat
                .push(u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX));
        } else {
            self.errors += 1;
        }
    }

    fn merge(&mut self, other: Stats) {
        self.lat.extend(other.lat);
        self.errors += other.errors;
        self.bytes += other.bytes;
    }

    fn failed() -> Self {
        Stats {
            errors: 1,
            ..Stats::default()
        }
    }
}

/// When the next request is due: now (closed loop), or on a fixed schedule
/// (open loop), in which case latency counts from the due time.
struct Pacer {
    next: Instant,
    interval: Option<Duration>,
}

impl Pacer {
    fn new(o: &Opts, offset: Duration) -> Self {
        Self {
            next: Instant::now() + offset,
            interval: o.interval,
        }
    }

    async fn due(&mut self) -> Instant {
        match self.interval {
            None => Instant::now(),
            Some(i) => {
                let due = self.next;
                tokio::time::sleep_until(due.into()).await;
                self.next += i;
                due
            }
        }
    }
}

/// Longest a request may take before it counts as failed (a peer that
/// stops answering must not hang the whole bench).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One response, body included; false on any failure, a non-200 or a timeout.
async fn exchange(
    send: impl std::future::Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>>,
) -> bool {
    let done = async {
        match send.await {
            Ok(resp) => resp.status() == 200 && resp.into_body().collect().await.is_ok(),
            Err(_) => false,
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, done)
        .await
        .unwrap_or(false)
}

async fn h1_on<S>(io: S) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(c);
    Ok(s)
}

/// HTTP/1.1: keep-alive on one connection (`h1`, `plain`), or a new
/// connection and TLS handshake per request (`newconn`).
async fn worker(o: Opts, n: usize, end: Instant) -> Stats {
    let mut stats = Stats::default();
    let mut pace = Pacer::new(&o, stagger(&o, n));
    if o.mode == "newconn" {
        let mut i = n;
        while Instant::now() < end {
            let due = pace.due().await;
            let host = &o.hosts[i % o.hosts.len()];
            i += 7;
            let ok = async {
                let mut s = h1_on(open(&o, host, b"http/1.1").await?).await?;
                Ok::<_, Error>(exchange(s.send_request(req(&o, host, false))).await)
            }
            .await
            .unwrap_or(false);
            stats.record(due, ok);
        }
        return stats;
    }
    let host = o.hosts[0].clone();
    let sender = if o.mode == "plain" {
        match tcp_plain(&o).await {
            Ok(t) => h1_on(t).await,
            Err(e) => Err(e),
        }
    } else {
        match open(&o, &host, b"http/1.1").await {
            Ok(t) => h1_on(t).await,
            Err(e) => Err(e),
        }
    };
    let Ok(mut s) = sender else {
        return Stats::failed();
    };
    while Instant::now() < end {
        let due = pace.due().await;
        let ok = exchange(s.send_request(req(&o, &host, false))).await;
        stats.record(due, ok);
    }
    stats
}

/// Plain HTTP: to the proxy (absolute-form requests) or straight to the upstream.
async fn tcp_plain(o: &Opts) -> Result<TcpStream, Error> {
    let t = TcpStream::connect(o.proxy.as_deref().unwrap_or(&o.connect)).await?;
    t.set_nodelay(true)?;
    Ok(t)
}

/// Spreads paced loops over one interval, so they do not fire in lockstep.
fn stagger(o: &Opts, n: usize) -> Duration {
    o.interval
        .map_or(Duration::ZERO, |i| i.mul_f64((n % 97) as f64 / 97.0))
}

/// One HTTP/2 connection carrying `streams` concurrent request loops (`h2`, `grpc`).
async fn h2_conn(o: Opts, n: usize, streams: usize, end: Instant) -> Stats {
    let host = o.hosts[0].clone();
    let Ok(tls) = open(&o, &host, b"h2").await else {
        return Stats::failed();
    };
    let Ok((s, c)) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await
    else {
        return Stats::failed();
    };
    tokio::spawn(c);
    let mut tasks = Vec::new();
    for k in 0..streams {
        let (mut s, o, host) = (s.clone(), o.clone(), host.clone());
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let mut pace = Pacer::new(&o, stagger(&o, n * streams + k));
            while Instant::now() < end {
                let due = pace.due().await;
                let ok = exchange(s.send_request(req(&o, &host, true))).await;
                stats.record(due, ok);
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

/// `bulk`: `o.bytes` through a tunnel to the sink, which answers with the count.
async fn bulk(o: Opts) -> Stats {
    let started = Instant::now();
    let run = async {
        let mut t = tcp(&o, &o.target).await?;
        t.write_u64(o.bytes).await?;
        let chunk = vec![0x5au8; 64 * 1024];
        let mut left = o.bytes;
        while left > 0 {
            let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
            t.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        let got = t.read_u64().await?;
        Ok::<_, Error>(got)
    };
    match run.await {
        Ok(got) if got == o.bytes => {
            let mut s = Stats::default();
            s.record(started, true);
            s.bytes = got;
            s
        }
        _ => Stats::failed(),
    }
}

/// `hold`: `conns` intercepted keep-alive connections, one request each, kept open.
async fn hold(o: Opts, conns: usize) -> Result<(), Error> {
    let mut held = Vec::with_capacity(conns);
    let host = o.hosts[0].clone();
    for _ in 0..conns {
        let mut s = h1_on(open(&o, &host, b"http/1.1").await?).await?;
        if !exchange(s.send_request(req(&o, &host, false))).await {
            return Err("a held connection's request failed".into());
        }
        held.push(s);
    }
    println!("held {}", held.len());
    // Blocking read of stdin on a thread of its own (tokio's stdin needs a feature).
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await?;
    drop(held);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut a = std::env::args().skip(1);
    let (mut target, mut connect, mut ca, mut proxy) = (None, None, None, None);
    let (mut mode, mut conns, mut streams, mut secs) = ("h1".to_owned(), 16usize, 8usize, 5u64);
    let (mut rate, mut hosts, mut bytes) = (None::<f64>, 1usize, 64u64 << 20);
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
            "--rate" => rate = Some(v.parse()?),
            "--hosts" => hosts = v.parse()?,
            "--bytes" => bytes = v.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let target: String = target.ok_or("--target")?;
    let (base, port) = target.rsplit_once(':').ok_or("--target HOST:PORT")?;
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
    let names = if hosts > 1 {
        (0..hosts).map(|i| format!("h{i}.{base}")).collect()
    } else {
        vec![base.to_owned()]
    };
    let loops = if mode == "h2" || mode == "grpc" {
        conns * streams
    } else {
        conns
    };
    let o = Opts {
        hosts: Arc::new(names),
        port: port.to_owned(),
        connect: connect.unwrap_or_else(|| target.clone()),
        target: target.clone(),
        proxy,
        tls: Arc::new(tls),
        mode: mode.clone(),
        interval: rate.map(|r| Duration::from_secs_f64(loops as f64 / r)),
        bytes,
    };
    if mode == "hold" {
        return hold(o, conns).await;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for n in 0..conns {
        let o = o.clone();
        tasks.push(match mode.as_str() {
            "h2" | "grpc" => tokio::spawn(h2_conn(o, n, streams, end)),
            "bulk" => tokio::spawn(bulk(o)),
            _ => tokio::spawn(worker(o, n, end)),
        });
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
        "mode={mode} requests={} rps={:.0} p50_us={} p99_us={} errors={errors} mbps={:.1}",
        lat.len(),
        lat.len() as f64 / elapsed,
        pct(500),
        pct(990),
        stats.bytes as f64 / elapsed / 1e6,
    );
    Ok(())
}
