//! `lanyard import openshell PROFILE`: an NVIDIA OpenShell provider profile,
//! as it is, turned into the Lanyard config that does the same, printed for
//! the operator to read, keep and `lanyard check`.
//!
//! An importer rather than `providers: { x: { openshell_profile: path } }`:
//! a profile carries endpoints as well as the credential, and Lanyard's
//! endpoints are top-level rules matched most specific first across every
//! provider. Pulled in at load time, a profile would add rules nobody can
//! see in `lanyard.yaml`; printed once, every rule is in the file that is
//! reviewed, diffed and reloaded, and `lanyard check` shows it. What the
//! profile asks for and Lanyard cannot honour is refused with the field
//! named (exit 64), never dropped quietly.

use std::path::Path;

use serde::Deserialize;

use crate::config::ConfigFileError;

/// A provider profile (the fields OpenShell documents).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    id: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
    #[serde(default)]
    binaries: Vec<String>,
    #[serde(default)]
    credentials: Vec<Credential>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Endpoint {
    host: String,
    #[serde(default = "https_port")]
    port: u16,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    tls: Option<String>,
    #[serde(default)]
    access: Option<String>,
    #[serde(default)]
    enforcement: Option<String>,
    #[serde(default)]
    allowed_ips: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Credential {
    name: String,
    #[serde(default = "bearer")]
    auth_style: String,
    #[serde(default)]
    header_name: Option<String>,
    #[serde(default)]
    token_grant: Option<TokenGrant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenGrant {
    token_endpoint: String,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    jwt_svid_audience: Option<String>,
    #[serde(default)]
    client_assertion_type: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default = "five_minutes")]
    cache_ttl_seconds: u64,
    #[serde(default)]
    audience_overrides: Vec<Override>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Override {
    host: String,
    #[serde(default = "https_port")]
    port: u16,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

fn https_port() -> u16 {
    443
}
fn bearer() -> String {
    "bearer".into()
}
fn five_minutes() -> u64 {
    300
}

/// The most OpenShell allows for `cache_ttl_seconds`.
const MAX_CACHE_TTL: u64 = 3600;

/// Reads the profile at `path` and returns the equivalent Lanyard config
/// (`providers`, `endpoints`, `token_cache`), to merge into a `lanyard.yaml`.
pub fn import(path: &Path) -> Result<String, ConfigFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigFileError::at(path, "(file)", format!("cannot read: {e}")))?;
    let profile: Profile = crate::config::parse_yaml(&text, path)?;
    translate(&profile).map_err(|(field, reason)| ConfigFileError::at(path, field, reason))
}

fn translate(p: &Profile) -> Result<String, (String, String)> {
    let bad = |f: String, r: &str| Err((f, r.to_owned()));
    let name = label(&p.id);
    if name.is_empty() {
        return bad("id".into(), "must contain a letter or digit");
    }
    if !p.binaries.is_empty() {
        return bad(
            "binaries".into(),
            "Lanyard cannot tell which program in the sandbox made a request; remove the list (every program in the sandbox is treated alike)",
        );
    }
    let grants: Vec<(usize, &Credential, &TokenGrant)> = p
        .credentials
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.token_grant.as_ref().map(|g| (i, c, g)))
        .collect();
    let (ci, cred, grant) = match grants.as_slice() {
        [one] => *one,
        [] => return bad("credentials".into(), "no credential has a token_grant"),
        _ => {
            return bad(
                "credentials".into(),
                "more than one credential has a token_grant: the profile's endpoints could take either; split it into one profile per credential",
            );
        }
    };
    let cf = |f: &str| format!("credentials[{ci}].{f}");
    if !cred.auth_style.eq_ignore_ascii_case("bearer") {
        return bad(
            cf("auth_style"),
            "only bearer is supported (Lanyard injects `Bearer TOKEN`, or the bare token into a custom header_name)",
        );
    }
    let tf = |f: &str| format!("credentials[{ci}].token_grant.{f}");
    if grant.cache_ttl_seconds == 0 || grant.cache_ttl_seconds > MAX_CACHE_TTL {
        return bad(
            tf("cache_ttl_seconds"),
            "must be between 1 and 3600, as in OpenShell",
        );
    }
    let provider = format!("{name}-{}", label(&cred.name));
    let mut out = String::new();
    out.push_str(&format!(
        "# Imported from the OpenShell provider profile '{}'{}{}.\n",
        p.id,
        p.display_name
            .as_ref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default(),
        p.category
            .as_ref()
            .map(|c| format!(", category {c}"))
            .unwrap_or_default(),
    ));
    out.push_str("providers:\n");
    out.push_str(&format!("  {provider}:\n    token_grant:\n"));
    out.push_str(&format!(
        "      token_endpoint: {}\n",
        q(&grant.token_endpoint)
    ));
    // OpenShell's tokens are client_credentials with the SVID as client assertion.
    out.push_str("      grant: client_credentials\n");
    if let Some(t) = &grant.client_assertion_type {
        out.push_str(&format!("      client_assertion_type: {}\n", q(t)));
    }
    match grant.jwt_svid_audience.as_deref().filter(|a| !a.is_empty()) {
        Some(a) => out.push_str(&format!("      jwt_svid_audience: {}\n", q(a))),
        // OpenShell derives an empty one from the token endpoint, cut at
        // `/realms/NAME` for Keycloak: that is the realm's issuer, which
        // Lanyard then uses as the SVID's audience.
        None => {
            if let Some(issuer) = keycloak_issuer(&grant.token_endpoint) {
                out.push_str(&format!("      issuer: {}\n", q(&issuer)));
            }
        }
    }
    if let Some(a) = &grant.audience {
        out.push_str(&format!("      audience: {}\n", q(a)));
    }
    if !grant.scopes.is_empty() {
        out.push_str(&format!("      scopes: {}\n", list(&grant.scopes)));
    }
    out.push_str("endpoints:\n");
    let header = cred
        .header_name
        .as_deref()
        .filter(|h| !h.eq_ignore_ascii_case("authorization"));
    let extra = header
        .map(|h| format!(", header: {}", q(h)))
        .unwrap_or_default();
    // Overrides first: more specific rules read better above the general ones
    // (the matcher orders them by specificity whatever the file says).
    for (i, o) in grant.audience_overrides.iter().enumerate() {
        let of = |f: &str| format!("credentials[{ci}].token_grant.audience_overrides[{i}].{f}");
        if o.host.is_empty() {
            return bad(of("host"), "must not be empty");
        }
        let path = o.path.as_deref().unwrap_or("/");
        if !path.starts_with('/') {
            return bad(of("path"), "must start with /");
        }
        let mut e = format!(
            "  - {{ name: {name}-override-{i}, host: {}, port: {}, path: {}, provider: {provider}",
            q(&o.host),
            o.port,
            q(path)
        );
        if let Some(a) = &o.audience {
            e.push_str(&format!(", audience: {}", q(a)));
        }
        if let Some(s) = &o.scopes {
            e.push_str(&format!(", scopes: {}", list(s)));
        }
        out.push_str(&format!("{e}{extra} }}\n"));
    }
    if p.endpoints.is_empty() && grant.audience_overrides.is_empty() {
        return bad(
            "endpoints".into(),
            "the profile names no endpoint to inject into",
        );
    }
    for (i, e) in p.endpoints.iter().enumerate() {
        let ef = |f: &str| format!("endpoints[{i}].{f}");
        if e.host.is_empty() {
            return bad(ef("host"), "must not be empty");
        }
        if !e.allowed_ips.is_empty() {
            return bad(
                ef("allowed_ips"),
                "Lanyard resolves endpoint names itself; pin them with `resolve:` in lanyard.yaml instead",
            );
        }
        match e
            .protocol
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("rest" | "http" | "https" | "grpc" | "websocket") => {}
            Some(other) => {
                return Err((
                    ef("protocol"),
                    format!(
                        "'{other}': Lanyard injects into HTTP (rest, http, https, grpc, websocket) only"
                    ),
                ));
            }
        }
        match e
            .enforcement
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("enforce") => {}
            Some(other) => {
                return Err((
                    ef("enforcement"),
                    format!("'{other}': Lanyard always enforces; there is no audit-only mode"),
                ));
            }
        }
        let tls = match e.tls.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("terminate" | "intercept") => "",
            Some("passthrough") => ", tls: passthrough",
            Some(other) => {
                return Err((
                    ef("tls"),
                    format!("'{other}': terminate (intercept) or passthrough"),
                ));
            }
        };
        let methods = match e.access.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("read-write" | "full") => "",
            Some("read-only") => ", methods: [GET, HEAD, OPTIONS]",
            Some(other) => {
                return Err((
                    ef("access"),
                    format!("'{other}': read-only, read-write or full"),
                ));
            }
        };
        out.push_str(&format!(
            "  - {{ name: {name}-{i}, host: {}, port: {}, provider: {provider}{methods}{tls}{extra} }}\n",
            q(&e.host),
            e.port
        ));
    }
    out.push_str(&format!(
        "# cache_ttl_seconds {}: Lanyard's token cache bound is process-wide; keep the smallest across imports.\ntoken_cache: {{ max_lifetime: {}s }}\n",
        grant.cache_ttl_seconds, grant.cache_ttl_seconds
    ));
    Ok(out)
}

/// `https://host/realms/NAME` from a Keycloak token endpoint under it.
fn keycloak_issuer(token_endpoint: &str) -> Option<String> {
    let at = token_endpoint.find("/realms/")?;
    let rest = &token_endpoint[at + "/realms/".len()..];
    let realm = rest.split('/').next().filter(|r| !r.is_empty())?;
    Some(format!("{}/realms/{realm}", &token_endpoint[..at]))
}

/// A name Lanyard accepts as a metric label: `[A-Za-z0-9._-]`, others as `-`.
fn label(s: &str) -> String {
    let l: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let l = l.trim_matches('-').to_owned();
    if l.chars().any(|c| c.is_ascii_alphanumeric()) {
        l.chars().take(30).collect()
    } else {
        String::new()
    }
}

/// A YAML double-quoted scalar.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn list(items: &[String]) -> String {
    format!(
        "[{}]",
        items.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
    )
}

#[cfg(test)]
mod tests;
