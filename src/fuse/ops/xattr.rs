//! Extended attribute opcodes: SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR.

use crate::fs::{Filesystem, NodeId, XattrReply};
use crate::fuse::abi::*;
use crate::fuse::server::{OpResult, Reply, Request, Server, ok, ok_empty};

fn xattr_reply(r: XattrReply) -> OpResult {
    match r {
        XattrReply::Value(v) => Ok(Reply::Ok(v)),
        XattrReply::Size(size) => ok(&GetxattrOut { size, padding: 0 }),
    }
}

impl<F: Filesystem> Server<F> {
    pub(crate) fn setxattr(&self, req: &mut Request<'_>) -> OpResult {
        let (size, flags) = if self.negotiated(FUSE_SETXATTR_EXT) {
            let s: SetxattrIn = req.body.obj()?;
            (s.size, s.flags)
        } else {
            let s: SetxattrInCompat = req.body.obj()?;
            (s.size, s.flags)
        };
        let name = req.body.cstr()?;
        let value = req.body.bytes(usize::try_from(size).unwrap_or(usize::MAX))?;
        self.fs.setxattr(&req.ctx, NodeId(req.hdr.nodeid), name, value, flags)?;
        ok_empty()
    }

    pub(crate) fn getxattr(&self, req: &mut Request<'_>) -> OpResult {
        let g: GetxattrIn = req.body.obj()?;
        let name = req.body.cstr()?;
        xattr_reply(self.fs.getxattr(&req.ctx, NodeId(req.hdr.nodeid), name, g.size)?)
    }

    pub(crate) fn listxattr(&self, req: &mut Request<'_>) -> OpResult {
        let g: GetxattrIn = req.body.obj()?;
        xattr_reply(self.fs.listxattr(&req.ctx, NodeId(req.hdr.nodeid), g.size)?)
    }

    pub(crate) fn removexattr(&self, req: &mut Request<'_>) -> OpResult {
        let name = req.body.cstr()?;
        self.fs.removexattr(&req.ctx, NodeId(req.hdr.nodeid), name)?;
        ok_empty()
    }
}
