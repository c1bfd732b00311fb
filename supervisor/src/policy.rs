//! Statement policy at the command line: `lanyard check`'s table of
//! effective statements and `lanyard policy test`. Both read the settings
//! the proxy would run with (overlays applied) and decide through the same
//! functions the request path calls.

use std::fmt::Write as _;
use std::path::Path;

use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use lanyard_proxy::inject::{Scheme, refusal};
use lanyard_proxy::matcher::{ConnectPlan, EgressDecision};
use lanyard_proxy::parse::Target;
use lanyard_proxy::policy::Effective;

use crate::Error;
use crate::config::{Config, ConfigFileError, Validated};

/// Every endpoint and egress entry with statements, layer by layer: base
/// statements as `endpoints[i].statements[j]`, overlays by file and index.
/// Empty when no statements are configured anywhere.
pub fn statements_table(v: &Validated) -> String {
    let mut out = String::new();
    let mut section = |subject: String, base_field: String, policy: &Effective| {
        if policy.is_empty() {
            return;
        }
        if out.is_empty() {
            out.push_str("STATEMENTS (a request must be allowed by every layer)\n");
        }
        let _ = writeln!(out, "{subject}");
        for (overlay, i, text) in policy.describe() {
            let at = match overlay {
                None => format!("{base_field}[{i}]"),
                Some(o) => format!("overlay {o} [{i}]"),
            };
            let _ = writeln!(out, "  {at}: {text}");
        }
    };
    for (i, e) in v.endpoints.iter().enumerate() {
        if let Some(rule) = v.settings.router.rules().iter().find(|r| r.name == e.name) {
            section(
                format!("endpoint '{}'", e.name),
                format!("endpoints[{i}].statements"),
                &rule.policy,
            );
        }
    }
    let allow = &v.settings.config.egress.allow;
    for (to, policy) in v.settings.egress.inspected() {
        let i = allow.iter().position(|a| a.to == to).unwrap_or_default();
        section(
            format!("egress '{to}' (intercepted, nothing injected)"),
            format!("egress.allow[{i}].statements"),
            policy,
        );
    }
    out
}

/// `lanyard policy test`'s answer: allowed or not, and the lines that say why.
#[derive(Debug)]
pub struct Answer {
    /// Whether the request would go on.
    pub allowed: bool,
    /// `allow: ...` or `deny: ...`, then one line per deciding statement.
    pub text: String,
}

/// Decides `method url` as the proxy running `file` (overlays applied)
/// would: the connection first (egress policy, passthrough), then the
/// request (endpoint or egress entry statements).
pub fn test(file: &Path, method: &str, url: &str) -> Result<Answer, Error> {
    let config = Config::load(file)?;
    let v = config.validate(file)?;
    let arg = |field: &str, reason: String| {
        Error::Config(ConfigFileError {
            file: "(command line)".into(),
            field: field.into(),
            reason,
        })
    };
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| arg("METHOD", format!("'{method}' is not an HTTP method")))?;
    let uri: Uri = url
        .parse()
        .map_err(|e| arg("URL", format!("'{url}': {e}")))?;
    let scheme = match uri.scheme_str() {
        Some("https") => Scheme::Https,
        Some("http") => Scheme::Http,
        _ => {
            return Err(arg(
                "URL",
                format!("'{url}' must be an http:// or https:// URL"),
            ));
        }
    };
    let default_port = if scheme == Scheme::Https { 443 } else { 80 };
    let authority = uri
        .authority()
        .ok_or_else(|| arg("URL", format!("'{url}' names no host")))?;
    let target = Target::parse_authority(authority.as_str(), Some(default_port))
        .map_err(|e| arg("URL", e))?;
    let s = &v.settings;
    let deny = |text: String| Answer {
        allowed: false,
        text: format!("deny: {text}\n"),
    };
    // The connection, as the front ends decide it: a CONNECT for https
    // (accept.rs), an absolute-form request for http (plain.rs).
    let allow = |text: String| Answer {
        allowed: true,
        text: format!("allow: {text}\n"),
    };
    if scheme == Scheme::Https {
        match s.connect_plan(&target) {
            Err(rule) => return Ok(deny(format!("CONNECT to {target} is refused by {rule}"))),
            Ok(ConnectPlan::Passthrough) => {
                return Ok(allow(format!(
                    "{target} is an endpoint with tls: passthrough, relayed blind (statements do not apply)"
                )));
            }
            Ok(ConnectPlan::Unmatched) => {
                return Ok(allow(format!(
                    "{target} is allowed by egress policy and tunnelled blind (no statements apply)"
                )));
            }
            Ok(ConnectPlan::Intercept | ConnectPlan::Inspect) => {}
        }
    } else if s.router.connect_plan(&target) != ConnectPlan::Intercept {
        match s.egress.decide(&target) {
            EgressDecision::Deny(rule) => {
                return Ok(deny(format!("request to {target} is refused by {rule}")));
            }
            EgressDecision::Allow(rule) => {
                return Ok(allow(format!(
                    "{target} is allowed by {rule} and forwarded (no statements apply)"
                )));
            }
            EgressDecision::Inspect(_) => {}
        }
    }
    // The request, through the inject phase's own decision.
    let mut headers = HeaderMap::new();
    let host = HeaderValue::from_str(authority.as_str()).map_err(|e| arg("URL", e.to_string()))?;
    headers.insert(http::header::HOST, host);
    let d = lanyard_proxy::inject::decide(
        &s.router,
        &target,
        scheme,
        &method,
        &uri,
        &headers,
        Version::HTTP_11,
    )
    .map_err(|e| arg("URL", e.to_string()))?;
    let (subject, base_field, policy) = match d.rule {
        Some(rule) => {
            let i = v
                .endpoints
                .iter()
                .position(|e| e.name == rule.name)
                .unwrap_or_default();
            (
                format!("endpoint '{}'", rule.name),
                format!("endpoints[{i}].statements"),
                &rule.policy,
            )
        }
        None => match s.egress.inspection(&target) {
            Some((i, to, policy)) => (
                format!("egress.allow[{i}] '{to}'"),
                format!("egress.allow[{i}].statements"),
                policy,
            ),
            None => {
                return Ok(Answer {
                    allowed: true,
                    text: format!(
                        "allow: {method} {} matches no endpoint; forwarded without a credential (no statements apply)\n",
                        d.path
                    ),
                });
            }
        },
    };
    if policy.is_empty() {
        return Ok(Answer {
            allowed: true,
            text: format!(
                "allow: {subject} has no statements; {method} {} goes on\n",
                d.path
            ),
        });
    }
    let mut text = match refusal(policy, &method, &target, &d.path) {
        Some(why) => format!("deny: {subject}: {why}\n"),
        None => format!("allow: {subject}: {method} {}\n", d.path),
    };
    for (overlay, decision, statement) in policy.explain(&method, &target.host, &d.path) {
        let layer = match overlay {
            None => base_field.clone(),
            Some(o) => format!("overlay {o} "),
        };
        let line = match (decision, statement) {
            (lanyard_proxy::policy::Decision::Allow(i), Some(t)) => {
                format!("  {layer}[{i}] allows: {t}")
            }
            (lanyard_proxy::policy::Decision::Deny(i), Some(t)) => {
                format!("  {layer}[{i}] denies: {t}")
            }
            _ => format!("  {layer}: no statement matches"),
        };
        let _ = writeln!(text, "{line}");
    }
    Ok(Answer {
        allowed: text.starts_with("allow"),
        text,
    })
}

#[cfg(test)]
mod tests;
