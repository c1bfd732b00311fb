//! Stamps the git commit into `lanyard --version` (`LANYARD_COMMIT` overrides,
//! for builds from a source tarball; `unknown` when neither is available).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LANYARD_COMMIT");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    let commit = std::env::var("LANYARD_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    });
    println!(
        "cargo:rustc-env=LANYARD_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}
