//! The sandbox, virtiofsd's model: namespaces (or chroot) that leave the shared directory as
//! the daemon's root, a minimal capability set, no_new_privs and a seccomp allowlist. Every
//! protection asked for is given or the start fails (fail closed). Only main.rs calls this.

mod caps;
mod idmap;
mod namespace;
mod seccomp;
mod supervisor;
mod sys;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use log::info;

pub use caps::{CAP_DAC_READ_SEARCH, CapSet};
pub use idmap::IdMap;
pub use seccomp::SeccompMode;
pub use supervisor::MapsClient;

/// How the daemon confines itself (`--sandbox`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// New pid, mount, net and IPC namespaces (and a user namespace when not root), with the
    /// shared directory as `/` (pivot_root). The default.
    Namespace,
    /// chroot into the shared directory (root only).
    Chroot,
    /// Nothing.
    None,
}

/// The processes (among the given ones, or all) other than `exclude` that map file (dev, ino)
/// at or past file offset `from`, read from the host's /proc.
pub type ScanFn = fn(u64, u64, u64, Option<&[u32]>, &[u32]) -> Vec<u32>;

/// What to set up.
pub struct Plan<'a> {
    pub mode: Mode,
    pub shared_dir: &'a Path,
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
    /// The supervisor's /proc scan for the daemon's maps queries.
    pub scan: ScanFn,
    /// The supervisor's seccomp action (the same as the daemon's).
    pub seccomp: SeccompMode,
    /// The host guard's fanotify group (`crate::guard`): the supervisor reads its events.
    pub guard: Option<&'a OwnedFd>,
}

/// Which process returned from `enter`.
pub enum Entered {
    /// This process is the daemon: serve from inside the sandbox.
    Daemon(Confined),
    /// This process supervised the daemon (or was the namespace's init waiter), and the
    /// daemon exited with this code: exit with it.
    Exited(u8),
}

/// What the daemon sees from inside.
pub struct Confined {
    /// The shared directory's path from inside (`/` unless the mode is none).
    pub root: PathBuf,
    /// An O_PATH fd of /proc/self/fd, opened before the rest of /proc went away.
    pub proc_self_fd: Option<OwnedFd>,
    /// The maps channel to the supervisor (None without a supervisor: scan /proc directly).
    pub maps: Option<MapsClient>,
    /// In a user namespace of its own (started as non-root).
    pub rootless: bool,
    /// The host guard's channel from the supervisor (None: no guard; leases instead).
    pub guard: Option<std::os::unix::net::UnixStream>,
}

/// Why the sandbox could not be set up; each says what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "sandbox setup failed at {0}: {1} (run as root, or as a user allowed to create user namespaces; --sandbox none runs unconfined)"
    )]
    Setup(&'static str, std::io::Error),
    #[error("--sandbox {0} needs root (use --sandbox namespace for a rootless daemon)")]
    NeedsRoot(&'static str),
    #[error("--uid-map/--gid-map are for a daemon started as a non-root user (with --sandbox namespace)")]
    MapsAsRoot,
    #[error("bad uid/gid map {0:?}: give :namespace_id:host_id:count:")]
    IdMap(String),
    #[error("{0} failed: {1} (install uidmap and give the user subordinate ids in /etc/subuid and /etc/subgid)")]
    MapHelper(String, String),
    #[error("bad --modcaps item {0:?}: give +name or -name, e.g. +sys_admin:-mknod")]
    Modcaps(String),
    #[error("cannot drop capabilities: {0}")]
    Caps(std::io::Error),
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("cannot load the seccomp filter: {0}")]
    Filter(String),
    #[error("cannot install the SIGSYS reporter for --seccomp trap: {0}")]
    Seccomp(std::io::Error),
}

/// Sets up `plan.mode`. Must run while the process has no other thread: it forks.
pub fn enter(plan: &Plan<'_>) -> Result<Entered, SandboxError> {
    match plan.mode {
        Mode::None => {
            if !plan.uid_map.is_empty() || !plan.gid_map.is_empty() {
                return Err(SandboxError::MapsAsRoot);
            }
            info!("sandbox: none (--sandbox none): the daemon sees the whole host");
            let root = plan.shared_dir.to_path_buf();
            Ok(Entered::Daemon(Confined { root, proc_self_fd: None, maps: None, rootless: false, guard: None }))
        }
        Mode::Chroot => namespace::chroot(plan),
        Mode::Namespace => namespace::namespace(plan),
    }
}

/// Highest fd number `frontend_is_other_user` looks at: the connection is accepted as the
/// lowest free number, which a session's inode fds have given back by the next connection.
const MAX_SCANNED_FD: libc::c_int = 4096;

/// Whether a connected socket of this process has a peer of another user than the daemon:
/// after a rootless daemon accepted its frontend, whether that frontend runs as someone else
/// (whose /proc/PID/maps the supervisor cannot read, so I5 could not watch its mappings).
pub fn frontend_is_other_user() -> bool {
    let me = sys::geteuid();
    (0..MAX_SCANNED_FD).filter_map(sys::peer_uid).any(|uid| uid != me)
}

/// The daemon's last step before it builds anything: keep only `keep` of its capabilities,
/// set no_new_privs, load the seccomp allowlist. Every thread created later inherits all three.
pub fn lock_down(keep: CapSet, mode: SeccompMode) -> Result<(), SandboxError> {
    caps::restrict_to(keep)?;
    sys::set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    seccomp::load(seccomp::Role::Daemon, mode)?;
    let n = seccomp::count(seccomp::Role::Daemon);
    info!("capabilities kept: {:?}; no_new_privs; seccomp {mode:?} ({n} syscalls allowed)", keep.names());
    Ok(())
}

/// The namespace's init waiter only waits: no capabilities, the supervisor's allowlist.
fn lock_down_waiter(mode: SeccompMode) -> Result<(), SandboxError> {
    caps::restrict_to(CapSet::default())?;
    sys::set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    seccomp::load(seccomp::Role::Supervisor, mode)
}

/// The supervisor keeps CAP_SYS_PTRACE only (to read other processes' /proc/PID/maps) and a
/// short allowlist of its own, under the daemon's seccomp mode. Runs after its last exec.
fn lock_down_supervisor(mode: SeccompMode) -> Result<(), SandboxError> {
    let mut keep = CapSet::default();
    keep.insert(caps::CAP_SYS_PTRACE);
    caps::restrict_to(keep)?;
    sys::set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    seccomp::load(seccomp::Role::Supervisor, mode)
}
