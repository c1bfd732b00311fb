//! `lanyard.yaml`: the whole file as one typed value. Every struct denies
//! unknown fields, and every error names the file, the field and the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use lanyard_proxy::config::{
    CaConfig, EgressConfig, EndpointConfig, LimitsConfig, UpstreamTlsConfig,
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
    /// Host names pinned to addresses, consulted before DNS.
    #[serde(default)]
    pub resolve: BTreeMap<String, IpAddr>,
    /// Named credential providers that endpoints refer to.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Injection rules.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Policy for destinations no endpoint matches.
    #[serde(default)]
    pub egress: EgressConfig,
    /// Limits and timeouts.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// One provider: exactly one of its kinds must be set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// A token read from a file, re-read when the file changes.
    #[serde(default, rename = "static")]
    pub static_token: Option<StaticProvider>,
}

/// A provider's kind, once validated.
#[derive(Debug, Clone)]
pub enum ProviderKind<'a> {
    /// `static`.
    Static(&'a StaticProvider),
}

impl ProviderConfig {
    /// The single kind this entry configures.
    pub fn kind(&self) -> Result<ProviderKind<'_>, String> {
        match &self.static_token {
            Some(s) => Ok(ProviderKind::Static(s)),
            None => Err("set exactly one provider kind: static".into()),
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
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let mut field = e.path().to_string();
            let inner = e.into_inner();
            let mut reason = inner.to_string();
            // serde_yaml prefixes its own copy of the path; keep one.
            if let Some(rest) = reason.strip_prefix(&format!("{field}: ")) {
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

    /// Validates everything that can be checked without side effects and
    /// splits the config into proxy settings and providers.
    pub fn validate(
        self,
        path: &Path,
    ) -> Result<(Settings, BTreeMap<String, ProviderConfig>), ConfigFileError> {
        for (name, p) in &self.providers {
            p.kind()
                .map_err(|r| ConfigFileError::new(path, format!("providers.{name}"), r))?;
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigFileError::new(
                    path,
                    format!("providers.{name}"),
                    "provider names use letters, digits, '-' and '_'",
                ));
            }
        }
        let names: BTreeSet<String> = self.providers.keys().cloned().collect();
        let proxy = ProxyConfig {
            listen: self.listen,
            ca: self.ca,
            upstream_tls: self.upstream_tls,
            resolve: self.resolve,
            endpoints: self.endpoints,
            egress: self.egress,
            limits: self.limits,
        };
        let settings =
            Settings::build(proxy, &names).map_err(|e| ConfigFileError::from_field(path, e))?;
        Ok((settings, self.providers))
    }
}
