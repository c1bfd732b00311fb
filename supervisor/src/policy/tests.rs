#![allow(clippy::unwrap_used, reason = "tests")]

use std::path::{Path, PathBuf};

use super::*;

const BASE: &str = r#"
listen: 127.0.0.1:0
ca: { dir: CA }
resolve: { api.test: 127.0.0.1 }
providers:
  s: { static: { token_file: TOKEN } }
endpoints:
  - { name: other, host: other.test, provider: s }
  - name: api
    host: api.test
    provider: s
    statements:
      - { actions: [GET], resources: ["/repos/acme/**"] }
      - { actions: [POST], resources: ["/repos/acme/*/issues/*/comments"] }
      - { effect: deny, actions: ["*"], resources: ["/repos/acme/secret/**"] }
egress:
  default: deny
  allow:
    - "blind.test:443"
    - to: "registry.test:443"
      statements: [ { actions: [GET, HEAD], resources: ["/packages/**"] } ]
    - "plain.test:80"
OVERLAYS"#;

/// Writes the base config (naming `overlays`, each written beside it) into a
/// fresh directory.
fn setup(overlays: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken-for-policy-tests").unwrap();
    let mut names = Vec::new();
    for (i, o) in overlays.iter().enumerate() {
        let name = format!("overlay-{i}.yaml");
        std::fs::write(dir.path().join(&name), o).unwrap();
        names.push(name);
    }
    let yaml = BASE
        .replace("CA", &dir.path().join("ca").display().to_string())
        .replace("TOKEN", &token.display().to_string())
        .replace(
            "OVERLAYS",
            &if names.is_empty() {
                String::new()
            } else {
                format!("overlays: [{}]\n", names.join(", "))
            },
        );
    let file = dir.path().join("lanyard.yaml");
    std::fs::write(&file, yaml).unwrap();
    (dir, file)
}

fn answer(file: &Path, method: &str, url: &str) -> Answer {
    test(file, method, url).unwrap()
}

#[test]
fn policy_test_answers_as_the_proxy_would() {
    let (_d, file) = setup(&[]);
    for (m, url, allowed, says) in [
        (
            "GET",
            "https://api.test/repos/acme/widgets/issues",
            true,
            "allow: endpoint 'api': GET /repos/acme/widgets/issues\n  endpoints[1].statements[0] allows: allow GET /repos/acme/**\n",
        ),
        (
            "delete",
            "https://api.test/repos/acme/widgets",
            false,
            "deny: endpoint 'api': no statement allows DELETE /repos/acme/widgets\n",
        ),
        (
            "GET",
            "https://api.test/repos/acme/secret/x",
            false,
            "deny: endpoint 'api': statement 2 denies GET /repos/acme/secret/x\n  endpoints[1].statements[2] denies: deny * /repos/acme/secret/**\n",
        ),
        // Normalised as the proxy does it.
        (
            "GET",
            "https://api.test/repos/acme/x/%2e%2e/../gadgets",
            false,
            "no statement allows GET /repos/gadgets",
        ),
        (
            "GET",
            "https://registry.test/packages/left-pad",
            true,
            "allow: egress.allow[1] 'registry.test:443': GET /packages/left-pad",
        ),
        (
            "PUT",
            "https://registry.test/packages/left-pad",
            false,
            "deny: egress.allow[1] 'registry.test:443': no statement allows PUT /packages/left-pad",
        ),
        (
            "GET",
            "https://other.test/anything",
            true,
            "allow: endpoint 'other' has no statements",
        ),
        ("GET", "https://blind.test/x", true, "tunnelled blind"),
        ("GET", "http://plain.test/x", true, "forwarded"),
        (
            "GET",
            "https://elsewhere.test/",
            false,
            "deny: CONNECT to elsewhere.test:443 is refused by egress.default: deny",
        ),
        (
            "GET",
            "http://elsewhere.test/",
            false,
            "deny: request to elsewhere.test:80 is refused by egress.default",
        ),
    ] {
        let a = answer(&file, m, url);
        assert_eq!(a.allowed, allowed, "{m} {url}: {}", a.text);
        assert!(a.text.contains(says), "{m} {url}: {}", a.text);
    }
    // Bad arguments are config-style errors (exit 64) naming the argument.
    let e = test(&file, "GE T", "https://api.test/").unwrap_err();
    assert!(e.to_string().contains("METHOD"), "{e}");
    let e = test(&file, "GET", "ftp://api.test/").unwrap_err();
    assert!(e.to_string().contains("URL"), "{e}");
    assert_eq!(e.exit_code(), crate::EXIT_CONFIG);
}

#[test]
fn overlays_narrow_the_effective_statements() {
    let (_d, file) = setup(&[
        "endpoints:\n  api:\n    - { actions: [GET], resources: [\"/repos/acme/widgets/**\"] }\negress:\n  \"blind.test:443\":\n    - { actions: [GET], resources: [\"/ok\"] }\n",
    ]);
    let a = answer(&file, "GET", "https://api.test/repos/acme/widgets/issues");
    assert!(a.allowed, "{}", a.text);
    assert!(a.text.contains("overlay-0.yaml [0] allows"), "{}", a.text);
    let a = answer(&file, "GET", "https://api.test/repos/acme/gadgets");
    assert!(!a.allowed, "{}", a.text);
    assert!(
        a.text
            .contains("no statement allows GET /repos/acme/gadgets (overlay ")
            && a.text.contains("endpoints[1].statements[0] allows"),
        "both layers are shown: {}",
        a.text
    );
    // The base allowed POST comments; the overlay did not.
    let a = answer(
        &file,
        "POST",
        "https://api.test/repos/acme/widgets/issues/1/comments",
    );
    assert!(!a.allowed, "{}", a.text);
    // An egress entry without statements of its own is now inspected.
    assert!(answer(&file, "GET", "https://blind.test/ok").allowed);
    let a = answer(&file, "GET", "https://blind.test/other");
    assert!(
        !a.allowed && a.text.contains("egress.allow[0] 'blind.test:443'"),
        "{}",
        a.text
    );

    let v = Config::load(&file).unwrap().validate(&file).unwrap();
    let table = statements_table(&v);
    assert!(table.starts_with("STATEMENTS"), "{table}");
    for line in [
        "endpoint 'api'\n  endpoints[1].statements[0]: allow GET /repos/acme/**\n",
        "  endpoints[1].statements[2]: deny * /repos/acme/secret/**\n",
        "overlay-0.yaml [0]: allow GET /repos/acme/widgets/**\n",
        "egress 'registry.test:443' (intercepted, nothing injected)\n  egress.allow[1].statements[0]: allow GET,HEAD /packages/**\n",
        "egress 'blind.test:443' (intercepted, nothing injected)\n",
    ] {
        assert!(table.contains(line), "missing {line:?} in\n{table}");
    }
    assert!(!table.contains("endpoint 'other'"), "{table}");
}

#[test]
fn an_overlay_cannot_widen_or_name_what_the_base_lacks() {
    for (overlay, field, reason) in [
        (
            "endpoints:\n  api:\n    - { actions: [GET], resources: [\"/repos/acme/x\"] }\n    - { actions: [DELETE], resources: [\"/repos/acme/x\"] }\n",
            "endpoints.api[1]",
            "allows DELETE /repos/acme/x and no statement of the base allows all of it",
        ),
        (
            "endpoints:\n  ghost:\n    - { actions: [GET], resources: [\"/\"] }\n",
            "endpoints.ghost",
            "no endpoint of the base config has this name",
        ),
        (
            "egress:\n  \"registry.test:443\":\n    - { actions: [POST], resources: [\"/packages/x\"] }\n",
            "egress.registry.test:443[0]",
            "allows POST /packages/x",
        ),
        (
            "egress:\n  \"evil.test:443\":\n    - { actions: [GET], resources: [\"/\"] }\n",
            "egress.evil.test:443",
            "no egress.allow entry",
        ),
        (
            "endpoints:\n  api:\n    - { actions: [GET], resources: [\"nope\"] }\n",
            "endpoints.api[0].resources[0]",
            "must be a path",
        ),
        (
            "endpoints:\n  api: []\n",
            "endpoints.api",
            "needs at least one statement",
        ),
        ("endpoint: {}\n", "endpoint", "unknown field `endpoint`"),
    ] {
        let (_d, file) = setup(&[overlay]);
        let e = match Config::load(&file).unwrap().validate(&file) {
            Err(e) => e,
            Ok(_) => panic!("{overlay} was accepted"),
        };
        assert!(e.file.ends_with("overlay-0.yaml"), "{overlay}: {e}");
        assert_eq!(e.field, field, "{overlay}: {e}");
        assert!(e.reason.contains(reason), "{overlay}: {e}");
    }
    // A missing overlay is an error of the base config: running without it
    // would give the sandbox the base's wider policy.
    let (d, file) = setup(&["endpoints: {}\n"]);
    std::fs::remove_file(d.path().join("overlay-0.yaml")).unwrap();
    let e = Config::load(&file).unwrap().validate(&file).unwrap_err();
    assert_eq!(e.field, "overlays[0]", "{e}");
    assert!(
        e.reason.contains("cannot read") && e.reason.contains("wider policy"),
        "{e}"
    );
}

#[test]
fn egress_entries_take_both_forms_with_clear_errors() {
    let (_d, file) = setup(&[]);
    let text = std::fs::read_to_string(&file).unwrap();
    for (from, to, field, reason) in [
        (
            "    - to: \"registry.test:443\"\n",
            "    - too: \"registry.test:443\"\n",
            "egress.allow[1].too",
            "unknown field `too`",
        ),
        (
            "resources: [\"/packages/**\"]",
            "resources: [\"packages\"]",
            "egress.allow[1].statements[0].resources[0]",
            "must be a path",
        ),
        (
            "    - to: \"registry.test:443\"\n",
            "    - to: \"registry.test\"\n",
            "egress.allow[1].to",
            "must be host:port",
        ),
        (
            "    - \"plain.test:80\"\n",
            "    - 80\n",
            "egress.allow[2]",
            "\"host:port\" or { to",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let p = Path::new("x.yaml");
        let e = match Config::parse(&text.replace(from, to), p) {
            Err(e) => e,
            Ok(c) => c.validate(p).unwrap_err(),
        };
        assert_eq!(e.field, field, "{to}: {e}");
        assert!(e.reason.contains(reason), "{to}: {e}");
        assert!(
            !e.reason.contains("egress.allow"),
            "the path is said once: {e}"
        );
    }
}
