//! Invariant 4: the token never appears in a log line or an error body, even
//! with every crate (hyper, h2, rustls, ours) logging at TRACE.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use lanyard_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_never_reaches_logs_or_error_bodies() {
    let logs = Capture::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let w = World::new();
    let tls_up = w
        .upstream("alpha", &["alpha.test"], &[b"h2", b"http/1.1"])
        .await;
    let plain_up = lanyard_examples::echo::start(loopback(), "plain", None)
        .await
        .unwrap();
    let stranger = lanyard_examples::pki::Pki::new("untrusted").unwrap();
    let bad_up = lanyard_examples::echo::start(
        loopback(),
        "bad",
        Some(
            stranger
                .leaf(&["bad.test"])
                .unwrap()
                .server_config(&[b"http/1.1"])
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    let (tp, pp, bp) = (tls_up.addr.port(), plain_up.addr.port(), bad_up.addr.port());
    let yaml = format!(
        "{}resolve: {{ alpha.test: 127.0.0.1, plain.test: 127.0.0.1, bad.test: 127.0.0.1 }}\nendpoints:\n  - {{ name: alpha, host: alpha.test, port: {tp}, provider: test-static }}\n  - {{ name: plain, host: plain.test, port: {pp}, provider: test-static }}\n  - {{ name: bad, host: bad.test, port: {bp}, provider: test-static }}\n  - {{ name: custom, host: alpha.test, port: {tp}, path: /custom, header: X-Api-Key, provider: test-static }}\n",
        w.base_yaml()
    );
    let p = start(&yaml, w.dir.path()).await;
    let mut bodies = Vec::new();

    for h2 in [false, true] {
        let auth = format!("alpha.test:{tp}");
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tls = intercepted(&p, &auth, "alpha.test", alpn).await;
        let mut c = Client::new(tls, h2).await;
        for path in ["/x", "/custom/y"] {
            let uri = if h2 {
                format!("https://{auth}{path}")
            } else {
                path.to_owned()
            };
            let mut req = Request::get(uri);
            if !h2 {
                req = req.header("host", &auth);
            }
            let r = c.send(req.body(Full::new(Bytes::new())).unwrap()).await;
            assert_eq!(r.status, 200);
            // The upstream did get it: the check below is meaningful.
            assert!(r.body.contains(TOKEN) || path == "/custom/y", "{}", r.body);
        }
        // Misdirected.
        let uri = if h2 {
            "https://beta.test/x".to_owned()
        } else {
            "/x".to_owned()
        };
        let r = c
            .send(
                Request::get(uri)
                    .header("host", "beta.test")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, 421);
        bodies.push(r.body);
    }
    // Plain HTTP with injection, and an upstream with a bad certificate.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        format!("GET http://plain.test:{pp}/ HTTP/1.1\r\nHost: plain.test:{pp}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let r = read_response(&mut s).await;
    assert!(r.body.contains(TOKEN));
    let tls = intercepted(&p, &format!("bad.test:{bp}"), "bad.test", &[b"http/1.1"]).await;
    let mut c = Client::new(tls, false).await;
    let r = c.send(get("/", &format!("bad.test:{bp}"))).await;
    assert_eq!(r.status, 502);
    bodies.push(r.body);
    // Token file replaced with something invalid: the 503 must not echo it.
    std::fs::write(&w.token_file, format!("{TOKEN} with spaces")).unwrap();
    let tls = intercepted(
        &p,
        &format!("alpha.test:{tp}"),
        "alpha.test",
        &[b"http/1.1"],
    )
    .await;
    let mut c = Client::new(tls, false).await;
    let r = c.send(get("/x", &format!("alpha.test:{tp}"))).await;
    assert_eq!(r.status, 503);
    bodies.push(r.body);
    p.shutdown().await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("request"), "no request logs captured at all");
    assert!(
        text.lines().count() > 50,
        "suspiciously few log lines: {}",
        text.lines().count()
    );
    for (i, line) in text.lines().enumerate() {
        assert!(
            !line.contains(TOKEN),
            "log line {i} leaks the token: {line}"
        );
    }
    for b in &bodies {
        assert!(!b.contains(TOKEN), "error body leaks the token: {b}");
    }
}
