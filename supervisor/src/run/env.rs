//! The agent's environment: an allowlist from Lanyard's own, minus anything
//! that could lead to the identity, plus the proxy and CA-trust variables.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::AgentEnv;

/// Passed through when `agent.env.pass` is not given.
pub const DEFAULT_PASS: &[&str] = &["PATH", "HOME", "LANG", "LC_*", "TERM", "TZ"];
/// Never passed, whatever the config says.
pub const ALWAYS_DENY: &[&str] = &["SPIFFE_*", "LANYARD_*"];
/// Variables pointing clients at the proxy.
pub const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];
/// Variables pointing clients at the combined trust bundle.
pub const BUNDLE_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE",
    "PIP_CERT",
    "DENO_CERT",
];

/// Glob match: `*` is any run of characters (empty included), `?` exactly
/// one; everything else is literal. Iterative, with one backtrack point.
fn matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Checks one `pass`/`deny` pattern.
fn check_pattern(field: String, pattern: &str) -> Result<(), (String, String)> {
    if pattern.is_empty() {
        return Err((field, "is empty".into()));
    }
    if let Some(c) = pattern.chars().find(|c| {
        matches!(c, '[' | ']' | '{' | '}' | '\\' | '=') || c.is_whitespace() || c.is_control()
    }) {
        return Err((
            field,
            format!(
                "'{pattern}': '{c}' is not allowed; patterns are names with '*' (any run) and '?' (one character)"
            ),
        ));
    }
    Ok(())
}

/// Names Lanyard itself sets for the agent.
pub fn managed(name: &str) -> bool {
    PROXY_VARS.contains(&name)
        || BUNDLE_VARS.contains(&name)
        || matches!(
            name,
            "NO_PROXY" | "no_proxy" | "NODE_EXTRA_CA_CERTS" | "NODE_USE_ENV_PROXY" | "WGETRC"
        )
}

/// Checks `agent.env` (field errors as `(field, reason)`).
pub fn check(cfg: &AgentEnv) -> Result<(), (String, String)> {
    for (i, p) in cfg.pass.iter().flatten().enumerate() {
        check_pattern(format!("agent.env.pass[{i}]"), p)?;
    }
    for (i, p) in cfg.deny.iter().enumerate() {
        check_pattern(format!("agent.env.deny[{i}]"), p)?;
    }
    for name in cfg.set.keys() {
        if ALWAYS_DENY
            .iter()
            .chain(
                cfg.deny
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .iter(),
            )
            .any(|p| matches(p, name))
        {
            return Err((
                format!("agent.env.set.{name}"),
                "is a denied variable".into(),
            ));
        }
        if managed(name) {
            return Err((
                format!("agent.env.set.{name}"),
                "is set by Lanyard (proxy and CA trust)".into(),
            ));
        }
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err((
                format!("agent.env.set.{name}"),
                "is not a valid variable name".into(),
            ));
        }
    }
    Ok(())
}

/// `JAVA_TOOL_OPTIONS` for a JVM agent: the proxy (Java ignores
/// `HTTPS_PROXY`) and the PKCS#12 truststore (Java reads no PEM file and no
/// `SSL_CERT_FILE`). `None` when the path holds whitespace, which the JVM
/// would split the option at.
pub fn java_tool_options(proxy_port: u16, truststore: &Path) -> Option<String> {
    let store = truststore.display().to_string();
    if store.chars().any(char::is_whitespace) {
        return None;
    }
    Some(format!(
        "-Djavax.net.ssl.trustStore={store} -Djavax.net.ssl.trustStoreType=PKCS12 \
         -Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort={proxy_port} \
         -Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort={proxy_port} \
         -Dhttp.nonProxyHosts=localhost|127.0.0.1|[::1]"
    ))
}

/// The complete environment for the agent.
pub fn build<I>(
    inherited: I,
    cfg: &AgentEnv,
    proxy_port: u16,
    trust: &lanyard_proxy::TrustFiles,
) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (String, String)>,
{
    let pass: Vec<&str> = match &cfg.pass {
        Some(p) => p.iter().map(String::as_str).collect(),
        None => DEFAULT_PASS.to_vec(),
    };
    let denied = |name: &str| {
        ALWAYS_DENY.iter().any(|p| matches(p, name)) || cfg.deny.iter().any(|p| matches(p, name))
    };
    let mut env: BTreeMap<String, String> = inherited
        .into_iter()
        .filter(|(k, _)| pass.iter().any(|p| matches(p, k)) && !denied(k) && !managed(k))
        .collect();
    for (k, v) in &cfg.set {
        if !denied(k) && !managed(k) {
            env.insert(k.clone(), v.clone());
        }
    }
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    for k in PROXY_VARS {
        env.insert((*k).to_owned(), proxy.clone());
    }
    for k in ["NO_PROXY", "no_proxy"] {
        env.insert(k.to_owned(), "localhost,127.0.0.1,::1".to_owned());
    }
    env.insert("NODE_USE_ENV_PROXY".into(), "1".into());
    let bundle = trust.bundle_pem.display().to_string();
    for k in BUNDLE_VARS {
        env.insert((*k).to_owned(), bundle.clone());
    }
    // Node adds this to its built-in roots, so the CA alone is right here.
    env.insert(
        "NODE_EXTRA_CA_CERTS".into(),
        trust.ca_pem.display().to_string(),
    );
    env.insert("WGETRC".into(), trust.wgetrc.display().to_string());
    match java_tool_options(proxy_port, &trust.truststore_p12) {
        // Options the config sets for the JVM (heap size...) come after
        // Lanyard's, and win where they repeat one.
        Some(ours) => {
            let theirs = env.remove("JAVA_TOOL_OPTIONS");
            let all = match theirs {
                Some(t) if !t.trim().is_empty() => format!("{ours} {t}"),
                _ => ours,
            };
            env.insert("JAVA_TOOL_OPTIONS".into(), all);
        }
        None => tracing::warn!(
            truststore = %trust.truststore_p12.display(),
            "the truststore path holds whitespace: JAVA_TOOL_OPTIONS is not set, so Java agents will not trust the sandbox CA"
        ),
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inherited() -> Vec<(String, String)> {
        [
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
            ("LC_CTYPE", "C.UTF-8"),
            ("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/agent.sock"),
            ("LANYARD_LOG", "debug"),
            ("AWS_SECRET_ACCESS_KEY", "nope"),
            ("HTTPS_PROXY", "http://elsewhere:1"),
            ("EDITOR", "vi"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn allowlist_then_deny_then_managed() {
        let cfg = AgentEnv {
            pass: Some(vec![
                "PATH".into(),
                "LC_*".into(),
                "SPIFFE_*".into(),
                "AWS_*".into(),
                "HTTPS_PROXY".into(),
            ]),
            deny: vec!["AWS_SECRET_*".into()],
            set: [("GREETING".to_owned(), "hi".to_owned())].into(),
        };
        let mut cfg = cfg;
        cfg.set
            .insert("JAVA_TOOL_OPTIONS".into(), "-Xmx256m".into());
        let env = build(inherited(), &cfg, 3128, &trust("/ca"));
        assert_eq!(env["PATH"], "/usr/bin");
        assert_eq!(env["LC_CTYPE"], "C.UTF-8");
        assert_eq!(env["GREETING"], "hi");
        assert!(!env.contains_key("HOME"), "not in pass");
        assert!(!env.contains_key("EDITOR"));
        assert!(
            !env.keys()
                .any(|k| k.starts_with("SPIFFE_") || k.starts_with("LANYARD_")),
            "{env:?}"
        );
        assert!(!env.contains_key("AWS_SECRET_ACCESS_KEY"));
        assert_eq!(
            env["HTTPS_PROXY"], "http://127.0.0.1:3128",
            "inherited proxy must not win"
        );
        assert_eq!(env["https_proxy"], "http://127.0.0.1:3128");
        assert_eq!(env["no_proxy"], "localhost,127.0.0.1,::1");
        assert_eq!(env["NODE_USE_ENV_PROXY"], "1");
        for k in BUNDLE_VARS {
            assert_eq!(env[*k], "/ca/bundle.pem", "{k}");
        }
        assert_eq!(env["NODE_EXTRA_CA_CERTS"], "/ca/ca.pem");
        assert_eq!(env["WGETRC"], "/ca/wgetrc");
        let java: Vec<&str> = env["JAVA_TOOL_OPTIONS"].split_whitespace().collect();
        assert_eq!(
            java,
            [
                "-Djavax.net.ssl.trustStore=/ca/truststore.p12",
                "-Djavax.net.ssl.trustStoreType=PKCS12",
                "-Dhttp.proxyHost=127.0.0.1",
                "-Dhttp.proxyPort=3128",
                "-Dhttps.proxyHost=127.0.0.1",
                "-Dhttps.proxyPort=3128",
                "-Dhttp.nonProxyHosts=localhost|127.0.0.1|[::1]",
                "-Xmx256m",
            ],
            "Lanyard's options first, the config's after (and winning)"
        );
        let spaced = build(inherited(), &AgentEnv::default(), 1, &trust("/my ca"));
        assert!(
            !spaced.contains_key("JAVA_TOOL_OPTIONS"),
            "would be split at the space"
        );
    }

    fn trust(dir: &str) -> lanyard_proxy::TrustFiles {
        let d = Path::new(dir);
        lanyard_proxy::TrustFiles {
            ca_pem: d.join("ca.pem"),
            bundle_pem: d.join("bundle.pem"),
            truststore_p12: d.join("truststore.p12"),
            wgetrc: d.join("wgetrc"),
        }
    }

    #[test]
    fn patterns_are_globs_anywhere() {
        for (p, n, want) in [
            ("*SECRET*", "AWS_SECRET_ACCESS_KEY", true),
            ("*SECRET*", "SECRET", true),
            ("*SECRET*", "SECRE", false),
            ("AWS_*_KEY", "AWS_SECRET_ACCESS_KEY", true),
            ("AWS_*_KEY", "AWS_REGION", false),
            ("*_TOKEN", "GITHUB_TOKEN", true),
            ("*_TOKEN", "GITHUB_TOKENS", false),
            ("LC_*", "LC_ALL", true),
            ("LC_?", "LC_A", true),
            ("LC_?", "LC_AB", false),
            ("PATH", "PATH", true),
            ("PATH", "XPATH", false),
            ("**", "", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
        ] {
            assert_eq!(matches(p, n), want, "{p} vs {n}");
        }
        let cfg = AgentEnv {
            pass: Some(vec!["*".into()]),
            deny: vec!["*SECRET*".into()],
            set: BTreeMap::new(),
        };
        let env = build(inherited(), &cfg, 1, &trust("/c"));
        assert!(!env.contains_key("AWS_SECRET_ACCESS_KEY"), "{env:?}");
        assert_eq!(env["EDITOR"], "vi");
    }

    #[test]
    fn unsupported_pattern_syntax_is_refused_not_taken_literally() {
        for bad in ["AWS_[A-Z]*", "", "A B", "X=Y"] {
            let cfg = AgentEnv {
                deny: vec![bad.into()],
                ..AgentEnv::default()
            };
            let (field, _) = check(&cfg).unwrap_err();
            assert_eq!(field, "agent.env.deny[0]", "{bad:?}");
        }
    }

    #[test]
    fn config_cannot_set_denied_or_managed_names() {
        for name in [
            "SPIFFE_ENDPOINT_SOCKET",
            "LANYARD_X",
            "SSL_CERT_FILE",
            "no_proxy",
        ] {
            let cfg = AgentEnv {
                set: [(name.to_owned(), "x".to_owned())].into(),
                ..AgentEnv::default()
            };
            let (field, _) = check(&cfg).unwrap_err();
            assert_eq!(field, format!("agent.env.set.{name}"));
        }
    }
}
