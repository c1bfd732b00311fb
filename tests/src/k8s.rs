//! The chart under test: helm and kubeconform from `scripts/install-k8s-tools`
//! (built with Go, pinned; strict schemas derived from the Kubernetes OpenAPI
//! spec), rendering, and the security properties every rendered pod must hold.
//!
//! Missing tools are a failure, not a skip: the install script runs when
//! `LANYARD_K8S_TOOLS` is not set (a no-op once its cache is filled).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Where the repository is.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// The chart.
pub fn chart() -> PathBuf {
    repo().join("charts/lanyard")
}

/// The Kubernetes release the schemas come from (see scripts/install-k8s-tools).
pub const KUBE_VERSION: &str = "1.37.2";

/// helm, kubeconform and the schema directory.
pub struct Tools {
    /// `helm`.
    pub helm: PathBuf,
    /// `kubeconform`.
    pub kubeconform: PathBuf,
    /// `-schema-location` root.
    pub schemas: PathBuf,
}

/// Finds (or builds) the tools.
pub fn tools() -> Tools {
    let dir = match std::env::var_os("LANYARD_K8S_TOOLS") {
        Some(d) => PathBuf::from(d),
        None => {
            let out = Command::new(repo().join("scripts/install-k8s-tools"))
                .output()
                .expect("run scripts/install-k8s-tools");
            assert!(
                out.status.success(),
                "scripts/install-k8s-tools failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    let t = Tools {
        helm: dir.join("bin/helm"),
        kubeconform: dir.join("bin/kubeconform"),
        schemas: dir.join("schemas"),
    };
    assert!(
        t.helm.is_file() && t.kubeconform.is_file(),
        "helm/kubeconform missing in {}: run scripts/install-k8s-tools (scripts/test does)",
        dir.display()
    );
    let strict = t.schemas.join(format!("v{KUBE_VERSION}-standalone-strict"));
    assert!(
        strict.join("pod-v1.json").is_file(),
        "no Kubernetes schemas in {}",
        strict.display()
    );
    t
}

/// What a command printed, and whether it succeeded.
#[derive(Debug)]
pub struct Output {
    /// Exit status 0.
    pub ok: bool,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Tools {
    /// `helm template` of the chart with these values files and `--set`s.
    pub fn template(&self, values: &[&Path], sets: &[&str]) -> Output {
        let mut cmd = Command::new(&self.helm);
        cmd.args(["template", "sandbox"])
            .arg(chart())
            .args(["--kube-version", KUBE_VERSION]);
        for v in values {
            cmd.arg("-f").arg(v);
        }
        for s in sets {
            cmd.args(["--set", s]);
        }
        run(&mut cmd)
    }

    /// `helm lint --strict` with these values files.
    pub fn lint(&self, values: &[&Path]) -> Output {
        let mut cmd = Command::new(&self.helm);
        cmd.args(["lint", "--strict"])
            .arg(chart())
            .args(["--kube-version", KUBE_VERSION]);
        for v in values {
            cmd.arg("-f").arg(v);
        }
        run(&mut cmd)
    }

    /// `kubeconform -strict` of `manifests` against the derived schemas;
    /// a kind with no schema is an error, not a skip.
    pub fn kubeconform(&self, manifests: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(&self.kubeconform)
            .args(["-strict", "-summary", "-kubernetes-version", KUBE_VERSION])
            .arg("-schema-location")
            .arg(&self.schemas)
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn kubeconform");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(manifests.as_bytes())
            .expect("write manifests");
        let out = child.wait_with_output().expect("kubeconform");
        Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The documents of a multi-document YAML stream, as JSON values (empty ones dropped).
pub fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The pod spec of a Pod, Deployment, Job, StatefulSet or DaemonSet.
pub fn pod_spec(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Pod" => doc.get("spec"),
        "Deployment" | "Job" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => {
            doc.pointer("/spec/template/spec")
        }
        _ => None,
    }
}

fn containers(spec: &Value) -> impl Iterator<Item = (&'static str, &Value)> {
    let list = |key: &'static str| {
        spec[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(move |c| (key, c))
    };
    list("initContainers").chain(list("containers"))
}

fn name(c: &Value) -> &str {
    c["name"].as_str().unwrap_or("?")
}

/// Volumes that carry identity or key material: the Workload API socket
/// (the SPIFFE CSI driver, or any hostPath), Lanyard's state and CA key.
fn secret_volumes(spec: &Value) -> Vec<String> {
    spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| {
            v["csi"]["driver"].as_str() == Some("csi.spiffe.io")
                || v.get("hostPath").is_some()
                || matches!(
                    v["name"].as_str(),
                    Some(
                        "spiffe-workload-api"
                            | "lanyard-state"
                            | "lanyard-ca-key"
                            | "lanyard-admin-token"
                    )
                )
        })
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect()
}

/// Every way the pod spec breaks the sandbox's rules, one line each; empty
/// when it holds them all:
/// - the Workload API socket and Lanyard's key material are mounted in the
///   `lanyard` sidecar and in no other container;
/// - only `lanyard-init` adds a capability, and only `NET_ADMIN`; every
///   container drops `ALL`, none is privileged or may escalate;
/// - no container but Lanyard runs as Lanyard's uid, and each sets its uid;
/// - Lanyard is a native sidecar (an init container that restarts) with a
///   startup probe, so the agent starts after it;
/// - the pod shares no host namespace, no process namespace, and mounts no
///   service account token.
pub fn violations(spec: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let sidecar = containers(spec).find(|(_, c)| name(c) == "lanyard");
    let Some((list, sidecar)) = sidecar else {
        return vec!["no lanyard container".into()];
    };
    if list != "initContainers" || sidecar["restartPolicy"].as_str() != Some("Always") {
        v.push("lanyard is not a native sidecar (initContainers, restartPolicy: Always)".into());
    }
    if sidecar.get("startupProbe").is_none() {
        v.push("lanyard has no startup probe: the agent could start before it".into());
    }
    let admin_port = sidecar["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "admin")
        .and_then(|p| p["containerPort"].as_u64());
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let p = &sidecar[probe]["httpGet"];
        if p["path"].as_str() != Some(path) || p["port"].as_str() != Some("admin") {
            v.push(format!(
                "lanyard's {probe} is not GET {path} on the admin port"
            ));
        }
    }
    if let Some((_, init)) = containers(spec).find(|(_, c)| name(c) == "lanyard-init") {
        let guarded = admin_port.is_some_and(|port| {
            init["args"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a.as_str() == Some(&format!("--admin-port={port}")))
        });
        if !guarded {
            v.push("lanyard-init does not keep the agent off the admin port (--admin-port)".into());
        }
    }
    let lanyard_uid = sidecar["securityContext"]["runAsUser"].as_u64();
    if lanyard_uid.is_none_or(|u| u == 0) {
        v.push("lanyard does not run as a uid of its own".into());
    }
    let secret = secret_volumes(spec);
    for (_, c) in containers(spec) {
        let n = name(c);
        let sc = &c["securityContext"];
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let vol = m["name"].as_str().unwrap_or("");
            if n != "lanyard" && secret.iter().any(|s| s == vol) {
                v.push(format!("{n} mounts {vol}, which only lanyard may"));
            }
        }
        if sc["privileged"].as_bool() == Some(true) {
            v.push(format!("{n} is privileged"));
        }
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            v.push(format!("{n} may escalate privileges"));
        }
        let caps = &sc["capabilities"];
        let drops_all = caps["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|c| c.as_str() == Some("ALL")));
        if !drops_all {
            v.push(format!("{n} does not drop ALL capabilities"));
        }
        let added: Vec<&str> = caps["add"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match (n, added.as_slice()) {
            (_, []) | ("lanyard-init", ["NET_ADMIN"]) => {}
            _ => v.push(format!("{n} adds capabilities {added:?}")),
        }
        let uid = sc["runAsUser"].as_u64();
        if n != "lanyard" && n != "lanyard-init" {
            match uid {
                None => v.push(format!(
                    "{n} sets no runAsUser: the image could choose Lanyard's uid"
                )),
                Some(u) if Some(u) == lanyard_uid => {
                    v.push(format!(
                        "{n} runs as Lanyard's uid {u}: its traffic would bypass the proxy"
                    ));
                }
                Some(0) => v.push(format!("{n} runs as root")),
                Some(_) => {}
            }
        }
    }
    for key in ["hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"] {
        if spec[key].as_bool() == Some(true) {
            v.push(format!("pod sets {key}"));
        }
    }
    if spec["automountServiceAccountToken"].as_bool() != Some(false) {
        v.push("pod mounts a service account token".into());
    }
    v
}
