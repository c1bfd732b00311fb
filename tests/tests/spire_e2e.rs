//! End to end with a real SPIRE server and agent: JWT-SVIDs from SPIRE,
//! exchanged at the demo issuer (which verifies them against the trust bundle
//! it fetches over the Workload API), injected into requests to the demo's
//! protected services. Covers every grant, an agent restart, short-lived
//! SVIDs being fetched again, and an issuer restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lanyard_examples::issuer::{self, Issuer, IssuerConfig};
use lanyard_examples::service::{self, Service, ServiceConfig};
use lanyard_tests::spire::Spire;
use lanyard_tests::*;

const AGENT_ID: &str = "spiffe://demo.test/sandbox/agent-1";
const H1: &[u8] = b"http/1.1";

struct Demo {
    w: World,
    spire: Spire,
    issuer: Issuer,
    alpha: Service,
    beta: Service,
    direct: lanyard_examples::echo::Echo,
}

async fn issuer_on(w: &World, spire: &Spire, bind: SocketAddr, ttl: u64) -> Issuer {
    let tls = w.leaf(&["issuer.demo.test"]).server_config(&[H1]).unwrap();
    let audiences: BTreeMap<String, Vec<String>> = [
        (
            "alpha".to_owned(),
            vec!["alpha.read".to_owned(), "alpha.write".to_owned()],
        ),
        ("beta".to_owned(), vec!["beta.read".to_owned()]),
    ]
    .into();
    issuer::start(IssuerConfig {
        name: "issuer.demo.test".into(),
        bind,
        tls,
        workload_api: spire.endpoint(),
        allowed_prefix: "spiffe://demo.test/sandbox/".into(),
        audiences,
        ttl,
    })
    .await
    .unwrap()
}

async fn service(w: &World, issuer: &Issuer, name: &str) -> Service {
    service::start(ServiceConfig {
        name: name.into(),
        bind: loopback(),
        tls: w
            .leaf(&[&format!("{name}.demo.test")])
            .server_config(&[H1])
            .unwrap(),
        issuer: issuer.url.clone(),
        issuer_addr: issuer.addr.to_string(),
        issuer_host: "issuer.demo.test".into(),
        jwks_path: "/jwks".into(),
        issuer_plain_http: false,
        roots: vec![w.pki.ca_der().clone()],
        scope: format!("{name}.read"),
    })
    .await
    .unwrap()
}

impl Demo {
    async fn new(svid_ttl: Option<u32>, token_ttl: u64) -> Self {
        let w = World::new();
        let spire = tokio::task::spawn_blocking(move || {
            let s = Spire::start();
            // This test process (and the in-process Lanyard) runs as root.
            s.register(AGENT_ID, "unix:uid:0", svid_ttl);
            s
        })
        .await
        .unwrap();
        let issuer = issuer_on(&w, &spire, loopback(), token_ttl).await;
        let alpha = service(&w, &issuer, "alpha").await;
        let beta = service(&w, &issuer, "beta").await;
        let direct = w.upstream("direct", &["direct.demo.test"], &[H1]).await;
        Demo {
            w,
            spire,
            issuer,
            alpha,
            beta,
            direct,
        }
    }

    fn yaml(&self, cache: &str) -> String {
        let grant = |name: &str, body: &str| {
            format!(
                "  {name}: {{ token_grant: {{ token_endpoint: \"{}/token\", {body} }} }}\n",
                self.issuer.url
            )
        };
        let mut y = self.w.base_yaml();
        y.push_str(&grant(
            "cc",
            "grant: client_credentials, client_id: lanyard-demo",
        ));
        y.push_str(&grant("ccs", "grant: client_credentials, client_assertion_type: \"urn:ietf:params:oauth:client-assertion-type:jwt-spiffe\""));
        y.push_str(&grant("tx", "grant: token_exchange"));
        y.push_str(&grant("jb", "grant: jwt_bearer"));
        // Discovery: the token endpoint from the issuer's RFC 8414 metadata,
        // the SVID minted for the issuer identifier.
        y.push_str(&format!(
            "  disc: {{ token_grant: {{ issuer: \"{}\", grant: client_credentials }} }}\n",
            self.issuer.url
        ));
        y.push_str("  svid: { token_grant: { grant: jwt_svid } }\n");
        y.push_str(&format!(
            "spiffe: {{ endpoint_socket: \"{}\" }}\nresolve: {{ issuer.demo.test: 127.0.0.1, alpha.demo.test: 127.0.0.1, beta.demo.test: 127.0.0.1, direct.demo.test: 127.0.0.1 }}\n{cache}endpoints:\n",
            self.spire.endpoint()
        ));
        let (a, b, d) = (
            self.alpha.addr.port(),
            self.beta.addr.port(),
            self.direct.addr.port(),
        );
        for p in ["cc", "ccs", "tx", "jb", "disc"] {
            y.push_str(&format!("  - {{ name: alpha-{p}, host: alpha.demo.test, port: {a}, path: /{p}, provider: {p}, audience: alpha, scopes: [alpha.read] }}\n"));
        }
        y.push_str(&format!("  - {{ name: beta, host: beta.demo.test, port: {b}, provider: tx, audience: beta, scopes: [beta.read] }}\n"));
        y.push_str(&format!("  - {{ name: direct, host: direct.demo.test, port: {d}, provider: svid, audience: direct }}\n"));
        y
    }
}

fn accepted(r: &Collected, aud: &str) {
    assert_eq!(r.status, http::StatusCode::OK, "{}", r.body);
    for want in [
        format!("audience: {aud}\n"),
        format!("scope: {aud}.read\n"),
        format!("subject: {AGENT_ID}\n"),
    ] {
        assert!(r.body.contains(&want), "missing {want:?} in {}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grant_through_real_spire() {
    let d = Demo::new(None, 300).await;
    let p = start(&d.yaml(""), d.w.dir.path()).await;
    for grant in ["cc", "ccs", "tx", "jb", "disc"] {
        let r = get_via(
            &p,
            "alpha.demo.test",
            d.alpha.addr.port(),
            &format!("/{grant}"),
        )
        .await;
        accepted(&r, "alpha");
    }
    accepted(
        &get_via(&p, "beta.demo.test", d.beta.addr.port(), "/").await,
        "beta",
    );
    assert_eq!(d.issuer.issued.load(std::sync::atomic::Ordering::SeqCst), 6);
    // Which audience each SVID was minted for: the token endpoint URL where
    // only that is configured, the issuer identifier where it is known.
    let audit = p.audit();
    let svid_aud = |provider: &str| {
        audit
            .iter()
            .find(|e| e["event"] == "exchange" && e["provider"] == provider)
            .map(|e| e["svid_audience"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("no exchange by {provider}: {audit:#?}"))
    };
    assert_eq!(svid_aud("cc"), format!("{}/token", d.issuer.url));
    assert_eq!(svid_aud("disc"), d.issuer.url);
    // jwt_svid: the upstream gets a SPIRE-issued SVID for its own audience.
    let r = get_via(&p, "direct.demo.test", d.direct.addr.port(), "/claims").await;
    assert!(
        r.body.contains(&format!("sub: {AGENT_ID}\n")) && r.body.contains("aud: [\"direct\"]"),
        "{}",
        r.body
    );
    // Both services saw the same workload, and nobody else.
    assert!(
        d.alpha
            .accepted
            .lock()
            .unwrap()
            .iter()
            .all(|s| s == AGENT_ID)
    );
    assert_eq!(d.beta.accepted.lock().unwrap().len(), 1);

    // The audit trail names the workload by the SPIFFE ID SPIRE attested,
    // and each injected token by the jti the issuer gave it.
    let audit = p.audit();
    let exchanges: Vec<_> = audit.iter().filter(|e| e["event"] == "exchange").collect();
    assert_eq!(exchanges.len(), 6, "{audit:#?}");
    let beta_x = exchanges
        .iter()
        .find(|e| e["audience"] == "beta")
        .expect("beta's exchange");
    assert_eq!(beta_x["provider"], "tx");
    assert_eq!(beta_x["issuer"], format!("{}/token", d.issuer.url));
    assert_eq!(beta_x["scopes"], serde_json::json!(["beta.read"]));
    assert_eq!(beta_x["result"], "ok");
    assert_eq!(beta_x["spiffe_id"], AGENT_ID);
    let jti = beta_x["token_id"].as_str().unwrap();
    assert!(jti.starts_with("jti:") && jti.len() > 8, "{jti}");
    let beta_r = audit
        .iter()
        .find(|e| e["event"] == "request" && e["endpoint"] == "beta")
        .expect("beta's request");
    assert_eq!(beta_r["spiffe_id"], AGENT_ID);
    assert_eq!(beta_r["provider"], "tx");
    assert_eq!(beta_r["method"], "GET");
    assert_eq!(beta_r["path"], "/");
    assert_eq!(
        beta_r["upstream"],
        format!("127.0.0.1:{}", d.beta.addr.port())
    );
    assert_eq!(beta_r["status"], 200);
    assert_eq!(beta_r["injected"], true);
    assert_eq!(beta_r["token_id"], jti);
    // The jwt_svid endpoint's token is a SPIRE SVID, which carries no jti.
    let direct = audit
        .iter()
        .find(|e| e["event"] == "request" && e["endpoint"] == "direct")
        .expect("direct's request");
    assert!(direct["token_id"].as_str().unwrap().starts_with("hmac:"));
}

/// On-behalf-of: a provisioning service created the sandbox for alice and
/// left her token in a file only Lanyard reads. The issued token's `sub` is
/// alice and its `act.sub` the sandbox's SPIFFE ID (RFC 8693 §4.1), as the
/// service sees them. A replaced token is used at once; an expired or
/// missing one gets a 503 that says so, and the sandbox's own identity is
/// never used instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_behalf_of_carries_the_owner_and_the_sandbox() {
    let d = Demo::new(None, 300).await;
    let owner_dir = d.w.dir.path().join("owner");
    std::fs::create_dir_all(&owner_dir).unwrap();
    let owner_file = owner_dir.join("token");
    std::fs::write(
        &owner_file,
        d.issuer.mint_owner("alice@example.com", 300).unwrap(),
    )
    .unwrap();
    let mut y = d.w.base_yaml();
    y.push_str(&format!(
        "  obo: {{ token_grant: {{ issuer: \"{}\", grant: token_exchange, on_behalf_of: {{ subject_token_file: {} }} }} }}\n",
        d.issuer.url,
        owner_file.display()
    ));
    y.push_str(&format!(
        "spiffe: {{ endpoint_socket: \"{}\" }}\nresolve: {{ issuer.demo.test: 127.0.0.1, alpha.demo.test: 127.0.0.1 }}\nendpoints:\n  - {{ name: alpha, host: alpha.demo.test, port: {}, provider: obo, audience: alpha, scopes: [alpha.read] }}\n",
        d.spire.endpoint(),
        d.alpha.addr.port()
    ));
    let p = start(&y, d.w.dir.path()).await;
    let port = d.alpha.addr.port();
    let r = get_via(&p, "alpha.demo.test", port, "/").await;
    assert_eq!(r.status, http::StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains("subject: alice@example.com\n"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains(&format!("actor: {AGENT_ID}\n")),
        "{}",
        r.body
    );

    // Replaced (by rename, as a secret mount does): the next request acts for bob.
    let tmp = owner_dir.join("token.new");
    std::fs::write(&tmp, d.issuer.mint_owner("bob@example.com", 300).unwrap()).unwrap();
    std::fs::rename(&tmp, &owner_file).unwrap();
    let r = get_via(&p, "alpha.demo.test", port, "/").await;
    assert!(r.body.contains("subject: bob@example.com\n"), "{}", r.body);

    // Expired: refused, though a token exchanged for bob is still cached.
    std::fs::write(&tmp, d.issuer.mint_owner("bob@example.com", 0).unwrap()).unwrap();
    std::fs::rename(&tmp, &owner_file).unwrap();
    let r = get_via(&p, "alpha.demo.test", port, "/").await;
    assert_eq!(
        r.status,
        http::StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        r.body
    );
    assert!(r.body.contains("expired"), "{}", r.body);
    assert!(
        !r.body.contains("eyJ"),
        "the owner's token in an error body: {}",
        r.body
    );
    // Missing.
    std::fs::remove_file(&owner_file).unwrap();
    let r = get_via(&p, "alpha.demo.test", port, "/").await;
    assert_eq!(
        r.status,
        http::StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        r.body
    );
    assert!(
        r.body.contains("owner's token is unavailable"),
        "{}",
        r.body
    );

    // Every call the service accepted named an owner, never the sandbox alone.
    let accepted = d.alpha.accepted.lock().unwrap().clone();
    assert_eq!(accepted, ["alice@example.com", "bob@example.com"]);
    assert_eq!(d.issuer.issued.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A team moving from OpenShell brings its provider profile as it is:
/// `lanyard import openshell` turns it into providers and endpoints, and the
/// result gets alpha its token and, through `audience_overrides`, beta a
/// token of its own audience and scopes, from real SPIRE and the demo issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openshell_profile_imported_as_it_is() {
    let d = Demo::new(None, 300).await;
    let (a, b) = (d.alpha.addr.port(), d.beta.addr.port());
    let profile = format!(
        "id: demo-services\ndisplay_name: Demo services\ncategory: demo\nendpoints:\n  - {{ host: alpha.demo.test, port: {a}, protocol: rest, tls: terminate, access: read-write, enforcement: enforce }}\nbinaries: []\ncredentials:\n  - name: issuer\n    auth_style: bearer\n    header_name: Authorization\n    token_grant:\n      token_endpoint: {}/token\n      audience: alpha\n      scopes: [alpha.read]\n      cache_ttl_seconds: 300\n      audience_overrides:\n        - {{ host: beta.demo.test, port: {b}, path: /, audience: beta, scopes: [beta.read] }}\n",
        d.issuer.url
    );
    let file = d.w.dir.path().join("profile.yaml");
    std::fs::write(&file, profile).unwrap();
    let imported = lanyard_supervisor::openshell::import(&file).unwrap();
    // The test's base config, less its own providers, then the import.
    let base = d.w.base_yaml();
    let head = base.split("providers:").next().unwrap();
    let y = format!(
        "{head}spiffe: {{ endpoint_socket: \"{}\" }}\nresolve: {{ issuer.demo.test: 127.0.0.1, alpha.demo.test: 127.0.0.1, beta.demo.test: 127.0.0.1 }}\n{imported}",
        d.spire.endpoint()
    );
    let p = start(&y, d.w.dir.path()).await;
    accepted(&get_via(&p, "alpha.demo.test", a, "/").await, "alpha");
    accepted(&get_via(&p, "beta.demo.test", b, "/").await, "beta");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_agent_restart_is_survived() {
    let mut d = Demo::new(Some(6), 4).await;
    let p = start(
        &d.yaml("token_cache: { skew: 0s, backoff_initial: 200ms, backoff_max: 1s }\n"),
        d.w.dir.path(),
    )
    .await;
    let port = d.alpha.addr.port();
    accepted(&get_via(&p, "alpha.demo.test", port, "/tx").await, "alpha");
    let svids_before = d.issuer.svids.lock().unwrap().len();
    tokio::task::block_in_place(|| d.spire.stop_agent());
    // The cached token keeps serving while the agent is away.
    accepted(&get_via(&p, "alpha.demo.test", port, "/tx").await, "alpha");
    tokio::task::block_in_place(|| d.spire.start_agent());
    let back = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let r = get_via(&p, "alpha.demo.test", port, "/tx").await;
        assert!(
            r.status == http::StatusCode::OK || r.status == http::StatusCode::SERVICE_UNAVAILABLE,
            "unexpected {}: {}",
            r.status,
            r.body
        );
        if r.status == http::StatusCode::OK && d.issuer.svids.lock().unwrap().len() > svids_before {
            accepted(&r, "alpha");
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(40),
            "no new SVID after the agent returned: {}\n{}",
            r.body,
            d.spire.agent_log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_svids_are_fetched_again() {
    let d = Demo::new(Some(4), 2).await;
    let p = start(
        &d.yaml("token_cache: { skew: 0s, refresh_ahead: 0.5 }\n"),
        d.w.dir.path(),
    )
    .await;
    let port = d.alpha.addr.port();
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while t0.elapsed() < Duration::from_secs(9) {
        tick.tick().await;
        accepted(&get_via(&p, "alpha.demo.test", port, "/jb").await, "alpha");
    }
    let svids = d.issuer.svids.lock().unwrap().len();
    assert!(
        svids >= 3,
        "only {svids} distinct JWT-SVIDs over 9 s with a 4 s TTL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_restart_is_survived() {
    let d = Demo::new(None, 3).await;
    let p = start(
        &d.yaml("token_cache: { skew: 0s, backoff_initial: 200ms, backoff_max: 1s }\n"),
        d.w.dir.path(),
    )
    .await;
    let port = d.alpha.addr.port();
    accepted(&get_via(&p, "alpha.demo.test", port, "/cc").await, "alpha");
    let addr = d.issuer.addr;
    d.issuer.stop();
    // Cached token still accepted by alpha.
    accepted(&get_via(&p, "alpha.demo.test", port, "/cc").await, "alpha");
    // A new issuer process on the same address, with a new signing key.
    let again = issuer_on(&d.w, &d.spire, addr, 3).await;
    let back = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let r = get_via(&p, "alpha.demo.test", port, "/cc").await;
        if again.issued.load(std::sync::atomic::Ordering::SeqCst) > 0
            && r.status == http::StatusCode::OK
        {
            // alpha fetched the new issuer's JWKS on the unknown kid.
            accepted(&r, "alpha");
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "no token from the restarted issuer: {}",
            r.body
        );
    }
}
