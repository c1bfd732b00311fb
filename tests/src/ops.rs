//! Talking to the admin listener, and reading `/metrics` with the Prometheus
//! project's own OpenMetrics parser (`prometheus_client` for Python, from
//! Debian), so the exposition is checked by a parser we did not write.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One sample: metric name (with `_total`, `_bucket`... as exposed), labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

/// Parses OpenMetrics text; panics (failing the test) if the parser rejects it.
pub fn parse(text: &str) -> Vec<Sample> {
    use std::io::Write;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "/usr/bin/python3 (scripts/install-deps installs it with python3-prometheus-client)",
        );
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let out = child.wait_with_output().expect("parser");
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(String, BTreeMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).expect("parser output");
    rows.into_iter()
        .map(|(name, labels, value)| Sample {
            name,
            labels,
            value,
        })
        .collect()
}

/// The value of the sample `name` whose labels include all of `labels`
/// (0 when absent: counters with no events yet are not exposed).
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// An admin response.
#[derive(Debug)]
pub struct AdminResponse {
    /// Status code.
    pub status: u16,
    /// Response head.
    pub head: String,
    /// Body.
    pub body: String,
}

/// One request to the admin listener (`Connection: close`, whole body read).
pub async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> AdminResponse {
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    // Small bodies: hyper sends Content-Length, never chunks, for a full body.
    AdminResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// `GET /metrics`, parsed.
pub async fn metrics(addr: SocketAddr, token: Option<&str>) -> Vec<Sample> {
    let r = admin(addr, "GET", "/metrics", token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{}",
        r.head
    );
    parse(&r.body)
}
