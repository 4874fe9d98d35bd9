//! Lock opcodes: GETLK, SETLK, SETLKW (POSIX record locks and flock).

use crate::fs::{Filesystem, HandleId, Lock, LockRequest, NodeId};
use crate::fuse::abi::*;
use crate::fuse::server::{OpResult, Request, Server, ok, ok_empty};

fn decode(l: &LkIn, sleep: bool) -> LockRequest {
    LockRequest {
        fh: HandleId(l.fh),
        owner: l.owner,
        lock: Lock { start: l.lk.start, end: l.lk.end, typ: l.lk.typ, pid: l.lk.pid },
        sleep,
        flock: l.lk_flags & FUSE_LK_FLOCK != 0,
    }
}

impl<F: Filesystem> Server<F> {
    pub(crate) fn getlk(&self, req: &mut Request<'_>) -> OpResult {
        let l: LkIn = req.body.obj()?;
        let lk = self.fs.getlk(&req.ctx, NodeId(req.hdr.nodeid), decode(&l, false))?;
        ok(&LkOut { lk: FileLock { start: lk.start, end: lk.end, typ: lk.typ, pid: lk.pid } })
    }

    pub(crate) fn setlk(&self, req: &mut Request<'_>, sleep: bool) -> OpResult {
        let l: LkIn = req.body.obj()?;
        self.fs.setlk(&req.ctx, NodeId(req.hdr.nodeid), decode(&l, sleep))?;
        ok_empty()
    }
}
