//! The agent's mount namespace, built by the launcher's init stage (root,
//! single-threaded, already in the agent's PID namespace).
//!
//! `minimal` (the default): a tmpfs root holding read-only binds of the
//! system directories and the CA directory, writable binds of the workdir and
//! `agent.writable`, a private `/tmp`, a minimal `/dev` and a fresh `/proc`;
//! then `pivot_root` into it, the old root detached, and the new root made
//! read-only. Whatever is not listed does not exist for the agent.
//!
//! `host`: the host's root as it is, minus the hidden paths.
//!
//! In both, every hidden directory that is visible gets an empty read-only
//! tmpfs on top and every hidden file an empty read-only file. The paths were
//! resolved (symlinks followed) and created if missing by the supervisor, so
//! a path that should be covered and is not there is an error, never a skip.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::spec::{Mounts, Root};

/// System directories bound read-only into a minimal root when they exist
/// (symlinks such as merged-usr `/bin -> usr/bin` are recreated as links).
pub const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
];
/// Device nodes bound into a minimal `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
const EMPTY: &str = ".lanyard-empty";

type R = Result<(), String>;

fn m(what: impl std::fmt::Display) -> impl FnOnce(nix::Error) -> String {
    move |e| format!("{what}: {e}")
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// A fresh tmpfs on `target`; `what` names it in the error.
fn tmpfs(target: &Path, flags: MsFlags, options: &str, what: impl std::fmt::Display) -> R {
    mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(options)).map_err(m(what))
}

/// `prefix` + absolute `path`.
fn under(prefix: &Path, path: &Path) -> PathBuf {
    let mut out = prefix.to_path_buf();
    for c in path.components() {
        if let Component::Normal(n) = c {
            out.push(n);
        }
    }
    out
}

/// Builds the agent's mount namespace. Needs a new mount namespace, so it
/// unshares one first.
pub fn setup(spec: &Mounts, pid_namespace: bool) -> R {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(m("create a mount namespace"))?;
    // Nothing mounted here may propagate back to the host, and nothing the
    // host mounts later (a socket directory appearing) may propagate in.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(m("make mounts private"))?;
    let scratch = &spec.scratch;
    tmpfs(
        scratch,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0755",
        format!("tmpfs on {}", scratch.display()),
    )?;
    let empty = scratch.join(EMPTY);
    std::fs::write(&empty, b"").map_err(io("create the empty cover file"))?;
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o444))
        .map_err(io("chmod the empty cover file"))?;
    match &spec.root {
        Root::Minimal {
            read_only,
            writable,
        } => {
            let root = scratch.join("root");
            std::fs::create_dir(&root).map_err(io("create the new root"))?;
            // A mount of its own, so pivot_root accepts it and it can be made read-only.
            tmpfs(
                &root,
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                "mode=0755",
                "tmpfs for the new root",
            )?;
            minimal(&root, read_only, writable)?;
            hide(&root, spec, &empty, false)?;
            if pid_namespace {
                proc_at(&root.join("proc"))?;
            }
            pivot(&root)?;
        }
        Root::Host => {
            hide(Path::new("/"), spec, &empty, true)?;
            if pid_namespace {
                proc_at(Path::new("/proc"))?;
            }
            // The scratch tmpfs served its purpose: the covers keep the empty file alive.
            umount2(scratch, MntFlags::MNT_DETACH).map_err(m("detach the scratch tmpfs"))?;
        }
    }
    Ok(())
}

fn minimal(root: &Path, read_only: &[PathBuf], writable: &[PathBuf]) -> R {
    // /tmp and /dev first: a configured path below /tmp is bound on top of
    // the private tmpfs, not hidden under it.
    tmpfs_tmp(root)?;
    dev(&root.join("dev"))?;
    for d in SYSTEM_DIRS {
        bind(root, Path::new(d), true, true)?;
    }
    for p in read_only {
        bind(root, p, true, false)?;
    }
    for p in writable {
        bind(root, p, false, false)?;
    }
    Ok(())
}

fn tmpfs_tmp(root: &Path) -> R {
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(io("create /tmp"))?;
    tmpfs(
        &tmp,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=1777",
        "private /tmp",
    )
}

fn dev(dev: &Path) -> R {
    std::fs::create_dir_all(dev).map_err(io("create /dev"))?;
    tmpfs(
        dev,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "mode=0755",
        "tmpfs on /dev",
    )?;
    for n in DEVICES {
        let host = Path::new("/dev").join(n);
        if !host.exists() {
            continue;
        }
        let node = dev.join(n);
        std::fs::write(&node, b"").map_err(io(format!("create /dev/{n}")))?;
        mount(
            Some(&host),
            &node,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(m(format!("bind /dev/{n}")))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link)).map_err(io(format!("/dev/{link}")))?;
    }
    // Its own pty instance: the agent may open terminals, never the host's.
    let pts = dev.join("pts");
    std::fs::create_dir(&pts).map_err(io("create /dev/pts"))?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(m("devpts"))?;
    let shm = dev.join("shm");
    std::fs::create_dir(&shm).map_err(io("create /dev/shm"))?;
    tmpfs(
        &shm,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        "mode=1777",
        "/dev/shm",
    )
}

/// Binds host `path` at the same place under `root`. `optional` paths that do
/// not exist are skipped; configured ones were checked by the supervisor.
fn bind(root: &Path, path: &Path, read_only: bool, optional: bool) -> R {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(_) if optional => return Ok(()),
        Err(e) => return Err(format!("bind {}: {e}", path.display())),
    };
    let dest = under(root, path);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
    }
    if meta.file_type().is_symlink() {
        let target =
            std::fs::read_link(path).map_err(io(format!("readlink {}", path.display())))?;
        return std::os::unix::fs::symlink(target, &dest)
            .map_err(io(format!("link {}", dest.display())));
    }
    if meta.is_dir() {
        std::fs::create_dir_all(&dest).map_err(io(format!("create {}", dest.display())))?;
    } else if !dest.exists() {
        std::fs::write(&dest, b"").map_err(io(format!("create {}", dest.display())))?;
    }
    mount(
        Some(path),
        &dest,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(m(format!("bind {}", path.display())))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    // Every mount below the bind too: a recursive bind copies submounts
    // (`/etc/resolv.conf` in a container) with their own flags.
    for point in mounts_below(&dest)? {
        remount(&point, flags)?;
    }
    Ok(())
}

fn remount(point: &Path, flags: MsFlags) -> R {
    mount(None::<&str>, point, None::<&str>, flags, None::<&str>)
        .map_err(m(format!("remount {}", point.display())))
}

/// Mount points at or below `dir`, from this namespace's mountinfo.
fn mounts_below(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(io("read mountinfo"))?;
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.dedup();
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let n = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(n).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Covers every hidden path visible under `root`. With `must_exist` (host
/// root), a hidden path that is missing is an error: it was created before
/// start, so its absence means something changed underneath.
fn hide(root: &Path, spec: &Mounts, empty: &Path, must_exist: bool) -> R {
    for d in &spec.hide_dirs {
        let target = under(root, d);
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(format!("hide {}: no longer a directory", d.display())),
            Err(_) if !must_exist => continue,
            Err(e) => return Err(format!("hide {}: {e}", d.display())),
        }
        tmpfs(
            &target,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            "size=4k,mode=0555",
            format!("hide {}", d.display()),
        )?;
    }
    for f in &spec.hide_files {
        let target = under(root, f);
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Err(format!("hide {}: no longer a regular file", f.display())),
            Err(_) if !must_exist => continue,
            Err(e) => return Err(format!("hide {}: {e}", f.display())),
        }
        mount(
            Some(empty),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(m(format!("hide {}", f.display())))?;
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(m(format!("hide {} read-only", f.display())))?;
    }
    Ok(())
}

/// A `/proc` for the PID namespace this process is init of: the agent sees
/// its own processes only, never `/proc/<host pid>/root`.
fn proc_at(dir: &Path) -> R {
    std::fs::create_dir_all(dir).map_err(io("create /proc"))?;
    mount(
        Some("proc"),
        dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(m("mount /proc"))
}

fn pivot(root: &Path) -> R {
    let old = root.join(".old");
    std::fs::create_dir(&old).map_err(io("create the old-root mount point"))?;
    rustix::process::pivot_root(root, &old).map_err(|e| format!("pivot_root: {e}"))?;
    std::env::set_current_dir("/").map_err(io("chdir /"))?;
    umount2("/.old", MntFlags::MNT_DETACH).map_err(m("detach the old root"))?;
    std::fs::remove_dir("/.old").map_err(io("remove the old-root mount point"))?;
    // Only the root mount itself: the binds below keep their own flags.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(m("make the new root read-only"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn paths_are_placed_under_the_new_root() {
        assert_eq!(
            under(Path::new("/r"), Path::new("/usr/lib")),
            PathBuf::from("/r/usr/lib")
        );
    }
}
