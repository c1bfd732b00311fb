//! CONNECT interception against in-process HTTPS upstreams: injection,
//! replacement, protocol selection (h1, h2, gRPC, upgrades) and refusal when
//! names disagree or the upstream cannot be verified.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use lanyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";

/// One upstream `alpha.test` behind an endpoint covering `/api` for GET and POST.
async fn alpha(world: &World, alpn: &[&[u8]]) -> (lanyard_examples::echo::Echo, Running) {
    let up = world.upstream("alpha", &["alpha.test"], alpn).await;
    let yaml = format!(
        "{}resolve: {{ alpha.test: 127.0.0.1 }}\nendpoints:\n  - {{ name: alpha, host: alpha.test, port: {}, path: /api, methods: [GET, POST], provider: test-static }}\n",
        world.base_yaml(),
        up.addr.port()
    );
    let p = start(&yaml, world.dir.path()).await;
    (up, p)
}

#[tokio::test]
async fn h1_match_replaces_client_authorization() {
    let w = World::new();
    let (up, p) = alpha(&w, &[H2, H1]).await;
    let auth = format!("alpha.test:{}", up.addr.port());
    let tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let mut c = Client::new(tls, false).await;
    let r = c.send(get("/api/items?q=1", &auth)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        auth_lines(&r.body),
        vec![format!("Bearer {TOKEN}").as_str()],
        "{}",
        r.body
    );
    assert!(r.body.contains("version: HTTP/1.1"));
    assert!(r.body.contains("path: /api/items?q=1"));
    // Keep-alive: a second request on the same tunnel reaches the same upstream.
    let r = c.send(get("/api/second", &auth)).await;
    assert_eq!(
        auth_lines(&r.body),
        vec![format!("Bearer {TOKEN}").as_str()]
    );
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn h2_match_injects_and_stays_h2() {
    let w = World::new();
    let (up, p) = alpha(&w, &[H2, H1]).await;
    let auth = format!("alpha.test:{}", up.addr.port());
    let tls = intercepted(&p, &auth, "alpha.test", &[H2, H1]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(H2));
    let mut c = Client::new(tls, true).await;
    let uri = format!("https://{auth}/api/x");
    let req = Request::get(&uri)
        .header("authorization", CLIENT_AUTH)
        .body(Full::new(Bytes::new()))
        .unwrap();
    // Multiplexed: several streams on one connection, all injected.
    let mut handles = Vec::new();
    for _ in 0..8 {
        let Client::H2(s) = &c else { unreachable!() };
        let mut s = s.clone();
        let req = Request::get(&uri).body(Full::new(Bytes::new())).unwrap();
        handles.push(tokio::spawn(async move {
            collect(s.send_request(req).await.unwrap()).await
        }));
    }
    for h in handles {
        let r = h.await.unwrap();
        assert_eq!(
            auth_lines(&r.body),
            vec![format!("Bearer {TOKEN}").as_str()]
        );
        assert!(r.body.contains("version: HTTP/2.0"), "{}", r.body);
    }
    let r = c.send(req).await;
    assert_eq!(
        auth_lines(&r.body),
        vec![format!("Bearer {TOKEN}").as_str()]
    );
}

#[tokio::test]
async fn h2_client_to_h1_only_upstream_is_translated() {
    let w = World::new();
    let (up, p) = alpha(&w, &[H1]).await;
    let auth = format!("alpha.test:{}", up.addr.port());
    // The upstream picks http/1.1, so that is all the agent is offered.
    let tls = intercepted(&p, &auth, "alpha.test", &[H2, H1]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(H1));
    let mut c = Client::new(tls, false).await;
    let r = c.send(get("/api", &auth)).await;
    assert_eq!(
        auth_lines(&r.body),
        vec![format!("Bearer {TOKEN}").as_str()]
    );
}

#[tokio::test]
async fn unmatched_path_or_method_keeps_the_clients_own_header() {
    let w = World::new();
    let (up, p) = alpha(&w, &[H1]).await;
    let auth = format!("alpha.test:{}", up.addr.port());
    let tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let mut c = Client::new(tls, false).await;
    // Outside the prefix: forwarded untouched, the agent's own credential intact.
    let r = c.send(get("/apix", &auth)).await;
    assert_eq!(auth_lines(&r.body), vec![CLIENT_AUTH], "{}", r.body);
    // Method not in the rule.
    let del = Request::delete("/api/x")
        .header("host", &auth)
        .header("authorization", CLIENT_AUTH)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.send(del).await;
    assert_eq!(auth_lines(&r.body), vec![CLIENT_AUTH]);
    // Dot segments are resolved before matching and the upstream gets the resolved path.
    let r = c.send(get("/api/../admin", &auth)).await;
    assert!(r.body.contains("path: /admin\n"), "{}", r.body);
    assert_eq!(auth_lines(&r.body), vec![CLIENT_AUTH]);
    let r = c.send(get("/api/%2e%2e/admin", &auth)).await;
    assert!(r.body.contains("path: /admin\n"), "{}", r.body);
    assert_eq!(auth_lines(&r.body), vec![CLIENT_AUTH]);
    // ...and traversal into the prefix gets injected where the upstream will look.
    let r = c.send(get("/other//../api/./x", &auth)).await;
    assert!(r.body.contains("path: /api/x\n"), "{}", r.body);
    assert_eq!(
        auth_lines(&r.body),
        vec![format!("Bearer {TOKEN}").as_str()]
    );
    // An encoded slash hiding a dot segment is refused outright.
    let hits = up.hits();
    let r = c.send(get("/api/..%2Fadmin", &auth)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("dot segment"), "{}", r.body);
    assert_eq!(up.hits(), hits);
}

#[tokio::test]
async fn several_client_headers_are_replaced_not_merged() {
    let w = World::new();
    let (up, p) = alpha(&w, &[H1]).await;
    let auth = format!("alpha.test:{}", up.addr.port());
    let mut tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    // Exact bytes: two Authorization fields and odd casing.
    let req = format!(
        "GET /api HTTP/1.1\r\nHost: {auth}\r\nAUTHORIZATION: Bearer one\r\nauthorization: Basic two\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("authorization: "))
        .collect();
    assert_eq!(
        lines,
        vec![format!("authorization: Bearer {TOKEN}").as_str()],
        "{out}"
    );
}

#[tokio::test]
async fn names_that_disagree_get_421_and_reach_nobody() {
    let w = World::new();
    let (up, p) = alpha(&w, &[H2, H1]).await;
    let auth = format!("alpha.test:{}", up.addr.port());

    // SNI names another host.
    let (s, resp) = connect(p.addr, &auth).await;
    assert_eq!(resp.status, 200);
    // The leaf is for the CONNECT authority, so the client must accept that name to talk at all.
    let mut store = rustls::RootCertStore::empty();
    store.add(p.ca.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![H1.to_vec()];
    cfg.dangerous()
        .set_certificate_verifier(std::sync::Arc::new(AcceptAny));
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(
            rustls_pki_types::ServerName::try_from("evil.test").unwrap(),
            s,
        )
        .await
        .unwrap();
    let mut c = Client::new(tls, false).await;
    let r = c.send(get("/api", &auth)).await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    assert!(r.body.contains("SNI 'evil.test'"), "{}", r.body);
    assert!(!r.body.contains(TOKEN));

    // Host header names another host.
    let tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let mut c = Client::new(tls, false).await;
    let r = c.send(get("/api", "beta.test")).await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    assert!(r.body.contains("Host header 'beta.test'"), "{}", r.body);
    // Same host, other port.
    let r = c.send(get("/api", "alpha.test:1")).await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);

    // HTTP/2 :authority names another host.
    let tls = intercepted(&p, &auth, "alpha.test", &[H2]).await;
    let mut c = Client::new(tls, true).await;
    let req = Request::get("https://beta.test/api")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    assert!(r.body.contains("request authority"), "{}", r.body);

    assert_eq!(up.hits(), 0, "a misdirected request reached the upstream");
}

#[derive(Debug)]
struct AcceptAny;
impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn canonical_names_match_whatever_the_spelling() {
    let w = World::new();
    let (up, p) = alpha(&w, &[H1]).await;
    let port = up.addr.port();
    let tls = intercepted(&p, &format!("ALPHA.Test.:{port}"), "alpha.test", &[H1]).await;
    let mut c = Client::new(tls, false).await;
    let r = c
        .send(get("/API/../api", &format!("Alpha.TEST:{port}")))
        .await;
    assert_eq!(
        auth_lines(&r.body),
        vec![format!("Bearer {TOKEN}").as_str()],
        "{}",
        r.body
    );
}

#[tokio::test]
async fn untrusted_or_wrong_name_upstream_gets_502_and_no_token() {
    let w = World::new();
    let stranger = lanyard_examples::pki::Pki::new("untrusted CA").unwrap();
    let untrusted = lanyard_examples::echo::start(
        loopback(),
        "untrusted",
        Some(
            stranger
                .leaf(&["bad.test"])
                .unwrap()
                .server_config(&[H1])
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    let wrong_name = w.upstream("wrong", &["someone-else.test"], &[H1]).await;
    let yaml = format!(
        "{}resolve: {{ bad.test: 127.0.0.1, wrong.test: 127.0.0.1 }}\nendpoints:\n  - {{ name: bad, host: bad.test, port: {}, provider: test-static }}\n  - {{ name: wrong, host: wrong.test, port: {}, provider: test-static }}\n",
        w.base_yaml(),
        untrusted.addr.port(),
        wrong_name.addr.port()
    );
    let p = start(&yaml, w.dir.path()).await;
    for (host, port, why) in [
        ("bad.test", untrusted.addr.port(), "UnknownIssuer"),
        (
            "wrong.test",
            wrong_name.addr.port(),
            "not valid for name \"wrong.test\"",
        ),
    ] {
        let auth = format!("{host}:{port}");
        let tls = intercepted(&p, &auth, host, &[H1]).await;
        let mut c = Client::new(tls, false).await;
        let r = c.send(get("/", &auth)).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{host}: {r:?}");
        assert!(r.body.contains("TLS handshake failed"), "{}", r.body);
        assert!(r.body.contains(why), "{}", r.body);
        assert_eq!(r.headers["lanyard-error"], "upstream");
    }
    assert_eq!(untrusted.hits() + wrong_name.hits(), 0);
}

#[tokio::test]
async fn grpc_over_h2_keeps_trailers() {
    let w = World::new();
    let (up, p) = alpha(&w, &[H2, H1]).await;
    let auth = format!("alpha.test:{}", up.addr.port());
    let tls = intercepted(&p, &auth, "alpha.test", &[H2]).await;
    let mut c = Client::new(tls, true).await;
    // A length-prefixed gRPC message: flag 0, 4-byte big-endian length, payload.
    let mut msg = vec![0u8, 0, 0, 0, 5];
    msg.extend_from_slice(b"hello");
    let req = Request::post(format!("https://{auth}/api/pkg.Service/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(msg.clone())))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_bytes(), &msg[..]);
    let trailers = r.trailers.expect("gRPC trailers relayed");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let w = World::new();
    let (up, p) = alpha(&w, &[H1]).await;
    let auth = format!("alpha.test:{}", up.addr.port());
    let mut tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let req = format!(
        "GET /api/ws HTTP/1.1\r\nHost: {auth}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let resp = read_response(&mut tls).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    assert!(
        resp.head
            .to_ascii_lowercase()
            .contains("upgrade: websocket"),
        "{}",
        resp.head
    );
    for msg in [&b"ping-1"[..], b"second frame of bytes"] {
        tls.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
}

#[tokio::test]
async fn request_bodies_stream_both_ways() {
    let w = World::new();
    let (up, p) = alpha(&w, &[H2, H1]).await;
    let auth = format!("alpha.test:{}", up.addr.port());
    for h2 in [false, true] {
        let tls = intercepted(&p, &auth, "alpha.test", if h2 { &[H2] } else { &[H1] }).await;
        let mut c = Client::new(tls, h2).await;
        let body = Bytes::from(vec![b'x'; 3 * 1024 * 1024]);
        let uri = if h2 {
            format!("https://{auth}/stream")
        } else {
            "/stream".to_owned()
        };
        let mut req = Request::builder().method(Method::POST).uri(uri);
        if !h2 {
            req = req.header("host", &auth);
        }
        let r = c.send(req.body(Full::new(body.clone())).unwrap()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.len(), body.len());
    }
}

#[tokio::test]
async fn missing_token_is_a_503_naming_endpoint_and_provider() {
    let w = World::new();
    let (up, p) = alpha(&w, &[H1]).await;
    std::fs::remove_file(&w.token_file).unwrap();
    let auth = format!("alpha.test:{}", up.addr.port());
    let tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let mut c = Client::new(tls, false).await;
    let r = c.send(get("/api", &auth)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.body.contains("endpoint 'alpha'") && r.body.contains("provider 'test-static'"),
        "{}",
        r.body
    );
    assert_eq!(up.hits(), 0, "request forwarded without its credential");
    // Unmatched paths on the same tunnel still work.
    let r = c.send(get("/public", &auth)).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// Methods and endpoints that hand the request back to the agent never carry
/// the credential: TRACE is not injected whatever `methods` says (and cannot
/// be listed), Max-Forwards is honoured, and a response header echoing the
/// credential is removed.
#[tokio::test]
async fn nothing_hands_the_credential_back() {
    let w = World::new();
    let up = w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let p = start(&w.alpha_yaml(port, ""), w.dir.path()).await;
    let auth = format!("alpha.test:{port}");
    let tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let mut c = Client::new(tls, false).await;
    let req = |m: Method, path: &str, max_fwd: Option<&str>| {
        let mut b = Request::builder().method(m).uri(path).header("host", &auth);
        if let Some(v) = max_fwd {
            b = b.header("max-forwards", v);
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    // TRACE goes through (the endpoint lists no methods) but uninjected.
    let r = c.send(req(Method::TRACE, "/x", None)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        auth_lines(&r.body),
        vec!["-"],
        "TRACE was injected: {}",
        r.body
    );
    assert!(!r.body.contains(TOKEN));
    // GET on the same path is injected, so the rule does match.
    let r = c.send(get("/x", &auth)).await;
    assert_eq!(
        auth_lines(&r.body),
        vec![format!("Bearer {TOKEN}").as_str()]
    );

    // Max-Forwards: 0 is answered by Lanyard, never forwarded.
    let before = up.hits();
    let r = c.send(req(Method::OPTIONS, "/x", Some("0"))).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(r.headers.contains_key("allow"), "{r:?}");
    let r = c.send(req(Method::TRACE, "/x", Some("0"))).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{r:?}");
    assert_eq!(up.hits(), before, "a Max-Forwards: 0 request was forwarded");
    // Otherwise it is decremented on the way.
    let r = c.send(req(Method::OPTIONS, "/x", Some("5"))).await;
    assert!(r.body.contains("max-forwards: 4"), "{}", r.body);
    let r = c.send(req(Method::OPTIONS, "/x", Some("five"))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");

    // An upstream reflecting the header gets it stripped from the response.
    let r = c.send(get("/reflect", &auth)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(
        !r.headers.contains_key("x-echo-authorization"),
        "the credential came back in a header: {:?}",
        r.headers
    );
    assert!(
        r.body.contains(&format!("Bearer {TOKEN}")),
        "the upstream did get the token (the body is the upstream's to send): {}",
        r.body
    );
}

#[tokio::test]
async fn trace_cannot_be_listed_for_injection() {
    let w = World::new();
    let yaml = format!(
        "{}endpoints:\n  - {{ name: a, host: alpha.test, methods: [GET, TRACE], provider: test-static }}\n",
        w.base_yaml()
    );
    let Err(e) = try_start(&yaml, w.dir.path()).await else {
        panic!("TRACE accepted in methods");
    };
    let e = e.to_string();
    assert!(
        e.contains("endpoints[0].methods[1]") && e.contains("TRACE"),
        "{e}"
    );
}

/// Path parameters and double encoding that a lenient server (Tomcat,
/// Jetty, Spring) resolves to a dot segment are refused before anything is
/// injected or sent.
#[tokio::test]
async fn lenient_dot_segments_are_refused_before_injection() {
    let w = World::new();
    let (up, p) = alpha(&w, &[H1]).await;
    let auth = format!("alpha.test:{}", up.addr.port());
    for path in [
        "/api/..;/admin",
        "/api/%2e%2e;/admin",
        "/api/%252e%252e/admin",
        "/api/.;/../admin",
    ] {
        let tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
        let mut c = Client::new(tls, false).await;
        let r = c.send(get(path, &auth)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {r:?}");
        assert!(r.body.contains("dot segment"), "{path}: {}", r.body);
    }
    assert_eq!(up.hits(), 0, "a refused path reached the upstream");
}

/// An h2 GET on an existing agent connection, with the 2xx or 5xx it got.
async fn h2_get(c: &mut Client, auth: &str, path: &str) -> Collected {
    c.send(
        Request::get(format!("https://{auth}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

/// The upstream closing its connections (idle close, restart) must not kill
/// the tunnel: the next request on the same agent connection is sent on a
/// new upstream connection, for an HTTP/2 and an HTTP/1.1 upstream alike
/// (the latter one that negotiates no ALPN, so the agent keeps its h2).
#[tokio::test]
async fn a_closed_upstream_connection_is_redialled_on_demand() {
    let w = World::new();
    for alpn in [&[H2][..], &[][..]] {
        let (up, p) = alpha(&w, alpn).await;
        let auth = format!("alpha.test:{}", up.addr.port());
        let tls = intercepted(&p, &auth, "alpha.test", &[H2]).await;
        let mut c = Client::new(tls, true).await;
        let r = h2_get(&mut c, &auth, "/api/1").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        up.drop_connections();
        for i in 2..5 {
            let r = h2_get(&mut c, &auth, &format!("/api/{i}")).await;
            assert_eq!(r.status, StatusCode::OK, "{alpn:?} request {i}: {}", r.body);
            assert_eq!(
                auth_lines(&r.body),
                vec![format!("Bearer {TOKEN}").as_str()]
            );
            up.drop_connections();
        }
        assert!(up.connections.load(std::sync::atomic::Ordering::SeqCst) >= 4);
        p.shutdown().await;
    }
}

/// While the upstream is down, requests get 502 (an HTTP/1.1 agent is told to
/// close, so it does not keep a dead tunnel); once it is back, the same
/// HTTP/2 agent connection recovers without reconnecting.
#[tokio::test]
async fn a_failed_redial_is_not_remembered_for_ever() {
    let w = World::new();
    let (up, p) = alpha(&w, &[]).await;
    let auth = format!("alpha.test:{}", up.addr.port());

    let tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let mut h1 = Client::new(tls, false).await;
    let tls = intercepted(&p, &auth, "alpha.test", &[H2]).await;
    let mut h2 = Client::new(tls, true).await;
    assert_eq!(h1.send(get("/api/a", &auth)).await.status, StatusCode::OK);
    assert_eq!(
        h2_get(&mut h2, &auth, "/api/a").await.status,
        StatusCode::OK
    );

    up.set_refusing(true);
    up.drop_connections();
    let r = h1.send(get("/api/b", &auth)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert_eq!(
        r.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "{r:?}"
    );
    let r = h2_get(&mut h2, &auth, "/api/b").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);

    up.set_refusing(false);
    let mut recovered = None;
    for _ in 0..100 {
        let r = h2_get(&mut h2, &auth, "/api/c").await;
        if r.status == StatusCode::OK {
            recovered = Some(r);
            break;
        }
        // Re-dials back off (100 ms doubling, capped at 5 s); poll with a bound.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = recovered.expect("the tunnel never recovered after the upstream came back");
    assert_eq!(
        auth_lines(&r.body),
        vec![format!("Bearer {TOKEN}").as_str()]
    );
}

/// An HTTP/2 agent's streams to an HTTP/1.1-only upstream are not serialised
/// onto one upstream connection: a response still streaming does not hold
/// up the next request.
#[tokio::test]
async fn h2_streams_to_an_h1_upstream_run_side_by_side() {
    let w = World::new();
    // No ALPN on the upstream: it speaks HTTP/1.1 while the agent keeps h2.
    let (up, p) = alpha(&w, &[]).await;
    let auth = format!("alpha.test:{}", up.addr.port());
    let tls = intercepted(&p, &auth, "alpha.test", &[H2]).await;
    let mut c = Client::new(tls, true).await;
    let held = c
        .send_raw(
            Request::get(format!("https://{auth}/api/hold"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(held.status(), StatusCode::OK);
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        h2_get(&mut c, &auth, "/api/next"),
    )
    .await
    .expect("the second stream waited behind the first one's upstream connection");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        auth_lines(&r.body),
        vec![format!("Bearer {TOKEN}").as_str()]
    );
    drop(held);
}

/// One HTTP/2 agent connection cannot open streams without bound (each one
/// held open pins buffers on both sides): the 101st waits until one of the
/// first 100 ends.
#[tokio::test]
async fn h2_agents_get_at_most_100_streams_at_once() {
    let w = World::new();
    let (up, p) = alpha(&w, &[H2]).await;
    let auth = format!("alpha.test:{}", up.addr.port());
    let tls = intercepted(&p, &auth, "alpha.test", &[H2]).await;
    let c = Client::new(tls, true).await;
    let Client::H2(sender) = c else {
        panic!("not h2")
    };
    let hold = || {
        let mut s = sender.clone();
        let uri = format!("https://{auth}/api/hold");
        async move {
            s.ready().await.unwrap();
            s.send_request(Request::get(uri).body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap()
        }
    };
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(hold().await);
    }
    let mut extra = tokio::spawn(hold());
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut extra).await;
    assert!(early.is_err(), "a 101st stream was opened");
    drop(held.pop());
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), extra)
        .await
        .expect("the 101st stream never started after one ended")
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Tunnels to one destination share its upstream pool: agents that open a
/// new CONNECT per request (curl in a loop, a fresh client per call) cost
/// one upstream TLS handshake in all, not one each, and every request
/// still carries the credential. An agent offering h2 gets a pool of its
/// own, since the upstream's choice of protocol holds for a pool's life.
#[tokio::test]
async fn sequential_tunnels_reuse_one_upstream_connection() {
    let w = World::new();
    let (up, p) = alpha(&w, &[H2, H1]).await;
    let auth = format!("alpha.test:{}", up.addr.port());
    for i in 0..5 {
        let tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
        let mut c = Client::new(tls, false).await;
        let r = c.send(get(&format!("/api/{i}"), &auth)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(
            auth_lines(&r.body),
            vec![format!("Bearer {TOKEN}").as_str()]
        );
        assert!(r.body.contains("HTTP/1.1"), "{}", r.body);
    }
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    for i in 0..3 {
        let tls = intercepted(&p, &auth, "alpha.test", &[H2, H1]).await;
        let mut c = Client::new(tls, true).await;
        let r = h2_get(&mut c, &auth, &format!("/api/h2/{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(r.body.contains("HTTP/2"), "{}", r.body);
    }
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one more connection, for the h2 pool"
    );
    // The pool outlives a closed upstream connection: the next tunnel's
    // request is re-dialled, not refused.
    up.drop_connections();
    let tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let mut c = Client::new(tls, false).await;
    let r = c.send(get("/api/after", &auth)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    p.shutdown().await;
}

/// Statements narrow what the credential may be used for: an allowed call
/// gets the token and reaches the upstream; anything else is refused with
/// 403 naming the endpoint and the method and path, and reaches nobody.
#[tokio::test]
async fn statements_allow_only_what_they_name() {
    let w = World::new();
    let up = w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let yaml = format!(
        "{}resolve: {{ alpha.test: 127.0.0.1 }}\nendpoints:\n  - name: alpha\n    host: alpha.test\n    port: {}\n    provider: test-static\n    statements:\n      - {{ actions: [GET], resources: [\"/repos/acme/widgets/issues/**\"] }}\n      - {{ actions: [POST], resources: [\"/repos/acme/widgets/issues/*/comments\"] }}\n      - {{ effect: deny, actions: [\"*\"], resources: [\"/repos/acme/widgets/issues/*/comments/secret*\"] }}\n",
        w.base_yaml(),
        up.addr.port()
    );
    let p = start(&yaml, w.dir.path()).await;
    let auth = format!("alpha.test:{}", up.addr.port());
    let tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let mut c = Client::new(tls, false).await;
    let send = |m: &str, path: &str| {
        Request::builder()
            .method(m)
            .uri(path)
            .header("host", auth.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let r = c.send(send("GET", "/repos/acme/widgets/issues/7")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        auth_lines(&r.body),
        vec![format!("Bearer {TOKEN}").as_str()]
    );
    let r = c
        .send(send("POST", "/repos/acme/widgets/issues/7/comments"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let hits = up.hits();
    for (m, path, why) in [
        (
            "DELETE",
            "/repos/acme/widgets/issues/7",
            "no statement allows DELETE /repos/acme/widgets/issues/7",
        ),
        (
            "GET",
            "/repos/acme/gadgets/issues",
            "no statement allows GET /repos/acme/gadgets/issues",
        ),
        // Normalised first: the dot segments lead out of the allowed tree.
        (
            "GET",
            "/repos/acme/widgets/issues/../../gadgets/issues",
            "no statement allows GET /repos/acme/gadgets/issues",
        ),
        (
            "GET",
            "/repos/acme/widgets/issues/7/comments/secret-1",
            "statement 2 denies GET",
        ),
    ] {
        let r = c.send(send(m, path)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {path}: {}", r.body);
        assert!(
            r.body.contains("endpoint 'alpha'") && r.body.contains(why),
            "{m} {path}: {}",
            r.body
        );
        assert!(!r.body.contains(TOKEN));
    }
    assert_eq!(up.hits(), hits, "a refused call reached the upstream");
    let audit = p.audit();
    let denied: Vec<_> = audit.iter().filter(|e| e["event"] == "denied").collect();
    assert_eq!(denied.len(), 4, "{audit:#?}");
    assert!(
        denied.iter().all(|e| e["reason"] == "policy"),
        "{denied:#?}"
    );
    p.shutdown().await;
}
