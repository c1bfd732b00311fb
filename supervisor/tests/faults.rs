//! Faults of the process itself, through the real binary: running out of
//! file descriptors (accept keeps working once the pressure goes) and a CA
//! directory it cannot write at start (a clear error naming it, no serving
//! with trust files the agent cannot read).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LANYARD: &str = env!("CARGO_BIN_EXE_lanyard");

/// Reads one HTTP response head (and what fits in the first read of the body).
fn get(addr: &str, target: &str, host: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn accept_recovers_when_file_descriptors_run_out_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt
        .block_on(lanyard_examples::echo::start(
            ([127, 0, 0, 1], 0).into(),
            "plain",
            None,
        ))
        .unwrap();
    let port = up.addr.port();
    let cfg = dir.path().join("lanyard.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\nca: {{ dir: {} }}\negress: {{ default: allow, allow_private_addresses: true }}\nlimits: {{ header_read_timeout: 60s }}\n",
            dir.path().join("ca").display()
        ),
    )
    .unwrap();
    // 64 descriptors: the runtime, listener and logs take a dozen or so; the
    // rest go to the first connections.
    let mut child = Command::new("prlimit")
        .args(["--nofile=64:64", LANYARD, "proxy", "--config"])
        .arg(&cfg)
        .env("LANYARD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) must be installed");
    let addr = common::listening_addr(&mut child);
    let target = format!("http://127.0.0.1:{port}/x");
    let host = format!("127.0.0.1:{port}");

    // Served before the pressure.
    let out = get(&addr, &target, &host).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // Idle connections until Lanyard cannot accept more: 100 is well past 64.
    let hogs: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    // Lanyard has taken all it can: its descriptor table is full.
    let pid = child.id();
    let full = Instant::now();
    while std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
        < 64
    {
        assert!(
            full.elapsed() < Duration::from_secs(10),
            "Lanyard never ran out of descriptors"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A request now waits in the kernel's queue (Lanyard has no descriptor
    // to accept it with)...
    let waiting = {
        let (addr, target, host) = (addr.clone(), target.clone(), host.clone());
        std::thread::spawn(move || get(&addr, &target, &host))
    };
    // ...and is served once the pressure goes.
    let released = Instant::now();
    drop(hogs);
    let out = waiting.join().unwrap().unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(released.elapsed() < Duration::from_secs(15));
    // And so is everything after it.
    for _ in 0..5 {
        let out = get(&addr, &target, &host).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "Lanyard exited under fd pressure"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains("accept failed"),
        "the pressure was never reached: {log}"
    );
    // The backoff keeps the log (and the CPU) from spinning: 50 ms a line at most.
    assert!(log.matches("accept failed").count() < 1000, "accept spun");
}

#[test]
fn an_unwritable_ca_directory_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the CA directory's parent should be: nothing,
    // not even root, can create the directory.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let ca = blocker.join("ca");
    let cfg = dir.path().join("lanyard.yaml");
    std::fs::write(
        &cfg,
        format!("listen: 127.0.0.1:0\nca: {{ dir: {} }}\n", ca.display()),
    )
    .unwrap();
    let out = Command::new(LANYARD)
        .args(["proxy", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "it listened: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&ca.display().to_string()), "{err}");
}
