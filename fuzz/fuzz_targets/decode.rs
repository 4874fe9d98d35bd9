//! `decode`: one request from raw bytes (the whole input, in-header first) through the server
//! over a `NullFs`, after an INIT, so every opcode's argument decoding runs; then the body
//! decoders on their own over the same bytes.
#![no_main]

use std::sync::OnceLock;

use daxfsd::fuse::Server;
use daxfsd::fuse::abi::InHeader;
use daxfsd::fuse::fuzzing::{Harness, Shape};
use daxfsd::fuse::request::{Body, split_extensions};
use daxfsd_fuzz::{NullFs, check_reply, init_request};
use libfuzzer_sys::fuzz_target;
use zerocopy::FromBytes;

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::new().expect("guest memory"))
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let server = Server::new(NullFs);
    let init = init_request(1);
    let shape = Shape { readable: 1, writable: 1, reply_len: 4096 };
    let s = h.serve(&server, &init, shape).expect("chain");
    assert_eq!(s.header().map(|o| o.error), Some(0), "INIT failed");

    // The chain's shape comes from the length, so the same bytes always travel the same way.
    let shape = Shape { readable: 1 + data.len() % 4, writable: 1 + (data.len() / 4) % 4, reply_len: 64 << 10 };
    let served = h.serve(&server, data, shape).expect("chain");
    check_reply(data, &shape, &served);

    // The body decoders directly: extensions as the header says, then names and structs.
    let Ok((hdr, body)) = InHeader::read_from_prefix(data) else { return };
    if let Ok((rest, _groups)) = split_extensions(body, usize::from(hdr.total_extlen) * 8) {
        let mut b = Body::new(rest);
        while b.cstr().is_ok() {}
        let _ = b.obj::<daxfsd::fuse::abi::SetattrIn>();
        let _ = b.bytes(usize::from(hdr.padding));
    }
});
