//! The per-request work Lanyard adds on top of TLS and HTTP: matching,
//! path normalisation, the inject decision, building and replacing the
//! credential header, and the credential sources' hit paths.
//!
//!   cd bench/micro && cargo bench

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use lanyard_proxy::TokenSource;
use lanyard_proxy::inject::{self, Scheme};
use lanyard_proxy::parse::{Target, normalize_path};

/// A config with 50 endpoints on 10 hosts, as a busy sandbox might have.
fn settings(dir: &Path) -> lanyard_proxy::Settings {
    let token = dir.join("token");
    std::fs::write(&token, "micro-bench-token-0123456789abcdef").unwrap();
    let mut y = format!(
        "listen: 127.0.0.1:0\nca: {{ dir: {} }}\nproviders: {{ s: {{ static: {{ token_file: {} }} }} }}\nendpoints:\n",
        dir.join("ca").display(),
        token.display()
    );
    for h in 0..10 {
        for p in 0..5 {
            y.push_str(&format!(
                "  - {{ name: e{h}-{p}, host: api{h}.example.com, path: /v{p}/items, methods: [GET, POST], provider: s }}\n"
            ));
        }
    }
    y.push_str("  - { name: wild, host: \"*.svc.test\", provider: s }\n");
    let file = dir.join("lanyard.yaml");
    lanyard_supervisor::config::Config::parse(&y, &file)
        .unwrap()
        .validate(&file)
        .unwrap()
        .settings
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("lanyard-micro-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let s = settings(&dir);
    let router = &s.router;
    let hit = Target::parse_authority("api7.example.com:443", None).unwrap();
    let miss = Target::parse_authority("elsewhere.example.org:443", None).unwrap();

    c.bench_function("match/hit (50 rules)", |b| {
        b.iter(|| router.find(black_box(&hit), black_box("/v3/items/42"), &Method::GET))
    });
    c.bench_function("match/miss (50 rules)", |b| {
        b.iter(|| router.find(black_box(&miss), black_box("/v3/items/42"), &Method::GET))
    });
    c.bench_function("normalise/plain path", |b| {
        b.iter(|| normalize_path(black_box("/v3/items/42/comments")))
    });
    c.bench_function("normalise/dot segments and escapes", |b| {
        b.iter(|| normalize_path(black_box("/v3/./items/%2e%2e/items//42/../42")))
    });
    let uri: Uri = "/v3/items/42?page=2".parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::HOST,
        HeaderValue::from_static("api7.example.com"),
    );
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer agent"),
    );
    c.bench_function("inject/decide (names, path, rule)", |b| {
        b.iter(|| {
            inject::decide(
                router,
                black_box(&hit),
                Scheme::Https,
                &Method::GET,
                black_box(&uri),
                black_box(&headers),
                Version::HTTP_11,
            )
            .map(|d| d.rule.is_some())
        })
    });
    let token = lanyard_proxy::Secret::new("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-token-body");
    c.bench_function("inject/credential header (build and replace)", |b| {
        b.iter(|| {
            let mut h = headers.clone();
            let v = inject::credential_value("Bearer ", black_box(&token)).unwrap();
            inject::replace_header(&mut h, &http::header::AUTHORIZATION, v);
            h
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let stat = lanyard_proxy::StaticSource::new(dir.join("token")).unwrap();
    c.bench_function("source/static hit", |b| {
        b.iter(|| rt.block_on(stat.token(black_box("e7-3"))).is_ok())
    });
    let cache = lanyard_supervisor::cache::Refreshing::<String, u64>::new(
        "token",
        lanyard_supervisor::cache::Policy::default(),
    );
    let key = "provider|audience|scopes".to_owned();
    let fetch = || async { Ok((42u64, Duration::from_secs(3600))) };
    rt.block_on(cache.get(&key, fetch)).unwrap();
    c.bench_function("cache/token hit", |b| {
        b.iter(|| {
            rt.block_on(cache.get(black_box(&key), fetch))
                .map(|f| f.value)
        })
    });
    let telemetry = Arc::new(lanyard_proxy::Telemetry::default());
    c.bench_function("audit/token id (JWT jti)", |b| {
        b.iter(|| telemetry.token_id(black_box(&token)))
    });
    // Statement policy (issue 15): 100 statements, the deciding one last, so
    // every statement is tried; one deny among them.
    let mut statements: Vec<lanyard_proxy::policy::Statement> = (0..99)
        .map(|i| lanyard_proxy::policy::Statement {
            effect: lanyard_proxy::policy::Effect::Allow,
            actions: vec!["GET".into(), "POST".into()],
            resources: vec![format!("/repos/org{i}/*/issues/**")],
        })
        .collect();
    statements[50].effect = lanyard_proxy::policy::Effect::Deny;
    statements.push(lanyard_proxy::policy::Statement {
        effect: lanyard_proxy::policy::Effect::Allow,
        actions: vec!["GET".into()],
        resources: vec!["/repos/acme/widgets/issues/**".into()],
    });
    let policy = lanyard_proxy::policy::Policy::compile(&statements).unwrap();
    let api = lanyard_proxy::parse::Host::parse("api.example.com").unwrap();
    c.bench_function("policy/decide (100 statements, last one allows)", |b| {
        b.iter(|| {
            policy.decide(
                black_box(&Method::GET),
                black_box(&api),
                black_box("/repos/acme/widgets/issues/42/comments"),
            )
        })
    });
    // As the request path calls it: the base's 100 statements plus one
    // per-sandbox overlay narrowing them to one repository.
    let mut layered = lanyard_proxy::policy::Effective::new(policy.clone());
    layered
        .narrow(
            "overlay.yaml",
            &[lanyard_proxy::policy::Statement {
                effect: lanyard_proxy::policy::Effect::Allow,
                actions: vec!["GET".into()],
                resources: vec!["/repos/acme/widgets/issues/*/comments".into()],
            }],
        )
        .unwrap();
    c.bench_function("policy/decide (100 statements + an overlay)", |b| {
        b.iter(|| {
            layered.decide(
                black_box(&Method::GET),
                black_box(&api),
                black_box("/repos/acme/widgets/issues/42/comments"),
            )
        })
    });
    // Adversarial: nine `**`-separated pieces against a 64-segment path that
    // has all but the last (recursive backtracking would try C(64, 9) splits).
    let adversarial = lanyard_proxy::policy::Policy::compile(&[lanyard_proxy::policy::Statement {
        effect: lanyard_proxy::policy::Effect::Allow,
        actions: vec!["*".into()],
        resources: vec!["/**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/g".into()],
    }])
    .unwrap();
    let almost: String = (0..64).map(|_| "/a").collect();
    c.bench_function("policy/decide (adversarial **, 64 segments)", |b| {
        b.iter(|| adversarial.decide(black_box(&Method::GET), black_box(&api), black_box(&almost)))
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
