//! Command-line options, named as virtiofsd names them, and `--print-capabilities`.
//! Parsing and printing only; main.rs turns options into configuration.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, ValueEnum};

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
    #[value(alias = "fallback")]
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

/// How the daemon keeps other host processes' truncates off the guest's mappings (I5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DaxGuard {
    /// fanotify when the daemon may create a group (root, Linux 6.14+), leases otherwise.
    Auto,
    /// A fanotify pre-content group: reads and writes by host processes leave the guest's
    /// mappings alone; only shrinks unmap the pages past the new EOF. Fails to start without.
    Fanotify,
    /// Leases: any host open of a mapped file revokes its pieces until the file is stable.
    Lease,
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
#[command(version, about, args_override_self = true, after_help = LEGACY_HELP)]
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
    /// How inodes are held: `prefer` as file handles where the filesystem and
    /// CAP_DAC_READ_SEARCH allow (no host fd per inode), O_PATH fds elsewhere; `never` always
    /// as O_PATH fds; `mandatory` as handles or not at all (the start or the lookup fails).
    #[arg(long, value_enum, default_value_t = InodeFileHandles::Prefer, require_equals = true, num_args = 0..=1, default_missing_value = "prefer")]
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
    /// How other host processes' truncates are kept off the guest's mappings.
    #[arg(long, value_enum, default_value_t = DaxGuard::Auto)]
    pub dax_guard: DaxGuard,
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

const LEGACY_HELP: &str = "virtiofsd's legacy forms are accepted too (libvirt before 10.0 passes them): \
-o source=DIR,cache=none|auto|always|metadata,sandbox=MODE,xattr,no_xattr,posix_acl,no_posix_acl,\
flock,no_flock,posix_lock,no_posix_lock,log_level=LEVEL,writeback,no_writeback,readdirplus,\
no_readdirplus,announce_submounts,no_announce_submounts,allow_direct_io,killpriv_v2,no_killpriv_v2,\
modcaps=CAPS (',,' is a literal comma), -d (--log-level debug) and -f (ignored: always in the \
foreground). POSIX and flock locks are forwarded together: no_posix_lock and no_flock must come \
together (they give --no-posix-locks).";

/// Parses the process's arguments, legacy forms (see [`legacy_to_separate`]) included; exits
/// with clap's usage error on a bad one.
pub fn parse_args() -> Options {
    match legacy_to_separate(std::env::args_os()) {
        Ok(args) => Options::parse_from(args),
        Err(msg) => Options::command().error(clap::error::ErrorKind::ValueValidation, msg).exit(),
    }
}

/// Rewrites virtiofsd's legacy options into the separate ones: `-o a,b=c` (or `-oa,b=c`),
/// which libvirt before 10.0 passes (`--fd=N -o source=DIR,cache=...,xattr,...`), `-d` and
/// `-f`. Everything else is passed through unchanged; the first item (the program) too.
pub fn legacy_to_separate<I: IntoIterator<Item = OsString>>(args: I) -> Result<Vec<OsString>, String> {
    let mut out = Vec::new();
    let mut lock_off = (false, false); // (posix, flock)
    let mut args = args.into_iter();
    out.extend(args.next());
    while let Some(arg) = args.next() {
        let list = match arg.to_str() {
            Some("-d") => {
                out.push("--log-level=debug".into());
                continue;
            }
            Some("-f") => continue,
            Some("-o") => args.next().ok_or("-o needs a value")?,
            Some(a) if a.starts_with("-o") && !a.starts_with("-o=") => OsString::from(&a[2..]),
            _ => {
                out.push(arg);
                continue;
            }
        };
        let list = list.into_string().map_err(|l| format!("-o {}: not UTF-8", l.to_string_lossy()))?;
        for item in split_legacy_list(&list) {
            push_legacy_item(&item, &mut out, &mut lock_off)?;
        }
    }
    match lock_off {
        (true, true) => out.push("--no-posix-locks".into()),
        (false, false) => {}
        _ => {
            return Err("-o no_posix_lock and no_flock: daxfsd forwards POSIX and flock locks together \
                        (--no-posix-locks turns both off), give both or neither"
                .into());
        }
    }
    Ok(out)
}

/// Appends the separate form of one legacy `-o` item; the lock switches are collected in
/// `lock_off` (posix, flock) and decided once all items are seen.
fn push_legacy_item(item: &str, out: &mut Vec<OsString>, lock_off: &mut (bool, bool)) -> Result<(), String> {
    let (key, value) = match item.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (item, None),
    };
    let long = key.replace('_', "-");
    match (key, value) {
        ("source", Some(dir)) => {
            out.push("--shared-dir".into());
            out.push(dir.into());
        }
        ("cache", Some(mode)) => {
            let mode = match mode {
                "none" | "never" => "never",
                "auto" | "always" | "metadata" => mode,
                _ => return Err(format!("-o cache={mode}: expected none, auto, always or metadata")),
            };
            out.push(format!("--cache={mode}").into());
        }
        ("log_level", Some("err")) => out.push("--log-level=error".into()),
        ("sandbox" | "log_level" | "modcaps", Some(v)) => out.push(format!("--{long}={v}").into()),
        (
            "xattr"
            | "posix_acl"
            | "writeback"
            | "no_readdirplus"
            | "announce_submounts"
            | "no_announce_submounts"
            | "allow_direct_io"
            | "killpriv_v2"
            | "no_killpriv_v2",
            None,
        ) => out.push(format!("--{long}").into()),
        // The defaults: nothing to add.
        ("no_xattr" | "no_posix_acl" | "no_writeback" | "readdirplus" | "posix_lock" | "flock", None) => {}
        ("no_posix_lock", None) => lock_off.0 = true,
        ("no_flock", None) => lock_off.1 = true,
        _ => return Err(format!("-o {item}: unknown or malformed legacy option")),
    }
    Ok(())
}

/// Splits a legacy `-o` list at single commas; `,,` stands for a comma (libvirt doubles
/// the commas of a path).
fn split_legacy_list(list: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = list.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ',' {
            cur.push(c);
        } else if chars.peek() == Some(&',') {
            chars.next();
            cur.push(',');
        } else {
            items.push(std::mem::take(&mut cur));
        }
    }
    items.push(cur);
    items.retain(|i| !i.is_empty());
    items
}

/// What `--print-capabilities` prints: the vhost-user.json backend description libvirt reads.
pub fn print_capabilities() {
    #[allow(clippy::print_stdout)]
    {
        println!("{{\n  \"type\": \"fs\",\n  \"features\": [\n    \"separate-options\"\n  ]\n}}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(args: &[&str]) -> Result<Vec<String>, String> {
        let v = legacy_to_separate(args.iter().map(OsString::from))?;
        Ok(v.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    fn parse(args: &[&str]) -> Options {
        Options::try_parse_from(legacy_to_separate(args.iter().map(OsString::from)).unwrap()).unwrap()
    }

    #[test]
    fn separate_options_pass_through() {
        let args = ["daxfsd", "--fd=3", "--shared-dir", "/s", "--cache", "never", "--xattr"];
        assert_eq!(legacy(&args).unwrap(), args);
    }

    /// What libvirt 9.0 passes for `<binary xattr='on'><cache mode='always'/><sandbox
    /// mode='chroot'/><lock posix='on' flock='on'/><thread_pool size='4'/></binary>`.
    #[test]
    fn libvirt_9_all_on() {
        let o = parse(&[
            "daxfsd",
            "--fd=25",
            "-o",
            "source=/srv/a,,b,cache=always,sandbox=chroot,xattr,flock,posix_lock",
            "--thread-pool-size=4",
        ]);
        assert_eq!(o.fd, Some(25));
        assert_eq!(o.shared_dir, Some(PathBuf::from("/srv/a,b")));
        assert_eq!(o.cache, Cache::Always);
        assert_eq!(o.sandbox, Sandbox::Chroot);
        assert!(o.xattr);
        assert!(!o.no_posix_locks);
        assert_eq!(o.thread_pool_size, 4);
    }

    /// ... and for `xattr='off'`, `cache mode='none'`, `lock posix='off' flock='off'`, with
    /// qemu.conf's virtiofsd_debug (-d).
    #[test]
    fn libvirt_9_all_off_and_debug() {
        let o = parse(&[
            "daxfsd",
            "--fd=25",
            "-o",
            "source=/srv,cache=none,sandbox=namespace,no_xattr,no_flock,no_posix_lock",
            "-d",
        ]);
        assert_eq!(o.shared_dir, Some(PathBuf::from("/srv")));
        assert_eq!(o.cache, Cache::Never);
        assert_eq!(o.sandbox, Sandbox::Namespace);
        assert!(!o.xattr);
        assert!(o.no_posix_locks);
        assert_eq!(o.log_level, LogLevel::Debug);
    }

    #[test]
    fn legacy_forms() {
        assert_eq!(
            legacy(&["d", "-osource=/x,log_level=err,no_readdirplus,announce_submounts", "-f"]).unwrap(),
            ["d", "--shared-dir", "/x", "--log-level=error", "--no-readdirplus", "--announce-submounts"]
        );
        assert_eq!(legacy(&["d", "-o", "modcaps=+sys_admin:-mknod"]).unwrap(), ["d", "--modcaps=+sys_admin:-mknod"]);
        let o = parse(&["d", "--fd=3", "-o", "source=/x", "-o", "writeback,killpriv_v2,allow_direct_io,posix_acl"]);
        assert!(o.writeback && o.killpriv_v2 && o.allow_direct_io && o.posix_acl);
    }

    #[test]
    fn legacy_errors() {
        assert!(legacy(&["d", "-o"]).is_err());
        assert!(legacy(&["d", "-o", "source=/x,bogus"]).is_err());
        assert!(legacy(&["d", "-o", "cache=sometimes"]).is_err());
        assert!(legacy(&["d", "-o", "xattr=yes"]).is_err());
        // One lock kind off alone cannot be honoured: refused, not ignored.
        assert!(legacy(&["d", "-o", "source=/x,no_flock"]).is_err());
        assert!(legacy(&["d", "-o", "source=/x,posix_lock,no_flock"]).is_err());
        assert!(legacy(&["d", "-o", "no_posix_lock"]).is_err());
    }
}
