//! `dispatch`: a sequence of requests (see `daxfsd_fuzz::records` for the framing) through the
//! server over a real `Passthrough` of a small deterministic directory, with the daemon's
//! default options and no DAX. Node and handle ids are small integers, so LOOKUP, OPEN, READ
//! chains on returned ids are reachable. Every input starts a fresh session on a fresh tree.
#![no_main]

use std::sync::OnceLock;

use daxfsd::fs::passthrough::{CachePolicy, Config, DaxFiles, FileHandles, Passthrough};
use daxfsd::fuse::Server;
use daxfsd::fuse::fuzzing::{Harness, Shape};
use daxfsd_fuzz::tree::Tree;
use daxfsd_fuzz::{check_reply, defuse, init_request, records};
use libfuzzer_sys::fuzz_target;

struct State {
    harness: Harness,
    tree: Tree,
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| State { harness: Harness::new().expect("guest memory"), tree: Tree::new() })
}

/// `FUZZ_TRACE=1`: print each request's opcode and reply header (to check seeds).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

/// `main.rs`'s `fs_config` for the default options (no `--dax-window`, so no DAX).
fn default_config(tree: &Tree) -> Config {
    Config {
        root: tree.root().to_path_buf(),
        proc_self_fd: None,
        guest_fd_quota: 0,
        dax: None,
        dax_files: DaxFiles::Leasable,
        cache: CachePolicy::Auto,
        writeback: false,
        xattr: false,
        posix_acl: false,
        announce_submounts: true,
        readonly: false,
        killpriv_v2: false,
        allow_direct_io: false,
        readdirplus: true,
        posix_locks: true,
        inode_file_handles: FileHandles::Prefer,
    }
}

fuzz_target!(|data: &[u8]| {
    let st = state();
    st.tree.reset();
    let fs = Passthrough::new(default_config(&st.tree)).expect("passthrough");
    let server = Server::new(fs);
    let init = init_request(1);
    let shape = Shape { readable: 1, writable: 1, reply_len: 4096 };
    let s = st.harness.serve(&server, &init, shape).expect("chain");
    assert_eq!(s.header().map(|o| o.error), Some(0), "INIT failed");
    for rec in records(data) {
        let mut bytes = rec.bytes.to_vec();
        defuse(&mut bytes);
        let served = st.harness.serve(&server, &bytes, rec.shape).expect("chain");
        check_reply(&bytes, &rec.shape, &served);
        if trace() {
            let op = bytes.get(4..8).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
            eprintln!("op {op:?}: used {} reply {:?}", served.used, served.header());
        }
    }
    server.reset();
});
