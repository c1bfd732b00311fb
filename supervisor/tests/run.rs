//! `lanyard run` as root, the way a sandbox starts: the agent (a uid leased
//! for it alone) tries every way around Lanyard and fails; through the proxy it gets a
//! credential it never sees; signals, exit codes and orphans are handled.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use std::io::{BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lanyard_supervisor::dev::DevWorkloadApi;

mod common;
use common::*;

const ID: &str = "spiffe://sandbox.test/agent";

/// An HTTPS echo upstream for `alpha.test` on loopback, and its CA file in `dir`.
async fn alpha_upstream(dir: &Path) -> (lanyard_examples::echo::Echo, std::path::PathBuf) {
    let pki = lanyard_examples::pki::Pki::new("upstream CA").unwrap();
    let up_ca = dir.join("up-ca.pem");
    pki.write_ca(&up_ca).unwrap();
    let tls = pki
        .leaf(&["alpha.test"])
        .unwrap()
        .server_config(&[b"http/1.1"])
        .unwrap();
    let up = lanyard_examples::echo::start("127.0.0.1:0".parse().unwrap(), "alpha", Some(tls))
        .await
        .unwrap();
    (up, up_ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_cannot_get_around_lanyard() {
    require_root();
    let dir = open_dir();
    // The Workload API, as a SPIRE agent would offer it, in a root-only directory.
    let spire = private_dir(dir.path(), "spire");
    let sock = spire.join("agent.sock");
    let api = DevWorkloadApi::new(ID, Duration::from_secs(300)).unwrap();
    let _wl = api.serve(&sock).await.unwrap();
    let (up, up_ca) = alpha_upstream(dir.path()).await;
    let port = up.addr.port();
    let cfg = config(
        dir.path(),
        &format!(
            "  id: {{ token_grant: {{ grant: jwt_svid }} }}\nspiffe: {{ endpoint_socket: unix://{sock} }}\nupstream_tls: {{ extra_ca_files: [{ca}] }}\nresolve: {{ alpha.test: 127.0.0.1 }}\nendpoints:\n  - {{ name: alpha, host: alpha.test, port: {port}, provider: id, audience: alpha }}\n",
            sock = sock.display(),
            ca = up_ca.display()
        ),
    );
    let script = format!(
        r#"
echo "uid=$(id -u)"
echo "spiffe_vars=$(env | grep -c '^SPIFFE_')"
echo "lanyard_vars=$(env | grep -c '^LANYARD_')"
{probe}
if ls {spire} 2>/dev/null | grep -q .; then echo socket_dir=visible; else echo socket_dir=hidden; fi
if cat /proc/$PPID/environ >/dev/null 2>&1; then echo environ=readable; else echo environ=denied; fi
if head -c 1 /proc/$PPID/mem >/dev/null 2>&1; then echo mem=readable; else echo mem=denied; fi
/usr/bin/python3 -c 'import ctypes,sys; libc=ctypes.CDLL(None,use_errno=True); r=libc.ptrace(16,int(sys.argv[1]),0,0); print("ptrace=" + ("attached" if r==0 else "denied"))' $PPID
if curl -sS -m 3 --noproxy '*' -k https://127.0.0.1:{port}/ >/dev/null 2>&1; then echo direct=connected; else echo direct=blocked; fi
if cat {secrets}/token >/dev/null 2>&1; then echo token_file=readable; else echo token_file=unreadable; fi
for d in {spire} {secrets}; do
  if [ ! -e $d ] || grep -q " $d ro,.* - tmpfs " /proc/self/mountinfo; then echo "$d=absent_or_covered"; fi
done
curl -sS -m 10 https://alpha.test:{port}/claims
echo done
"#,
        probe = probe_socket(&sock, "socket"),
        spire = spire.display(),
        port = port,
        secrets = dir.path().join("secrets").display(),
    );
    let mut child = Command::new(LANYARD)
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--", "sh", "-c", &script])
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", sock.display()),
        )
        .env("LANYARD_DEBUG_SECRET", "x")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let lines = lines_until(&mut out, "done");
    let (code, _, err) = finish(child);
    assert_eq!(code, Some(0), "{lines:?}\n{err}");
    for want in [
        "spiffe_vars=0",
        "lanyard_vars=0",
        "socket=unreachable",
        "socket_dir=hidden",
        "environ=denied",
        "mem=denied",
        "ptrace=denied",
        "direct=blocked",
        "token_file=unreadable",
        &format!("{}=absent_or_covered", spire.display()),
        &format!("{}=absent_or_covered", dir.path().join("secrets").display()),
        &format!("sub: {ID}"),
        "aud: [\"alpha\"]",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "missing {want:?} in {lines:?}\n{err}"
        );
    }
    let uid: u32 = lines
        .iter()
        .find_map(|l| l.strip_prefix("uid="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (61184..=65519).contains(&uid),
        "the default agent uid is leased from the dynamic range: {uid}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("eyJ")),
        "the agent saw an SVID: {lines:?}"
    );
    assert!(
        api.stats
            .jwt_svids
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
}

#[test]
fn exit_codes_propagate() {
    require_root();
    let dir = open_dir();
    let cfg = config(dir.path(), "");
    for (args, want) in [
        (vec!["true"], 0),
        (vec!["sh", "-c", "exit 3"], 3),
        (vec!["sh", "-c", "kill -KILL $$"], 128 + 9),
        (vec!["/nonexistent/agent"], 127),
        (vec!["no-such-agent-on-path"], 127),
        // A stopped agent is resumed, never left hanging.
        (vec!["sh", "-c", "kill -STOP $$; echo resumed"], 0),
    ] {
        let (code, out, err) = finish(spawn(&cfg, &args));
        assert_eq!(code, Some(want), "{args:?}: {err}");
        if args.last().is_some_and(|a| a.contains("STOP")) {
            assert!(out.contains("resumed"), "{out}{err}");
            assert!(err.contains("resuming"), "{err}");
        }
        assert!(err.contains("agent exited"), "{args:?}: {err}");
    }
}

/// Starts `script` under `lanyard run`, waits for it to print `ready`, sends
/// Lanyard SIGTERM; returns the exit status and Lanyard's log.
fn sigterm_after_ready(cfg: &Path, script: &str) -> (Option<i32>, String) {
    let mut child = spawn(cfg, &["sh", "-c", script]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    lines_until(&mut out, "ready");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let (code, _, err) = finish(child);
    (code, err)
}

#[test]
fn signals_reach_the_agent_and_its_status_comes_back() {
    require_root();
    let dir = open_dir();
    let cfg = config(dir.path(), "");
    for (script, want) in [
        (
            "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done",
            42,
        ),
        ("echo ready; exec sleep 1000", 128 + 15),
    ] {
        let (code, err) = sigterm_after_ready(&cfg, script);
        assert_eq!(code, Some(want), "{script}: {err}");
        assert!(err.contains("forwarding to the agent"), "{err}");
    }
}

#[test]
fn an_agent_ignoring_sigterm_is_killed_after_kill_after() {
    require_root();
    let dir = open_dir();
    let cfg = config(dir.path(), "agent: { kill_after: 300ms }\n");
    let (code, err) = sigterm_after_ready(
        &cfg,
        "trap '' TERM; echo ready; while :; do sleep 0.05; done",
    );
    assert_eq!(code, Some(128 + 9), "{err}");
    assert!(err.contains("agent ignored the stop signal"), "{err}");
}

#[test]
fn orphans_are_reaped_inside_the_sandbox() {
    require_root();
    let dir = open_dir();
    let cfg = config(dir.path(), "");
    // The orphan is adopted by the sandbox's init (PID 1 in its namespace),
    // which must reap it: its /proc entry (kept while a zombie) disappears.
    let script = r#"
sh -c 'sleep 0.2 & echo $! > /tmp/orphan'
o=$(cat /tmp/orphan)
echo "ppid=$(awk '{print $4}' /proc/$o/stat 2>/dev/null || echo gone)"
i=0; while [ -e /proc/$o ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
[ -e /proc/$o ] && echo "orphan=$(cat /proc/$o/stat)" || echo orphan=reaped
"#;
    let (code, out, err) = finish(spawn(&cfg, &["sh", "-c", script]));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("orphan=reaped"), "{out}");
    assert!(
        out.contains("ppid=1") || out.contains("ppid=gone"),
        "orphan not adopted by the sandbox init: {out}"
    );
}

#[test]
fn isolation_that_cannot_be_had_is_refused_unless_opted_out() {
    require_root();
    let dir = open_dir();
    let cfg = config(dir.path(), "");
    std::fs::set_permissions(
        dir.path().join("secrets"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.path().join("secrets/token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let as_nobody = |cfg: &Path| {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                LANYARD,
                "run",
                "--config",
            ])
            .arg(cfg)
            .args(["--", "sh", "-c", "echo agent-ran"])
            .output()
            .expect("setpriv (util-linux) must be installed");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = as_nobody(&cfg);
    assert_eq!(code, Some(64), "{out}{err}");
    assert!(
        err.contains("isolation") && err.contains("needs root") && err.contains("isolation: none"),
        "{err}"
    );
    assert!(!out.contains("agent-ran"));

    // Unprivileged, Lanyard needs a CA directory it can write.
    let ca = dir.path().join("ca-nobody");
    std::fs::create_dir(&ca).unwrap();
    nix::unistd::chown(&ca, Some(65534.into()), Some(65534.into())).unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap().replace(
        &dir.path().join("ca").display().to_string(),
        &ca.display().to_string(),
    );
    text.push_str("isolation: none\n");
    let none = dir.path().join("none.yaml");
    std::fs::write(&none, text).unwrap();
    let (code, out, err) = as_nobody(&none);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("agent-ran"), "{out}");
    assert!(
        err.contains("WARN") && err.contains("isolation: none"),
        "{err}"
    );
}

#[allow(dead_code, reason = "kept for debugging failing runs")]
fn dump(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(e) = child.stderr.as_mut() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// An HTTPS GET the way most Java code does it: `HttpsURLConnection`, no
/// proxy or trust settings of its own. Only `JAVA_TOOL_OPTIONS` makes it
/// go through Lanyard and trust the sandbox CA.
const JAVA_FETCH: &str = r#"
public class Fetch {
    public static void main(String[] args) throws Exception {
        var c = (javax.net.ssl.HttpsURLConnection) new java.net.URL(args[0]).openConnection();
        System.out.println("java status=" + c.getResponseCode());
        System.out.print(new String(c.getInputStream().readAllBytes()));
    }
}
"#;

#[test]
fn java_and_wget_agents_need_no_settings_of_their_own() {
    require_root();
    let dir = open_dir();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (up, up_ca) = rt.block_on(alpha_upstream(dir.path()));
    let port = up.addr.port();
    let java = dir.path().join("Fetch.java");
    std::fs::write(&java, JAVA_FETCH).unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "upstream_tls: {{ extra_ca_files: [{ca}] }}\nresolve: {{ alpha.test: 127.0.0.1 }}\nendpoints:\n  - {{ name: alpha, host: alpha.test, port: {port}, provider: s }}\nagent: {{ read_only: [{java}] }}\n",
            ca = up_ca.display(),
            java = java.display(),
        ),
    );
    let script = format!(
        "wget -q -O - https://alpha.test:{port}/wget && echo wget=ok\njava {java} https://alpha.test:{port}/java\necho done\n",
        java = java.display()
    );
    let mut child = Command::new(LANYARD)
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let lines = lines_until(&mut out, "done");
    let (code, _, err) = finish(child);
    assert_eq!(code, Some(0), "{lines:?}\n{err}");
    for want in [
        "wget=ok",
        "java status=200",
        "path: /wget",
        "path: /java",
        "authorization: Bearer static-token-never-seen-by-agent",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "missing {want:?} in {lines:?}\n{err}"
        );
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| *l == "authorization: Bearer static-token-never-seen-by-agent")
            .count(),
        2,
        "both clients got the credential: {lines:?}"
    );
}
