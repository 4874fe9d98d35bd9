//! The sandbox as a host sees it: the serving process's namespaces, root, capabilities,
//! no_new_privs and seccomp state, in each mode, and options that ask for protection the
//! daemon cannot give failing the start.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::fuse::*;

/// capability.h numbers no sandboxed daemon may hold.
const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_RAWIO: u32 = 17;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_MKNOD: u32 = 27;

fn is_root() -> bool {
    // /proc/self belongs to the process's euid.
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn cap_eff(pid: u32) -> u64 {
    u64::from_str_radix(&status_field(pid, "CapEff"), 16).unwrap()
}

fn ns(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap().to_string_lossy().into_owned()
}

/// Starts a daemon, waits until it serves a FUSE session, and returns it with its serving pid.
fn serving(extra: &[&str]) -> (Daemon, Client, u32) {
    let d = Daemon::start(extra);
    let c = d.client();
    let pid = d.serving_pid();
    (d, c, pid)
}

fn assert_locked_down(pid: u32) {
    assert_eq!(status_field(pid, "Seccomp"), "2", "seccomp filter mode");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let eff = cap_eff(pid);
    for cap in [CAP_SYS_ADMIN, CAP_SYS_RAWIO, CAP_SYS_MODULE, CAP_SYS_PTRACE] {
        assert_eq!(eff & (1 << cap), 0, "capability {cap} kept: CapEff {eff:x}");
    }
}

#[test]
fn default_sandbox_is_namespaces_with_the_share_as_root_seccomp_and_few_caps() {
    if !is_root() {
        eprintln!("skipped: the root sandbox needs root (CI runs as root)");
        return;
    }
    let (d, c, pid) = serving(&[]);
    assert_ne!(pid, d.pid(), "no separate serving process: not sandboxed");
    for kind in ["mnt", "pid", "net", "ipc"] {
        assert_ne!(ns(&pid.to_string(), kind), ns("self", kind), "{kind} namespace shared with the host");
    }
    // Its root is the shared directory.
    let root = std::fs::metadata(format!("/proc/{pid}/root/.")).unwrap();
    let share = std::fs::metadata(d.share.path()).unwrap();
    assert_eq!((root.dev(), root.ino()), (share.dev(), share.ino()));
    // It is pid 1 of its own pid namespace.
    assert_eq!(status_field(pid, "NSpid").split_whitespace().last(), Some("1"));
    assert_locked_down(pid);
    // The supervisor outside keeps CAP_SYS_PTRACE only, under seccomp too.
    assert_eq!(cap_eff(d.pid()), 1 << CAP_SYS_PTRACE);
    assert_eq!(status_field(d.pid(), "Seccomp"), "2");
    c.getattr(1).unwrap();
}

#[test]
fn chroot_sandbox_has_the_share_as_root_in_the_host_namespaces() {
    if !is_root() {
        eprintln!("skipped: --sandbox chroot needs root (CI runs as root)");
        return;
    }
    let (d, c, pid) = serving(&["--sandbox", "chroot"]);
    assert_ne!(pid, d.pid());
    assert_eq!(ns(&pid.to_string(), "mnt"), ns("self", "mnt"));
    let root = std::fs::metadata(format!("/proc/{pid}/root/.")).unwrap();
    let share = std::fs::metadata(d.share.path()).unwrap();
    assert_eq!((root.dev(), root.ino()), (share.dev(), share.ino()));
    assert_locked_down(pid);
    c.getattr(1).unwrap();
}

#[test]
fn sandbox_none_serves_from_the_started_process_still_filtered() {
    let (d, c, pid) = serving(&["--sandbox", "none"]);
    assert_eq!(pid, d.pid());
    assert_eq!(ns(&pid.to_string(), "mnt"), ns("self", "mnt"));
    assert_eq!(status_field(pid, "Seccomp"), "2");
    c.getattr(1).unwrap();
}

#[test]
fn seccomp_none_loads_no_filter() {
    let (_d, c, pid) = serving(&["--seccomp", "none"]);
    assert_eq!(status_field(pid, "Seccomp"), "0");
    c.getattr(1).unwrap();
}

#[test]
fn modcaps_removes_a_kept_capability() {
    if !is_root() {
        eprintln!("skipped: capabilities are only dropped as root");
        return;
    }
    let (_d, c, pid) = serving(&["--modcaps=-mknod"]);
    assert_eq!(cap_eff(pid) & (1 << CAP_MKNOD), 0);
    assert_locked_down(pid);
    c.getattr(1).unwrap();
}

#[test]
fn protection_that_cannot_be_given_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let base = ["--shared-dir", dir.path().to_str().unwrap(), "--socket-path", sock.to_str().unwrap()];
    let mut cases: Vec<Vec<&str>> =
        vec![vec!["--modcaps=+no_such_cap"], vec!["--modcaps=sys_admin"], vec!["--uid-map=0:0:1"]];
    if is_root() {
        // Maps are for a rootless daemon; as root they would be silently meaningless.
        cases.push(vec!["--uid-map=:0:0:1:"]);
    }
    for extra in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_daxfsd")).args(base).args(&extra).output().unwrap();
        assert!(!out.status.success(), "{extra:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("daxfsd:"), "{extra:?}: {err}");
    }
}

#[test]
fn rootless_daemon_runs_in_a_user_namespace_and_refuses_dax_to_another_users_frontend() {
    if !is_root() {
        eprintln!("skipped: the test starts the daemon as uid 65534");
        return;
    }
    let d = Daemon::start_as(65534, &["--dax-window", "64M"]);
    // This test (root) is the frontend: another user than the daemon.
    let c = Client::connect_dax(&d.socket, 1, false);
    let pid = d.serving_pid();
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    assert_eq!(map.split_whitespace().collect::<Vec<_>>(), ["0", "65534", "1"], "uid_map {map:?}");
    assert_locked_down(pid);
    let (e, _fh) = c.create(1, "f", libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
    let err = c.setupmapping(e.nodeid, 0, 2 << 20, daxfsd::fuse::abi::FUSE_SETUPMAPPING_FLAG_READ, 0).unwrap_err();
    assert_eq!(err, libc::EIO, "DAX for a frontend whose mappings the daemon cannot watch");
    d.wait_for_log("DAX off for this frontend");
    c.getattr(e.nodeid).unwrap();
}
