//! `charts/lanyard`: every overlay in `ci/` lints, renders, validates with
//! `kubeconform -strict` against real Kubernetes schemas, holds the
//! sandbox's security properties and yields a config `lanyard check`
//! accepts; bad values are refused; the demo's manifests are the chart's output.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use std::path::PathBuf;

use lanyard_tests::k8s::{self, documents, pod_spec, violations};
use serde_json::{Value, json};

fn overlays() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(k8s::chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(v.len() >= 6, "expected the six ci overlays, found {v:?}");
    v
}

fn render(t: &k8s::Tools, values: &[&std::path::Path], sets: &[&str]) -> String {
    let out = t.template(values, sets);
    assert!(out.ok, "helm template {values:?} {sets:?}: {}", out.stderr);
    out.stdout
}

fn the_pod(docs: &[Value]) -> &Value {
    let pods: Vec<&Value> = docs.iter().filter_map(pod_spec).collect();
    assert_eq!(pods.len(), 1, "one sandbox pod per release");
    pods[0]
}

#[test]
fn every_overlay_lints_renders_and_passes_strict_schemas() {
    let t = k8s::tools();
    for overlay in overlays() {
        let lint = t.lint(&[&overlay]);
        assert!(
            lint.ok,
            "helm lint {}: {}{}",
            overlay.display(),
            lint.stdout,
            lint.stderr
        );
        let manifests = render(&t, &[&overlay], &[]);
        let n = documents(&manifests).len();
        let check = t.kubeconform(&manifests);
        // Every resource validated against a schema: none skipped for want of one.
        let want = format!("Valid: {n}, Invalid: 0, Errors: 0, Skipped: 0");
        assert!(
            check.ok && check.stdout.contains(&want),
            "kubeconform {}: {}{}",
            overlay.display(),
            check.stdout,
            check.stderr
        );
    }
}

#[test]
fn kubeconform_rejects_what_the_schemas_forbid() {
    // The validator is not vacuous: a misspelt field fails strict validation.
    let t = k8s::tools();
    let manifests = render(&t, &[&overlays()[0]], &[])
        .replace("readOnlyRootFilesystem", "readOnlyRootFileSystem");
    let check = t.kubeconform(&manifests);
    assert!(!check.ok, "a misspelt field passed: {}", check.stdout);
    assert!(
        check.stdout.contains("readOnlyRootFileSystem"),
        "{}",
        check.stdout
    );
}

#[test]
fn every_overlay_holds_the_security_properties() {
    let t = k8s::tools();
    for overlay in overlays() {
        let docs = documents(&render(&t, &[&overlay], &[]));
        let pod = the_pod(&docs);
        assert_eq!(
            violations(pod),
            Vec::<String>::new(),
            "{}",
            overlay.display()
        );
        let names: Vec<&str> = pod["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        let explicit = overlay.to_string_lossy().contains("explicit");
        // The rules go in before Lanyard starts; explicit mode has no rules to install.
        let want: &[&str] = if explicit {
            &["lanyard"]
        } else {
            &["lanyard-init", "lanyard"]
        };
        assert_eq!(names, want, "{}", overlay.display());
    }
}

#[test]
fn the_security_check_fails_when_the_agent_gets_the_socket() {
    let t = k8s::tools();
    // Through values: a user mounting the Workload API into the agent.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "agent:\n  volumeMounts:\n    - { name: spiffe-workload-api, mountPath: /spiffe, readOnly: true }\n",
    )
    .unwrap();
    let docs = documents(&render(&t, &[&overlays()[0], &bad], &[]));
    assert_eq!(
        violations(the_pod(&docs)),
        ["agent mounts spiffe-workload-api, which only lanyard may"]
    );

    // And each other property, by editing a good rendering.
    let good = documents(&render(&t, &[&overlays()[0]], &[]));
    let spec = the_pod(&good).clone();
    let agent = "/containers/0";
    let sidecar = "/initContainers/1";
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            agent,
            json!({"add": ["NET_ADMIN"], "drop": ["ALL"]}),
            "agent adds capabilities [\"NET_ADMIN\"]",
        ),
        (
            sidecar,
            json!({"add": ["NET_ADMIN"], "drop": ["ALL"]}),
            "lanyard adds capabilities [\"NET_ADMIN\"]",
        ),
        (
            agent,
            json!({"drop": []}),
            "agent does not drop ALL capabilities",
        ),
    ];
    for (container, caps, want) in cases {
        let mut s = spec.clone();
        *s.pointer_mut(&format!("{container}/securityContext/capabilities"))
            .unwrap() = caps;
        assert!(
            violations(&s).iter().any(|v| v == want),
            "{want}: {:?}",
            violations(&s)
        );
    }
    let mut s = spec.clone();
    *s.pointer_mut(&format!("{agent}/securityContext/privileged"))
        .unwrap() = json!(true);
    assert!(violations(&s).contains(&"agent is privileged".to_owned()));
    let mut s = spec.clone();
    *s.pointer_mut(&format!("{agent}/securityContext/runAsUser"))
        .unwrap() = json!(15101);
    assert!(
        violations(&s)
            .iter()
            .any(|v| v.starts_with("agent runs as Lanyard's uid"))
    );
    let mut s = spec.clone();
    s["containers"][0]["securityContext"]
        .as_object_mut()
        .unwrap()
        .remove("runAsUser");
    assert!(
        violations(&s)
            .iter()
            .any(|v| v.starts_with("agent sets no runAsUser"))
    );
    let mut s = spec.clone();
    s["containers"][0]["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "lanyard-state", "mountPath": "/x"}));
    assert!(
        violations(&s).contains(&"agent mounts lanyard-state, which only lanyard may".to_owned())
    );
    let mut s = spec.clone();
    s["initContainers"][1]
        .as_object_mut()
        .unwrap()
        .remove("restartPolicy");
    assert!(violations(&s).iter().any(|v| v.contains("native sidecar")));
    let mut s = spec.clone();
    let args = s["initContainers"][0]["args"].as_array_mut().unwrap();
    args.retain(|a| !a.as_str().unwrap_or("").starts_with("--admin-port"));
    assert!(violations(&s).iter().any(|v| v.contains("--admin-port")));
    let mut s = spec.clone();
    s["initContainers"][1]["readinessProbe"]["httpGet"]["path"] = json!("/healthz");
    assert!(violations(&s).iter().any(|v| v.contains("readinessProbe")));
    let mut s = spec;
    s["automountServiceAccountToken"] = json!(true);
    assert!(
        violations(&s)
            .iter()
            .any(|v| v.contains("service account token"))
    );
}

#[test]
fn the_chart_refuses_values_that_weaken_the_sandbox() {
    let t = k8s::tools();
    let base = overlays()[0].clone();
    for (sets, want) in [
        (
            &["agent.uid=15101"][..],
            "agent.uid: the agent must not run as Lanyard's uid",
        ),
        (&["agent.uid=0"], "/agent/uid"),
        (&["agent.image="], "agent.image: required"),
        (&["config.listen=0.0.0.0:3128"], "listen"),
        (&["mode=sidecar"], "mode"),
        (&["init.backend=ipfw"], "backend"),
        (
            &[
                "agent.volumeMounts[0].name=x",
                "agent.volumeMounts[0].mountPath=/run/lanyard/state",
            ],
            "/run/lanyard",
        ),
        (
            &[
                "volumes[0].name=lanyard-state",
                "volumes[0].emptyDir.medium=Memory",
            ],
            "reserved",
        ),
        (&["bogus=1"], "bogus"),
        (&["workload.kind=DaemonSet"], "kind"),
        (
            &["lanyard.adminPort=15001"],
            "lanyard.adminPort: 15001 is already the transparent or explicit port",
        ),
        (
            &["config.admin.listen=0.0.0.0:1"],
            "additional properties 'admin' not allowed",
        ),
        (
            &[
                "config.endpoints[0].name=a b",
                "config.endpoints[0].host=x.test",
            ],
            "name",
        ),
        (
            &[
                "config.endpoints[0].name=a",
                "config.endpoints[0].host=x.test",
                "config.endpoints[0].statements[0].actions[0]=GET",
            ],
            "statements/0': missing property 'resources'",
        ),
        // The overlay list is the chart's (policyOverlay), never config's.
        (
            &["config.overlays[0]=/tmp/wide.yaml"],
            "additional properties 'overlays' not allowed",
        ),
        (&["policyOverlay.key=../x"], "policyOverlay"),
    ] {
        let out = t.template(&[&base], sets);
        assert!(!out.ok, "{sets:?} rendered");
        assert!(out.stderr.contains(want), "{sets:?}: {}", out.stderr);
    }
}

/// The per-sandbox policy overlay is mounted into the sidecar alone (the
/// agent must not read, let alone write, what narrows it) and named in the
/// config the sidecar loads.
#[test]
fn the_policy_overlay_reaches_the_sidecar_only() {
    let t = k8s::tools();
    let values = k8s::chart().join("ci/values-policy.yaml");
    let docs = documents(&render(&t, &[&values], &[]));
    let pod = the_pod(&docs);
    let mounts = |c: &Value| -> Vec<String> {
        c["volumeMounts"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|v| v["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let all: Vec<&Value> = pod["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["containers"].as_array().unwrap())
        .collect();
    let with: Vec<&str> = all
        .iter()
        .filter(|c| mounts(c).iter().any(|m| m == "lanyard-policy-overlay"))
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(with, vec!["lanyard"], "who mounts the overlay");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "lanyard-policy-overlay")
        .unwrap();
    assert_eq!(volume["configMap"]["name"], "sandbox-7-policy");
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    assert!(
        cm["data"]["lanyard.yaml"]
            .as_str()
            .unwrap()
            .contains("overlays:\n- /run/lanyard/policy-overlay/overlay.yaml"),
        "{}",
        cm["data"]["lanyard.yaml"]
    );
}

#[test]
fn every_overlays_config_is_accepted_by_lanyard_check() {
    let t = k8s::tools();
    let dir = tempfile::tempdir().unwrap();
    for overlay in overlays() {
        let docs = documents(&render(&t, &[&overlay], &[]));
        let cm = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap")
            .expect("the config map");
        let mut yaml = cm["data"]["lanyard.yaml"].as_str().unwrap().to_owned();
        // The overlay comes from the provisioning service's ConfigMap: here,
        // one that narrows the endpoint it names, at a path of the test's.
        let mounted = "/run/lanyard/policy-overlay/overlay.yaml";
        if yaml.contains(mounted) {
            let o = dir.path().join("overlay.yaml");
            std::fs::write(
                &o,
                "endpoints:\n  tracker:\n    - { actions: [GET], resources: [\"/repos/acme/widgets/issues\"] }\n",
            )
            .unwrap();
            yaml = yaml.replace(mounted, o.to_str().unwrap());
        }
        let file = dir.path().join("lanyard.yaml");
        std::fs::write(&file, &yaml).unwrap();
        if let Err(e) = lanyard_supervisor::check(&file) {
            panic!(
                "{}: lanyard check refused the rendered config: {e}\n{yaml}",
                overlay.display()
            );
        }
        let config = lanyard_supervisor::config::Config::load(&file).unwrap();
        let transparent = !overlay.to_string_lossy().contains("explicit");
        assert_eq!(
            config.transparent.is_some(),
            transparent,
            "{}",
            overlay.display()
        );
    }
}

#[test]
fn the_demo_manifests_are_the_charts_output() {
    let t = k8s::tools();
    let demo = k8s::repo().join("examples/alpha-beta/k8s");
    let rendered = render(&t, &[&demo.join("values.yaml")], &[]);
    let header = "# Generated from charts/lanyard with examples/alpha-beta/k8s/values.yaml:\n#   helm template sandbox charts/lanyard -f examples/alpha-beta/k8s/values.yaml\n# Regenerate with LANYARD_BLESS=1 cargo test -p lanyard-tests --test chart.\n";
    let want = format!("{header}{rendered}");
    let path = demo.join("sandbox.yaml");
    if std::env::var_os("LANYARD_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is stale: regenerate it (LANYARD_BLESS=1)",
        path.display()
    );
    let docs = documents(&rendered);
    assert_eq!(violations(the_pod(&docs)), Vec::<String>::new());
    let services = std::fs::read_to_string(demo.join("services.yaml")).unwrap();
    for manifests in [&rendered, &services] {
        let check = t.kubeconform(manifests);
        assert!(
            check.ok && check.stdout.contains("Skipped: 0"),
            "{}{}",
            check.stdout,
            check.stderr
        );
    }
}
