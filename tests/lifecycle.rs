//! The daemon's life: options, capabilities, frontends coming and going.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::fuse::*;
use common::vmm::VmmOptions;

fn daxfsd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_daxfsd")).args(args).output().unwrap()
}

#[test]
fn print_capabilities_is_libvirt_json() {
    let out = daxfsd(&["--print-capabilities"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\"type\": \"fs\""), "{text}");
    assert!(text.trim_start().starts_with('{') && text.trim_end().ends_with('}'));
}

#[test]
fn unusable_shared_dir_is_one_clear_error() {
    let out = daxfsd(&["--shared-dir", "/nonexistent/dir", "--socket-path", "/tmp/never.sock"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("shared directory") && err.contains("/nonexistent/dir"), "{err}");
}

#[test]
fn bad_options_fail_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for bad in [
        vec!["--shared-dir", d, "--socket-path", "/tmp/x.sock", "--tag", "0123456789012345678901234567890123456789"],
        vec!["--shared-dir", d, "--socket-path", "/tmp/x.sock", "--queue-size", "1000"],
        vec!["--shared-dir", d, "--socket-path", "/tmp/x.sock", "--cache", "sometimes"],
        vec!["--shared-dir", d],
    ] {
        let out = daxfsd(&bad);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn config_space_carries_tag_and_queue_count() {
    let d = Daemon::start(&["--num-request-queues", "3"]);
    let c = Client::connect(&d.socket, 3, VmmOptions::default());
    let cfg = c.vmm.config().unwrap();
    assert_eq!(cfg.tag, "testfs");
    assert_eq!(cfg.num_request_queues, 3);
}

#[test]
fn a_new_frontend_is_served_after_the_old_one_hangs_up() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"first");
    let fh = c.open(n, libc::O_RDONLY).unwrap();
    drop(c);
    let c2 = d.client();
    assert_eq!(c2.getattr(n).unwrap_err(), libc::ENOENT, "the old session's nodes are gone");
    let e = c2.lookup(1, "f").unwrap();
    let fh2 = c2.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(c2.read(e.nodeid, fh2, 0, 100).unwrap(), b"first");
    assert_eq!(c2.read(n, fh, 0, 1).unwrap_err(), libc::EBADF);
    assert!(d.is_running());
}

#[test]
fn once_exits_when_the_frontend_hangs_up() {
    let mut d = Daemon::start(&["--once"]);
    let c = d.client();
    c.make_file("f", b"x");
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.is_running() {
        assert!(Instant::now() < deadline, "daemon did not exit:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}
