//! Request smuggling vectors (RFC 9112) on every HTTP/1.1 front end: the
//! proxy's own listener (absolute-form `http://` requests) and an intercepted
//! CONNECT tunnel (origin-form requests inside TLS). The transparent front
//! end runs the same `accept::serve_http1` server, so it is covered by the
//! first. Each vector is followed, in the same write, by a second request a
//! desynchronised peer would take for a new one: it must never reach the
//! upstream, the vector must get the status RFC 9112 names, the connection
//! must close after it, and a well-behaved client is served meanwhile.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use std::time::Duration;

use lanyard_tests::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const H1: &[u8] = b"http/1.1";

/// One vector: the head lines after the request line and Host (each with
/// its own line ending), the body bytes, and the status RFC 9112 requires.
struct Vector {
    name: &'static str,
    head: &'static str,
    body: &'static str,
    status: u16,
}

const VECTORS: &[Vector] = &[
    Vector {
        // §6.1: MAY reject or read by Transfer-Encoding alone; MUST close
        // either way. hyper reads it by Transfer-Encoding, drops the
        // Content-Length (so the upstream gets one framing) and closes.
        name: "Content-Length with Transfer-Encoding",
        head: "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        body: "0\r\n\r\n",
        status: 200,
    },
    Vector {
        // §6.3 (5): differing Content-Length values are unrecoverable.
        name: "conflicting Content-Length",
        head: "Content-Length: 3\r\nContent-Length: 5\r\n",
        body: "abc",
        status: 400,
    },
    Vector {
        name: "Content-Length list with different values",
        head: "Content-Length: 3, 5\r\n",
        body: "abc",
        status: 400,
    },
    Vector {
        // §6.3 (4): chunked not last in a request.
        name: "chunked not the final coding",
        head: "Transfer-Encoding: chunked, gzip\r\n",
        body: "0\r\n\r\n",
        status: 400,
    },
    Vector {
        name: "a transfer coding without chunked",
        head: "Transfer-Encoding: gzip\r\n",
        body: "",
        status: 400,
    },
    Vector {
        // §5.2: a server rejects obs-fold with 400 or unfolds it.
        name: "obs-fold",
        head: "X-Folded: a\r\n b\r\n",
        body: "",
        status: 400,
    },
    Vector {
        // §2.2: a bare CR is invalid.
        name: "bare CR in a field",
        head: "X-Cr: a\rb\r\n",
        body: "",
        status: 400,
    },
    Vector {
        // §5.1: MUST reject whitespace between field name and colon with 400.
        name: "space before colon",
        head: "Transfer-Encoding : chunked\r\n",
        body: "0\r\n\r\n",
        status: 400,
    },
    Vector {
        name: "chunk size overflow",
        head: "Transfer-Encoding: chunked\r\n",
        body: "fffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
        status: 400,
    },
    Vector {
        name: "chunk size with junk",
        head: "Transfer-Encoding: chunked\r\n",
        body: "3x\r\nabc\r\n0\r\n\r\n",
        status: 400,
    },
];

/// Reads until EOF or `limit` (a bound on a hung proxy, not synchronisation).
async fn read_all<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(limit, s.read_to_end(&mut out))
        .await
        .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn status_of(out: &str) -> Option<u16> {
    out.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

async fn check<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    front: &str,
    v: &Vector,
    first: &str,
    second: &str,
) {
    let raw = format!("{first}{}\r\n{}{second}", v.head, v.body);
    s.write_all(raw.as_bytes()).await.unwrap();
    let (out, closed) = read_all(&mut s, Duration::from_secs(10)).await;
    assert_eq!(
        status_of(&out),
        Some(v.status),
        "{front}, {}: {out:?}",
        v.name
    );
    assert!(closed, "{front}, {}: the connection stayed open", v.name);
    assert_eq!(
        out.matches("HTTP/1.1 ").count(),
        1,
        "{front}, {}: a second response came back: {out:?}",
        v.name
    );
    if v.status != 200 {
        // Lanyard's own refusals never carry the credential (a forwarded
        // request's body is the echo upstream's, which shows it on purpose).
        assert!(!out.contains(TOKEN), "{front}, {}: {out:?}", v.name);
    }
}

#[tokio::test]
async fn smuggling_vectors_get_the_rfc_status_and_a_closed_connection() {
    let w = World::new();
    let up = w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let plain = lanyard_examples::echo::start(loopback(), "plain", None)
        .await
        .unwrap();
    let (port, pport) = (up.addr.port(), plain.addr.port());
    let yaml = w.alpha_yaml(
        port,
        &format!(
            "  - {{ name: local, host: 127.0.0.1, port: {pport}, provider: test-static }}\negress: {{ default: deny }}\n"
        ),
    );
    let p = start(&yaml, w.dir.path()).await;
    let auth = format!("alpha.test:{port}");

    for v in VECTORS {
        // The proxy's own listener, absolute-form to a loopback endpoint.
        let s = TcpStream::connect(p.addr).await.unwrap();
        let first =
            format!("POST http://127.0.0.1:{pport}/v HTTP/1.1\r\nHost: 127.0.0.1:{pport}\r\n");
        let second = format!(
            "GET http://127.0.0.1:{pport}/smuggled HTTP/1.1\r\nHost: 127.0.0.1:{pport}\r\n\r\n"
        );
        check(s, "explicit listener", v, &first, &second).await;

        // Inside an intercepted tunnel.
        let tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
        let first = format!("POST /v HTTP/1.1\r\nHost: {auth}\r\n");
        let second = format!("GET /smuggled HTTP/1.1\r\nHost: {auth}\r\n\r\n");
        check(tls, "intercepted tunnel", v, &first, &second).await;
    }
    // Only the vectors answered 200 reached an upstream, once each: never
    // the request smuggled behind them.
    let forwarded = VECTORS.iter().filter(|v| v.status == 200).count();
    assert_eq!(
        up.hits(),
        forwarded,
        "an upstream saw a refused vector or a smuggled request"
    );
    assert_eq!(
        plain.hits(),
        forwarded,
        "an upstream saw a refused vector or a smuggled request"
    );

    // Other clients are unaffected.
    let tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let mut c = Client::new(tls, false).await;
    let r = c.send(get("/ok", &auth)).await;
    assert_eq!(
        auth_lines(&r.body),
        vec![format!("Bearer {TOKEN}").as_str()]
    );
    p.shutdown().await;
}

#[tokio::test]
async fn a_bare_lf_request_is_read_but_forwarded_with_crlf() {
    // §2.2: a recipient MAY accept a bare LF as a line terminator. Lanyard
    // (hyper) does; what it forwards is re-serialised with CRLF, so the
    // upstream and Lanyard cannot disagree about where the head ends.
    let w = World::new();
    let up = w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let p = start(&w.alpha_yaml(port, ""), w.dir.path()).await;
    let auth = format!("alpha.test:{port}");
    let mut tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let raw = format!("GET /lf HTTP/1.1\nHost: {auth}\nConnection: close\n\n");
    tls.write_all(raw.as_bytes()).await.unwrap();
    let (out, _) = read_all(&mut tls, Duration::from_secs(10)).await;
    assert_eq!(status_of(&out), Some(200), "{out:?}");
    assert!(
        out.contains(&format!("authorization: Bearer {TOKEN}")),
        "{out:?}"
    );
    assert_eq!(up.hits(), 1);
    p.shutdown().await;
}
