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

/// x86_64 syscall numbers the verdict depends on.
#[cfg(target_arch = "x86_64")]
mod nr {
    pub const OPEN: i64 = 2;
    pub const OPENAT: i64 = 257;
    pub const CREAT: i64 = 85;
    pub const OPEN_BY_HANDLE_AT: i64 = 304;
    pub const OPENAT2: i64 = 437;
    pub const TRUNCATE: i64 = 76;
    pub const FTRUNCATE: i64 = 77;
    pub const FALLOCATE: i64 = 285;
    /// Syscalls whose access never shrinks: read, write, pread64, pwrite64, readv, writev,
    /// mmap, sendfile, execve, splice, tee, vmsplice, preadv, pwritev, copy_file_range,
    /// preadv2, pwritev2, execveat, readahead, fadvise64, madvise.
    pub const DATA: &[i64] =
        &[0, 1, 17, 18, 19, 20, 9, 40, 59, 275, 276, 278, 295, 296, 326, 327, 328, 322, 187, 221, 28];
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
    pub const TRUNCATE: i64 = -2;
    pub const FTRUNCATE: i64 = -2;
    pub const FALLOCATE: i64 = -2;
    pub const DATA: &[i64] = &[];
}

fn hex(s: Option<&str>) -> Option<u64> {
    let s = s?;
    u64::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
}

/// The verdict for an event of `kind` on a file of `size` bytes, whose thread's command name
/// is `comm` and whose /proc/TID/syscall reads `line` (None: unreadable). `peek` reads a u64
/// of the waiting thread's memory (openat2 keeps its flags there; the kernel copied them at
/// syscall entry, and the thread sleeps, so only another thread of that process could change
/// them meanwhile). Anything it cannot tell is a possible shrink to 0: the guest may lose
/// writes to the revoked pages until they are back, but the VM never touches a page past EOF.
///
/// A truncate is a shrink to its length even when it grows the file: the guest may extend the
/// file and map the new pages before the truncate runs, which would then cut them off.
pub fn classify(kind: Kind, line: Option<&str>, comm: &str, size: u64, peek: &dyn Fn(u64) -> Option<u64>) -> Verdict {
    let unknown = Verdict::Shrink(0);
    // io_uring's workers run requests (ftruncate among them) outside any syscall.
    let (Some(line), false) = (line, comm.starts_with("iou-")) else { return unknown };
    let mut f = line.split_ascii_whitespace();
    let Some(Ok(number)) = f.next().map(str::parse::<i64>) else { return unknown };
    let args: Vec<Option<u64>> = (0..6).map(|_| hex(f.next())).collect();
    let arg = |i: usize| args.get(i).copied().flatten();
    match kind {
        Kind::Open => {
            let flags = match number {
                nr::OPEN => arg(1),
                nr::OPENAT | nr::OPEN_BY_HANDLE_AT => arg(2),
                // struct open_how begins with the u64 flags.
                nr::OPENAT2 => arg(2).and_then(peek),
                nr::CREAT => Some(O_TRUNC),
                n if nr::DATA.contains(&n) => Some(0),
                _ => None,
            };
            match flags {
                Some(f) if f & O_TRUNC != 0 => Verdict::Shrink(0),
                Some(_) => Verdict::Allow,
                None => unknown,
            }
        }
        Kind::Access => match number {
            // Not in a syscall: a page fault on a mapping of the file.
            -1 => Verdict::Allow,
            nr::TRUNCATE | nr::FTRUNCATE => arg(1).map_or(unknown, Verdict::Shrink),
            nr::FALLOCATE => match (arg(1), arg(3)) {
                (Some(mode), Some(len)) if mode & FALLOC_FL_COLLAPSE_RANGE != 0 => {
                    Verdict::Shrink(size.saturating_sub(len))
                }
                (Some(_), Some(_)) => Verdict::Allow,
                _ => unknown,
            },
            n if nr::DATA.contains(&n) => Verdict::Allow,
            _ => unknown,
        },
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn none(_: u64) -> Option<u64> {
        None
    }

    // Lines as measured on Linux 6.18 with a thread blocked in the event (see DESIGN.md).
    #[test]
    fn reads_writes_faults_and_punches_never_shrink() {
        for line in [
            "17 0x5 0x7fffd4173030 0x64 0x1000 0x0 0x0 0x7ffd 0x7f31",
            "18 0x5 0x7fffd4173030 0x64 0x2000 0x0 0x0 0x7ffd 0x7f31",
            "1 0x5 0x7fffd4173030 0xa 0x0 0x0 0x0 0x7ffd 0x7f31",
            "9 0x0 0x2000 0x3 0x1 0x5 0x1000 0x7ffd 0x7f31",
            "326 0x7 0x7fffd4173028 0x5 0x7fffd4173020 0x100 0x0 0x7ffd 0x7f31",
            "285 0x5 0x3 0x4000 0x1000 0x0 0x0 0x7ffd 0x7f31",
            "285 0x5 0x20 0x10000 0x1000 0x0 0x0 0x7ffd 0x7f31",
            "-1 0x7ffd4173000 0x7f31889f7330",
        ] {
            assert_eq!(classify(Kind::Access, Some(line), "cat", 1 << 20, &none), Verdict::Allow, "{line}");
        }
    }

    #[test]
    fn truncates_and_collapses_shrink_to_their_new_size() {
        let size = 200_704;
        let t = "76 0x7fffd4174ad1 0x1000 0x0 0x0 0x0 0x0 0x7ffd 0x7f31";
        assert_eq!(classify(Kind::Access, Some(t), "truncate", size, &none), Verdict::Shrink(4096));
        let ft = "77 0x5 0x186a0 0x0 0x0 0x0 0x0 0x7ffd 0x7f31";
        assert_eq!(classify(Kind::Access, Some(ft), "sh", size, &none), Verdict::Shrink(100_000));
        let collapse = "285 0x5 0x8 0x10000 0x1000 0x0 0x0 0x7ffd 0x7f31";
        assert_eq!(classify(Kind::Access, Some(collapse), "x", size, &none), Verdict::Shrink(size - 4096));
        // A growing truncate still holds the window at its length: the guest may extend the
        // file past it before the truncate runs.
        let grow = "77 0x5 0x40000 0x0 0x0 0x0 0x0 0x7ffd 0x7f31";
        assert_eq!(classify(Kind::Access, Some(grow), "sh", size, &none), Verdict::Shrink(0x40000));
    }

    #[test]
    fn opens_shrink_only_with_o_trunc() {
        let ro = "257 0xffffff9c 0x7fffd31f7ac8 0x0 0x0 0x0 0x0 0x7ffd 0x7f31";
        assert_eq!(classify(Kind::Open, Some(ro), "cat", 10, &none), Verdict::Allow);
        let wr = "257 0xffffff9c 0x7fffd31f7ac8 0x441 0x1b6 0x0 0x0 0x7ffd 0x7f31";
        assert_eq!(classify(Kind::Open, Some(wr), "sh", 10, &none), Verdict::Allow);
        let trunc = "257 0xffffff9c 0x7fffd31f7ac8 0x201 0x0 0x0 0x0 0x7ffd 0x7f31";
        assert_eq!(classify(Kind::Open, Some(trunc), "sh", 10, &none), Verdict::Shrink(0));
        let open = "2 0x7fffd31f7ac8 0x241 0x1b6 0x0 0x0 0x0 0x7ffd 0x7f31";
        assert_eq!(classify(Kind::Open, Some(open), "sh", 10, &none), Verdict::Shrink(0));
        // Even of an empty file: the guest may extend it before the open truncates it.
        assert_eq!(classify(Kind::Open, Some(trunc), "sh", 0, &none), Verdict::Shrink(0));
        assert_eq!(classify(Kind::Open, Some("85 0x7fff 0x1a4 0 0 0 0 0 0"), "sh", 10, &none), Verdict::Shrink(0));
    }

    #[test]
    fn openat2_is_told_by_the_flags_in_its_open_how() {
        // The line measured on 6.18 for openat2(AT_FDCWD, path, &how, 24).
        let line = "437 0xffffff9c 0x55717fdf7004 0x7ffeddeb3fb0 0x18 0x7fc184b6c740 0x0 0x7ffd 0x7fc1";
        let flags = |f: u64| move |at: u64| (at == 0x7ffe_ddeb_3fb0).then_some(f);
        assert_eq!(classify(Kind::Open, Some(line), "ls", 10, &flags(0)), Verdict::Allow);
        assert_eq!(classify(Kind::Open, Some(line), "sh", 10, &flags(0o2)), Verdict::Allow);
        assert_eq!(classify(Kind::Open, Some(line), "sh", 10, &flags(0o1002)), Verdict::Shrink(0));
        // Memory that cannot be read: unknown.
        assert_eq!(classify(Kind::Open, Some(line), "sh", 10, &none), Verdict::Shrink(0));
    }

    #[test]
    fn what_cannot_be_told_is_a_shrink_to_zero() {
        for (kind, line, comm) in [
            (Kind::Access, None, "cat"),
            (Kind::Access, Some("running"), "cat"),
            (Kind::Access, Some(""), "cat"),
            (Kind::Access, Some("-1 0x1 0x2"), "iou-wrk-1234"),
            (Kind::Access, Some("426 0x3 0x1 0x0 0x0 0x0 0x0 0x7ffd 0x7f31"), "fio"),
            (Kind::Open, Some("-1 0x1 0x2"), "kworker"),
            (Kind::Access, Some("77 0x5 zz"), "sh"),
        ] {
            assert_eq!(classify(kind, line, comm, 1 << 20, &none), Verdict::Shrink(0), "{line:?} {comm}");
        }
    }
}
