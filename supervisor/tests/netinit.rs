//! `lanyard init` against the real kernel: a network namespace made for the
//! test (a pod's, in miniature: loopback plus a veth pair whose far end has
//! no address, carrying documentation-range routes into a sink, so nothing
//! can leave the machine), the real
//! rules installed by the real binary, a stand-in transparent listener run
//! as Lanyard's uid reporting the original destinations it receives, and an
//! agent as another uid, with no proxy settings, trying every way out.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use std::process::Command;

const LANYARD: &str = env!("CARGO_BIN_EXE_lanyard");
const PROXY_UID: u32 = 64001;
const AGENT_UID: u32 = 64002;

/// Accepts redirected connections on 0.0.0.0:15001 and [::]:15001, reads
/// SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST, writes `orig=ADDR` back and logs it.
const LISTENER: &str = r#"
import select, socket, struct, sys
log = open(sys.argv[1], "a", buffering=1)
v4 = socket.socket(socket.AF_INET); v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
v4.bind(("0.0.0.0", 15001)); v4.listen(16)
v6 = socket.socket(socket.AF_INET6); v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
v6.bind(("::", 15001)); v6.listen(16)
admin = socket.socket(socket.AF_INET); admin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
admin.bind(("0.0.0.0", 9901)); admin.listen(16)
open(sys.argv[2], "w").close()
while True:
    for l in select.select([v4, v6, admin], [], [])[0]:
        c, _ = l.accept()
        if l is admin:
            c.sendall(b"admin\n"); c.close(); continue
        if l is v4:
            raw = c.getsockopt(socket.SOL_IP, 80, 16)
            port, ip = struct.unpack("!2xH4s8x", raw)
            dst = "%s:%d" % (socket.inet_ntoa(ip), port)
        else:
            raw = c.getsockopt(socket.IPPROTO_IPV6, 80, 28)
            port = struct.unpack("!H", raw[2:4])[0]
            dst = "[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port)
        log.write(dst + "\n")
        c.sendall(("orig=%s\n" % dst).encode())
        c.close()
"#;

/// Every way out an agent (or Lanyard itself) might take; one line each.
const PROBES: &str = r#"
import socket, subprocess, sys
who = sys.argv[1]
def tcp(host, port, family=socket.AF_INET):
    s = socket.socket(family); s.settimeout(1)
    try:
        s.connect((host, port))
        return s.recv(100).decode().strip() or "connected"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "error:%d" % e.errno
def udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", (host, port)); return "sent"
    except OSError as e:
        return "blocked:%d" % e.errno
print(who, "tcp4", tcp("198.51.100.7", 443))
print(who, "tcp6", tcp("2001:db8:5::7", 443, socket.AF_INET6))
print(who, "excluded_port", tcp("198.51.100.7", 9090))
print(who, "udp", udp("198.51.100.7", 443))
print(who, "dns", udp("192.0.2.53", 53))
print(who, "admin_loopback", tcp("127.0.0.1", 9901))
print(who, "admin_pod_ip", tcp("192.0.2.2", 9901))
r = subprocess.run(["nft", "flush", "ruleset"], capture_output=True)
print(who, "flush", "ok" if r.returncode == 0 else "denied")
"#;

/// What the script prints about the installed rules for each backend:
/// after installing twice (one copy) and after cleanup (none).
struct Backend {
    name: &'static str,
    count: &'static str,
    once: &'static str,
}

const NFTABLES: Backend = Backend {
    name: "nftables",
    count: "nft list tables | grep -c 'inet lanyard' || true",
    once: "1",
};

// Two jumps (nat, filter) and one redirect per family.
const IPTABLES: Backend = Backend {
    name: "iptables",
    count: "echo $(( $( (iptables-save; ip6tables-save) | grep -c -e '-j LANYARD_OUTPUT' -e '-j REDIRECT') ))",
    once: "6",
};

#[test]
fn the_kernel_redirects_the_agent_and_nothing_else_nftables() {
    kernel_path(&NFTABLES);
}

#[test]
fn the_kernel_redirects_the_agent_and_nothing_else_iptables() {
    kernel_path(&IPTABLES);
}

fn kernel_path(backend: &Backend) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test creates a network namespace: run it as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let listener = dir.path().join("listener.py");
    let probes = dir.path().join("probes.py");
    std::fs::write(&listener, LISTENER).unwrap();
    std::fs::write(&probes, PROBES).unwrap();
    let log = dir.path().join("orig.log");
    let ready = dir.path().join("ready");
    let script = format!(
        r#"set -e
ip link set lo up
ip link add d0 type veth peer name d1
ip link set d1 up
ip addr add 192.0.2.2/24 dev d0
ip -6 addr add 2001:db8::2/64 dev d0 nodad
ip link set d0 up
ip route add default dev d0
ip -6 route add default dev d0
{lanyard} init --backend {backend} --proxy-uid {proxy} --agent-uid {agent} --exclude-port 9090 --admin-port 9901 --dns 192.0.2.53
{lanyard} init --backend {backend} --proxy-uid {proxy} --agent-uid {agent} --exclude-port 9090 --admin-port 9901 --dns 192.0.2.53
echo "installed=$({count})"
setpriv --reuid={proxy} --regid={proxy} --clear-groups /usr/bin/python3 {listener} {log} {ready} >/dev/null 2>&1 &
listener=$!
trap 'kill $listener 2>/dev/null || true' EXIT
i=0; while [ ! -e {ready} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
setpriv --reuid={agent} --regid={agent} --clear-groups /usr/bin/python3 {probes} agent
setpriv --reuid={proxy} --regid={proxy} --clear-groups /usr/bin/python3 {probes} proxy
{lanyard} init --backend {backend} --cleanup
echo "after_cleanup=$({count})"
"#,
        lanyard = LANYARD,
        backend = backend.name,
        count = backend.count,
        proxy = PROXY_UID,
        agent = AGENT_UID,
        listener = listener.display(),
        probes = probes.display(),
        log = log.display(),
        ready = ready.display(),
    );
    let out = Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux) must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let has = |want: &str| lines.contains(&want);
    // Installing twice leaves one copy; cleanup removes it.
    let installed = format!("installed={}", backend.once);
    for want in [
        installed.as_str(),
        "after_cleanup=0",
        // The agent's TCP reaches the listener with its destination intact, both families.
        "agent tcp4 orig=198.51.100.7:443",
        "agent tcp6 orig=[2001:db8:5::7]:443",
        // An excluded port goes out as it is (into the sink: no answer).
        "agent excluded_port timeout",
        // UDP is refused, DNS to the pod's resolver allowed.
        "agent udp blocked:1",
        "agent dns sent",
        // No capability: the rules stay.
        "agent flush denied",
        // The admin listener is Lanyard's alone, on loopback and the pod address alike.
        "agent admin_loopback error:111",
        "agent admin_pod_ip error:111",
        "proxy admin_loopback admin",
        "proxy admin_pod_ip admin",
        // Lanyard's own connections are never redirected into itself.
        "proxy tcp4 timeout",
        "proxy tcp6 timeout",
    ] {
        assert!(has(want), "missing {want:?} in:\n{stdout}\n{stderr}");
    }
    let seen = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["198.51.100.7:443", "[2001:db8:5::7]:443"],
        "the listener got connections it should not have"
    );
}

#[test]
fn init_refuses_the_agent_running_as_lanyard() {
    let out = Command::new(LANYARD)
        .args([
            "init",
            "--proxy-uid",
            "64001",
            "--agent-uid",
            "64001",
            "--dry-run",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--agent-uid"), "{err}");
}
