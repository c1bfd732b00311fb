//! Match phase: which endpoint (if any) a request belongs to, and whether an
//! unmatched destination may be reached at all.
//!
//! Specificity, most significant first: exact host over wildcard (more labels
//! beat fewer), then a longer path prefix (in segments), then a method list
//! over "any method". Two rules of equal specificity that can match the same
//! request are refused at load time, so the winner is never an accident of
//! file order.

use std::cmp::Ordering;
use std::net::IpAddr;

use http::{HeaderName, HeaderValue, Method};

use crate::config::{EgressConfig, EgressDefault, EndpointConfig, TlsMode};
use crate::parse::{Cidr, Host, Target, normalize_path, path_has_prefix};
use crate::settings::ConfigError;

#[cfg(test)]
mod tests;

/// A host as written in a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// One host.
    Exact(Host),
    /// `*.suffix`: any name with one or more labels before `suffix`.
    Wildcard(String),
    /// `*`: any host (egress patterns only).
    Any,
    /// `192.0.2.0/24`, `2001:db8::/32`: any address in the block (egress
    /// patterns only); matched against literal hosts and, for deny rules,
    /// against every address a name resolves to.
    Cidr(Cidr),
}

impl HostPattern {
    /// Parses `name`, `*.suffix` or (when `allow_any`) `*`.
    pub fn parse(raw: &str, allow_any: bool) -> Result<Self, String> {
        if raw == "*" {
            return if allow_any {
                Ok(HostPattern::Any)
            } else {
                Err("a bare '*' host would match everything; name the host".into())
            };
        }
        if let Some(suffix) = raw.strip_prefix("*.") {
            return match Host::parse(suffix)? {
                Host::Name(n) if n.contains('.') => Ok(HostPattern::Wildcard(n)),
                Host::Name(n) => Err(format!(
                    "wildcard '*.{n}' covers a whole top-level domain; use at least two labels"
                )),
                Host::Ip(_) => Err(format!("wildcard '{raw}' cannot cover an IP address")),
            };
        }
        if raw.contains('*') {
            return Err(format!(
                "'{raw}': '*' is only allowed as the whole first label ('*.example.com')"
            ));
        }
        Ok(HostPattern::Exact(Host::parse(raw)?))
    }

    /// True when `host` is covered.
    pub fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (HostPattern::Any, _) => true,
            (HostPattern::Exact(h), host) => h == host,
            (HostPattern::Wildcard(suffix), Host::Name(n)) => n
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            (HostPattern::Wildcard(_), Host::Ip(_)) => false,
            (HostPattern::Cidr(block), Host::Ip(ip)) => block.contains(*ip),
            (HostPattern::Cidr(..), Host::Name(_)) => false,
        }
    }

    /// (exactness, labels): exact beats wildcard, longer suffix beats shorter.
    fn rank(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(Host::Name(n)) => (2, n.split('.').count()),
            HostPattern::Exact(Host::Ip(_)) => (2, 0),
            HostPattern::Wildcard(s) => (1, s.split('.').count()),
            HostPattern::Any => (0, 0),
            HostPattern::Cidr(block) => (1, usize::from(block.bits)),
        }
    }
}

/// A validated endpoint rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Endpoint name.
    pub name: String,
    /// Host pattern.
    pub host: HostPattern,
    /// Port.
    pub port: u16,
    /// Normalised path prefix.
    pub path: String,
    /// Allowed methods; `None` means any.
    pub methods: Option<Vec<Method>>,
    /// Provider name.
    pub provider: String,
    /// Header carrying the credential.
    pub header: HeaderName,
    /// Text placed before the token.
    pub prefix: String,
    /// CONNECT handling.
    pub tls: TlsMode,
    /// Cleartext injection to non-loopback upstreams allowed.
    pub allow_cleartext: bool,
    /// The endpoint's statements and the overlays narrowing them, compiled
    /// (empty: no restriction).
    pub policy: crate::policy::Effective,
    path_segments: usize,
}

impl Rule {
    /// Validates one `endpoints[i]` entry; `field` is its path for errors.
    pub fn from_config(c: &EndpointConfig, field: &str) -> Result<Self, ConfigError> {
        let err = |sub: &str, reason: String| ConfigError::new(format!("{field}.{sub}"), reason);
        if !crate::settings::is_label_safe(&c.name) {
            return Err(err(
                "name",
                format!(
                    "'{}': endpoint names are 1-64 letters, digits, '.', '-' or '_' (they become metric labels)",
                    c.name
                ),
            ));
        }
        let host = HostPattern::parse(&c.host, false).map_err(|r| err("host", r))?;
        if c.port == 0 {
            return Err(err("port", "must be 1-65535".into()));
        }
        let path = normalize_path(&c.path).map_err(|e| err("path", e.to_string()))?;
        if c.path.contains('?') || c.path.contains('#') {
            return Err(err("path", "a prefix cannot contain '?' or '#'".into()));
        }
        let path = path.trim_end_matches('/').to_owned();
        let path_segments = path.split('/').filter(|s| !s.is_empty()).count();
        let methods = if c.methods.is_empty() {
            None
        } else {
            let mut ms = Vec::with_capacity(c.methods.len());
            for (i, m) in c.methods.iter().enumerate() {
                let upper = m.to_ascii_uppercase();
                let method = Method::from_bytes(upper.as_bytes())
                    .map_err(|_| err(&format!("methods[{i}]"), format!("'{m}' is not a method")))?;
                if method == Method::TRACE {
                    return Err(err(
                        &format!("methods[{i}]"),
                        "TRACE echoes the request back, credential included (RFC 9110 §9.3.8); it is never injected".into(),
                    ));
                }
                if method == Method::CONNECT {
                    return Err(err(
                        &format!("methods[{i}]"),
                        "CONNECT is the tunnel itself, not a request to inject into".into(),
                    ));
                }
                ms.push(method);
            }
            Some(ms)
        };
        let header = HeaderName::from_bytes(c.header.as_bytes()).map_err(|_| {
            err(
                "header",
                format!("'{}' is not a valid header name", c.header),
            )
        })?;
        if is_hop_by_hop(&header) || header == http::header::HOST {
            return Err(err(
                "header",
                format!("'{header}' is managed by the proxy and cannot carry a credential"),
            ));
        }
        let prefix = match &c.prefix {
            Some(p) => p.clone(),
            None if header == http::header::AUTHORIZATION => "Bearer ".to_owned(),
            None => String::new(),
        };
        if HeaderValue::from_str(&prefix).is_err() {
            return Err(err("prefix", "must be visible ASCII".into()));
        }
        if c.provider.is_empty() {
            return Err(err("provider", "must name a provider".into()));
        }
        let policy = crate::policy::Policy::compile(&c.statements)
            .map_err(|(f, r)| err(&format!("statements{f}"), r))?;
        let policy = crate::policy::Effective::new(policy);
        Ok(Rule {
            name: c.name.clone(),
            host,
            port: c.port,
            path,
            methods,
            provider: c.provider.clone(),
            header,
            prefix,
            tls: c.tls,
            allow_cleartext: c.allow_cleartext,
            policy,
            path_segments,
        })
    }

    fn specificity(&self) -> ((u8, usize), usize, bool) {
        (self.host.rank(), self.path_segments, self.methods.is_some())
    }

    fn matches(&self, target: &Target, path: &str, method: &Method) -> bool {
        // RFC 9110 §9.3.8: a server that allows TRACE echoes the request,
        // credential included. Never inject into it, whatever `methods` says.
        *method != Method::TRACE
            && *method != Method::CONNECT
            && self.port == target.port
            && self.host.matches(&target.host)
            && path_has_prefix(path, &self.path)
            && self.methods.as_ref().is_none_or(|ms| ms.contains(method))
    }

    fn overlaps(&self, other: &Rule) -> bool {
        let methods = match (&self.methods, &other.methods) {
            (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
            _ => true,
        };
        self.port == other.port && self.host == other.host && self.path == other.path && methods
    }
}

/// The endpoint rules, most specific first.
#[derive(Debug, Clone, Default)]
pub struct Router {
    rules: Vec<Rule>,
}

/// What a CONNECT to a destination turns into, before egress policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectPlan {
    /// Some endpoint wants injection here.
    Intercept,
    /// An endpoint names the host with `tls: passthrough`.
    Passthrough,
    /// No endpoint covers host:port.
    Unmatched,
    /// No endpoint covers host:port, and the egress allow entry that
    /// admits it has statements: intercepted without injection, so each
    /// request is decided by them.
    Inspect,
}

impl ConnectPlan {
    /// The tunnel kind, as metrics label it.
    pub fn label(self) -> &'static str {
        match self {
            ConnectPlan::Intercept => "intercept",
            ConnectPlan::Passthrough => "passthrough",
            ConnectPlan::Inspect => "inspect",
            ConnectPlan::Unmatched => "blind",
        }
    }
}

impl Router {
    /// Validates the rules as a set.
    pub fn new(rules: Vec<Rule>) -> Result<Self, ConfigError> {
        for (j, b) in rules.iter().enumerate() {
            for a in &rules[..j] {
                if a.name == b.name {
                    return Err(ConfigError::new(
                        format!("endpoints[{j}].name"),
                        format!("duplicate endpoint name '{}'", b.name),
                    ));
                }
                if a.specificity() == b.specificity() && a.overlaps(b) {
                    return Err(ConfigError::new(
                        format!("endpoints[{j}]"),
                        format!(
                            "'{}' overlaps '{}' with equal specificity (same host, port and path, intersecting methods); make one more specific",
                            b.name, a.name
                        ),
                    ));
                }
                if a.host == b.host && a.port == b.port && a.tls != b.tls {
                    return Err(ConfigError::new(
                        format!("endpoints[{j}].tls"),
                        format!(
                            "'{}' and '{}' name the same host and port with different tls modes",
                            b.name, a.name
                        ),
                    ));
                }
            }
        }
        let mut rules = rules;
        // Stable: equal keys never overlap (checked above), so order among them is moot.
        rules.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        Ok(Router { rules })
    }

    /// All rules, most specific first.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Narrows endpoint `name` with an overlay's statements from file
    /// `origin`; errors name the endpoint and statement.
    pub fn narrow(
        &mut self,
        name: &str,
        origin: &str,
        statements: &[crate::policy::Statement],
    ) -> Result<(), ConfigError> {
        let field = format!("endpoints.{name}");
        let rule = self.rules.iter_mut().find(|r| r.name == name).ok_or_else(|| {
            ConfigError::new(
                field.clone(),
                "no endpoint of the base config has this name; an overlay can only narrow what the base allows",
            )
        })?;
        rule.policy
            .narrow(origin, statements)
            .map_err(|(f, r)| ConfigError::new(format!("{field}{f}"), r))
    }

    /// The most specific rule for a request, if any.
    pub fn find(&self, target: &Target, path: &str, method: &Method) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(target, path, method))
    }

    /// How to treat a CONNECT: decided by the most specific host pattern that
    /// covers host:port.
    pub fn connect_plan(&self, target: &Target) -> ConnectPlan {
        self.rules
            .iter()
            .filter(|r| r.port == target.port && r.host.matches(&target.host))
            .max_by(|a, b| a.host.rank().cmp(&b.host.rank()).then(Ordering::Equal))
            .map_or(ConnectPlan::Unmatched, |r| match r.tls {
                TlsMode::Intercept => ConnectPlan::Intercept,
                TlsMode::Passthrough => ConnectPlan::Passthrough,
            })
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the proxy-only ones.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// One `host:port` egress pattern.
#[derive(Debug, Clone)]
struct EgressPattern {
    text: String,
    host: HostPattern,
    port: Option<u16>,
    /// Statements (allow entries only): non-empty means intercept and decide each request.
    policy: crate::policy::Effective,
}

impl EgressPattern {
    fn parse(raw: &str) -> Result<Self, String> {
        let (host, port) = raw
            .rsplit_once(':')
            .ok_or_else(|| format!("'{raw}' must be host:port (port may be '*')"))?;
        let port = if port == "*" {
            None
        } else {
            Some(
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("'{raw}' has an invalid port"))?,
            )
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = if host.contains('/') {
            HostPattern::Cidr(Cidr::parse(host)?)
        } else {
            HostPattern::parse(host, true)?
        };
        Ok(EgressPattern {
            text: raw.to_owned(),
            host,
            port,
            policy: crate::policy::Effective::default(),
        })
    }

    fn matches(&self, t: &Target) -> bool {
        self.port.is_none_or(|p| p == t.port) && self.host.matches(&t.host)
    }
}

/// Egress decision for an unmatched destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressDecision {
    /// Allowed; the string names the rule.
    Allow(String),
    /// Allowed by an entry with statements: intercepted (TLS terminated
    /// with the sandbox CA, nothing injected) so each request is decided.
    Inspect(String),
    /// Denied; the string names the rule.
    Deny(String),
}

/// The compiled egress policy.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    default: EgressDefault,
    allow: Vec<EgressPattern>,
    deny: Vec<EgressPattern>,
    /// See [`EgressConfig::allow_private_addresses`].
    pub allow_private_addresses: bool,
}

impl EgressPolicy {
    /// Validates the `egress` section.
    pub fn new(c: &EgressConfig) -> Result<Self, ConfigError> {
        let deny = c
            .deny
            .iter()
            .enumerate()
            .map(|(i, p)| {
                EgressPattern::parse(p)
                    .map_err(|r| ConfigError::new(format!("egress.deny[{i}]"), r))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut allow = Vec::with_capacity(c.allow.len());
        for (i, a) in c.allow.iter().enumerate() {
            let field = |sub: &str| format!("egress.allow[{i}]{sub}");
            let mut p = EgressPattern::parse(&a.to).map_err(|r| {
                ConfigError::new(
                    if a.statements.is_empty() {
                        field("")
                    } else {
                        field(".to")
                    },
                    r,
                )
            })?;
            let compiled = crate::policy::Policy::compile(&a.statements)
                .map_err(|(f, r)| ConfigError::new(field(&format!(".statements{f}")), r))?;
            p.policy = crate::policy::Effective::new(compiled);
            allow.push(p);
        }
        Ok(EgressPolicy {
            default: c.default,
            allow,
            deny,
            allow_private_addresses: c.allow_private_addresses,
        })
    }

    /// Narrows the allow entry written as `to` with an overlay's statements
    /// from file `origin`; errors name the entry and statement.
    pub fn narrow(
        &mut self,
        to: &str,
        origin: &str,
        statements: &[crate::policy::Statement],
    ) -> Result<(), ConfigError> {
        let entry = self.allow.iter_mut().find(|p| p.text == to).ok_or_else(|| {
            ConfigError::new(
                format!("egress.{to}"),
                "no egress.allow entry of the base config is written so; an overlay can only narrow what the base allows",
            )
        })?;
        entry
            .policy
            .narrow(origin, statements)
            .map_err(|(f, r)| ConfigError::new(format!("egress.{to}{f}"), r))
    }

    /// The allow entry that admits `t` (its index, its text as written and
    /// its statements), when that entry has statements: the request is
    /// then decided by them. `None` otherwise.
    pub fn inspection(&self, t: &Target) -> Option<(usize, &str, &crate::policy::Effective)> {
        match self.find(t) {
            Found::Allow(i, p) if !p.policy.is_empty() => Some((i, p.text.as_str(), &p.policy)),
            _ => None,
        }
    }

    /// Each allow entry with statements, as written, with them.
    pub fn inspected(&self) -> impl Iterator<Item = (&str, &crate::policy::Effective)> {
        self.allow
            .iter()
            .filter(|p| !p.policy.is_empty())
            .map(|p| (p.text.as_str(), &p.policy))
    }

    fn find(&self, t: &Target) -> Found<'_> {
        if let Some(i) = self.deny.iter().position(|p| p.matches(t)) {
            return Found::Deny(i, &self.deny[i]);
        }
        match self.allow.iter().position(|p| p.matches(t)) {
            Some(i) => Found::Allow(i, &self.allow[i]),
            None => Found::Neither,
        }
    }

    /// The deny rule, if any, that covers the address a name resolved to:
    /// a deny on an address or block holds whatever name leads there.
    pub fn denies_address(&self, addr: std::net::SocketAddr) -> Option<String> {
        let as_target = Target {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        };
        self.deny
            .iter()
            .enumerate()
            .find(|(_, p)| {
                matches!(
                    p.host,
                    HostPattern::Exact(Host::Ip(_)) | HostPattern::Cidr(..)
                ) && p.matches(&as_target)
            })
            .map(|(i, p)| format!("egress.deny[{i}] '{}'", p.text))
    }

    /// Deny list, then allow list, then the default.
    pub fn decide(&self, t: &Target) -> EgressDecision {
        match self.find(t) {
            Found::Deny(i, p) => {
                return EgressDecision::Deny(format!("egress.deny[{i}] '{}'", p.text));
            }
            Found::Allow(i, p) if p.policy.is_empty() => {
                return EgressDecision::Allow(format!("egress.allow[{i}] '{}'", p.text));
            }
            Found::Allow(i, p) => {
                return EgressDecision::Inspect(format!("egress.allow[{i}] '{}'", p.text));
            }
            Found::Neither => {}
        }
        match self.default {
            EgressDefault::Allow => EgressDecision::Allow("egress.default: allow".into()),
            EgressDefault::Deny => EgressDecision::Deny(
                "egress.default: deny (no endpoint or egress.allow entry matches)".into(),
            ),
        }
    }
}

/// The first list entry that covers a destination.
enum Found<'a> {
    Deny(usize, &'a EgressPattern),
    Allow(usize, &'a EgressPattern),
    Neither,
}

/// Addresses an unmatched destination may not resolve to unless allowed:
/// loopback, private, link-local, CGNAT, unique-local, unspecified, multicast,
/// broadcast, documentation and benchmarking ranges.
pub fn is_non_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] == 0
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_non_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}
