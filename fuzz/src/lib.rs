//! Shared pieces of the fuzz targets: the input framing (several requests per input), a
//! `NullFs`, the reply invariants every served chain must keep, and the deterministic shared
//! directory `dispatch` serves. Panicking here is the point: a panic is a finding.

use std::io;

use daxfsd::fs::{Filesystem, FsCapabilities, Negotiated};
use daxfsd::fuse::abi::{FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, InHeader, InitInCompat};
use daxfsd::fuse::fuzzing::{Served, Shape};
use zerocopy::{FromBytes, IntoBytes};

pub mod tree;

/// Most requests taken from one input.
pub const MAX_RECORDS: usize = 16;
/// Bytes of framing before each request.
pub const RECORD_HEADER: usize = 4;

/// One request of an input and the chain it travels in.
pub struct Record<'a> {
    pub shape: Shape,
    pub bytes: &'a [u8],
}

/// Cuts an input into requests. Each is framed as `[len: u16 le][shape: u8][reply: u8]` and
/// `len` bytes (fewer at the end of the input): `shape` bits 0-1 are the readable descriptors
/// minus one, bits 2-3 the writable ones minus one; the reply buffers hold `reply * 256` bytes
/// (`reply == 255`: 1 MiB + 64 KiB, room for a maximal READ).
pub fn records(mut data: &[u8]) -> Vec<Record<'_>> {
    let mut out = Vec::new();
    while data.len() >= RECORD_HEADER && out.len() < MAX_RECORDS {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        let shape = data[2];
        let reply_len = match data[3] {
            255 => daxfsd::fuse::fuzzing::MAX_REPLY,
            n => usize::from(n) * 256,
        };
        let rest = &data[RECORD_HEADER..];
        let (bytes, tail) = rest.split_at(len.min(rest.len()));
        let shape =
            Shape { readable: usize::from(shape & 3) + 1, writable: usize::from((shape >> 2) & 3) + 1, reply_len };
        out.push(Record { shape, bytes });
        data = tail;
    }
    out
}

/// Frames one request as `records` expects (for seed generation and tests).
pub fn frame(request: &[u8], shape: u8, reply: u8) -> Vec<u8> {
    let len = u16::try_from(request.len()).expect("request fits the frame");
    [&len.to_le_bytes()[..], &[shape, reply], request].concat()
}

/// A request: in-header (with `len` right) followed by `body`.
pub fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(size_of::<InHeader>() + body.len()).expect("small request");
    let hdr = InHeader { len, opcode, unique, nodeid, ..InHeader::default() };
    [hdr.as_bytes(), body].concat()
}

/// INIT as a current Linux guest sends it, offering every flag.
pub fn init_request(unique: u64) -> Vec<u8> {
    let init = InitInCompat {
        major: FUSE_KERNEL_VERSION,
        minor: FUSE_KERNEL_MINOR_VERSION,
        max_readahead: 1 << 17,
        flags: u32::MAX,
    };
    // init_in is 64 bytes since 7.36: flags2 and unused words follow the compat part.
    let mut body = init.as_bytes().to_vec();
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    body.resize(64, 0);
    request(26, unique, 0, &body)
}

/// Checks what every reply must satisfy, whatever the request: the used length is the reply's
/// `len`, fits the buffers, and echoes `unique`; an error is a bare header with a sane errno.
pub fn check_reply(request: &[u8], shape: &Shape, served: &Served) {
    assert!(served.used <= shape.reply_len, "used {} > buffer {}", served.used, shape.reply_len);
    assert_eq!(served.used, served.reply.len());
    let Ok((hdr, _)) = InHeader::read_from_prefix(request) else {
        assert_eq!(served.used, 0, "a reply to a request without a header");
        return;
    };
    if served.used == 0 {
        return;
    }
    let out = served.header().expect("a non-empty reply has an out-header");
    assert_eq!(out.len as usize, served.used, "out-header len vs used length");
    assert_eq!(out.unique, hdr.unique, "reply to the wrong request");
    assert!((-4095..=0).contains(&out.error), "errno {} out of range", out.error);
    if out.error != 0 {
        assert_eq!(served.used, 16, "an error reply carries a payload");
    }
}

/// Keeps a request harmless to this machine without hiding bugs: FALLOCATE and
/// COPY_FILE_RANGE lengths are capped at 1 MiB (real disk blocks), and SETLKW becomes SETLK
/// (a single-threaded fuzzer would wait forever on a conflicting OFD lock it holds itself).
pub fn defuse(bytes: &mut [u8]) {
    let Ok((hdr, _)) = InHeader::read_from_prefix(bytes) else { return };
    let cap_u64_at = |bytes: &mut [u8], at: usize| {
        if let Some(field) = bytes.get_mut(at..at + 8) {
            let v = u64::from_le_bytes(field.try_into().expect("8 bytes")).min(1 << 20);
            field.copy_from_slice(&v.to_le_bytes());
        }
    };
    match hdr.opcode {
        33 => bytes[4..8].copy_from_slice(&32u32.to_le_bytes()),
        43 => cap_u64_at(bytes, 40 + 16),
        47 => cap_u64_at(bytes, 40 + 40),
        _ => {}
    }
}

/// A filesystem that implements nothing (every default answers ENOSYS): only decoding runs.
pub struct NullFs;

impl Filesystem for NullFs {
    fn capabilities(&self) -> FsCapabilities {
        FsCapabilities { readdirplus: true, posix_locks: true, submounts: true, ..FsCapabilities::default() }
    }
    fn init(&self, _: Negotiated) -> io::Result<()> {
        Ok(())
    }
    fn destroy(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_cut_and_frame_round_trip() {
        let a = frame(b"hello", 0b0110, 1);
        let input = [a, frame(b"xy", 0, 255), vec![9, 0, 0]].concat();
        let r = records(&input);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].bytes, r[0].shape.readable, r[0].shape.writable, r[0].shape.reply_len),
            (&b"hello"[..], 3, 2, 256)
        );
        assert_eq!(r[1].shape.reply_len, daxfsd::fuse::fuzzing::MAX_REPLY);
    }
}
