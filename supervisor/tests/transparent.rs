//! A pod's network path, without a cluster: network namespace A is the pod
//! (the agent and Lanyard share it, as containers in a pod do), B holds the
//! upstreams on documentation addresses, joined by a veth pair. The real
//! `lanyard init` installs the redirect rules in A, the real `lanyard proxy`
//! runs there as its own uid with a transparent listener, and the agent, as
//! another uid with no proxy settings at all, uses plain curl.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const LANYARD: &str = env!("CARGO_BIN_EXE_lanyard");
const PROXY_UID: u32 = 64011;
const AGENT_UID: u32 = 64012;
const TOKEN: &str = "transparent-test-token-5c1e";

fn sh(cmd: &str) -> Output {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Two namespaces and a veth between them; removed on drop.
struct Pod {
    a: String,
    b: String,
    procs: Vec<Child>,
}

impl Pod {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let (a, b) = (format!("lyd-a-{id}"), format!("lyd-b-{id}"));
        sh(&format!(
            "ip netns add {a} && ip netns add {b} && \
             ip link add va-{id} type veth peer name vb-{id} && \
             ip link set va-{id} netns {a} && ip link set vb-{id} netns {b} && \
             ip -n {a} link set lo up && ip -n {b} link set lo up && \
             ip -n {a} addr add 192.0.2.2/24 dev va-{id} && ip -n {a} -6 addr add 2001:db8::2/64 dev va-{id} nodad && \
             ip -n {b} addr add 192.0.2.10/24 dev vb-{id} && ip -n {b} addr add 192.0.2.11/24 dev vb-{id} && \
             ip -n {b} -6 addr add 2001:db8::10/64 dev vb-{id} nodad && ip -n {b} -6 addr add 2001:db8::11/64 dev vb-{id} nodad && \
             ip -n {a} link set va-{id} up && ip -n {b} link set vb-{id} up && \
             ip -n {a} route add default dev va-{id} && ip -n {a} -6 route add default dev va-{id}"
        ));
        // `ip netns exec` mounts /etc/netns/NAME/hosts over /etc/hosts: the
        // pod's own name table, as a cluster's DNS would give it.
        let etc = format!("/etc/netns/{a}");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            format!("{etc}/hosts"),
            "127.0.0.1 localhost\n192.0.2.10 alpha.test\n",
        )
        .unwrap();
        Self {
            a,
            b,
            procs: Vec::new(),
        }
    }

    /// Installs the redirect rules with the real `lanyard init`, starts the
    /// real `lanyard proxy` on `cfg` as Lanyard's uid, and returns once both
    /// transparent listeners are bound, with the proxy's stderr.
    fn start_proxy(&mut self, cfg: &std::path::Path) -> std::process::ChildStderr {
        sh(&format!(
            "ip netns exec {} {LANYARD} init --proxy-uid {PROXY_UID} --agent-uid {AGENT_UID} --dns 192.0.2.53",
            self.a
        ));
        let mut proxy = self
            .in_pod(
                PROXY_UID,
                &[LANYARD, "proxy", "--config", cfg.to_str().unwrap()],
            )
            .env("LANYARD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(proxy.stdout.take().unwrap());
        let mut seen = Vec::new();
        while seen
            .iter()
            .filter(|l: &&String| l.starts_with("transparent on"))
            .count()
            < 2
        {
            let mut l = String::new();
            assert!(
                out.read_line(&mut l).unwrap() > 0,
                "lanyard proxy exited: {seen:?}"
            );
            seen.push(l.trim().to_owned());
        }
        let stderr = proxy.stderr.take().unwrap();
        self.procs.push(proxy);
        stderr
    }

    /// The development Workload API for `spiffe://demo.test/agent`, run as
    /// Lanyard's uid with its socket in a directory only that uid enters;
    /// returns once it serves, with the socket's path.
    fn workload_api(&self, dir: &std::path::Path) -> (KillOnDrop, std::path::PathBuf) {
        let socket_dir = dir.join("spiffe");
        std::fs::create_dir(&socket_dir).unwrap();
        nix::unistd::chown(
            socket_dir.as_path(),
            Some(PROXY_UID.into()),
            Some(PROXY_UID.into()),
        )
        .unwrap();
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let socket = socket_dir.join("agent.sock");
        let mut api = self
            .in_pod(
                PROXY_UID,
                &[
                    LANYARD,
                    "dev",
                    "workload-api",
                    "--socket",
                    socket.to_str().unwrap(),
                    "--spiffe-id",
                    "spiffe://demo.test/agent",
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(api.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("listening on"), "{line}");
        (KillOnDrop(api), socket)
    }

    /// Runs `args` in the pod as `uid`.
    fn in_pod(&self, uid: u32, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.a, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", "--"])
            .args(args)
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY");
        c
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.a));
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }
}

/// Runs `run` on a thread of its own that joined network namespace `ns`,
/// on a runtime of that thread (the future never needs to end).
fn in_namespace<F, Fut>(ns: &str, run: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let ns_file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run());
    });
}

/// Serves the echo upstream `name` (an alpha.test certificate from `pki`) on
/// `addr` inside namespace `ns`; returns its count of requests.
fn upstream_in(
    ns: &str,
    addr: &str,
    name: &'static str,
    pki: &lanyard_examples::pki::Pki,
) -> std::sync::Arc<AtomicUsize> {
    let tls = pki
        .leaf(&["alpha.test"])
        .unwrap()
        .server_config(&[b"http/1.1"])
        .unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    in_namespace(ns, move || async move {
        let up = lanyard_examples::echo::start(addr, name, Some(tls))
            .await
            .unwrap();
        tx.send(up.hits.clone()).unwrap();
        std::future::pending::<()>().await;
    });
    rx.recv().unwrap()
}

/// Starts the demo token issuer (`issuer.test`, a certificate from `pki`)
/// on loopback inside namespace `ns`, trusting the Workload API at
/// `workload_api` for the SVIDs it is shown; returns its port and its count
/// of tokens issued.
fn issuer_in(
    ns: &str,
    workload_api: String,
    pki: &lanyard_examples::pki::Pki,
) -> (u16, std::sync::Arc<AtomicUsize>) {
    let tls = pki
        .leaf(&["issuer.test"])
        .unwrap()
        .server_config(&[b"http/1.1"])
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    in_namespace(ns, move || async move {
        let issuer = lanyard_examples::issuer::start(lanyard_examples::issuer::IssuerConfig {
            name: "issuer.test".into(),
            bind: "127.0.0.1:0".parse().unwrap(),
            tls,
            workload_api,
            allowed_prefix: "spiffe://demo.test/".into(),
            audiences: [("alpha".to_owned(), vec!["alpha.read".to_owned()])].into(),
            ttl: 300,
        })
        .await
        .unwrap();
        tx.send((issuer.addr.port(), issuer.issued.clone()))
            .unwrap();
        std::future::pending::<()>().await;
    });
    rx.recv().unwrap()
}

/// A scratch directory anyone may traverse (the proxy and the agent run as
/// uids of their own) and a fresh pod. Namespaces need root, as CI has.
fn scratch_pod() -> (tempfile::TempDir, Pod) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test creates network namespaces: run it as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, Pod::new())
}

#[test]
fn the_agent_gets_its_token_without_knowing_there_is_a_proxy() {
    let (dir, mut pod) = scratch_pod();

    // The real alpha (trusted by Lanyard), and an impostor with a certificate
    // for the same name from another CA, at an address the agent may choose.
    let alpha_ca = lanyard_examples::pki::Pki::new("alpha CA").unwrap();
    let impostor_ca = lanyard_examples::pki::Pki::new("impostor CA").unwrap();
    upstream_in(&pod.b, "192.0.2.10:443", "alpha", &alpha_ca);
    upstream_in(&pod.b, "192.0.2.11:443", "impostor", &impostor_ca);
    let trust = dir.path().join("alpha-ca.pem");
    alpha_ca.write_ca(&trust).unwrap();

    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("token"), TOKEN).unwrap();
    let ca = dir.path().join("ca");
    std::fs::create_dir(&ca).unwrap();
    for p in [&secrets, &secrets.join("token"), &ca] {
        nix::unistd::chown(p.as_path(), Some(PROXY_UID.into()), Some(PROXY_UID.into())).unwrap();
    }
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700)).unwrap();
    let cfg = dir.path().join("lanyard.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\ntransparent: {{ listen: \"[::]:15001\" }}\nca: {{ dir: {ca} }}\nupstream_tls: {{ extra_ca_files: [{trust}] }}\nresolve: {{ alpha.test: 192.0.2.10 }}\nproviders:\n  s: {{ static: {{ token_file: {tok} }} }}\nendpoints:\n  - {{ name: alpha, host: alpha.test, port: 443, provider: s }}\negress: {{ default: deny, allow: [\"192.0.2.11:443\"], allow_private_addresses: true }}\n",
            ca = ca.display(),
            trust = trust.display(),
            tok = secrets.join("token").display(),
        ),
    )
    .unwrap();

    let stderr = pod.start_proxy(&cfg);

    let curl = |extra: &[&str]| -> (bool, String) {
        let mut args = vec!["curl", "-sS", "--max-time", "10", "--cacert"];
        let ca_pem = ca.join("ca.pem");
        let ca_pem = ca_pem.to_str().unwrap().to_owned();
        args.push(&ca_pem);
        args.extend_from_slice(extra);
        let o = pod.in_pod(AGENT_UID, &args).output().unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let bearer = format!("authorization: Bearer {TOKEN}");

    // The agent dials alpha's real address: intercepted, injected.
    let (ok, body) = curl(&[
        "--resolve",
        "alpha.test:443:192.0.2.10",
        "https://alpha.test/x",
    ]);
    assert!(
        ok && body.contains("name: alpha") && body.contains(&bearer),
        "{body}"
    );
    // The agent points alpha.test at the impostor: Lanyard dials the name as
    // it resolves it, so the token still goes to the real alpha only.
    let (ok, body) = curl(&[
        "--resolve",
        "alpha.test:443:192.0.2.11",
        "https://alpha.test/y",
    ]);
    assert!(
        ok && body.contains("name: alpha") && body.contains(&bearer),
        "{body}"
    );
    assert!(!body.contains("impostor"), "{body}");
    // The same over IPv6: the original destination is read for that family too.
    let (ok, body) = curl(&[
        "--resolve",
        "alpha.test:443:[2001:db8::11]",
        "https://alpha.test/z",
    ]);
    assert!(
        ok && body.contains("name: alpha") && body.contains(&bearer),
        "{body}"
    );
    // No name (TLS to an address): nothing to inject. Relayed blind where
    // egress allows the address (the agent talks to the server itself, no
    // token), refused where it does not.
    let (ok, body) = curl(&["-k", "https://192.0.2.11/"]);
    assert!(ok && body.contains("name: impostor"), "{body}");
    assert!(!body.contains(TOKEN), "{body}");
    let (ok, body) = curl(&["-k", "https://192.0.2.10/"]);
    assert!(!ok, "an unmatched destination got through: {body}");
    // Plain HTTP is routed by Host; unmatched here, so refused by egress.
    let (ok, body) = curl(&[
        "--resolve",
        "alpha.test:80:192.0.2.10",
        "http://alpha.test/",
    ]);
    assert!(ok && body.contains("denied"), "{body}");
    // The transparent front end's HTTP/1.1 server refuses a smuggling
    // vector as the explicit one does (tests/tests/smuggling.rs): 400, one
    // response, connection closed.
    let smuggle = "import socket\ns=socket.create_connection(('192.0.2.10',80),timeout=10)\ns.sendall(b'POST / HTTP/1.1\\r\\nHost: alpha.test\\r\\nContent-Length: 3\\r\\nContent-Length: 5\\r\\n\\r\\nabcGET /smuggled HTTP/1.1\\r\\nHost: alpha.test\\r\\n\\r\\n')\nout=b''\nwhile True:\n  d=s.recv(65536)\n  if not d: break\n  out+=d\nprint(out.count(b'HTTP/1.1 '), out[:12].decode())";
    let o = pod
        .in_pod(AGENT_UID, &["/usr/bin/python3", "-c", smuggle])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "1 HTTP/1.1 400",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // HTTP/2 through the same path.
    let (ok, body) = curl(&[
        "--http2",
        "--resolve",
        "alpha.test:443:192.0.2.10",
        "https://alpha.test/h2",
    ]);
    assert!(ok && body.contains(&bearer), "{body}");
    // Another client stack (Python's urllib over OpenSSL), no proxy settings
    // either; the pod has no DNS, so the script maps alpha.test itself.
    let py = format!(
        "import socket,ssl,urllib.request; g=socket.getaddrinfo; socket.getaddrinfo=lambda h,*a,**k: g('192.0.2.10' if h=='alpha.test' else h,*a,**k); c=ssl.create_default_context(cafile='{}'); print(urllib.request.urlopen('https://alpha.test/py', context=c, timeout=10).read().decode())",
        ca.join("ca.pem").display()
    );
    let o = pod
        .in_pod(AGENT_UID, &["/usr/bin/python3", "-c", &py])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&o.stdout);
    assert!(
        body.contains(&bearer),
        "{body}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Go's net/http (its own TLS stack and resolver, HTTP/2 by ALPN), no
    // proxy settings: the client users most often find ignoring HTTPS_PROXY.
    let go = go_client(dir.path());
    let o = pod
        .in_pod(AGENT_UID, &[go.to_str().unwrap(), "https://alpha.test/go"])
        .env("SSL_CERT_FILE", ca.join("ca.pem"))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && body.contains(&bearer) && body.contains("name: alpha"),
        "{body}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The Workload API socket lives where only Lanyard's uid can enter.
    let (_api, socket) = pod.workload_api(dir.path());
    let reach = "import socket,sys,time\nfor _ in range(100):\n  try:\n    socket.socket(socket.AF_UNIX).connect(sys.argv[1]); print('connected'); break\n  except FileNotFoundError: time.sleep(0.05)\n  except OSError as e: print('refused', e.errno); break";
    let o = pod
        .in_pod(
            PROXY_UID,
            &["/usr/bin/python3", "-c", reach, socket.to_str().unwrap()],
        )
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "connected",
        "Lanyard's uid must reach it"
    );
    let o = pod
        .in_pod(
            AGENT_UID,
            &["/usr/bin/python3", "-c", reach, socket.to_str().unwrap()],
        )
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "refused 13",
        "the agent reached the Workload API"
    );
    // A connection straight to the transparent port was not redirected: no
    // original destination, so it is refused, not served.
    let (ok, body) = curl(&["http://127.0.0.1:15001/"]);
    assert!(
        !ok,
        "a direct connection to the transparent port was served: {body}"
    );
    // The agent cannot undo the redirection.
    let o = pod
        .in_pod(AGENT_UID, &["nft", "flush", "ruleset"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "the agent flushed the rules");

    let mut proxy = pod.procs.pop().unwrap();
    let _ = proxy.kill();
    let _ = proxy.wait();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut log).unwrap();
    assert!(
        log.contains("original_dst_mismatch=true") && log.contains("original_dst_mismatch=false"),
        "the log does not say when the agent's address was not the endpoint's: {log}"
    );
    assert!(!log.contains(TOKEN), "the token reached the log");
}

/// Statements decide redirected requests exactly as they decide a CONNECT's:
/// an agent with no proxy settings gets a 403 for what its endpoint's
/// statements do not allow, before any token is fetched (the issuer counts
/// none) and with nothing sent to the upstream; an allowed call gets its
/// exchanged token.
#[test]
fn statements_decide_redirected_requests_before_any_token() {
    let (dir, mut pod) = scratch_pod();
    let pki = lanyard_examples::pki::Pki::new("demo CA").unwrap();
    let hits = upstream_in(&pod.b, "192.0.2.10:443", "alpha", &pki);
    let trust = dir.path().join("demo-ca.pem");
    pki.write_ca(&trust).unwrap();

    // The Workload API, where only Lanyard's uid can reach it.
    let (_api, socket) = pod.workload_api(dir.path());
    let ca = dir.path().join("ca");
    std::fs::create_dir(&ca).unwrap();
    nix::unistd::chown(ca.as_path(), Some(PROXY_UID.into()), Some(PROXY_UID.into())).unwrap();
    let (issuer_port, issued) = issuer_in(&pod.a, format!("unix://{}", socket.display()), &pki);

    let cfg = dir.path().join("lanyard.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\ntransparent: {{ listen: \"[::]:15001\" }}\nca: {{ dir: {ca} }}\nupstream_tls: {{ extra_ca_files: [{trust}] }}\nresolve: {{ alpha.test: 192.0.2.10, issuer.test: 127.0.0.1 }}\nspiffe: {{ endpoint_socket: \"unix://{socket}\" }}\nproviders:\n  demo: {{ token_grant: {{ token_endpoint: \"https://issuer.test:{issuer_port}/token\", grant: token_exchange }} }}\nendpoints:\n  - name: alpha\n    host: alpha.test\n    provider: demo\n    audience: alpha\n    scopes: [alpha.read]\n    statements: [ {{ actions: [GET], resources: [\"/read/**\"] }} ]\negress: {{ default: deny, allow_private_addresses: true }}\n",
            ca = ca.display(),
            trust = trust.display(),
            socket = socket.display(),
        ),
    )
    .unwrap();
    let _stderr = pod.start_proxy(&cfg);

    let curl = |extra: &[&str]| -> String {
        let ca_pem = ca.join("ca.pem");
        let mut args = vec![
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            ca_pem.to_str().unwrap(),
            "--resolve",
            "alpha.test:443:192.0.2.10",
            "-w",
            "\nstatus=%{http_code}",
        ];
        args.extend_from_slice(extra);
        let o = pod.in_pod(AGENT_UID, &args).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    for (extra, why) in [
        (
            vec!["-X", "DELETE", "https://alpha.test/read/1"],
            "endpoint 'alpha': no statement allows DELETE /read/1",
        ),
        (
            vec!["https://alpha.test/write/1"],
            "endpoint 'alpha': no statement allows GET /write/1",
        ),
        (
            vec!["--path-as-is", "https://alpha.test/read/../write/1"],
            "endpoint 'alpha': no statement allows GET /write/1",
        ),
    ] {
        let body = curl(&extra);
        assert!(
            body.contains(why) && body.ends_with("status=403"),
            "{extra:?}: {body}"
        );
    }
    assert_eq!(
        issued.load(Ordering::SeqCst),
        0,
        "a refused call fetched a token"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a refused call reached alpha"
    );
    let body = curl(&["https://alpha.test/read/1"]);
    assert!(
        body.contains("name: alpha")
            && body.contains("authorization: Bearer ey")
            && body.ends_with("status=200"),
        "{body}"
    );
    assert_eq!(issued.load(Ordering::SeqCst), 1);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// Builds a Go net/http client (standard library only) into `dir`.
fn go_client(dir: &std::path::Path) -> std::path::PathBuf {
    let src = dir.join("client.go");
    std::fs::write(
        &src,
        r#"package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	c := &http.Client{Timeout: 10 * time.Second}
	r, err := c.Get(os.Args[1])
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	b, _ := io.ReadAll(r.Body)
	fmt.Printf("%s %d\n%s", r.Proto, r.StatusCode, b)
}
"#,
    )
    .unwrap();
    let bin = dir.join("go-client");
    let out = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=mod")
        .output()
        .expect("go must be installed (scripts/install-spire needs it too)");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// A child killed when the test ends, passing or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
