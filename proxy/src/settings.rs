//! Validated settings: everything in [`ProxyConfig`] checked and compiled into
//! the structures the request path uses.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use crate::config::{LimitsConfig, ProxyConfig};
use crate::matcher::{ConnectPlan, EgressDecision, EgressPolicy, Router, Rule};
use crate::parse::Host;

/// A config problem: which field, and why. The binary adds the file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    /// Dotted path of the offending field, e.g. `endpoints[1].host`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The compiled proxy settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The raw config (paths, listen address, TLS settings).
    pub config: ProxyConfig,
    /// Endpoint rules.
    pub router: Router,
    /// Egress policy.
    pub egress: EgressPolicy,
    /// Canonical name → pinned address.
    pub resolve: HashMap<Host, Vec<IpAddr>>,
}

impl Settings {
    /// Validates `config`; `providers` are the names the caller can serve, so
    /// an endpoint naming an unknown provider is caught here.
    pub fn build(config: ProxyConfig, providers: &BTreeSet<String>) -> Result<Self, ConfigError> {
        check_limits(&config.limits)?;
        let mut rules = Vec::with_capacity(config.endpoints.len());
        for (i, e) in config.endpoints.iter().enumerate() {
            let field = format!("endpoints[{i}]");
            let rule = Rule::from_config(e, &field)?;
            if !providers.contains(&rule.provider) {
                let known: Vec<&str> = providers.iter().map(String::as_str).collect();
                return Err(ConfigError::new(
                    format!("{field}.provider"),
                    format!(
                        "unknown provider '{}' (defined: {})",
                        rule.provider,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            rules.push(rule);
        }
        let router = Router::new(rules)?;
        let egress = EgressPolicy::new(&config.egress)?;
        let mut resolve = HashMap::new();
        for (name, pinned) in &config.resolve {
            let host =
                Host::parse(name).map_err(|r| ConfigError::new(format!("resolve.{name}"), r))?;
            if matches!(host, Host::Ip(_)) {
                return Err(ConfigError::new(
                    format!("resolve.{name}"),
                    "key must be a host name, not an address",
                ));
            }
            let addrs = pinned.addrs();
            if addrs.is_empty() {
                return Err(ConfigError::new(
                    format!("resolve.{name}"),
                    "needs at least one address",
                ));
            }
            resolve.insert(host, addrs);
        }
        if let (Some(_), None) | (None, Some(_)) = (&config.ca.cert_file, &config.ca.key_file) {
            return Err(ConfigError::new(
                "ca",
                "cert_file and key_file must be given together",
            ));
        }
        if config.ca.key_dir.is_some() && config.ca.cert_file.is_some() {
            return Err(ConfigError::new(
                "ca.key_dir",
                "keeps a generated CA; it cannot be combined with cert_file/key_file",
            ));
        }
        if let Some(kd) = &config.ca.key_dir
            && (kd.starts_with(&config.ca.dir) || config.ca.dir.starts_with(kd))
        {
            // ca.dir is shared with the agent: the key must live apart from it.
            return Err(ConfigError::new(
                "ca.key_dir",
                format!(
                    "{} overlaps ca.dir {}, which the agent can read; keep the key in a directory of its own",
                    kd.display(),
                    config.ca.dir.display()
                ),
            ));
        }
        Ok(Settings {
            config,
            router,
            egress,
            resolve,
        })
    }
}

impl Settings {
    /// Applies a per-sandbox overlay read from file `origin`: each endpoint
    /// and egress entry it names is narrowed; naming one the base lacks, or
    /// allowing beyond the base's statements, is an error naming it.
    pub fn narrow(
        &mut self,
        origin: &str,
        overlay: &crate::config::PolicyOverlay,
    ) -> Result<(), ConfigError> {
        for (name, statements) in &overlay.endpoints {
            self.router.narrow(name, origin, statements)?;
        }
        for (to, statements) in &overlay.egress {
            self.egress.narrow(to, origin, statements)?;
        }
        Ok(())
    }

    /// How a connection to `target` is handled: by the endpoint rules, or
    /// for a destination none covers, by egress policy (`Err` names the
    /// rule that denies it).
    pub fn connect_plan(&self, target: &crate::parse::Target) -> Result<ConnectPlan, String> {
        match self.router.connect_plan(target) {
            ConnectPlan::Unmatched => match self.egress.decide(target) {
                EgressDecision::Deny(rule) => Err(rule),
                EgressDecision::Allow(_) => Ok(ConnectPlan::Unmatched),
                EgressDecision::Inspect(_) => Ok(ConnectPlan::Inspect),
            },
            plan => Ok(plan),
        }
    }
}

fn check_limits(l: &LimitsConfig) -> Result<(), ConfigError> {
    let field = |f: &str| format!("limits.{f}");
    // hyper refuses read buffers under 8 KiB.
    if l.max_header_bytes < 8192 {
        return Err(ConfigError::new(
            field("max_header_bytes"),
            "must be at least 8192",
        ));
    }
    if l.max_request_line == 0 || l.max_request_line > l.max_header_bytes {
        return Err(ConfigError::new(
            field("max_request_line"),
            "must be between 1 and limits.max_header_bytes",
        ));
    }
    for (name, v) in [
        ("max_headers", l.max_headers),
        ("max_connections", l.max_connections),
    ] {
        if v == 0 {
            return Err(ConfigError::new(field(name), "must be at least 1"));
        }
    }
    if l.cert_cache_size == 0 {
        return Err(ConfigError::new(
            field("cert_cache_size"),
            "must be at least 1",
        ));
    }
    for (name, d) in [
        ("header_read_timeout", l.header_read_timeout),
        ("idle_timeout", l.idle_timeout),
        ("connect_timeout", l.connect_timeout),
        ("tls_handshake_timeout", l.tls_handshake_timeout),
        ("response_header_timeout", l.response_header_timeout),
    ] {
        if d.is_zero() {
            return Err(ConfigError::new(field(name), "must be greater than zero"));
        }
    }
    Ok(())
}

/// Whether a config name (endpoint, provider) can be used as a metric label
/// value and in log fields as is: 1-64 of `[A-Za-z0-9._-]`. The exposition
/// crate writes label values unescaped, so a quote or newline in a name
/// would corrupt `/metrics`.
pub fn is_label_safe(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}
