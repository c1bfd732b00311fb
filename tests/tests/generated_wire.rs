//! Generated attacks over real sockets: what an agent can put on the wire
//! inside an intercepted tunnel (HTTP/1.1 raw bytes, pipelined, or HTTP/2),
//! with generated CONNECT authorities, SNI, request targets, Host sets,
//! hop-by-hop lists naming `authorization`, its own Authorization, chunked
//! bodies with trailers, and redirects from the endpoint to elsewhere.
//!
//! The upstreams record what reaches them and never echo it. The oracle:
//! the token reaches an upstream only for a request the endpoint covers
//! (Lanyard dialled alpha.test, the path as received stays under /api under
//! every lenient reading, the method is GET or POST), and no byte of it
//! comes back to the agent. `tests/tests/generated.rs` runs a million cases
//! of the same decision without sockets; this runs as many wire cases as fit
//! in `LANYARD_WIRE_SECS` (default 20 s), seed printed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    reason = "integration tests: a panic is a failed assertion; the seed is printed"
)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lanyard_tests::oracle::{self, readings, under};
use lanyard_tests::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What an upstream received: the name Lanyard dialled (from SNI), method,
/// path and the Authorization values.
#[derive(Debug, Clone)]
struct Seen {
    sni: String,
    method: String,
    path: String,
    auth: Vec<String>,
    trailer_auth: bool,
}

type Log = Arc<Mutex<Vec<Seen>>>;

async fn handle(sni: String, log: Log, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let auth: Vec<String> = req
        .headers()
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let collected = req.into_body().collect().await.ok();
    let trailer_auth = collected
        .as_ref()
        .and_then(|c| c.trailers())
        .is_some_and(|t| t.contains_key(http::header::AUTHORIZATION));
    log.lock().unwrap().push(Seen {
        sni,
        method,
        path: path.clone(),
        auth,
        trailer_auth,
    });
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
    if path.contains("redirect") {
        *resp.status_mut() = http::StatusCode::FOUND;
        resp.headers_mut().insert(
            http::header::LOCATION,
            http::HeaderValue::from_static("https://evil.test/collect"),
        );
    }
    resp
}

/// One TLS upstream for both alpha.test and evil.test (h2 and HTTP/1.1).
async fn upstream(w: &World, log: Log) -> std::net::SocketAddr {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(
        w.leaf(&["alpha.test", "evil.test"])
            .server_config(&[b"h2", b"http/1.1"])
            .unwrap(),
    );
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let svc = hyper::service::service_fn(move |req| {
                    let (sni, log) = (sni.clone(), log.clone());
                    async move { Ok::<_, Infallible>(handle(sni, log, req).await) }
                });
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    addr
}

const HOSTS: &[&str] = &[
    "alpha.test",
    "ALPHA.test",
    "alpha.test.",
    "evil.test",
    "alpha.test.evil.test",
    "evil.test@alpha.test",
    "alpha.test@evil.test",
    "",
];
const SEGMENTS: &[&str] = &[
    "api",
    "api",
    "x",
    "..",
    ".",
    "%2e%2e",
    "%2f",
    "..;",
    "%252e%252e",
    "%c0%ae%c0%ae",
    "redirect",
    "a;b",
    "%5c..",
    "",
];
const METHODS: &[&str] = &["GET", "GET", "POST", "PUT", "TRACE", "OPTIONS", "DELETE"];
const CONNECTION: &[&str] = &[
    "",
    "keep-alive",
    "authorization",
    "x-a, Authorization",
    "close, authorization",
    "te",
];

#[derive(Debug, Clone)]
struct Case {
    connect_host: usize,
    sni: usize,
    h2: bool,
    absolute: Option<usize>,
    hosts: Vec<usize>,
    method: usize,
    path: Vec<usize>,
    client_auth: bool,
    connection: usize,
    chunked_trailer: bool,
    pipelined: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![3 => 0usize..3, 1 => 0..HOSTS.len()],
        prop_oneof![3 => 0usize..3, 1 => 0..HOSTS.len()],
        any::<bool>(),
        proptest::option::weighted(0.3, 0..HOSTS.len()),
        proptest::collection::vec(prop_oneof![3 => 0usize..3, 1 => 0..HOSTS.len()], 0..3),
        0..METHODS.len(),
        proptest::collection::vec(prop_oneof![2 => Just(0usize), 1 => 0..SEGMENTS.len()], 1..4),
        any::<bool>(),
        0..CONNECTION.len(),
        proptest::bool::weighted(0.2),
        proptest::bool::weighted(0.2),
    )
        .prop_map(
            |(
                connect_host,
                sni,
                h2,
                absolute,
                hosts,
                method,
                path,
                client_auth,
                connection,
                chunked_trailer,
                pipelined,
            )| Case {
                connect_host,
                sni,
                h2,
                absolute,
                hosts,
                method,
                path,
                client_auth,
                connection,
                chunked_trailer,
                pipelined,
            },
        )
}

fn path_text(c: &Case) -> String {
    let segs: Vec<&str> = c.path.iter().map(|&i| SEGMENTS[i]).collect();
    format!("/{}", segs.join("/"))
}

fn under_api(p: &str) -> bool {
    under(p, "/api")
}

struct Env {
    proxy: Running,
    port: u16,
    log: Log,
}

async fn run_case(env: &Env, c: &Case) -> Result<String, String> {
    let port = env.port;
    let authority = format!("{}:{port}", HOSTS[c.connect_host]);
    let (s, resp) = connect(env.proxy.addr, &authority).await;
    let mut seen_by_agent = resp.head.clone() + &resp.body;
    if resp.status != 200 {
        return Ok(seen_by_agent);
    }
    let alpn: &[&[u8]] = if c.h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let sni = HOSTS[c.sni];
    if sni.is_empty() || rustls_pki_types::ServerName::try_from(sni.to_owned()).is_err() {
        return Ok(seen_by_agent);
    }
    let Ok(mut tls) = tls(s, sni, alpn, std::slice::from_ref(&env.proxy.ca)).await else {
        return Ok(seen_by_agent);
    };
    let method = METHODS[c.method];
    let path = path_text(c);
    let host_of = |i: usize| format!("{}:{port}", HOSTS[i]);
    if c.h2 {
        let Ok((mut sender, conn)) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await
        else {
            return Ok(seen_by_agent);
        };
        tokio::spawn(conn);
        let auth = c.absolute.map_or(authority.clone(), host_of);
        let Ok(mut req) = Request::builder()
            .method(method)
            .uri(format!("https://{auth}{path}"))
            .body(Full::new(Bytes::new()))
        else {
            return Ok(seen_by_agent);
        };
        for &h in &c.hosts {
            if let Ok(v) = http::HeaderValue::from_str(&host_of(h)) {
                req.headers_mut().append(http::header::HOST, v);
            }
        }
        if c.client_auth {
            req.headers_mut().insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_static(CLIENT_AUTH),
            );
        }
        if sender.ready().await.is_ok()
            && let Ok(Ok(resp)) =
                tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await
        {
            seen_by_agent.push_str(&format!("{:?}", resp.headers()));
            if let Ok(b) = resp.into_body().collect().await {
                seen_by_agent.push_str(&String::from_utf8_lossy(&b.to_bytes()));
            }
        }
        return Ok(seen_by_agent);
    }
    let target = match c.absolute {
        Some(a) => format!("https://{}{path}", host_of(a)),
        None => path,
    };
    let mut one = format!("{method} {target} HTTP/1.1\r\n");
    for &h in &c.hosts {
        one.push_str(&format!("Host: {}\r\n", host_of(h)));
    }
    if c.client_auth {
        one.push_str(&format!("Authorization: {CLIENT_AUTH}\r\n"));
    }
    if !CONNECTION[c.connection].is_empty() {
        one.push_str(&format!("Connection: {}\r\n", CONNECTION[c.connection]));
    }
    if c.chunked_trailer {
        one.push_str("Transfer-Encoding: chunked\r\nTrailer: Authorization\r\n\r\n3\r\nabc\r\n0\r\nAuthorization: Bearer client-trailer\r\n\r\n");
    } else {
        one.push_str("\r\n");
    }
    let mut raw = one.clone();
    if c.pipelined {
        raw.push_str(&one);
    }
    raw.push_str(&format!(
        "GET /api/last HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    ));
    tls.write_all(raw.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    seen_by_agent.push_str(&String::from_utf8_lossy(&out));
    Ok(seen_by_agent)
}

fn judge(c: &Case, seen: &[Seen], agent_saw: &str) -> Result<(), TestCaseError> {
    if agent_saw.contains(TOKEN) {
        return Err(TestCaseError::fail("the token came back to the agent"));
    }
    let bearer = format!("Bearer {TOKEN}");
    for s in seen {
        if s.trailer_auth {
            return Err(TestCaseError::fail(format!(
                "an Authorization trailer reached the upstream: {s:?}"
            )));
        }
        let carried = s.auth.iter().any(|a| a.contains(TOKEN));
        if !carried {
            continue;
        }
        if s.auth.len() != 1 || s.auth[0] != bearer {
            return Err(TestCaseError::fail(format!(
                "credential merged or duplicated: {s:?}"
            )));
        }
        if s.sni != "alpha.test" {
            return Err(TestCaseError::fail(format!("token sent to {s:?}")));
        }
        if !matches!(s.method.as_str(), "GET" | "POST") {
            return Err(TestCaseError::fail(format!("token sent with {s:?}")));
        }
        if let Some(r) = readings(&s.path).into_iter().find(|r| !under_api(r)) {
            return Err(TestCaseError::fail(format!(
                "token sent for {s:?}, read as {r}"
            )));
        }
        let _ = c;
    }
    Ok(())
}

#[test]
fn the_wire_never_carries_the_token_anywhere_else() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let w = World::new();
    let log: Log = Arc::default();
    let env = rt.block_on(async {
        let addr = upstream(&w, log.clone()).await;
        let port = addr.port();
        let yaml = format!(
            "{}resolve: {{ alpha.test: 127.0.0.1, evil.test: 127.0.0.1 }}\nendpoints:\n  - {{ name: alpha, host: alpha.test, port: {port}, path: /api, methods: [GET, POST], provider: test-static }}\negress: {{ default: deny, allow: [\"evil.test:*\"], allow_private_addresses: true }}\n",
            w.base_yaml()
        );
        Env { proxy: start(&yaml, w.dir.path()).await, port, log }
    });
    let budget = Duration::from_secs(
        std::env::var("LANYARD_WIRE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let seed = oracle::seed("LANYARD_WIRE_SEED", "wire attacks");
    let start = Instant::now();
    let (mut ran, mut injected, mut batch) = (0u64, 0u64, 0u64);
    while start.elapsed() < budget {
        let mut runner = oracle::runner(seed, batch, 100);
        let counts = std::cell::Cell::new((0u64, 0u64));
        let result = runner.run(&case(), |c| {
            env.log.lock().unwrap().clear();
            let agent_saw = rt
                .block_on(run_case(&env, &c))
                .map_err(TestCaseError::fail)?;
            let seen = env.log.lock().unwrap().clone();
            let (r, i) = counts.get();
            // The closing `GET /api/last` always carries it; count the case's own.
            let hit = seen
                .iter()
                .any(|s| s.path != "/api/last" && s.auth.iter().any(|a| a.contains(TOKEN)));
            counts.set((r + 1, i + u64::from(hit)));
            judge(&c, &seen, &agent_saw)
        });
        if let Err(e) = result {
            panic!("seed {seed:016x}, batch {batch}: {e}");
        }
        let (r, i) = counts.get();
        ran += r;
        injected += i;
        batch += 1;
    }
    eprintln!(
        "wire attacks: {ran} cases in {:.1} s, {injected} delivered the token",
        start.elapsed().as_secs_f64()
    );
    assert!(ran >= 200, "only {ran} wire cases ran");
    assert!(
        injected * 20 >= ran,
        "only {injected} of {ran} cases reached the endpoint with its token"
    );
}
