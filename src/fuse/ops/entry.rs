//! Name-space opcodes: LOOKUP, FORGET, BATCH_FORGET, SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR,
//! RENAME(2), LINK, CREATE, TMPFILE.

use zerocopy::IntoBytes;

use crate::fs::{CreateParams, Filesystem, NodeId};
use crate::fuse::abi::*;
use crate::fuse::convert::open_flags;
use crate::fuse::request::DecodeError;
use crate::fuse::server::{OpResult, Reply, Request, Server, ok, ok_empty};

impl<F: Filesystem> Server<F> {
    pub(crate) fn lookup(&self, req: &mut Request<'_>) -> OpResult {
        let name = req.body.cstr()?;
        let e = self.fs.lookup(&req.ctx, NodeId(req.hdr.nodeid), name)?;
        ok(&EntryOut::from(e))
    }

    pub(crate) fn forget(&self, req: &mut Request<'_>) -> OpResult {
        let f: ForgetIn = req.body.obj()?;
        self.fs.forget(NodeId(req.hdr.nodeid), f.nlookup);
        Ok(Reply::None)
    }

    pub(crate) fn batch_forget(&self, req: &mut Request<'_>) -> OpResult {
        let b: BatchForgetIn = req.body.obj()?;
        let n = usize::try_from(b.count).map_err(|_| DecodeError::CountExceedsLen { count: b.count })?;
        let need = n.checked_mul(size_of::<ForgetOne>()).ok_or(DecodeError::CountExceedsLen { count: b.count })?;
        if need > req.body.rest().len() {
            return Err(DecodeError::CountExceedsLen { count: b.count }.into());
        }
        for _ in 0..n {
            let one: ForgetOne = req.body.obj()?;
            self.fs.forget(NodeId(one.nodeid), one.nlookup);
        }
        Ok(Reply::None)
    }

    pub(crate) fn symlink(&self, req: &mut Request<'_>) -> OpResult {
        let name = req.body.cstr()?;
        let target = req.body.cstr()?;
        let e = self.fs.symlink(&req.ctx, NodeId(req.hdr.nodeid), name, target)?;
        ok(&EntryOut::from(e))
    }

    pub(crate) fn mknod(&self, req: &mut Request<'_>) -> OpResult {
        let m: MknodIn = req.body.obj()?;
        let name = req.body.cstr()?;
        let p = CreateParams { mode: m.mode, umask: m.umask, rdev: m.rdev, ..CreateParams::default() };
        let e = self.fs.mknod(&req.ctx, NodeId(req.hdr.nodeid), name, p)?;
        ok(&EntryOut::from(e))
    }

    pub(crate) fn mkdir(&self, req: &mut Request<'_>) -> OpResult {
        let m: MkdirIn = req.body.obj()?;
        let name = req.body.cstr()?;
        let p = CreateParams { mode: m.mode, umask: m.umask, ..CreateParams::default() };
        let e = self.fs.mkdir(&req.ctx, NodeId(req.hdr.nodeid), name, p)?;
        ok(&EntryOut::from(e))
    }

    pub(crate) fn unlink(&self, req: &mut Request<'_>, dir: bool) -> OpResult {
        let name = req.body.cstr()?;
        let parent = NodeId(req.hdr.nodeid);
        if dir {
            self.fs.rmdir(&req.ctx, parent, name)?
        } else {
            self.fs.unlink(&req.ctx, parent, name)?
        }
        ok_empty()
    }

    pub(crate) fn rename(&self, req: &mut Request<'_>, v2: bool) -> OpResult {
        let (newdir, flags) = if v2 {
            let r: Rename2In = req.body.obj()?;
            (r.newdir, r.flags)
        } else {
            (req.body.obj::<RenameIn>()?.newdir, 0)
        };
        let old = req.body.cstr()?;
        let new = req.body.cstr()?;
        self.fs.rename(&req.ctx, (NodeId(req.hdr.nodeid), old), (NodeId(newdir), new), flags)?;
        ok_empty()
    }

    pub(crate) fn link(&self, req: &mut Request<'_>) -> OpResult {
        let l: LinkIn = req.body.obj()?;
        let name = req.body.cstr()?;
        let e = self.fs.link(&req.ctx, NodeId(l.oldnodeid), NodeId(req.hdr.nodeid), name)?;
        ok(&EntryOut::from(e))
    }

    pub(crate) fn create(&self, req: &mut Request<'_>, tmpfile: bool) -> OpResult {
        let c: CreateIn = req.body.obj()?;
        let kill = c.open_flags & FUSE_OPEN_KILL_SUIDGID != 0;
        let p = CreateParams { mode: c.mode, umask: c.umask, flags: c.flags, rdev: 0, kill_suidgid: kill };
        let parent = NodeId(req.hdr.nodeid);
        let (e, fh, opts) = if tmpfile {
            self.fs.tmpfile(&req.ctx, parent, p)?
        } else {
            let name = req.body.cstr()?;
            self.fs.create(&req.ctx, parent, name, p)?
        };
        let open = OpenOut { fh: fh.0, open_flags: open_flags(opts), backing_id: 0 };
        let mut payload = EntryOut::from(e).as_bytes().to_vec();
        payload.extend_from_slice(open.as_bytes());
        Ok(Reply::Ok(payload))
    }
}
