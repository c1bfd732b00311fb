//! A real Keycloak for the identity interop tests: the server distribution
//! from `scripts/install-keycloak` (`LANYARD_KEYCLOAK_DIR`, or its default
//! cache directory), started in dev mode with the SPIFFE and JWT
//! authorization grant features on free
//! loopback ports, its H2 database in a temp dir of its own, realms from
//! `tests/keycloak/realms.json` created through the admin API once
//! `/health/ready` answers, and killed (with its JVM) when dropped.
//!
//! A missing distribution or Java fails the test: they are not a skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::spire::{free_port, poll};

/// A running Keycloak.
pub struct Keycloak {
    child: Child,
    dir: tempfile::TempDir,
    password: String,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

fn home() -> PathBuf {
    let dir = std::env::var_os("LANYARD_KEYCLOAK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map_or_else(|| home.join(".cache"), PathBuf::from);
            cache.join("lanyard/keycloak-26.7.3")
        });
    assert!(
        dir.join(".lanyard-built").is_file(),
        "Keycloak not found in {}: run scripts/install-keycloak (scripts/test does)",
        dir.display()
    );
    dir
}

/// `realms.json` with its placeholders filled in.
pub fn realms(vars: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("keycloak/realms.json");
    let mut text = std::fs::read_to_string(&path).expect("realms.json");
    for (k, v) in vars {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    assert!(!text.contains("${"), "an unfilled placeholder in {text}");
    serde_json::from_str(&text).expect("realms.json is JSON")
}

fn curl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Keycloak {
    /// Starts Keycloak and creates `realms` in it. Blocking: call it from
    /// `spawn_blocking` in async tests.
    pub fn start(realms: &[serde_json::Value]) -> Self {
        let home = home();
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, mgmt) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{port}");
        let password = format!("admin-{}", std::process::id());
        let log = std::fs::File::create(dir.path().join("keycloak.log")).expect("log");
        let db = format!(
            "jdbc:h2:file:{}/keycloakdb;NON_KEYWORDS=VALUE",
            dir.path().display()
        );
        let child = Command::new(home.join("bin/kc.sh"))
            .args([
                "start-dev",
                // As scripts/install-keycloak built it (else every start re-augments).
                "--features=spiffe,jwt-authorization-grant",
                "--health-enabled=true",
                "--http-host=127.0.0.1",
                &format!("--http-port={port}"),
                &format!("--http-management-port={mgmt}"),
                &format!("--hostname={url}"),
                &format!("--db-url={db}"),
                "--log-level=warn",
            ])
            .env("KC_BOOTSTRAP_ADMIN_USERNAME", "admin")
            .env("KC_BOOTSTRAP_ADMIN_PASSWORD", &password)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start kc.sh");
        let kc = Keycloak {
            child,
            dir,
            password: password.clone(),
            addr: format!("127.0.0.1:{port}"),
            url,
        };
        let ready = format!("http://127.0.0.1:{mgmt}/health/ready");
        poll(Duration::from_secs(240), "Keycloak /health/ready", || {
            curl(&["-f", "-o", "/dev/null", &ready]).is_ok()
        });
        let token = kc.admin_token(&password);
        for realm in realms {
            let body = kc.dir.path().join("realm.json");
            std::fs::write(&body, realm.to_string()).expect("write realm");
            let status = curl(&[
                "-o",
                "/dev/stderr",
                "-w",
                "%{http_code}",
                "-H",
                &format!("Authorization: Bearer {token}"),
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &format!("@{}", body.display()),
                &format!("{}/admin/realms", kc.url),
            ])
            .unwrap_or_else(|e| panic!("create realm: {e}"));
            assert_eq!(status, "201", "creating realm {}: {status}", realm["realm"]);
        }
        kc
    }

    fn admin_token(&self, password: &str) -> String {
        let out = curl(&[
            "-f",
            "-d",
            "grant_type=password",
            "-d",
            "client_id=admin-cli",
            "-d",
            "username=admin",
            "-d",
            &format!("password={password}"),
            &format!("{}/realms/master/protocol/openid-connect/token", self.url),
        ])
        .unwrap_or_else(|e| panic!("admin token: {e}\n{}", self.log()));
        let v: serde_json::Value = serde_json::from_str(&out).expect("token JSON");
        v["access_token"].as_str().expect("access_token").to_owned()
    }

    /// A user's access token from `client` (a public client with direct
    /// access grants), as a portal the user signed in to would hold.
    pub fn password_token(&self, realm: &str, client: &str, user: &str, password: &str) -> String {
        let out = curl(&[
            "-f",
            "-d",
            "grant_type=password",
            "-d",
            &format!("client_id={client}"),
            "-d",
            &format!("username={user}"),
            "-d",
            &format!("password={password}"),
            &format!("{}/protocol/openid-connect/token", self.issuer(realm)),
        ])
        .unwrap_or_else(|e| panic!("{user}'s token: {e}\n{}", self.log()));
        let v: serde_json::Value = serde_json::from_str(&out).expect("token JSON");
        v["access_token"].as_str().expect("access_token").to_owned()
    }

    /// The id (the `sub` of its tokens) of user `username` in `realm`.
    pub fn user_id(&self, realm: &str, username: &str) -> String {
        let token = self.admin_token(&self.password);
        let out = curl(&[
            "-f",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!(
                "{}/admin/realms/{realm}/users?exact=true&username={username}",
                self.url
            ),
        ])
        .unwrap_or_else(|e| panic!("user {username}: {e}"));
        let v: serde_json::Value = serde_json::from_str(&out).expect("users JSON");
        v[0]["id"].as_str().expect("user id").to_owned()
    }

    /// A realm's issuer identifier.
    pub fn issuer(&self, realm: &str) -> String {
        format!("{}/realms/{realm}", self.url)
    }

    /// What Keycloak logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("keycloak.log")).unwrap_or_default()
    }
}

/// Serves `body` as JSON at every path over plain HTTP on loopback, as a
/// SPIFFE bundle endpoint serves its bundle, until the runtime ends.
pub async fn serve_json(body: String) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let body = bytes::Bytes::from(body);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        http::Response::builder()
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .body(http_body_util::Full::new(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

impl Drop for Keycloak {
    fn drop(&mut self) {
        // The JVM kc.sh started, then kc.sh itself.
        let _ = Command::new("pkill")
            .args(["-KILL", "-P", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
