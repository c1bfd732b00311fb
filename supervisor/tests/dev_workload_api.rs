//! The development Workload API, exercised by the real `spiffe` client and by
//! a raw gRPC call that omits the required security header.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lanyard_supervisor::dev::DevWorkloadApi;

const ID: &str = "spiffe://dev.test/agent";

#[tokio::test]
async fn spiffe_client_gets_svids_and_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let api = DevWorkloadApi::new(ID, Duration::from_secs(120)).unwrap();
    let running = api.serve(&dir.path().join("wl.sock")).await.unwrap();
    let client = spiffe::WorkloadApiClient::connect_to(running.endpoint())
        .await
        .unwrap();
    let svid = client
        .fetch_jwt_svid(["svc-a", "svc-b"], None)
        .await
        .unwrap();
    assert_eq!(svid.spiffe_id().to_string(), ID);
    assert_eq!(svid.audience(), ["svc-a", "svc-b"]);
    assert_eq!(api.signer().verify(svid.token(), "svc-b").unwrap(), ID);
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    let td: spiffe::TrustDomain = "dev.test".parse().unwrap();
    let bundle = bundles.get(&td).expect("bundle for the trust domain");
    assert!(
        bundle.find_jwt_authority(svid.key_id()).is_some(),
        "signing key missing from the bundle"
    );
    // An empty audience is refused, as SPIRE does.
    let empty: [&str; 0] = [];
    assert!(
        client
            .fetch_jwt_svid(empty, None)
            .await
            .unwrap_err()
            .is_invalid_argument()
    );
    running.stop().await;
}

#[tokio::test]
async fn calls_without_the_security_header_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("wl.sock");
    let api = DevWorkloadApi::new(ID, Duration::from_secs(120)).unwrap();
    let running = api.serve(&sock).await.unwrap();
    let io = TokioIo::new(tokio::net::UnixStream::connect(&sock).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    // A well-formed FetchJWTSVID for audience "x": field 1, length 1, "x".
    let body = Bytes::from_static(&[0, 0, 0, 0, 3, 0x0a, 1, b'x']);
    let req = http::Request::post("http://localhost/SpiffeWorkloadAPI/FetchJWTSVID")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "3");
    assert_eq!(
        resp.headers()["grpc-message"],
        "security header missing from request"
    );
    assert!(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    assert_eq!(
        api.stats
            .jwt_svids
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(
        api.stats.refused.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    running.stop().await;
    assert!(!sock.exists(), "socket left behind");
}

#[tokio::test]
async fn the_binary_says_it_is_for_development() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("wl.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args([
            "dev",
            "workload-api",
            "--spiffe-id",
            ID,
            "--ttl",
            "60s",
            "--socket",
        ])
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        format!("listening on unix://{}", sock.display())
    );
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", sock.display()))
        .await
        .unwrap();
    assert_eq!(
        client
            .fetch_jwt_svid(["a"], None)
            .await
            .unwrap()
            .spiffe_id()
            .to_string(),
        ID
    );
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DEVELOPMENT ONLY"), "{err}");
    // A bad SPIFFE ID is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args([
            "dev",
            "workload-api",
            "--spiffe-id",
            "not-an-id",
            "--socket",
        ])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn only_a_stale_socket_is_ever_replaced() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file is left alone.
    let file = dir.path().join("file.sock");
    std::fs::write(&file, "precious").unwrap();
    let api = DevWorkloadApi::new(ID, Duration::from_secs(120)).unwrap();
    let err = api.serve(&file).await.unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");

    // A live Workload API is not silently replaced.
    let sock = dir.path().join("wl.sock");
    let first = api.serve(&sock).await.unwrap();
    let other = DevWorkloadApi::new("spiffe://dev.test/other", Duration::from_secs(120)).unwrap();
    let err = other.serve(&sock).await.unwrap_err();
    assert!(err.to_string().contains("already answers"), "{err}");
    let client = spiffe::WorkloadApiClient::connect_to(first.endpoint())
        .await
        .unwrap();
    let svid = client.fetch_jwt_svid(["a"], None).await.unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        ID,
        "the first server still answers"
    );

    // A socket nobody answers on is stale: replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let running = other.serve(&stale).await.unwrap();
    running.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn development_svids_say_so() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let api = DevWorkloadApi::new(ID, Duration::from_secs(120)).unwrap();
    let running = api.serve(&dir.path().join("wl.sock")).await.unwrap();
    let client = spiffe::WorkloadApiClient::connect_to(running.endpoint())
        .await
        .unwrap();
    let svid = client.fetch_jwt_svid(["a"], None).await.unwrap();
    let claims = svid.token().split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert!(
        claims["lanyard_dev"]
            .as_str()
            .is_some_and(|s| s.contains("no attestation")),
        "{claims}"
    );
    running.stop().await;
}
