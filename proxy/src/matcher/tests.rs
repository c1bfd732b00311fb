use super::*;

fn ep(name: &str, host: &str, port: u16, path: &str, methods: &[&str]) -> EndpointConfig {
    EndpointConfig {
        name: name.into(),
        host: host.into(),
        port,
        path: path.into(),
        methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        provider: "p".into(),
        header: "Authorization".into(),
        prefix: None,
        tls: TlsMode::Intercept,
        allow_cleartext: false,
        audience: None,
        scopes: None,
        jwt_svid_audience: None,
        statements: Vec::new(),
    }
}

fn router(eps: &[EndpointConfig]) -> Result<Router, ConfigError> {
    let rules = eps
        .iter()
        .enumerate()
        .map(|(i, e)| Rule::from_config(e, &format!("endpoints[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Router::new(rules)
}

fn t(host: &str, port: u16) -> Target {
    Target {
        host: Host::parse(host).unwrap(),
        port,
    }
}

#[test]
fn wildcards_cover_one_or_more_labels() {
    let p = HostPattern::parse("*.Example.COM.", false).unwrap();
    assert!(p.matches(&Host::parse("a.example.com").unwrap()));
    assert!(p.matches(&Host::parse("a.b.example.com").unwrap()));
    assert!(!p.matches(&Host::parse("example.com").unwrap()));
    assert!(!p.matches(&Host::parse("badexample.com").unwrap()));
    assert!(HostPattern::parse("*.com", false).is_err());
    assert!(HostPattern::parse("a.*.com", false).is_err());
    assert!(HostPattern::parse("*", false).is_err());
}

#[test]
fn most_specific_wins() {
    let r = router(&[
        ep("wild", "*.example.com", 443, "/", &[]),
        ep("exact", "api.example.com", 443, "/", &[]),
        ep("deep", "api.example.com", 443, "/v1/admin", &[]),
        ep("posts", "api.example.com", 443, "/v1/admin", &["POST"]),
    ])
    .unwrap();
    let name =
        |h: &str, path: &str, m: Method| r.find(&t(h, 443), path, &m).map(|r| r.name.clone());
    assert_eq!(
        name("x.example.com", "/", Method::GET).as_deref(),
        Some("wild")
    );
    assert_eq!(
        name("api.example.com", "/v2", Method::GET).as_deref(),
        Some("exact")
    );
    assert_eq!(
        name("api.example.com", "/v1/admin/x", Method::GET).as_deref(),
        Some("deep")
    );
    assert_eq!(
        name("api.example.com", "/v1/admin", Method::POST).as_deref(),
        Some("posts")
    );
    assert_eq!(
        name("api.example.com", "/v1/administrator", Method::GET).as_deref(),
        Some("exact")
    );
    assert_eq!(
        r.find(&t("api.example.com", 8443), "/", &Method::GET)
            .map(|r| &r.name),
        None
    );
}

#[test]
fn equal_specificity_overlap_is_refused() {
    let e = router(&[
        ep("a", "api.test", 443, "/v1", &["GET", "POST"]),
        ep("b", "API.test.", 443, "/v1/", &["post"]),
    ])
    .unwrap_err();
    assert_eq!(e.field, "endpoints[1]");
    assert!(e.reason.contains("overlaps 'a'"), "{}", e.reason);
    // Same shape but disjoint methods, ports or paths is fine.
    router(&[
        ep("a", "api.test", 443, "/v1", &["GET"]),
        ep("b", "api.test", 443, "/v1", &["POST"]),
    ])
    .unwrap();
    router(&[
        ep("a", "api.test", 443, "/v1", &[]),
        ep("b", "api.test", 8443, "/v1", &[]),
    ])
    .unwrap();
    router(&[
        ep("a", "api.test", 443, "/v1", &[]),
        ep("b", "api.test", 443, "/v2", &[]),
    ])
    .unwrap();
}

#[test]
fn bad_rules_name_their_field() {
    let e = router(&[ep("a", "a.test", 443, "/", &["GE T"])]).unwrap_err();
    assert_eq!(e.field, "endpoints[0].methods[0]");
    let e = router(&[ep("a", "*", 443, "/", &[])]).unwrap_err();
    assert_eq!(e.field, "endpoints[0].host");
    let mut bad = ep("a", "a.test", 443, "/", &[]);
    bad.header = "Connection".into();
    assert_eq!(router(&[bad]).unwrap_err().field, "endpoints[0].header");
    let e = router(&[
        ep("a", "a.test", 443, "/", &[]),
        ep("a", "b.test", 443, "/", &[]),
    ])
    .unwrap_err();
    assert_eq!(e.field, "endpoints[1].name");
}

#[test]
fn connect_plan_follows_most_specific_host() {
    let mut pass = ep("pass", "cdn.example.com", 443, "/", &[]);
    pass.tls = TlsMode::Passthrough;
    let r = router(&[ep("wild", "*.example.com", 443, "/", &[]), pass]).unwrap();
    assert_eq!(
        r.connect_plan(&t("api.example.com", 443)),
        ConnectPlan::Intercept
    );
    assert_eq!(
        r.connect_plan(&t("cdn.example.com", 443)),
        ConnectPlan::Passthrough
    );
    assert_eq!(
        r.connect_plan(&t("example.com", 443)),
        ConnectPlan::Unmatched
    );
}

#[test]
fn egress_lists_and_default() {
    let p = EgressPolicy::new(&EgressConfig {
        default: EgressDefault::Deny,
        allow: vec!["*.pypi.org:443".into(), "files.test:*".into()],
        deny: vec!["evil.pypi.org:*".into()],
        allow_private_addresses: false,
    })
    .unwrap();
    assert!(
        matches!(p.decide(&t("x.pypi.org", 443)), EgressDecision::Allow(r) if r.contains("allow[0]"))
    );
    assert!(
        matches!(p.decide(&t("x.pypi.org", 80)), EgressDecision::Deny(r) if r.contains("default"))
    );
    assert!(matches!(
        p.decide(&t("files.test", 9)),
        EgressDecision::Allow(_)
    ));
    assert!(
        matches!(p.decide(&t("evil.pypi.org", 443)), EgressDecision::Deny(r) if r.contains("deny[0]"))
    );
    let e = EgressPolicy::new(&EgressConfig {
        allow: vec!["nope".into()],
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.field, "egress.allow[0]");
}

#[test]
fn non_public_ranges() {
    for ip in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "::1",
        "fd00::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
    ] {
        assert!(is_non_public(ip.parse().unwrap()), "{ip}");
    }
    for ip in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
        assert!(!is_non_public(ip.parse().unwrap()), "{ip}");
    }
}
