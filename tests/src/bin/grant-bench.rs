//! The SPIFFE grant path, measured: the dev Workload API issues JWT-SVIDs,
//! the test issuer exchanges them (RFC 8693), Lanyard injects the result.
//! `bench/run` calls this and puts its table into `bench/RESULTS.md`.
//!
//! - cold: revoke every token and SVID, then one request on a fresh tunnel
//!   (SVID fetch + exchange + request), beside the same request to an
//!   endpoint with a static token;
//! - steady: 64 keep-alive HTTP/1.1 connections for `--seconds` against the
//!   grant endpoint (every request a token-cache hit), beside the static one;
//! - burst: revoke, then 1000 concurrent first requests (10 HTTP/2
//!   connections × 100 streams): how many exchanges and SVID fetches they
//!   cost (one each is the invariant) and how long the last one waited.
//!
//! Prints a Markdown table. Usage: `grant-bench [--seconds N]`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark program: a panic is a failed run, the table goes to stdout"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use lanyard_supervisor::dev::DevWorkloadApi;
use lanyard_supervisor::ops::Scope;
use lanyard_tests::issuer::Issuer;
use lanyard_tests::{Client, Running, World, collect, get, intercepted};

const SPIFFE_ID: &str = "spiffe://lanyard.test/sandbox/bench";
const H1: &[u8] = b"http/1.1";
const H2: &[u8] = b"h2";
const COLD_SAMPLES: usize = 30;

/// The `pct`-th percentile (nearest rank) of `sorted`, in µs.
fn percentile(sorted: &[Duration], pct: usize) -> f64 {
    sorted[(sorted.len() - 1) * pct / 100].as_secs_f64() * 1e6
}

/// One GET on a fresh intercepted HTTP/1.1 tunnel; its wall time.
async fn one(p: &Running, auth: &str, host: &str) -> Duration {
    let t = Instant::now();
    let tls = intercepted(p, auth, host, &[H1]).await;
    let mut c = Client::new(tls, false).await;
    let r = c.send(get("/x", auth)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    t.elapsed()
}

/// Requests per second over `conns` keep-alive HTTP/1.1 connections.
async fn steady(p: &Running, auth: &str, host: &str, conns: usize, secs: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let tls = intercepted(p, auth, host, &[H1]).await;
        let mut c = Client::new(tls, false).await;
        let (auth, done) = (auth.to_owned(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let r = c.send(get("/x", &auth)).await;
                assert_eq!(r.status, StatusCode::OK, "{}", r.body);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut secs = 3u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--seconds", Some(v)) => secs = v.parse().expect("--seconds N"),
            _ => panic!("usage: grant-bench [--seconds N]"),
        }
    }
    let w = World::new();
    let api = DevWorkloadApi::new(SPIFFE_ID, Duration::from_secs(300)).unwrap();
    let sock = w.dir.path().join("agent.sock");
    let _wl = api.serve(&sock).await.unwrap();
    let issuer = Issuer::start(api.clone()).await;
    let up = w
        .upstream("up", &["grant.test", "static.test"], &[H2, H1])
        .await;
    let port = up.addr.port();
    let yaml = format!(
        "{}  tx: {{ token_grant: {{ token_endpoint: {}, grant: token_exchange }} }}\nspiffe: {{ endpoint_socket: unix://{} }}\nresolve: {{ grant.test: 127.0.0.1, static.test: 127.0.0.1 }}\nendpoints:\n  - {{ name: grant, host: grant.test, port: {port}, provider: tx, audience: alpha }}\n  - {{ name: static, host: static.test, port: {port}, provider: test-static }}\nlimits: {{ max_connections: 4096 }}\n",
        w.base_yaml(),
        issuer.url,
        sock.display(),
    );
    let p = lanyard_tests::start(&yaml, w.dir.path()).await;
    let (grant, stat) = (format!("grant.test:{port}"), format!("static.test:{port}"));
    // Warm both pools and the leaf cache, so cold measures the grant alone.
    one(&p, &grant, "grant.test").await;
    one(&p, &stat, "static.test").await;

    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..COLD_SAMPLES {
        p.runtime.revoke(&Scope::All).await.unwrap();
        cold.push(one(&p, &grant, "grant.test").await);
        warm.push(one(&p, &stat, "static.test").await);
    }
    cold.sort();
    warm.sort();
    let exchanges_before = issuer.attempts();

    let grant_rps = steady(&p, &grant, "grant.test", 64, secs).await;
    let static_rps = steady(&p, &stat, "static.test", 64, secs).await;
    let steady_exchanges = issuer.attempts() - exchanges_before;

    p.runtime.revoke(&Scope::All).await.unwrap();
    let (ex0, sv0) = (
        issuer.attempts(),
        api.stats.jwt_svids.load(Ordering::SeqCst),
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let tls = intercepted(&p, &grant, "grant.test", &[H2]).await;
        let Client::H2(sender) = Client::new(tls, true).await else {
            unreachable!("asked for h2")
        };
        for _ in 0..100 {
            let mut s = sender.clone();
            let uri = format!("https://{grant}/burst");
            tasks.push(tokio::spawn(async move {
                let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
                let r = collect(s.send_request(req).await.unwrap()).await;
                assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let burst = start.elapsed();
    let burst_exchanges = issuer.attempts() - ex0;
    let burst_svids = api.stats.jwt_svids.load(Ordering::SeqCst) - sv0;

    println!("| grant-path figure | value | baseline (static token, same run) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| cold first request p50 / p99 µs ({COLD_SAMPLES} samples: SVID fetch + exchange + request, fresh tunnel) | {:.0} / {:.0} | {:.0} / {:.0} | {:.2}× |",
        percentile(&cold, 50),
        percentile(&cold, 99),
        percentile(&warm, 50),
        percentile(&warm, 99),
        percentile(&cold, 50) / percentile(&warm, 50),
    );
    println!(
        "| steady state req/s (64 keep-alive h1 connections, {secs} s, token cached) | {grant_rps:.0} | {static_rps:.0} | {:.2}× |",
        grant_rps / static_rps
    );
    println!("| exchanges during the steady state | {steady_exchanges} | - | - |");
    println!(
        "| 1000 concurrent first requests: exchanges / SVID fetches / ms until the last answer | {burst_exchanges} / {burst_svids} / {:.0} | - | - |",
        burst.as_secs_f64() * 1e3
    );
    assert_eq!(burst_exchanges, 1, "the burst cost more than one exchange");
    drop(p);
}
