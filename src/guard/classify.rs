//! Which permission events can shrink a file, from the blocked thread's /proc/TID/syscall
//! line. A fanotify pre-content event looks the same for a read, a write, a truncate and a
//! collapse (a page-rounded range), and an open-permission event carries no open flags; the
//! syscall the thread is blocked in, with its arguments, tells them apart.

/// What to do with one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It cannot make a mapped page pass EOF: let it go at once.
    Allow,
    /// It may leave the file this long (or shorter: 0 when unknown): the window must drop
    /// every page past it first.
    Shrink(u64),
}

/// The kind of event, as the group reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// FAN_OPEN_PERM: an open (O_TRUNC truncates right after it).
    Open,
    /// FAN_PRE_ACCESS: a read, write, truncate, fallocate or page fault.
    Access,
}

const O_TRUNC: u64 = 0o1000;
const FALLOC_FL_COLLAPSE_RANGE: u64 = 0x08;

/// PF_IO_WORKER and PF_KTHREAD (include/linux/sched.h): io_uring workers and kernel threads
/// (ksmbd's, for one) run file operations outside any syscall of theirs, and their
/// /proc/TID/syscall tells nothing (a kernel thread's reads "0 0x0 ...", as if read(2)).
pub const PF_IO_WORKER: u64 = 0x10;
pub const PF_KTHREAD: u64 = 0x0020_0000;

/// x86_64 syscall numbers the verdict depends on.
#[cfg(target_arch = "x86_64")]
mod nr {
    pub const OPEN: i64 = 2;
    pub const OPENAT: i64 = 257;
    pub const CREAT: i64 = 85;
    pub const OPEN_BY_HANDLE_AT: i64 = 304;
    pub const OPENAT2: i64 = 437;
    pub const EXEC: &[i64] = &[59, 322];
    pub const TRUNCATE: i64 = 76;
    pub const FTRUNCATE: i64 = 77;
    pub const FALLOCATE: i64 = 285;
    /// Syscalls whose access never shrinks: read, write, pread64, pwrite64, readv, writev,
    /// mmap, sendfile, execve, splice, tee, vmsplice, preadv, pwritev, copy_file_range,
    /// preadv2, pwritev2, execveat, readahead, fadvise64, madvise.
    pub const DATA: &[i64] =
        &[0, 1, 17, 18, 19, 20, 9, 40, 59, 275, 276, 278, 295, 296, 326, 327, 328, 322, 187, 221, 28];

    /// The ia32 table (arch/x86/entry/syscalls/syscall_32.tbl): a 32-bit program, or any
    /// program through `int 0x80`, shows these numbers. No number below means a shrink in one
    /// table and a harmless access (or open) in the other, so both are read for every event.
    pub mod ia32 {
        pub const OPEN: i64 = 5;
        pub const CREAT: i64 = 8;
        pub const OPENAT: i64 = 295;
        pub const OPEN_BY_HANDLE_AT: i64 = 342;
        pub const EXEC: &[i64] = &[11, 358];
        pub const TRUNCATE: i64 = 92;
        pub const FTRUNCATE: i64 = 93;
        pub const TRUNCATE64: i64 = 193;
        pub const FTRUNCATE64: i64 = 194;
        pub const FALLOCATE: i64 = 324;
        /// read, write, pread64, pwrite64, readv, writev, sendfile, sendfile64, splice,
        /// preadv, pwritev, copy_file_range, preadv2, pwritev2, execve, execveat, mmap2,
        /// mmap, readahead, fadvise64, fadvise64_64, madvise.
        pub const DATA: &[i64] =
            &[3, 4, 180, 181, 145, 146, 187, 239, 313, 333, 334, 377, 378, 379, 11, 358, 192, 90, 225, 250, 272, 219];
    }
}

/// Without a syscall table for this architecture, every event that comes from a syscall is
/// treated as a possible shrink.
#[cfg(not(target_arch = "x86_64"))]
mod nr {
    pub const OPEN: i64 = -2;
    pub const OPENAT: i64 = -2;
    pub const CREAT: i64 = -2;
    pub const OPEN_BY_HANDLE_AT: i64 = -2;
    pub const OPENAT2: i64 = -2;
    pub const EXEC: &[i64] = &[];
    pub const TRUNCATE: i64 = -2;
    pub const FTRUNCATE: i64 = -2;
    pub const FALLOCATE: i64 = -2;
    pub const DATA: &[i64] = &[];
    pub mod ia32 {
        pub const OPEN: i64 = -2;
        pub const CREAT: i64 = -2;
        pub const OPENAT: i64 = -2;
        pub const OPEN_BY_HANDLE_AT: i64 = -2;
        pub const EXEC: &[i64] = &[];
        pub const TRUNCATE: i64 = -2;
        pub const FTRUNCATE: i64 = -2;
        pub const TRUNCATE64: i64 = -2;
        pub const FTRUNCATE64: i64 = -2;
        pub const FALLOCATE: i64 = -2;
        pub const DATA: &[i64] = &[];
    }
}

fn hex(s: Option<&str>) -> Option<u64> {
    let s = s?;
    u64::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
}

/// The verdict for an event of `kind` on a file of `size` bytes, whose thread has the task
/// flags `task_flags` (/proc/TID/stat; None: unreadable) and whose /proc/TID/syscall reads
/// `line` (None: unreadable). Anything it cannot tell is a possible shrink to 0: the guest may
/// lose writes to the revoked pages until they are back, but the VM never touches a page past
/// EOF. So is every openat2: its flags live in the caller's memory, which another thread (or
/// process) may rewrite after the kernel copied them.
///
/// A truncate is a shrink to its length even when it grows the file: the guest may extend the
/// file and map the new pages before the truncate runs, which would then cut them off.
pub fn classify(kind: Kind, line: Option<&str>, task_flags: Option<u64>, size: u64) -> Verdict {
    use nr::ia32;
    let unknown = Verdict::Shrink(0);
    let (Some(line), Some(flags)) = (line, task_flags) else { return unknown };
    if flags & (PF_IO_WORKER | PF_KTHREAD) != 0 {
        return unknown;
    }
    let mut f = line.split_ascii_whitespace();
    let Some(Ok(number)) = f.next().map(str::parse::<i64>) else { return unknown };
    let args: Vec<Option<u64>> = (0..6).map(|_| hex(f.next())).collect();
    let arg = |i: usize| args.get(i).copied().flatten();
    let arg32 = |i: usize| arg(i).map(|v| v & 0xffff_ffff);
    let arg64 = |lo: usize, hi: usize| Some(arg32(lo)? | (arg32(hi)? << 32));
    match kind {
        Kind::Open => {
            let open_flags = match number {
                nr::OPEN | ia32::OPEN => arg(1),
                nr::OPENAT | nr::OPEN_BY_HANDLE_AT | ia32::OPENAT | ia32::OPEN_BY_HANDLE_AT => arg(2),
                nr::CREAT | ia32::CREAT => Some(O_TRUNC),
                nr::OPENAT2 => None,
                n if nr::EXEC.contains(&n) || ia32::EXEC.contains(&n) => Some(0),
                _ => None,
            };
            match open_flags {
                Some(f) if f & O_TRUNC != 0 => Verdict::Shrink(0),
                Some(_) => Verdict::Allow,
                None => unknown,
            }
        }
        Kind::Access => match number {
            nr::TRUNCATE | nr::FTRUNCATE => arg(1).map_or(unknown, Verdict::Shrink),
            ia32::TRUNCATE | ia32::FTRUNCATE => arg32(1).map_or(unknown, Verdict::Shrink),
            ia32::TRUNCATE64 | ia32::FTRUNCATE64 => arg64(1, 2).map_or(unknown, Verdict::Shrink),
            nr::FALLOCATE => collapse(arg(1), arg(3), size),
            ia32::FALLOCATE => collapse(arg32(1), arg64(4, 5), size),
            n if nr::DATA.contains(&n) || ia32::DATA.contains(&n) => Verdict::Allow,
            // -1 (not in a syscall: a page fault) included: Linux 6.18 raises no fault
            // events, and one from a later kernel cannot be told apart here.
            _ => unknown,
        },
    }
}

/// A fallocate of `mode` and `len`: a collapse shrinks the file by `len`, the rest never.
fn collapse(mode: Option<u64>, len: Option<u64>, size: u64) -> Verdict {
    match (mode, len) {
        (Some(mode), Some(len)) if mode & FALLOC_FL_COLLAPSE_RANGE != 0 => Verdict::Shrink(size.saturating_sub(len)),
        (Some(_), Some(_)) => Verdict::Allow,
        _ => Verdict::Shrink(0),
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    const USER: Option<u64> = Some(0x0040_0000);

    fn of(kind: Kind, line: &str, size: u64) -> Verdict {
        classify(kind, Some(line), USER, size)
    }

    // Lines as measured on Linux 6.18 with a thread blocked in the event (see DESIGN.md).
    #[test]
    fn reads_writes_and_punches_never_shrink() {
        for line in [
            "17 0x5 0x7fffd4173030 0x64 0x1000 0x0 0x0 0x7ffd 0x7f31",
            "18 0x5 0x7fffd4173030 0x64 0x2000 0x0 0x0 0x7ffd 0x7f31",
            "1 0x5 0x7fffd4173030 0xa 0x0 0x0 0x0 0x7ffd 0x7f31",
            "9 0x0 0x2000 0x3 0x1 0x5 0x1000 0x7ffd 0x7f31",
            "326 0x7 0x7fffd4173028 0x5 0x7fffd4173020 0x100 0x0 0x7ffd 0x7f31",
            "285 0x5 0x3 0x4000 0x1000 0x0 0x0 0x7ffd 0x7f31",
            "285 0x5 0x20 0x10000 0x1000 0x0 0x0 0x7ffd 0x7f31",
            // ia32 read and pread64.
            "3 0x5 0xffd41730 0x64 0x0 0x0 0x0 0xffd4 0xf7f3",
            "180 0x5 0xffd41730 0x64 0x1000 0x0 0x0 0xffd4 0xf7f3",
        ] {
            assert_eq!(of(Kind::Access, line, 1 << 20), Verdict::Allow, "{line}");
        }
    }

    #[test]
    fn truncates_and_collapses_shrink_to_their_new_size() {
        let size = 200_704;
        assert_eq!(
            of(Kind::Access, "76 0x7fffd4174ad1 0x1000 0x0 0x0 0x0 0x0 0x7ffd 0x7f31", size),
            Verdict::Shrink(4096)
        );
        assert_eq!(of(Kind::Access, "77 0x5 0x186a0 0x0 0x0 0x0 0x0 0x7ffd 0x7f31", size), Verdict::Shrink(100_000));
        let collapse = "285 0x5 0x8 0x10000 0x1000 0x0 0x0 0x7ffd 0x7f31";
        assert_eq!(of(Kind::Access, collapse, size), Verdict::Shrink(size - 4096));
        // A growing truncate still holds the window at its length: the guest may extend the
        // file past it before the truncate runs.
        assert_eq!(of(Kind::Access, "77 0x5 0x40000 0x0 0x0 0x0 0x0 0x7ffd 0x7f31", size), Verdict::Shrink(0x40000));
    }

    #[test]
    fn ia32_truncates_are_read_with_their_own_arguments() {
        let size = 1 << 40;
        assert_eq!(of(Kind::Access, "92 0xffd41730 0x1000 0x0 0x0 0x0 0x0 0xffd4 0xf7f3", size), Verdict::Shrink(4096));
        assert_eq!(of(Kind::Access, "93 0x5 0x186a0 0x0 0x0 0x0 0x0 0xffd4 0xf7f3", size), Verdict::Shrink(100_000));
        // truncate64 and ftruncate64: the length in two 32-bit halves.
        assert_eq!(
            of(Kind::Access, "193 0xffd41730 0x1000 0x2 0x0 0x0 0x0 0xffd4 0xf7f3", size),
            Verdict::Shrink(0x2_0000_1000)
        );
        assert_eq!(of(Kind::Access, "194 0x5 0x0 0x1 0x0 0x0 0x0 0xffd4 0xf7f3", size), Verdict::Shrink(1 << 32));
        // fallocate(fd, mode, off_lo, off_hi, len_lo, len_hi).
        let collapse = "324 0x5 0x8 0x0 0x0 0x1000 0x0 0xffd4 0xf7f3";
        assert_eq!(of(Kind::Access, collapse, size), Verdict::Shrink(size - 4096));
        assert_eq!(of(Kind::Access, "324 0x5 0x3 0x0 0x0 0x1000 0x0 0xffd4 0xf7f3", size), Verdict::Allow);
    }

    #[test]
    fn opens_shrink_only_with_o_trunc() {
        let ro = "257 0xffffff9c 0x7fffd31f7ac8 0x0 0x0 0x0 0x0 0x7ffd 0x7f31";
        assert_eq!(of(Kind::Open, ro, 10), Verdict::Allow);
        let wr = "257 0xffffff9c 0x7fffd31f7ac8 0x441 0x1b6 0x0 0x0 0x7ffd 0x7f31";
        assert_eq!(of(Kind::Open, wr, 10), Verdict::Allow);
        let trunc = "257 0xffffff9c 0x7fffd31f7ac8 0x201 0x0 0x0 0x0 0x7ffd 0x7f31";
        assert_eq!(of(Kind::Open, trunc, 10), Verdict::Shrink(0));
        assert_eq!(of(Kind::Open, "2 0x7fffd31f7ac8 0x241 0x1b6 0x0 0x0 0x0 0x7ffd 0x7f31", 10), Verdict::Shrink(0));
        // Even of an empty file: the guest may extend it before the open truncates it.
        assert_eq!(of(Kind::Open, trunc, 0), Verdict::Shrink(0));
        assert_eq!(of(Kind::Open, "85 0x7fff 0x1a4 0 0 0 0 0 0", 10), Verdict::Shrink(0));
        // An exec opens its binary.
        assert_eq!(of(Kind::Open, "59 0x55d1 0x7ffd 0x7ffd 0x0 0x0 0x0 0x7ffd 0x7f31", 10), Verdict::Allow);
    }

    #[test]
    fn ia32_opens_are_opens_not_preadv() {
        // openat(AT_FDCWD, path, O_WRONLY|O_CREAT|O_TRUNC): 295 is preadv in the x86_64 table.
        assert_eq!(
            of(Kind::Open, "295 0xffffff9c 0xf7f00000 0x241 0x1a4 0x0 0x0 0xffd4 0xf7f3", 10),
            Verdict::Shrink(0)
        );
        assert_eq!(of(Kind::Open, "295 0xffffff9c 0xf7f00000 0x0 0x0 0x0 0x0 0xffd4 0xf7f3", 10), Verdict::Allow);
        assert_eq!(of(Kind::Open, "5 0xf7f00000 0x201 0x1a4 0x0 0x0 0x0 0xffd4 0xf7f3", 10), Verdict::Shrink(0));
        assert_eq!(of(Kind::Open, "8 0xf7f00000 0x1a4 0x0 0x0 0x0 0x0 0xffd4 0xf7f3", 10), Verdict::Shrink(0));
        // A data syscall cannot open: an open event from one is not what it seems.
        assert_eq!(of(Kind::Open, "17 0x5 0x7fff 0x64 0x0 0x0 0x0 0x7ffd 0x7f31", 10), Verdict::Shrink(0));
    }

    #[test]
    fn every_openat2_is_a_shrink_to_zero() {
        // The line measured on 6.18 for openat2(AT_FDCWD, path, &how, 24): its flags are in
        // the caller's memory, which may change after the kernel read them.
        let line = "437 0xffffff9c 0x55717fdf7004 0x7ffeddeb3fb0 0x18 0x7fc184b6c740 0x0 0x7ffd 0x7fc1";
        assert_eq!(of(Kind::Open, line, 10), Verdict::Shrink(0));
    }

    #[test]
    fn what_cannot_be_told_is_a_shrink_to_zero() {
        let kthread = Some(PF_KTHREAD | 0x40);
        let io_worker = Some(PF_IO_WORKER | 0x0040_0000);
        for (kind, line, flags) in [
            (Kind::Access, None, USER),
            (Kind::Access, Some("running"), USER),
            (Kind::Access, Some(""), USER),
            (Kind::Access, Some("17 0x5 0x7fff 0x64 0x0 0x0 0x0 0x7ffd 0x7f31"), None),
            // A kernel thread (ksmbd's vfs_truncate) reads as read(2).
            (Kind::Access, Some("0 0x0 0x0 0x0 0x0 0x0 0x0 0x0 0x0"), kthread),
            (Kind::Access, Some("-1 0x1 0x2"), io_worker),
            (Kind::Access, Some("-1 0x7ffd4173000 0x7f31889f7330"), USER),
            (Kind::Access, Some("426 0x3 0x1 0x0 0x0 0x0 0x0 0x7ffd 0x7f31"), USER),
            (Kind::Open, Some("-1 0x1 0x2"), kthread),
            (Kind::Access, Some("77 0x5 zz"), USER),
        ] {
            assert_eq!(classify(kind, line, flags, 1 << 20), Verdict::Shrink(0), "{line:?} {flags:?}");
        }
    }
}
