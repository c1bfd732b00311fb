//! Operating Lanyard: `/metrics` read by the Prometheus project's parser
//! after a known sequence of requests, the audit trail field by field, the
//! admin token, and live reload under load (a bad config rejected, a good
//! one applied, no request failed).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use lanyard_tests::ops::{self, value};
use lanyard_tests::*;

const H1: &[u8] = b"http/1.1";

/// Polls `f` until it holds, failing after 20 s (a bound, not a sleep).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_count_a_known_sequence_and_parse_as_openmetrics() {
    let logs = lanyard_tests::logs::trace();
    let w = World::new();
    let up = w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let p = start(
        &w.alpha_yaml(
            port,
            "  - { name: dead, host: alpha.test, port: 1, provider: test-static }\negress: { default: deny }\nadmin: { listen: 127.0.0.1:0 }\n",
        ),
        w.dir.path(),
    )
    .await;
    let admin = p.admin.expect("admin listener");

    // Three injected requests, on three tunnels.
    for i in 0..3 {
        let r = get_via(&p, "alpha.test", port, &format!("/items/{i}?secret=q")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    // A CONNECT egress policy denies, and one to an endpoint nobody listens on.
    let (_s, r) = connect(p.addr, "denied.test:443").await;
    assert_eq!(r.status, 403);
    let (_s, r) = connect(p.addr, "alpha.test:1").await;
    assert_eq!(r.status, 502);
    // A Host header naming another host inside the alpha tunnel.
    let auth = format!("alpha.test:{port}");
    let stream = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let mut c = Client::new(stream, false).await;
    let r = c.send(get("/x", &format!("other.test:{port}"))).await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    // An agent that does not trust the sandbox CA.
    let (s, r) = connect(p.addr, &auth).await;
    assert_eq!(r.status, 200);
    let err = tls(s, "alpha.test", &[H1], &[]).await.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    // The token file disappears: a credential error.
    std::fs::remove_file(&w.token_file).unwrap();
    let r = get_via(&p, "alpha.test", port, "/after").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);

    // The handshake failure is counted once the proxy has seen the alert.
    eventually("the handshake failure", || async {
        let m = ops::metrics(admin, None).await;
        value(
            &m,
            "lanyard_tls_handshake_failures_total",
            &[("side", "client")],
        ) == 1.0
    })
    .await;
    assert!(
        logs.text()
            .contains("the client does not trust the sandbox CA"),
        "a rejected sandbox certificate is logged with its reason"
    );
    let m = ops::metrics(admin, None).await;
    let req = |endpoint: &str, outcome: &str| {
        value(
            &m,
            "lanyard_requests_total",
            &[("endpoint", endpoint), ("outcome", outcome)],
        )
    };
    assert_eq!(req("alpha", "injected"), 3.0);
    assert_eq!(req("", "denied"), 1.0);
    assert_eq!(req("", "misdirected"), 1.0);
    assert_eq!(req("alpha", "credential_error"), 1.0);
    assert_eq!(req("alpha", "passed_through"), 0.0);
    assert_eq!(
        req("", "upstream_error"),
        1.0,
        "the dead endpoint's CONNECT"
    );
    assert_eq!(
        value(
            &m,
            "lanyard_tls_handshake_failures_total",
            &[("side", "client"), ("reason", "untrusted_ca")]
        ),
        1.0
    );
    // 3 + misdirected + untrusted + credential error.
    assert_eq!(
        value(&m, "lanyard_tunnels_total", &[("kind", "intercept")]),
        6.0
    );
    assert_eq!(
        value(&m, "lanyard_leaf_certificates_minted_total", &[]),
        1.0
    );
    assert_eq!(value(&m, "lanyard_leaf_certificates_cached", &[]), 1.0);
    assert_eq!(
        value(&m, "lanyard_upstream_connections", &[]),
        1.0,
        "every alpha tunnel shares one pooled upstream connection"
    );
    assert!(value(&m, "lanyard_connections_total", &[("kind", "explicit")]) >= 7.0);
    // Labels come from config and fixed words only: never a request's host or path.
    for s in &m {
        for v in s.labels.values() {
            assert!(
                !v.contains("items") && !v.contains("denied.test") && !v.contains("other.test"),
                "request data in a label: {s:?}"
            );
        }
    }

    // The audit trail, field by field.
    let audit = p.audit();
    let requests: Vec<_> = audit.iter().filter(|e| e["event"] == "request").collect();
    assert_eq!(requests.len(), 4, "{audit:#?}");
    let first = requests[0];
    assert_eq!(first["endpoint"], "alpha");
    assert_eq!(first["provider"], "test-static");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/items/0", "normalised, without the query");
    assert_eq!(first["dest"], format!("alpha.test:{port}"));
    assert_eq!(first["upstream"], format!("127.0.0.1:{port}"));
    assert_eq!(first["status"], 200);
    assert_eq!(first["injected"], true);
    let id = first["token_id"].as_str().unwrap();
    assert!(id.starts_with("hmac:") && !id.contains(TOKEN), "{id}");
    assert_eq!(
        first["spiffe_id"],
        serde_json::Value::Null,
        "static provider: no SVID"
    );
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    let failed = requests[3];
    assert_eq!(failed["status"], 503);
    assert_eq!(failed["injected"], false);
    assert_eq!(failed["token_id"], serde_json::Value::Null);
    let denials: Vec<_> = audit.iter().filter(|e| e["event"] == "denied").collect();
    assert_eq!(denials.len(), 2, "{audit:#?}");
    assert_eq!(denials[0]["reason"], "egress");
    assert_eq!(denials[0]["dest"], "denied.test:443");
    assert_eq!(denials[1]["reason"], "name_mismatch");
    assert_eq!(denials[1]["path"], "/x");
    let text = std::fs::read_to_string(w.dir.path().join("audit.jsonl")).unwrap();
    assert!(!text.contains(TOKEN) && !text.contains("secret=q"));
}

#[tokio::test]
async fn the_admin_token_guards_all_but_the_probes() {
    let w = World::new();
    let token_file = w.dir.path().join("admin-token");
    std::fs::write(&token_file, "admin-token-0123456789abcdef\n").unwrap();
    let p = start(
        &w.alpha_yaml(
            1,
            &format!(
                "admin: {{ listen: 127.0.0.1:0, token_file: {} }}\n",
                token_file.display()
            ),
        ),
        w.dir.path(),
    )
    .await;
    let admin = p.admin.unwrap();
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            ops::admin(admin, "GET", path, None).await.status,
            200,
            "{path}"
        );
    }
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/debug/endpoints"),
        ("POST", "/revoke"),
    ] {
        let r = ops::admin(admin, method, path, None).await;
        assert_eq!(r.status, 401, "{path}");
        let r = ops::admin(admin, method, path, Some("admin-token-0123456789abcdeX")).await;
        assert_eq!(r.status, 401, "{path} with a wrong token");
        let r = ops::admin(admin, method, path, Some("admin-token-0123456789abcdef")).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let r = ops::admin(
        admin,
        "GET",
        "/revoke",
        Some("admin-token-0123456789abcdef"),
    )
    .await;
    assert_eq!(r.status, 405);
    let r = ops::admin(
        admin,
        "POST",
        "/revoke?endpoint=nope",
        Some("admin-token-0123456789abcdef"),
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no endpoint named 'nope'"), "{}", r.body);
    let r = ops::admin(
        admin,
        "POST",
        "/revoke?host=x",
        Some("admin-token-0123456789abcdef"),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = ops::admin(
        admin,
        "GET",
        "/debug/endpoints",
        Some("admin-token-0123456789abcdef"),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["endpoints"][0]["name"], "alpha");
    assert_eq!(v["endpoints"][0]["kind"], "static");
    assert!(!r.body.contains(TOKEN));
}

/// Writes `text` to `file` the way Kubernetes updates a mounted ConfigMap:
/// a new file renamed over the old, so no reader sees half of it.
fn replace(file: &std::path::Path, text: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_rejects_a_bad_config_and_applies_a_good_one() {
    let w = World::new();
    let alpha = w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let beta = w.upstream("beta", &["beta.test"], &[H1]).await;
    let (ap, bp) = (alpha.addr.port(), beta.addr.port());
    let admin_yaml = "admin: { listen: 127.0.0.1:0 }\n";
    let good = w.alpha_yaml(ap, admin_yaml);
    let p = Arc::new(start(&good, w.dir.path()).await);
    let admin = p.admin.unwrap();
    let file = w.dir.path().join("lanyard.yaml");
    let written = std::fs::read_to_string(&file).unwrap();

    // Load: four clients, each opening a tunnel and sending five requests on it, over and over.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (p, stop, ok, failed) = (p.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let auth = format!("alpha.test:{ap}");
                let tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
                let mut c = Client::new(tls, false).await;
                for _ in 0..5 {
                    let r = c.send(get("/load", &auth)).await;
                    if r.status == StatusCode::OK
                        && auth_lines(&r.body) == [format!("Bearer {TOKEN}")]
                    {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed
                            .lock()
                            .unwrap()
                            .push(format!("{} {}", r.status, r.body));
                    }
                }
            }
        }));
    }
    let reloads = |result: &'static str| async move {
        value(
            &ops::metrics(admin, None).await,
            "lanyard_config_reloads_total",
            &[("result", result)],
        )
    };
    eventually("load to flow", || async { ok.load(Ordering::Relaxed) > 20 }).await;

    // A bad config: an endpoint whose provider does not exist.
    let bad = written.replace("provider: test-static }", "provider: nowhere }");
    assert_ne!(bad, written);
    replace(&file, &bad);
    eventually("the bad config to be rejected", || async {
        reloads("rejected").await == 1.0
    })
    .await;
    let audit = p.audit();
    let rejected = audit
        .iter()
        .find(|e| e["event"] == "reload" && e["result"] == "rejected")
        .expect("a reload audit event");
    let why = rejected["error"].as_str().unwrap();
    assert!(
        why.contains(&format!("{}: endpoints[0].provider", file.display()))
            || why.contains(&format!("{}: endpoints", file.display())),
        "{why}"
    );
    assert!(why.contains("nowhere"), "{why}");
    let before = ok.load(Ordering::Relaxed);
    eventually("requests to keep succeeding", || async {
        ok.load(Ordering::Relaxed) > before + 20
    })
    .await;
    // beta is not an endpoint yet: its CONNECT is refused by egress (default deny).
    let (_s, r) = connect(p.addr, &format!("beta.test:{bp}")).await;
    assert_eq!(r.status, 403);

    // A good config that adds beta.
    let audit_line = format!(
        "audit: {{ file: {} }}\n",
        w.dir.path().join("audit.jsonl").display()
    );
    let next = format!(
        "{}resolve: {{ alpha.test: 127.0.0.1, beta.test: 127.0.0.1 }}\nendpoints:\n  - {{ name: alpha, host: alpha.test, port: {ap}, provider: test-static }}\n  - {{ name: beta, host: beta.test, port: {bp}, provider: test-static }}\n{admin_yaml}{audit_line}",
        w.base_yaml()
    );
    replace(&file, &next);
    eventually("the good config to be applied", || async {
        reloads("applied").await == 1.0
    })
    .await;
    let r = get_via(&p, "beta.test", bp, "/new").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(auth_lines(&r.body), [format!("Bearer {TOKEN}")]);

    let before = ok.load(Ordering::Relaxed);
    eventually("requests after the reload", || async {
        ok.load(Ordering::Relaxed) > before + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(reloads("rejected").await, 1.0);
    // A config without alpha: a tunnel opened before the reload finishes
    // under the config it started with; a new one is refused.
    let auth = format!("alpha.test:{ap}");
    let old = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let mut old = Client::new(old, false).await;
    let only_beta = format!(
        "{}resolve: {{ beta.test: 127.0.0.1 }}\nendpoints:\n  - {{ name: beta, host: beta.test, port: {bp}, provider: test-static }}\n{admin_yaml}{audit_line}",
        w.base_yaml()
    );
    replace(&file, &only_beta);
    eventually("alpha's removal to be applied", || async {
        reloads("applied").await == 2.0
    })
    .await;
    let r = old.send(get("/still", &auth)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(auth_lines(&r.body), [format!("Bearer {TOKEN}")]);
    let (_s, r) = connect(p.addr, &auth).await;
    assert_eq!(r.status, 403, "a new connection gets the new config");
}
