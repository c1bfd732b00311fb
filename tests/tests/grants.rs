//! Token grants end to end: the dev Workload API issues JWT-SVIDs, an
//! in-process issuer exchanges them, the proxy injects the results.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use lanyard_examples::echo::Echo;
use lanyard_supervisor::dev::{self, DevWorkloadApi};
use lanyard_tests::issuer::{Issuer, Mode};
use lanyard_tests::*;

const SPIFFE_ID: &str = "spiffe://lanyard.test/sandbox/agent-1";
const H1: &[u8] = b"http/1.1";
const H2: &[u8] = b"h2";

struct Env {
    w: World,
    api: Arc<DevWorkloadApi>,
    wl: Option<dev::Running>,
    sock: PathBuf,
    issuer: Issuer,
}

impl Env {
    async fn new(svid_ttl: Duration) -> Self {
        // Every grant and fault test here runs with TRACE on; the last
        // assertion of each checks that no SVID or token was logged.
        lanyard_tests::logs::trace();
        let w = World::new();
        let api = DevWorkloadApi::new(SPIFFE_ID, svid_ttl).unwrap();
        let sock = w.dir.path().join("agent.sock");
        let wl = Some(api.serve(&sock).await.unwrap());
        let issuer = Issuer::start(api.clone()).await;
        Self {
            w,
            api,
            wl,
            sock,
            issuer,
        }
    }

    /// Base config plus `providers` lines (each "  name: {...}"), resolve for
    /// the upstreams, `endpoints` lines and `extra` top-level YAML.
    fn yaml(
        &self,
        providers: &[String],
        upstreams: &[&str],
        endpoints: &[String],
        extra: &str,
    ) -> String {
        let mut y = self.w.base_yaml();
        for p in providers {
            y.push_str(p);
            y.push('\n');
        }
        y.push_str(&format!(
            "spiffe: {{ endpoint_socket: unix://{} }}\n",
            self.sock.display()
        ));
        let resolve: Vec<String> = upstreams
            .iter()
            .map(|h| format!("{h}: 127.0.0.1"))
            .collect();
        y.push_str(&format!(
            "resolve: {{ {} }}\nendpoints:\n",
            resolve.join(", ")
        ));
        for e in endpoints {
            y.push_str(&format!("  - {e}\n"));
        }
        y.push_str(extra);
        y
    }

    /// One token-exchange provider `tx` and one endpoint `alpha` (audience
    /// `alpha`) on 127.0.0.1:`port`, plus `extra` top-level YAML.
    fn one_tx(&self, port: u16, extra: &str) -> String {
        self.yaml(
            &[self.grant("tx", "grant: token_exchange")],
            &["alpha.test"],
            &[format!(
                "{{ name: alpha, host: alpha.test, port: {port}, provider: tx, audience: alpha }}"
            )],
            extra,
        )
    }

    fn grant(&self, name: &str, body: &str) -> String {
        format!(
            "  {name}: {{ token_grant: {{ token_endpoint: {}, {body} }} }}",
            self.issuer.url
        )
    }
}

/// GETs `path` through a fresh intercepted HTTP/1.1 tunnel.
async fn fetch(p: &Running, up: &Echo, host: &str, path: &str) -> Collected {
    get_via(p, host, up.addr.port(), path).await
}

fn bearer(r: &Collected) -> String {
    let lines = auth_lines(&r.body);
    assert_eq!(lines.len(), 1, "{}", r.body);
    lines[0]
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a bearer: {}", r.body))
        .to_owned()
}

fn field<'a>(form: &'a [(String, String)], k: &str) -> &'a str {
    form.iter()
        .find(|(n, _)| n == k)
        .map_or_else(|| panic!("no {k} in {form:?}"), |(_, v)| v.as_str())
}

fn keys(form: &[(String, String)]) -> Vec<&str> {
    form.iter().map(|(k, _)| k.as_str()).collect()
}

#[tokio::test]
async fn each_grant_sends_exactly_its_form_fields() {
    let env = Env::new(Duration::from_secs(300)).await;
    let up = env.w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let providers = [
        env.grant("cc", "grant: client_credentials, client_id: lanyard-test, scopes: [read]"),
        env.grant("ccs", "grant: client_credentials, client_assertion_type: \"urn:ietf:params:oauth:client-assertion-type:jwt-spiffe\""),
        env.grant("tx", "grant: token_exchange, audience: alpha-api, resource: \"https://alpha.test/\", requested_token_type: \"urn:ietf:params:oauth:token-type:access_token\", extra_params: { tenant: t1 }"),
        env.grant("jb", "grant: jwt_bearer, scopes: [b, a]"),
        "  direct: { token_grant: { grant: jwt_svid } }".to_owned(),
    ];
    let endpoints = ["cc", "ccs", "tx", "jb"]
        .iter()
        .map(|p| format!("{{ name: {p}, host: alpha.test, port: {port}, path: /{p}, provider: {p} }}"))
        .chain([format!("{{ name: direct, host: alpha.test, port: {port}, path: /direct, provider: direct, audience: alpha-direct }}")])
        .collect::<Vec<_>>();
    let p = start(
        &env.yaml(&providers, &["alpha.test"], &endpoints, ""),
        env.w.dir.path(),
    )
    .await;

    for path in ["/cc", "/ccs", "/tx", "/jb"] {
        let r = fetch(&p, &up, "alpha.test", path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        assert!(bearer(&r).starts_with("tok-"), "{path}: {}", r.body);
    }
    let forms = env.issuer.forms();
    assert_eq!(forms.len(), 4);
    let svid_aud = env.issuer.url.as_str();
    let verify =
        |svid: &str| assert_eq!(env.api.signer().verify(svid, svid_aud).unwrap(), SPIFFE_ID);

    let f = &forms[0];
    assert_eq!(
        keys(f),
        [
            "grant_type",
            "client_assertion_type",
            "client_assertion",
            "client_id",
            "scope"
        ]
    );
    assert_eq!(field(f, "grant_type"), "client_credentials");
    assert_eq!(
        field(f, "client_assertion_type"),
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert_eq!(field(f, "client_id"), "lanyard-test");
    assert_eq!(field(f, "scope"), "read");
    verify(field(f, "client_assertion"));

    let f = &forms[1];
    assert_eq!(
        keys(f),
        ["grant_type", "client_assertion_type", "client_assertion"]
    );
    assert_eq!(
        field(f, "client_assertion_type"),
        "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
    );
    verify(field(f, "client_assertion"));

    let f = &forms[2];
    assert_eq!(
        keys(f),
        [
            "grant_type",
            "subject_token",
            "subject_token_type",
            "requested_token_type",
            "audience",
            "resource",
            "tenant"
        ]
    );
    assert_eq!(
        field(f, "grant_type"),
        "urn:ietf:params:oauth:grant-type:token-exchange"
    );
    assert_eq!(
        field(f, "subject_token_type"),
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(
        field(f, "requested_token_type"),
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(field(f, "audience"), "alpha-api");
    assert_eq!(field(f, "resource"), "https://alpha.test/");
    assert_eq!(field(f, "tenant"), "t1");
    verify(field(f, "subject_token"));

    let f = &forms[3];
    assert_eq!(keys(f), ["grant_type", "assertion", "scope"]);
    assert_eq!(
        field(f, "grant_type"),
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    assert_eq!(field(f, "scope"), "a b");
    verify(field(f, "assertion"));

    // jwt_svid: no exchange; the upstream gets an SVID for its own audience.
    let r = fetch(&p, &up, "alpha.test", "/direct").await;
    let svid = bearer(&r);
    assert_eq!(
        env.api.signer().verify(&svid, "alpha-direct").unwrap(),
        SPIFFE_ID
    );
    assert!(
        env.api.signer().verify(&svid, svid_aud).is_err(),
        "SVID valid for the issuer too"
    );
    assert_eq!(env.issuer.attempts(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_first_requests_cost_one_fetch_and_one_exchange() {
    let env = Env::new(Duration::from_secs(300)).await;
    env.issuer
        .set_default(Mode::SlowOk(Duration::from_millis(200)));
    let up = env.w.upstream("alpha", &["alpha.test"], &[H2, H1]).await;
    let port = up.addr.port();
    let p = start(&env.one_tx(port, ""), env.w.dir.path()).await;
    let auth = format!("alpha.test:{port}");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let tls = intercepted(&p, &auth, "alpha.test", &[H2]).await;
        let Client::H2(sender) = Client::new(tls, true).await else {
            unreachable!()
        };
        for _ in 0..100 {
            let mut s = sender.clone();
            let uri = format!("https://{auth}/x");
            tasks.push(tokio::spawn(async move {
                let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
                collect(s.send_request(req).await.unwrap()).await
            }));
        }
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(bearer(&r), "tok-alpha-1");
    }
    assert_eq!(env.issuer.attempts(), 1, "exchanges");
    assert_eq!(
        env.api
            .stats
            .jwt_svids
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "SVID fetches"
    );
}

#[tokio::test]
async fn two_audiences_two_tokens_each_only_to_its_own_upstream() {
    let env = Env::new(Duration::from_secs(300)).await;
    let alpha = env.w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let beta = env.w.upstream("beta", &["beta.test"], &[H1]).await;
    let p = start(
        &env.yaml(
            &[env.grant("tx", "grant: token_exchange, scopes: [default]")],
            &["alpha.test", "beta.test"],
            &[
                format!("{{ name: alpha, host: alpha.test, port: {}, provider: tx, audience: alpha, scopes: [alpha.read] }}", alpha.addr.port()),
                format!("{{ name: beta, host: beta.test, port: {}, provider: tx, audience: beta }}", beta.addr.port()),
            ],
            "",
        ),
        env.w.dir.path(),
    )
    .await;
    let a = bearer(&fetch(&p, &alpha, "alpha.test", "/").await);
    let b = bearer(&fetch(&p, &beta, "beta.test", "/").await);
    assert!(
        a.starts_with("tok-alpha-") && b.starts_with("tok-beta-"),
        "{a} {b}"
    );
    assert_ne!(a, b);
    // Repeats come from the cache.
    assert_eq!(bearer(&fetch(&p, &alpha, "alpha.test", "/").await), a);
    assert_eq!(bearer(&fetch(&p, &beta, "beta.test", "/").await), b);
    let forms = env.issuer.forms();
    assert_eq!(forms.len(), 2);
    assert_eq!(field(&forms[0], "scope"), "alpha.read");
    assert_eq!(field(&forms[1], "scope"), "default");
}

#[tokio::test]
async fn refresh_ahead_replaces_the_token_before_expiry_off_the_request_path() {
    let env = Env::new(Duration::from_secs(300)).await;
    env.issuer.set_expires_in(4);
    let up = env.w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let p = start(
        &env.one_tx(port, "token_cache: { skew: 0s, refresh_ahead: 0.5 }\n"),
        env.w.dir.path(),
    )
    .await;
    let t0 = Instant::now();
    assert_eq!(
        bearer(&fetch(&p, &up, "alpha.test", "/").await),
        "tok-alpha-1"
    );
    // Past half the token's life (a deadline, not a guess at another task's progress).
    tokio::time::sleep_until((t0 + Duration::from_millis(2200)).into()).await;
    env.issuer
        .set_default(Mode::SlowOk(Duration::from_millis(800)));
    let answered = env.issuer.next_answer();
    let asked = Instant::now();
    assert_eq!(
        bearer(&fetch(&p, &up, "alpha.test", "/").await),
        "tok-alpha-1"
    );
    assert!(
        asked.elapsed() < Duration::from_millis(800),
        "the request waited for the refresh"
    );
    answered.await;
    let r = fetch(&p, &up, "alpha.test", "/").await;
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "too slow to observe refresh before expiry"
    );
    assert_eq!(bearer(&r), "tok-alpha-2");
    assert_eq!(env.issuer.attempts(), 2);
}

#[tokio::test]
async fn issuer_outage_serves_cache_until_expiry_then_503_then_recovers() {
    let env = Env::new(Duration::from_secs(300)).await;
    env.issuer.set_expires_in(2);
    let up = env.w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let p = start(
        &env.one_tx(port, "token_cache: { skew: 0s, refresh_ahead: 0.5, backoff_initial: 200ms, backoff_max: 400ms }\n"),
        env.w.dir.path(),
    )
    .await;
    let auth = format!("alpha.test:{port}");
    let tls = intercepted(&p, &auth, "alpha.test", &[H1]).await;
    let mut c = Client::new(tls, false).await;
    let t0 = Instant::now();
    assert_eq!(bearer(&c.send(get("/", &auth)).await), "tok-alpha-1");
    env.issuer.set_default(Mode::Reply(
        503,
        r#"{"error":"temporarily_unavailable","error_description":"maintenance"}"#.into(),
    ));
    let before = env.issuer.attempts();

    let mut tick = tokio::time::interval(Duration::from_millis(25));
    let (mut served, mut refused, mut sent) = (0, 0, 0);
    let outage = Instant::now();
    while t0.elapsed() < Duration::from_millis(3500) {
        tick.tick().await;
        let r = c.send(get("/", &auth)).await;
        sent += 1;
        let elapsed = t0.elapsed();
        match r.status {
            StatusCode::OK => {
                assert_eq!(bearer(&r), "tok-alpha-1");
                assert!(
                    elapsed < Duration::from_secs(2),
                    "served a token past its expiry at {elapsed:?}"
                );
                served += 1;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(
                    elapsed >= Duration::from_millis(1900),
                    "refused while a valid token was cached ({elapsed:?}): {}",
                    r.body
                );
                assert!(
                    r.body.contains("endpoint 'alpha'") && r.body.contains("provider 'tx'"),
                    "{}",
                    r.body
                );
                // The OAuth code reaches the agent; the description only the log.
                assert!(
                    r.body.contains("temporarily_unavailable") && !r.body.contains("maintenance"),
                    "{}",
                    r.body
                );
                assert!(
                    !r.body.contains("eyJ"),
                    "an SVID leaked into the error: {}",
                    r.body
                );
                refused += 1;
            }
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    let attempts = env.issuer.attempts() - before;
    // Retries are at least half a step apart (100 ms, then 200 ms): far fewer than requests.
    let bound = 2 + (outage.elapsed().as_millis() / 100) as usize;
    eprintln!(
        "issuer outage: {sent} requests ({served} served from cache, {refused} refused), {attempts} exchange attempts (bound {bound})"
    );
    assert!(
        served > 10 && refused > 10,
        "served {served}, refused {refused}"
    );
    assert!(
        attempts >= 2 && attempts <= bound,
        "{attempts} exchange attempts for {sent} requests (bound {bound})"
    );

    env.issuer.set_default(Mode::Ok);
    let back = Instant::now();
    loop {
        tick.tick().await;
        let r = c.send(get("/", &auth)).await;
        if r.status == StatusCode::OK {
            assert_eq!(bearer(&r), "tok-alpha-2");
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "no recovery within a backoff step"
        );
    }
    eprintln!("issuer back: recovered after {:?}", back.elapsed());
    assert!(
        back.elapsed() <= Duration::from_millis(400 + 300),
        "recovery took {:?}",
        back.elapsed()
    );
}

#[tokio::test]
async fn workload_api_gone_and_back() {
    let mut env = Env::new(Duration::from_secs(2)).await;
    env.issuer.set_expires_in(2);
    let up = env.w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let p = start(
        &env.one_tx(port, "token_cache: { skew: 0s, refresh_ahead: 0.9, backoff_initial: 100ms, backoff_max: 300ms }\n"),
        env.w.dir.path(),
    )
    .await;
    let t0 = Instant::now();
    assert_eq!(
        bearer(&fetch(&p, &up, "alpha.test", "/").await),
        "tok-alpha-1"
    );
    env.wl.take().unwrap().stop().await;
    // Cached token still serves...
    assert_eq!(
        bearer(&fetch(&p, &up, "alpha.test", "/").await),
        "tok-alpha-1"
    );
    // ...until it expires, then the cause is named.
    tokio::time::sleep_until((t0 + Duration::from_millis(2100)).into()).await;
    let r = fetch(&p, &up, "alpha.test", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.body.contains("Workload API"), "{}", r.body);
    // The agent comes back (same key, same socket path).
    env.wl = Some(env.api.serve(&env.sock).await.unwrap());
    assert_eq!(bearer(&served_again(&p, &up).await), "tok-alpha-2");
}

/// Polls alpha until it is served again (bounded: 5 s); returns that response.
async fn served_again(p: &Running, up: &Echo) -> Collected {
    let back = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let r = fetch(p, up, "alpha.test", "/").await;
        if r.status == StatusCode::OK {
            return r;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "no recovery after the Workload API returned: {}",
            r.body
        );
    }
}

/// Lanyard starts while the Workload API is not there yet (the SPIRE agent
/// starts after the pod, or its socket is mounted late): requests get a 503
/// naming it, nothing reaches the upstream, and service begins once it comes.
#[tokio::test]
async fn workload_api_missing_at_start_then_arriving() {
    let mut env = Env::new(Duration::from_secs(300)).await;
    env.wl.take().unwrap().stop().await;
    let up = env.w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let p = start(
        &env.one_tx(
            port,
            "token_cache: { backoff_initial: 100ms, backoff_max: 300ms }\n",
        ),
        env.w.dir.path(),
    )
    .await;
    let r = fetch(&p, &up, "alpha.test", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.body.contains("Workload API"), "{}", r.body);
    assert_eq!(up.hits(), 0);
    env.wl = Some(env.api.serve(&env.sock).await.unwrap());
    assert_eq!(bearer(&served_again(&p, &up).await), "tok-alpha-1");
}

#[tokio::test]
async fn a_misbehaving_issuer_gets_clear_errors_and_poisons_nothing() {
    let env = Env::new(Duration::from_secs(300)).await;
    let up = env.w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let cases: &[(&str, Mode, &str)] = &[
        (
            "empty",
            Mode::Reply(200, String::new()),
            "answered 200 OK with an empty body",
        ),
        (
            "json",
            Mode::Reply(200, "{\"access_token\": ".into()),
            "not a token response",
        ),
        (
            "huge",
            Mode::Reply(
                200,
                format!("{{\"access_token\":\"{}\"}}", "a".repeat(200_000)),
            ),
            "body over 65536 bytes",
        ),
        (
            "illegal",
            Mode::Reply(200, r#"{"access_token":"bad token\"x"}"#.into()),
            "token68",
        ),
        (
            "oauth",
            Mode::Reply(
                400,
                r#"{"error":"invalid_scope","error_description":"scope admin not allowed"}"#.into(),
            ),
            "answered 400 Bad Request: invalid_scope",
        ),
        ("slow", Mode::Hang, "did not answer within 500 ms"),
        ("reset", Mode::Reset, "request failed"),
        (
            "gateway",
            Mode::Reply(502, "<html>bad gateway</html>".into()),
            "answered 502 Bad Gateway without an OAuth error body",
        ),
        (
            "expired",
            Mode::Reply(200, r#"{"access_token":"tok","expires_in":0}"#.into()),
            "already expired",
        ),
        (
            "expired_jwt",
            Mode::Reply(
                200,
                // A JWT whose own exp is long past, whatever expires_in says.
                r#"{"access_token":"eyJhbGciOiJub25lIn0.eyJleHAiOjF9.c2ln","expires_in":3600}"#
                    .into(),
            ),
            "expired",
        ),
    ];
    let mut endpoints: Vec<String> = cases
        .iter()
        .map(|(aud, _, _)| format!("{{ name: {aud}, host: alpha.test, port: {port}, path: /{aud}, provider: tx, audience: {aud} }}"))
        .collect();
    endpoints.push(format!("{{ name: good, host: alpha.test, port: {port}, path: /good, provider: tx, audience: good }}"));
    let p = start(
        &env.yaml(
            &[env.grant("tx", "grant: token_exchange, timeout: 500ms")],
            &["alpha.test"],
            &endpoints,
            "",
        ),
        env.w.dir.path(),
    )
    .await;
    for (aud, mode, _) in cases {
        env.issuer.set_mode(aud, mode.clone());
    }
    for (aud, _, want) in cases {
        let r = fetch(&p, &up, "alpha.test", &format!("/{aud}")).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{aud}: {}",
            r.body
        );
        assert!(
            r.body.contains(want),
            "{aud}: wanted {want:?} in {}",
            r.body
        );
        assert!(
            !r.body.contains("not allowed"),
            "{aud}: an issuer's description reached the agent: {}",
            r.body
        );
        assert!(r.body.contains(&format!("endpoint '{aud}'")), "{}", r.body);
        assert!(
            !r.body.contains("eyJ") && r.body.len() < 600,
            "{aud}: {}",
            r.body
        );
        // Other keys are unaffected, each time.
        let ok = fetch(&p, &up, "alpha.test", "/good").await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
        assert_eq!(bearer(&ok), "tok-good-1");
    }
    assert_eq!(
        up.hits(),
        cases.len(),
        "a request without its credential reached the upstream"
    );
    // JWT-SVIDs (and the issuer's JWT) start "eyJ"; tokens here "tok-".
    lanyard_tests::logs::assert_never_logged(&["eyJ", "tok-good-1"]);
}

/// `spiffe.id` selects the identity: the matching ID is requested and
/// served; another one is refused by the Workload API (PermissionDenied) and
/// reported as the attestation failure it is, naming the ID.
#[tokio::test]
async fn spiffe_id_is_requested_and_a_refusal_says_attestation() {
    let env = Env::new(Duration::from_secs(300)).await;
    let up = env.w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let with_id = |id: &str| {
        env.one_tx(up.addr.port(), "").replace(
            "spiffe: { endpoint_socket:",
            &format!("spiffe: {{ id: \"{id}\", endpoint_socket:"),
        )
    };
    let p = start(&with_id(SPIFFE_ID), env.w.dir.path()).await;
    assert!(bearer(&fetch(&p, &up, "alpha.test", "/").await).starts_with("tok-alpha-"));
    p.shutdown().await;

    let other = "spiffe://lanyard.test/sandbox/someone-else";
    let p = start(&with_id(other), env.w.dir.path()).await;
    let r = fetch(&p, &up, "alpha.test", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(
        r.body.contains("PermissionDenied")
            && r.body.contains("not attested")
            && r.body.contains(other),
        "{}",
        r.body
    );
    assert_eq!(
        up.hits(),
        1,
        "a request without a credential reached the upstream"
    );

    let Err(e) = try_start(&with_id("not-a-spiffe-id"), env.w.dir.path()).await else {
        panic!("a malformed spiffe.id was accepted");
    };
    assert!(e.to_string().contains("spiffe.id"), "{e}");
}

#[tokio::test]
async fn revoke_forces_a_new_exchange_and_a_refusing_issuer_then_gets_a_503() {
    use lanyard_tests::ops::{self, value};
    let env = Env::new(Duration::from_secs(300)).await;
    let up = env.w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let p = start(
        &env.one_tx(
            port,
            "egress: { default: deny }\nadmin: { listen: 127.0.0.1:0 }\n",
        ),
        env.w.dir.path(),
    )
    .await;
    let admin = p.admin.unwrap();
    // Ready once the Workload API has answered, which the warm-up asks for at start.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ops::admin(admin, "GET", "/readyz", None).await.status != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let first = bearer(&fetch(&p, &up, "alpha.test", "/one").await);
    assert_eq!(bearer(&fetch(&p, &up, "alpha.test", "/two").await), first);
    assert_eq!(env.issuer.attempts(), 1, "the second request hit the cache");

    let debug = ops::admin(admin, "GET", "/debug/endpoints", None).await;
    let v: serde_json::Value = serde_json::from_str(&debug.body).unwrap();
    let e = &v["endpoints"][0];
    assert_eq!(e["name"], "alpha");
    assert_eq!(e["provider"], "tx");
    assert_eq!(e["grant"], "TokenExchange");
    assert_eq!(e["audience"], "alpha");
    assert_eq!(e["token"]["cached"], true);
    assert!(e["token"]["valid_for_s"].as_u64().unwrap() > 60);
    assert_eq!(v["spiffe_id"], SPIFFE_ID);

    let r = ops::admin(admin, "POST", "/revoke", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let dropped: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(dropped["tokens"], 1);
    assert!(dropped["svids"].as_u64().unwrap() >= 1);
    let second = bearer(&fetch(&p, &up, "alpha.test", "/three").await);
    assert_eq!(
        env.issuer.attempts(),
        2,
        "the very next request exchanged again"
    );
    assert_ne!(second, first);

    // The issuer now refuses this sandbox: after a revocation, no old token.
    env.issuer.set_default(Mode::Reply(
        400,
        r#"{"error":"invalid_grant","error_description":"sandbox disabled"}"#.into(),
    ));
    let r = ops::admin(admin, "POST", "/revoke?provider=tx", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let refused = fetch(&p, &up, "alpha.test", "/four").await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert!(refused.body.contains("invalid_grant"), "{}", refused.body);
    assert_eq!(env.issuer.attempts(), 3);
    let debug = ops::admin(admin, "GET", "/debug/endpoints", None).await;
    let v: serde_json::Value = serde_json::from_str(&debug.body).unwrap();
    assert_eq!(v["endpoints"][0]["token"]["cached"], false);
    assert!(
        v["endpoints"][0]["token"]["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid_grant")
    );

    // A denial for the audit trail.
    let (_s, r) = connect(p.addr, "elsewhere.test:443").await;
    assert_eq!(r.status, 403);

    let m = ops::metrics(admin, None).await;
    let g = |name: &str, labels: &[(&str, &str)]| value(&m, name, labels);
    assert_eq!(
        g(
            "lanyard_grant_exchanges_total",
            &[("provider", "tx"), ("result", "ok")]
        ),
        2.0
    );
    assert_eq!(
        g(
            "lanyard_grant_exchanges_total",
            &[("provider", "tx"), ("result", "error")]
        ),
        1.0
    );
    assert_eq!(
        g(
            "lanyard_grant_exchange_duration_seconds_count",
            &[("provider", "tx")]
        ),
        3.0
    );
    assert_eq!(
        g(
            "lanyard_requests_total",
            &[("endpoint", "alpha"), ("outcome", "injected")]
        ),
        3.0
    );
    assert_eq!(
        g(
            "lanyard_requests_total",
            &[("endpoint", "alpha"), ("outcome", "credential_error")]
        ),
        1.0
    );
    assert_eq!(g("lanyard_revocations_total", &[("result", "all")]), 1.0);
    assert_eq!(
        g("lanyard_revocations_total", &[("result", "provider")]),
        1.0
    );
    assert_eq!(
        g(
            "lanyard_cache_events_total",
            &[("cache", "token"), ("event", "hit")]
        ),
        1.0
    );
    assert_eq!(
        g(
            "lanyard_cache_events_total",
            &[("cache", "token"), ("event", "miss")]
        ),
        3.0
    );
    assert!(g("lanyard_workload_api_fetches_total", &[("result", "ok")]) >= 2.0);

    // The audit trail: the exchange, the injection it fed, the denial, the revocations.
    let audit = p.audit();
    let of = |kind: &str| {
        audit
            .iter()
            .filter(|e| e["event"] == kind)
            .collect::<Vec<_>>()
    };
    let exchanges = of("exchange");
    assert_eq!(exchanges.len(), 3, "{audit:#?}");
    let x = exchanges[0];
    assert_eq!(x["provider"], "tx");
    assert_eq!(x["issuer"], env.issuer.url.as_str());
    assert_eq!(x["audience"], "alpha");
    assert_eq!(x["scopes"], serde_json::json!([]));
    assert_eq!(x["result"], "ok");
    assert_eq!(x["spiffe_id"], SPIFFE_ID);
    let token_id = x["token_id"].as_str().unwrap();
    assert!(token_id.starts_with("hmac:"), "{token_id}");
    assert_eq!(exchanges[2]["result"], "error");
    assert!(
        exchanges[2]["error"]
            .as_str()
            .unwrap()
            .contains("invalid_grant")
    );
    let requests = of("request");
    assert_eq!(requests.len(), 4);
    let r0 = requests[0];
    assert_eq!(r0["endpoint"], "alpha");
    assert_eq!(r0["provider"], "tx");
    assert_eq!(r0["spiffe_id"], SPIFFE_ID);
    assert_eq!(r0["method"], "GET");
    assert_eq!(r0["path"], "/one");
    assert_eq!(r0["upstream"], format!("127.0.0.1:{port}"));
    assert_eq!(r0["status"], 200);
    assert_eq!(r0["injected"], true);
    assert_eq!(
        r0["token_id"], token_id,
        "the request names the token the exchange minted"
    );
    assert_ne!(requests[2]["token_id"], token_id);
    let denied = of("denied");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["reason"], "egress");
    assert_eq!(denied[0]["spiffe_id"], SPIFFE_ID);
    let revokes = of("revoke");
    assert_eq!(revokes.len(), 2);
    assert_eq!(revokes[0]["scope"], "all");
    assert_eq!(revokes[1]["scope"], "provider");
    assert_eq!(revokes[1]["target"], "tx");

    // No token or SVID in metrics, /debug or the audit trail.
    let svids: Vec<String> = env
        .issuer
        .forms()
        .iter()
        .map(|f| field(f, "subject_token").to_owned())
        .collect();
    let texts = [
        ops::admin(admin, "GET", "/metrics", None).await.body,
        ops::admin(admin, "GET", "/debug/endpoints", None)
            .await
            .body,
        std::fs::read_to_string(env.w.dir.path().join("audit.jsonl")).unwrap(),
    ];
    for t in &texts {
        for secret in svids.iter().chain([&first, &second]) {
            assert!(!t.contains(secret.as_str()), "a credential leaked into {t}");
        }
    }
    let mut all: Vec<&str> = svids.iter().map(String::as_str).collect();
    all.extend([first.as_str(), second.as_str()]);
    lanyard_tests::logs::assert_never_logged(&all);
}

#[tokio::test]
async fn reload_keeps_unchanged_tokens_and_drops_changed_ones() {
    let env = Env::new(Duration::from_secs(300)).await;
    let up = env.w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let endpoints = |alpha_scopes: &str| {
        vec![
            format!(
                "{{ name: alpha, host: alpha.test, port: {port}, path: /a, provider: tx, audience: alpha, scopes: [{alpha_scopes}] }}"
            ),
            format!(
                "{{ name: beta, host: alpha.test, port: {port}, path: /b, provider: tx, audience: beta }}"
            ),
        ]
    };
    let providers = [env.grant("tx", "grant: token_exchange")];
    let p = start(
        &env.yaml(&providers, &["alpha.test"], &endpoints("read"), ""),
        env.w.dir.path(),
    )
    .await;
    let a1 = bearer(&fetch(&p, &up, "alpha.test", "/a").await);
    let b1 = bearer(&fetch(&p, &up, "alpha.test", "/b").await);
    assert_eq!(env.issuer.attempts(), 2);

    // The same grants, written again (with the audit line start() added): nothing is exchanged anew.
    let file = env.w.dir.path().join("lanyard.yaml");
    let written = std::fs::read_to_string(&file).unwrap();
    p.runtime.reload().await.unwrap();
    assert_eq!(bearer(&fetch(&p, &up, "alpha.test", "/a").await), a1);
    assert_eq!(bearer(&fetch(&p, &up, "alpha.test", "/b").await), b1);
    assert_eq!(
        env.issuer.attempts(),
        2,
        "unchanged grants keep their tokens"
    );

    // alpha's scopes change: alpha exchanges again, beta keeps its token.
    std::fs::write(
        &file,
        written.replace("scopes: [read]", "scopes: [read, write]"),
    )
    .unwrap();
    p.runtime.reload().await.unwrap();
    let a2 = bearer(&fetch(&p, &up, "alpha.test", "/a").await);
    assert_ne!(a2, a1);
    assert_eq!(bearer(&fetch(&p, &up, "alpha.test", "/b").await), b1);
    assert_eq!(env.issuer.attempts(), 3);
    assert_eq!(field(&env.issuer.forms()[2], "scope"), "read write");

    // A config that breaks is refused whole: the running one keeps serving, tokens and all.
    std::fs::write(
        &file,
        written.replace("grant: token_exchange", "grant: telepathy"),
    )
    .unwrap();
    let e = p.runtime.reload().await.unwrap_err().to_string();
    assert!(
        e.contains(&format!("{}: providers.tx", file.display())),
        "{e}"
    );
    assert_eq!(bearer(&fetch(&p, &up, "alpha.test", "/a").await), a2);
    assert_eq!(env.issuer.attempts(), 3);
}

/// A call the endpoint's statements refuse fetches no token: the issuer
/// sees nothing until an allowed call comes.
#[tokio::test]
async fn a_refused_call_fetches_no_token() {
    let env = Env::new(Duration::from_secs(300)).await;
    let up = env.w.upstream("alpha", &["alpha.test"], &[H1]).await;
    let port = up.addr.port();
    let p = start(
        &env.yaml(
            &[env.grant("tx", "grant: token_exchange")],
            &["alpha.test"],
            &[format!(
                "{{ name: alpha, host: alpha.test, port: {port}, provider: tx, audience: alpha, statements: [ {{ actions: [GET], resources: [\"/read/**\"] }} ] }}"
            )],
            "",
        ),
        env.w.dir.path(),
    )
    .await;
    let r = fetch(&p, &up, "alpha.test", "/write/1").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(env.issuer.attempts(), 0, "a refused call fetched a token");
    assert_eq!(up.hits(), 0);
    let r = fetch(&p, &up, "alpha.test", "/read/1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(env.issuer.attempts(), 1);
}
