//! daxfsd: parse options, set up logging and limits, build the filesystem, the FUSE server and
//! the vhost-user device, then serve frontends on the socket one after another.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use log::{error, info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use daxfsd::cli::{self, Cache, InodeFileHandles, LogLevel, Options};
use daxfsd::dax::{self, Dax, LeasePolicy};
use daxfsd::device::{DeviceConfig, FsDevice, MAX_TAG_LEN};
use daxfsd::fs::passthrough::{CachePolicy, Config, DaxFiles, FileHandles, Passthrough};
use daxfsd::fs::sys;
use daxfsd::fuse::Server;
use daxfsd::sandbox::{self, CapSet, Confined, Entered, IdMap, SandboxError, SeccompMode};

/// Why the daemon could not start; each says what the operator should do.
#[derive(Debug, thiserror::Error)]
enum StartupError {
    #[error("shared directory {0:?} is not usable: {1} (give an existing directory with --shared-dir)")]
    SharedDir(PathBuf, std::io::Error),
    #[error("--tag must be 1 to {MAX_TAG_LEN} bytes")]
    Tag,
    #[error("--queue-size must be a power of two between 2 and 32768")]
    QueueSize,
    #[error(
        "--inode-file-handles=mandatory: the shared directory cannot be held as a file handle: {0} (it needs \
         CAP_DAC_READ_SEARCH, which a rootless daemon lacks, and a filesystem that supports file handles; \
         --inode-file-handles=prefer falls back to O_PATH fds)"
    )]
    FileHandles(std::io::Error),
    #[error("cannot set RLIMIT_NOFILE to {0}: {1}")]
    Rlimit(u64, std::io::Error),
    #[error("cannot listen on {0:?}: {1}")]
    Listen(PathBuf, vhost::vhost_user::Error),
    #[error("unknown group {0:?} for --socket-group")]
    Group(String),
    #[error("cannot give the socket to group {0}: {1}")]
    Chown(String, std::io::Error),
    #[error("--fd or --socket-path is required")]
    NoSocket,
    #[error("cannot start the device: {0}")]
    Device(String),
    #[error("--dax-window {0:?}: give 0 or a power of two that is a multiple of 2 MiB (e.g. 512M)")]
    DaxWindow(String),
    #[error(
        "--dax-window {window}: {slots} slots of 2 MiB, but the frontend's memory slots leave room for \
         {max} (QEMU makes each mapped slot a vhost memory slot; --dax-reserved-mem-slots {reserved} \
         stay free): use --dax-window {fit}M or less"
    )]
    DaxWindowSlots { window: String, slots: u64, max: usize, reserved: usize, fit: u64 },
    #[error("--dax-copy-max {0:?}: give a size in bytes, with an optional K/M/G suffix")]
    DaxCopyMax(String),
    #[error("--dax-guard fanotify: {0} (needs root and Linux 6.14+; --dax-guard lease uses leases)")]
    Guard(std::io::Error),
    #[error("cannot set up the DAX window: {0}")]
    Dax(std::io::Error),
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
    #[error("cannot block SIGIO: {0}")]
    Sigio(std::io::Error),
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            error!("{e}");
            #[allow(clippy::print_stderr)]
            {
                eprintln!("daxfsd: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: LogLevel) {
    let filter = match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
        LogLevel::Off => "off",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter))
        .format_timestamp_millis()
        .init();
}

/// Bytes with an optional K/M/G suffix.
fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (t.get(..i), 10),
        Some((i, 'm' | 'M')) => (t.get(..i), 20),
        Some((i, 'g' | 'G')) => (t.get(..i), 30),
        _ => (Some(t), 0),
    };
    let n: u64 = num.and_then(|n| n.parse().ok())?;
    n.checked_mul(1 << shift)
}

/// Parses `--dax-window`: a size (see `parse_size`) that is 0 or a power of two, a multiple
/// of 2 MiB.
fn dax_window(s: &str) -> Result<u64, StartupError> {
    let bad = || StartupError::DaxWindow(s.to_string());
    let bytes = parse_size(s).ok_or_else(bad)?;
    if bytes != 0 && (!bytes.is_power_of_two() || bytes % (2 << 20) != 0) {
        return Err(bad());
    }
    Ok(bytes)
}

/// `--dax-window`, checked against the frontend's memory slots: QEMU makes each mapped 2 MiB
/// slot one vhost memory slot, so a window with more slots than the budget can kill the VM.
fn dax_window_len(o: &Options) -> Result<u64, StartupError> {
    let len = dax_window(&o.dax_window)?;
    let max = dax::max_window_slots(o.dax_reserved_mem_slots);
    if len >> 21 > max as u64 {
        let fit = if max == 0 { 0 } else { 2u64 << (usize::BITS - 1 - max.leading_zeros()) };
        return Err(StartupError::DaxWindowSlots {
            window: o.dax_window.clone(),
            slots: len >> 21,
            max,
            reserved: o.dax_reserved_mem_slots,
            fit,
        });
    }
    Ok(len)
}

/// The host guard's fanotify group, made before the sandbox drops CAP_SYS_ADMIN (`--dax-guard`).
/// The supervisor reads its events, so there is none without one (`--sandbox none`).
fn guard_group(o: &Options, dax_on: bool, mode: sandbox::Mode) -> Result<Option<OwnedFd>, StartupError> {
    if !dax_on || o.dax_guard == cli::DaxGuard::Lease {
        return Ok(None);
    }
    let made = if mode == sandbox::Mode::None {
        Err(std::io::Error::other("--sandbox none has no supervisor to read its events"))
    } else {
        daxfsd::guard::fan::group()
    };
    match (made, o.dax_guard) {
        (Ok(g), _) => Ok(Some(g)),
        (Err(e), cli::DaxGuard::Fanotify) => Err(StartupError::Guard(e)),
        (Err(e), _) => {
            info!("host guard: no fanotify group ({e}); leases protect the mapped files (I5)");
            Ok(None)
        }
    }
}

fn make_dax(
    o: &Options,
    maps: Option<sandbox::MapsClient>,
    guard: Option<(OwnedFd, std::os::unix::net::UnixStream)>,
) -> Result<Option<Arc<Dax>>, StartupError> {
    let len = dax_window_len(o)?;
    if len == 0 {
        return Ok(None);
    }
    let policy = if o.dax_unprotected { LeasePolicy::Unprotected } else { LeasePolicy::Require };
    if o.dax_unprotected {
        warn!("--dax-unprotected: files that cannot be leased are mapped anyway; a host truncate can kill the VM");
    }
    let dax = Dax::new(len, sys::page_size() as u64, policy, o.dax_reserved_mem_slots).map_err(StartupError::Dax)?;
    let copy_max = parse_size(&o.dax_copy_max).ok_or_else(|| StartupError::DaxCopyMax(o.dax_copy_max.clone()))?;
    dax.set_copy_max(copy_max);
    if o.dax_probe_frontend {
        dax.probe_frontend();
    }
    if let Some((group, sock)) = guard {
        dax.set_host_guard(group, sock).map_err(StartupError::Guard)?;
        info!("host guard: fanotify; host reads and writes leave the guest's mappings alone");
    }
    if let Some(maps) = maps {
        dax.set_mapped_elsewhere(Arc::new(move |dev, ino, from, among| maps.processes_mapping(dev, ino, from, among)));
    }
    Ok(Some(Arc::new(dax)))
}

fn fs_config(o: &Options, confined: Confined, dax: Option<Arc<Dax>>) -> Config {
    let cache = match o.cache {
        Cache::Never => CachePolicy::Never,
        Cache::Metadata => CachePolicy::Metadata,
        Cache::Auto => CachePolicy::Auto,
        Cache::Always => CachePolicy::Always,
    };
    let dax_files = match o.dax_files {
        cli::DaxFiles::All => DaxFiles::All,
        cli::DaxFiles::Leasable => DaxFiles::Leasable,
        cli::DaxFiles::None => DaxFiles::None,
    };
    Config {
        root: confined.root,
        proc_self_fd: confined.proc_self_fd.map(Arc::new),
        dax,
        dax_files,
        cache,
        writeback: o.writeback,
        xattr: o.xattr || o.posix_acl,
        posix_acl: o.posix_acl,
        announce_submounts: o.announce_submounts && !o.no_announce_submounts,
        readonly: o.readonly,
        killpriv_v2: o.killpriv_v2 && !o.no_killpriv_v2,
        allow_direct_io: o.allow_direct_io,
        readdirplus: !o.no_readdirplus,
        posix_locks: !o.no_posix_locks,
        guest_fd_quota: o.guest_fd_quota,
        inode_file_handles: match o.inode_file_handles {
            InodeFileHandles::Never => FileHandles::Never,
            InodeFileHandles::Prefer => FileHandles::Prefer,
            InodeFileHandles::Mandatory => FileHandles::Mandatory,
        },
    }
}

fn set_rlimit(requested: Option<u64>) -> Result<(), StartupError> {
    let target = match requested {
        Some(0) => return Ok(()),
        Some(n) => n,
        None => {
            let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(1 << 20);
            let want = nr_open.min(1_000_000);
            if sys::nofile_limit().map(|(cur, _)| cur >= want).unwrap_or(false) {
                return Ok(());
            }
            want
        }
    };
    match sys::set_nofile_limit(target) {
        Err(e) if requested.is_some() => Err(StartupError::Rlimit(target, e)),
        Err(e) => {
            // Without CAP_SYS_RESOURCE, the hard limit is as far as we can go.
            let hard = sys::nofile_limit().map(|(_, h)| h).unwrap_or(0);
            let raised = hard > 0 && sys::set_nofile_limit_soft(hard.min(target)).is_ok();
            if !raised {
                warn!("cannot raise RLIMIT_NOFILE to {target}: {e}");
            }
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

fn group_id(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| f.get(2)?.parse().ok())
}

fn listen(o: &Options) -> Result<Listener, StartupError> {
    if let Some(fd) = o.fd {
        return Ok(Listener::from(sys::take_listener_fd(fd)));
    }
    let path = o.socket_path.clone().or_else(|| o.socket.clone()).ok_or(StartupError::NoSocket)?;
    if o.socket.is_some() {
        warn!("--socket is deprecated; use --socket-path");
    }
    let old = sys::umask(if o.socket_group.is_some() { 0o007 } else { 0o077 });
    let listener = Listener::new(&path, true).map_err(|e| StartupError::Listen(path.clone(), e));
    sys::umask(old);
    let listener = listener?;
    if let Some(group) = &o.socket_group {
        let gid = group_id(group).ok_or_else(|| StartupError::Group(group.clone()))?;
        std::os::unix::fs::chown(&path, None, Some(gid)).map_err(|e| StartupError::Chown(group.clone(), e))?;
    }
    info!("listening on {}", path.display());
    Ok(listener)
}

fn check_options(o: &Options) -> Result<(), StartupError> {
    if let Some(tag) = &o.tag
        && (tag.is_empty() || tag.len() > MAX_TAG_LEN)
    {
        return Err(StartupError::Tag);
    }
    if !o.queue_size.is_power_of_two() || o.queue_size < 2 {
        return Err(StartupError::QueueSize);
    }
    Ok(())
}

/// The sandbox the options ask for; anything it cannot give fails the start.
struct Confinement {
    mode: sandbox::Mode,
    seccomp: SeccompMode,
    caps: CapSet,
    uid_map: Vec<IdMap>,
    gid_map: Vec<IdMap>,
}

fn confinement(o: &Options, dax: bool) -> Result<Confinement, StartupError> {
    let mode = match o.sandbox {
        cli::Sandbox::Namespace => sandbox::Mode::Namespace,
        cli::Sandbox::Chroot => sandbox::Mode::Chroot,
        cli::Sandbox::None => sandbox::Mode::None,
    };
    let seccomp = match o.seccomp {
        cli::Seccomp::None => SeccompMode::None,
        cli::Seccomp::Kill => SeccompMode::Kill,
        cli::Seccomp::Log => SeccompMode::Log,
        cli::Seccomp::Trap => SeccompMode::Trap,
    };
    let mut caps = CapSet::daemon_default(dax);
    if o.inode_file_handles != InodeFileHandles::Never {
        // open_by_handle_at (a rootless daemon never has it where it counts: prefer falls back).
        caps.insert(sandbox::CAP_DAC_READ_SEARCH);
    }
    if let Some(spec) = &o.modcaps {
        caps = caps.modify(spec)?;
    }
    let maps = |v: &[String]| v.iter().map(|m| m.parse()).collect::<Result<Vec<IdMap>, _>>();
    Ok(Confinement { mode, seccomp, caps, uid_map: maps(&o.uid_map)?, gid_map: maps(&o.gid_map)? })
}

fn pool_size(requested: usize) -> usize {
    if requested > 0 {
        return requested;
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    (2 * cpus).max(4)
}

/// Parses and checks everything, listens, enters the sandbox (the process that started stays
/// outside as the supervisor and returns the daemon's exit code), then builds and serves.
fn run() -> Result<u8, StartupError> {
    let o = cli::parse_args();
    if o.print_capabilities {
        cli::print_capabilities();
        return Ok(0);
    }
    init_logging(o.log_level);
    // First, before any thread starts, so that every thread inherits the mask: a SIGIO (a lost
    // lease-break signal, or anyone's kill) must never end the daemon.
    daxfsd::dax::block_sigio_in_process().map_err(StartupError::Sigio)?;
    check_options(&o)?;
    let shared_dir = std::fs::canonicalize(o.shared_dir.clone().unwrap_or_default())
        .map_err(|e| StartupError::SharedDir(o.shared_dir.clone().unwrap_or_default(), e))?;
    check_dir(&shared_dir)?;
    let dax_on = dax_window_len(&o)? != 0;
    let c = confinement(&o, dax_on)?;
    set_rlimit(o.rlimit_nofile)?;
    let threads = pool_size(o.thread_pool_size);
    let mut listener = listen(&o)?;
    let group = guard_group(&o, dax_on, c.mode)?;
    let plan = sandbox::Plan {
        mode: c.mode,
        shared_dir: &shared_dir,
        uid_map: c.uid_map,
        gid_map: c.gid_map,
        scan: daxfsd::dax::processes_mapping,
        seccomp: c.seccomp,
        guard: group.as_ref(),
    };
    let mut confined = match sandbox::enter(&plan)? {
        Entered::Exited(code) => return Ok(code),
        Entered::Daemon(confined) => confined,
    };
    if let Some(sock) = &confined.guard {
        sock.set_read_timeout(Some(daxfsd::guard::TICK)).map_err(StartupError::Guard)?;
    }
    sandbox::lock_down(c.caps, c.seccomp)?;
    let guard = group.zip(confined.guard.take());
    let dax = make_dax(&o, confined.maps.take(), guard)?;
    let root = confined.root.clone();
    let rootless = confined.rootless;
    let fs = Passthrough::new(fs_config(&o, confined, dax.clone())).map_err(|e| {
        if o.inode_file_handles == InodeFileHandles::Mandatory && check_dir(&shared_dir).is_ok() {
            StartupError::FileHandles(e)
        } else {
            StartupError::SharedDir(root, e)
        }
    })?;
    let cfg = DeviceConfig {
        tag: o.tag.clone(),
        num_request_queues: usize::from(o.num_request_queues),
        queue_size: usize::from(o.queue_size),
        thread_pool_size: threads,
    };
    // A rootless daemon's supervisor sees only its own user's processes (I5).
    let watch = rootless.then(|| dax.clone()).flatten();
    let device = Arc::new(FsDevice::new(cfg, Server::new(fs), dax).map_err(|e| StartupError::Device(e.to_string()))?);
    serve(&device, &mut listener, o.once, watch.as_deref())?;
    Ok(0)
}

fn check_dir(p: &Path) -> Result<(), StartupError> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(StartupError::SharedDir(p.to_path_buf(), std::io::Error::from_raw_os_error(libc::ENOTDIR))),
        Err(e) => Err(StartupError::SharedDir(p.to_path_buf(), e)),
    }
}

/// Serves one frontend after another (or just one with --once). With `watch`, a frontend of
/// another user than the daemon gets no DAX (its mappings could not be watched, I5).
fn serve(
    device: &Arc<FsDevice<Passthrough>>,
    listener: &mut Listener,
    once: bool,
    watch: Option<&Dax>,
) -> Result<(), StartupError> {
    loop {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new("daxfsd".into(), Arc::clone(device), mem)
            .map_err(|e| StartupError::Device(e.to_string()))?;
        if let Err(e) = daemon.start(listener) {
            error!("cannot accept a frontend: {e}");
            return Err(StartupError::Device(e.to_string()));
        }
        info!("frontend connected");
        if let Some(dax) = watch
            && sandbox::frontend_is_other_user()
        {
            warn!(
                "DAX off for this frontend: it runs as another user than this rootless daemon, whose \
                 supervisor cannot see its mappings (I5); run the VMM as the daemon's user"
            );
            dax.refuse_unwatched_frontend();
        }
        match daemon.wait() {
            Ok(()) => {}
            Err(e) => info!("frontend session ended: {e}"),
        }
        drop(daemon);
        device.disconnected();
        if once {
            device.shutdown();
            return Ok(());
        }
    }
}
