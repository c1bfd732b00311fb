//! A real SPIRE server and agent for a test: sqlite datastore, `join_token`
//! node attestation, `unix` workload attestor, everything on loopback and in
//! a temp dir. Readiness is polled (healthcheck, then a JWT-SVID fetch), and
//! everything is killed when the value is dropped, also when a test fails.
//!
//! The binaries come from `scripts/install-spire` (`LANYARD_SPIRE_DIR`, or its
//! default cache directory). Missing binaries fail the test: they are not a skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The trust domain of every test SPIRE.
pub const TRUST_DOMAIN: &str = "demo.test";
/// The node (agent) SPIFFE ID.
pub const NODE_ID: &str = "spiffe://demo.test/node/test";

/// A running SPIRE server and agent.
pub struct Spire {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    bin: PathBuf,
    server: Child,
    agent: Option<Child>,
    join_token: String,
}

fn spire_bin() -> PathBuf {
    let dir = std::env::var_os("LANYARD_SPIRE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"));
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache"));
            cache.join("lanyard/spire-v1.15.3")
        });
    assert!(
        dir.join("spire-server").is_file()
            && dir.join("spire-agent").is_file()
            && dir.join("oidc-discovery-provider").is_file(),
        "SPIRE binaries not found in {}: run scripts/install-spire (scripts/test does)",
        dir.display()
    );
    dir
}

/// A port nothing listens on now, for a server that cannot be handed a
/// bound socket (SPIRE, Keycloak).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Polls `f` every 100 ms until it succeeds or `limit` passes.
pub fn poll(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How a test's SPIRE server is set up beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct SpireOptions {
    /// The server's `jwt_issuer`: the `iss` claim of every JWT-SVID (SPIRE
    /// mints none by default), which OIDC-style relying parties such as
    /// Keycloak's JWT authorization grant look their trust up by.
    pub jwt_issuer: Option<String>,
}

/// SPIRE's OIDC discovery provider, serving the trust domain's JWT keys as
/// a standard JWKS (`use: sig`) over loopback HTTP; killed when dropped.
pub struct OidcDiscovery {
    child: Child,
    /// `http://127.0.0.1:PORT/keys`.
    pub jwks_url: String,
}

impl Drop for OidcDiscovery {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Spire {
    /// Starts the server and an attested agent.
    pub fn start() -> Self {
        Self::start_with(&SpireOptions::default())
    }

    /// Starts the server, set up as `opts` says, and an attested agent.
    pub fn start_with(opts: &SpireOptions) -> Self {
        let bin = spire_bin();
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        for d in ["server", "agent-data", "agent"] {
            std::fs::create_dir_all(dir.join(d)).expect("mkdir");
        }
        // Root-only, like a production agent socket directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("agent"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let port = free_port();
        std::fs::write(
            dir.join("server.conf"),
            format!(
                r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = "{d}/server/api.sock"
  trust_domain = "{TRUST_DOMAIN}"
  data_dir = "{d}/server"
  log_level = "WARN"{issuer}
}}
plugins {{
  DataStore "sql" {{ plugin_data {{ database_type = "sqlite3" connection_string = "{d}/server/datastore.sqlite3" }} }}
  NodeAttestor "join_token" {{ plugin_data {{}} }}
  KeyManager "memory" {{ plugin_data {{}} }}
}}
"#,
                d = dir.display(),
                issuer = opts
                    .jwt_issuer
                    .as_ref()
                    .map(|i| format!("\n  jwt_issuer = \"{i}\""))
                    .unwrap_or_default(),
            ),
        )
        .expect("server.conf");
        let server = Command::new(bin.join("spire-server"))
            .args(["run", "-config"])
            .arg(dir.join("server.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("server.log")).expect("log"))
            .spawn()
            .expect("spire-server");
        let mut s = Spire {
            _dir: tmp,
            dir,
            bin,
            server,
            agent: None,
            join_token: String::new(),
        };
        let sock = s.server_socket();
        poll(Duration::from_secs(30), "SPIRE server health", || {
            s.server_cmd(&["healthcheck", "-socketPath", &sock]).is_ok()
        });
        let bundle = s
            .server_cmd(&["bundle", "show", "-socketPath", &sock])
            .expect("bundle show");
        std::fs::write(s.dir.join("bundle.pem"), bundle).expect("bundle");
        let out = s
            .server_cmd(&[
                "token",
                "generate",
                "-socketPath",
                &sock,
                "-spiffeID",
                NODE_ID,
            ])
            .expect("token generate");
        s.join_token = out
            .lines()
            .find_map(|l| l.strip_prefix("Token: "))
            .expect("join token")
            .trim()
            .to_owned();
        std::fs::write(
            s.dir.join("agent.conf"),
            format!(
                r#"agent {{
  data_dir = "{d}/agent-data"
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{d}/agent/agent.sock"
  trust_bundle_path = "{d}/bundle.pem"
  trust_domain = "{TRUST_DOMAIN}"
  experimental {{ sync_interval = "1s" }}
}}
plugins {{
  NodeAttestor "join_token" {{ plugin_data {{}} }}
  KeyManager "disk" {{ plugin_data {{ directory = "{d}/agent-data" }} }}
  WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
"#,
                d = s.dir.display()
            ),
        )
        .expect("agent.conf");
        s.start_agent();
        s
    }

    /// Starts SPIRE's OIDC discovery provider against this server's API
    /// (plain HTTP on a free loopback port, keys marked `use: sig`) and
    /// waits until it serves the JWKS.
    pub fn oidc_discovery(&self) -> OidcDiscovery {
        let port = free_port();
        let conf = self.dir.join("oidc.conf");
        std::fs::write(
            &conf,
            format!(
                "log_level = \"warn\"\ndomains = [\"127.0.0.1\"]\ninsecure_addr = \"127.0.0.1:{port}\"\nallow_insecure_scheme = true\nset_key_use = true\nserver_api {{\n  address = \"unix://{}\"\n}}\n",
                self.server_socket()
            ),
        )
        .expect("oidc.conf");
        let child = Command::new(self.bin.join("oidc-discovery-provider"))
            .args(["-config"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("oidc.log")).expect("log"))
            .spawn()
            .expect("oidc-discovery-provider (scripts/install-spire builds it)");
        let d = OidcDiscovery {
            child,
            jwks_url: format!("http://127.0.0.1:{port}/keys"),
        };
        poll(
            Duration::from_secs(30),
            "the OIDC discovery provider's JWKS",
            || {
                Command::new("curl")
                    .args(["-sf", "--max-time", "2", &d.jwks_url])
                    .output()
                    .is_ok_and(|o| {
                        let body: String = String::from_utf8_lossy(&o.stdout)
                            .chars()
                            .filter(|c| !c.is_whitespace())
                            .collect();
                        o.status.success() && body.contains("\"use\":\"sig\"")
                    })
            },
        );
        d
    }

    fn server_socket(&self) -> String {
        self.dir.join("server/api.sock").display().to_string()
    }

    /// The agent's Workload API socket.
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join("agent/agent.sock")
    }

    /// `unix:///...` for `SPIFFE_ENDPOINT_SOCKET`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.agent_socket().display())
    }

    fn server_cmd(&self, args: &[&str]) -> Result<String, String> {
        self.cmd("spire-server", args)
    }

    fn agent_cmd(&self, args: &[&str]) -> Result<String, String> {
        self.cmd("spire-agent", args)
    }

    fn cmd(&self, bin: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new(self.bin.join(bin))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The trust bundle in SPIFFE format (a JWKS with `spiffe_sequence`), as a
    /// bundle endpoint serves it to federated relying parties such as Keycloak.
    pub fn bundle_spiffe(&self) -> String {
        let sock = self.server_socket();
        self.server_cmd(&["bundle", "show", "-format", "spiffe", "-socketPath", &sock])
            .unwrap_or_else(|e| panic!("bundle show: {e}"))
    }

    /// Registers `spiffe_id` for workloads matching `selector` (e.g. `unix:uid:0`),
    /// optionally with a JWT-SVID TTL in seconds, and waits until the agent serves it.
    pub fn register(&self, spiffe_id: &str, selector: &str, jwt_ttl: Option<u32>) {
        let sock = self.server_socket();
        let ttl = jwt_ttl.map(|t| t.to_string());
        let mut args = vec![
            "entry",
            "create",
            "-socketPath",
            &sock,
            "-parentID",
            NODE_ID,
            "-spiffeID",
            spiffe_id,
            "-selector",
            selector,
        ];
        if let Some(t) = &ttl {
            args.extend(["-jwtSVIDTTL", t]);
        }
        self.server_cmd(&args)
            .unwrap_or_else(|e| panic!("entry create: {e}"));
        self.wait_for_svid();
    }

    /// Polls until the agent issues a JWT-SVID to this process.
    pub fn wait_for_svid(&self) {
        let sock = self.agent_socket().display().to_string();
        poll(
            Duration::from_secs(60),
            "a JWT-SVID from the SPIRE agent",
            || {
                self.agent_cmd(&[
                    "api",
                    "fetch",
                    "jwt",
                    "-audience",
                    "probe",
                    "-socketPath",
                    &sock,
                ])
                .is_ok()
            },
        );
    }

    /// Stops the agent (its socket goes away).
    pub fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = std::fs::remove_file(self.agent_socket());
    }

    /// Starts (or restarts) the agent and waits for it to be healthy.
    pub fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("log");
        let agent = Command::new(self.bin.join("spire-agent"))
            .args(["run", "-config"])
            .arg(self.dir.join("agent.conf"))
            .args(["-joinToken", &self.join_token])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spire-agent");
        self.agent = Some(agent);
        let sock = self.agent_socket().display().to_string();
        poll(Duration::from_secs(30), "SPIRE agent health", || {
            self.agent_cmd(&["healthcheck", "-socketPath", &sock])
                .is_ok()
        });
    }

    /// The agent's log so far (for assertion messages).
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Where the server and agent logs are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Spire {
    fn drop(&mut self) {
        self.stop_agent();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
