use super::*;

const FILE: &str = "lanyard.yaml";

fn err(yaml: &str) -> ConfigFileError {
    let p = Path::new(FILE);
    match Config::parse(yaml, p) {
        Err(e) => e,
        Ok(c) => c.validate(p).unwrap_err(),
    }
}

const GOOD: &str = r#"
listen: 127.0.0.1:3128
ca: { dir: /run/lanyard/ca }
upstream_tls: { extra_ca_files: [] }
resolve: { "alpha.test": "127.0.0.1" }
providers:
  demo-static: { static: { token_file: /run/secrets/token } }
endpoints:
  - { name: alpha, host: alpha.test, port: 8443, path: /, methods: [GET, POST], provider: demo-static }
egress: { default: deny, allow: ["*.pypi.org:443"] }
"#;

#[test]
fn the_documented_shape_parses() {
    let p = Path::new(FILE);
    let v = Config::parse(GOOD, p).unwrap().validate(p).unwrap();
    let (settings, providers) = (v.settings, v.providers);
    assert_eq!(settings.router.rules().len(), 1);
    assert!(matches!(
        providers["demo-static"].kind(),
        Ok(ProviderKind::Static(_))
    ));
    let e = err(&GOOD.replace("{ static: { token_file: /run/secrets/token } }", "{}"));
    assert_eq!(e.field, "providers.demo-static");
    assert_eq!(settings.config.limits.max_headers, 100);
}

#[test]
fn errors_name_file_field_and_reason() {
    let e = err(&GOOD.replace("port: 8443", "port: 99999"));
    assert_eq!(e.file, FILE);
    assert_eq!(e.field, "endpoints[0].port");
    assert!(
        e.reason.contains("99999") || e.reason.contains("u16"),
        "{}",
        e.reason
    );

    let e = err(&GOOD.replace("egress:", "egres:"));
    assert!(e.reason.contains("unknown field `egres`"), "{e}");

    let e = err(&GOOD.replace("provider: demo-static }", "provider: nope }"));
    assert_eq!(e.field, "endpoints[0].provider");
    assert!(e.reason.contains("unknown provider 'nope'"), "{e}");

    let e = err(&GOOD.replace("listen: 127.0.0.1:3128\n", ""));
    assert_eq!(e.field, "listen");

    let e = err(&GOOD.replace("token_file:", "token_path:"));
    assert!(e.field.starts_with("providers.demo-static"), "{e}");

    let e = err(&format!("{GOOD}limits: {{ idle_timeout: 5 parsecs }}\n"));
    assert_eq!(e.field, "limits.idle_timeout");

    // Durations that would overflow deadline arithmetic are refused at load.
    for huge in [
        "18446744073709551615",
        "18446744073709551615s",
        "300000000h",
        "367d",
        "9999999999m",
    ] {
        let e = err(&format!("{GOOD}limits: {{ idle_timeout: {huge} }}\n"));
        assert_eq!(e.field, "limits.idle_timeout", "{huge}: {e}");
    }
    for (yaml, field) in [
        ("spiffe: { fetch_timeout: 0s }\n", "spiffe.fetch_timeout"),
        ("agent: { kill_after: 0 }\n", "agent.kill_after"),
        (
            "limits: { connect_timeout: 0ms }\n",
            "limits.connect_timeout",
        ),
    ] {
        let e = err(&format!("{GOOD}{yaml}"));
        assert_eq!(e.field, field, "{e}");
    }

    let e = err("listen: [");
    assert!(e.reason.contains("line"), "{e}");
    assert_eq!(e.to_string(), format!("{FILE}: {}: {}", e.field, e.reason));
}

fn grant_err(provider: &str, endpoint_extra: &str, top: &str) -> ConfigFileError {
    let yaml = format!(
        "listen: 127.0.0.1:0\nca: {{ dir: /tmp/x }}\n{top}providers:\n  g: {{ token_grant: {{ {provider} }} }}\nendpoints:\n  - {{ name: a, host: a.test, provider: g{endpoint_extra} }}\n"
    );
    let p = Path::new(FILE);
    let v = match Config::parse(&yaml, p).and_then(|c| c.validate(p)) {
        Ok(v) => v,
        Err(e) => return e,
    };
    match crate::start_providers(&v, p) {
        Err(e) => e,
        Ok(_) => panic!("accepted: {yaml}"),
    }
}

#[test]
fn token_grant_errors_name_their_field() {
    let sock = "spiffe: { endpoint_socket: unix:///tmp/none.sock }\n";
    let cases = [
        (
            "grant: token_exchange",
            "",
            sock,
            "providers.g.token_grant.token_endpoint",
            "required",
        ),
        (
            "grant: token_exchange, token_endpoint: http://issuer.example/t",
            "",
            sock,
            "providers.g.token_grant.token_endpoint",
            "non-loopback",
        ),
        (
            "grant: client_credentials, token_endpoint: https://i/t, client_assertion_type: nope",
            "",
            sock,
            "providers.g.token_grant.client_assertion_type",
            "must be",
        ),
        (
            "grant: jwt_bearer, token_endpoint: https://i/t, extra_params: { grant_type: x }",
            "",
            sock,
            "providers.g.token_grant.extra_params.grant_type",
            "cannot be overridden",
        ),
        (
            "grant: jwt_svid",
            "",
            sock,
            "endpoints[0].audience",
            "needs an audience",
        ),
        (
            "grant: jwt_svid, token_endpoint: https://i/t",
            ", audience: a",
            sock,
            "providers.g.token_grant.token_endpoint",
            "no exchange",
        ),
        (
            "grant: token_exchange, token_endpoint: https://i/t",
            ", scopes: [\"a b\"]",
            sock,
            "endpoints[0].scopes",
            "space",
        ),
        (
            "grant: token_exchange, token_endpoint: https://i/t",
            "",
            "spiffe: { endpoint_socket: /tmp/x.sock }\n",
            "spiffe.endpoint_socket",
            "unix://",
        ),
        (
            "grant: token_exchange, token_endpoint: https://i/t, timeout: 0s",
            "",
            sock,
            "providers.g.token_grant.timeout",
            "greater than zero",
        ),
        (
            "grant: token_exchange, token_endpoint: https://i/t, max_response_bytes: 0",
            "",
            sock,
            "providers.g.token_grant.max_response_bytes",
            "greater than zero",
        ),
        (
            "grant: token_exchange, token_endpoint: https://i/t",
            "",
            "token_cache: { refresh_ahead: 1.5 }\n",
            "token_cache.refresh_ahead",
            "between 0 and 1",
        ),
        (
            "grant: token_swap, token_endpoint: https://i/t",
            "",
            sock,
            "providers.g.token_grant.grant",
            "unknown variant",
        ),
    ];
    for (provider, ep, top, field, reason) in cases {
        let e = grant_err(provider, ep, top);
        assert_eq!(e.field, field, "{provider}: {e}");
        assert!(
            e.reason.contains(reason),
            "{provider}: wanted {reason:?} in {e}"
        );
    }
}

#[test]
fn static_providers_refuse_token_scoping() {
    let e = err(&GOOD.replace(
        "provider: demo-static }",
        "provider: demo-static, audience: alpha }",
    ));
    assert_eq!(e.field, "endpoints[0]");
    assert!(e.reason.contains("token_grant"), "{e}");
}

#[test]
fn extra_params_values_never_print_and_may_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("client_secret");
    std::fs::write(&secret_file, "from-a-file\n").unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\nca: {{ dir: /run/lanyard/ca }}\nproviders:\n  g: {{ token_grant: {{ grant: client_credentials, token_endpoint: \"https://i/t\", extra_params: {{ inline: inline-secret, filed: {{ file: {} }} }} }} }}\n",
        secret_file.display()
    );
    let p = Path::new(FILE);
    let v = Config::parse(&yaml, p).unwrap().validate(p).unwrap();
    let debug = format!("{v:?}");
    assert!(!debug.contains("inline-secret"), "{debug}");
    assert!(!debug.contains("from-a-file"), "{debug}");
    let g = v.providers["g"].token_grant.as_ref().unwrap();
    assert_eq!(g.extra_params["inline"].resolve().unwrap(), "inline-secret");
    assert_eq!(g.extra_params["filed"].resolve().unwrap(), "from-a-file");
    std::fs::remove_file(&secret_file).unwrap();
    let why = g.extra_params["filed"].resolve().unwrap_err();
    assert!(why.contains("client_secret"), "{why}");
    assert!(
        Config::parse(&yaml.replace("{ file:", "{ path:"), p).is_err(),
        "an unknown key in a file value is refused"
    );
}

#[test]
fn the_ca_key_dir_stays_apart_from_what_the_agent_reads() {
    for key_dir in ["/run/lanyard/ca", "/run/lanyard/ca/key", "/run/lanyard"] {
        let e = err(&GOOD.replace(
            "ca: { dir: /run/lanyard/ca }",
            &format!("ca: {{ dir: /run/lanyard/ca, key_dir: {key_dir} }}"),
        ));
        assert_eq!(e.field, "ca.key_dir", "{key_dir}: {e}");
        assert!(e.reason.contains("overlaps"), "{e}");
    }
    let e = err(&GOOD.replace(
        "ca: { dir: /run/lanyard/ca }",
        "ca: { dir: /run/lanyard/ca, key_dir: /k, cert_file: /c.pem, key_file: /k.pem }",
    ));
    assert_eq!(e.field, "ca.key_dir");
    // Apart from it, and hidden from a `lanyard run` agent like every key location.
    let p = Path::new(FILE);
    let v = Config::parse(
        &GOOD.replace(
            "ca: { dir: /run/lanyard/ca }",
            "ca: { dir: /run/lanyard/ca, key_dir: /run/lanyard-state/ca }",
        ),
        p,
    )
    .unwrap()
    .validate(p)
    .unwrap();
    let plan = crate::run::plan::plan(&v, p).unwrap();
    assert!(
        plan.hide_dirs
            .iter()
            .any(|d| d == Path::new("/run/lanyard-state/ca")),
        "{:?}",
        plan.hide_dirs
    );
}

#[test]
fn the_admin_token_and_the_audit_trail_are_hidden_from_the_agent() {
    let p = Path::new(FILE);
    let v = Config::parse(
        &format!(
            "{GOOD}admin: {{ listen: 127.0.0.1:0, token_file: /run/lanyard-admin/token }}\naudit: {{ file: /var/log/lanyard/audit.jsonl }}\n"
        ),
        p,
    )
    .unwrap()
    .validate(p)
    .unwrap();
    let plan = crate::run::plan::plan(&v, p).unwrap();
    for dir in ["/run/lanyard-admin", "/var/log/lanyard"] {
        assert!(
            plan.hide_dirs.iter().any(|d| d == Path::new(dir)),
            "{dir} not hidden: {:?}",
            plan.hide_dirs
        );
    }
}
