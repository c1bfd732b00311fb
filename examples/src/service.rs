//! A protected demo service (run twice, as alpha and beta). It accepts a
//! bearer token only if the issuer signed it (keys from the issuer's JWKS,
//! fetched over HTTPS), it names this service as audience, carries the
//! required scope and has not expired; it answers with the claims it accepted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use http::{HeaderValue, StatusCode, header};
use rustls_pki_types::CertificateDer;

use crate::https::{self, Req};
use crate::jwt::{self, Key};

/// What the service requires.
pub struct ServiceConfig {
    /// Its name, which is also the audience it requires.
    pub name: String,
    /// Where to listen.
    pub bind: SocketAddr,
    /// Its TLS server config.
    pub tls: Arc<rustls::ServerConfig>,
    /// Expected `iss` (`https://issuer.demo.test:PORT`).
    pub issuer: String,
    /// Where the issuer is reachable (`ip:port` or `name:port`).
    pub issuer_addr: String,
    /// Host name of the issuer (for TLS).
    pub issuer_host: String,
    /// Path of the issuer's JWKS (`/jwks` for the demo issuer; Keycloak's is
    /// `/realms/NAME/protocol/openid-connect/certs`).
    pub jwks_path: String,
    /// Fetch the JWKS over plain HTTP (an issuer on loopback, as Keycloak in
    /// the tests) instead of HTTPS.
    pub issuer_plain_http: bool,
    /// Roots for the issuer's certificate.
    pub roots: Vec<CertificateDer<'static>>,
    /// Scope every request needs.
    pub scope: String,
}

/// A running service.
pub struct Service {
    /// Bound address.
    pub addr: SocketAddr,
    /// SPIFFE IDs accepted, in order.
    pub accepted: Arc<Mutex<Vec<String>>>,
}

struct State {
    cfg: ServiceConfig,
    keys: RwLock<HashMap<String, Key>>,
    accepted: Arc<Mutex<Vec<String>>>,
}

/// Starts the service.
pub async fn start(cfg: ServiceConfig) -> Result<Service, String> {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let (bind, tls) = (cfg.bind, cfg.tls.clone());
    let state = Arc::new(State {
        cfg,
        keys: RwLock::new(HashMap::new()),
        accepted: accepted.clone(),
    });
    let (addr, _stop) = https::serve(bind, tls, move |req| {
        let s = state.clone();
        async move { s.handle(req).await }
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(Service { addr, accepted })
}

impl State {
    async fn key(&self, kid: &str) -> Result<Key, String> {
        if let Some(k) = self.keys.read().ok().and_then(|k| k.get(kid).cloned()) {
            return Ok(k);
        }
        // Unknown kid: the issuer may have restarted with a new key.
        let (status, body) = if self.cfg.issuer_plain_http {
            https::get_plain(&self.cfg.issuer_addr, &self.cfg.jwks_path).await?
        } else {
            https::get(
                &self.cfg.issuer_addr,
                &self.cfg.issuer_host,
                &self.cfg.jwks_path,
                &self.cfg.roots,
            )
            .await?
        };
        if status != StatusCode::OK {
            return Err(format!("issuer JWKS answered {status}"));
        }
        let jwks: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let mut keys = HashMap::new();
        for k in jwks["keys"].as_array().into_iter().flatten() {
            if let (Some(id), Ok(key)) = (k["kid"].as_str(), Key::from_jwk(k)) {
                keys.insert(id.to_owned(), key);
            }
        }
        let found = keys.get(kid).cloned();
        if let Ok(mut k) = self.keys.write() {
            *k = keys;
        }
        found.ok_or_else(|| format!("token signed with unknown key '{kid}'"))
    }

    async fn handle(&self, req: Req) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        match self.check(&req).await {
            Ok(c) => {
                let sub = c["sub"].as_str().unwrap_or("-").to_owned();
                crate::log(&format!(
                    "{}: accepted {sub} scope=\"{}\"",
                    self.cfg.name,
                    c["scope"].as_str().unwrap_or("")
                ));
                if let Ok(mut a) = self.accepted.lock() {
                    a.push(sub.clone());
                }
                https::text(
                    StatusCode::OK,
                    format!(
                        "service: {}\naudience: {}\nscope: {}\nsubject: {sub}\nissuer: {}\nclient: {}\nactor: {}\n",
                        self.cfg.name,
                        c["aud"].as_str().unwrap_or("-"),
                        c["scope"].as_str().unwrap_or("-"),
                        c["iss"].as_str().unwrap_or("-"),
                        // Who asked for the token (RFC 9068 `client_id`, OIDC `azp`)
                        // and on whose behalf it acts (RFC 8693 `act`).
                        c["client_id"]
                            .as_str()
                            .or_else(|| c["azp"].as_str())
                            .unwrap_or("-"),
                        c["act"]["sub"].as_str().unwrap_or("-"),
                    ),
                )
            }
            Err(reason) => {
                crate::log(&format!("{}: 401 {reason}", self.cfg.name));
                let mut r = https::text(
                    StatusCode::UNAUTHORIZED,
                    format!("{}: 401 {reason}\n", self.cfg.name),
                );
                let challenge = format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    reason.replace('"', "'")
                );
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                r
            }
        }
    }

    async fn check(&self, req: &Req) -> Result<serde_json::Value, String> {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or("no bearer token")?;
        let kid = jwt::kid(token).ok_or("token has no kid")?;
        let key = self.key(&kid).await?;
        let v = jwt::verify(token, &key, 5)?;
        if v.claims["iss"] != self.cfg.issuer.as_str() {
            return Err(format!("issuer must be {}", self.cfg.issuer));
        }
        if !jwt::has_audience(&v.claims, &self.cfg.name) {
            return Err(format!("audience must be {}", self.cfg.name));
        }
        let scopes = v.claims["scope"].as_str().unwrap_or("");
        if !scopes.split(' ').any(|s| s == self.cfg.scope) {
            return Err(format!("scope {} required", self.cfg.scope));
        }
        Ok(v.claims)
    }
}
