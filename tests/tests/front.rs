//! The front end: egress policy and blind tunnels, plain-HTTP forwarding with
//! the cleartext rule, bad clients, and graceful shutdown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use std::time::Duration;

use lanyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const H1: &[u8] = b"http/1.1";

/// Reads until EOF or `limit` (a bound on a hung proxy, not a synchronisation point).
async fn read_all(s: &mut (impl tokio::io::AsyncRead + Unpin), limit: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out))
        .await
        .expect("proxy never closed the connection");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn connect_to_denied_host_is_403_naming_the_rule() {
    let w = World::new();
    let yaml = format!(
        "{}egress: {{ default: deny, allow: [\"*.pypi.org:443\"], deny: [\"evil.pypi.org:*\"] }}\n",
        w.base_yaml()
    );
    let p = start(&yaml, w.dir.path()).await;
    let (mut s, r) = connect(p.addr, "example.test:443").await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body
            .contains("CONNECT to example.test:443 denied by egress.default: deny"),
        "{}",
        r.body
    );
    // Nothing was tunnelled: the proxy keeps speaking HTTP on this connection.
    s.write_all(b"CONNECT evil.pypi.org:443 HTTP/1.1\r\nHost: evil.pypi.org:443\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 403);
    assert!(
        r.body.contains("egress.deny[0] 'evil.pypi.org:*'"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn allowed_unmatched_host_is_a_blind_tunnel_without_injection() {
    let w = World::new();
    let up = w.upstream("tunnelled", &["tunnel.test"], &[H1]).await;
    let yaml = format!(
        "{}resolve: {{ tunnel.test: 127.0.0.1 }}\negress: {{ default: deny, allow: [\"tunnel.test:{}\"] }}\n",
        w.base_yaml(),
        up.addr.port()
    );
    let p = start(&yaml, w.dir.path()).await;
    let auth = format!("tunnel.test:{}", up.addr.port());
    let (s, r) = connect(p.addr, &auth).await;
    assert_eq!(r.status, 200);
    // The agent's TLS reaches the real server: it verifies with the upstream CA, not the sandbox CA.
    let upstream_root = w.pki.ca_der().clone();
    let tls = tls(s, "tunnel.test", &[H1], &[upstream_root])
        .await
        .expect("end-to-end TLS through the tunnel");
    let mut c = Client::new(tls, false).await;
    let r = c.send(get("/", &auth)).await;
    assert_eq!(auth_lines(&r.body), vec![CLIENT_AUTH]);
}

#[tokio::test]
async fn unpinned_private_destinations_are_refused() {
    let w = World::new();
    let up = w.upstream("local", &["localhost"], &[H1]).await;
    let yaml = format!("{}egress: {{ default: allow }}\n", w.base_yaml());
    let p = start(&yaml, w.dir.path()).await;
    for auth in [
        format!("127.0.0.1:{}", up.addr.port()),
        format!("localhost:{}", up.addr.port()),
    ] {
        let (_s, r) = connect(p.addr, &auth).await;
        assert_eq!(r.status, 403, "{auth}: {r:?}");
        assert!(r.body.contains("non-public"), "{}", r.body);
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn plain_http_injects_only_to_loopback() {
    let w = World::new();
    let up = lanyard_examples::echo::start(loopback(), "plain", None)
        .await
        .unwrap();
    let port = up.addr.port();
    let yaml = format!(
        "{}resolve: {{ plain.test: 127.0.0.1, remote.test: 0.0.0.0 }}\nendpoints:\n  - {{ name: plain, host: plain.test, port: {port}, provider: test-static }}\n  - {{ name: remote, host: remote.test, port: {port}, provider: test-static }}\negress: {{ default: allow }}\n",
        w.base_yaml()
    );
    let p = start(&yaml, w.dir.path()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let req = format!(
        "GET http://plain.test:{port}/x HTTP/1.1\r\nHost: plain.test:{port}\r\nAuthorization: {CLIENT_AUTH}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        auth_lines(&r.body),
        vec![format!("Bearer {TOKEN}").as_str()]
    );
    // Keep-alive on the same client connection.
    s.write_all(req.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s).await.status, 200);

    // A non-loopback upstream over cleartext is refused before any connection is made.
    // 0.0.0.0 is not a loopback address, yet a connection to it stays on this host: if the
    // check ever regressed, the request would reach the local echo (and nothing else).
    let hits = up.hits();
    let req =
        format!("GET http://remote.test:{port}/x HTTP/1.1\r\nHost: remote.test:{port}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body
            .contains("resolves to 0.0.0.0, which is not loopback"),
        "{}",
        r.body
    );
    assert_eq!(
        up.hits(),
        hits,
        "a cleartext request to a non-loopback address went out"
    );

    // https:// in absolute form is not a thing a proxy should re-originate silently.
    s.write_all(b"GET https://plain.test/ HTTP/1.1\r\nHost: plain.test\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("through CONNECT"), "{}", r.body);

    // Host disagreeing with the absolute-form authority of an endpoint: 421, nothing sent.
    let hits = up.hits();
    let req = format!("GET http://plain.test:{port}/x HTTP/1.1\r\nHost: other.test\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 421, "{r:?}");
    assert_eq!(up.hits(), hits);
}

#[tokio::test]
async fn bad_clients_get_clear_errors_and_others_keep_working() {
    let w = World::new();
    let up = w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let yaml = w.alpha_yaml(
        port,
        "limits: { header_read_timeout: 1s, max_header_bytes: 16384, max_request_line: 1024 }\n",
    );
    let p = start(&yaml, w.dir.path()).await;
    let auth = format!("alpha.test:{port}");

    // A slow client that never finishes its head holds no one else up...
    let mut slow = TcpStream::connect(p.addr).await.unwrap();
    slow.write_all(b"CONNECT alpha.test:").await.unwrap();

    // ...a malformed request line gets 400...
    let mut bad = TcpStream::connect(p.addr).await.unwrap();
    bad.write_all(b"GARBAGE\x01 / HTTP/9\r\n\r\n")
        .await
        .unwrap();
    let out = read_all(&mut bad, Duration::from_secs(10)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");

    // ...an oversized header block gets 431...
    let mut big = TcpStream::connect(p.addr).await.unwrap();
    let filler = "x".repeat(20_000);
    let req = format!("CONNECT {auth} HTTP/1.1\r\nHost: {auth}\r\nX-Filler: {filler}\r\n\r\n");
    let _ = big.write_all(req.as_bytes()).await;
    let out = read_all(&mut big, Duration::from_secs(10)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");

    // ...a too-long request target gets 414...
    let tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let mut c = Client::new(tls, false).await;
    let long = format!("/{}", "a".repeat(2000));
    let r = c.send(get(&long, &auth)).await;
    assert_eq!(r.status, http::StatusCode::URI_TOO_LONG);

    // ...and a well-behaved client is served meanwhile.
    let r = c.send(get("/ok", &auth)).await;
    assert_eq!(
        auth_lines(&r.body),
        vec![format!("Bearer {TOKEN}").as_str()]
    );

    // The slow client is cut off by header_read_timeout.
    let out = read_all(&mut slow, Duration::from_secs(20)).await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 408"), "{out:?}");
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let w = World::new();
    let up = w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let yaml = w.alpha_yaml(port, "limits: { drain_timeout: 30s }\n");
    let mut p = start(&yaml, w.dir.path()).await;
    let auth = format!("alpha.test:{port}");
    let mut tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let head = format!("POST /stream HTTP/1.1\r\nHost: {auth}\r\nContent-Length: 10\r\n\r\nhello");
    tls.write_all(head.as_bytes()).await.unwrap();
    // The upstream streams the echo back, so reading the status line proves the request is in flight.
    let mut first = [0u8; 12];
    tls.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    let addr = p.addr;
    let serve = p.begin_shutdown();
    // New clients are turned away once the listener closes.
    let mut refused = false;
    for _ in 0..1000 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused, "listener still accepting after shutdown");

    tls.write_all(b"world").await.unwrap();
    let rest = read_all(&mut tls, Duration::from_secs(20)).await;
    assert!(rest.ends_with("helloworld"), "{rest:?}");
    assert_eq!(
        serve.await.unwrap(),
        0,
        "a connection was cut although it finished in time"
    );
}

#[tokio::test]
async fn drain_deadline_cuts_stragglers() {
    let w = World::new();
    let up = w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let yaml = w.alpha_yaml(port, "limits: { drain_timeout: 200ms }\n");
    let p = start(&yaml, w.dir.path()).await;
    let auth = format!("alpha.test:{port}");
    let mut tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let head = format!("POST /stream HTTP/1.1\r\nHost: {auth}\r\nContent-Length: 10\r\n\r\nhello");
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    tls.read_exact(&mut first).await.unwrap();
    assert!(p.shutdown().await >= 1);
}

#[tokio::test]
async fn max_connections_queues_clients_instead_of_refusing_them() {
    let w = World::new();
    let up = w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let p = start(
        &w.alpha_yaml(port, "limits: { max_connections: 1 }\n"),
        w.dir.path(),
    )
    .await;
    let auth = format!("alpha.test:{port}");
    // The first client holds the only slot (an open tunnel).
    let (first, r) = connect(p.addr, &auth).await;
    assert_eq!(r.status, 200);
    // The second is accepted by the kernel but not served while the slot is taken.
    let second = queued_connect(p.addr, &auth, "an open tunnel").await;
    // As soon as the first leaves, the second is served.
    drop(first);
    served(second).await;
}

/// A CONNECT sent while every connection slot is taken: the kernel accepts
/// it, Lanyard must not serve it (checked for 300 ms).
async fn queued_connect(proxy: std::net::SocketAddr, auth: &str, holder: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {auth} HTTP/1.1\r\nHost: {auth}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), s.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "served beyond max_connections while {holder} held the slot"
    );
    s
}

/// The queued CONNECT is answered once the slot frees.
async fn served(mut s: TcpStream) {
    let r = tokio::time::timeout(Duration::from_secs(10), read_response(&mut s))
        .await
        .expect("queued client never served after the slot was freed");
    assert_eq!(r.status, 200);
}

/// An upgraded connection (a websocket) is still a client connection: it
/// keeps its place under max_connections after the 101, so upgrades cannot be
/// used to run more connections than the limit.
#[tokio::test]
async fn upgrades_keep_their_connection_slot() {
    let w = World::new();
    let up = w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let p = start(
        &w.alpha_yaml(port, "limits: { max_connections: 1 }\n"),
        w.dir.path(),
    )
    .await;
    let auth = format!("alpha.test:{port}");
    let mut ws = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    ws.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: {auth}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let r = read_response(&mut ws).await;
    assert_eq!(r.status, 101, "{r:?}");
    ws.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    ws.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"still here");
    // The websocket holds the only slot: a second client is not served.
    let second = queued_connect(p.addr, &auth, "a websocket").await;
    drop(ws);
    served(second).await;
}

/// A deny rule on an address holds however the address is spelled (decimal,
/// hex, short forms, octal: what the system resolver accepts) and whatever
/// name resolves to it; a CIDR block works the same. Nothing is dialled.
#[tokio::test]
async fn egress_deny_holds_for_every_spelling_and_every_name() {
    let w = World::new();
    let target = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = target.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while target.accept().await.is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    for deny in ["127.0.0.2:*", "127.0.0.0/30:*"] {
        let yaml = format!(
            "{}resolve: {{ sneaky.test: 127.0.0.2 }}\negress: {{ default: allow, allow_private_addresses: true, deny: [\"{deny}\"] }}\n",
            w.base_yaml()
        );
        let p = start(&yaml, w.dir.path()).await;
        for spelling in [
            "127.0.0.2",
            "2130706434",
            "0x7f000002",
            "127.2",
            "0177.0.0.2",
            "127.0.2",
            "sneaky.test",
        ] {
            let (_, r) = connect(p.addr, &format!("{spelling}:{port}")).await;
            assert_eq!(r.status, 403, "{deny} / {spelling}: {r:?}");
            assert!(
                r.body.contains("egress.deny[0]"),
                "{deny} / {spelling}: {}",
                r.body
            );
        }
        p.shutdown().await;
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a denied address was dialled"
    );
}

/// Heads are bounded exactly by `max_header_bytes` (hyper's read buffer
/// grows past it), upstream response heads too, and a malformed request
/// body is the client's fault (400), not the upstream's (502).
#[tokio::test]
async fn heads_and_bodies_are_judged_on_the_right_side() {
    let w = World::new();
    let plain = lanyard_examples::echo::start(loopback(), "plain", None)
        .await
        .unwrap();
    let port = plain.addr.port();
    let yaml = format!(
        "{}egress: {{ default: allow, allow_private_addresses: true }}\nlimits: {{ max_header_bytes: 16384 }}\n",
        w.base_yaml()
    );
    let p = start(&yaml, w.dir.path()).await;
    let send = |raw: Vec<u8>| async move {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(&raw).await.unwrap();
        read_response(&mut s).await
    };
    let head = |pad: usize| {
        format!(
            "GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(pad)
        )
        .into_bytes()
    };
    assert_eq!(send(head(15_000)).await.status, 200);
    for pad in [16_500, 20_000, 30_000] {
        let r = send(head(pad)).await;
        assert_eq!(
            r.status, 431,
            "a {pad}-byte header passed a 16384-byte limit: {r:?}"
        );
    }
    let r = send(
        format!(
            "POST http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
        )
        .into_bytes(),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("request body"), "{}", r.body);
    let r = send(
        format!("GET http://127.0.0.1:{port}/bighead HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n")
            .into_bytes(),
    )
    .await;
    assert_eq!(
        r.status, 502,
        "a 20 KB response head passed a 16384-byte limit: {r:?}"
    );
    p.shutdown().await;
}

/// A listener whose accept queue is full: SYNs to it are dropped, so a
/// connection attempt hangs, as to a blackholed address. Stays on loopback.
async fn blackhole(ip: &str, port: u16) -> (tokio::net::TcpListener, TcpStream) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{ip}:{port}").parse().unwrap()).unwrap();
    let l = sock.listen(0).unwrap();
    let filler = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    (l, filler)
}

/// Connecting races the addresses (RFC 8305): a dead first address costs
/// 250 ms, not the whole connect timeout; and DNS plus every attempt share
/// one deadline instead of each address getting the full timeout.
#[tokio::test]
async fn connecting_races_addresses_under_one_deadline() {
    let w = World::new();
    let good = w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = good.addr.port();
    let _holes = (
        blackhole("127.0.0.3", port).await,
        blackhole("127.0.0.4", port).await,
        blackhole("127.0.0.5", port).await,
    );
    let yaml = format!(
        "{}resolve: {{ multi.test: [127.0.0.3, 127.0.0.1], dead.test: [127.0.0.3, 127.0.0.4, 127.0.0.5] }}\negress: {{ default: allow }}\nlimits: {{ connect_timeout: 1s }}\n",
        w.base_yaml()
    );
    let p = start(&yaml, w.dir.path()).await;
    let started = std::time::Instant::now();
    let (_, r) = connect(p.addr, &format!("multi.test:{port}")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the live second address waited for the dead first one: {:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    let (_, r) = connect(p.addr, &format!("dead.test:{port}")).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "three dead addresses took {:?} against a 1 s connect timeout",
        started.elapsed()
    );
}
