//! The matcher and the inject decision on arbitrary names, paths and
//! methods: the input is split at NUL bytes into a CONNECT authority, a
//! Host header, a request target and a method. Nothing may panic; whenever
//! a credential would be injected, the rule's host and port are the
//! target's, the path sent upstream is a normal form under the rule's
//! prefix, and the method is one the rule lists.
#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use lanyard_proxy::inject::{Scheme, decide};
use lanyard_proxy::matcher::{ConnectPlan, Router};
use lanyard_proxy::parse::{Target, normalize_path, path_has_prefix};
use libfuzzer_sys::fuzz_target;

fn router() -> &'static Router {
    static R: OnceLock<Router> = OnceLock::new();
    R.get_or_init(|| {
        let json = serde_json::json!({
            "listen": "127.0.0.1:0",
            "ca": { "dir": "/nonexistent" },
            "endpoints": [
                { "name": "alpha", "host": "alpha.test", "port": 443, "path": "/api",
                  "methods": ["GET", "POST"], "provider": "p" },
                { "name": "wild", "host": "*.example.test", "port": 443, "path": "/v1/x",
                  "provider": "p" },
                { "name": "loop", "host": "127.0.0.1", "port": 8443, "provider": "p" },
            ],
        });
        let config = serde_json::from_value(json).expect("config");
        let providers: BTreeSet<String> = ["p".to_owned()].into();
        lanyard_proxy::settings::Settings::build(config, &providers)
            .expect("settings")
            .router
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let mut parts = s.split('\0');
    let (Some(authority), host, target, method) =
        (parts.next(), parts.next(), parts.next().unwrap_or("/"), parts.next().unwrap_or("GET"))
    else {
        return;
    };
    let Ok(t) = Target::parse_authority(authority, None) else { return };
    let router = router();
    if router.connect_plan(&t) != ConnectPlan::Intercept {
        return;
    }
    let Ok(uri) = target.parse::<Uri>() else { return };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return };
    let mut headers = HeaderMap::new();
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(http::header::HOST, h);
    }
    let Ok(d) = decide(router, &t, Scheme::Https, &method, &uri, &headers, Version::HTTP_11) else {
        return;
    };
    let Some(rule) = d.rule else { return };
    assert_eq!(rule.port, t.port);
    assert!(rule.host.matches(&t.host), "{rule:?} for {t}");
    assert!(path_has_prefix(&d.path, &rule.path), "{} not under {}", d.path, rule.path);
    assert_eq!(normalize_path(&d.path).as_deref(), Ok(d.path.as_str()));
    assert!(rule.methods.as_ref().is_none_or(|m| m.contains(&method)));
    assert!(method != Method::TRACE && method != Method::CONNECT);
});
