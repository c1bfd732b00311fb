//! `issuer:` instead of `token_endpoint:`: the token endpoint comes from the
//! authorization server's metadata, RFC 8414
//! (`/.well-known/oauth-authorization-server` inserted before the issuer's
//! path) first, then OpenID Connect Discovery
//! (`/.well-known/openid-configuration` appended), as RFC 8414 §5 allows.
//!
//! The metadata's `issuer` must equal the configured identifier exactly
//! (RFC 8414 §3.3): metadata naming another issuer is refused, not
//! followed, since the SVID presented there is minted for the configured
//! one. The endpoint is remembered until an exchange fails, then read again,
//! so an issuer that moved its token endpoint is followed without a restart.

use std::sync::Mutex;

use serde::Deserialize;

use super::issuer::{IssuerClient, IssuerLimits, TokenEndpoint};

/// Where a provider's token endpoint comes from.
#[derive(Debug)]
pub enum EndpointSource {
    /// `token_endpoint:` as configured.
    Fixed(TokenEndpoint),
    /// Read from `issuer:`'s metadata.
    Discovered(Box<Discovery>),
}

impl EndpointSource {
    /// The token endpoint to post to now.
    pub async fn get(
        &self,
        client: &IssuerClient,
        limits: &IssuerLimits,
    ) -> Result<TokenEndpoint, String> {
        match self {
            Self::Fixed(t) => Ok(t.clone()),
            Self::Discovered(d) => d.token_endpoint(client, limits).await,
        }
    }

    /// An exchange failed: a discovered endpoint is read again next time.
    pub fn failed(&self) {
        if let Self::Discovered(d) = self {
            *d.lock() = None;
        }
    }

    /// What `/debug/endpoints` and the audit trail name: the configured
    /// token endpoint, or the issuer it is discovered from.
    pub fn label(&self) -> &str {
        match self {
            Self::Fixed(t) => t.as_str(),
            Self::Discovered(d) => d.issuer.as_str(),
        }
    }
}

/// The issuer and what its metadata said.
#[derive(Debug)]
pub struct Discovery {
    issuer: TokenEndpoint,
    urls: [TokenEndpoint; 2],
    found: Mutex<Option<TokenEndpoint>>,
}

#[derive(Deserialize)]
struct Metadata {
    issuer: Option<String>,
    token_endpoint: Option<String>,
}

impl Discovery {
    /// Checks the issuer identifier (RFC 8414 §2: a URL with no query or
    /// fragment) and derives both well-known locations from it.
    pub fn new(issuer: &str) -> Result<Self, String> {
        let parsed = TokenEndpoint::parse(issuer)?;
        if issuer.contains('?') || issuer.contains('#') {
            return Err(format!(
                "'{issuer}' is not an issuer identifier: it has a query or fragment"
            ));
        }
        let (origin, path) = split_origin(issuer);
        let path = path.trim_end_matches('/');
        let rfc8414 = format!("{origin}/.well-known/oauth-authorization-server{path}");
        let oidc = format!("{origin}{path}/.well-known/openid-configuration");
        Ok(Self {
            issuer: parsed,
            urls: [
                TokenEndpoint::parse(&rfc8414)?,
                TokenEndpoint::parse(&oidc)?,
            ],
            found: Mutex::new(None),
        })
    }

    /// The issuer identifier, as configured.
    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<TokenEndpoint>> {
        match self.found.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    async fn token_endpoint(
        &self,
        client: &IssuerClient,
        limits: &IssuerLimits,
    ) -> Result<TokenEndpoint, String> {
        if let Some(t) = self.lock().clone() {
            return Ok(t);
        }
        let mut tried = Vec::new();
        for url in &self.urls {
            let Some(body) = client.metadata(url, limits).await? else {
                tried.push(url.as_str());
                continue;
            };
            let t = self.check(url, &body)?;
            tracing::info!(
                issuer = self.issuer.as_str(),
                token_endpoint = t.as_str(),
                metadata = url.as_str(),
                "token endpoint discovered"
            );
            *self.lock() = Some(t.clone());
            return Ok(t);
        }
        Err(format!(
            "issuer {} publishes no metadata (404 from {})",
            self.issuer.as_str(),
            tried.join(" and ")
        ))
    }

    /// The token endpoint in `body`, once the metadata is shown to be this
    /// issuer's.
    pub fn check(&self, url: &TokenEndpoint, body: &[u8]) -> Result<TokenEndpoint, String> {
        let at = |what: String| format!("metadata {}: {what}", url.as_str());
        let m: Metadata = serde_json::from_slice(body)
            .map_err(|e| at(format!("not a metadata document: {e}")))?;
        match m.issuer.as_deref() {
            Some(i) if i == self.issuer.as_str() => {}
            Some(i) => {
                return Err(at(format!(
                    "names issuer '{i}', not the configured '{}'",
                    self.issuer.as_str()
                )));
            }
            None => return Err(at("has no issuer".into())),
        }
        let t = m
            .token_endpoint
            .ok_or_else(|| at("has no token_endpoint".into()))?;
        TokenEndpoint::parse(&t).map_err(|e| at(format!("token_endpoint {e}")))
    }
}

/// `scheme://authority` and the path (empty or starting with `/`).
fn split_origin(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => url.split_at(after_scheme + i),
        None => (url, ""),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn well_known_locations_follow_rfc_8414_then_oidc() {
        let d = Discovery::new("https://idp.example.com/realms/sandbox").unwrap();
        assert_eq!(
            d.urls[0].as_str(),
            "https://idp.example.com/.well-known/oauth-authorization-server/realms/sandbox"
        );
        assert_eq!(
            d.urls[1].as_str(),
            "https://idp.example.com/realms/sandbox/.well-known/openid-configuration"
        );
        let d = Discovery::new("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            d.urls[0].as_str(),
            "http://127.0.0.1:8080/.well-known/oauth-authorization-server"
        );
        assert_eq!(
            d.urls[1].as_str(),
            "http://127.0.0.1:8080/.well-known/openid-configuration"
        );
    }

    #[test]
    fn bad_issuers_and_foreign_metadata_are_refused() {
        assert!(Discovery::new("https://idp.example.com/r?x=1").is_err());
        assert!(
            Discovery::new("http://idp.example.com/r").is_err(),
            "plain http off loopback"
        );
        let d = Discovery::new("https://idp.example.com/realms/a").unwrap();
        let url = d.urls[1].clone();
        let ok = br#"{"issuer":"https://idp.example.com/realms/a","token_endpoint":"https://idp.example.com/realms/a/protocol/openid-connect/token"}"#;
        assert_eq!(
            d.check(&url, ok).unwrap().as_str(),
            "https://idp.example.com/realms/a/protocol/openid-connect/token"
        );
        let other = br#"{"issuer":"https://idp.example.com/realms/b","token_endpoint":"https://idp.example.com/t"}"#;
        let e = d.check(&url, other).unwrap_err();
        assert!(
            e.contains("names issuer 'https://idp.example.com/realms/b'"),
            "{e}"
        );
        let slash = br#"{"issuer":"https://idp.example.com/realms/a/","token_endpoint":"https://idp.example.com/t"}"#;
        assert!(d.check(&url, slash).is_err(), "identifiers compare exactly");
        let none = br#"{"issuer":"https://idp.example.com/realms/a"}"#;
        assert!(
            d.check(&url, none)
                .unwrap_err()
                .contains("no token_endpoint")
        );
        let plain = br#"{"issuer":"https://idp.example.com/realms/a","token_endpoint":"http://idp.example.com/t"}"#;
        assert!(
            d.check(&url, plain).is_err(),
            "the scheme rule holds for discovered endpoints"
        );
    }
}
