//! The seccomp allowlists (the daemon's, and the supervisor's much shorter one), built with
//! seccompiler and loaded on the calling thread before any other thread exists, so every
//! later thread inherits them. No argument filtering: the list names syscalls only.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

use super::{SandboxError, sys};

/// What happens to a syscall not on the list (`--seccomp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeccompMode {
    /// No filter.
    None,
    /// Kill the process (the default).
    Kill,
    /// Allow it, but have the kernel log it (audit).
    Log,
    /// Fail it with SIGSYS, which the daemon reports on stderr.
    Trap,
}

/// Every syscall the serving daemon makes: the vhost-user transport (epoll, eventfd, socket
/// messages with fds, guest memory maps), the worker pool and its per-thread state (fsuid,
/// groups, CLONE_FS), passthrough file operations, leases and their signal, and what std and
/// the allocator need.
const DAEMON: &[libc::c_long] = &[
    // memory, threads, signals, time
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getrandom,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    // the kernel's restart of a timed sleep a stop interrupted (SIGSTOP/SIGCONT, a tracer)
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_prctl,
    // getrlimit (the fd quota reads RLIMIT_NOFILE); raising a limit needs a dropped capability
    libc::SYS_prlimit64,
    // credentials (per thread)
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_setgroups,
    libc::SYS_getgroups,
    libc::SYS_geteuid,
    libc::SYS_getegid,
    libc::SYS_getuid,
    libc::SYS_getgid,
    libc::SYS_capget,
    libc::SYS_unshare,
    libc::SYS_umask,
    // vhost-user transport
    libc::SYS_accept4,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_ppoll,
    // files
    libc::SYS_openat,
    libc::SYS_openat2,
    // inodes held as file handles (--inode-file-handles)
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    libc::SYS_close,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_getdents64,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_symlinkat,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_readlinkat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_syncfs,
    libc::SYS_copy_file_range,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fsetxattr,
    libc::SYS_fgetxattr,
    libc::SYS_flistxattr,
    libc::SYS_fremovexattr,
    libc::SYS_flock,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup3,
    // the host guard marks mapped files in its fanotify group
    libc::SYS_fanotify_mark,
    // the frontend conformance probe (--dax-probe-frontend) maps a memfd
    libc::SYS_memfd_create,
];

/// The supervisor: poll its three fds, answer maps queries by reading /proc, reap its child.
const SUPERVISOR: &[libc::c_long] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_futex,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_restart_syscall,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_ppoll,
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_getdents64,
    libc::SYS_fcntl,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_kill,
    libc::SYS_unlinkat,
];

#[cfg(target_arch = "x86_64")]
const ARCH_EXTRA: &[libc::c_long] =
    &[libc::SYS_poll, libc::SYS_epoll_wait, libc::SYS_arch_prctl, libc::SYS_renameat, libc::SYS_unlink];
#[cfg(not(target_arch = "x86_64"))]
const ARCH_EXTRA: &[libc::c_long] = &[];

/// Which list to load.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    Daemon,
    Supervisor,
}

/// The number of syscalls on `role`'s list (for the startup log and the README).
pub fn count(role: Role) -> usize {
    list(role).count()
}

fn list(role: Role) -> impl Iterator<Item = libc::c_long> {
    let base = match role {
        Role::Daemon => DAEMON,
        Role::Supervisor => SUPERVISOR,
    };
    base.iter().chain(ARCH_EXTRA).copied()
}

/// Loads `role`'s allowlist with `mode` on the calling thread (no_new_privs must be set).
pub fn load(role: Role, mode: SeccompMode) -> Result<(), SandboxError> {
    let mismatch = match mode {
        SeccompMode::None => return Ok(()),
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::Trap => {
            sys::install_sigsys_reporter().map_err(SandboxError::Seccomp)?;
            SeccompAction::Trap
        }
    };
    let rules: BTreeMap<i64, Vec<SeccompRule>> = list(role).map(|nr| (nr, Vec::new())).collect();
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| SandboxError::Filter(e.to_string()))?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| SandboxError::Filter(e.to_string()))?;
    let prog: BpfProgram =
        filter.try_into().map_err(|e: seccompiler::BackendError| SandboxError::Filter(e.to_string()))?;
    seccompiler::apply_filter(&prog).map_err(|e| SandboxError::Filter(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_have_no_duplicates() {
        for role in [Role::Daemon, Role::Supervisor] {
            let mut v: Vec<_> = list(role).collect();
            let n = v.len();
            v.sort_unstable();
            v.dedup();
            assert_eq!(v.len(), n, "{role:?}");
        }
    }

    #[test]
    fn daemon_list_leaves_out_the_dangerous_calls() {
        let v: Vec<_> = list(Role::Daemon).collect();
        for nr in [libc::SYS_mount, libc::SYS_ptrace, libc::SYS_execve, libc::SYS_ioctl, libc::SYS_setuid] {
            assert!(!v.contains(&nr), "{nr}");
        }
    }
}
