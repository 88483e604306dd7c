//! The seccomp program of every sandbox: allow by default, deny with EPERM what a function
//! never needs (so a denied call fails like a permission problem instead of killing the
//! runtime), and answer `clone3` with ENOSYS so libc falls back to `clone`, whose flags the
//! filter can see (`clone3` takes them in a struct seccomp cannot read). This is the approach
//! of Docker's and Firecracker's default profiles, narrowed to a serverless function.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

/// Syscalls denied outright, by name (numbers come from `libc` for this architecture).
const DENIED: &[(&str, i64)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("bpf", libc::SYS_bpf),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("syslog", libc::SYS_syslog),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("vhangup", libc::SYS_vhangup),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
];

/// `clone` flags that make a new namespace: a clone with any of them is denied.
const NEW_NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

fn arch() -> Result<seccompiler::TargetArch, String> {
    std::env::consts::ARCH.try_into().map_err(|e| format!("no seccomp support for {}: {e:?}", std::env::consts::ARCH))
}

/// The EPERM filter: the denied list, and `clone` with a namespace flag.
fn eperm_filter() -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let mut clone_rules = Vec::new();
    for flag in NEW_NAMESPACE_FLAGS {
        let cond = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(*flag), *flag)
            .map_err(|e| e.to_string())?;
        clone_rules.push(SeccompRule::new(vec![cond]).map_err(|e| e.to_string())?);
    }
    rules.insert(libc::SYS_clone, clone_rules);
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch()?)
        .map_err(|e| e.to_string())?;
    filter.try_into().map_err(|e: seccompiler::BackendError| e.to_string())
}

/// The ENOSYS filter: `clone3`.
fn enosys_filter() -> Result<BpfProgram, String> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch()?)
        .map_err(|e| e.to_string())?;
    filter.try_into().map_err(|e: seccompiler::BackendError| e.to_string())
}

/// The whole program as bytes (`struct sock_filter` in native order), as bwrap's `--seccomp`
/// reads it: the EPERM filter with the `clone3` check in front of it.
pub(super) fn program() -> Result<Vec<u8>, String> {
    // One program: the clone3 check first, falling through to the EPERM filter where it would
    // have allowed (seccompiler builds one action per filter; bwrap takes one program).
    let mut out = Vec::new();
    for insn in spliced()? {
        out.extend_from_slice(&insn.code.to_ne_bytes());
        out.push(insn.jt);
        out.push(insn.jf);
        out.extend_from_slice(&insn.k.to_ne_bytes());
    }
    Ok(out)
}

fn spliced() -> Result<BpfProgram, String> {
    splice(&enosys_filter()?, &eperm_filter()?)
}

/// Join two allow-by-default programs into one: every "return allow" of `first` becomes a jump
/// to the start of `second`.
fn splice(first: &BpfProgram, second: &BpfProgram) -> Result<BpfProgram, String> {
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const JA: u16 = 0x05; // BPF_JMP | BPF_JA
    const ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
    let len = first.len();
    let mut out = Vec::with_capacity(len + second.len());
    for (i, insn) in first.iter().enumerate() {
        if insn.code == RET_K && insn.k == ALLOW {
            // Jump over the rest of `first`: the offset counts from the next instruction.
            let offset = u32::try_from(len - i - 1).map_err(|_| "seccomp program too long".to_owned())?;
            out.push(seccompiler::sock_filter { code: JA, jt: 0, jf: 0, k: offset });
        } else {
            out.push(insn.clone());
        }
    }
    out.extend(second.iter().cloned());
    Ok(out)
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    /// The errno of a raw syscall in this thread (0 when it succeeded).
    fn errno_of(f: impl FnOnce() -> libc::c_long) -> i32 {
        let r = f();
        if r < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        } else {
            0
        }
    }

    /// Load the real program into a fresh thread and ask the kernel: denied calls fail with
    /// EPERM, clone3 with ENOSYS, a clone without namespace flags and ordinary calls work.
    #[test]
    fn the_kernel_applies_the_program_as_intended() {
        assert_eq!(program().unwrap().len() % 8, 0, "whole sock_filter instructions");
        let results = std::thread::spawn(|| {
            seccompiler::apply_filter(&spliced().unwrap()).unwrap();
            // SAFETY: raw syscalls with arguments the kernel validates; none of them can
            // succeed in a way that changes this test process (they are denied, or the unshare
            // of a CLONE_NEWUTS would only affect this thread, were it allowed).
            unsafe {
                [
                    ("getpid", errno_of(|| libc::syscall(libc::SYS_getpid))),
                    ("unshare(NEWUSER)", errno_of(|| libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER))),
                    ("clone3", errno_of(|| libc::syscall(libc::SYS_clone3, 0usize, 0usize))),
                    ("mount", errno_of(|| libc::syscall(libc::SYS_mount, 0usize, 0usize, 0usize, 0usize, 0usize))),
                    ("bpf", errno_of(|| libc::syscall(libc::SYS_bpf, 0, 0usize, 0))),
                    ("ptrace", errno_of(|| libc::syscall(libc::SYS_ptrace, 0, 0, 0usize, 0usize))),
                    ("keyctl", errno_of(|| libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0))),
                ]
            }
        })
        .join()
        .unwrap();
        let errno: std::collections::HashMap<&str, i32> = results.into_iter().collect();
        assert_eq!(errno["getpid"], 0);
        assert_eq!(errno["clone3"], libc::ENOSYS);
        for denied in ["unshare(NEWUSER)", "mount", "bpf", "ptrace", "keyctl"] {
            assert_eq!(errno[denied], libc::EPERM, "{denied}");
        }
        // A plain thread (clone without namespace flags) still starts under the filter.
        let ok = std::thread::spawn(|| {
            seccompiler::apply_filter(&spliced().unwrap()).unwrap();
            std::thread::spawn(|| 7).join().unwrap()
        });
        assert_eq!(ok.join().unwrap(), 7);
    }
}
