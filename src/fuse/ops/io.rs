//! File opcodes: OPEN, READ, WRITE, RELEASE, FSYNC(DIR), FLUSH, FALLOCATE, LSEEK,
//! COPY_FILE_RANGE, SYNCFS.

use std::io;

use crate::fs::Context;
use crate::fs::{CopyRange, Filesystem, HandleId, NodeId, ReadParams, WriteParams};
use crate::fuse::abi::*;
use crate::fuse::chain::{Reader, Writer};
use crate::fuse::convert::open_flags;
use crate::fuse::server::{MAX_WRITE, OpResult, Reply, Request, Server, ok, ok_empty};

impl<F: Filesystem> Server<F> {
    pub(crate) fn open(&self, req: &mut Request<'_>) -> OpResult {
        let o: OpenIn = req.body.obj()?;
        let kill = o.open_flags & FUSE_OPEN_KILL_SUIDGID != 0;
        let (fh, opts) = self.fs.open(&req.ctx, NodeId(req.hdr.nodeid), o.flags, kill)?;
        ok(&OpenOut { fh: fh.0, open_flags: open_flags(opts), backing_id: 0 })
    }

    /// READ writes its data straight into the guest buffers after the out-header.
    pub(crate) fn read(&self, req: &mut Request<'_>, w: &mut Writer<'_>) -> OpResult {
        let r: ReadIn = req.body.obj()?;
        if r.size > MAX_WRITE {
            return Err(io::Error::from_raw_os_error(libc::EINVAL).into());
        }
        let mut data = w.split_off(size_of::<OutHeader>()).map_err(io::Error::from)?;
        let size = usize::try_from(r.size).unwrap_or(0).min(data_room(&data));
        let p = ReadParams { fh: HandleId(r.fh), offset: r.offset, size };
        let n = self.fs.read(&req.ctx, NodeId(req.hdr.nodeid), &mut data, p)?;
        let len = u32::try_from(size_of::<OutHeader>() + n).unwrap_or(u32::MAX);
        w.write_obj(&OutHeader { len, error: 0, unique: req.hdr.unique }).map_err(io::Error::from)?;
        Ok(Reply::Done(size_of::<OutHeader>() + n))
    }

    /// WRITE takes its data straight from the guest buffers.
    pub(crate) fn write(&self, ctx: &Context, hdr: InHeader, win: WriteIn, r: &mut Reader<'_>) -> OpResult {
        let p = WriteParams {
            fh: HandleId(win.fh),
            offset: win.offset,
            size: usize::try_from(win.size).unwrap_or(0),
            kill_suidgid: win.write_flags & FUSE_WRITE_KILL_SUIDGID != 0,
            writeback: win.write_flags & FUSE_WRITE_CACHE != 0,
        };
        let n = self.fs.write(ctx, NodeId(hdr.nodeid), r, p)?;
        ok(&WriteOut { size: u32::try_from(n).unwrap_or(0), padding: 0 })
    }

    pub(crate) fn release(&self, req: &mut Request<'_>) -> OpResult {
        let r: ReleaseIn = req.body.obj()?;
        let drop_locks = r.release_flags & (FUSE_RELEASE_FLUSH | FUSE_RELEASE_FLOCK_UNLOCK) != 0;
        self.fs.release(&req.ctx, NodeId(req.hdr.nodeid), HandleId(r.fh), drop_locks.then_some(r.lock_owner))?;
        ok_empty()
    }

    pub(crate) fn fsync(&self, req: &mut Request<'_>, dir: bool) -> OpResult {
        let f: FsyncIn = req.body.obj()?;
        let datasync = f.fsync_flags & FUSE_FSYNC_FDATASYNC != 0;
        let (node, fh) = (NodeId(req.hdr.nodeid), HandleId(f.fh));
        if dir {
            self.fs.fsyncdir(&req.ctx, node, fh, datasync)?
        } else {
            self.fs.fsync(&req.ctx, node, fh, datasync)?
        }
        ok_empty()
    }

    pub(crate) fn flush(&self, req: &mut Request<'_>) -> OpResult {
        let f: FlushIn = req.body.obj()?;
        self.fs.flush(&req.ctx, NodeId(req.hdr.nodeid), HandleId(f.fh), f.lock_owner)?;
        ok_empty()
    }

    pub(crate) fn fallocate(&self, req: &mut Request<'_>) -> OpResult {
        let f: FallocateIn = req.body.obj()?;
        self.fs.fallocate(&req.ctx, NodeId(req.hdr.nodeid), HandleId(f.fh), f.mode, (f.offset, f.length))?;
        ok_empty()
    }

    pub(crate) fn lseek(&self, req: &mut Request<'_>) -> OpResult {
        let l: LseekIn = req.body.obj()?;
        let offset = self.fs.lseek(&req.ctx, NodeId(req.hdr.nodeid), HandleId(l.fh), l.offset, l.whence)?;
        ok(&LseekOut { offset })
    }

    pub(crate) fn copy_file_range(&self, req: &mut Request<'_>) -> OpResult {
        let c: CopyFileRangeIn = req.body.obj()?;
        let args = CopyRange {
            node_in: NodeId(req.hdr.nodeid),
            fh_in: HandleId(c.fh_in),
            off_in: c.off_in,
            node_out: NodeId(c.nodeid_out),
            fh_out: HandleId(c.fh_out),
            off_out: c.off_out,
            len: c.len.min(u64::from(u32::MAX)),
            flags: c.flags,
        };
        let n = self.fs.copy_file_range(&req.ctx, args)?;
        ok(&WriteOut { size: u32::try_from(n).unwrap_or(u32::MAX), padding: 0 })
    }

    pub(crate) fn syncfs(&self, req: &mut Request<'_>) -> OpResult {
        let _: SyncfsIn = req.body.obj()?;
        self.fs.syncfs(&req.ctx, NodeId(req.hdr.nodeid))?;
        ok_empty()
    }
}

fn data_room(w: &Writer<'_>) -> usize {
    crate::fs::ZeroCopyWriter::available(w)
}
