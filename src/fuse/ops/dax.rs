//! DAX opcodes: SETUPMAPPING and REMOVEMAPPING.

use crate::fs::{Filesystem, NodeId, SetupMapping};
use crate::fuse::abi::*;
use crate::fuse::request::DecodeError;
use crate::fuse::server::{OpResult, Request, Server, ok_empty};

/// Most REMOVEMAPPING entries a guest sends at once (PAGE_SIZE/16 for 64 KiB-page guests).
const MAX_REMOVE: u32 = 4096;

impl<F: Filesystem> Server<F> {
    pub(crate) fn setupmapping(&self, req: &mut Request<'_>) -> OpResult {
        let s: SetupmappingIn = req.body.obj()?;
        let m = SetupMapping { fh: s.fh, foffset: s.foffset, len: s.len, flags: s.flags, moffset: s.moffset };
        self.fs.setupmapping(&req.ctx, NodeId(req.hdr.nodeid), m)?;
        ok_empty()
    }

    pub(crate) fn removemapping(&self, req: &mut Request<'_>) -> OpResult {
        let r: RemovemappingIn = req.body.obj()?;
        let bad = DecodeError::CountExceedsLen { count: r.count };
        // fuse.h: the array starts at byte 44 of the message, unaligned; `obj` reads unaligned.
        let need = usize::try_from(r.count).map_err(|_| bad.clone())?.checked_mul(size_of::<RemovemappingOne>());
        if r.count == 0 || r.count > MAX_REMOVE || need != Some(req.body.rest().len()) {
            return Err(bad.into());
        }
        let mut ranges = Vec::with_capacity(r.count as usize);
        for _ in 0..r.count {
            let one: RemovemappingOne = req.body.obj()?;
            ranges.push((one.moffset, one.len));
        }
        self.fs.removemapping(&req.ctx, &ranges)?;
        ok_empty()
    }
}
