//! The demo token issuer. It verifies JWT-SVIDs against the SPIRE trust
//! bundle it fetches over the Workload API (no key copied by hand), enforces
//! `aud`, `exp`, `nbf` (30 s leeway) and an allowed SPIFFE ID prefix, and
//! mints ES256 access tokens for the audiences and scopes it knows.
//!
//! Grants: `client_credentials` with a `jwt-bearer` or `jwt-spiffe` client
//! assertion, RFC 8693 `token-exchange`, and RFC 7523 `jwt-bearer`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::https::{self, Req};
use crate::jwt::{self, Es256, Key};

const LEEWAY_S: u64 = 30;

/// What the issuer accepts and grants.
pub struct IssuerConfig {
    /// Its host name (`issuer.demo.test`); the token endpoint is `https://NAME:PORT/token`.
    pub name: String,
    /// Where to listen.
    pub bind: SocketAddr,
    /// Its TLS server config.
    pub tls: Arc<rustls::ServerConfig>,
    /// The Workload API (`unix:///...`) to fetch JWT bundles from.
    pub workload_api: String,
    /// SPIFFE IDs allowed to obtain tokens start with this.
    pub allowed_prefix: String,
    /// Audience → scopes that may be granted for it.
    pub audiences: BTreeMap<String, Vec<String>>,
    /// Token lifetime in seconds.
    pub ttl: u64,
}

/// A running issuer.
pub struct Issuer {
    /// Bound address.
    pub addr: SocketAddr,
    /// `https://NAME:PORT`.
    pub url: String,
    /// Tokens issued so far.
    pub issued: Arc<AtomicUsize>,
    /// Distinct JWT-SVIDs presented so far (by digest), to see re-fetches.
    pub svids: Arc<Mutex<Vec<String>>>,
    stop: tokio::task::AbortHandle,
    state: Arc<State>,
}

impl Issuer {
    /// Stops accepting connections (the port is free again).
    pub fn stop(&self) {
        self.stop.abort();
    }

    /// A token for the human `owner`, as the sign-in a provisioning service
    /// holds would give it: signed by this issuer, `sub` the owner, valid for
    /// `ttl_s` seconds (0: already expired). A sandbox created on the owner's
    /// behalf exchanges it, with its own JWT-SVID as actor, for tokens that
    /// carry both.
    pub fn mint_owner(&self, owner: &str, ttl_s: u64) -> Result<String, String> {
        let now = jwt::now();
        self.state.key.sign(&json!({
            "iss": self.url, "sub": owner, "aud": self.url, "iat": now,
            "exp": if ttl_s == 0 { now.saturating_sub(60) } else { now + ttl_s },
            "jti": self.state.key.jti(),
        }))
    }
}

struct State {
    cfg: IssuerConfig,
    url: String,
    key: Es256,
    bundle: RwLock<HashMap<String, Key>>,
    client: tokio::sync::Mutex<Option<spiffe::WorkloadApiClient>>,
    issued: Arc<AtomicUsize>,
    svids: Arc<Mutex<Vec<String>>>,
}

/// Starts the issuer.
pub async fn start(cfg: IssuerConfig) -> Result<Issuer, String> {
    let key = Es256::generate()?;
    let issued = Arc::new(AtomicUsize::new(0));
    let svids = Arc::new(Mutex::new(Vec::new()));
    let listener =
        std::net::TcpListener::bind(cfg.bind).map_err(|e| format!("bind {}: {e}", cfg.bind))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    drop(listener);
    let url = format!("https://{}:{}", cfg.name, addr.port());
    let tls = cfg.tls.clone();
    let state = Arc::new(State {
        cfg,
        url: url.clone(),
        key,
        bundle: RwLock::new(HashMap::new()),
        client: tokio::sync::Mutex::new(None),
        issued: issued.clone(),
        svids: svids.clone(),
    });
    state.refresh_bundle().await?;
    let s = state.clone();
    let (addr, stop) = https::serve(addr, tls, move |req| {
        let s = s.clone();
        async move { s.handle(req).await }
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(Issuer {
        addr,
        url,
        issued,
        svids,
        stop,
        state,
    })
}

fn oauth_error(
    status: StatusCode,
    error: &str,
    description: &str,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    crate::log(&format!("issuer: refused: {error}: {description}"));
    https::json(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

impl State {
    async fn refresh_bundle(&self) -> Result<(), String> {
        let mut guard = self.client.lock().await;
        if guard.is_none() {
            *guard = Some(
                spiffe::WorkloadApiClient::connect_to(&self.cfg.workload_api)
                    .await
                    .map_err(|e| format!("Workload API {}: {e}", self.cfg.workload_api))?,
            );
        }
        let client = guard.as_ref().ok_or("no Workload API client")?;
        let set = match client.fetch_jwt_bundles().await {
            Ok(s) => s,
            Err(e) => {
                *guard = None;
                return Err(format!("FetchJWTBundles: {e}"));
            }
        };
        let mut keys = HashMap::new();
        for (_, bundle) in set.iter() {
            for a in bundle.jwt_authorities() {
                let jwk: Value = serde_json::from_slice(a.jwk_json()).map_err(|e| e.to_string())?;
                if let Ok(k) = Key::from_jwk(&jwk) {
                    keys.insert(a.key_id().to_owned(), k);
                }
            }
        }
        if let Ok(mut b) = self.bundle.write() {
            *b = keys;
        }
        Ok(())
    }

    async fn key_for(&self, kid: &str) -> Option<Key> {
        let cached = self.bundle.read().ok().and_then(|b| b.get(kid).cloned());
        if cached.is_some() {
            return cached;
        }
        // SPIRE rotates JWT keys: an unknown kid means the bundle moved on.
        let _ = self.refresh_bundle().await;
        self.bundle.read().ok().and_then(|b| b.get(kid).cloned())
    }

    async fn handle(&self, req: Req) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/jwks") => https::json(StatusCode::OK, &self.key.jwks()),
            // RFC 8414 metadata, for clients configured with `issuer:` alone.
            (&Method::GET, "/.well-known/oauth-authorization-server") => https::json(
                StatusCode::OK,
                &json!({
                    "issuer": self.url,
                    "token_endpoint": format!("{}/token", self.url),
                    "jwks_uri": format!("{}/jwks", self.url),
                    "grant_types_supported": [
                        "client_credentials",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                        "urn:ietf:params:oauth:grant-type:jwt-bearer",
                    ],
                }),
            ),
            (&Method::POST, "/token") => self.token(req.body()).await,
            _ => https::text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn token(&self, body: &[u8]) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        let f = |k: &str| form.get(k).map(String::as_str);
        let mut owner: Option<String> = None;
        let (grant, svid) = match f("grant_type") {
            Some("client_credentials") => {
                let t = f("client_assertion_type").unwrap_or("");
                if t != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                    && t != "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
                {
                    return oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        "client_assertion_type must be jwt-bearer or jwt-spiffe",
                    );
                }
                ("client_credentials", f("client_assertion"))
            }
            // RFC 8693 delegation: the owner's token as subject, the
            // sandbox's JWT-SVID as actor.
            Some("urn:ietf:params:oauth:grant-type:token-exchange")
                if f("actor_token").is_some() =>
            {
                if f("actor_token_type") != Some("urn:ietf:params:oauth:token-type:jwt") {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "actor_token_type must be urn:ietf:params:oauth:token-type:jwt",
                    );
                }
                match self.verify_owner(f("subject_token").unwrap_or("")) {
                    Ok(o) => owner = Some(o),
                    Err(e) => {
                        return oauth_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            &format!("subject_token: {e}"),
                        );
                    }
                }
                ("token_exchange", f("actor_token"))
            }
            Some("urn:ietf:params:oauth:grant-type:token-exchange") => {
                if f("subject_token_type") != Some("urn:ietf:params:oauth:token-type:jwt") {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "subject_token_type must be urn:ietf:params:oauth:token-type:jwt",
                    );
                }
                ("token_exchange", f("subject_token"))
            }
            Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => ("jwt_bearer", f("assertion")),
            other => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    &format!("{other:?} is not supported"),
                );
            }
        };
        let Some(svid) = svid else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "no JWT-SVID presented",
            );
        };
        let sub = match self.verify_svid(svid).await {
            Ok(s) => s,
            Err(e) => {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    if grant == "client_credentials" {
                        "invalid_client"
                    } else {
                        "invalid_grant"
                    },
                    &e,
                );
            }
        };
        let Some(aud) = f("audience").or_else(|| f("resource")) else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "name the audience of the token",
            );
        };
        let Some(allowed) = self.cfg.audiences.get(aud) else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                &format!("unknown audience '{aud}'"),
            );
        };
        let requested: Vec<&str> = f("scope")
            .map(|s| s.split(' ').filter(|x| !x.is_empty()).collect())
            .unwrap_or_default();
        if let Some(bad) = requested.iter().find(|s| !allowed.iter().any(|a| a == *s)) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                &format!("scope '{bad}' is not allowed for '{aud}'"),
            );
        }
        let scope = if requested.is_empty() {
            allowed.join(" ")
        } else {
            requested.join(" ")
        };
        let now = jwt::now();
        let mut claims = json!({
            "iss": self.url, "sub": sub, "aud": aud, "scope": scope,
            "azp": f("client_id").unwrap_or(&sub), "iat": now, "exp": now + self.cfg.ttl, "jti": self.key.jti(),
        });
        if let Some(o) = &owner {
            // RFC 8693 §4.1: the subject is who it acts for, `act` who acts.
            claims["sub"] = json!(o);
            claims["act"] = json!({ "sub": sub });
        }
        let token = match self.key.sign(&claims) {
            Ok(t) => t,
            Err(e) => return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e),
        };
        self.issued.fetch_add(1, Ordering::SeqCst);
        let on_behalf = owner
            .map(|o| format!(" on behalf of {o}"))
            .unwrap_or_default();
        crate::log(&format!(
            "issuer: {grant}: issued aud={aud} scope=\"{scope}\" to {sub}{on_behalf}"
        ));
        let mut resp = json!({"access_token": token, "token_type": "Bearer", "expires_in": self.cfg.ttl, "scope": scope});
        if grant == "token_exchange" {
            resp["issued_token_type"] = json!("urn:ietf:params:oauth:token-type:access_token");
        }
        https::json(StatusCode::OK, &resp)
    }

    /// An owner token this issuer signed (see [`Issuer::mint_owner`]): its `sub`.
    fn verify_owner(&self, token: &str) -> Result<String, String> {
        let jwks = self.key.jwks();
        let key = Key::from_jwk(&jwks["keys"][0])?;
        let v = jwt::verify(token, &key, 0)?;
        if v.claims["iss"] != self.url.as_str() {
            return Err(format!("not issued by {}", self.url));
        }
        v.claims["sub"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "no sub".to_owned())
    }

    async fn verify_svid(&self, svid: &str) -> Result<String, String> {
        let kid = jwt::kid(svid).ok_or("JWT-SVID has no kid")?;
        let key = self
            .key_for(&kid)
            .await
            .ok_or_else(|| format!("kid '{kid}' is not in the SPIRE trust bundle"))?;
        let v = jwt::verify(svid, &key, LEEWAY_S)?;
        // RFC 7523bis: the issuer identifier; RFC 7523: the token endpoint URL.
        let endpoint = format!("{}/token", self.url);
        if !jwt::has_audience(&v.claims, &self.url) && !jwt::has_audience(&v.claims, &endpoint) {
            return Err(format!(
                "JWT-SVID audience must include {} or {endpoint}",
                self.url
            ));
        }
        let sub = v.claims["sub"].as_str().ok_or("JWT-SVID has no sub")?;
        if !sub.starts_with(&self.cfg.allowed_prefix) {
            return Err(format!("{sub} is not allowed here"));
        }
        // SPIRE's JWT-SVIDs carry no jti: tell them apart by digest.
        let digest = ring::digest::digest(&ring::digest::SHA256, svid.as_bytes());
        let id: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if let Ok(mut seen) = self.svids.lock()
            && !seen.contains(&id)
        {
            seen.push(id);
        }
        Ok(sub.to_owned())
    }
}
