use http::StatusCode;

use super::issuer::{is_token68, parse, sanitize};
use super::*;

fn err(status: u16, body: &str) -> String {
    match parse(
        StatusCode::from_u16(status).unwrap(),
        body.as_bytes(),
        &["the-svid-assertion"],
    ) {
        Ok(_) => panic!("accepted {status} {body:?}"),
        Err(e) => e,
    }
}

#[test]
fn token_responses_are_checked() {
    let ok = parse(
        StatusCode::OK,
        br#"{"access_token":"abc.def-ghi_~+/==","token_type":"Bearer","expires_in":300}"#,
        &[],
    )
    .unwrap();
    assert_eq!(ok.access_token.expose(), "abc.def-ghi_~+/==");
    assert_eq!(ok.expires_in, Some(Duration::from_secs(300)));
    let s = parse(StatusCode::OK, br#"{"access_token":"t","token_type":"N_A","expires_in":"60","issued_token_type":"urn:ietf:params:oauth:token-type:jwt"}"#, &[]).unwrap();
    assert_eq!(s.expires_in, Some(Duration::from_secs(60)));
    assert_eq!(
        parse(StatusCode::OK, br#"{"access_token":"t"}"#, &[])
            .unwrap()
            .expires_in,
        None
    );

    assert!(err(200, "").contains("empty body"));
    assert!(err(200, "  \n").contains("empty body"));
    assert!(err(200, "{not json").contains("not a token response"));
    assert!(err(200, r#"{"token_type":"Bearer"}"#).contains("no access_token"));
    assert!(err(200, r#"{"access_token":""}"#).contains("no access_token"));
    let e = err(200, r#"{"access_token":"has space\r\nX-Evil: 1"}"#);
    assert!(e.contains("token68"), "{e}");
    assert!(!e.contains("X-Evil"), "{e}");
    assert!(err(200, r#"{"access_token":"t","token_type":"DPoP"}"#).contains("not Bearer"));
    assert!(err(200, r#"{"access_token":"t","expires_in":0}"#).contains("already expired"));
    assert!(err(200, r#"{"access_token":"t","expires_in":-5}"#).contains("positive"));
    assert!(err(302, "").contains("redirects are not followed"));
    assert!(err(503, "<html>busy</html>").contains("without an OAuth error body"));
}

#[test]
fn oauth_errors_are_sanitised_capped_and_scrubbed() {
    let long = "x".repeat(5000);
    let e = err(
        400,
        &format!(
            r#"{{"error":"invalid_grant","error_description":"bad assertion the-svid-assertion\u0000\n{long}"}}"#
        ),
    );
    // The agent gets the OAuth code only; the description goes to the log.
    assert_eq!(e, "answered 400 Bad Request: invalid_grant");
    let d = sanitize(
        &format!("bad assertion the-svid-assertion\u{0}\n{long}"),
        200,
        &["the-svid-assertion"],
    );
    assert!(d.starts_with("bad assertion [redacted]??"), "{d}");
    assert!(d.len() < 210, "not capped: {} chars", d.len());
    assert_eq!(sanitize("é\u{7f}ok", 10, &[]), "??ok");
}

#[test]
fn issuer_bodies_never_reach_the_agent_through_parser_messages() {
    // A bare JSON string where an object belongs: serde's message would quote it.
    for body in [
        r#""at_live_0123456789abcdef""#,
        r#"["at_live_0123456789abcdef"]"#,
        r#"{"access_token": 12, "at_live_0123456789abcdef": 1}"#,
        r#"{"access_token": ["at_live_0123456789abcdef"]}"#,
        r#"{"access_token": "at_live_0123456789abcdef", "token_type": 5}"#,
        "at_live_0123456789abcdef",
    ] {
        let e = err(200, body);
        assert!(!e.contains("at_live"), "{body}: {e}");
        assert!(e.contains("not a token response"), "{body}: {e}");
    }
    // An error body that is not an OAuth error says nothing of its content.
    let e = err(400, r#"{"message":"at_live_0123456789abcdef"}"#);
    assert!(!e.contains("at_live"), "{e}");
}

#[test]
fn echoed_secrets_are_redacted_in_every_encoding() {
    let secret = "s3cr3t/with+plus and=eq";
    for echoed in [
        "s3cr3t/with+plus and=eq",
        "s3cr3t%2Fwith%2Bplus+and%3Deq",
        "s3cr3t%2fwith%2bplus+and%3deq",
        "s3cr3t%2Fwith%2Bplus%20and%3Deq",
        "%73%33%63%72%33%74%2F%77%69%74%68%2B%70%6C%75%73%20%61%6E%64%3D%65%71",
    ] {
        let out = sanitize(&format!("client_secret={echoed}&x=1"), 500, &[secret]);
        assert_eq!(out, "client_secret=[redacted]&x=1", "{echoed}");
    }
}

#[test]
fn token68_alphabet() {
    for ok in [
        "a",
        "A-._~+/9",
        "abc==",
        "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.sig",
    ] {
        assert!(is_token68(ok), "{ok}");
    }
    for bad in ["", "=", "a b", "a\"b", "a,b", "a=b", "tok\n", "ü"] {
        assert!(!is_token68(bad), "{bad:?}");
    }
}

#[test]
fn token_endpoints_need_tls_off_loopback() {
    assert!(TokenEndpoint::parse("https://issuer.example/token").is_ok());
    assert!(TokenEndpoint::parse("http://127.0.0.1:8080/token").is_ok());
    assert!(TokenEndpoint::parse("http://localhost/token").is_ok());
    assert!(TokenEndpoint::parse("http://[::1]:9/t").is_ok());
    assert!(
        TokenEndpoint::parse("http://issuer.example/token")
            .unwrap_err()
            .contains("non-loopback")
    );
    assert!(TokenEndpoint::parse("ftp://x/").is_err());
    assert!(
        TokenEndpoint::parse("https://user:pw@x/")
            .unwrap_err()
            .contains("credentials")
    );
}

fn params() -> Params {
    Params {
        svid_audience: "https://issuer/token".into(),
        client_assertion_type: form::ASSERTION_JWT_BEARER.into(),
        client_id: None,
        audience: Some("alpha".into()),
        scopes: vec!["read".into(), "write".into()],
        resource: None,
        requested_token_type: None,
        extra_params: BTreeMap::new(),
        on_behalf_of: None,
    }
}

fn fields(body: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

#[test]
fn forms_carry_exactly_their_fields() {
    let f = fields(&form::build(
        Grant::ClientCredentials,
        &params(),
        "SVID",
        None,
    ));
    assert_eq!(
        f,
        vec![
            ("grant_type".into(), "client_credentials".into()),
            (
                "client_assertion_type".into(),
                form::ASSERTION_JWT_BEARER.into()
            ),
            ("client_assertion".into(), "SVID".into()),
            ("scope".into(), "read write".into()),
            ("audience".into(), "alpha".into()),
        ]
    );
    let mut p = params();
    p.requested_token_type = Some("urn:ietf:params:oauth:token-type:access_token".into());
    p.resource = Some("https://alpha.test/".into());
    p.client_id = Some("lanyard".into());
    p.extra_params.insert("x-extra".into(), "1 2".into());
    let f = fields(&form::build(Grant::TokenExchange, &p, "SVID", None));
    assert_eq!(
        f,
        vec![
            ("grant_type".into(), form::GRANT_TOKEN_EXCHANGE.into()),
            ("subject_token".into(), "SVID".into()),
            ("subject_token_type".into(), form::TOKEN_TYPE_JWT.into()),
            (
                "requested_token_type".into(),
                "urn:ietf:params:oauth:token-type:access_token".into()
            ),
            ("client_id".into(), "lanyard".into()),
            ("scope".into(), "read write".into()),
            ("audience".into(), "alpha".into()),
            ("resource".into(), "https://alpha.test/".into()),
            ("x-extra".into(), "1 2".into()),
        ]
    );
    let mut p = params();
    p.audience = None;
    let f = fields(&form::build(Grant::JwtBearer, &p, "SVID", None));
    assert_eq!(
        f,
        vec![
            ("grant_type".into(), form::GRANT_JWT_BEARER.into()),
            ("assertion".into(), "SVID".into()),
            ("scope".into(), "read write".into()),
        ]
    );
}

/// On-behalf-of: the owner's token is the subject; the SVID is the actor
/// (RFC 8693 §2.1) or authenticates the client (Keycloak), never the subject.
#[test]
fn on_behalf_of_forms_put_the_owner_first_and_the_svid_beside_it() {
    let mut p = params();
    p.on_behalf_of = Some(super::OnBehalf {
        subject_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
        actor: crate::config::ActorMode::ActorToken,
    });
    let f = fields(&form::build(
        Grant::TokenExchange,
        &p,
        "SVID",
        Some("OWNER"),
    ));
    assert_eq!(
        f,
        vec![
            ("grant_type".into(), form::GRANT_TOKEN_EXCHANGE.into()),
            ("subject_token".into(), "OWNER".into()),
            (
                "subject_token_type".into(),
                "urn:ietf:params:oauth:token-type:access_token".into()
            ),
            ("actor_token".into(), "SVID".into()),
            ("actor_token_type".into(), form::TOKEN_TYPE_JWT.into()),
            ("scope".into(), "read write".into()),
            ("audience".into(), "alpha".into()),
        ]
    );
    p.on_behalf_of = Some(super::OnBehalf {
        subject_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
        actor: crate::config::ActorMode::ClientAssertion,
    });
    p.client_assertion_type = form::ASSERTION_JWT_SPIFFE.into();
    let f = fields(&form::build(
        Grant::TokenExchange,
        &p,
        "SVID",
        Some("OWNER"),
    ));
    assert_eq!(
        f,
        vec![
            ("grant_type".into(), form::GRANT_TOKEN_EXCHANGE.into()),
            ("subject_token".into(), "OWNER".into()),
            (
                "subject_token_type".into(),
                "urn:ietf:params:oauth:token-type:access_token".into()
            ),
            (
                "client_assertion_type".into(),
                form::ASSERTION_JWT_SPIFFE.into()
            ),
            ("client_assertion".into(), "SVID".into()),
            ("scope".into(), "read write".into()),
            ("audience".into(), "alpha".into()),
        ]
    );
}

#[test]
fn params_debug_hides_extra_param_values() {
    let mut p = params();
    p.extra_params
        .insert("client_secret".into(), "s3cr3t-value-42".into());
    let shown = format!("{p:?}");
    assert!(shown.contains("client_secret"), "{shown}");
    assert!(!shown.contains("s3cr3t-value-42"), "{shown}");
}

#[test]
fn expiry_is_the_earlier_of_expires_in_and_exp() {
    use super::issuer::lifetime;
    let (m, h, d) = (
        Duration::from_secs(60),
        Duration::from_secs(3600),
        Duration::from_secs(300),
    );
    assert_eq!(lifetime(Some(h), Some(m), d), m);
    assert_eq!(lifetime(Some(m), Some(h), d), m);
    assert_eq!(lifetime(None, Some(m), d), m);
    assert_eq!(lifetime(Some(h), None, d), h);
    assert_eq!(lifetime(None, None, d), d);
    // A float expires_in is a number of seconds too.
    let ok = parse(
        StatusCode::OK,
        br#"{"access_token":"t","expires_in":3600.0}"#,
        &[],
    )
    .unwrap();
    assert_eq!(ok.expires_in, Some(h));
    let ok = parse(
        StatusCode::OK,
        br#"{"access_token":"t","expires_in":59.9}"#,
        &[],
    )
    .unwrap();
    assert_eq!(ok.expires_in, Some(Duration::from_secs(59)));
    assert!(
        parse(
            StatusCode::OK,
            br#"{"access_token":"t","expires_in":1e400}"#,
            &[]
        )
        .is_err()
    );
}
