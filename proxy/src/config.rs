//! The proxy's sections of `lanyard.yaml`, as serde types. Validation into
//! runtime structures happens in [`crate::Settings::build`]; errors carry the
//! field path so the binary can name file, field and reason.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Everything the data plane needs from the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address of the explicit forward proxy (HTTP/1.1, absolute-form and CONNECT).
    /// Port 0 picks a free port; the bound address is printed at start.
    pub listen: SocketAddr,
    /// The per-sandbox certificate authority used to intercept TLS.
    pub ca: CaConfig,
    /// How Lanyard verifies the real upstream servers.
    #[serde(default)]
    pub upstream_tls: UpstreamTlsConfig,
    /// Names pinned to an address or a list of them (tried in order, Happy
    /// Eyeballs), like curl's `--resolve`; consulted before DNS.
    #[serde(default)]
    pub resolve: BTreeMap<String, Pinned>,
    /// Destinations that get a credential injected.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// What happens to destinations no endpoint matches.
    #[serde(default)]
    pub egress: EgressConfig,
    /// Resource limits and timeouts.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Transparent interception (a pod sidecar behind `lanyard init`'s
    /// redirect rules): connections the kernel redirected here are routed by
    /// their original destination, TLS SNI or Host header.
    #[serde(default)]
    pub transparent: Option<TransparentConfig>,
}

/// `transparent`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransparentConfig {
    /// Where redirected connections arrive (`"[::]:15001"` also binds
    /// `0.0.0.0:15001`, so both families keep their original destination).
    pub listen: SocketAddr,
}

/// The sandbox CA.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Directory where `ca.pem` (the sandbox CA) and `bundle.pem` (system roots
    /// plus the sandbox CA) are written for the agent to trust. The private key
    /// is never written here (see `key_dir`).
    pub dir: PathBuf,
    /// PEM certificate of an existing CA to use instead of generating one at start.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM (PKCS#8) private key matching `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Directory private to Lanyard (memory-backed, e.g. a `tmpfs` or a
    /// `medium: Memory` emptyDir) where a generated CA's key and certificate
    /// are kept, so that a restarted Lanyard reuses the CA the agent already
    /// trusts instead of minting one the agent has never seen. Created 0700;
    /// the key is written 0600. Not with `cert_file`/`key_file`.
    #[serde(default)]
    pub key_dir: Option<PathBuf>,
}

/// Trust settings for upstream TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM files with additional CA certificates to trust for upstreams.
    #[serde(default)]
    pub extra_ca_files: Vec<PathBuf>,
    /// Trust the operating system's root store.
    #[serde(default = "yes")]
    pub system_roots: bool,
    /// Trust the Mozilla roots compiled into Lanyard (useful in distroless images).
    #[serde(default = "yes")]
    pub webpki_roots: bool,
}

impl Default for UpstreamTlsConfig {
    fn default() -> Self {
        Self {
            extra_ca_files: Vec::new(),
            system_roots: true,
            webpki_roots: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// How a CONNECT to an endpoint's host is handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Terminate TLS with a sandbox-CA certificate, inject, re-originate TLS.
    #[default]
    Intercept,
    /// Relay the TLS bytes untouched (no injection); for upstreams that reject
    /// re-originated handshakes.
    Passthrough,
}

/// One injection rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Unique name, used in logs and error messages.
    pub name: String,
    /// Exact host name or IP, or `*.suffix` matching one or more labels.
    pub host: String,
    /// Destination port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Path prefix, matched segment-wise on the normalised path.
    #[serde(default = "default_path")]
    pub path: String,
    /// Methods this rule applies to; empty means all.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Name of the provider (token source) in `providers`.
    pub provider: String,
    /// Header that carries the credential.
    #[serde(default = "default_header")]
    pub header: String,
    /// Text before the token in the header value. Defaults to `"Bearer "` for
    /// `Authorization` and to nothing for any other header.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `intercept` (default) or `passthrough`.
    #[serde(default)]
    pub tls: TlsMode,
    /// Allow injecting over plain HTTP to a non-loopback upstream.
    #[serde(default)]
    pub allow_cleartext: bool,
    /// Audience of the token for this endpoint, overriding the provider's.
    /// The proxy passes it to the provider; a provider that cannot scope
    /// tokens refuses it at load time.
    #[serde(default)]
    pub audience: Option<String>,
    /// Scopes of the token for this endpoint, overriding the provider's.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Audience of the JWT-SVID itself (for `grant: jwt_svid`), overriding the provider's.
    #[serde(default)]
    pub jwt_svid_audience: Option<String>,
    /// Which actions on which resources the agent may perform here (see
    /// [`crate::policy`]). None: everything the rule matches. Any: only what
    /// a statement allows and no `deny` statement matches; the rest is
    /// refused with 403 before a token is fetched or a byte sent upstream.
    #[serde(default)]
    pub statements: Vec<crate::policy::Statement>,
}

fn default_port() -> u16 {
    443
}
fn default_path() -> String {
    "/".to_owned()
}
fn default_header() -> String {
    "Authorization".to_owned()
}

/// Default decision for unmatched destinations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressDefault {
    /// Blind tunnel / plain forward without injection.
    Allow,
    /// Refuse with 403 before any byte is relayed.
    #[default]
    Deny,
}

/// Egress policy for destinations no endpoint matches.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// Decision when neither list matches.
    #[serde(default)]
    pub default: EgressDefault,
    /// `host:port` patterns always allowed (`*.suffix` hosts, `*` port);
    /// an entry may also be `{ to: "host:port", statements: [...] }`, and
    /// then its HTTP(S) is intercepted (no credential injected) so that
    /// only what the statements allow goes through.
    #[serde(default)]
    pub allow: Vec<EgressAllow>,
    /// `host:port` patterns always denied; checked before `allow`.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Allow unmatched destinations that resolve to loopback, private,
    /// link-local or other non-public addresses. Names pinned in `resolve`
    /// are exempt. Off by default so DNS cannot steer the agent into the host.
    #[serde(default)]
    pub allow_private_addresses: bool,
}

/// One `egress.allow` entry: `"host:port"`, or `{ to, statements }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressAllow {
    /// The `host:port` pattern.
    pub to: String,
    /// What may be done there (see [`crate::policy`]); none: anything, in a
    /// blind tunnel.
    pub statements: Vec<crate::policy::Statement>,
}

impl From<&str> for EgressAllow {
    fn from(to: &str) -> Self {
        Self {
            to: to.to_owned(),
            statements: Vec::new(),
        }
    }
}

impl<'de> Deserialize<'de> for EgressAllow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// The long form (the short one is the bare pattern).
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Long {
            to: String,
            #[serde(default)]
            statements: Vec<crate::policy::Statement>,
        }
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = EgressAllow;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"host:port\" or { to: \"host:port\", statements: [...] }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EgressAllow, E> {
                Ok(EgressAllow::from(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<EgressAllow, A::Error> {
                let l = Long::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(EgressAllow {
                    to: l.to,
                    statements: l.statements,
                })
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A per-sandbox policy overlay: statements that narrow the base config's,
/// never widen them (the effective set is the intersection).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverlay {
    /// Endpoint name → statements narrowing that endpoint.
    #[serde(default)]
    pub endpoints: BTreeMap<String, Vec<crate::policy::Statement>>,
    /// `egress.allow` entry, as written in the base (`"host:port"`) →
    /// statements narrowing it (an entry without statements of its own then
    /// becomes intercepted).
    #[serde(default)]
    pub egress: BTreeMap<String, Vec<crate::policy::Statement>>,
}

/// `resolve.<name>`: one address or several.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Pinned {
    /// `name: 127.0.0.1`.
    One(IpAddr),
    /// `name: [192.0.2.1, 2001:db8::1]`.
    Many(Vec<IpAddr>),
}

impl Pinned {
    /// The addresses, in the order written.
    pub fn addrs(&self) -> Vec<IpAddr> {
        match self {
            Pinned::One(ip) => vec![*ip],
            Pinned::Many(v) => v.clone(),
        }
    }
}

/// Limits; each has a default sized for one sandbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Bytes of one request or response head (request line plus headers). Minimum 8192.
    pub max_header_bytes: usize,
    /// Number of header fields in one head.
    pub max_headers: usize,
    /// Bytes of the request target (the URI in the request line).
    pub max_request_line: usize,
    /// Time a client has to send a complete request head.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// A connection with no bytes moving either way for this long is closed.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// TCP connect to an upstream.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// TLS handshake, with the client or with the upstream.
    #[serde(deserialize_with = "duration")]
    pub tls_handshake_timeout: Duration,
    /// Upstream response head after the request was sent.
    #[serde(deserialize_with = "duration")]
    pub response_header_timeout: Duration,
    /// Client connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Leaf certificates kept for intercepted names (least recently used evicted).
    pub cert_cache_size: u64,
    /// On shutdown, time given to in-flight requests before connections are cut.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_request_line: 8 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            response_header_timeout: Duration::from_secs(60),
            max_connections: 1024,
            cert_cache_size: 1024,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// The longest duration any setting accepts: beyond it, deadline arithmetic
/// (`Instant + d`) could overflow and panic on every connection.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

fn capped(d: Duration, written: &str) -> Result<Duration, String> {
    if d > MAX_DURATION {
        return Err(format!(
            "'{written}' is longer than the 366 days any duration here may be"
        ));
    }
    Ok(d)
}

/// Parses `250ms`, `10s`, `5m`, `1h` (or a bare number of seconds), at most
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 500ms, 10s, 5m or 1h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "'{s}' has unknown unit '{unit}' (use ms, s, m or h)"
            ));
        }
    };
    capped(d, s)
}

/// serde helper for [`parse_duration`]; also accepts an integer number of seconds.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(n) => {
            capped(Duration::from_secs(n), &n.to_string()).map_err(serde::de::Error::custom)
        }
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}
