//! The `lanyard` binary as a user runs it: `check` exit codes and messages,
//! and `proxy` serving a real curl over HTTP/1.1 and HTTP/2.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};

const LANYARD: &str = env!("CARGO_BIN_EXE_lanyard");
const TOKEN: &str = "cli-test-token-51c0ffee";

fn write(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

/// A scratch directory holding an upstream CA file (`up.pem`), for configs
/// that only need `upstream_tls` to load.
/// Runs the binary with `args` and then `file`.
fn lanyard(args: &[&str], file: &Path) -> std::process::Output {
    Command::new(LANYARD).args(args).arg(file).output().unwrap()
}

fn scratch() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ca = write(
        dir.path(),
        "up.pem",
        lanyard_examples::pki::Pki::new("x").unwrap().ca_pem(),
    );
    (dir, ca)
}

fn base(dir: &Path, upstream_ca: &Path, port: u16) -> String {
    let token = write(dir, "token", TOKEN);
    format!(
        "listen: 127.0.0.1:0\nca: {{ dir: {ca} }}\nupstream_tls: {{ extra_ca_files: [{up}] }}\nresolve: {{ alpha.test: 127.0.0.1 }}\nproviders:\n  demo: {{ static: {{ token_file: {tok} }} }}\nendpoints:\n  - {{ name: alpha, host: alpha.test, port: {port}, path: /api, provider: demo }}\negress: {{ default: deny }}\n",
        ca = dir.join("ca").display(),
        up = upstream_ca.display(),
        tok = token.display(),
    )
}

#[test]
fn check_exit_codes_and_messages() {
    let (dir, ca) = scratch();
    let good = write(dir.path(), "good.yaml", &base(dir.path(), &ca, 8443));
    let out = lanyard(&["check", "--config"], &good);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cases = [
        ("port: 8443", "port: 70000", "endpoints[0].port"),
        ("egress:", "egres:", "unknown field `egres`"),
        (
            "provider: demo }",
            "provider: ghost }",
            "endpoints[0].provider: unknown provider 'ghost'",
        ),
        (
            "path: /api,",
            "path: /api, methods: [FETCH CAT],",
            "endpoints[0].methods[0]",
        ),
        ("alpha.test: 127.0.0.1", "alpha.test: not-an-ip", "resolve"),
    ];
    for (from, to, want) in cases {
        let text = base(dir.path(), &ca, 8443).replace(from, to);
        let f = write(dir.path(), "bad.yaml", &text);
        let out = lanyard(&["check", "--config"], &f);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{to}: {err}");
        assert!(
            err.contains(&format!("{}: ", f.display())),
            "file not named: {err}"
        );
        assert!(err.contains(want), "{to}: wanted {want:?} in {err}");
    }
    // A missing token file and a missing trust file are config errors too.
    let text = base(dir.path(), &ca, 8443).replace(
        &dir.path().join("token").display().to_string(),
        "/nonexistent/token",
    );
    let f = write(dir.path(), "bad.yaml", &text);
    let out = lanyard(&["check", "--config"], &f);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("providers.demo.static.token_file"));
    let text =
        base(dir.path(), &ca, 8443).replace(&ca.display().to_string(), "/nonexistent/ca.pem");
    let f = write(dir.path(), "bad.yaml", &text);
    let out = lanyard(&["proxy", "--config"], &f);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream_tls.extra_ca_files[0]"));
    // Unreadable config file.
    let out = Command::new(LANYARD)
        .args(["check", "--config", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

struct Proxy {
    child: Child,
    addr: String,
}

impl Proxy {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(LANYARD)
            .args(["proxy", "--config"])
            .arg(config)
            .env("LANYARD_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let addr = common::listening_addr(&mut child);
        Proxy { child, addr }
    }

    /// SIGTERM, then the exit status and everything logged.
    fn stop(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = self.child.wait().unwrap();
        let mut logs = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut logs)
            .unwrap();
        (status.code(), logs)
    }
}

fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl must be installed (.ci/run installs it)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn curl_through_the_binary_gets_its_token_injected() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = lanyard_examples::pki::Pki::new("upstream CA").unwrap();
    let up_ca = write(dir.path(), "up.pem", pki.ca_pem());
    let cfg = pki
        .leaf(&["alpha.test"])
        .unwrap()
        .server_config(&[b"h2", b"http/1.1"])
        .unwrap();
    let up = rt
        .block_on(lanyard_examples::echo::start(
            "127.0.0.1:0".parse().unwrap(),
            "alpha",
            Some(cfg),
        ))
        .unwrap();
    let port = up.addr.port();
    let config = write(dir.path(), "lanyard.yaml", &base(dir.path(), &up_ca, port));
    let proxy = Proxy::start(&config);
    let ca_pem = dir.path().join("ca/ca.pem");
    let bundle = dir.path().join("ca/bundle.pem");
    assert!(
        std::fs::read_to_string(&bundle)
            .unwrap()
            .contains(&std::fs::read_to_string(&ca_pem).unwrap())
    );
    let proxy_url = format!("http://{}", proxy.addr);
    let url = format!("https://alpha.test:{port}/api/hello");

    for (version, want) in [
        ("--http1.1", "version: HTTP/1.1"),
        ("--http2", "version: HTTP/2.0"),
    ] {
        let (code, out, err) = curl(&[
            version,
            "--proxy",
            &proxy_url,
            "--cacert",
            ca_pem.to_str().unwrap(),
            "-H",
            "Authorization: Bearer agent-own",
            &url,
        ]);
        assert_eq!(code, 0, "curl {version}: {err}");
        assert!(
            out.contains(&format!("authorization: Bearer {TOKEN}\n")),
            "{out}"
        );
        assert!(!out.contains("agent-own"), "client header merged: {out}");
        assert!(out.contains(want), "{out}");
    }
    // The combined bundle works as the agent's only trust store too.
    let (code, out, err) = curl(&[
        "--proxy",
        &proxy_url,
        "--cacert",
        bundle.to_str().unwrap(),
        &url,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(TOKEN));
    // Python's standard library (OpenSSL, urllib's own CONNECT) through the same proxy,
    // trusting the combined bundle via SSL_CERT_FILE as `lanyard run` would set it.
    let py = Command::new("/usr/bin/python3")
        .args(["-c", "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode())", &url])
        .env("HTTPS_PROXY", &proxy_url)
        .env("SSL_CERT_FILE", &bundle)
        .output()
        .expect("python3 must be installed (.ci/run installs it)");
    let out = String::from_utf8_lossy(&py.stdout);
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    assert!(
        out.contains(&format!("authorization: Bearer {TOKEN}\n")),
        "{out}"
    );
    // A destination no rule allows: curl reports the proxy's 403.
    let (code, _, err) = curl(&[
        "--proxy",
        &proxy_url,
        "--cacert",
        ca_pem.to_str().unwrap(),
        "https://denied.test/",
    ]);
    assert_eq!(code, 56, "{err}");
    assert!(err.contains("403"), "{err}");

    let (status, logs) = proxy.stop();
    assert_eq!(status, Some(0), "{logs}");
    assert!(logs.contains("endpoint=\"alpha\""), "no access log: {logs}");
    assert!(logs.contains("denied by egress.default"), "{logs}");
    assert!(!logs.contains(TOKEN), "token in logs: {logs}");
}

#[test]
fn probe_says_ready_only_once_the_proxy_serves() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed port is needed here only because the probe reads the address
    // from the config: take a free one, then release it for the proxy.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = write(
        dir.path(),
        "lanyard.yaml",
        &format!(
            "listen: 127.0.0.1:{port}\nca: {{ dir: {} }}\negress: {{ default: deny }}\n",
            dir.path().join("ca").display()
        ),
    );
    let probe = || lanyard(&["probe", "--config"], &cfg);
    let out = probe();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not ready") && err.contains("ca.pem"), "{err}");
    let proxy = Proxy::start(&cfg);
    let out = probe();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = proxy.stop();
    // Trust files left behind by a stopped proxy do not make it ready.
    let out = probe();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not accept"));
}

#[test]
fn check_prints_the_resolved_endpoint_table() {
    let (dir, ca) = scratch();
    // A wildcard first in the file, matched after the exact rule: each row
    // must keep its own host.
    let text = base(dir.path(), &ca, 8443)
        .replace(
            "path: /api, provider: demo }",
            "path: /api/./v1/, methods: [get, POST], provider: demo }",
        )
        .replace(
            "endpoints:\n",
            "endpoints:\n  - { name: any, host: \"*.alpha.test\", port: 9443, provider: demo }\n",
        );
    let f = write(dir.path(), "lanyard.yaml", &text);
    let out = lanyard(&["check", "--config"], &f);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("note: "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "RULE",
            "HOST",
            "PORT",
            "PATH",
            "METHODS",
            "PROVIDER",
            "GRANT",
            "AUDIENCE",
            "SVID-AUDIENCE"
        ]
    );
    assert_eq!(
        lines[1],
        [
            "alpha",
            "alpha.test",
            "8443",
            "/api/v1",
            "GET,POST",
            "demo",
            "static",
            "-",
            "-"
        ]
    );
    assert_eq!(
        lines[2],
        [
            "any",
            "*.alpha.test",
            "9443",
            "/",
            "*",
            "demo",
            "static",
            "-",
            "-"
        ]
    );
    assert_eq!(lines.len(), 3, "{stdout}");
}

/// The JWT-SVID a grant presents is minted for the issuer identifier when
/// the issuer is known (RFC 7523bis; Keycloak accepts nothing else), for the
/// token endpoint URL when only that is configured (RFC 7523), and for
/// `jwt_svid_audience` whenever it is set. `lanyard check` shows which.
#[test]
fn check_shows_which_svid_audience_applies() {
    let (dir, ca) = scratch();
    let text = base(dir.path(), &ca, 8443)
        .replace(
            "providers:\n",
            "spiffe: { endpoint_socket: \"unix:///run/spire/agent.sock\" }\nproviders:\n  \
             bare: { token_grant: { grant: client_credentials, token_endpoint: \"https://idp.example.com/oauth/token\" } }\n  \
             known: { token_grant: { grant: client_credentials, issuer: \"https://idp.example.com/realms/sandbox\", token_endpoint: \"https://idp.example.com/oauth/token\" } }\n  \
             found: { token_grant: { grant: token_exchange, issuer: \"https://idp.example.com/realms/sandbox\" } }\n  \
             pinned: { token_grant: { grant: jwt_bearer, issuer: \"https://idp.example.com/realms/sandbox\", jwt_svid_audience: svid-aud } }\n",
        )
        .replace(
            "endpoints:\n",
            "endpoints:\n  - { name: b, host: b.test, provider: bare }\n  - { name: k, host: k.test, provider: known }\n  - { name: f, host: f.test, provider: found }\n  - { name: p, host: p.test, provider: pinned }\n",
        );
    let f = write(dir.path(), "lanyard.yaml", &text);
    let out = lanyard(&["check", "--config"], &f);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svid_aud = |rule: &str| {
        stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|l| l.first() == Some(&rule))
            .and_then(|l| l.last().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| panic!("no row {rule} in {stdout}"))
    };
    assert_eq!(svid_aud("b"), "https://idp.example.com/oauth/token");
    assert_eq!(svid_aud("k"), "https://idp.example.com/realms/sandbox");
    assert_eq!(svid_aud("f"), "https://idp.example.com/realms/sandbox");
    assert_eq!(svid_aud("p"), "svid-aud");
}

/// `lanyard import openshell`: the equivalent config on stdout (exit 0), or
/// the profile field it cannot honour on stderr (exit 64).
#[test]
fn import_openshell_prints_config_or_names_the_field() {
    let (dir, _) = scratch();
    let good = write(
        dir.path(),
        "profile.yaml",
        "id: t\nendpoints: [ { host: api.example.com } ]\ncredentials:\n  - { name: c, token_grant: { token_endpoint: \"https://idp.example.com/token\" } }\n",
    );
    let out = lanyard(&["import", "openshell"], &good);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("  - { name: t-0, host: \"api.example.com\", port: 443, provider: t-c }"),
        "{text}"
    );
    let bad = write(
        dir.path(),
        "bad.yaml",
        "id: t\nendpoints: [ { host: api.example.com, enforcement: audit } ]\ncredentials:\n  - { name: c, token_grant: { token_endpoint: \"https://idp.example.com/token\" } }\n",
    );
    let out = lanyard(&["import", "openshell"], &bad);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml: endpoints[0].enforcement: 'audit'"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn version_help_completions_and_ca_export() {
    let run = |args: &[&str]| {
        let out = Command::new(LANYARD).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, version, _) = run(&["--version"]);
    assert_eq!(code, Some(0));
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    assert!(!head.is_empty(), "tests run from a git checkout");
    assert_eq!(
        version.trim(),
        format!("lanyard {} ({head})", env!("CARGO_PKG_VERSION"))
    );
    let (_, help, _) = run(&["--help"]);
    assert!(
        help.contains("Examples:") && help.contains("example.com"),
        "{help}"
    );
    for sub in ["run", "proxy", "check", "init"] {
        let (code, help, _) = run(&[sub, "--help"]);
        assert_eq!(code, Some(0));
        assert!(help.contains("Example"), "{sub}: {help}");
    }
    let (code, script, _) = run(&["completions", "bash"]);
    assert_eq!(code, Some(0));
    assert!(
        script.contains("_lanyard()") && script.contains("completions"),
        "{script}"
    );

    // ca export: nothing before the CA exists, the agent's ca.pem after.
    let (dir, up) = scratch();
    let f = write(dir.path(), "lanyard.yaml", &base(dir.path(), &up, 8443));
    let (code, _, err) = run(&["ca", "export", "--config", f.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no sandbox CA yet"), "{err}");
    let proxy = Proxy::start(&f);
    let (code, pem, err) = run(&["ca", "export", "--config", f.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        pem,
        std::fs::read_to_string(dir.path().join("ca/ca.pem")).unwrap()
    );
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    proxy.stop();
}

/// One admin request over a fresh connection: (status, body).
fn admin_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head[9..12].parse().unwrap(), body.to_owned())
}

#[test]
fn sighup_reloads_with_json_logs_and_the_admin_listener_reports_it() {
    use std::io::BufRead;
    let (dir, up) = scratch();
    let text = base(dir.path(), &up, 8443) + "admin: { listen: 127.0.0.1:0 }\n";
    let f = write(dir.path(), "lanyard.yaml", &text);
    let mut child = Command::new(LANYARD)
        .args(["--log-format", "json", "proxy", "--config"])
        .arg(&f)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut admin = None;
    for _ in 0..3 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if let Some(a) = line.trim().strip_prefix("admin on ") {
            admin = Some(a.to_owned());
            break;
        }
    }
    let admin = admin.expect("an `admin on ADDR` line");
    assert_eq!(admin_get(&admin, "/healthz"), (200, "ok\n".into()));
    assert_eq!(
        admin_get(&admin, "/readyz").0,
        200,
        "static providers need no Workload API"
    );
    let reloads = |admin: &str| {
        let (_, m) = admin_get(admin, "/metrics");
        m.lines()
            .find(|l| l.starts_with("lanyard_config_reloads_total{result=\"applied\"}"))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    assert_eq!(reloads(&admin), None);
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while reloads(&admin).as_deref() != Some("1") {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    let events: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let msg = |e: &serde_json::Value| e["fields"]["message"].as_str().unwrap_or("").to_owned();
    assert!(events.iter().any(|e| msg(e) == "config reloaded"), "{logs}");
    assert!(
        events.iter().any(|e| e["fields"]["trigger"] == "SIGHUP"),
        "{logs}"
    );
    // The audit trail went to stderr too, as JSON lines of its own.
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "reload" && e["result"] == "applied"),
        "{logs}"
    );
}

/// `lanyard policy test` through the binary: allow exits 0, deny 1, a bad
/// config or argument 64; `check` prints the statements with the overlay's.
#[test]
fn policy_test_exits_by_the_decision() {
    let (dir, ca) = scratch();
    let yaml = base(dir.path(), &ca, 8443).replace(
        "path: /api, provider: demo }",
        "path: /api, provider: demo, statements: [ { actions: [GET], resources: [\"/api/**\"] } ] }",
    );
    write(
        dir.path(),
        "narrow.yaml",
        "endpoints:\n  alpha:\n    - { actions: [GET], resources: [\"/api/items/*\"] }\n",
    );
    let file = write(
        dir.path(),
        "lanyard.yaml",
        &format!("{yaml}overlays: [narrow.yaml]\n"),
    );
    // (exit code, stdout, stderr) of `lanyard policy test METHOD URL`.
    let run = |m: &str, url: &str| {
        let out = Command::new(LANYARD)
            .args(["policy", "test", "--config"])
            .arg(&file)
            .args([m, url])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, text, _) = run("GET", "https://alpha.test:8443/api/items/1");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.starts_with("allow: endpoint 'alpha': GET /api/items/1\n"),
        "{text}"
    );
    let (code, text, _) = run("GET", "https://alpha.test:8443/api/other");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.starts_with("deny: endpoint 'alpha': no statement allows GET /api/other (overlay "),
        "{text}"
    );
    let (code, _, err) = run("GET", "ftp://alpha.test/api");
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("URL"), "{err}");
    let out = lanyard(&["check", "--config"], &file);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(
            "endpoint 'alpha'\n  endpoints[0].statements[0]: allow GET /api/**\n  overlay "
        ) && text.contains("narrow.yaml [0]: allow GET /api/items/*\n"),
        "{text}"
    );
    // A widening overlay: the config is refused, naming the overlay file.
    write(
        dir.path(),
        "narrow.yaml",
        "endpoints:\n  alpha:\n    - { actions: [POST], resources: [\"/api/items/*\"] }\n",
    );
    let out = lanyard(&["check", "--config"], &file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("narrow.yaml: endpoints.alpha[0]: allows POST /api/items/*"),
        "{err}"
    );
}
