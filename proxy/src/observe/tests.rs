use super::*;

fn jwt(claims: &str) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        b.encode(r#"{"alg":"ES256"}"#),
        b.encode(claims),
        b.encode("sig")
    )
}

#[test]
fn token_id_is_the_jti_or_a_keyed_hash_never_the_token() {
    let t = Telemetry::default();
    let with_jti = Secret::new(jwt(r#"{"sub":"x","jti":"abc-123"}"#));
    assert_eq!(&*t.token_id(&with_jti), "jti:abc-123");
    let opaque = Secret::new("opaque-token-value-0123456789");
    let id = t.token_id(&opaque);
    assert!(id.starts_with("hmac:") && id.len() == 5 + 16, "{id}");
    assert!(!id.contains("opaque"));
    assert_eq!(id, t.token_id(&opaque), "stable within a process");
    assert_ne!(
        id,
        Telemetry::default().token_id(&opaque),
        "keyed per process"
    );
    // A jti that is not a short printable string is not trusted as a name.
    let weird = Secret::new(jwt(r#"{"jti":"a b\n"}"#));
    assert!(t.token_id(&weird).starts_with("hmac:"));
    let no_jti = Secret::new(jwt(r#"{"sub":"x"}"#));
    assert!(t.token_id(&no_jti).starts_with("hmac:"));
}

#[test]
fn audit_lines_are_json_with_time_event_and_identity() {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let t = Telemetry::new(
        ProxyMetrics::default(),
        Some(Audit::new(Box::new(buf.clone())).unwrap()),
    );
    t.audit("revoke", &json!({"scope": "all"}));
    t.set_spiffe_id("spiffe://example.org/sandbox");
    t.audit("revoke", &json!({"scope": "all"}));
    t.flush_audit();
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["event"], "revoke");
    assert_eq!(lines[0]["spiffe_id"], Value::Null);
    assert_eq!(lines[1]["spiffe_id"], "spiffe://example.org/sandbox");
    let time = lines[1]["time"].as_str().unwrap();
    assert!(time.ends_with('Z') && time.len() >= 20, "{time}");
}
