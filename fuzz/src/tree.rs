//! The shared directory `dispatch` serves: one temp dir per process, its content rebuilt before
//! every input so that an input replays the same way (the fuzzer's requests create, rename,
//! chmod and delete). The byte at offset `o` of a file is a function of `o` and the file.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// The deterministic content of file number `n`, `len` bytes long.
pub fn content(n: u8, len: usize) -> Vec<u8> {
    (0..len).map(|o| (o as u64).wrapping_mul(31).wrapping_add(u64::from(n) * 7) as u8).collect()
}

/// Names the seeds use; node ids follow the order in which the guest looks them up.
pub const FILES: [(&str, u8, usize); 3] = [("a", 1, 8192), ("empty", 2, 0), ("d/b", 3, 100)];

/// A temp dir, kept for the life of the process (libFuzzer exits without unwinding, so the
/// directory lives under `$TMPDIR`, which `ci/fuzz.sh` points at a directory it removes).
pub struct Tree {
    root: PathBuf,
}

impl Tree {
    /// Creates the directory.
    pub fn new() -> Tree {
        let dir = tempfile::Builder::new().prefix("daxfsd-fuzz-").tempdir().expect("temp dir");
        Tree { root: dir.keep() }
    }

    /// The shared directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Empties the directory and lays out: files `a` (8 KiB), `empty`, dir `d` with `d/b`,
    /// symlinks `l -> a` and `up -> ../..` (an escape attempt), a hard link `a2` and a FIFO `p`.
    pub fn reset(&self) {
        let root = &self.root;
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod root");
        for e in fs::read_dir(root).expect("read root") {
            let p = e.expect("dir entry").path();
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&p).expect("remove dir"),
                Ok(_) => fs::remove_file(&p).expect("remove file"),
                Err(_) => {}
            }
        }
        fs::create_dir(root.join("d")).expect("mkdir d");
        for (name, n, len) in FILES {
            fs::write(root.join(name), content(n, len)).expect("write file");
        }
        symlink("a", root.join("l")).expect("symlink");
        symlink("../..", root.join("up")).expect("symlink");
        fs::hard_link(root.join("a"), root.join("a2")).expect("hard link");
        let fifo = std::ffi::CString::new(root.join("p").into_os_string().into_encoded_bytes()).expect("path");
        // SAFETY: `fifo` is a NUL-terminated path that outlives the call.
        let rc = unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
        assert_eq!(rc, 0, "mkfifo");
    }
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}
