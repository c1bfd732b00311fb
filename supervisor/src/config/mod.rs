//! `lanyard.yaml`: the whole file as one typed value. Every struct denies
//! unknown fields, and every error names the file, the field and the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lanyard_proxy::config::{
    CaConfig, EgressConfig, EndpointConfig, LimitsConfig, UpstreamTlsConfig, duration,
};
use lanyard_proxy::{ConfigError, ProxyConfig, Settings};
use serde::Deserialize;

#[cfg(test)]
mod tests;

/// The config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the forward proxy (`127.0.0.1:3128`; port 0 picks one and prints it).
    pub listen: SocketAddr,
    /// The per-sandbox CA: where its certificate goes, or where to load it from.
    pub ca: CaConfig,
    /// Trust for upstream servers.
    #[serde(default)]
    pub upstream_tls: UpstreamTlsConfig,
    /// Host names pinned to an address or a list of them, consulted before DNS.
    #[serde(default)]
    pub resolve: BTreeMap<String, lanyard_proxy::config::Pinned>,
    /// Named credential providers that endpoints refer to.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Injection rules.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Policy for destinations no endpoint matches.
    #[serde(default)]
    pub egress: EgressConfig,
    /// Per-sandbox policy overlays: YAML files of `endpoints: { NAME:
    /// [statements] }` and `egress: { "host:port": [statements] }` that
    /// narrow this file's statements (the effective set is the
    /// intersection). One that would widen, names what this file lacks, or
    /// is missing is a config error; each is re-read on reload and watched
    /// like this file.
    #[serde(default)]
    pub overlays: Vec<PathBuf>,
    /// Limits and timeouts.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Transparent interception (`{ listen: "[::]:15001" }`), for a pod sidecar
    /// behind `lanyard init`'s redirect rules.
    #[serde(default)]
    pub transparent: Option<lanyard_proxy::config::TransparentConfig>,
    /// Where the SPIFFE Workload API is.
    #[serde(default)]
    pub spiffe: SpiffeConfig,
    /// Lifetime, refresh and retry policy for cached SVIDs and tokens.
    #[serde(default)]
    pub token_cache: TokenCacheConfig,
    /// How `lanyard run` launches the agent.
    #[serde(default)]
    pub agent: AgentConfig,
    /// `full` (default): the agent gets its own network and mount namespaces and
    /// can reach nothing but the proxy. `none`: no isolation (warned at every start).
    #[serde(default)]
    pub isolation: Isolation,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`,
    /// `/debug/endpoints`, `POST /revoke`). Off unless set.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// The audit trail: one JSON line per request to an endpoint, denial,
    /// exchange and revocation. On by default, to stderr.
    #[serde(default)]
    pub audit: AuditConfig,
}

/// `admin`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to serve on (`127.0.0.1:9901`; port 0 picks one and prints it).
    /// `lanyard run` binds it in Lanyard's own network namespace, never the
    /// agent's; in a pod, `lanyard init --admin-port` keeps the agent off it.
    pub listen: SocketAddr,
    /// A file holding a bearer token that `/metrics`, `/debug/*` and
    /// `/revoke` then require (`/healthz` and `/readyz` stay open for probes).
    /// Read at start and on reload.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// `audit`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Write audit events at all (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Append JSON lines to this file instead of stderr (created 0600).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            file: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// `isolation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Network and mount namespaces, unprivileged uid, no_new_privs.
    #[default]
    Full,
    /// Run the agent beside Lanyard with no namespaces.
    None,
}

/// `agent`: the process `lanyard run` starts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// User name or uid to run as. Default: a uid of its own, leased from
    /// `uid_range` for this sandbox alone. Root (0) is refused under `isolation: full`.
    #[serde(default)]
    pub user: Option<String>,
    /// Group name or gid (default: the user's primary group; with a leased uid,
    /// the gid of the same number). Group 0 is refused under `isolation: full`.
    #[serde(default)]
    pub group: Option<String>,
    /// `[first, last]` uids leased to sandboxes when `user` is not set
    /// (default systemd's dynamic range, 61184-65519).
    #[serde(default)]
    pub uid_range: Option<[u32; 2]>,
    /// Working directory, bound writable into a `minimal` root (default: a
    /// private `/tmp` with `minimal`, Lanyard's own with `host`).
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// `minimal` (default): the agent's root holds only the system directories
    /// (read-only), the CA directory, the workdir, `read_only` and `writable`.
    /// `host`: the host's root minus the hidden paths.
    #[serde(default)]
    pub filesystem: Filesystem,
    /// More paths bound read-only into a `minimal` root, at the same place.
    #[serde(default)]
    pub read_only: Vec<PathBuf>,
    /// More paths bound writable into a `minimal` root (with `host`: where
    /// Landlock lets the agent write besides the workdir and `/tmp`).
    #[serde(default)]
    pub writable: Vec<PathBuf>,
    /// More files or directories hidden from the agent (covered by an empty
    /// read-only file or tmpfs; a missing one is created empty and covered).
    #[serde(default)]
    pub hide: Vec<PathBuf>,
    /// The agent's environment.
    #[serde(default)]
    pub env: AgentEnv,
    /// After SIGTERM or SIGINT is forwarded, the agent's process group is
    /// killed (SIGKILL) if the agent has not exited within this time. Default 30s.
    #[serde(default, deserialize_with = "optional_duration")]
    pub kill_after: Option<Duration>,
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// `agent.filesystem`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    /// An allowlist root (pivot_root into a tmpfs of read-only binds).
    #[default]
    Minimal,
    /// The host's root, minus hidden paths.
    Host,
}

/// `agent.env`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEnv {
    /// Variables passed through from Lanyard's environment (glob: `*` matches
    /// any run of characters, `?` one; nothing else is special).
    /// Default: PATH, HOME, LANG, LC_*, TERM, TZ.
    #[serde(default)]
    pub pass: Option<Vec<String>>,
    /// Variables never passed, whatever `pass` says (globs, as in `pass`).
    /// `SPIFFE_*` and `LANYARD_*` are always denied.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Variables set for the agent (cannot set denied names or the proxy/CA variables).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
}

/// `spiffe`: the Workload API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpiffeConfig {
    /// `unix:///path/to/agent.sock`; defaults to `SPIFFE_ENDPOINT_SOCKET`.
    #[serde(default)]
    pub endpoint_socket: Option<String>,
    /// The SPIFFE ID Lanyard must hold (`spiffe://trust-domain/path`): requested
    /// from the Workload API, and every SVID is checked against it. Unset: the
    /// Workload API's default identity for this process.
    #[serde(default)]
    pub id: Option<String>,
    /// Bound on one Workload API call (and on connecting).
    #[serde(default = "ten_seconds", deserialize_with = "duration")]
    pub fetch_timeout: Duration,
}

impl Default for SpiffeConfig {
    fn default() -> Self {
        Self {
            endpoint_socket: None,
            id: None,
            fetch_timeout: ten_seconds(),
        }
    }
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

/// `token_cache`: applies to JWT-SVIDs and exchanged tokens alike.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenCacheConfig {
    /// Entries kept at most (per cache: SVIDs, tokens); least useful evicted first.
    pub max_entries: u64,
    /// Fraction of a credential's usable life after which it is renewed in the background.
    pub refresh_ahead: f64,
    /// Taken off every lifetime (at most half of it) to absorb clock skew and latency.
    #[serde(deserialize_with = "duration")]
    pub skew: Duration,
    /// No credential is kept longer than this, whatever its lifetime.
    #[serde(deserialize_with = "duration")]
    pub max_lifetime: Duration,
    /// First retry delay after a failed fetch (doubles per failure, jittered).
    #[serde(deserialize_with = "duration")]
    pub backoff_initial: Duration,
    /// Largest retry delay.
    #[serde(deserialize_with = "duration")]
    pub backoff_max: Duration,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        let p = crate::cache::Policy::default();
        Self {
            max_entries: p.max_entries,
            refresh_ahead: p.refresh_ahead,
            skew: p.skew,
            max_lifetime: p.max_lifetime,
            backoff_initial: p.backoff_initial,
            backoff_max: p.backoff_max,
        }
    }
}

impl TokenCacheConfig {
    /// As a cache policy.
    pub fn policy(&self) -> crate::cache::Policy {
        crate::cache::Policy {
            skew: self.skew,
            max_lifetime: self.max_lifetime,
            refresh_ahead: self.refresh_ahead,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            max_entries: self.max_entries,
        }
    }

    fn check(&self) -> Result<(), (String, String)> {
        let f = |n: &str| format!("token_cache.{n}");
        if !(self.refresh_ahead > 0.0 && self.refresh_ahead < 1.0) {
            return Err((
                f("refresh_ahead"),
                "must be between 0 and 1 (exclusive)".into(),
            ));
        }
        if self.max_entries == 0 {
            return Err((f("max_entries"), "must be at least 1".into()));
        }
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            return Err((
                f("backoff_initial"),
                "must be greater than zero and at most backoff_max".into(),
            ));
        }
        if self.max_lifetime.is_zero() {
            return Err((f("max_lifetime"), "must be greater than zero".into()));
        }
        Ok(())
    }
}

/// `providers.<name>.token_grant`: exchange a JWT-SVID for a token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenGrantConfig {
    /// OAuth token endpoint (`https://`; `http://` only to loopback). Not used by `jwt_svid`.
    /// One of `token_endpoint` and `issuer` is required for the other grants.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// The authorization server's issuer identifier (same scheme rule), for
    /// example `https://idp.example.com/realms/sandbox`. Without
    /// `token_endpoint`, the token endpoint is read from its metadata (RFC 8414,
    /// then OpenID Connect Discovery), whose `issuer` must equal this exactly.
    /// Either way it becomes the default audience of the JWT-SVID presented.
    #[serde(default)]
    pub issuer: Option<String>,
    /// `client_credentials`, `token_exchange`, `jwt_bearer` or `jwt_svid`.
    pub grant: crate::grants::Grant,
    /// For `client_credentials`: `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`
    /// (default) or `...:jwt-spiffe`.
    #[serde(default)]
    pub client_assertion_type: Option<String>,
    /// `client_id` form field, when the issuer wants one.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Audience of the JWT-SVID presented to the issuer. Defaults to `issuer`
    /// when that is set (RFC 7523bis; Keycloak accepts nothing else), else to
    /// the token endpoint URL (RFC 7523).
    #[serde(default)]
    pub jwt_svid_audience: Option<String>,
    /// `audience` form field (endpoints may override).
    #[serde(default)]
    pub audience: Option<String>,
    /// `scope` form field, space-joined (endpoints may override).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `resource` form field (RFC 8707).
    #[serde(default)]
    pub resource: Option<String>,
    /// `requested_token_type` form field (token exchange).
    #[serde(default)]
    pub requested_token_type: Option<String>,
    /// On-behalf-of delegation (`token_exchange` only): the exchange's
    /// subject is a human owner's token and the sandbox's JWT-SVID is the
    /// actor, so the issued token says both who it acts for and who acts.
    #[serde(default)]
    pub on_behalf_of: Option<OnBehalfOf>,
    /// Additional form fields (cannot override the ones above). A value is a
    /// string, or `{ file: PATH }` to read it (trimmed) from a file at start:
    /// keep secrets such as `client_secret` there, in a directory of their own
    /// (`lanyard run` hides it from the agent).
    #[serde(default)]
    pub extra_params: BTreeMap<String, ParamValue>,
    /// Lifetime assumed when the issuer sends no `expires_in` and the token carries no `exp`.
    #[serde(default = "five_minutes", deserialize_with = "duration")]
    pub default_lifetime: Duration,
    /// Bound on one whole exchange.
    #[serde(default = "ten_seconds", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Bound on DNS plus TCP connect to the token endpoint.
    #[serde(default = "five_seconds", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Largest token endpoint response read.
    #[serde(default = "sixty_four_k")]
    pub max_response_bytes: usize,
}

/// `token_grant.on_behalf_of`: RFC 8693 delegation with an actor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnBehalfOf {
    /// The owner's token, sent as `subject_token`: a file mounted into
    /// Lanyard only (`lanyard run` hides its directory), read again whenever
    /// it changes. Missing or expired, requests get a 503 saying so; nothing
    /// falls back to the sandbox's own identity.
    pub subject_token_file: PathBuf,
    /// `subject_token_type`.
    #[serde(default = "access_token_type")]
    pub subject_token_type: String,
    /// How the JWT-SVID takes part: `actor_token` (RFC 8693 §2.1, with
    /// `actor_token_type` `urn:ietf:params:oauth:token-type:jwt`), or
    /// `client_assertion` (it authenticates the client instead, with
    /// `client_assertion_type`: Keycloak's standard token exchange).
    #[serde(default)]
    pub actor: ActorMode,
}

/// See [`OnBehalfOf::actor`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorMode {
    /// The SVID is `actor_token`.
    #[default]
    ActorToken,
    /// The SVID is `client_assertion`.
    ClientAssertion,
}

fn access_token_type() -> String {
    "urn:ietf:params:oauth:token-type:access_token".into()
}

/// One `extra_params` value. `Debug` never shows an inline value.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// Written in the config.
    Inline(String),
    /// Read from a file.
    File(ParamFile),
}

/// `{ file: PATH }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamFile {
    /// The file holding the value (surrounding whitespace ignored).
    pub file: PathBuf,
}

impl std::fmt::Debug for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("<redacted>"),
            Self::File(p) => write!(f, "{{ file: {} }}", p.file.display()),
        }
    }
}

impl ParamValue {
    /// The value; a file's contents, read now.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            Self::Inline(v) => Ok(v.clone()),
            Self::File(p) => std::fs::read_to_string(&p.file)
                .map(|s| s.trim().to_owned())
                .map_err(|e| format!("cannot read {}: {e}", p.file.display())),
        }
    }
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn sixty_four_k() -> usize {
    64 * 1024
}

/// One provider: exactly one of its kinds must be set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// A token read from a file, re-read when the file changes.
    #[serde(default, rename = "static")]
    pub static_token: Option<StaticProvider>,
    /// A token obtained with the sandbox's JWT-SVID.
    #[serde(default)]
    pub token_grant: Option<TokenGrantConfig>,
}

/// A provider's kind, once validated.
#[derive(Debug, Clone)]
pub enum ProviderKind<'a> {
    /// `static`.
    Static(&'a StaticProvider),
    /// `token_grant`.
    TokenGrant(&'a TokenGrantConfig),
}

impl ProviderConfig {
    /// The single kind this entry configures.
    pub fn kind(&self) -> Result<ProviderKind<'_>, String> {
        match (&self.static_token, &self.token_grant) {
            (Some(s), None) => Ok(ProviderKind::Static(s)),
            (None, Some(g)) => Ok(ProviderKind::TokenGrant(g)),
            _ => Err("set exactly one provider kind: static or token_grant".into()),
        }
    }
}

/// `providers.<name>.static`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticProvider {
    /// File holding the token (surrounding whitespace ignored).
    pub token_file: PathBuf,
}

/// A validated config, split by owner.
#[derive(Debug)]
pub struct Validated {
    /// The data plane's settings.
    pub settings: Settings,
    /// Providers by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Endpoints as written (providers read their per-endpoint overrides).
    pub endpoints: Vec<EndpointConfig>,
    /// Workload API settings.
    pub spiffe: SpiffeConfig,
    /// Cache policy.
    pub token_cache: TokenCacheConfig,
    /// Agent launch settings.
    pub agent: AgentConfig,
    /// Isolation mode.
    pub isolation: Isolation,
    /// The admin listener.
    pub admin: Option<AdminConfig>,
    /// The audit trail.
    pub audit: AuditConfig,
    /// The overlay files applied, for the reload watcher.
    pub overlays: Vec<PathBuf>,
    /// The Workload API address, resolved once (from `spiffe.endpoint_socket`
    /// or `SPIFFE_ENDPOINT_SOCKET`): the client dials exactly what `lanyard
    /// run` hides. An error is reported by whoever needs the address.
    pub workload_endpoint: Result<Option<spiffe::transport::Endpoint>, String>,
}

/// Parses YAML text into `T`, locating any error by its dotted field path;
/// `path` is only used in messages.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, ConfigFileError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut field = e.path().to_string();
        let inner = e.into_inner();
        let mut reason = inner.to_string();
        // serde_yaml prefixes its own copy of the path (or of its parent,
        // inside a hand-written visitor); keep one.
        if let Some((head, rest)) = reason.split_once(": ")
            && field.starts_with(head)
        {
            reason = rest.to_owned();
        }
        // A missing field is reported at its parent; name the field itself.
        if let Some(name) = reason
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            field = if field == "." {
                name.to_owned()
            } else {
                format!("{field}.{name}")
            };
        }
        if field == "." {
            field = "(top level)".into();
        }
        ConfigFileError::new(path, field, reason)
    })
}

/// A config error located in a file. Displayed as `FILE: FIELD: REASON`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct ConfigFileError {
    /// The config file.
    pub file: String,
    /// Dotted field path (`endpoints[0].host`), or `(file)` for whole-file problems.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl ConfigFileError {
    /// An error at `field` of `file`.
    pub fn at(file: &Path, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new(file, field, reason)
    }

    fn new(file: &Path, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            file: file.display().to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Attaches a file name to a field-level error from the proxy crate.
    pub fn from_field(file: &Path, e: ConfigError) -> Self {
        Self::new(file, e.field, e.reason)
    }
}

impl Config {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigFileError::new(path, "(file)", format!("cannot read: {e}")))?;
        Self::parse(&text, path)
    }

    /// Parses YAML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigFileError> {
        parse_yaml(text, path)
    }

    /// Validates everything that can be checked without side effects and
    /// splits the config into proxy settings and providers.
    pub fn validate(self, path: &Path) -> Result<Validated, ConfigFileError> {
        self.token_cache
            .check()
            .map_err(|(f, r)| ConfigFileError::new(path, f, r))?;
        if let Some(id) = &self.spiffe.id
            && let Err(e) = spiffe::SpiffeId::new(id.as_str())
        {
            return Err(ConfigFileError::new(
                path,
                "spiffe.id",
                format!("'{id}': {e}"),
            ));
        }
        if self.spiffe.fetch_timeout.is_zero() {
            return Err(ConfigFileError::new(
                path,
                "spiffe.fetch_timeout",
                "must be greater than zero",
            ));
        }
        if self.agent.kill_after.is_some_and(|d| d.is_zero()) {
            return Err(ConfigFileError::new(
                path,
                "agent.kill_after",
                "must be greater than zero",
            ));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let grant = self
                .providers
                .get(&e.provider)
                .is_some_and(|p| p.token_grant.is_some());
            let scoped =
                e.audience.is_some() || e.scopes.is_some() || e.jwt_svid_audience.is_some();
            if scoped && !grant && self.providers.contains_key(&e.provider) {
                return Err(ConfigFileError::new(
                    path,
                    format!("endpoints[{i}]"),
                    format!(
                        "audience, scopes and jwt_svid_audience need a token_grant provider; '{}' is static",
                        e.provider
                    ),
                ));
            }
        }
        for (name, p) in &self.providers {
            p.kind()
                .map_err(|r| ConfigFileError::new(path, format!("providers.{name}"), r))?;
            if !lanyard_proxy::settings::is_label_safe(name) {
                return Err(ConfigFileError::new(
                    path,
                    format!("providers.{name}"),
                    "provider names are 1-64 letters, digits, '.', '-' or '_' (they become metric labels)",
                ));
            }
        }
        let workload_endpoint =
            crate::paths::workload_endpoint(self.spiffe.endpoint_socket.as_deref());
        let names: BTreeSet<String> = self.providers.keys().cloned().collect();
        let endpoints = self.endpoints.clone();
        let proxy = ProxyConfig {
            listen: self.listen,
            ca: self.ca,
            upstream_tls: self.upstream_tls,
            resolve: self.resolve,
            endpoints: self.endpoints,
            egress: self.egress,
            limits: self.limits,
            transparent: self.transparent,
        };
        let mut settings =
            Settings::build(proxy, &names).map_err(|e| ConfigFileError::from_field(path, e))?;
        for (i, file) in self.overlays.iter().enumerate() {
            // Relative to the config file, as Kubernetes mounts both side by side.
            let file = path.parent().map_or_else(|| file.clone(), |d| d.join(file));
            let text = std::fs::read_to_string(&file).map_err(|e| {
                ConfigFileError::new(
                    path,
                    format!("overlays[{i}]"),
                    format!(
                        "cannot read {}: {e} (a missing overlay would leave the sandbox with the base's wider policy)",
                        file.display()
                    ),
                )
            })?;
            let overlay: lanyard_proxy::config::PolicyOverlay = parse_yaml(&text, &file)?;
            settings
                .narrow(&file.display().to_string(), &overlay)
                .map_err(|e| ConfigFileError::from_field(&file, e))?;
        }
        let overlays = self
            .overlays
            .iter()
            .map(|f| path.parent().map_or_else(|| f.clone(), |d| d.join(f)))
            .collect();
        Ok(Validated {
            overlays,
            settings,
            providers: self.providers,
            endpoints,
            spiffe: self.spiffe,
            token_cache: self.token_cache,
            workload_endpoint,
            agent: self.agent,
            isolation: self.isolation,
            admin: self.admin,
            audit: self.audit,
        })
    }
}
