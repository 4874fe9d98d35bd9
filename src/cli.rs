//! Command-line options, named as virtiofsd names them, and `--print-capabilities`.
//! Parsing and printing only; main.rs turns options into configuration.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Cache policy names (virtiofsd's `--cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Cache {
    Never,
    Metadata,
    Auto,
    Always,
}

/// Inode representation (virtiofsd's `--inode-file-handles`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InodeFileHandles {
    Never,
    Prefer,
    Mandatory,
}

/// Sandbox modes (virtiofsd's `--sandbox`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Sandbox {
    Namespace,
    Chroot,
    None,
}

/// What seccomp does with a syscall off the allowlist (virtiofsd's `--seccomp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Seccomp {
    None,
    Kill,
    Log,
    Trap,
}

/// Which files get per-inode DAX (FUSE_ATTR_DAX) under `-o dax=inode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DaxFiles {
    /// Every regular file.
    All,
    /// Regular files the daemon can protect with a lease (default).
    Leasable,
    /// None.
    None,
}

/// Log levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
    Off,
}

/// daxfsd: a vhost-user virtio-fs device (virtiofsd-compatible options).
#[derive(Debug, Parser)]
#[command(version, about, args_override_self = true)]
pub struct Options {
    /// Directory to share with the guest.
    #[arg(long, required_unless_present = "print_capabilities")]
    pub shared_dir: Option<PathBuf>,
    /// vhost-user socket path to listen on.
    #[arg(long, required_unless_present_any = ["fd", "socket", "print_capabilities"], conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,
    /// Deprecated alias of --socket-path.
    #[arg(long, hide = true, conflicts_with_all = ["fd", "socket_path"])]
    pub socket: Option<PathBuf>,
    /// An already listening vhost-user socket, by file descriptor number.
    #[arg(long)]
    pub fd: Option<i32>,
    /// Give the socket to this group (mode 0770 instead of 0700).
    #[arg(long, conflicts_with = "fd")]
    pub socket_group: Option<String>,
    /// Tag the guest mounts (virtio-fs config space; needed by generic vhost-user frontends).
    #[arg(long)]
    pub tag: Option<String>,
    /// Number of request queues (Linux >= 6.11 uses one per vCPU up to this).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub num_request_queues: u16,
    /// Size of each virtqueue (a power of two).
    #[arg(long, default_value_t = 1024)]
    pub queue_size: u16,
    /// Worker threads serving requests from every queue (0 picks 2 per CPU, at least 4).
    #[arg(long, default_value_t = 0)]
    pub thread_pool_size: usize,
    /// Cache policy.
    #[arg(long, value_enum, default_value_t = Cache::Auto, ignore_case = true)]
    pub cache: Cache,
    /// Offer the guest a writeback cache.
    #[arg(long)]
    pub writeback: bool,
    /// Enable extended attributes.
    #[arg(long)]
    pub xattr: bool,
    /// Enable POSIX ACLs (implies --xattr).
    #[arg(long)]
    pub posix_acl: bool,
    /// Announce mount points below the shared directory as submounts (default).
    #[arg(long, default_value_t = true, overrides_with = "no_announce_submounts")]
    pub announce_submounts: bool,
    /// Do not announce submounts.
    #[arg(long)]
    pub no_announce_submounts: bool,
    /// Share the directory read-only (writes fail with EROFS).
    #[arg(long)]
    pub readonly: bool,
    /// Offer FUSE_HANDLE_KILLPRIV_V2.
    #[arg(long, overrides_with = "no_killpriv_v2")]
    pub killpriv_v2: bool,
    /// Do not offer FUSE_HANDLE_KILLPRIV_V2 (default).
    #[arg(long)]
    pub no_killpriv_v2: bool,
    /// Honour the guest's O_DIRECT.
    #[arg(long)]
    pub allow_direct_io: bool,
    /// Disable READDIRPLUS.
    #[arg(long)]
    pub no_readdirplus: bool,
    /// Do not forward POSIX and flock locks to the host (the guest then locks locally).
    #[arg(long)]
    pub no_posix_locks: bool,
    /// How inodes are held: only `never` (O_PATH fds) is implemented; `prefer` falls back to it.
    #[arg(long, value_enum, default_value_t = InodeFileHandles::Never, require_equals = true, num_args = 0..=1, default_missing_value = "prefer")]
    pub inode_file_handles: InodeFileHandles,
    /// Sandbox: `namespace` (new pid, mount, net, IPC namespaces with the shared directory as
    /// root; a user namespace when not root), `chroot` (root only), or `none`.
    #[arg(long, value_enum, default_value_t = Sandbox::Namespace, ignore_case = true)]
    pub sandbox: Sandbox,
    /// What happens to a syscall off the seccomp allowlist: kill the process, log it, trap
    /// (fail it and report on stderr), or none (no filter).
    #[arg(long, value_enum, default_value_t = Seccomp::Kill, ignore_case = true)]
    pub seccomp: Seccomp,
    /// Change the kept capability set: `+name` adds, `-name` removes, ':'-separated
    /// (e.g. `+sys_admin:-mknod`).
    #[arg(long)]
    pub modcaps: Option<String>,
    /// User-namespace uid map for a rootless daemon, `:namespace_uid:host_uid:count:`
    /// (repeatable; needs newuidmap unless it maps only the daemon's own uid).
    #[arg(long)]
    pub uid_map: Vec<String>,
    /// User-namespace gid map for a rootless daemon, `:namespace_gid:host_gid:count:`.
    #[arg(long)]
    pub gid_map: Vec<String>,
    /// Size of the DAX window (shm region 0): a power of two, a multiple of 2 MiB, with an
    /// optional K/M/G suffix; 0 disables DAX. Needs a frontend with SHMEM (QEMU >= 11.1's
    /// vhost-user-test-device-pci); others get plain virtio-fs. At most 512M with the default
    /// --dax-reserved-mem-slots: QEMU makes every mapped 2 MiB slot one of its at most 509
    /// vhost memory slots.
    #[arg(long, default_value = "512M")]
    pub dax_window: String,
    /// Vhost memory slots of the frontend the DAX window leaves free (for memory hotplug and
    /// virtio-mem); the window's pieces and guest RAM share the rest.
    #[arg(long, default_value_t = 16)]
    pub dax_reserved_mem_slots: usize,
    /// Read-only DAX mappings of files up to this size (K/M suffix) are served as copies in
    /// the daemon's own memory: no SHMEM_MAP round trip, no lease; the guest sees host changes
    /// when it revalidates the file. 0: map every file itself.
    #[arg(long, default_value = "64K")]
    pub dax_copy_max: String,
    /// Which files get per-inode DAX under `-o dax=inode`.
    #[arg(long, value_enum, default_value_t = DaxFiles::Leasable)]
    pub dax_files: DaxFiles,
    /// UNSAFE: map files the daemon cannot lease. Another host process truncating such a file
    /// while the guest maps it can kill the VM (host SIGBUS). Default: refuse with EIO.
    #[arg(long)]
    pub dax_unprotected: bool,
    /// Test aid: at the guest's first SETUPMAPPING, check the frontend's SHMEM_MAP/UNMAP rules
    /// on the last pages of the window and log the result ("frontend conformance: ...").
    #[arg(long, hide = true)]
    pub dax_probe_frontend: bool,
    /// Log level (RUST_LOG overrides it).
    #[arg(long, value_enum, default_value_t = LogLevel::Info, ignore_case = true)]
    pub log_level: LogLevel,
    /// RLIMIT_NOFILE to set (0 leaves it unchanged; default raises it to min(1000000, nr_open)).
    #[arg(long)]
    pub rlimit_nofile: Option<u64>,
    /// Most host fds the guest may keep open at once (handles, lock owners, DAX files); past
    /// it OPEN, CREATE, OPENDIR and SETLK answer EMFILE. 0 = RLIMIT_NOFILE minus a reserve of
    /// a quarter of it (at least 256).
    #[arg(long, default_value_t = 0)]
    pub guest_fd_quota: usize,
    /// Exit when the frontend disconnects instead of waiting for the next one (virtiofsd's behaviour).
    #[arg(long)]
    pub once: bool,
    /// Print the vhost-user backend capabilities (JSON, for libvirt) and exit.
    #[arg(long)]
    pub print_capabilities: bool,
}

/// What `--print-capabilities` prints: the vhost-user.json backend description libvirt reads.
pub fn print_capabilities() {
    #[allow(clippy::print_stdout)]
    {
        println!("{{\n  \"type\": \"fs\",\n  \"features\": [\n    \"separate-options\"\n  ]\n}}");
    }
}
