//! Entering the sandbox: the process tree (supervisor, namespace init waiter, daemon), the new
//! namespaces, the mount setup that leaves the shared directory as the daemon's root, and
//! chroot mode. Runs while the process is single-threaded.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use log::{error, info};

use super::idmap;
use super::supervisor::{self, MapsClient, Watch};
use super::{Confined, Entered, Plan, SandboxError, sys};

/// Signals the supervisor passes on to its child.
const FORWARDED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn step(what: &'static str) -> impl FnOnce(std::io::Error) -> SandboxError {
    move |e| SandboxError::Setup(what, e)
}

fn cpath(p: &Path) -> Result<CString, SandboxError> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| SandboxError::Setup("shared directory path", std::io::Error::from_raw_os_error(libc::EINVAL)))
}

/// The three channels between the processes, as socket pairs (daemon end, supervisor end).
struct Channels {
    maps: (UnixStream, UnixStream),
    guard: Option<(UnixStream, UnixStream)>,
    daemon_pid: (UnixStream, UnixStream),
    sync: (UnixStream, UnixStream),
}

fn channels(guard: bool) -> Result<Channels, SandboxError> {
    let pair = || UnixStream::pair().map_err(step("socketpair"));
    let guard = if guard { Some(pair()?) } else { None };
    Ok(Channels { maps: pair()?, guard, daemon_pid: pair()?, sync: pair()? })
}

/// The supervisor's watcher of the host guard's group, on its end of the channel.
fn watcher(group: Option<&OwnedFd>, sock: Option<UnixStream>) -> Result<Option<crate::guard::Watcher>, SandboxError> {
    let (Some(group), Some(sock)) = (group, sock) else { return Ok(None) };
    let group = group.try_clone().map_err(step("dup of the fanotify group"))?;
    Ok(Some(crate::guard::Watcher::new(group, sock)))
}

/// Runs the supervisor in this process until the child exits.
fn supervise(w: Watch, mode: super::SeccompMode) -> Result<Entered, SandboxError> {
    let signals = sys::signalfd(&FORWARDED).map_err(step("signalfd"))?;
    let pidfd = sys::pidfd_open(w.child).map_err(step("pidfd_open"))?;
    // A daemon that sends half a query must not hold the supervisor (signals, reaping) for long.
    if let Some(m) = &w.maps {
        m.set_read_timeout(Some(supervisor::QUERY_TIMEOUT)).map_err(step("SO_RCVTIMEO"))?;
    }
    super::lock_down_supervisor(mode)?;
    let code = supervisor::run(w, &pidfd, &signals).map_err(step("supervising the daemon"))?;
    Ok(Entered::Exited(code))
}

/// A forked child's first step: die with its parent, and make sure the parent is still there.
fn tie_to_parent(parent: libc::pid_t) -> Result<(), SandboxError> {
    sys::set_parent_death_signal(libc::SIGKILL).map_err(step("PR_SET_PDEATHSIG"))?;
    if parent != 0 && sys::getppid() != parent {
        return Err(SandboxError::Setup("parent exited", std::io::Error::from_raw_os_error(libc::ESRCH)));
    }
    Ok(())
}

/// chroot mode: the daemon is a child of the supervisor, chrooted into the shared directory.
pub(super) fn chroot(plan: &Plan<'_>) -> Result<Entered, SandboxError> {
    if sys::geteuid() != 0 {
        return Err(SandboxError::NeedsRoot("chroot"));
    }
    let dir = cpath(plan.shared_dir)?;
    let ch = channels(plan.guard.is_some())?;
    let me = std::process::id();
    let (guard_daemon, guard_sup) = ch.guard.map_or((None, None), |(d, s)| (Some(d), Some(s)));
    match sys::fork().map_err(step("fork"))? {
        sys::Forked::Parent(child) => {
            drop((ch.maps.0, ch.daemon_pid, ch.sync, guard_daemon));
            let guard = watcher(plan.guard, guard_sup)?;
            supervise(
                Watch { child, maps: Some(ch.maps.1), daemon_pid: None, scan: plan.scan, last_full_scan: None, guard },
                plan.seccomp,
            )
        }
        sys::Forked::Child => {
            tie_to_parent(i32::try_from(me).unwrap_or(0))?;
            drop((ch.maps.1, ch.daemon_pid, ch.sync, guard_sup));
            let proc_self_fd =
                sys::open(c"/proc/self/fd", libc::O_PATH | libc::O_DIRECTORY).map_err(step("open /proc/self/fd"))?;
            sys::chroot(&dir).map_err(step("chroot"))?;
            sys::chdir(c"/").map_err(step("chdir /"))?;
            sys::clear_groups().map_err(step("setgroups"))?;
            info!("sandbox: chroot into {}", plan.shared_dir.display());
            Ok(Entered::Daemon(confined(proc_self_fd, (ch.maps.0, guard_daemon), false)))
        }
    }
}

fn confined(proc_self_fd: OwnedFd, (maps, guard): (UnixStream, Option<UnixStream>), rootless: bool) -> Confined {
    Confined { root: "/".into(), proc_self_fd: Some(proc_self_fd), maps: Some(MapsClient::new(maps)), rootless, guard }
}

/// namespace mode: supervisor -> init waiter (new pid namespace, and a user namespace when not
/// root) -> daemon (pid 1 there, new mount, net and IPC namespaces, the share as its root).
pub(super) fn namespace(plan: &Plan<'_>) -> Result<Entered, SandboxError> {
    let userns = sys::geteuid() != 0;
    let maps = idmap::plan(userns, &plan.uid_map, &plan.gid_map)?;
    let dir = cpath(plan.shared_dir)?;
    let ch = channels(plan.guard.is_some())?;
    let me = std::process::id();
    let (guard_daemon, guard_sup) = ch.guard.map_or((None, None), |(d, s)| (Some(d), Some(s)));
    match sys::fork().map_err(step("fork"))? {
        sys::Forked::Parent(child) => {
            drop((ch.maps.0, ch.daemon_pid.0, guard_daemon));
            let guard = watcher(plan.guard, guard_sup)?;
            let (_, mut sync) = ch.sync;
            if let Some(maps) = &maps {
                handshake_maps(&mut sync, child, maps)?;
            }
            drop(sync);
            supervise(
                Watch {
                    child,
                    maps: Some(ch.maps.1),
                    daemon_pid: Some(ch.daemon_pid.1),
                    scan: plan.scan,
                    last_full_scan: None,
                    guard,
                },
                plan.seccomp,
            )
        }
        sys::Forked::Child => {
            tie_to_parent(i32::try_from(me).unwrap_or(0))?;
            drop((ch.maps.1, ch.daemon_pid.1, guard_sup));
            let (mut sync, _) = ch.sync;
            let flags = libc::CLONE_NEWPID | if userns { libc::CLONE_NEWUSER } else { 0 };
            sys::unshare(flags).map_err(step("unshare(CLONE_NEWPID|CLONE_NEWUSER)"))?;
            if userns {
                // Tell the supervisor to write our maps, and wait until it has.
                let mut b = [0u8; 1];
                sync.write_all(b"u").and_then(|()| sync.read_exact(&mut b)).map_err(step("uid/gid map handshake"))?;
                sys::become_ns_root().map_err(step("setresuid(0) in the user namespace"))?;
            }
            drop(sync);
            init_waiter(&dir, ((ch.maps.0, guard_daemon), ch.daemon_pid.0), userns, (plan.shared_dir, plan.seccomp))
        }
    }
}

fn handshake_maps(sync: &mut UnixStream, child: libc::pid_t, maps: &idmap::Maps) -> Result<(), SandboxError> {
    let mut b = [0u8; 1];
    sync.read_exact(&mut b).map_err(step("uid/gid map handshake"))?;
    idmap::write(child, maps)?;
    sync.write_all(b"m").map_err(step("uid/gid map handshake"))
}

/// The process that made the pid namespace forks its init (the daemon) and waits for it.
fn init_waiter(
    dir: &CString,
    (maps, mut pid_out): ((UnixStream, Option<UnixStream>), UnixStream),
    userns: bool,
    (shown, mode): (&Path, super::SeccompMode),
) -> Result<Entered, SandboxError> {
    match sys::fork().map_err(step("fork into the pid namespace"))? {
        sys::Forked::Parent(daemon) => {
            drop(maps);
            if let Err(e) = pid_out.write_all(&daemon.to_le_bytes()) {
                error!("cannot report the daemon's pid to the supervisor: {e}");
            }
            drop(pid_out);
            super::lock_down_waiter(mode)?;
            let status = sys::waitpid(daemon).map_err(step("waiting for the daemon"))?;
            Ok(Entered::Exited(super::supervisor::report(status)))
        }
        sys::Forked::Child => {
            drop(pid_out);
            sys::set_parent_death_signal(libc::SIGKILL).map_err(step("PR_SET_PDEATHSIG"))?;
            let proc_self_fd = enter_mount_namespace(dir)?;
            // In a user namespace with setgroups denied, the groups are already fixed.
            if !userns {
                sys::clear_groups().map_err(step("setgroups"))?;
            }
            let user = if userns { "user, " } else { "" };
            info!("sandbox: new {user}pid, mount, net and IPC namespaces; root = {}", shown.display());
            Ok(Entered::Daemon(confined(proc_self_fd, maps, userns)))
        }
    }
}

/// New mount, net and IPC namespaces; a proc for our pid namespace (kept as an fd to
/// /proc/self/fd, which reopens inodes); then the shared directory becomes `/`.
fn enter_mount_namespace(dir: &CString) -> Result<OwnedFd, SandboxError> {
    sys::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC)
        .map_err(step("unshare(CLONE_NEWNS|CLONE_NEWNET|CLONE_NEWIPC)"))?;
    // No mount event of ours goes back to the host; host mounts still reach us.
    sys::mount(None, c"/", None, libc::MS_REC | libc::MS_SLAVE).map_err(step("mount / MS_SLAVE"))?;
    let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    sys::mount(Some(c"proc"), c"/proc", Some(c"proc"), proc_flags).map_err(step("mount proc"))?;
    let proc_self_fd =
        sys::open(c"/proc/self/fd", libc::O_PATH | libc::O_DIRECTORY).map_err(step("open /proc/self/fd"))?;
    sys::mount(Some(dir), dir, None, libc::MS_BIND | libc::MS_REC).map_err(step("bind-mount the shared directory"))?;
    sys::chdir(dir).map_err(step("chdir into the shared directory"))?;
    sys::pivot_root(c".", c".").map_err(step("pivot_root"))?;
    sys::umount2(c".", libc::MNT_DETACH).map_err(step("detach the old root"))?;
    sys::chdir(c"/").map_err(step("chdir /"))?;
    Ok(proc_self_fd)
}
