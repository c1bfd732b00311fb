//! Defence in depth for the agent: what the kernel offers beyond namespaces
//! and the uid boundary.
//!
//! - The capability bounding set is emptied, so no exec can ever regain a
//!   capability (on top of `no_new_privs`).
//! - Landlock confines writes to the workdir, `/tmp`, `/dev`, `/proc` and
//!   `agent.writable`, where the kernel has it (best effort: an older kernel
//!   enforces what it knows, and Lanyard says so in its log at start).
//! - A seccomp filter refuses (EPERM) the calls a sandboxed agent has no use
//!   for and an escape would: debugging other processes, injecting terminal
//!   input, kernel keyrings, mounts, namespaces, modules, BPF, kexec.

use std::collections::BTreeMap;
use std::path::PathBuf;

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, path_beneath_rules,
};
use nix::libc;
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

/// Newest Landlock ABI whose rights are requested (older kernels enforce a subset).
const LANDLOCK_ABI: ABI = ABI::V5;

/// Empties the capability bounding set (needs CAP_SETPCAP, so before the uid change).
pub fn clear_bounding_set() -> Result<(), String> {
    use rustix::thread::{CapabilitySet, remove_capability_from_bounding_set};
    for cap in CapabilitySet::all().iter() {
        match remove_capability_from_bounding_set(cap) {
            // A capability newer than this kernel does not exist to drop.
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(e) => return Err(format!("clear the capability bounding set: {e}")),
        }
    }
    Ok(())
}

/// Restricts writes to `writable` (plus `/tmp`, `/dev`, `/proc`); reading and
/// executing stay governed by what the mount namespace shows.
pub fn landlock(writable: &[PathBuf]) -> Result<RulesetStatus, String> {
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let read = AccessFs::from_read(LANDLOCK_ABI);
    let mut rw: Vec<PathBuf> = ["/tmp", "/dev", "/proc"]
        .iter()
        .map(PathBuf::from)
        .collect();
    rw.extend(writable.iter().cloned());
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(["/"], read)))
        .and_then(|r| r.add_rules(path_beneath_rules(&rw, all)))
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("landlock: {e}"))?;
    Ok(status.ruleset)
}

/// Whether Landlock would be enforced here, found out on a throwaway thread
/// (Landlock applies to the calling thread only, and that thread then ends).
pub fn landlock_probe() -> RulesetStatus {
    std::thread::spawn(|| landlock(&[]).unwrap_or(RulesetStatus::NotEnforced))
        .join()
        .unwrap_or(RulesetStatus::NotEnforced)
}

/// ioctl requests that push input into a terminal or rewrite its console.
const TERMINAL_INJECTION: &[u64] = &[libc::TIOCSTI, libc::TIOCLINUX];

/// Syscalls refused outright.
// 64-bit Linux only (x86_64, aarch64): syscall numbers are i64, ioctl requests u64.
const DENIED: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_open_by_handle_at,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_acct,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_adjtimex,
];

/// `clone` flags that create namespaces (which would reopen what the
/// sandbox closed, from inside a user namespace).
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWCGROUP as u64,
];

fn target_arch() -> Result<seccompiler::TargetArch, String> {
    std::env::consts::ARCH.try_into().map_err(|_| {
        format!(
            "seccomp: unsupported architecture {}",
            std::env::consts::ARCH
        )
    })
}

fn rule(
    index: u8,
    op: SeccompCmpOp,
    value: u64,
    len: SeccompCmpArgLen,
) -> Result<SeccompRule, String> {
    let cond = SeccompCondition::new(index, len, op, value).map_err(|e| format!("seccomp: {e}"))?;
    SeccompRule::new(vec![cond]).map_err(|e| format!("seccomp: {e}"))
}

/// Installs the filter on the calling thread (inherited across exec and fork).
pub fn seccomp() -> Result<(), String> {
    let arch = target_arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for sc in DENIED {
        rules.insert(*sc, Vec::new());
    }
    rules.insert(
        libc::SYS_ioctl,
        TERMINAL_INJECTION
            .iter()
            .map(|req| rule(1, SeccompCmpOp::Eq, *req, SeccompCmpArgLen::Dword))
            .collect::<Result<_, _>>()?,
    );
    rules.insert(
        libc::SYS_clone,
        NAMESPACE_FLAGS
            .iter()
            .map(|f| rule(0, SeccompCmpOp::MaskedEq(*f), *f, SeccompCmpArgLen::Qword))
            .collect::<Result<_, _>>()?,
    );
    let eperm = u32::try_from(libc::EPERM).map_err(|_| "EPERM out of range".to_owned())?;
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(eperm),
        arch,
    )
    .map_err(|e| format!("seccomp: {e}"))?;
    // clone3 passes its flags in memory a filter cannot read: report it as
    // missing, and libc falls back to clone, whose flags are checked above.
    let enosys = u32::try_from(libc::ENOSYS).map_err(|_| "ENOSYS out of range".to_owned())?;
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(enosys),
        arch,
    )
    .map_err(|e| format!("seccomp: {e}"))?;
    for f in [clone3, deny] {
        let prog: seccompiler::BpfProgram = f.try_into().map_err(|e| format!("seccomp: {e:?}"))?;
        seccompiler::apply_filter(&prog).map_err(|e| format!("seccomp: {e}"))?;
    }
    Ok(())
}
