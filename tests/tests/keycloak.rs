//! Identity interop with a real IdP: SPIRE issues the sandbox's JWT-SVIDs,
//! Keycloak (federated client authentication through its SPIFFE identity
//! provider) exchanges them for tokens, Lanyard injects those into requests
//! to the demo service, which verifies them against Keycloak's JWKS.
//!
//! One SPIRE and one Keycloak serve every scenario in this file, run in turn
//! by one test (Keycloak takes seconds to start, and a process shared
//! between tests would outlive the test binary); each scenario starts its
//! own Lanyard.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use lanyard_examples::service::{self, Service, ServiceConfig};
use lanyard_tests::keycloak::{self, Keycloak};
use lanyard_tests::spire::{OidcDiscovery, Spire, SpireOptions, TRUST_DOMAIN};
use lanyard_tests::*;

const AGENT_ID: &str = "spiffe://demo.test/sandbox/agent-1";
const H1: &[u8] = b"http/1.1";
/// alice's password in the test realm (she signs in to the `portal` client).
const OWNER_PASSWORD: &str = "alice-test-password";
/// The `iss` SPIRE puts in JWT-SVIDs, and the issuer Keycloak's JWT
/// authorization grant identity provider trusts.
const SPIRE_ISSUER: &str = "https://oidc-discovery.demo.test";
/// The `lanyard-bearer` client's secret.
const BEARER_SECRET: &str = "lanyard-bearer-test-secret";

struct Idp {
    spire: Spire,
    keycloak: Keycloak,
    _oidc: OidcDiscovery,
}

/// SPIRE with the sandbox's entry (JWT-SVIDs carrying `iss`), SPIRE's
/// bundle served to Keycloak as a SPIFFE bundle endpoint does, SPIRE's OIDC
/// discovery provider serving the same keys as a standard JWKS, Keycloak
/// with `realms.json`.
async fn idp() -> Idp {
    let (spire, bundle_json, oidc) = tokio::task::spawn_blocking(|| {
        let s = Spire::start_with(&SpireOptions {
            jwt_issuer: Some(SPIRE_ISSUER.into()),
        });
        s.register(AGENT_ID, "unix:uid:0", None);
        let b = s.bundle_spiffe();
        let oidc = s.oidc_discovery();
        (s, b, oidc)
    })
    .await
    .unwrap();
    let bundle = keycloak::serve_json(bundle_json).await;
    let endpoint = format!("http://{bundle}/bundle");
    let realms = keycloak::realms(&[
        ("TRUST_DOMAIN", TRUST_DOMAIN),
        ("BUNDLE_ENDPOINT", &endpoint),
        ("SPIFFE_ID", AGENT_ID),
        ("OWNER_PASSWORD", OWNER_PASSWORD),
        ("SPIRE_ISSUER", SPIRE_ISSUER),
        ("SPIRE_JWKS", &oidc.jwks_url),
        ("BEARER_SECRET", BEARER_SECRET),
    ]);
    let keycloak = tokio::task::spawn_blocking(move || Keycloak::start(&realms))
        .await
        .unwrap();
    Idp {
        spire,
        keycloak,
        _oidc: oidc,
    }
}

/// Keycloak takes seconds to start: one SPIRE and one Keycloak serve every
/// scenario, in turn, each with a Lanyard of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_end_to_end() {
    let idp = idp().await;
    client_credentials_with_the_svid(&idp).await;
    an_unbound_spiffe_id_is_refused_with_the_issuers_error(&idp).await;
    on_behalf_of_alice_through_standard_token_exchange(&idp).await;
    jwt_bearer_through_keycloaks_jwt_authorization_grant(&idp).await;
}

/// One scenario: its own World, the alpha service (verifying Keycloak's
/// tokens from the `sandbox` realm's JWKS), and a Lanyard with `providers`
/// and `endpoints` (`PORT` stands for alpha's port).
struct Scene {
    w: World,
    svc: Service,
    port: u16,
}

impl Scene {
    async fn new(kc: &Keycloak) -> Self {
        let w = World::new();
        let svc = service::start(ServiceConfig {
            name: "alpha".into(),
            bind: loopback(),
            tls: w.leaf(&["alpha.demo.test"]).server_config(&[H1]).unwrap(),
            issuer: kc.issuer("sandbox"),
            issuer_addr: kc.addr.clone(),
            issuer_host: "127.0.0.1".into(),
            jwks_path: "/realms/sandbox/protocol/openid-connect/certs".into(),
            issuer_plain_http: true,
            roots: Vec::new(),
            scope: "alpha.read".into(),
        })
        .await
        .unwrap();
        let port = svc.addr.port();
        Self { w, svc, port }
    }

    async fn lanyard(&self, idp: &Idp, providers: &str, endpoints: &str) -> Running {
        let mut y = self.w.base_yaml();
        y.push_str(providers);
        y.push_str(&format!(
            "spiffe: {{ endpoint_socket: \"{}\" }}\nresolve: {{ alpha.demo.test: 127.0.0.1 }}\nendpoints:\n",
            idp.spire.endpoint()
        ));
        y.push_str(&endpoints.replace("PORT", &self.port.to_string()));
        start(&y, self.w.dir.path()).await
    }

    async fn get(&self, p: &Running, path: &str) -> Collected {
        get_via(p, "alpha.demo.test", self.port, path).await
    }

    fn accepted(&self) -> Vec<String> {
        self.svc.accepted.lock().unwrap().clone()
    }
}

/// A refusal as the agent sees it: 503, naming the endpoint and `want`,
/// with no JWT in the body.
fn refused(r: &Collected, endpoint: &str, want: &str) {
    assert_eq!(
        r.status,
        http::StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        r.body
    );
    assert!(r.body.contains(&format!("'{endpoint}'")), "{}", r.body);
    assert!(r.body.contains(want), "{}", r.body);
    assert!(
        !r.body.contains("eyJ"),
        "a JWT in the error body: {}",
        r.body
    );
}

const SPIFFE_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";

/// `client_credentials` authenticated by the JWT-SVID (`jwt-spiffe`), with
/// only `issuer:` configured: the token endpoint comes from Keycloak's
/// metadata and the SVID's single audience is the realm's issuer, which is
/// the only audience Keycloak accepts. Were the SVID minted for the token
/// endpoint URL (the RFC 7523 default), Keycloak would answer
/// `invalid_client` and this test would fail; the second endpoint shows
/// exactly that refusal, sanitised into a 503 that names the endpoint.
async fn client_credentials_with_the_svid(idp: &Idp) {
    let kc = &idp.keycloak;
    let scene = Scene::new(kc).await;
    let issuer = kc.issuer("sandbox");
    let providers = format!(
        "  kc: {{ token_grant: {{ issuer: \"{issuer}\", grant: client_credentials, client_assertion_type: \"{SPIFFE_ASSERTION}\", scopes: [alpha.read] }} }}\n  \
         kc-endpoint-aud: {{ token_grant: {{ issuer: \"{issuer}\", grant: client_credentials, client_assertion_type: \"{SPIFFE_ASSERTION}\", jwt_svid_audience: \"{issuer}/protocol/openid-connect/token\", scopes: [alpha.read] }} }}\n"
    );
    let endpoints = "  - { name: alpha, host: alpha.demo.test, port: PORT, path: /ok, provider: kc }\n  \
                     - { name: alpha-wrong-aud, host: alpha.demo.test, port: PORT, path: /wrong, provider: kc-endpoint-aud }\n";
    let p = scene.lanyard(idp, &providers, endpoints).await;

    let r = scene.get(&p, "/ok").await;
    assert_eq!(r.status, http::StatusCode::OK, "{}\n{}", r.body, kc.log());
    for want in [
        "audience: alpha\n".to_owned(),
        format!("issuer: {issuer}\n"),
        "client: lanyard-sandbox\n".to_owned(),
    ] {
        assert!(r.body.contains(&want), "missing {want:?} in {}", r.body);
    }
    assert!(
        r.body
            .lines()
            .any(|l| l.starts_with("scope: ") && l.split(' ').any(|s| s == "alpha.read")),
        "{}",
        r.body
    );

    refused(
        &scene.get(&p, "/wrong").await,
        "alpha-wrong-aud",
        "invalid_client",
    );
    assert_eq!(
        scene.accepted().len(),
        1,
        "the refused call reached the service"
    );
}

/// A SPIFFE ID no Keycloak client is bound to gets the issuer's refusal as
/// a sanitised 503 naming the endpoint and the issuer's error, and the
/// service is never called.
async fn an_unbound_spiffe_id_is_refused_with_the_issuers_error(idp: &Idp) {
    let kc = &idp.keycloak;
    let scene = Scene::new(kc).await;
    let providers = format!(
        "  kc: {{ token_grant: {{ issuer: \"{}\", grant: client_credentials, client_assertion_type: \"{SPIFFE_ASSERTION}\", scopes: [alpha.read] }} }}\n",
        kc.issuer("unbound")
    );
    let endpoints = "  - { name: alpha, host: alpha.demo.test, port: PORT, provider: kc }\n";
    let p = scene.lanyard(idp, &providers, endpoints).await;
    refused(&scene.get(&p, "/").await, "alpha", "invalid_client");
    assert!(scene.accepted().is_empty());
}

/// On-behalf-of with Keycloak's standard token exchange: alice signed in to
/// the provisioning portal, whose token (audience: the sandbox's client) is
/// left where only Lanyard reads it. Lanyard exchanges it, authenticating
/// the sandbox's client with the JWT-SVID (`actor: client_assertion`), for a
/// token whose subject is alice and whose client (`azp`) is the sandbox.
async fn on_behalf_of_alice_through_standard_token_exchange(idp: &Idp) {
    let kc = &idp.keycloak;
    let scene = Scene::new(kc).await;
    let issuer = kc.issuer("sandbox");
    let owner = kc.password_token("sandbox", "portal", "alice", OWNER_PASSWORD);
    let alice = claims(&owner)["sub"].as_str().unwrap().to_owned();
    let owner_dir = scene.w.dir.path().join("owner");
    std::fs::create_dir_all(&owner_dir).unwrap();
    let owner_file = owner_dir.join("token");
    std::fs::write(&owner_file, &owner).unwrap();
    let providers = format!(
        "  kc-obo: {{ token_grant: {{ issuer: \"{issuer}\", grant: token_exchange, client_assertion_type: \"{SPIFFE_ASSERTION}\", scopes: [alpha.read], on_behalf_of: {{ subject_token_file: {}, actor: client_assertion }} }} }}\n",
        owner_file.display()
    );
    let endpoints = "  - { name: alpha, host: alpha.demo.test, port: PORT, provider: kc-obo }\n";
    let p = scene.lanyard(idp, &providers, endpoints).await;
    let r = scene.get(&p, "/").await;
    assert_eq!(r.status, http::StatusCode::OK, "{}\n{}", r.body, kc.log());
    for want in [
        format!("subject: {alice}\n"),
        "client: lanyard-sandbox\n".to_owned(),
        format!("issuer: {issuer}\n"),
    ] {
        assert!(r.body.contains(&want), "missing {want:?} in {}", r.body);
    }
    // alice's token gone: a 503 that says so, and nothing on the sandbox's own.
    std::fs::remove_file(&owner_file).unwrap();
    refused(
        &scene.get(&p, "/").await,
        "alpha",
        "owner's token is unavailable",
    );
    assert_eq!(scene.accepted(), [alice]);
}

/// RFC 7523 `jwt_bearer`: the JWT-SVID is the authorization grant itself.
/// Keycloak's JWT authorization grant (a preview feature) trusts SPIRE as an
/// OIDC-style issuer: the SVID's `iss` (SPIRE's `jwt_issuer`) names the
/// identity provider, whose keys come from SPIRE's OIDC discovery provider,
/// and the SVID's subject is linked to a Keycloak user. The client
/// authenticates with its secret (read from a file); the token issued is
/// that user's, for the client.
async fn jwt_bearer_through_keycloaks_jwt_authorization_grant(idp: &Idp) {
    let kc = &idp.keycloak;
    let scene = Scene::new(kc).await;
    let issuer = kc.issuer("sandbox");
    let secret_dir = scene.w.dir.path().join("client-secret");
    std::fs::create_dir_all(&secret_dir).unwrap();
    let secret = secret_dir.join("secret");
    std::fs::write(&secret, BEARER_SECRET).unwrap();
    let providers = format!(
        "  kc-bearer: {{ token_grant: {{ issuer: \"{issuer}\", grant: jwt_bearer, client_id: lanyard-bearer, scopes: [alpha.read], extra_params: {{ client_secret: {{ file: {} }} }} }} }}\n",
        secret.display()
    );
    let endpoints = "  - { name: alpha, host: alpha.demo.test, port: PORT, provider: kc-bearer }\n";
    let p = scene.lanyard(idp, &providers, endpoints).await;
    let r = scene.get(&p, "/").await;
    assert_eq!(r.status, http::StatusCode::OK, "{}\n{}", r.body, kc.log());
    let agent = kc.user_id("sandbox", "agent-1");
    for want in [
        format!("subject: {agent}\n"),
        "client: lanyard-bearer\n".to_owned(),
        "audience: alpha\n".to_owned(),
        format!("issuer: {issuer}\n"),
    ] {
        assert!(r.body.contains(&want), "missing {want:?} in {}", r.body);
    }
    assert_eq!(scene.accepted(), [agent]);
}

/// A JWT's claims, unverified (the test reads its own token).
fn claims(jwt: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}
