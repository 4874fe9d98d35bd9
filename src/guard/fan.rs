//! The fanotify calls of the guard: a pre-content group, inode marks, events, answers.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

// include/uapi/linux/fanotify.h (Linux 6.14+); not in the libc crate yet.
const FAN_PRE_ACCESS: u64 = 0x0010_0000;
const FAN_OPEN_PERM: u64 = libc::FAN_OPEN_PERM;
const FAN_NOFD: i32 = -1;
/// What a mark asks for: every open, and every access that may change data or size.
const MASK: u64 = FAN_PRE_ACCESS | FAN_OPEN_PERM;

/// One permission event: the file (an fd the kernel opened for us), the thread that waits, and
/// whether it is an open.
pub struct Event {
    pub file: OwnedFd,
    pub tid: i32,
    pub open: bool,
}

/// A fanotify group of the pre-content class that reports thread ids. Creating one needs
/// CAP_SYS_ADMIN; marking and answering need only the group's fd (and read access to the
/// marked file). Its queue and marks are unlimited: no event is dropped for a full queue, and
/// no mark refused for a count.
pub fn group() -> io::Result<OwnedFd> {
    let flags = libc::FAN_CLASS_PRE_CONTENT
        | libc::FAN_CLOEXEC
        | libc::FAN_NONBLOCK
        | libc::FAN_REPORT_TID
        | libc::FAN_UNLIMITED_QUEUE
        | libc::FAN_UNLIMITED_MARKS;
    let event_flags = u32::try_from(libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC).unwrap_or(0);
    // SAFETY: plain syscall with integer arguments; the result is checked.
    let fd = unsafe { libc::fanotify_init(flags, event_flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fanotify_init returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds (or removes) the inode mark of `file` in `group`.
pub fn mark(group: BorrowedFd<'_>, file: BorrowedFd<'_>, add: bool) -> io::Result<()> {
    let op = if add { libc::FAN_MARK_ADD } else { libc::FAN_MARK_REMOVE };
    // SAFETY: a null path with a dirfd marks the inode of that fd; both fds are borrowed.
    let r = unsafe { libc::fanotify_mark(group.as_raw_fd(), op, MASK, file.as_raw_fd(), std::ptr::null()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The events queued now (none when the group would block).
pub fn read(group: BorrowedFd<'_>) -> io::Result<Vec<Event>> {
    // u64 elements: the metadata is 8-byte aligned.
    let mut buf = vec![0u64; 1024];
    let len = std::mem::size_of_val(buf.as_slice());
    // SAFETY: `buf` is writable for `len` bytes; the group fd is borrowed.
    let n = unsafe { libc::read(group.as_raw_fd(), buf.as_mut_ptr().cast(), len) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(Vec::new()) } else { Err(e) };
    }
    let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).take(n.unsigned_abs()).collect();
    let mut events = Vec::new();
    let mut at = 0;
    // struct fanotify_event_metadata: event_len u32, vers u8, reserved u8, metadata_len u16,
    // mask u64, fd i32, pid i32; info records follow up to event_len.
    while let Some(m) = bytes.get(at..at + 24) {
        let word = |r: std::ops::Range<usize>| m.get(r).unwrap_or_default();
        let event_len = u32::from_ne_bytes(word(0..4).try_into().unwrap_or_default());
        let mask = u64::from_ne_bytes(word(8..16).try_into().unwrap_or_default());
        let fd = i32::from_ne_bytes(word(16..20).try_into().unwrap_or_default());
        let tid = i32::from_ne_bytes(word(20..24).try_into().unwrap_or_default());
        let Ok(step) = usize::try_from(event_len) else { break };
        if step < 24 {
            break;
        }
        at += step;
        if fd == FAN_NOFD || fd < 0 {
            continue;
        }
        // SAFETY: the kernel installed this fd in our table for this event; we own it now.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        events.push(Event { file, tid, open: mask & FAN_OPEN_PERM != 0 });
    }
    Ok(events)
}

/// Answers the event whose fd number was `fd` (allow, or deny with EPERM).
pub fn answer(group: BorrowedFd<'_>, fd: i32, allow: bool) -> io::Result<()> {
    let r = libc::fanotify_response { fd, response: if allow { libc::FAN_ALLOW } else { libc::FAN_DENY } };
    let len = std::mem::size_of_val(&r);
    // SAFETY: `r` is a valid fanotify_response of `len` bytes; the group fd is borrowed.
    let n = unsafe { libc::write(group.as_raw_fd(), std::ptr::from_ref(&r).cast(), len) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// fstat(2) of an event's file.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is writable for one stat; the fd is borrowed.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded and filled `st`.
    Ok(unsafe { st.assume_init() })
}
