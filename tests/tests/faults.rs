//! Faults on the data path, with every crate logging at TRACE: an upstream
//! that resets in the middle of a response body, and clients that abort in
//! the middle of an upload. Each ends the affected exchange with an error
//! the client can see (never a hang), frees what it held, and Lanyard serves
//! the next request; no log line carries the credential.
//!
//! Elsewhere: an upstream closing idle connections (h1 and h2) is
//! `intercept.rs::a_closed_upstream_connection_is_redialled_on_demand`;
//! issuer and Workload API faults are in `grants.rs`; descriptor exhaustion
//! and an unwritable CA directory in `supervisor/tests/faults.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use lanyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const H1: &[u8] = b"http/1.1";
const H2: &[u8] = b"h2";

type Channel = http_body_util::channel::Channel<bytes::Bytes, std::io::Error>;

fn logs() {
    lanyard_tests::logs::trace();
}

fn assert_no_token_logged() {
    lanyard_tests::logs::assert_never_logged(&[TOKEN]);
}

/// An HTTPS upstream for alpha.test that, while `reset` is set, answers with
/// a 1 MB Content-Length, sends 64 KiB of it and, once the test says the
/// client has the response head (`go`), resets the connection.
struct Resetting {
    addr: std::net::SocketAddr,
    reset: Arc<AtomicBool>,
    injected: Arc<AtomicUsize>,
    go: Arc<tokio::sync::Notify>,
}

async fn resetting(w: &World) -> Resetting {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(w.leaf(&["alpha.test"]).server_config(&[H1]).unwrap());
    let reset = Arc::new(AtomicBool::new(true));
    let injected = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(tokio::sync::Notify::new());
    let (r, i, g) = (reset.clone(), injected.clone(), go.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, r, i, g) = (acceptor.clone(), r.clone(), i.clone(), g.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    if String::from_utf8_lossy(&head).contains(&format!("Bearer {TOKEN}")) {
                        i.fetch_add(1, Ordering::SeqCst);
                    }
                    if r.load(Ordering::SeqCst) {
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                            .await;
                        let _ = tls.write_all(&vec![b'x'; 65536]).await;
                        let _ = tls.flush().await;
                        // Bounded: a test that never says go still ends.
                        let _ = tokio::time::timeout(Duration::from_secs(10), g.notified()).await;
                        let (tcp, _) = tls.into_inner();
                        // Linger 0: the close is a reset, not a FIN. Nothing
                        // is left to send, so the drop does not block.
                        #[allow(deprecated, reason = "zero linger never blocks")]
                        let _ = tcp.set_linger(Some(Duration::ZERO));
                        return;
                    }
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    Resetting {
        addr,
        reset,
        injected,
        go,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_mid_body_ends_that_response_only() {
    logs();
    let w = World::new();
    let up = resetting(&w).await;
    let port = up.addr.port();
    let p = start(&w.alpha_yaml(port, ""), w.dir.path()).await;
    let auth = format!("alpha.test:{port}");
    for h2 in [false, true] {
        up.reset.store(true, Ordering::SeqCst);
        let alpn: &[&[u8]] = if h2 { &[H2] } else { &[H1] };
        let tls = intercepted(&p, &auth, "alpha.test", alpn).await;
        let mut c = Client::new(tls, h2).await;
        let uri = if h2 {
            format!("https://{auth}/big")
        } else {
            "/big".into()
        };
        let resp = c.send_raw(get(&uri, &auth)).await;
        if resp.status() != http::StatusCode::OK {
            panic!("h2={h2}: {:?}", collect(resp).await);
        }
        // The head has crossed Lanyard: now the upstream resets mid-body.
        up.go.notify_one();
        // The body fails (it does not hang, and it is not passed off as complete).
        let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
            .await
            .expect("a reset upstream left the client hanging");
        assert!(
            body.is_err(),
            "h2={h2}: a truncated body was delivered as complete"
        );

        // The next request is served: on the same HTTP/2 connection, or on a
        // new tunnel for HTTP/1.1 (whose connection died with the body).
        up.reset.store(false, Ordering::SeqCst);
        let mut c = if h2 {
            c
        } else {
            Client::new(intercepted(&p, &auth, "alpha.test", alpn).await, false).await
        };
        let r = c.send(get(&uri, &auth)).await;
        assert_eq!(r.status, http::StatusCode::OK, "h2={h2}: {}", r.body);
        assert_eq!(r.body, "ok");
    }
    assert_eq!(up.injected.load(Ordering::SeqCst), 4);
    p.shutdown().await;
    assert_no_token_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_aborting_mid_upload_free_their_slots() {
    logs();
    let w = World::new();
    let up = w.upstream("alpha", &["alpha.test"], &[H1, H2]).await;
    let port = up.addr.port();
    // Four connection slots: a single leaked one per abort would exhaust them.
    let p = start(
        &w.alpha_yaml(port, "limits: { max_connections: 4 }\n"),
        w.dir.path(),
    )
    .await;
    let auth = format!("alpha.test:{port}");
    for i in 0..20 {
        let h2 = i % 2 == 1;
        let alpn: &[&[u8]] = if h2 { &[H2] } else { &[H1] };
        let mut tls = intercepted(&p, &auth, "alpha.test", alpn).await;
        if h2 {
            // A body that promises 10 MB and stops after 100 KB.
            let (mut s, conn) = hyper::client::conn::http2::handshake::<_, _, Channel>(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tls),
            )
            .await
            .unwrap();
            let conn = tokio::spawn(conn);
            let (mut tx, body) = Channel::new(4);
            let req = http::Request::post(format!("https://{auth}/upload"))
                .header("content-length", "10000000")
                .body(body)
                .unwrap();
            s.ready().await.unwrap();
            let pending = tokio::spawn(s.send_request(req));
            tx.send_data(bytes::Bytes::from(vec![b'u'; 100_000]))
                .await
                .unwrap();
            tx.abort(std::io::Error::other("client gave up"));
            let _ = tokio::time::timeout(Duration::from_secs(10), pending)
                .await
                .expect("an aborted h2 upload hung");
            conn.abort();
        } else {
            let head = format!(
                "POST /upload HTTP/1.1\r\nHost: {auth}\r\nContent-Length: 10000000\r\n\r\n"
            );
            // The upstream may answer (and Lanyard close) before the body is
            // all sent: a broken pipe here is part of the fault, not a failure.
            let _ = tls.write_all(head.as_bytes()).await;
            let _ = tls.write_all(&vec![b'u'; 100_000]).await;
            drop(tls);
        }
    }
    // Every slot is free again: four clients at once are all served.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
        clients.push(Client::new(tls, false).await);
    }
    for c in &mut clients {
        let r = tokio::time::timeout(Duration::from_secs(10), c.send(get("/after", &auth)))
            .await
            .expect("a connection slot leaked");
        assert_eq!(
            auth_lines(&r.body),
            vec![format!("Bearer {TOKEN}").as_str()]
        );
    }
    drop(clients);
    p.shutdown().await;
    assert_no_token_logged();
}
