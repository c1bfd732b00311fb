//! Helpers shared by the supervisor's integration suites.

#![allow(dead_code, reason = "each suite uses a different subset")]

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub(crate) const LANYARD: &str = env!("CARGO_BIN_EXE_lanyard");

/// The address a `lanyard proxy` child prints first ("listening on ADDR").
/// Its stdout must be piped; the rest of stdout is dropped.
pub(crate) fn listening_addr(child: &mut Child) -> String {
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout piped"))
        .read_line(&mut line)
        .expect("read stdout");
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned()
}

pub(crate) fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests create namespaces and switch users: run them as root (CI does)"
    );
}

/// A directory tree the unprivileged agent can traverse (tempdirs are 0700).
pub(crate) fn open_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

pub(crate) fn private_dir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

pub(crate) fn config(dir: &Path, extra: &str) -> PathBuf {
    let secrets = private_dir(dir, "secrets");
    std::fs::write(secrets.join("token"), "static-token-never-seen-by-agent").unwrap();
    let f = dir.join("lanyard.yaml");
    std::fs::write(
        &f,
        format!(
            "listen: 127.0.0.1:0\nca: {{ dir: {ca} }}\nproviders:\n  s: {{ static: {{ token_file: {tok} }} }}\n{extra}",
            ca = dir.join("ca").display(),
            tok = secrets.join("token").display()
        ),
    )
    .unwrap();
    f
}

pub(crate) fn spawn(config: &Path, args: &[&str]) -> Child {
    Command::new(LANYARD)
        .args(["run", "--config"])
        .arg(config)
        .arg("--")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub(crate) fn finish(mut child: Child) -> (Option<i32>, String, String) {
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn lines_until(out: &mut impl BufRead, marker: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let mut l = String::new();
        assert!(
            out.read_line(&mut l).unwrap() > 0,
            "agent output ended before {marker:?}: {seen:?}"
        );
        let l = l.trim_end().to_owned();
        if l == marker {
            return seen;
        }
        seen.push(l);
    }
}

/// Host pids of every process whose real, effective, saved or fs uid is `uid`.
pub(crate) fn processes_of(uid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let uids = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap_or("");
        if uids.split_whitespace().any(|u| u == uid.to_string()) {
            out.push(pid);
        }
    }
    out
}

/// Polls `cond` until it holds or `within` passes; the kernel tears a
/// namespace down asynchronously after a SIGKILL from outside it.
pub(crate) fn eventually(within: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The value of the first `key=value` line.
pub(crate) fn value<'a>(lines: &'a [String], key: &str) -> Option<&'a str> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// A shell line printing `KEY=reachable` when `connect()` to the unix socket
/// succeeds, `KEY=unreachable` otherwise.
pub(crate) fn probe_socket(sock: &Path, key: &str) -> String {
    format!(
        "/usr/bin/python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' {} 2>/dev/null && echo {key}=reachable || echo {key}=unreachable",
        sock.display()
    )
}
