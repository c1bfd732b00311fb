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

    let e = err("listen: [");
    assert!(e.reason.contains("line"), "{e}");
    assert_eq!(e.to_string(), format!("{FILE}: {}: {}", e.field, e.reason));
}
