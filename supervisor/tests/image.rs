//! The container image's filesystem, without a container engine: the
//! Containerfile's last stage is `FROM scratch` plus what
//! `scripts/image-rootfs` assembles, so the test assembles the same tree,
//! checks it has no shell, and runs the real commands the chart runs in it
//! (chrooted, in a fresh network namespace): `lanyard init` with both
//! backends as root, `lanyard check` as Lanyard's uid.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests: a panic is a failed assertion"
)]

use std::path::Path;
use std::process::Command;

const LANYARD: &str = env!("CARGO_BIN_EXE_lanyard");

#[test]
fn the_image_runs_init_and_the_proxy_without_a_shell() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test chroots and creates a network namespace: run it as root (CI does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(repo.join("scripts/image-rootfs"))
        .arg(&root)
        .arg(LANYARD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing to exec a script with.
    for shell in [
        "bin/sh",
        "usr/bin/sh",
        "bin/bash",
        "usr/bin/bash",
        "bin/busybox",
    ] {
        assert!(!root.join(shell).exists(), "{shell} is in the image");
    }

    std::fs::create_dir_all(root.join("etc/lanyard")).unwrap();
    std::fs::write(
        root.join("etc/lanyard/lanyard.yaml"),
        "listen: 127.0.0.1:3128\ntransparent: { listen: \"[::]:15001\" }\nca: { dir: /run/lanyard/share/ca, key_dir: /run/lanyard/state/ca }\negress: { default: deny }\n",
    )
    .unwrap();
    let script = format!(
        r#"set -e
mkdir -p {root}/dev && touch {root}/dev/null && mount --bind /dev/null {root}/dev/null
chroot {root} /usr/local/bin/lanyard init --proxy-uid 15101 --agent-uid 1000 --dns 192.0.2.53
echo "nft=$(nft list table inet lanyard | grep -c 'redirect to :15001')"
chroot {root} /usr/local/bin/lanyard init --cleanup
chroot {root} /usr/local/bin/lanyard init --backend iptables --proxy-uid 15101 --agent-uid 1000 --dns 192.0.2.53
echo "iptables=$( (iptables-save; ip6tables-save) | grep -c 'REDIRECT --to-ports 15001')"
chroot --userspec=15101:15101 {root} /usr/local/bin/lanyard check --config /etc/lanyard/lanyard.yaml
"#,
        root = root.display()
    );
    let out = Command::new("unshare")
        .args(["--net", "--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in ["nft=1", "iptables=2", "/etc/lanyard/lanyard.yaml: ok"] {
        assert!(
            stdout.lines().any(|l| l == want),
            "missing {want:?} in {stdout}"
        );
    }
}
