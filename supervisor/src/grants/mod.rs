//! Grants: per matched endpoint, a JWT-SVID is exchanged at the provider's
//! token endpoint for a token with that endpoint's audience and scopes, or
//! (`jwt_svid`) used as the bearer itself.
//!
//! The `oauth2` crate is not used: see ARCHITECTURE.md ("Token endpoint client").

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanyard_proxy::config::EndpointConfig;
use lanyard_proxy::source::BoxFuture;
use lanyard_proxy::{Secret, SourceError, TokenSource};
use serde::Deserialize;

use crate::cache::Refreshing;
use crate::config::TokenGrantConfig;
use crate::identity::Identity;
use crate::ops::metrics::{ExchangeLabels, Observe, ProviderLabel};

pub mod discovery;
pub mod form;
pub mod issuer;
#[cfg(test)]
mod tests;

pub use discovery::{Discovery, EndpointSource};
pub use issuer::{IssuerClient, IssuerLimits, TokenEndpoint};

/// The exchange flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// RFC 7523 §2.2: `client_credentials` authenticated by the SVID as client assertion.
    ClientCredentials,
    /// RFC 8693 token exchange with the SVID as subject token.
    TokenExchange,
    /// RFC 7523 §2.1: the SVID as authorization grant.
    JwtBearer,
    /// No exchange: the SVID itself is the bearer.
    JwtSvid,
}

/// Everything that goes into one request (and so into the cache key).
/// `Debug` (used when a failed fetch is logged) shows `extra_params` names but
/// not their values: operators put client secrets there.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Params {
    /// Audience the SVID is fetched for.
    pub svid_audience: String,
    /// `client_assertion_type`.
    pub client_assertion_type: String,
    /// `client_id`.
    pub client_id: Option<String>,
    /// `audience`.
    pub audience: Option<String>,
    /// `scope`, sorted and de-duplicated.
    pub scopes: Vec<String>,
    /// `resource`.
    pub resource: Option<String>,
    /// `requested_token_type`.
    pub requested_token_type: Option<String>,
    /// Extra form fields.
    pub extra_params: BTreeMap<String, String>,
    /// On-behalf-of delegation: how the owner's token and the SVID are sent.
    pub on_behalf_of: Option<OnBehalf>,
}

/// The shape of an on-behalf-of exchange (the owner's token itself is read
/// at each exchange, never part of a key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OnBehalf {
    /// `subject_token_type`.
    pub subject_token_type: String,
    /// Where the SVID goes.
    pub actor: crate::config::ActorMode,
}

/// The owner's token of an on-behalf-of provider, and which one the cached
/// tokens were exchanged for.
struct Owner {
    file: lanyard_proxy::StaticSource,
    path: std::path::PathBuf,
    /// A keyed hash of the token the cache holds exchanges of.
    seen: std::sync::Mutex<Option<u64>>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Params")
            .field("svid_audience", &self.svid_audience)
            .field("client_assertion_type", &self.client_assertion_type)
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .field("scopes", &self.scopes)
            .field("resource", &self.resource)
            .field("requested_token_type", &self.requested_token_type)
            .field("on_behalf_of", &self.on_behalf_of)
            .field(
                "extra_params",
                &self.extra_params.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Cache key: provider, grant and every parameter that changes the token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    provider: Arc<str>,
    grant: Grant,
    params: Arc<Params>,
}

impl TokenKey {
    /// The provider this token belongs to.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The request parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }
}

/// The token cache shared by every grant provider.
pub type TokenCache = Refreshing<TokenKey, Secret>;

/// A `token_grant` provider.
pub struct GrantSource {
    provider: Arc<str>,
    grant: Grant,
    endpoint: Option<Arc<EndpointSource>>,
    owner: Option<Arc<Owner>>,
    by_endpoint: HashMap<String, TokenKey>,
    identity: Arc<Identity>,
    issuer: IssuerClient,
    limits: IssuerLimits,
    default_lifetime: Duration,
    cache: Arc<TokenCache>,
    /// Exchanges in flight at this provider's issuer, at most [`MAX_EXCHANGES`].
    exchanges: Arc<tokio::sync::Semaphore>,
    observe: Observe,
}

/// Concurrent exchanges one provider runs against its token endpoint: one per
/// distinct key is already the most single flight allows; this caps the sum
/// when many endpoints miss at once (start-up, an issuer coming back).
pub const MAX_EXCHANGES: usize = 4;

impl std::fmt::Debug for GrantSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantSource")
            .field("provider", &self.provider)
            .field("grant", &self.grant)
            .finish_non_exhaustive()
    }
}

/// What the supervisor hands to [`GrantSource::build`].
pub struct Shared {
    /// SVIDs.
    pub identity: Arc<Identity>,
    /// Token endpoint client.
    pub issuer: IssuerClient,
    /// Tokens.
    pub cache: Arc<TokenCache>,
    /// Metrics and the audit trail.
    pub observe: Observe,
}

impl GrantSource {
    /// Validates provider `name` and the endpoints that use it. Errors are
    /// `(field, reason)` pairs relative to the config file.
    pub fn build(
        name: &str,
        cfg: &TokenGrantConfig,
        endpoints: &[EndpointConfig],
        shared: &Shared,
    ) -> Result<Self, (String, String)> {
        let field = |f: &str| format!("providers.{name}.token_grant.{f}");
        let no_exchange = |f: &str| {
            Err((
                field(f),
                format!("grant jwt_svid makes no exchange; remove {f}"),
            ))
        };
        // Checked whether or not it is used for discovery: it is the SVID's audience either way.
        let discovery = cfg
            .issuer
            .as_deref()
            .map(Discovery::new)
            .transpose()
            .map_err(|r| (field("issuer"), r))?;
        let endpoint = match (&cfg.token_endpoint, discovery, cfg.grant) {
            (None, None, Grant::JwtSvid) => None,
            (Some(_), _, Grant::JwtSvid) => return no_exchange("token_endpoint"),
            (None, Some(_), Grant::JwtSvid) => return no_exchange("issuer"),
            (None, None, _) => {
                return Err((
                    field("token_endpoint"),
                    "required for this grant (or issuer, to discover it)".into(),
                ));
            }
            (Some(url), _, _) => Some(EndpointSource::Fixed(
                TokenEndpoint::parse(url).map_err(|r| (field("token_endpoint"), r))?,
            )),
            (None, Some(d), _) => Some(EndpointSource::Discovered(Box::new(d))),
        };
        let assertion_type = cfg
            .client_assertion_type
            .clone()
            .unwrap_or_else(|| form::ASSERTION_JWT_BEARER.to_owned());
        if ![form::ASSERTION_JWT_BEARER, form::ASSERTION_JWT_SPIFFE]
            .contains(&assertion_type.as_str())
        {
            return Err((
                field("client_assertion_type"),
                format!(
                    "must be {} or {}",
                    form::ASSERTION_JWT_BEARER,
                    form::ASSERTION_JWT_SPIFFE
                ),
            ));
        }
        for k in cfg.extra_params.keys() {
            if RESERVED.contains(&k.as_str()) {
                return Err((
                    field(&format!("extra_params.{k}")),
                    "is set by Lanyard and cannot be overridden".into(),
                ));
            }
        }
        for (name, zero) in [
            ("timeout", cfg.timeout.is_zero()),
            ("connect_timeout", cfg.connect_timeout.is_zero()),
            ("default_lifetime", cfg.default_lifetime.is_zero()),
            ("max_response_bytes", cfg.max_response_bytes == 0),
        ] {
            if zero {
                return Err((field(name), "must be greater than zero".into()));
            }
        }
        let on_behalf_of = match (&cfg.on_behalf_of, cfg.grant) {
            (None, _) => None,
            (Some(o), Grant::TokenExchange) => Some(o),
            (Some(_), _) => {
                return Err((
                    field("on_behalf_of"),
                    "needs grant token_exchange (RFC 8693 delegation)".into(),
                ));
            }
        };
        let owner = on_behalf_of.map(|o| {
            Arc::new(Owner {
                file: lanyard_proxy::StaticSource::lazy(&o.subject_token_file),
                path: o.subject_token_file.clone(),
                seen: std::sync::Mutex::new(None),
                hasher: std::collections::hash_map::RandomState::new(),
            })
        });
        let obo = on_behalf_of.map(|o| OnBehalf {
            subject_token_type: o.subject_token_type.clone(),
            actor: o.actor,
        });
        let mut extra_params = BTreeMap::new();
        for (k, v) in &cfg.extra_params {
            let value = v
                .resolve()
                .map_err(|r| (field(&format!("extra_params.{k}")), r))?;
            extra_params.insert(k.clone(), value);
        }
        let provider: Arc<str> = Arc::from(name);
        let mut by_endpoint = HashMap::new();
        for (i, e) in endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.provider == name)
        {
            let audience = e.audience.clone().or_else(|| cfg.audience.clone());
            let svid_audience = match cfg.grant {
                Grant::JwtSvid => e
                    .jwt_svid_audience
                    .clone()
                    .or_else(|| audience.clone())
                    .or_else(|| cfg.jwt_svid_audience.clone())
                    .ok_or_else(|| {
                        (
                            format!("endpoints[{i}].audience"),
                            format!("provider '{name}' (jwt_svid) needs an audience for the SVID"),
                        )
                    })?,
                // The issuer identifier when it is known, as RFC 7523bis and
                // Keycloak require; the token endpoint URL otherwise (RFC 7523).
                _ => e
                    .jwt_svid_audience
                    .clone()
                    .or_else(|| cfg.jwt_svid_audience.clone())
                    .or_else(|| cfg.issuer.clone())
                    .or_else(|| cfg.token_endpoint.clone())
                    .unwrap_or_default(),
            };
            let mut scopes = e.scopes.clone().unwrap_or_else(|| cfg.scopes.clone());
            scopes.sort();
            scopes.dedup();
            if let Some(bad) = scopes.iter().find(|s| s.is_empty() || s.contains(' ')) {
                return Err((
                    format!("endpoints[{i}].scopes"),
                    format!("scope '{bad}' is empty or contains a space"),
                ));
            }
            let params = Params {
                svid_audience,
                client_assertion_type: assertion_type.clone(),
                client_id: cfg.client_id.clone(),
                audience,
                scopes,
                resource: cfg.resource.clone(),
                requested_token_type: cfg.requested_token_type.clone(),
                extra_params: extra_params.clone(),
                on_behalf_of: obo.clone(),
            };
            by_endpoint.insert(
                e.name.clone(),
                TokenKey {
                    provider: provider.clone(),
                    grant: cfg.grant,
                    params: Arc::new(params),
                },
            );
        }
        Ok(Self {
            provider,
            grant: cfg.grant,
            endpoint: endpoint.map(Arc::new),
            owner,
            by_endpoint,
            identity: shared.identity.clone(),
            issuer: shared.issuer.clone(),
            limits: IssuerLimits {
                connect_timeout: cfg.connect_timeout,
                timeout: cfg.timeout,
                max_response_bytes: cfg.max_response_bytes,
            },
            default_lifetime: cfg.default_lifetime,
            cache: shared.cache.clone(),
            exchanges: Arc::new(tokio::sync::Semaphore::new(MAX_EXCHANGES)),
            observe: shared.observe.clone(),
        })
    }

    /// The provider's name.
    pub fn name(&self) -> &str {
        &self.provider
    }

    /// The grant flow.
    pub fn grant(&self) -> Grant {
        self.grant
    }

    /// The token endpoint when the grant exchanges, or the issuer it is
    /// discovered from.
    pub fn token_endpoint(&self) -> Option<&str> {
        self.endpoint.as_ref().map(|e| e.label())
    }

    /// The cache key each endpoint of this provider uses.
    pub fn keys(&self) -> impl Iterator<Item = (&str, &TokenKey)> {
        self.by_endpoint.iter().map(|(e, k)| (e.as_str(), k))
    }

    /// What the cache knows about `endpoint`'s token (for `/debug/endpoints`).
    pub fn state(&self, endpoint: &str) -> Option<crate::cache::KeyState> {
        let key = self.by_endpoint.get(endpoint)?;
        if self.grant == Grant::JwtSvid {
            return None;
        }
        Some(self.cache.state(key))
    }

    async fn token_for(&self, key: &TokenKey) -> Result<Secret, String> {
        if self.grant == Grant::JwtSvid {
            let svid = self
                .identity
                .svid(&key.params.svid_audience)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(svid.value.token.clone());
        }
        let identity = self.identity.clone();
        let issuer = self.issuer.clone();
        let limits = self.limits.clone();
        let default_lifetime = self.default_lifetime;
        let exchanges = self.exchanges.clone();
        let observe = self.observe.clone();
        let provider = self.provider.clone();
        let (grant, params) = (self.grant, key.params.clone());
        let endpoint = self
            .endpoint
            .clone()
            .ok_or("provider has no token endpoint")?;
        let owner = match &self.owner {
            Some(o) => Some(self.owner_token(o).await?),
            None => None,
        };
        let fresh = self
            .cache
            .get(key, move || {
                let (identity, issuer, limits, params, endpoint, exchanges) = (
                    identity.clone(),
                    issuer.clone(),
                    limits.clone(),
                    params.clone(),
                    endpoint.clone(),
                    exchanges.clone(),
                );
                let owner = owner.clone();
                let (observe, provider) = (observe.clone(), provider.clone());
                async move {
                    let started = Instant::now();
                    let got = match endpoint.get(&issuer, &limits).await {
                        Ok(url) => {
                            exchange(
                                grant,
                                identity,
                                issuer,
                                limits,
                                params.clone(),
                                url,
                                exchanges,
                                default_lifetime,
                                owner,
                            )
                            .await
                        }
                        Err(e) => Err(e),
                    };
                    if got.is_err() {
                        endpoint.failed();
                    }
                    report_exchange(
                        &observe,
                        &provider,
                        endpoint.label(),
                        &params,
                        &got,
                        started,
                    );
                    got
                }
            })
            .await
            .map_err(|e| e.to_string())?;
        debug_assert!(fresh.is_valid(Instant::now()));
        Ok(fresh.value.clone())
    }
}

impl GrantSource {
    /// The owner's token for an on-behalf-of exchange, with what remains of
    /// its life. A changed token drops this provider's cached exchanges
    /// (they were made for the previous owner token); a missing or expired
    /// one is an error naming the file: nothing falls back to the sandbox's
    /// own identity.
    async fn owner_token(&self, o: &Owner) -> Result<(Secret, Option<Duration>), String> {
        let token = o.file.current().map_err(|e| {
            format!("on-behalf-of: the owner's token is unavailable ({e}); nothing falls back to the sandbox's own identity")
        })?;
        let remaining = issuer::jwt_remaining(token.expose());
        if remaining.is_some_and(|r| r.is_zero()) {
            return Err(format!(
                "on-behalf-of: the owner's token in {} has expired; nothing falls back to the sandbox's own identity",
                o.path.display()
            ));
        }
        let fp = std::hash::BuildHasher::hash_one(&o.hasher, token.expose());
        let changed = {
            let mut seen = match o.seen.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let changed = seen.is_some_and(|s| s != fp);
            *seen = Some(fp);
            changed
        };
        if changed {
            let provider = self.provider.clone();
            let n = self.cache.invalidate_if(|k| *k.provider == *provider).await;
            tracing::info!(provider = %self.provider, dropped = n, "the owner's token changed; exchanging again");
        }
        Ok((token, remaining))
    }
}

/// Counts, times and audits one exchange.
fn report_exchange(
    observe: &Observe,
    provider: &str,
    endpoint: &str,
    params: &Params,
    got: &Result<(Secret, Duration), String>,
    started: Instant,
) {
    let m = &observe.metrics;
    let result = if got.is_ok() { "ok" } else { "error" };
    m.exchanges
        .get_or_create(&ExchangeLabels {
            provider: provider.to_owned(),
            result,
        })
        .inc();
    m.exchange_seconds
        .get_or_create(&ProviderLabel {
            provider: provider.to_owned(),
        })
        .observe(started.elapsed().as_secs_f64());
    let t = &observe.telemetry;
    if t.auditing() {
        t.audit(
            "exchange",
            &serde_json::json!({
                "provider": provider,
                "issuer": endpoint,
                "audience": params.audience,
                "svid_audience": params.svid_audience,
                "scopes": params.scopes,
                "result": result,
                "token_id": got.as_ref().ok().map(|(tok, _)| t.token_id(tok).to_string()),
                "lifetime_s": got.as_ref().ok().map(|(_, l)| l.as_secs()),
                "error": got.as_ref().err(),
            }),
        );
    }
}

/// One exchange at the token endpoint, under the provider's concurrency cap.
#[allow(
    clippy::too_many_arguments,
    reason = "the fetch closure's captures, passed through once"
)]
async fn exchange(
    grant: Grant,
    identity: Arc<Identity>,
    issuer: IssuerClient,
    limits: IssuerLimits,
    params: Arc<Params>,
    endpoint: TokenEndpoint,
    exchanges: Arc<tokio::sync::Semaphore>,
    default_lifetime: Duration,
    owner: Option<(Secret, Option<Duration>)>,
) -> Result<(Secret, Duration), String> {
    {
        {
            let _slot = exchanges
                .acquire_owned()
                .await
                .map_err(|_| "provider shut down".to_owned())?;
            let svid = identity
                .svid(&params.svid_audience)
                .await
                .map_err(|e| format!("no JWT-SVID for audience '{}': {e}", params.svid_audience))?;
            let subject = owner.as_ref().map(|(t, _)| t.expose());
            let body = form::build(grant, &params, svid.value.token.expose(), subject);
            // Whatever the issuer echoes back is scrubbed of the SVID, the
            // owner's token and extra_params values.
            let mut scrub: Vec<&str> = vec![svid.value.token.expose()];
            scrub.extend(subject);
            scrub.extend(params.extra_params.values().map(String::as_str));
            let issued = issuer.exchange(&endpoint, &body, &limits, &scrub).await?;
            let lifetime = issuer::lifetime(
                issued.expires_in,
                issuer::jwt_remaining(issued.access_token.expose()),
                default_lifetime,
            );
            // A delegated token is not kept past the owner's own.
            let lifetime = match owner.as_ref().and_then(|(_, r)| *r) {
                Some(r) => lifetime.min(r),
                None => lifetime,
            };
            if lifetime.is_zero() {
                return Err("issuer returned an already expired token".to_owned());
            }
            tracing::info!(issuer = %endpoint.as_str(), lifetime_s = lifetime.as_secs(), "token exchanged");
            Ok((issued.access_token, lifetime))
        }
    }
}

/// Form fields Lanyard owns.
const RESERVED: &[&str] = &[
    "grant_type",
    "client_assertion",
    "client_assertion_type",
    "subject_token",
    "subject_token_type",
    "assertion",
    "scope",
    "audience",
    "resource",
    "client_id",
    "requested_token_type",
    "actor_token",
    "actor_token_type",
];

impl TokenSource for GrantSource {
    fn token<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, Result<Secret, SourceError>> {
        Box::pin(async move {
            let key = self.by_endpoint.get(endpoint).ok_or_else(|| {
                SourceError(format!(
                    "endpoint '{endpoint}' is not configured for this provider"
                ))
            })?;
            self.token_for(key).await.map_err(SourceError)
        })
    }
}
