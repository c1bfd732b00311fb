#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;

/// A profile in OpenShell's documented shape: every field it names.
const PROFILE: &str = r#"
id: issues-tracker
display_name: Issue tracker
category: source-control
endpoints:
  - { host: api.tracker.example, port: 443, protocol: rest, tls: terminate, access: read-write, enforcement: enforce }
  - { host: search.tracker.example, protocol: rest, access: read-only }
binaries: []
credentials:
  - name: tracker
    auth_style: bearer
    header_name: Authorization
    token_grant:
      token_endpoint: https://idp.example.com/realms/agents/protocol/openid-connect/token
      audience: tracker-api
      jwt_svid_audience: ""
      client_assertion_type: urn:ietf:params:oauth:client-assertion-type:jwt-spiffe
      scopes: [issues.read, comments.write]
      cache_ttl_seconds: 600
      audience_overrides:
        - { host: uploads.tracker.example, port: 443, path: /v1/attachments, audience: tracker-uploads, scopes: [attachments.write] }
"#;

fn import_text(yaml: &str) -> Result<String, ConfigFileError> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("profile.yaml");
    std::fs::write(&f, yaml).unwrap();
    import(&f)
}

#[test]
fn a_documented_profile_becomes_the_equivalent_config() {
    let out = import_text(PROFILE).unwrap();
    let expected = r#"# Imported from the OpenShell provider profile 'issues-tracker' (Issue tracker), category source-control.
providers:
  issues-tracker-tracker:
    token_grant:
      token_endpoint: "https://idp.example.com/realms/agents/protocol/openid-connect/token"
      grant: client_credentials
      client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
      issuer: "https://idp.example.com/realms/agents"
      audience: "tracker-api"
      scopes: ["issues.read", "comments.write"]
endpoints:
  - { name: issues-tracker-override-0, host: "uploads.tracker.example", port: 443, path: "/v1/attachments", provider: issues-tracker-tracker, audience: "tracker-uploads", scopes: ["attachments.write"] }
  - { name: issues-tracker-0, host: "api.tracker.example", port: 443, provider: issues-tracker-tracker }
  - { name: issues-tracker-1, host: "search.tracker.example", port: 443, provider: issues-tracker-tracker, methods: [GET, HEAD, OPTIONS] }
# cache_ttl_seconds 600: Lanyard's token cache bound is process-wide; keep the smallest across imports.
token_cache: { max_lifetime: 600s }
"#;
    assert_eq!(out, expected);
    // What it prints is a config Lanyard loads: with a listener and a CA it validates.
    let dir = tempfile::tempdir().unwrap();
    let full = format!(
        "listen: 127.0.0.1:0\nca: {{ dir: {} }}\nspiffe: {{ endpoint_socket: \"unix:///run/spire/agent.sock\" }}\n{out}",
        dir.path().join("ca").display()
    );
    let path = dir.path().join("lanyard.yaml");
    let cfg = crate::config::Config::parse(&full, &path).unwrap();
    cfg.validate(&path).unwrap();
}

#[test]
fn an_explicit_svid_audience_and_a_custom_header_carry_over() {
    let p = PROFILE
        .replace(
            "jwt_svid_audience: \"\"",
            "jwt_svid_audience: https://idp.example.com/x",
        )
        .replace("header_name: Authorization", "header_name: X-Api-Token");
    let out = import_text(&p).unwrap();
    assert!(
        out.contains("jwt_svid_audience: \"https://idp.example.com/x\"\n"),
        "{out}"
    );
    assert!(!out.contains("issuer:"), "{out}");
    assert!(out.contains(", header: \"X-Api-Token\" }"), "{out}");
}

/// What Lanyard cannot honour is refused with the field named, never dropped.
#[test]
fn what_cannot_be_honoured_is_refused_with_its_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("binaries: []", "binaries: [/usr/bin/curl]", "binaries"),
        (
            "auth_style: bearer",
            "auth_style: basic",
            "credentials[0].auth_style",
        ),
        (
            "cache_ttl_seconds: 600",
            "cache_ttl_seconds: 7200",
            "credentials[0].token_grant.cache_ttl_seconds",
        ),
        (
            "enforcement: enforce }",
            "enforcement: audit }",
            "endpoints[0].enforcement",
        ),
        (
            "access: read-only }",
            "access: read-only, allowed_ips: [192.0.2.1] }",
            "endpoints[1].allowed_ips",
        ),
        (
            "protocol: rest, tls",
            "protocol: ssh, tls",
            "endpoints[0].protocol",
        ),
        ("tls: terminate", "tls: mutual", "endpoints[0].tls"),
        (
            "access: read-only }",
            "access: admin }",
            "endpoints[1].access",
        ),
        (
            "scopes: [issues.read, comments.write]",
            "scopes: [a]\n      refresh: true",
            "credentials[0].token_grant.refresh",
        ),
        (
            "path: /v1/attachments",
            "path: v1",
            "credentials[0].token_grant.audience_overrides[0].path",
        ),
    ];
    for (from, to, field) in cases {
        assert!(PROFILE.contains(from), "{from}");
        let e = import_text(&PROFILE.replacen(from, to, 1)).unwrap_err();
        assert_eq!(&e.field, field, "{to}: {e}");
        assert!(e.file.ends_with("profile.yaml"), "{e}");
    }
    let two = PROFILE.replace(
        "credentials:\n",
        "credentials:\n  - { name: other, token_grant: { token_endpoint: \"https://idp.example.com/t\" } }\n",
    );
    assert_eq!(import_text(&two).unwrap_err().field, "credentials");
}
