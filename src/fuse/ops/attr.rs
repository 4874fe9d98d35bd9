//! Attribute opcodes: GETATTR, SETATTR, STATX, READLINK, STATFS, ACCESS.

use crate::fs::{Filesystem, HandleId, NodeId, SetAttr, TimeSet};
use crate::fuse::abi::*;
use crate::fuse::convert::timeout;
use crate::fuse::server::{OpResult, Reply, Request, Server, ok, ok_empty};

fn time_set(valid: u32, set: u32, now: u32, secs: u64, nsecs: u32) -> TimeSet {
    if valid & now != 0 {
        TimeSet::Now
    } else if valid & set != 0 {
        TimeSet::At(i64::from_ne_bytes(secs.to_ne_bytes()), nsecs)
    } else {
        TimeSet::Omit
    }
}

fn decode_setattr(s: &SetattrIn) -> SetAttr {
    let v = s.valid;
    let pick = |bit: u32, val| if v & bit != 0 { Some(val) } else { None };
    SetAttr {
        mode: pick(FATTR_MODE, s.mode),
        uid: pick(FATTR_UID, s.uid),
        gid: pick(FATTR_GID, s.gid),
        size: if v & FATTR_SIZE != 0 { Some(s.size) } else { None },
        atime: time_set(v, FATTR_ATIME, FATTR_ATIME_NOW, s.atime, s.atimensec),
        mtime: time_set(v, FATTR_MTIME, FATTR_MTIME_NOW, s.mtime, s.mtimensec),
        kill_suidgid: v & FATTR_KILL_SUIDGID != 0,
    }
}

impl<F: Filesystem> Server<F> {
    pub(crate) fn getattr(&self, req: &mut Request<'_>) -> OpResult {
        let g: GetattrIn = req.body.obj()?;
        let fh = (g.getattr_flags & FUSE_GETATTR_FH != 0).then_some(HandleId(g.fh));
        let (attr, t) = self.fs.getattr(&req.ctx, NodeId(req.hdr.nodeid), fh)?;
        let (s, ns) = timeout(t);
        ok(&AttrOut { attr_valid: s, attr_valid_nsec: ns, dummy: 0, attr: attr.into() })
    }

    pub(crate) fn setattr(&self, req: &mut Request<'_>) -> OpResult {
        let s: SetattrIn = req.body.obj()?;
        let fh = (s.valid & FATTR_FH != 0).then_some(HandleId(s.fh));
        let (attr, t) = self.fs.setattr(&req.ctx, NodeId(req.hdr.nodeid), fh, decode_setattr(&s))?;
        let (s, ns) = timeout(t);
        ok(&AttrOut { attr_valid: s, attr_valid_nsec: ns, dummy: 0, attr: attr.into() })
    }

    pub(crate) fn statx(&self, req: &mut Request<'_>) -> OpResult {
        let sx: StatxIn = req.body.obj()?;
        let fh = (sx.getattr_flags & FUSE_GETATTR_FH != 0).then_some(HandleId(sx.fh));
        let (attr, t) = self.fs.getattr(&req.ctx, NodeId(req.hdr.nodeid), fh)?;
        let (s, ns) = timeout(t);
        let flags = attr.flags;
        ok(&StatxOut { attr_valid: s, attr_valid_nsec: ns, flags, spare: [0; 2], stat: attr.into() })
    }

    pub(crate) fn readlink(&self, req: &mut Request<'_>) -> OpResult {
        Ok(Reply::Ok(self.fs.readlink(&req.ctx, NodeId(req.hdr.nodeid))?))
    }

    pub(crate) fn statfs(&self, req: &mut Request<'_>) -> OpResult {
        let s = self.fs.statfs(&req.ctx, NodeId(req.hdr.nodeid))?;
        ok(&Kstatfs {
            blocks: s.blocks,
            bfree: s.bfree,
            bavail: s.bavail,
            files: s.files,
            ffree: s.ffree,
            bsize: s.bsize,
            namelen: s.namelen,
            frsize: s.frsize,
            ..Kstatfs::default()
        })
    }

    pub(crate) fn access(&self, req: &mut Request<'_>) -> OpResult {
        let a: AccessIn = req.body.obj()?;
        self.fs.access(&req.ctx, NodeId(req.hdr.nodeid), a.mask)?;
        ok_empty()
    }
}
