//! Invariant 4: the token never appears in a log line or an error body, even
//! with every crate (hyper, h2, rustls, ours) logging at TRACE.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use lanyard_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_never_reaches_logs_or_error_bodies() {
    let logs = lanyard_tests::logs::trace();

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
        "{}resolve: {{ alpha.test: 127.0.0.1, plain.test: 127.0.0.1, bad.test: 127.0.0.1 }}\nendpoints:\n  - {{ name: alpha, host: alpha.test, port: {tp}, provider: test-static }}\n  - {{ name: plain, host: plain.test, port: {pp}, provider: test-static }}\n  - {{ name: bad, host: bad.test, port: {bp}, provider: test-static }}\n  - {{ name: custom, host: alpha.test, port: {tp}, path: /custom, header: X-Api-Key, provider: test-static }}\nadmin: {{ listen: 127.0.0.1:0 }}\n",
        w.base_yaml()
    );
    let p = start(&yaml, w.dir.path()).await;
    let mut bodies = Vec::new();
    // What the admin listener and the audit trail expose, checked at the end.
    let mut exposed: Vec<String> = Vec::new();

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
    exposed.extend(admin_views(&p).await);
    p.shutdown().await;

    // The grant path: a JWT-SVID from the dev Workload API exchanged at an
    // issuer, once successfully and once refused (so the failure is logged
    // with its cache key). An extra_params value stands in for a client secret.
    const EXTRA_SECRET: &str = "extra/secret+value=99";
    // As an issuer echoing the request form would spell it.
    const EXTRA_ENCODED: &str = "extra%2fsecret%2Bvalue%3D99";
    std::fs::write(&w.token_file, TOKEN).unwrap();
    let api = lanyard_supervisor::dev::DevWorkloadApi::new(
        "spiffe://secrets.test/agent",
        std::time::Duration::from_secs(300),
    )
    .unwrap();
    let sock = w.dir.path().join("wl.sock");
    let _wl = api.serve(&sock).await.unwrap();
    let issuer = lanyard_tests::issuer::Issuer::start(api.clone()).await;
    issuer.set_mode(
        "fail",
        lanyard_tests::issuer::Mode::Reply(
            400,
            format!(r#"{{"error":"invalid_client","error_description":"bad client_secret {EXTRA_SECRET} in client_secret={EXTRA_ENCODED}"}}"#),
        ),
    );
    let gyaml = format!(
        "{}  tx: {{ token_grant: {{ token_endpoint: \"{}\", grant: token_exchange, extra_params: {{ client_secret: {EXTRA_SECRET} }} }} }}\nspiffe: {{ endpoint_socket: \"unix://{}\" }}\nresolve: {{ alpha.test: 127.0.0.1 }}\nendpoints:\n  - {{ name: ok, host: alpha.test, port: {tp}, path: /ok, provider: tx, audience: sec }}\n  - {{ name: fail, host: alpha.test, port: {tp}, path: /fail, provider: tx, audience: fail }}\nadmin: {{ listen: 127.0.0.1:0 }}\n",
        w.base_yaml().replace(
            &w.dir.path().join("ca").display().to_string(),
            &w.dir.path().join("ca2").display().to_string()
        ),
        issuer.url,
        sock.display()
    );
    let g = start(&gyaml, w.dir.path()).await;
    let auth = format!("alpha.test:{tp}");
    let tls = intercepted(&g, &auth, "alpha.test", &[b"http/1.1"]).await;
    let mut c = Client::new(tls, false).await;
    let r = c.send(get("/ok", &auth)).await;
    assert!(
        r.body.contains("authorization: Bearer tok-sec-1"),
        "the exchange did not happen: {}",
        r.body
    );
    let r = c.send(get("/fail", &auth)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.body.contains("invalid_client") && !r.body.contains("bad client_secret"),
        "the agent gets the OAuth code, never the issuer's description: {}",
        r.body
    );
    bodies.push(r.body);
    exposed.extend(admin_views(&g).await);
    g.shutdown().await;
    let svids: Vec<String> = issuer
        .forms()
        .iter()
        .flatten()
        .filter(|(k, _)| k == "subject_token")
        .map(|(_, v)| v.clone())
        .collect();
    for view in &exposed {
        for secret in [TOKEN, "tok-sec-1", EXTRA_SECRET, EXTRA_ENCODED]
            .into_iter()
            .chain(svids.iter().map(String::as_str))
        {
            assert!(
                !view.contains(secret),
                "a credential reached /metrics, /debug or the audit trail: {view}"
            );
        }
    }
    let svid_sent = issuer
        .forms()
        .iter()
        .flatten()
        .any(|(k, v)| k == "subject_token" && v.starts_with("eyJ"));
    assert!(
        svid_sent,
        "no SVID reached the issuer, so the log check below proves nothing"
    );

    // Agent-supplied text cannot forge log fields: a Host header and a path
    // written to look like `status=200 endpoint="alpha"` stay inside one
    // quoted, escaped field value.
    let g = start(&w.alpha_yaml(tls_up.addr.port(), ""), w.dir.path()).await;
    let auth = format!("alpha.test:{}", tls_up.addr.port());
    let tls = intercepted(&g, &auth, "alpha.test", &[b"http/1.1"]).await;
    let mut c = Client::new(tls, false).await;
    let forged = "x status=200 endpoint=\"forged\"";
    let r = c
        .send(
            Request::get("/p%20status=200%20endpoint=%22forged%22")
                .header("host", forged)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    g.shutdown().await;

    let text = logs.text();
    assert!(
        text.contains("forged"),
        "the forged request was not logged at all"
    );
    assert!(
        !text.contains("endpoint=\"forged\""),
        "agent-supplied text forged a log field: {}",
        text.lines()
            .find(|l| l.contains("forged"))
            .unwrap_or_default()
    );
    assert!(text.contains("request"), "no request logs captured at all");
    assert!(
        text.lines().count() > 50,
        "suspiciously few log lines: {}",
        text.lines().count()
    );
    assert!(text.contains("token exchanged"), "no grant logs captured");
    assert!(
        text.contains("bad client_secret [redacted] in client_secret=[redacted]"),
        "the issuer's description was not logged, scrubbed, so the checks below prove nothing"
    );
    // The static token, an issued token, any JWT-SVID (every JWT starts "eyJ"),
    // and the extra_params value must appear nowhere.
    for needle in [TOKEN, "tok-sec-1", "eyJ", EXTRA_SECRET, EXTRA_ENCODED] {
        for (i, line) in text.lines().enumerate() {
            assert!(
                !line.contains(needle),
                "log line {i} leaks {needle}: {line}"
            );
        }
        for b in &bodies {
            assert!(!b.contains(needle), "error body leaks {needle}: {b}");
        }
    }
}

/// `/metrics`, `/debug/endpoints` and the audit trail of a running proxy.
async fn admin_views(p: &Running) -> Vec<String> {
    let admin = p.admin.expect("admin listener");
    let mut out = Vec::new();
    for path in ["/metrics", "/debug/endpoints"] {
        let r = lanyard_tests::ops::admin(admin, "GET", path, None).await;
        assert_eq!(r.status, 200, "{path}");
        out.push(r.body);
    }
    let audit = p.audit();
    assert!(
        !audit.is_empty(),
        "no audit events: the check proves nothing"
    );
    out.extend(audit.iter().map(ToString::to_string));
    out
}
