//! Statement policy through the running proxy (issue 15): egress entries
//! whose statements decide each request with no credential involved, over
//! CONNECT and over plain HTTP; per-sandbox overlays that narrow a live
//! proxy and follow their file on reload; and the metrics that count what
//! was refused. The endpoint case and "a refused call fetches no token" are
//! in `intercept.rs` and `grants.rs`; the transparent front end's in
//! `supervisor/tests/transparent.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use lanyard_tests::ops::{self, value};
use lanyard_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const H1: &[u8] = b"http/1.1";

fn req(method: &str, path: &str, host: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("authorization", CLIENT_AUTH)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Polls `f` until it holds, failing after 20 s (a bound, not a sleep).
async fn eventually<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An egress entry with statements: its HTTPS is intercepted (the agent
/// sees the sandbox CA), nothing is injected (the agent's own header goes
/// through untouched: there is no credential of Lanyard's to protect), and
/// only what the statements allow reaches the upstream. The same entry
/// over plain HTTP is decided the same way.
#[tokio::test]
async fn egress_statements_decide_each_request_without_a_credential() {
    let w = World::new();
    let up = w.upstream("registry", &["registry.test"], &[H1]).await;
    let plain = lanyard_examples::echo::start(loopback(), "plain-registry", None)
        .await
        .unwrap();
    let (port, plain_port) = (up.addr.port(), plain.addr.port());
    let yaml = format!(
        "{}resolve: {{ registry.test: 127.0.0.1 }}\negress:\n  default: deny\n  allow:\n    - to: \"registry.test:{port}\"\n      statements:\n        - {{ actions: [GET, HEAD], resources: [\"/packages/**\"] }}\n        - {{ effect: deny, actions: [\"*\"], resources: [\"/packages/*/internal*\"] }}\n    - to: \"registry.test:{plain_port}\"\n      statements: [ {{ actions: [GET], resources: [\"/simple/*\"] }} ]\nadmin: {{ listen: 127.0.0.1:0 }}\n",
        w.base_yaml()
    );
    let p = start(&yaml, w.dir.path()).await;
    let auth = format!("registry.test:{port}");
    // Only the sandbox CA completes this handshake: the tunnel is intercepted.
    let tls = intercepted(&p, &auth, "registry.test", &[H1]).await;
    let mut c = Client::new(tls, false).await;
    let r = c.send(req("GET", "/packages/left-pad", &auth)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("name: registry"), "{}", r.body);
    assert_eq!(
        auth_lines(&r.body),
        vec![CLIENT_AUTH],
        "nothing is injected for an egress entry"
    );
    let hits = up.hits();
    for (m, path, why) in [
        (
            "PUT",
            "/packages/left-pad",
            "no statement allows PUT /packages/left-pad",
        ),
        ("GET", "/admin", "no statement allows GET /admin"),
        (
            "GET",
            "/packages/x/%2e%2e/../admin",
            "no statement allows GET /admin",
        ),
        (
            "GET",
            "/packages/x/internal-notes",
            "statement 1 denies GET /packages/x/internal-notes",
        ),
    ] {
        let r = c.send(req(m, path, &auth)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {path}: {}", r.body);
        assert!(
            r.body
                .contains(&format!("egress.allow[0] 'registry.test:{port}': {why}")),
            "{m} {path}: {}",
            r.body
        );
    }
    assert_eq!(up.hits(), hits, "a refused request reached the upstream");

    // Plain HTTP, absolute form: the same decision, before any dial.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let send = |m: &str, path: &str| {
        format!(
            "{m} http://registry.test:{plain_port}{path} HTTP/1.1\r\nHost: registry.test:{plain_port}\r\n\r\n"
        )
    };
    s.write_all(send("GET", "/simple/left-pad").as_bytes())
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200, "{r:?}");
    s.write_all(send("POST", "/simple/left-pad").as_bytes())
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body.contains(&format!(
            "egress.allow[1] 'registry.test:{plain_port}': no statement allows POST /simple/left-pad"
        )),
        "{}",
        r.body
    );
    assert_eq!(plain.hits(), 1);

    // Counted and audited as policy denials, with no endpoint.
    let m = ops::metrics(p.admin.unwrap(), None).await;
    assert_eq!(
        value(
            &m,
            "lanyard_requests_total",
            &[("endpoint", ""), ("outcome", "denied")]
        ),
        5.0
    );
    assert_eq!(
        value(&m, "lanyard_tunnels_total", &[("kind", "inspect")]),
        1.0
    );
    let audit = p.audit();
    let denied: Vec<_> = audit.iter().filter(|e| e["event"] == "denied").collect();
    assert_eq!(denied.len(), 5, "{audit:#?}");
    assert!(
        denied.iter().all(|e| e["reason"] == "policy"),
        "{denied:#?}"
    );
    p.shutdown().await;
}

/// A per-sandbox overlay narrows the base's statements on a live proxy: the
/// overlay decides (and is named in the 403), the base's own statements
/// keep holding, an edited overlay is picked up by the file watcher, and a
/// widening edit is rejected with the last good policy still serving.
#[tokio::test]
async fn an_overlay_narrows_a_running_proxy_and_follows_its_file() {
    let w = World::new();
    let up = w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let overlay = w.dir.path().join("sandbox-overlay.yaml");
    let write_overlay = |paths: &str| {
        std::fs::write(
            &overlay,
            format!("endpoints:\n  alpha:\n    - {{ actions: [GET], resources: [{paths}] }}\n"),
        )
        .unwrap();
    };
    write_overlay("\"/repos/acme/widgets/**\"");
    let yaml = format!(
        "{}resolve: {{ alpha.test: 127.0.0.1 }}\nendpoints:\n  - name: alpha\n    host: alpha.test\n    port: {port}\n    provider: test-static\n    statements:\n      - {{ actions: [GET, POST], resources: [\"/repos/acme/**\"] }}\n      - {{ effect: deny, actions: [\"*\"], resources: [\"/repos/acme/widgets/secret\"] }}\noverlays: [sandbox-overlay.yaml]\nadmin: {{ listen: 127.0.0.1:0 }}\n",
        w.base_yaml()
    );
    let p = start(&yaml, w.dir.path()).await;
    let auth = format!("alpha.test:{port}");
    let status = |path: &'static str, method: &'static str| {
        let (p, auth) = (&p, auth.clone());
        async move {
            let tls = intercepted(p, &auth, "alpha.test", &[H1]).await;
            let mut c = Client::new(tls, false).await;
            c.send(req(method, path, &auth)).await
        }
    };
    let r = status("/repos/acme/widgets/issues", "GET").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        auth_lines(&r.body),
        vec![format!("Bearer {TOKEN}").as_str()]
    );
    let r = status("/repos/acme/gadgets", "GET").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(
        r.body.contains(&format!(
            "endpoint 'alpha': no statement allows GET /repos/acme/gadgets (overlay {})",
            overlay.display()
        )),
        "{}",
        r.body
    );
    // The base allows POST; the overlay narrowed it away.
    let r = status("/repos/acme/widgets/issues", "POST").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    // The base's deny holds under an overlay that would allow it.
    let r = status("/repos/acme/widgets/secret", "GET").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.body.contains("statement 1 denies"), "{}", r.body);

    // The provisioning service rewrites the overlay: the watcher reloads.
    let reloads = |p: &Running, result: &str| {
        p.audit()
            .iter()
            .filter(|e| e["event"] == "reload" && e["result"] == result)
            .count()
    };
    write_overlay("\"/repos/acme/gadgets\"");
    eventually("the overlay edit to be applied", || {
        reloads(&p, "applied") >= 1
    })
    .await;
    assert_eq!(
        status("/repos/acme/gadgets", "GET").await.status,
        StatusCode::OK
    );
    assert_eq!(
        status("/repos/acme/widgets/issues", "GET").await.status,
        StatusCode::FORBIDDEN
    );
    // A widening edit is rejected; the last good overlay keeps serving.
    write_overlay("\"/repos/**\"");
    eventually("the widening overlay to be rejected", || {
        reloads(&p, "rejected") >= 1
    })
    .await;
    let rejected = p
        .audit()
        .into_iter()
        .find(|e| e["event"] == "reload" && e["result"] == "rejected")
        .unwrap();
    let error = rejected["error"].as_str().unwrap();
    assert!(
        error.contains("sandbox-overlay.yaml: endpoints.alpha[0]: allows GET /repos/**"),
        "{error}"
    );
    assert_eq!(
        status("/repos/acme/gadgets", "GET").await.status,
        StatusCode::OK
    );
    assert_eq!(
        status("/repos/other/x", "GET").await.status,
        StatusCode::FORBIDDEN
    );
    let m = ops::metrics(p.admin.unwrap(), None).await;
    assert_eq!(
        value(
            &m,
            "lanyard_requests_total",
            &[("endpoint", "alpha"), ("outcome", "denied")]
        ),
        5.0
    );
    p.shutdown().await;
}

/// An entry with statements is still egress: intercepting it does not make
/// it trusted config, so a name that resolves only to non-public addresses
/// (not pinned in `resolve:`) is refused before the CONNECT is answered, as
/// for a blind tunnel, and the upstream is never reached.
#[tokio::test]
async fn an_inspected_entry_keeps_the_private_address_check() {
    let w = World::new();
    let up = w.upstream("local", &["localhost"], &[H1]).await;
    let port = up.addr.port();
    let yaml = format!(
        "{}egress:\n  default: deny\n  allow:\n    - to: \"localhost:{port}\"\n      statements: [ {{ actions: [GET], resources: [\"/**\"] }} ]\n",
        w.base_yaml()
    );
    let p = start(&yaml, w.dir.path()).await;
    let (_s, r) = connect(p.addr, &format!("localhost:{port}")).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("non-public"), "{}", r.body);
    assert_eq!(up.hits(), 0);
    p.shutdown().await;
}
