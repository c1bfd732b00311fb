//! A uid (and the gid of the same number) of its own for each sandbox, leased
//! from a range the way systemd's `DynamicUser=` does: two sandboxes never
//! share a uid, so neither can signal, ptrace or read the other's processes,
//! and no host account owns it.
//!
//! A lease is an exclusive `flock` on `<dir>/<uid>.lock`, held for the life
//! of the Lanyard process (the kernel drops it when Lanyard dies, however it
//! dies). A uid is skipped when it is locked, named in the user or group
//! database, or owned by any running process.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// systemd's dynamic range (`DYNAMIC_UID_MIN`..=`DYNAMIC_UID_MAX`).
pub const DEFAULT_RANGE: (u32, u32) = (61184, 65519);

/// A leased uid; released when dropped.
#[derive(Debug)]
pub struct Lease {
    /// The uid (and gid).
    pub uid: u32,
    _lock: Flock<File>,
}

/// Creates `dir` (root-only) or checks that an existing one is root's and
/// writable by nobody else: a lock directory others can write is one they can
/// fill with locks, or swap for a link.
pub fn private_dir(dir: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) => {
            if !m.is_dir() || m.file_type().is_symlink() {
                return Err(format!("{} is not a directory", dir.display()));
            }
            if m.uid() != 0 || m.mode() & 0o022 != 0 {
                return Err(format!(
                    "{} must be owned by root and writable by nobody else (mode {:o}, owner {})",
                    dir.display(),
                    m.mode() & 0o7777,
                    m.uid()
                ));
            }
            Ok(())
        }
        Err(_) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot chmod {}: {e}", dir.display()))
        }
    }
}

/// Leases a free uid from `first..=last`, starting at a random offset.
pub fn lease(first: u32, last: u32, dir: &Path) -> Result<Lease, String> {
    private_dir(dir)?;
    let span = last - first + 1;
    let start = fastrand::u32(0..span);
    let in_use = uids_in_use();
    for i in 0..span {
        let uid = first + (start + i) % span;
        if in_use.contains(&uid) || named(uid) {
            continue;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(dir.join(format!("{uid}.lock")))
            .map_err(|e| format!("cannot open a uid lock in {}: {e}", dir.display()))?;
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            return Ok(Lease { uid, _lock: lock });
        }
    }
    Err(format!(
        "no free uid in {first}-{last}: every one is leased by another sandbox, named in /etc/passwd or /etc/group, or running a process"
    ))
}

fn named(uid: u32) -> bool {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .is_some()
        || nix::unistd::Group::from_gid(uid.into())
            .ok()
            .flatten()
            .is_some()
}

/// Every real, effective, saved and filesystem uid of a running process.
fn uids_in_use() -> std::collections::HashSet<u32> {
    let mut out = std::collections::HashSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        if let Some(line) = status.lines().find_map(|l| l.strip_prefix("Uid:")) {
            out.extend(
                line.split_whitespace()
                    .filter_map(|u| u.parse::<u32>().ok()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("uids");
        let a = lease(62000, 62001, &locks).unwrap();
        let b = lease(62000, 62001, &locks).unwrap();
        assert_ne!(a.uid, b.uid);
        let err = lease(62000, 62001, &locks).unwrap_err();
        assert!(err.contains("no free uid in 62000-62001"), "{err}");
        let freed = a.uid;
        drop(a);
        assert_eq!(lease(62000, 62001, &locks).unwrap().uid, freed);
    }

    #[test]
    fn a_lock_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_dir(dir.path()).unwrap_err();
        assert!(err.contains("writable by nobody else"), "{err}");
    }
}
