#![allow(clippy::unwrap_used, reason = "tests")]

use proptest::prelude::*;

use super::*;

fn h(s: &str) -> Host {
    Host::parse(s).unwrap()
}

fn st(effect: Effect, actions: &[&str], resources: &[&str]) -> Statement {
    Statement {
        effect,
        actions: actions.iter().map(|s| (*s).to_owned()).collect(),
        resources: resources.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[test]
fn one_repository_read_issues_and_comment() {
    let p = Policy::compile(&[
        st(Effect::Allow, &["GET"], &["/repos/acme/widgets/issues/**"]),
        st(
            Effect::Allow,
            &["post"],
            &["/repos/acme/widgets/issues/*/comments"],
        ),
        st(
            Effect::Deny,
            &["*"],
            &["/repos/acme/widgets/issues/*/comments/secret*"],
        ),
    ])
    .unwrap();
    let d = |m: &str, path: &str| {
        p.decide(
            &Method::from_bytes(m.as_bytes()).unwrap(),
            &h("api.test"),
            path,
        )
    };
    assert_eq!(d("GET", "/repos/acme/widgets/issues"), Decision::Allow(0));
    assert_eq!(
        d("GET", "/repos/acme/widgets/issues/7/comments"),
        Decision::Allow(0)
    );
    assert_eq!(
        d("POST", "/repos/acme/widgets/issues/7/comments"),
        Decision::Allow(1)
    );
    assert_eq!(d("POST", "/repos/acme/widgets/issues/7"), Decision::NoMatch);
    assert_eq!(
        d("DELETE", "/repos/acme/widgets/issues/7"),
        Decision::NoMatch
    );
    assert_eq!(d("GET", "/repos/acme/gadgets/issues"), Decision::NoMatch);
    assert_eq!(
        d("GET", "/Repos/acme/widgets/issues"),
        Decision::NoMatch,
        "case-sensitive"
    );
    assert_eq!(
        d("GET", "/repos/acme/widgets/issues/7/comments/secret-1"),
        Decision::Deny(2)
    );
}

#[test]
fn hosts_globs_and_bad_statements() {
    let p = Policy::compile(&[st(Effect::Allow, &["*"], &["EU.api.test/v*/items"])]).unwrap();
    assert!(
        p.decide(&Method::GET, &h("eu.api.test"), "/v2/items")
            .allowed()
    );
    assert!(
        !p.decide(&Method::GET, &h("us.api.test"), "/v2/items")
            .allowed()
    );
    assert!(
        !p.decide(&Method::GET, &h("eu.api.test"), "/x2/items")
            .allowed()
    );
    let p = Policy::compile(&[st(Effect::Allow, &["*"], &["[2001:DB8::1]/x"])]).unwrap();
    assert!(p.decide(&Method::GET, &h("[2001:db8::1]"), "/x").allowed());
    assert!(!p.decide(&Method::GET, &h("[2001:db8::2]"), "/x").allowed());
    for (s, field) in [
        (st(Effect::Allow, &[], &["/"]), "[0].actions"),
        (st(Effect::Allow, &["GET"], &[]), "[0].resources"),
        (st(Effect::Allow, &["GE T"], &["/"]), "[0].actions[0]"),
        (st(Effect::Allow, &["GET"], &["api"]), "[0].resources[0]"),
        (st(Effect::Allow, &["GET"], &["/a?b=1"]), "[0].resources[0]"),
        (
            st(Effect::Allow, &["GET"], &["/a/../b"]),
            "[0].resources[0]",
        ),
        (st(Effect::Allow, &["GET"], &["/a**"]), "[0].resources[0]"),
    ] {
        assert_eq!(Policy::compile(&[s]).unwrap_err().0, field);
    }
    let mut deep = String::new();
    for _ in 0..=MAX_SEGMENTS {
        deep.push_str("/a");
    }
    let any = Policy::compile(&[st(Effect::Allow, &["*"], &["/**"])]).unwrap();
    assert!(
        !any.decide(&Method::GET, &h("h"), &deep).allowed(),
        "past the segment cap"
    );
}

// --- A straightforward reference: patterns as token strings matched
// character by character against the joined path, by naive recursion.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Lit(u8),
    /// `*`: any run of non-`/` bytes.
    Star,
    /// `/**`: any number of `/segment` units.
    Segs,
}

fn tokens(path_pattern: &str) -> Vec<Tok> {
    let mut t = Vec::new();
    for seg in path_pattern.split('/').filter(|s| !s.is_empty()) {
        if seg == "**" {
            t.push(Tok::Segs);
            continue;
        }
        t.push(Tok::Lit(b'/'));
        for b in seg.bytes() {
            t.push(if b == b'*' { Tok::Star } else { Tok::Lit(b) });
        }
    }
    t
}

fn naive(t: &[Tok], s: &[u8]) -> bool {
    match t.split_first() {
        None => s.is_empty(),
        Some((Tok::Lit(c), rest)) => s.first() == Some(c) && naive(rest, &s[1..]),
        Some((Tok::Star, rest)) => (0..=s.len())
            .take_while(|&k| !s[..k].contains(&b'/'))
            .any(|k| naive(rest, &s[k..])),
        // Zero units, or one `/segment` (non-empty) and more.
        Some((Tok::Segs, rest)) => {
            naive(rest, s)
                || (s.first() == Some(&b'/')
                    && (2..=s.len())
                        .take_while(|&k| !s[1..k].contains(&b'/'))
                        .any(|k| naive(t, &s[k..])))
        }
    }
}

fn reference(statements: &[Statement], method: &str, path: &str) -> Decision {
    let joined: String = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| format!("/{s}"))
        .collect();
    let hit = |s: &Statement| {
        (s.actions
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(method)))
            && s.resources
                .iter()
                .any(|r| naive(&tokens(r), joined.as_bytes()))
    };
    if let Some(i) = statements
        .iter()
        .position(|s| s.effect == Effect::Deny && hit(s))
    {
        return Decision::Deny(i);
    }
    statements
        .iter()
        .position(|s| s.effect == Effect::Allow && hit(s))
        .map_or(Decision::NoMatch, Decision::Allow)
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("ab".to_owned()),
        Just("v1".to_owned()),
        Just("*".to_owned()),
        Just("a*".to_owned()),
        Just("*b".to_owned()),
        Just("**".to_owned()),
    ]
}

fn resource() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 0..5).prop_map(|s| format!("/{}", s.join("/")))
}

fn statement() -> impl Strategy<Value = Statement> {
    (
        prop_oneof![Just(Effect::Allow), Just(Effect::Allow), Just(Effect::Deny)],
        prop::collection::vec(prop_oneof![Just("GET"), Just("post"), Just("*")], 1..3),
        prop::collection::vec(resource(), 1..3),
    )
        .prop_map(|(effect, actions, resources)| Statement {
            effect,
            actions: actions.into_iter().map(str::to_owned).collect(),
            resources,
        })
}

fn request_path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("a"),
            Just("b"),
            Just("ab"),
            Just("v1"),
            Just("abb"),
            Just("ba")
        ],
        0..7,
    )
    .prop_map(|s| format!("/{}", s.join("/")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// The compiled evaluator agrees with the reference, so deny beats
    /// allow and no statement means no: the reference checks denies first.
    #[test]
    fn compiled_agrees_with_the_reference(
        statements in prop::collection::vec(statement(), 1..5),
        method in prop_oneof![Just("GET"), Just("POST"), Just("DELETE")],
        path in request_path(),
    ) {
        let p = Policy::compile(&statements).unwrap();
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let got = p.decide(&m, &h("h.test"), &path);
        let want = reference(&statements, method, &path);
        // Same verdict; the deciding statement is the first of its kind.
        prop_assert_eq!(got.allowed(), want.allowed(), "{:?} {} {}", statements, method, path);
        prop_assert_eq!(matches!(got, Decision::Deny(_)), matches!(want, Decision::Deny(_)));
        if let (Decision::Deny(i), true) = (got, matches!(want, Decision::Deny(_))) {
            prop_assert_eq!(statements[i].effect, Effect::Deny);
        }
    }

    /// Whatever a raw request path hides (dot segments, encoded dots and
    /// slashes, case), once normalised as the matcher does it is allowed by
    /// `/api/**` only if it really lies under `/api`.
    #[test]
    fn nothing_outside_an_allowed_prefix_is_allowed(
        parts in prop::collection::vec(
            prop_oneof![
                Just("api"), Just("API"), Just(".."), Just("."), Just("%2e%2e"), Just("%2E"),
                Just("admin"), Just("a%2Fb"), Just("%61pi"), Just(""), Just("x"),
            ],
            0..7,
        ),
    ) {
        let raw = format!("/{}", parts.join("/"));
        let p = Policy::compile(&[st(Effect::Allow, &["*"], &["/api/**"])]).unwrap();
        if let Ok(norm) = crate::parse::normalize_path(&raw) {
            let allowed = p.decide(&Method::GET, &h("h.test"), &norm).allowed();
            let under = norm == "/api" || norm.starts_with("/api/");
            prop_assert_eq!(allowed, under, "{} -> {}", raw, norm);
        }
    }
}

#[test]
fn overlays_narrow_and_widening_is_named() {
    let base = Policy::compile(&[
        st(Effect::Allow, &["GET"], &["/repos/acme/**"]),
        st(
            Effect::Allow,
            &["POST"],
            &["/repos/acme/*/issues/*/comments"],
        ),
        st(Effect::Deny, &["*"], &["/repos/acme/secret/**"]),
    ])
    .unwrap();
    let mut e = Effective::new(base);
    // Within the base: one repository, reads only.
    e.narrow(
        "o.yaml",
        &[st(Effect::Allow, &["GET"], &["/repos/acme/widgets/**"])],
    )
    .unwrap();
    let d = |m: Method, path: &str| e.decide(&m, &h("api.test"), path);
    assert!(d(Method::GET, "/repos/acme/widgets/issues").allowed());
    // The base allows it; the overlay does not: the overlay decides, and says so.
    let v = d(Method::GET, "/repos/acme/gadgets");
    assert_eq!(v.decision, Decision::NoMatch);
    assert_eq!(v.overlay, Some("o.yaml"));
    assert_eq!(
        v.refusal(&Method::GET, "/repos/acme/gadgets").unwrap(),
        "no statement allows GET /repos/acme/gadgets (overlay o.yaml)"
    );
    // The base's own deny keeps holding under the overlay.
    let mut wide = Effective::new(
        Policy::compile(&[
            st(Effect::Allow, &["*"], &["/**"]),
            st(Effect::Deny, &["*"], &["/admin/**"]),
        ])
        .unwrap(),
    );
    wide.narrow("o.yaml", &[st(Effect::Allow, &["GET"], &["/**"])])
        .unwrap();
    let v = wide.decide(&Method::GET, &h("api.test"), "/admin/x");
    assert_eq!((v.decision, v.overlay), (Decision::Deny(1), None));
    assert_eq!(
        v.refusal(&Method::GET, "/admin/x").unwrap(),
        "statement 1 denies GET /admin/x"
    );

    // Widening, each way, names the overlay statement and what escapes.
    for (statements, at, what) in [
        (
            vec![st(Effect::Allow, &["DELETE"], &["/repos/acme/widgets"])],
            "[0]",
            "DELETE /repos/acme/widgets",
        ),
        (
            vec![
                st(Effect::Allow, &["GET"], &["/repos/acme/x"]),
                st(Effect::Allow, &["GET"], &["/repos/other/**"]),
            ],
            "[1]",
            "GET /repos/other/**",
        ),
        (
            vec![st(Effect::Allow, &["*"], &["/repos/acme/widgets"])],
            "[0]",
            "* /repos/acme/widgets",
        ),
        // `*` spans any one segment; the base's comment path needs `issues`.
        (
            vec![st(
                Effect::Allow,
                &["POST"],
                &["/repos/acme/*/*/1/comments"],
            )],
            "[0]",
            "POST /repos/acme/*/*/1/comments",
        ),
        // `**` in the overlay spans more than one segment can.
        (
            vec![st(Effect::Allow, &["POST"], &["/repos/acme/**/comments"])],
            "[0]",
            "POST /repos/acme/**/comments",
        ),
    ] {
        let mut e = Effective::new(
            Policy::compile(&[
                st(Effect::Allow, &["GET"], &["/repos/acme/**"]),
                st(
                    Effect::Allow,
                    &["POST"],
                    &["/repos/acme/*/issues/*/comments"],
                ),
            ])
            .unwrap(),
        );
        let (field, why) = e.narrow("o.yaml", &statements).unwrap_err();
        assert_eq!(field, at, "{statements:?}");
        assert!(why.contains(what), "{why}");
    }
    // Narrower globs and deny statements are fine.
    let mut e = Effective::new(
        Policy::compile(&[st(
            Effect::Allow,
            &["POST"],
            &["/repos/acme/*/issues/*/comments"],
        )])
        .unwrap(),
    );
    e.narrow(
        "o.yaml",
        &[
            st(
                Effect::Allow,
                &["post"],
                &["/repos/acme/w*/issues/1*/comments"],
            ),
            st(Effect::Deny, &["*"], &["/**"]),
        ],
    )
    .unwrap();
    // An overlay needs statements.
    assert!(e.narrow("o.yaml", &[]).is_err());
    // With no base statements everything is within the base.
    let mut e = Effective::new(Policy::default());
    e.narrow("o.yaml", &[st(Effect::Allow, &["*"], &["/**"])])
        .unwrap();
    assert!(!e.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Whatever an accepted overlay allows, the base allows: the subset
    /// check never lets an overlay widen (it may refuse a narrowing one).
    #[test]
    fn an_accepted_overlay_never_widens(
        base in prop::collection::vec(statement(), 1..4),
        overlay in prop::collection::vec(statement(), 1..3),
        method in prop_oneof![Just("GET"), Just("POST"), Just("DELETE")],
        path in request_path(),
    ) {
        let base_only: Vec<Statement> =
            base.iter().filter(|s| s.effect == Effect::Allow).cloned().collect();
        prop_assume!(!base_only.is_empty());
        let b = Policy::compile(&base_only).unwrap();
        let o = Policy::compile(&overlay).unwrap();
        if b.escapes(&o).is_none() {
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            let host = h("h.test");
            if o.decide(&m, &host, &path).allowed() {
                prop_assert!(
                    b.decide(&m, &host, &path).allowed(),
                    "{:?} accepted within {:?}, yet {} {} escapes", overlay, base_only, method, path
                );
            }
        }
    }

    /// A statement is always within itself (the check is not so
    /// conservative that an overlay repeating the base is refused).
    #[test]
    fn a_statement_contains_itself(s in statement()) {
        let s = Statement { effect: Effect::Allow, ..s };
        let p = Policy::compile(std::slice::from_ref(&s)).unwrap();
        prop_assert!(p.escapes(&p).is_none(), "{:?}", s);
    }
}

/// A resource full of `**` against a long path that almost matches:
/// refused without backtracking through every way of placing the pieces
/// (with recursive backtracking this is C(64, 9) ≈ 3·10^10 placements and
/// does not finish), and matched where the last piece is there. The subset
/// check on such patterns is as cheap.
#[test]
fn many_double_stars_stay_cheap_to_decide() {
    let pattern = "/**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/g";
    let p = Policy::compile(&[st(Effect::Allow, &["GET"], &[pattern])]).unwrap();
    let almost: String = (0..64).map(|_| "/a").collect();
    assert_eq!(
        p.decide(&Method::GET, &h("h.test"), &almost),
        Decision::NoMatch
    );
    let there = format!("{}/g", &almost[..almost.len() - 2]);
    assert_eq!(
        p.decide(&Method::GET, &h("h.test"), &there),
        Decision::Allow(0)
    );
    let base = Policy::compile(&[st(Effect::Allow, &["*"], &["/**/a/**/a/**/a/**"])]).unwrap();
    assert!(base.escapes(&p).is_none(), "{pattern} lies within the base");
    let wider = Policy::compile(&[st(Effect::Allow, &["GET"], &["/**/a/**/b/**"])]).unwrap();
    assert!(base.escapes(&wider).is_some());
    let q = Policy::compile(&[st(Effect::Allow, &["*"], &["/*a*a*a*a*a*a*a*a*a*a*c"])]).unwrap();
    let r = Policy::compile(&[st(Effect::Allow, &["GET"], &["/*a*a*a*a*a*a*a*a*a*b"])]).unwrap();
    assert!(q.escapes(&r).is_some());
}
