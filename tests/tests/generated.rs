//! Generated attacks on the decision the pipeline makes before any I/O:
//! which names the agent used (CONNECT authority, TLS SNI, absolute-form or
//! `:authority`, Host headers), which path and method, over which front end;
//! and whether a credential is injected. The code under test is the
//! pipeline's own (`Target::parse_authority`, `Router::connect_plan`,
//! `inject::sni_problem`, `inject::decide`), not a copy.
//!
//! The oracle is written independently, from tables: every generated name
//! is drawn with the identity it denotes (or `Ambiguous` when servers
//! disagree about it), and a path is judged under a dozen readings a lenient
//! server might apply (percent-decoding once or twice, backslashes,
//! `;params`, overlong UTF-8). A credential may be injected only when every
//! name denotes the endpoint, every reading of the path Lanyard sends
//! upstream stays under its prefix, the method is one the endpoint lists, and cleartext goes only to
//! loopback. The converse is not required: refusing more is allowed.
//!
//! At least `LANYARD_GENERATED_CASES` cases (default 1 000 000) run, or as
//! many as fit in `LANYARD_GENERATED_SECS` (default 120); the seed is
//! printed and `LANYARD_GENERATED_SEED=<hex>` replays a run. Shrunk failures
//! found so far are kept in `REGRESSIONS` and run first.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    reason = "integration tests: a panic is a failed assertion; the seed is printed"
)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use lanyard_proxy::inject::{self, Scheme};
use lanyard_proxy::matcher::{ConnectPlan, Router};
use lanyard_proxy::parse::Target;
use lanyard_tests::oracle::{self, readings, under};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// What a spelling of a host denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Id {
    Alpha,
    Loop,
    Evil,
    /// Servers, browsers and proxies read it differently (userinfo,
    /// delimiters, NUL): a credential must never follow it.
    Ambiguous,
}

/// Host spellings and what they denote.
const HOSTS: &[(Id, &str)] = &[
    (Id::Alpha, "alpha.test"),
    (Id::Alpha, "ALPHA.TEST"),
    (Id::Alpha, "Alpha.Test"),
    (Id::Alpha, "alpha.test."),
    (Id::Alpha, "alpha\u{3002}test"),
    (Id::Alpha, "alpha\u{ff0e}test"),
    (Id::Alpha, "alpha\u{ff61}test"),
    (Id::Evil, "evil.test"),
    (Id::Evil, "alpha.test.evil.test"),
    (Id::Evil, "alpha-test"),
    (Id::Evil, "alpha.tes"),
    (Id::Evil, "lpha.test"),
    (Id::Evil, "xn--alpha-test"),
    (Id::Evil, "alpha.test.."),
    (Id::Ambiguous, "alpha.test@evil.test"),
    (Id::Ambiguous, "evil.test@alpha.test"),
    (Id::Ambiguous, "alpha.test%00"),
    (Id::Ambiguous, "alpha%2etest"),
    (Id::Ambiguous, "alpha.test\\@evil.test"),
    (Id::Ambiguous, "alpha.test#@evil.test"),
    (Id::Ambiguous, "alpha.test/evil"),
    (Id::Ambiguous, "alpha.test?x"),
    (Id::Ambiguous, "alpha .test"),
    (Id::Ambiguous, ""),
    (Id::Loop, "127.0.0.1"),
    (Id::Loop, "127.1"),
    (Id::Loop, "0x7f.0.0.1"),
    (Id::Loop, "0177.0.0.1"),
    (Id::Loop, "2130706433"),
    (Id::Loop, "0x7f000001"),
    (Id::Evil, "127.0.0.2"),
    (Id::Evil, "[::1]"),
    (Id::Evil, "[::ffff:127.0.0.1]"),
    (Id::Ambiguous, "127.0.0.1.evil.test"),
    (Id::Ambiguous, "[127.0.0.1]"),
];

/// Port spellings after the host (`None`: no port written) and the number
/// they denote (`None`: not a port).
const PORTS: &[(Option<&str>, Option<u16>)] = &[
    (None, None),
    (Some("443"), Some(443)),
    (Some("0443"), Some(443)),
    (Some("8443"), Some(8443)),
    (Some("80"), Some(80)),
    (Some("+443"), None),
    (Some(""), None),
    (Some("65979"), None),
    (Some("4 43"), None),
    (Some("443x"), None),
];

/// Path segments, from plain to every encoding trick seen in the wild.
const SEGMENTS: &[&str] = &[
    "api",
    "api",
    "api",
    "API",
    "apix",
    "v1",
    "admin",
    "",
    ".",
    "..",
    "%2e",
    "%2E",
    ".%2e",
    "%2e.",
    "%2e%2e",
    "%252e%252e",
    "%2f",
    "%2F",
    "%252f",
    "%5c",
    "%5C",
    "..%2f",
    "..%5c",
    "a;b",
    "..;",
    ";",
    ";x=1",
    "%3b",
    "%00",
    "%c0%ae",
    "%c0%ae%c0%ae",
    "%c0%af",
    "~",
    "%7e",
    "%61pi",
    "x%3b..",
    "%u002e",
    "..%00",
    "%2e%2e%2f",
    "%25",
    "%",
];

const METHODS: &[&str] = &[
    "GET", "GET", "POST", "PUT", "DELETE", "TRACE", "CONNECT", "OPTIONS", "HEAD", "get", "PATCH",
];

/// How the request reached Lanyard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Front {
    /// CONNECT, then TLS (SNI) inside.
    Connect,
    /// Redirected TLS: the target is SNI + original port.
    Transparent,
    /// Absolute-form `http://` to the proxy.
    Plain,
}

#[derive(Debug, Clone)]
struct Name {
    host: usize,
    port: usize,
}

impl Name {
    fn text(&self) -> String {
        let h = HOSTS[self.host].1;
        match PORTS[self.port].0 {
            None => h.to_owned(),
            Some(p) => format!("{h}:{p}"),
        }
    }
    fn id(&self) -> Id {
        HOSTS[self.host].0
    }
    /// The port it denotes with `default` for an absent one; `None`: invalid.
    fn port(&self, default: u16) -> Option<u16> {
        match PORTS[self.port] {
            (None, _) => Some(default),
            (Some(_), n) => n,
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    front: Front,
    /// CONNECT authority (Connect), SNI host (Transparent: with its port as
    /// the original destination port), absolute-form authority (Plain).
    outer: Name,
    /// TLS SNI in a CONNECT tunnel (`None`: the client sent none).
    sni: Option<usize>,
    h2: bool,
    /// Absolute-form or `:authority` inside the tunnel.
    inner: Option<Name>,
    hosts: Vec<Name>,
    method: usize,
    path: Vec<usize>,
    double_slash: bool,
    query: bool,
}

fn name() -> impl Strategy<Value = Name> {
    // Mostly well-formed names of the endpoints, so agreement is reached
    // often enough for the path and method checks to matter.
    let host = prop_oneof![
        3 => 0usize..7,
        1 => 0..HOSTS.len(),
        1 => 24usize..30,
    ];
    let port = prop_oneof![3 => 0usize..4, 1 => 0..PORTS.len()];
    (host, port).prop_map(|(host, port)| Name { host, port })
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![3 => Just(Front::Connect), 3 => Just(Front::Transparent), 1 => Just(Front::Plain)],
        name(),
        proptest::option::weighted(0.8, prop_oneof![3 => 0usize..7, 1 => 0..HOSTS.len()]),
        any::<bool>(),
        proptest::option::weighted(0.4, name()),
        prop_oneof![
            3 => proptest::collection::vec(name(), 0..2),
            1 => proptest::collection::vec(name(), 0..4),
        ],
        prop_oneof![3 => 0usize..3, 1 => 0..METHODS.len()],
        (
            proptest::bool::weighted(0.8),
            proptest::collection::vec(
                prop_oneof![3 => 4usize..8, 1 => 0..SEGMENTS.len()],
                0..4,
            ),
        )
            .prop_map(|(api, mut rest)| {
                if api {
                    rest.insert(0, 0);
                }
                rest
            }),
        proptest::bool::weighted(0.1),
        proptest::bool::weighted(0.2),
    )
        .prop_map(
            |(front, outer, sni, h2, inner, hosts, method, path, double_slash, query)| Case {
                front,
                outer,
                sni,
                h2,
                inner,
                hosts,
                method,
                path,
                double_slash,
                query,
            },
        )
}

impl Case {
    fn path_text(&self) -> String {
        let mut p = String::from(if self.double_slash { "//" } else { "/" });
        let segs: Vec<&str> = self.path.iter().map(|&i| SEGMENTS[i]).collect();
        p.push_str(&segs.join("/"));
        p
    }
}

/// The endpoints: alpha over TLS under /api for GET and POST; a loopback
/// endpoint for cleartext; nothing else is an endpoint.
fn router() -> Router {
    let json = serde_json::json!({
        "listen": "127.0.0.1:0",
        "ca": { "dir": "/nonexistent" },
        "endpoints": [
            { "name": "alpha", "host": "alpha.test", "port": 443, "path": "/api",
              "methods": ["GET", "POST"], "provider": "p" },
            { "name": "loop", "host": "127.0.0.1", "port": 8443, "path": "/api",
              "methods": ["GET", "POST"], "provider": "p" },
        ],
    });
    let config: lanyard_proxy::config::ProxyConfig = serde_json::from_value(json).unwrap();
    let providers: BTreeSet<String> = ["p".to_owned()].into();
    lanyard_proxy::settings::Settings::build(config, &providers)
        .unwrap()
        .router
}

/// The endpoint's identity and port, by rule name.
fn endpoint(rule: &str) -> (Id, u16) {
    match rule {
        "alpha" => (Id::Alpha, 443),
        "loop" => (Id::Loop, 8443),
        other => panic!("unknown rule {other}"),
    }
}

/// What the pipeline decides: `Some((rule name, path sent upstream))` when it injects.
fn pipeline(router: &Router, c: &Case) -> Option<(String, String)> {
    let method = Method::from_bytes(METHODS[c.method].as_bytes()).ok()?;
    // The front end's target, as accept.rs / transparent.rs derive it.
    let (target, scheme) = match c.front {
        Front::Connect => (
            Target::parse_authority(&c.outer.text(), None).ok()?,
            Scheme::Https,
        ),
        Front::Transparent => {
            let host = lanyard_proxy::parse::Host::parse(HOSTS[c.outer.host].1).ok()?;
            let port = c.outer.port(443)?;
            (Target { host, port }, Scheme::Https)
        }
        Front::Plain => (
            Target::parse_authority(&c.outer.text(), Some(80)).ok()?,
            Scheme::Http,
        ),
    };
    if router.connect_plan(&target) != ConnectPlan::Intercept {
        return None;
    }
    if c.front != Front::Plain {
        let sni = match c.front {
            Front::Transparent => Some(HOSTS[c.outer.host].1),
            _ => c.sni.map(|i| HOSTS[i].1),
        };
        if inject::sni_problem(sni, &target).is_some() {
            return None;
        }
    }
    // The request target as hyper would hand it over.
    let pq = format!("{}{}", c.path_text(), if c.query { "?q=1" } else { "" });
    let absolute = match (c.front, c.h2) {
        (Front::Plain, _) => Some(c.outer.text()),
        (_, true) => Some(c.inner.as_ref().unwrap_or(&c.outer).text()),
        (_, false) => c.inner.as_ref().map(Name::text),
    };
    // A '/', '?' or '#' ends a URI's authority, so such a spelling is a
    // different authority plus path there: the table cannot say what it
    // denotes, and the case is dropped as not injected.
    if absolute
        .as_ref()
        .is_some_and(|a| a.contains(['/', '?', '#']))
    {
        return None;
    }
    let uri_text = match &absolute {
        Some(a) => format!(
            "{}://{a}{pq}",
            if scheme == Scheme::Http {
                "http"
            } else {
                "https"
            }
        ),
        None => pq,
    };
    let uri: Uri = uri_text.parse().ok()?;
    let mut headers = HeaderMap::new();
    for h in &c.hosts {
        headers.append(http::header::HOST, HeaderValue::from_str(&h.text()).ok()?);
    }
    let version = if c.h2 && c.front != Front::Plain {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let d = inject::decide(router, &target, scheme, &method, &uri, &headers, version).ok()?;
    let rule = d.rule?;
    if c.front == Front::Plain {
        // Where the name leads: alpha.test to a public address, 127.0.0.1 to itself.
        let addr = match &target.host {
            lanyard_proxy::parse::Host::Ip(ip) => std::net::SocketAddr::new(*ip, target.port),
            lanyard_proxy::parse::Host::Name(_) => ([192, 0, 2, 1], target.port).into(),
        };
        if !inject::cleartext_allowed(rule, addr) {
            return None;
        }
    }
    Some((rule.name.clone(), d.path))
}

/// Why injecting for `rule` would be wrong for this case, if it would be.
fn oracle(c: &Case, rule: &str, sent: &str) -> Result<(), String> {
    let (id, port) = endpoint(rule);
    let default = if c.front == Front::Plain { 80 } else { 443 };
    let agrees = |what: &str, n: &Name| -> Result<(), String> {
        if n.id() != id || n.port(default) != Some(port) {
            return Err(format!(
                "{what} {:?} does not denote the endpoint",
                n.text()
            ));
        }
        Ok(())
    };
    agrees("outer name", &c.outer)?;
    if c.front == Front::Connect
        && let Some(s) = c.sni
        && HOSTS[s].0 != id
    {
        return Err(format!("SNI {:?} does not denote the endpoint", HOSTS[s].1));
    }
    if c.front != Front::Plain
        && let Some(inner) = &c.inner
    {
        agrees("request authority", inner)?;
    }
    if c.hosts.len() > 1 {
        return Err("several Host headers".into());
    }
    for h in &c.hosts {
        agrees("Host", h)?;
    }
    if !matches!(METHODS[c.method], "GET" | "POST") {
        return Err(format!(
            "method {} is not the endpoint's",
            METHODS[c.method]
        ));
    }
    // The upstream sees the path Lanyard sends, not the agent's spelling.
    for r in readings(sent) {
        if !under(&r, "/api") {
            return Err(format!("a lenient server reads the path {sent:?} as {r:?}"));
        }
    }
    if c.front == Front::Plain && id != Id::Loop {
        return Err("cleartext to a non-loopback endpoint".into());
    }
    Ok(())
}

/// Shrunk failures from earlier runs, replayed first on every run.
fn regressions() -> Vec<Case> {
    let n = |host: usize, port: usize| Name { host, port };
    vec![
        // CONNECT alpha.test:443, SNI alpha.test, GET /api/%2e%2e/admin: an
        // encoded dot segment must not pass for a path under /api.
        Case {
            front: Front::Connect,
            outer: n(0, 1),
            sni: Some(0),
            h2: false,
            inner: None,
            hosts: vec![n(0, 0)],
            method: 0,
            path: vec![0, 14, 6],
            double_slash: false,
            query: false,
        },
    ]
}

fn check(router: &Router, c: &Case, injected: &mut u64) -> Result<(), TestCaseError> {
    if let Some((rule, sent)) = pipeline(router, c) {
        *injected += 1;
        if let Err(why) = oracle(c, &rule, &sent) {
            return Err(TestCaseError::fail(format!(
                "credential of '{rule}' injected although {why}"
            )));
        }
    }
    Ok(())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_credential_goes_only_where_every_name_and_reading_agree() {
    let router = router();
    let mut injected = 0u64;
    for c in regressions() {
        check(&router, &c, &mut injected).unwrap();
    }
    let want: u64 = env_or("LANYARD_GENERATED_CASES", 1_000_000);
    let budget = Duration::from_secs(env_or("LANYARD_GENERATED_SECS", 120));
    let seed = oracle::seed("LANYARD_GENERATED_SEED", "generated attacks");
    let start = Instant::now();
    let mut ran = 0u64;
    let mut batch = 0u64;
    let strategy = case();
    while ran < want && start.elapsed() < budget {
        let per = 20_000.min(want - ran);
        let mut runner = oracle::runner(seed, batch, u32::try_from(per).unwrap());
        let found = std::cell::Cell::new(0u64);
        let result = runner.run(&strategy, |c| {
            let mut n = 0;
            let r = check(&router, &c, &mut n);
            found.set(found.get() + n);
            r
        });
        injected += found.get();
        if let Err(e) = result {
            panic!("seed {seed:016x}, batch {batch}: {e}");
        }
        ran += per;
        batch += 1;
    }
    eprintln!(
        "generated attacks: {ran} cases in {:.1} s, {injected} injected",
        start.elapsed().as_secs_f64()
    );
    assert!(
        ran >= want.min(100_000),
        "only {ran} cases ran in {budget:?}"
    );
    // The generator must reach the allowed space, or the oracle is never tested.
    assert!(
        injected * 50 >= ran,
        "only {injected} of {ran} cases injected"
    );
}

#[test]
fn the_readings_catch_known_escapes() {
    // The oracle itself: each of these escapes /api under some reading.
    for p in [
        "/api/%2e%2e/admin",
        "/api/..%2fadmin",
        "/api/..;/admin",
        "/api/%252e%252e/admin",
        "/api/..%5cadmin",
        "/api/%c0%ae%c0%ae/admin",
        "/api%00/../admin",
    ] {
        assert!(
            readings(p).iter().any(|r| !under(r, "/api")),
            "{p}: {:?}",
            readings(p)
        );
    }
    for p in ["/api", "/api/x", "/api/x/../y", "/api/x;v=1/y"] {
        assert!(
            readings(p).iter().all(|r| under(r, "/api")),
            "{p}: {:?}",
            readings(p)
        );
    }
}
