//! The ways out of `lanyard run` that a hostile agent found, one test each.
//! Every one of these succeeded against the launcher that had no PID
//! namespace, one shared uid, the agent's environment in a root process,
//! best-effort hiding and no session of its own; they must all fail now.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use lanyard_supervisor::dev::DevWorkloadApi;

mod common;
use common::*;

const ID: &str = "spiffe://sandbox.test/agent";

/// Runs `script` in the agent and returns its stdout lines, stderr and status.
fn agent(cfg: &Path, script: &str) -> (Option<i32>, Vec<String>, String) {
    let (code, out, err) = finish(spawn(cfg, &["sh", "-c", script]));
    (code, out.lines().map(str::to_owned).collect(), err)
}

/// A Workload API the way SPIRE lays it out: directory 0755, socket 0777.
async fn spire_like(dir: &Path) -> (std::path::PathBuf, lanyard_supervisor::dev::Running) {
    let spire = dir.join("spire");
    std::fs::create_dir(&spire).unwrap();
    std::fs::set_permissions(&spire, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = spire.join("agent.sock");
    let api = DevWorkloadApi::new(ID, Duration::from_secs(300)).unwrap();
    let running = api.serve(&sock).await.unwrap();
    (sock, running)
}

/// A shell line that prints `svid=reachable` if a connection to the socket
/// is accepted (a bare connect: the Workload API speaks only gRPC, so an
/// HTTP/1 request would fail whether or not the socket is reachable).
fn try_socket(sock: &Path) -> String {
    probe_socket(sock, "svid")
}

/// Escape 1: The agent pushed `id -u > file` into Lanyard's terminal with TIOCSTI
/// and the root shell ran it after `lanyard run` returned. Under a pty
/// (`script`), the agent now tries TIOCSTI on every descriptor it has and on
/// /dev/tty, then reads a line typed at the outer terminal (it is in the
/// foreground of a pty of its own, so reading does not stop it); afterwards
/// the outer terminal must have no pending input.
#[test]
fn terminal_injection_reaches_nothing() {
    require_root();
    let dir = open_dir();
    let cfg = config(dir.path(), "");
    let agent = r#"
for fd in 0 1 2; do
  /usr/bin/python3 -c 'import fcntl,sys,termios
try:
    fcntl.ioctl(int(sys.argv[1]), termios.TIOCSTI, b"X"); print("tiocsti=injected")
except OSError as e: print("tiocsti=denied")' $fd
done
/usr/bin/python3 -c 'import fcntl,termios,os
try:
    fd=os.open("/dev/tty",os.O_RDWR); fcntl.ioctl(fd, termios.TIOCSTI, b"X"); print("tiocsti=injected")
except OSError as e: print("tiocsti=denied")'
echo "size=$(stty size)"
echo ready
read line
echo "got=$line"
"#;
    let agent_file = dir.path().join("agent.sh");
    std::fs::write(&agent_file, agent).unwrap();
    let pending = r#"/usr/bin/python3 -c 'import fcntl,termios,struct; print("pending=%d" % struct.unpack("i", fcntl.ioctl(0, termios.FIONREAD, b"\0\0\0\0"))[0])'"#;
    let inner = format!(
        "stty rows 33 cols 77; {LANYARD} run --config {cfg} -- sh -c \"$(cat {agent})\"; echo status=$?; {pending}",
        cfg = cfg.display(),
        agent = agent_file.display(),
    );
    let mut child = Command::new("script")
        .args(["-qefc", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) must be installed");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    loop {
        let mut l = String::new();
        assert!(out.read_line(&mut l).unwrap() > 0, "ended early: {seen:?}");
        let l = l.trim_end_matches(['\r', '\n']).to_owned();
        let ready = l.ends_with("ready");
        seen.push(l);
        if ready {
            break;
        }
    }
    child.stdin.as_mut().unwrap().write_all(b"typed\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    child.stdin.take();
    let _ = child.wait();
    seen.extend(rest.lines().map(|l| l.trim_end_matches('\r').to_owned()));
    let count = |want: &str| seen.iter().filter(|l| l.ends_with(want)).count();
    assert_eq!(count("tiocsti=denied"), 4, "{seen:#?}");
    assert_eq!(count("tiocsti=injected"), 0, "{seen:#?}");
    assert!(
        seen.iter().any(|l| l.ends_with("got=typed")),
        "the agent could not read its terminal: {seen:#?}"
    );
    assert!(seen.iter().any(|l| l == "status=0"), "{seen:#?}");
    assert!(
        seen.iter().any(|l| l.ends_with("size=33 77")),
        "the agent's pty did not get the terminal's size: {seen:#?}"
    );
    assert!(
        seen.iter().any(|l| l == "pending=0"),
        "input was injected into the outer terminal: {seen:#?}"
    );
}

/// Escape 2: `LD_PRELOAD` from `agent.env.set`, pointing into a directory the agent
/// can write, ran agent-supplied code as euid 0 in the launcher. The library
/// must run only inside the agent (proving it was planted and honoured) and
/// never as root.
#[test]
fn a_planted_preload_library_never_runs_as_root() {
    require_root();
    let dir = open_dir();
    let plant = dir.path().join("plant");
    std::fs::create_dir(&plant).unwrap();
    std::fs::set_permissions(&plant, std::fs::Permissions::from_mode(0o777)).unwrap();
    let src = plant.join("evil.c");
    std::fs::write(
        &src,
        format!(
            "#include <stdio.h>\n#include <unistd.h>\n__attribute__((constructor)) static void pwn(void) {{ FILE *f = fopen(\"{}/log\", \"a\"); if (f) {{ fprintf(f, \"euid=%d\\n\", (int)geteuid()); fclose(f); }} }}\n",
            plant.display()
        ),
    )
    .unwrap();
    let so = plant.join("evil.so");
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .output()
        .expect("cc (gcc) must be installed");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    std::fs::write(plant.join("log"), "").unwrap();
    std::fs::set_permissions(plant.join("log"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "agent: {{ writable: [{p}], env: {{ set: {{ LD_PRELOAD: {so}, LD_LIBRARY_PATH: {p}, GCONV_PATH: {p} }} }} }}\n",
            p = plant.display(),
            so = so.display()
        ),
    );
    let (code, lines, err) = agent(&cfg, "echo ran");
    assert_eq!(code, Some(0), "{lines:?}{err}");
    let log = std::fs::read_to_string(plant.join("log")).unwrap();
    assert!(
        log.contains("euid="),
        "the library never loaded in the agent, so the test proves nothing: {err}"
    );
    assert!(
        !log.lines().any(|l| l == "euid=0"),
        "agent-supplied code ran as root:\n{log}"
    );
}

/// Escape 3a: With no PID namespace, a host process of the agent's uid exposed the
/// host's mount namespace at /proc/<pid>/root, socket included. The agent
/// now sees its own processes only, even when the operator gave it a uid
/// that other host processes share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_uid_host_process_is_no_way_to_the_socket() {
    require_root();
    let dir = open_dir();
    let (sock, _api) = spire_like(dir.path()).await;
    let mut host = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sleep",
            "600",
        ])
        .spawn()
        .expect("setpriv (util-linux) must be installed");
    let pid = host.id();
    let cfg = config(
        dir.path(),
        &format!(
            "spiffe: {{ endpoint_socket: unix://{} }}\nagent: {{ user: \"65534\", filesystem: host }}\n",
            sock.display()
        ),
    );
    let script = format!(
        "echo uid=$(id -u)\n[ -e /proc/{pid} ] && echo host_pid=visible || echo host_pid=invisible\necho procs=$(ls /proc | grep -c '^[0-9]')\n{}\n{}",
        try_socket(&Path::new(&format!("/proc/{pid}/root")).join(sock.strip_prefix("/").unwrap())),
        try_socket(&sock),
    );
    let (code, lines, err) = tokio::task::spawn_blocking(move || agent(&cfg, &script))
        .await
        .unwrap();
    let _ = host.kill();
    let _ = host.wait();
    assert_eq!(code, Some(0), "{lines:?}{err}");
    assert_eq!(value(&lines, "uid"), Some("65534"), "{lines:?}");
    assert_eq!(value(&lines, "host_pid"), Some("invisible"), "{lines:?}");
    let procs: u32 = value(&lines, "procs").unwrap().parse().unwrap();
    assert!(procs <= 8, "the agent sees {procs} processes: {lines:?}");
    assert!(
        lines.iter().all(|l| l != "svid=reachable"),
        "the agent reached the Workload API: {lines:?}"
    );
}

/// Escape 3b: Two sandboxes with the default uid could ptrace each other (and use
/// the other's network namespace to get its token). Each now has a uid of
/// its own, and ptrace is refused even within a sandbox.
#[test]
fn two_sandboxes_cannot_touch_each_other() {
    require_root();
    let dir = open_dir();
    let cfg = config(dir.path(), "");
    let victim_script = "echo uid=$(id -u); echo ready; read x";
    let mut victim = spawn(&cfg, &["sh", "-c", victim_script]);
    let mut vout = BufReader::new(victim.stdout.take().unwrap());
    let vlines = lines_until(&mut vout, "ready");
    let vuid: u32 = value(&vlines, "uid").unwrap().parse().unwrap();
    let vpids = processes_of(vuid);
    assert!(!vpids.is_empty());

    let attack = r#"
echo uid=$(id -u)
read pids
for p in $pids; do
  /usr/bin/python3 -c 'import ctypes,sys; l=ctypes.CDLL(None,use_errno=True); r=l.ptrace(16,int(sys.argv[1]),0,0); print("ptrace=" + ("attached" if r==0 else "denied"))' $p
  kill -0 $p 2>/dev/null && echo signal=delivered || echo signal=refused
done
sleep 30 & child=$!
/usr/bin/python3 -c 'import ctypes,sys; l=ctypes.CDLL(None,use_errno=True); r=l.ptrace(16,int(sys.argv[1]),0,0); print("own_child_ptrace=" + ("attached" if r==0 else "denied"))' $child
kill $child
echo done
"#;
    let mut attacker = spawn(&cfg, &["sh", "-c", attack]);
    let line = vpids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" ")
        + "\n";
    attacker
        .stdin
        .as_mut()
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    let mut aout = BufReader::new(attacker.stdout.take().unwrap());
    let alines = lines_until(&mut aout, "done");
    let (code, _, err) = finish(attacker);
    assert_eq!(code, Some(0), "{alines:?}{err}");
    victim.stdin.as_mut().unwrap().write_all(b"bye\n").unwrap();
    let (vcode, _, verr) = finish(victim);
    assert_eq!(vcode, Some(0), "{verr}");

    let auid: u32 = value(&alines, "uid").unwrap().parse().unwrap();
    assert_ne!(auid, vuid, "two sandboxes share a uid");
    assert!(alines.iter().any(|l| l == "ptrace=denied"), "{alines:?}");
    assert!(!alines.iter().any(|l| l == "ptrace=attached"), "{alines:?}");
    assert!(
        !alines.iter().any(|l| l == "signal=delivered"),
        "{alines:?}"
    );
    assert_eq!(
        value(&alines, "own_child_ptrace"),
        Some("denied"),
        "seccomp must refuse ptrace: {alines:?}"
    );
}

/// Escape 4a: A directory to hide that did not exist at start was skipped; SPIRE
/// created it later and the agent got an SVID. It is now created empty at
/// start and covered, so what appears in it later stays hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_directory_created_after_start_stays_hidden() {
    require_root();
    let dir = open_dir();
    let late = dir.path().join("late");
    let sock = late.join("agent.sock");
    let cfg = config(
        dir.path(),
        &format!(
            "spiffe: {{ endpoint_socket: unix://{} }}\nagent: {{ filesystem: host }}\n",
            sock.display()
        ),
    );
    let script = format!(
        "echo ready\nread go\n{}\nls -A {} | wc -l | sed 's/^/entries=/'\necho done",
        try_socket(&sock),
        late.display()
    );
    let mut child = spawn(&cfg, &["sh", "-c", &script]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let _ = lines_until(&mut out, "ready");
    assert!(
        late.is_dir(),
        "Lanyard did not create the directory it must hide"
    );
    // SPIRE starts now, after Lanyard.
    let api = DevWorkloadApi::new(ID, Duration::from_secs(300)).unwrap();
    let _running = api.serve(&sock).await.unwrap();
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let l = lines_until(&mut out, "done");
        (l, finish(child))
    })
    .await
    .unwrap();
    let (lines, (code, _, err)) = lines;
    assert_eq!(code, Some(0), "{lines:?}{err}");
    assert_eq!(value(&lines, "svid"), Some("unreachable"), "{lines:?}");
    assert_eq!(value(&lines, "entries"), Some("0"), "{lines:?}");
    // The probe itself works: from the host, the same socket answers.
    std::os::unix::net::UnixStream::connect(&sock).expect("the Workload API is up");
    assert!(err.contains("created a missing directory"), "{err}");
}

/// Escape 4b: `%2e%2e` in the socket address was normalised by the Workload API
/// client but not by the hiding code, and a symlinked socket directory hid
/// the link's directory instead of the target. Both now resolve to the
/// directory the client dials, which is covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hidden_socket_is_the_one_the_client_dials() {
    require_root();
    let dir = open_dir();
    let (sock, _api) = spire_like(dir.path()).await;
    std::fs::create_dir(dir.path().join("x")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("spire"), dir.path().join("alias")).unwrap();
    for address in [
        format!("unix://{}/x/%2e%2e/spire/agent.sock", dir.path().display()),
        format!("unix://{}/alias/agent.sock", dir.path().display()),
    ] {
        let cfg = config(
            dir.path(),
            &format!(
                "spiffe: {{ endpoint_socket: \"{address}\" }}\nagent: {{ filesystem: host }}\n"
            ),
        );
        let script = try_socket(&sock);
        let (code, lines, err) = tokio::task::spawn_blocking(move || agent(&cfg, &script))
            .await
            .unwrap();
        assert_eq!(code, Some(0), "{address}: {lines:?}{err}");
        assert_eq!(
            value(&lines, "svid"),
            Some("unreachable"),
            "{address}: {lines:?}"
        );
        std::fs::remove_dir_all(dir.path().join("secrets")).unwrap();
    }
}

/// Escape 5: The config file (with `extra_params`, where a `client_secret` lives)
/// was readable by the agent, and its path was on Lanyard's visible command
/// line. It is covered now, and Lanyard's processes are not visible at all.
#[test]
fn the_config_file_is_hidden() {
    require_root();
    let dir = open_dir();
    let wl = dir.path().join("wl");
    let cfg = config(
        dir.path(),
        &format!(
            "  g: {{ token_grant: {{ grant: client_credentials, token_endpoint: \"https://issuer.test/token\", extra_params: {{ client_secret: config-secret-value }} }} }}\nspiffe: {{ endpoint_socket: unix://{}/agent.sock }}\nagent: {{ filesystem: host }}\n",
            wl.display()
        ),
    );
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The agent's own command names the path; the only other process it can
    // see is the sandbox's init.
    let script = format!(
        "cat {} 2>&1; echo; tr '\\0' ' ' < /proc/1/cmdline; echo; echo lanyards=$(cat /proc/[0-9]*/comm | grep -c lanyard); echo done",
        cfg.display()
    );
    let (code, lines, err) = agent(&cfg, &script);
    assert_eq!(code, Some(0), "{lines:?}{err}");
    let all = lines.join("\n");
    assert!(!all.contains("config-secret-value"), "{all}");
    assert!(
        !all.contains("providers"),
        "the agent read the config: {all}"
    );
    assert!(
        !all.contains(&cfg.display().to_string()),
        "the config path is visible: {all}"
    );
    assert!(
        !all.contains(" run "),
        "Lanyard's own command line is visible: {all}"
    );
    assert_eq!(value(&lines, "lanyards"), Some("1"), "{all}");
    assert!(
        wl.is_dir(),
        "the socket directory was not created to be hidden"
    );
}

/// Escape 6: Background and `setsid` children of the agent kept running after
/// Lanyard exited, and SIGUSR1 killed Lanyard outright, leaving the agent
/// under PID 1. Nothing of the sandbox may survive Lanyard, however Lanyard
/// ends: the agent's exit, a forwarded signal, a fatal one, or SIGKILL.
#[test]
fn nothing_outlives_lanyard() {
    require_root();
    let dir = open_dir();
    let cfg = config(dir.path(), "");
    let script = "setsid sleep 600 & (sleep 600 &); nohup sleep 600 >/dev/null 2>&1 & echo uid=$(id -u); echo ready; ";
    for (how, tail, want) in [
        ("agent exits", "read x; exit 0", Some(0)),
        ("SIGUSR1", "sleep 600", Some(128 + 10)),
        ("SIGALRM", "sleep 600", Some(128 + 14)),
        ("SIGKILL", "sleep 600", None),
    ] {
        let mut child = spawn(&cfg, &["sh", "-c", &format!("{script}{tail}")]);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let lines = lines_until(&mut out, "ready");
        let uid: u32 = value(&lines, "uid").unwrap().parse().unwrap();
        assert!(
            processes_of(uid).len() >= 3,
            "{how}: the background children never started"
        );
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        use nix::sys::signal::Signal;
        match how {
            "SIGUSR1" => nix::sys::signal::kill(pid, Signal::SIGUSR1).unwrap(),
            "SIGALRM" => nix::sys::signal::kill(pid, Signal::SIGALRM).unwrap(),
            "SIGKILL" => nix::sys::signal::kill(pid, Signal::SIGKILL).unwrap(),
            _ => child.stdin.as_mut().unwrap().write_all(b"exit\n").unwrap(),
        }
        let (code, _, err) = finish(child);
        assert_eq!(code, want, "{how}: {err}");
        assert!(
            eventually(Duration::from_secs(10), || processes_of(uid).is_empty()),
            "{how}: sandbox processes outlived Lanyard: {:?}",
            processes_of(uid)
        );
    }
}

/// Escape 7: `agent.user: 0` was accepted silently; root in the sandbox unmounted
/// the cover and reached the socket. `check` and `run` both refuse it, and
/// group 0, naming the field.
#[test]
fn root_in_the_sandbox_is_refused() {
    require_root();
    let dir = open_dir();
    for (agent, field) in [
        ("agent: { user: \"0\" }\n", "agent.user"),
        ("agent: { user: root }\n", "agent.user"),
        ("agent: { user: \"65534\", group: \"0\" }\n", "agent.group"),
    ] {
        let cfg = config(dir.path(), agent);
        let out = Command::new(LANYARD)
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "check {agent}: {err}");
        assert!(
            err.contains(&format!("{}: {field}: ", cfg.display())),
            "{err}"
        );
        let (code, lines, err) = agent_run(&cfg);
        assert_eq!(code, Some(64), "run {agent}: {err}");
        assert!(lines.is_empty(), "the agent ran: {lines:?}");
        std::fs::remove_dir_all(dir.path().join("secrets")).unwrap();
    }
}

fn agent_run(cfg: &Path) -> (Option<i32>, Vec<String>, String) {
    agent(cfg, "echo agent-ran")
}

/// `check` validates `agent.*` as `run` would: env patterns, paths, ranges.
#[test]
fn check_validates_the_agent_section() {
    let dir = open_dir();
    for (agent, field) in [
        (
            "agent: { env: { deny: [\"AWS_[A-Z]*\"] } }\n",
            "agent.env.deny[0]",
        ),
        ("agent: { uid_range: [0, 10] }\n", "agent.uid_range"),
        ("agent: { workdir: /nonexistent/dir }\n", "agent.workdir"),
        (
            "agent: { read_only: [/nonexistent/ro] }\n",
            "agent.read_only[0]",
        ),
        (
            "agent: { filesystem: host, read_only: [/usr] }\n",
            "agent.read_only",
        ),
        ("agent: { hide: [/] }\n", "agent.hide[0]"),
    ] {
        let cfg = config(dir.path(), agent);
        let out = Command::new(LANYARD)
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{agent}: {err}");
        assert!(err.contains(&format!(": {field}: ")), "{agent}: {err}");
        std::fs::remove_dir_all(dir.path().join("secrets")).unwrap();
    }
    // A hide path that reaches the CA directory through `..` is compared resolved.
    let cfg = config(
        dir.path(),
        &format!("agent: {{ hide: [{}/secrets/..] }}\n", dir.path().display()),
    );
    let out = Command::new(LANYARD)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("CA directory"), "{err}");
}

/// Defence in depth, checked from inside: no capability can come back, the
/// seccomp filter is on and refuses namespaces and keyrings, and Landlock
/// confines writes even where the mount namespace would allow them (host
/// root, a world-writable directory outside the workdir).
#[test]
fn the_kernel_surface_is_narrowed() {
    require_root();
    let dir = open_dir();
    // Outside /tmp, which stays writable in a host root.
    let outside = tempfile::tempdir_in("/var/tmp").unwrap();
    let open = outside.path().join("world-writable");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "agent: {{ filesystem: host, workdir: {} }}\n",
            work.display()
        ),
    );
    let script = format!(
        r#"
grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr -d ' \t' | tr ':' '='
unshare -U true 2>/dev/null && echo userns=created || echo userns=refused
/usr/bin/python3 -c 'import ctypes; l=ctypes.CDLL(None,use_errno=True); print("keyctl=" + ("allowed" if l.syscall(250,0,0,0,0,0)!=-1 or ctypes.get_errno()!=1 else "refused"))'
touch {open}/x 2>/dev/null && echo outside_write=allowed || echo outside_write=refused
touch ./x 2>/dev/null && echo workdir_write=allowed || echo workdir_write=refused
echo done
"#,
        open = open.display()
    );
    let (code, lines, err) = agent(&cfg, &script);
    assert_eq!(code, Some(0), "{lines:?}{err}");
    assert!(
        !err.contains("landlock unavailable"),
        "this kernel has no Landlock; the suite needs it: {err}"
    );
    for want in [
        "CapBnd=0000000000000000",
        "CapEff=0000000000000000",
        "NoNewPrivs=1",
        "Seccomp=2",
        "userns=refused",
        "keyctl=refused",
        "outside_write=refused",
        "workdir_write=allowed",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "missing {want}: {lines:?}\n{err}"
        );
    }
    assert!(!open.join("x").exists());
    assert!(work.join("x").exists());
}
