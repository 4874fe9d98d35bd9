//! The FUSE server: reads one request from a chain, calls the filesystem, writes the reply.
//! A request that does not decode gets an errno reply (or, with no readable header, nothing);
//! the server never panics on guest input and never stops serving.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use log::debug;
use zerocopy::{Immutable, IntoBytes};

use super::abi::{InHeader, Opcode, OutHeader, WriteIn};
use super::chain::{Reader, Writer};
use super::request::{Body, DecodeError, split_extensions};
use crate::fs::{Context, Filesystem};
use crate::log_limit::warn_limited;

/// Largest WRITE payload we accept, and announce as max_write.
pub const MAX_WRITE: u32 = 1 << 20;
/// Largest non-WRITE request body (names, xattr values up to 64 KiB, forget batches).
const MAX_BODY: u32 = MAX_WRITE + 4096;

/// What a handler produced.
pub enum Reply {
    /// The opcode gets no reply (FORGET, BATCH_FORGET, INTERRUPT).
    None,
    /// Success with this payload after the out-header.
    Ok(Vec<u8>),
    /// The handler wrote the whole reply itself; this many bytes.
    Done(usize),
}

/// Why a request failed.
pub enum OpError {
    /// The filesystem's error, passed to the guest.
    Fs(io::Error),
    /// The guest's request was malformed (EINVAL).
    Decode(DecodeError),
}

impl From<io::Error> for OpError {
    fn from(e: io::Error) -> Self {
        OpError::Fs(e)
    }
}

impl From<DecodeError> for OpError {
    fn from(e: DecodeError) -> Self {
        OpError::Decode(e)
    }
}

/// A handler's result.
pub type OpResult = Result<Reply, OpError>;

/// A success carrying one wire struct.
pub fn ok<T: IntoBytes + Immutable>(v: &T) -> OpResult {
    Ok(Reply::Ok(v.as_bytes().to_vec()))
}

/// A success with no payload.
pub fn ok_empty() -> OpResult {
    Ok(Reply::Ok(Vec::new()))
}

/// The errno a filesystem error becomes on the wire.
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO) // a non-OS error here is a daemon bug: EIO, never 0
}

/// One decoded request: header, caller and body.
pub struct Request<'b> {
    pub hdr: InHeader,
    pub ctx: Context,
    pub body: Body<'b>,
}

/// Session state negotiated at INIT.
#[derive(Default)]
pub struct Session {
    pub initialized: AtomicBool,
    /// Negotiated INIT flags (flags | flags2 << 32).
    pub flags: AtomicU64,
}

/// The FUSE server over a filesystem.
pub struct Server<F: Filesystem> {
    pub(super) fs: F,
    pub(super) session: Session,
}

impl<F: Filesystem> Server<F> {
    /// A server for `fs`; nothing is served until the guest's INIT.
    pub fn new(fs: F) -> Server<F> {
        Server { fs, session: Session::default() }
    }

    /// The filesystem.
    pub fn fs(&self) -> &F {
        &self.fs
    }

    /// Whether a flag was negotiated at INIT.
    pub fn negotiated(&self, flag: u64) -> bool {
        self.session.flags.load(Ordering::Relaxed) & flag != 0
    }

    /// Ends the session as DESTROY would (device reset, disconnect).
    pub fn reset(&self) {
        self.session.initialized.store(false, Ordering::Release);
        self.fs.destroy();
    }

    /// Serves one request; returns the number of bytes written to `w` (the used length).
    /// `may_block` is false on a pool worker: a SETLKW there (the device sends those to
    /// lock-waiter threads, so the guest changed the request after the device looked) is
    /// answered ENOLCK rather than left to wait in the worker.
    pub fn handle(&self, r: &mut Reader<'_>, w: &mut Writer<'_>, may_block: bool) -> usize {
        self.handle_gated(r, w, may_block, || Some(())).0
    }

    /// `handle`, with the reply written only once `gate` gave a guard (returned with the used
    /// length, for the caller to hold until the request is in the used ring): a request that
    /// ran while its queue was stopped (None) writes nothing.
    pub fn handle_gated<G>(
        &self,
        r: &mut Reader<'_>,
        w: &mut Writer<'_>,
        may_block: bool,
        gate: impl FnOnce() -> Option<G>,
    ) -> (usize, Option<G>) {
        let Ok(hdr) = r.read_obj::<InHeader>() else {
            warn_limited!("request without a readable header ({} bytes); returned empty", r.available());
            return (0, gate());
        };
        if hdr.opcode == Opcode::Setlkw as u32 && !may_block {
            warn_limited!("SETLKW (unique {}) on a pool worker; answering ENOLCK", hdr.unique);
            let g = gate();
            return (g.as_ref().map_or(0, |_| write_reply(w, hdr.unique, -libc::ENOLCK, &[])), g);
        }
        let result = self.decode_and_run(hdr, r, w);
        let Some(g) = gate() else {
            debug!("op {} unique {}: its queue stopped meanwhile; no reply", hdr.opcode, hdr.unique);
            return (0, None);
        };
        let used = match result {
            Ok(Reply::None) => 0,
            Ok(Reply::Done(n)) => n,
            Ok(Reply::Ok(payload)) => write_reply(w, hdr.unique, 0, &payload),
            Err(OpError::Fs(e)) => {
                debug!("op {} unique {} node {}: {e}", hdr.opcode, hdr.unique, hdr.nodeid);
                write_reply(w, hdr.unique, -errno_of(&e), &[])
            }
            Err(OpError::Decode(e)) => {
                warn_limited!("malformed request (op {} unique {}): {e}", hdr.opcode, hdr.unique);
                write_reply(w, hdr.unique, -libc::EINVAL, &[])
            }
        };
        (used, Some(g))
    }

    /// Answers a request with `errno` without running it (the device had no room to run it:
    /// a SETLKW past the lock-waiter threads gets ENOLCK, which fcntl(2) documents).
    pub fn refuse(&self, r: &mut Reader<'_>, w: &mut Writer<'_>, errno: i32) -> usize {
        let Ok(hdr) = r.read_obj::<InHeader>() else { return 0 };
        debug!("op {} unique {} refused: errno {errno}", hdr.opcode, hdr.unique);
        write_reply(w, hdr.unique, -errno, &[])
    }

    fn decode_and_run(&self, hdr: InHeader, r: &mut Reader<'_>, w: &mut Writer<'_>) -> OpResult {
        let body_len = usize::try_from(hdr.len).unwrap_or(usize::MAX).checked_sub(size_of::<InHeader>());
        let Some(body_len) = body_len else { return Err(DecodeError::HeaderTooShort.into()) };
        if body_len > r.available() {
            return Err(DecodeError::LengthMismatch { len: hdr.len, available: r.available() }.into());
        }
        let Ok(opcode) = Opcode::try_from(hdr.opcode) else {
            debug!("unknown opcode {}", hdr.opcode);
            return Err(OpError::Fs(io::Error::from_raw_os_error(libc::ENOSYS)));
        };
        debug!("{opcode:?} unique {} node {} len {}", hdr.unique, hdr.nodeid, hdr.len);
        if opcode != Opcode::Init && !self.session.initialized.load(Ordering::Acquire) {
            return Err(OpError::Fs(io::Error::from_raw_os_error(libc::EIO)));
        }
        if opcode == Opcode::Write {
            return self.write_op(hdr, r, body_len);
        }
        if hdr.len > MAX_BODY {
            return Err(DecodeError::TooLarge { len: hdr.len }.into());
        }
        let bytes = r.read_vec(body_len).map_err(io::Error::from)?;
        let extlen = usize::from(hdr.total_extlen) * 8;
        let (body, groups) = split_extensions(&bytes, extlen)?;
        let ctx = Context { uid: hdr.uid, gid: hdr.gid, pid: hdr.pid, groups };
        let mut req = Request { hdr, ctx, body: Body::new(body) };
        self.dispatch(opcode, &mut req, w)
    }

    /// WRITE keeps its payload in guest memory: only the header is copied.
    fn write_op(&self, hdr: InHeader, r: &mut Reader<'_>, body_len: usize) -> OpResult {
        let win: WriteIn =
            r.read_obj().map_err(|_| DecodeError::BodyTooShort { needed: size_of::<WriteIn>(), have: body_len })?;
        if win.size > MAX_WRITE {
            return Err(DecodeError::TooLarge { len: win.size }.into());
        }
        let size = usize::try_from(win.size).unwrap_or(usize::MAX);
        let after_hdr = body_len.saturating_sub(size_of::<WriteIn>());
        if size > after_hdr {
            return Err(DecodeError::LengthMismatch { len: hdr.len, available: after_hdr }.into());
        }
        // Extensions (never sent with WRITE today) would follow the data; skip nothing else.
        let ctx = Context { uid: hdr.uid, gid: hdr.gid, pid: hdr.pid, groups: Vec::new() };
        self.write(&ctx, hdr, win, r)
    }
}

/// Writes an out-header and payload; falls back to a bare ERANGE header when the guest's
/// buffer is too small, and to nothing when even that does not fit.
pub fn write_reply(w: &mut Writer<'_>, unique: u64, error: i32, payload: &[u8]) -> usize {
    let total = size_of::<OutHeader>() + payload.len();
    if total > w.available() {
        warn_limited!("reply of {total} bytes does not fit the guest's {} byte buffer", w.available());
        if error == 0 {
            return write_reply(w, unique, -libc::ERANGE, &[]);
        }
        return 0;
    }
    let len = u32::try_from(total).unwrap_or(u32::MAX);
    let hdr = OutHeader { len, error, unique };
    if w.write_obj(&hdr).is_err() || w.write_all(payload).is_err() {
        return w.written();
    }
    total
}
