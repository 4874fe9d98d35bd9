//! A guest is untrusted: malformed requests get an error reply (or an empty used element when
//! not even the header is readable), and the daemon keeps serving the next good request.
#![allow(unsafe_code, clippy::unwrap_used, clippy::indexing_slicing, clippy::cast_possible_truncation, clippy::panic)]

mod common;

use common::fuse::*;
use common::vmm::Desc;
use daxfsd::fuse::abi::*;
use zerocopy::IntoBytes;

fn errno_of(reply: &common::vmm::Reply, unique: u64) -> i32 {
    check_reply(reply, unique).unwrap_err()
}

#[test]
fn header_shorter_than_40_bytes_returns_empty_chain() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let hdr = c.header(Opcode::Getattr as u32, 1, 16);
    let r = c.raw(REQ_Q, &[&hdr.as_bytes()[..20]], 256);
    assert_eq!(r.used_len, 0);
    still_serving(&mut d, &c);
}

#[test]
fn header_length_larger_than_chain_is_einval() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let mut hdr = c.header(Opcode::Getattr as u32, 1, 16);
    hdr.len = 4096;
    let r = c.raw(REQ_Q, &[hdr.as_bytes(), GetattrIn::default().as_bytes()], 256);
    assert_eq!(errno_of(&r, hdr.unique), libc::EINVAL);
    still_serving(&mut d, &c);
}

#[test]
fn header_length_below_header_size_is_einval() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let mut hdr = c.header(Opcode::Getattr as u32, 1, 16);
    hdr.len = 12;
    let r = c.raw(REQ_Q, &[hdr.as_bytes(), GetattrIn::default().as_bytes()], 256);
    assert_eq!(errno_of(&r, hdr.unique), libc::EINVAL);
    still_serving(&mut d, &c);
}

#[test]
fn body_shorter_than_struct_is_einval() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    assert_eq!(c.call(Opcode::Setattr, 1, &[&[0u8; 10]], 104).unwrap_err(), libc::EINVAL);
    assert_eq!(c.call(Opcode::Read, 1, &[&[0u8; 39]], 104).unwrap_err(), libc::EINVAL);
    still_serving(&mut d, &c);
}

#[test]
fn unknown_opcode_is_enosys_and_unknown_nodeid_is_enoent() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    assert_eq!(c.call_on(REQ_Q, 0xdead, 1, &[&[1, 2, 3]], 16).unwrap_err(), libc::ENOSYS);
    assert_eq!(c.getattr(987_654).unwrap_err(), libc::ENOENT);
    assert_eq!(c.lookup(987_654, "x").unwrap_err(), libc::ENOENT);
    assert_eq!(c.read(1, 987_654, 0, 10).unwrap_err(), libc::EBADF);
    still_serving(&mut d, &c);
}

#[test]
fn unterminated_name_is_einval() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    assert_eq!(c.call(Opcode::Lookup, 1, &[b"noterminator"], 128).unwrap_err(), libc::EINVAL);
    let m = MkdirIn { mode: 0o755, umask: 0 };
    assert_eq!(c.call(Opcode::Mkdir, 1, &[m.as_bytes(), b"x"], 128).unwrap_err(), libc::EINVAL);
    assert_eq!(c.call(Opcode::Symlink, 1, &[b"a\0b"], 128).unwrap_err(), libc::EINVAL);
    still_serving(&mut d, &c);
}

#[test]
fn oversized_read_and_write_are_rejected() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"abc");
    let fh = c.open(n, libc::O_RDWR).unwrap();
    assert_eq!(c.read(n, fh, 0, 2 << 20).unwrap_err(), libc::EINVAL);
    // WRITE claiming more than MAX_WRITE, and WRITE claiming more data than it carries.
    let w = WriteIn { fh, offset: 0, size: 2 << 20, ..Default::default() };
    assert_eq!(c.call(Opcode::Write, n, &[w.as_bytes(), b"xyz"], 8).unwrap_err(), libc::EINVAL);
    let w = WriteIn { fh, offset: 0, size: 100, ..Default::default() };
    assert_eq!(c.call(Opcode::Write, n, &[w.as_bytes(), b"xyz"], 8).unwrap_err(), libc::EINVAL);
    assert_eq!(std::fs::read(d.path("f")).unwrap(), b"abc", "a rejected write wrote nothing");
    still_serving(&mut d, &c);
}

#[test]
fn reply_buffer_too_small_gets_erange_or_nothing() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let hdr = c.header(Opcode::Getattr as u32, 1, 16);
    let r = c.raw(REQ_Q, &[hdr.as_bytes(), GetattrIn::default().as_bytes()], 20);
    assert_eq!(errno_of(&r, hdr.unique), libc::ERANGE);
    let hdr = c.header(Opcode::Getattr as u32, 1, 16);
    let r = c.raw(REQ_Q, &[hdr.as_bytes(), GetattrIn::default().as_bytes()], 8);
    assert_eq!(r.used_len, 0);
    let hdr = c.header(Opcode::Getattr as u32, 1, 16);
    let r = c.raw(REQ_Q, &[hdr.as_bytes(), GetattrIn::default().as_bytes()], 0);
    assert_eq!(r.used_len, 0);
    still_serving(&mut d, &c);
}

#[test]
fn read_with_small_reply_buffer_returns_what_fits() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", &pattern_bytes(9, 0, 8192));
    let fh = c.open(n, libc::O_RDONLY).unwrap();
    let r = ReadIn { fh, offset: 0, size: 8192, ..Default::default() };
    let hdr = c.header(Opcode::Read as u32, n, 40);
    let reply = c.raw(REQ_Q, &[hdr.as_bytes(), r.as_bytes()], 16 + 100);
    assert_eq!(check_reply(&reply, hdr.unique).unwrap(), pattern_bytes(9, 0, 100));
    still_serving(&mut d, &c);
}

#[test]
fn descriptor_outside_guest_memory_is_dropped() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let hdr = c.header(Opcode::Getattr as u32, 1, 16);
    let descs = [Desc::Read(hdr.as_bytes()), Desc::Raw { addr: 1 << 40, len: 4096, flags: 0 }, Desc::Write(256)];
    let t = c.vmm.submit(REQ_Q, &descs).unwrap();
    assert_eq!(c.vmm.wait(t).unwrap().used_len, 0);
    still_serving(&mut d, &c);
}

#[test]
fn request_split_over_many_descriptors_works() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let body = [name("splitdir").as_slice()].concat();
    let m = MkdirIn { mode: 0o755, umask: 0 };
    let hdr = c.header(Opcode::Mkdir as u32, 1, 8 + body.len());
    let mut all = hdr.as_bytes().to_vec();
    all.extend_from_slice(m.as_bytes());
    all.extend_from_slice(&body);
    let parts: Vec<&[u8]> = all.chunks(7).collect();
    let r = c.raw(REQ_Q, &parts, 16 + 128);
    let e: EntryOut = parse(&check_reply(&r, hdr.unique).unwrap());
    assert_ne!(e.nodeid, 0);
    assert!(d.path("splitdir").is_dir());
    still_serving(&mut d, &c);
}

#[test]
fn batch_forget_count_past_length_is_ignored() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let n = c.make_file("f", b"");
    let b = BatchForgetIn { count: 1000, dummy: 0 };
    let one = ForgetOne { nodeid: n, nlookup: 1 };
    let body = [b.as_bytes(), one.as_bytes()].concat();
    let hdr = c.header(Opcode::BatchForget as u32, 0, body.len());
    let r = c.raw(HIPRIO_Q, &[hdr.as_bytes(), &body], 16);
    // No reply is defined for BATCH_FORGET; a malformed one gets EINVAL or nothing.
    assert!(r.used_len == 0 || errno_of(&r, hdr.unique) == libc::EINVAL);
    assert!(c.getattr(n).is_ok(), "a rejected batch forgot nothing");
    still_serving(&mut d, &c);
}

#[test]
fn bad_request_extension_is_einval() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let m = MkdirIn { mode: 0o755, umask: 0 };
    let body = [m.as_bytes(), &name("x")].concat();
    let mut hdr = c.header(Opcode::Mkdir as u32, 1, body.len());
    hdr.total_extlen = 200; // 1600 bytes of extensions in a 10-byte body
    let r = c.raw(REQ_Q, &[hdr.as_bytes(), &body], 16 + 128);
    assert_eq!(errno_of(&r, hdr.unique), libc::EINVAL);
    still_serving(&mut d, &c);
}

#[test]
fn supplementary_group_extension_is_applied() {
    let d = Daemon::start(&[]);
    let c = d.client();
    let m = MkdirIn { mode: 0o755, umask: 0 };
    let ext = [
        ExtHeader { size: 16, typ: FUSE_EXT_GROUPS }.as_bytes(),
        SuppGroups { nr_groups: 1 }.as_bytes(),
        &4242u32.to_le_bytes(),
    ]
    .concat();
    let body = [m.as_bytes(), &name("g"), &[0u8; 6], &ext].concat();
    let mut hdr = c.header(Opcode::Mkdir as u32, 1, body.len());
    hdr.total_extlen = 2;
    hdr.uid = 1000;
    hdr.gid = 1000;
    let r = c.raw(REQ_Q, &[hdr.as_bytes(), &body], 16 + 128);
    let e: EntryOut = parse(&check_reply(&r, hdr.unique).unwrap());
    assert_eq!((e.attr.uid, e.attr.gid), (1000, 1000));
}

#[test]
fn requests_before_init_are_eio() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    c.destroy().unwrap();
    assert_eq!(c.getattr(1).unwrap_err(), libc::EIO);
    let old = InitIn { major: 6, minor: 0, ..Default::default() };
    assert_eq!(c.call(Opcode::Init, 0, &[old.as_bytes()], 64).unwrap_err(), libc::EPROTO);
    let compat = InitInCompat { major: 7, minor: 31, max_readahead: 0, flags: 0 };
    let out: InitOut = parse(&c.call(Opcode::Init, 0, &[compat.as_bytes()], 64).unwrap());
    assert_eq!(out.minor, 31, "a 16-byte init_in from an old guest is accepted");
    still_serving(&mut d, &c);
}

#[test]
fn garbage_flood_never_kills_the_daemon() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let op = (x % 60) as u32;
        let len = (x >> 8) % 200;
        let mut hdr = c.header(op, (x >> 20) % 4, len as usize);
        if x & 1 == 0 {
            hdr.len = (x >> 32) as u32 % 500;
        }
        let body: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8).collect();
        let r = c.raw(REQ_Q, &[hdr.as_bytes(), &body], ((x >> 40) % 300) as usize);
        assert!(r.used_len as usize <= r.data.len());
    }
    // The flood may have sent DESTROY or INIT; start a clean session before checking.
    c.do_init(FUSE_INIT_EXT);
    still_serving(&mut d, &c);
}

/// A driver that publishes an avail index more than a queue's size ahead: the daemon cannot
/// read the ring, warns, and must not spin on it. Once the index is sane again, the queue works.
#[test]
fn avail_index_past_the_queue_size_is_refused_without_a_spin() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    assert!(c.getattr(1).is_ok());
    let size = 256u16; // VmmOptions::default().queue_size
    for (n, ahead) in [(1, size + 1), (2, u16::MAX)] {
        c.vmm.poke_avail_idx(REQ_Q, ahead).unwrap();
        d.wait_for_log(&format!("cannot read the ring: invalid available ring index (more descriptors to process than queue size) ({n} times"));
        c.vmm.poke_avail_idx(REQ_Q, 0).unwrap();
        still_serving(&mut d, &c);
    }
}

/// Lines in `log` containing `needle`.
fn log_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// A guest repeating a fault must not flood the log: each kind is logged at counts 1, 2, 4, ...
/// (7 lines for 100 occurrences), not once per request.
#[test]
fn repeated_guest_faults_are_logged_at_powers_of_two() {
    let mut d = Daemon::start(&[]);
    let c = d.client();
    for _ in 0..100 {
        let hdr = c.header(Opcode::Getattr as u32, 1, 16);
        assert_eq!(c.raw(REQ_Q, &[&hdr.as_bytes()[..20]], 256).used_len, 0);
        assert_eq!(c.call(Opcode::Read, 1, &[&[0u8; 39]], 104).unwrap_err(), libc::EINVAL);
        let hdr = c.header(Opcode::Getattr as u32, 1, 16);
        let r = c.raw(REQ_Q, &[hdr.as_bytes(), GetattrIn::default().as_bytes()], 20);
        assert_eq!(errno_of(&r, hdr.unique), libc::ERANGE);
        c.do_init(FUSE_INIT_EXT);
    }
    still_serving(&mut d, &c);
    let log = d.log();
    for needle in ["request without a readable header", "malformed request", "does not fit the guest", "FUSE INIT"] {
        let n = log_lines(&log, needle);
        assert!((1..=8).contains(&n), "{n} log lines for {needle:?}:\n{log}");
    }
}
