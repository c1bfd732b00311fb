use super::*;

#[test]
fn hosts_are_canonical() {
    assert_eq!(
        Host::parse("Alpha.TEST.").unwrap(),
        Host::Name("alpha.test".into())
    );
    assert_eq!(
        Host::parse("bücher.example").unwrap(),
        Host::Name("xn--bcher-kva.example".into())
    );
    assert_eq!(
        Host::parse("[::1]").unwrap(),
        Host::Ip("::1".parse().unwrap())
    );
    assert_eq!(
        Host::parse("127.0.0.1").unwrap(),
        Host::Ip("127.0.0.1".parse().unwrap())
    );
    for bad in ["", "a..b", "a b", "-[x", "[::1", "exa mple.com"] {
        assert!(Host::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn authorities() {
    let t = Target::parse_authority("Alpha.test:8443", None).unwrap();
    assert_eq!(t.to_string(), "alpha.test:8443");
    let t = Target::parse_authority("[::1]:443", None).unwrap();
    assert_eq!(t.to_string(), "[::1]:443");
    assert_eq!(
        Target::parse_authority("a.test", Some(80)).unwrap().port,
        80
    );
    assert!(Target::parse_authority("a.test", None).is_err());
    assert!(Target::parse_authority("a.test:0", None).is_err());
    assert!(Target::parse_authority("a.test:99999", None).is_err());
    assert!(Target::parse_authority("user@a.test:443", None).is_err());
    for bad in [
        "a.test:+443",
        "a.test:-1",
        "a.test: 443",
        "a.test:",
        "a.test:0x1bb",
    ] {
        assert!(
            Target::parse_authority(bad, None).is_err(),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn paths_normalise() {
    let cases = [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a//b", "/a/b"),
        ("//a", "/a"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../../etc", "/etc"),
        ("/a/%2e%2e/b", "/b"),
        ("/a/%2E/b", "/a/b"),
        ("/a/b/", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/%7euser", "/~user"),
        ("/a%2fb", "/a%2Fb"),
        ("/group%2Fproject/issues", "/group%2Fproject/issues"),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw}");
    }
}

#[test]
fn paths_refused() {
    assert_eq!(normalize_path("a"), Err(PathError::NotAbsolute));
    assert_eq!(normalize_path("/a%zz"), Err(PathError::BadEscape));
    assert_eq!(normalize_path("/a%2"), Err(PathError::BadEscape));
    for raw in [
        "/api/..%2Fadmin",
        "/api/..%2fadmin",
        "/api/%2e%2e%5Cadmin",
        "/api/..\\admin",
    ] {
        assert_eq!(
            normalize_path(raw),
            Err(PathError::HiddenDotSegment),
            "{raw}"
        );
    }
}

#[test]
fn prefixes_are_segment_wise() {
    assert!(path_has_prefix("/api", "/api"));
    assert!(path_has_prefix("/api/x", "/api"));
    assert!(path_has_prefix("/api/x", "/api/"));
    assert!(!path_has_prefix("/apix", "/api"));
    assert!(path_has_prefix("/anything", "/"));
    let escaped = normalize_path("/api/%2e%2e/admin").unwrap();
    assert!(!path_has_prefix(&escaped, "/api"));
}

/// Randomised check of the normalisation invariants the matcher relies on
/// (the cargo-fuzz target in `proxy/fuzz` explores the same properties).
#[test]
fn normalisation_invariants_hold_for_random_paths() {
    const PIECES: &[&str] = &[
        "/", "a", "..", ".", "%2e", "%2E%2e", "%2f", "%5c", "\\", "//", "%41", "%zz", "~", "%",
        "?", "é", "api",
    ];
    let mut rng = fastrand::Rng::with_seed(0x1a2b_3c4d);
    for _ in 0..20_000 {
        let mut raw = String::from("/");
        for _ in 0..rng.usize(0..12) {
            raw.push_str(PIECES[rng.usize(0..PIECES.len())]);
        }
        let Ok(norm) = normalize_path(&raw) else {
            continue;
        };
        assert!(norm.starts_with('/'), "{raw:?} -> {norm:?}");
        assert!(!norm.contains("//"), "{raw:?} -> {norm:?}");
        assert!(
            norm.split('/').all(|s| s != "." && s != ".."),
            "{raw:?} -> {norm:?}"
        );
        assert_eq!(
            normalize_path(&norm).as_deref(),
            Ok(norm.as_str()),
            "not idempotent for {raw:?}"
        );
        // Whatever the spelling, a path is under /api exactly when its normal form is.
        let under = path_has_prefix(&norm, "/api");
        assert_eq!(
            under,
            norm == "/api" || norm.starts_with("/api/"),
            "{raw:?} -> {norm:?}"
        );
    }
}

#[test]
fn segments_a_lenient_server_reads_as_dots_are_refused() {
    for raw in [
        "/api/..;/admin",
        "/api/..;jsessionid=x/admin",
        "/api/%2e%2e;/admin",
        "/api/.%2e;x/admin",
        "/api/..%3B/admin",
        "/api/%252e%252e/admin",
        "/api/%25252e%25252e/admin",
        "/api/..%00/admin",
        "/api/.;/x",
        "/api/..%2Fadmin",
        "/api/..%5Cadmin",
        "/api/..\\admin",
        "/api/%252e%252e%252fadmin",
        // Overlong UTF-8 (found by tests/tests/generated.rs): '.' and '/' in
        // two-, three- and four-byte forms, also double-encoded.
        "/api/%c0%ae%c0%ae/admin",
        "/api/%C0%AE%C0%AE",
        "/api/..%c0%afadmin",
        "/api/%e0%80%ae%e0%80%ae/admin",
        "/api/%f0%80%80%ae%f0%80%80%ae/admin",
        "/api/..%c1%9cadmin",
        "/api/%25c0%25ae%25c0%25ae/admin",
    ] {
        assert_eq!(
            normalize_path(raw),
            Err(PathError::HiddenDotSegment),
            "{raw:?} was accepted"
        );
    }
    // Parameters and escapes that hide nothing stay allowed.
    for (raw, want) in [
        ("/api/a;b/c", "/api/a;b/c"),
        ("/api/x;v=1", "/api/x;v=1"),
        ("/api/...;/x", "/api/...;/x"),
        ("/api/%252Fx", "/api/%252Fx"),
        ("/api/./x/../y", "/api/y"),
        // Valid UTF-8 and lone high bytes are not dots.
        ("/api/caf%C3%A9", "/api/caf%C3%A9"),
        ("/api/%E9t%E9", "/api/%E9t%E9"),
    ] {
        assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw:?}");
    }
}

#[test]
fn numeric_hosts_are_the_addresses_a_resolver_would_make_of_them() {
    for (raw, want) in [
        ("16843009", "1.1.1.1"),
        ("0x01010101", "1.1.1.1"),
        ("0X1010101", "1.1.1.1"),
        ("1.1.257", "1.1.1.1"),
        ("1.65793", "1.1.1.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("2130706433.", "127.0.0.1"),
        ("0", "0.0.0.0"),
        // Names that IDNA maps to digits are addresses too (found by the
        // parse fuzz target: `㉙.` became the name "29", which the resolver
        // reads as 0.0.0.29).
        ("\u{3259}.", "0.0.0.29"),
        ("\u{ff11}\u{ff12}\u{ff17}\u{3002}\u{ff11}", "127.0.0.1"),
        ("\u{2460}\u{2461}\u{2462}", "0.0.0.123"),
    ] {
        assert_eq!(
            Host::parse(raw).unwrap(),
            Host::Ip(want.parse().unwrap()),
            "{raw}"
        );
    }
    for bad in [
        "4294967296",
        "1.1.1.256",
        "256.1.1.1",
        "1.2.3.4.5",
        "0x",
        "09",
        "1..1",
        "example.123",
    ] {
        assert!(Host::parse(bad).is_err(), "{bad:?} accepted");
    }
    // Names that merely contain digits stay names.
    assert_eq!(
        Host::parse("123.example").unwrap(),
        Host::Name("123.example".into())
    );
}

#[test]
fn cidr_blocks() {
    let b = Cidr::parse("192.0.2.0/24").unwrap();
    assert!(b.contains("192.0.2.77".parse().unwrap()));
    assert!(
        b.contains("::ffff:192.0.2.77".parse().unwrap()),
        "v4-mapped counts as v4"
    );
    assert!(!b.contains("192.0.3.1".parse().unwrap()));
    assert!(!b.contains("2001:db8::1".parse().unwrap()));
    let six = Cidr::parse("2001:db8::/32").unwrap();
    assert!(six.contains("2001:db8:ffff::1".parse().unwrap()));
    assert_eq!(Cidr::parse("192.0.2.7").unwrap().bits, 32);
    assert!(
        Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("198.51.100.1".parse().unwrap())
    );
    for bad in [
        "192.0.2.7/24",
        "192.0.2.0/33",
        "2001:db8::/129",
        "nope/8",
        "192.0.2.0/x",
    ] {
        assert!(Cidr::parse(bad).is_err(), "{bad:?} accepted");
    }
}
