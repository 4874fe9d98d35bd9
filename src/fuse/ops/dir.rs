//! Directory opcodes: OPENDIR, READDIR, READDIRPLUS, RELEASEDIR.

use std::ffi::CString;
use std::io;

use zerocopy::IntoBytes;

use crate::fs::{Context, DirEntry, DirSink, Filesystem, HandleId, NodeId};
use crate::fuse::abi::*;
use crate::fuse::chain::Writer;
use crate::fuse::convert::open_flags;
use crate::fuse::server::{OpResult, Reply, Request, Server, ok, ok_empty};

/// Packs entries into a READDIR(PLUS) reply of at most `max` bytes.
struct Packer<'s, F: Filesystem> {
    buf: Vec<u8>,
    max: usize,
    /// For READDIRPLUS: the filesystem, caller and directory to look entries up in.
    plus: Option<(&'s F, &'s Context, NodeId)>,
}

impl<F: Filesystem> Packer<'_, F> {
    fn entry_out(&self, name: &[u8]) -> EntryOut {
        let Some((fs, ctx, parent)) = self.plus else { return EntryOut::default() };
        if name == b"." || name == b".." {
            return EntryOut::default(); // nodeid 0: the guest does not instantiate these
        }
        let Ok(cname) = CString::new(name) else { return EntryOut::default() };
        // A name that vanished since getdents is listed without attributes (nodeid 0).
        fs.lookup(ctx, parent, &cname).map(EntryOut::from).unwrap_or_default()
    }
}

impl<F: Filesystem> DirSink for Packer<'_, F> {
    fn add(&mut self, e: &DirEntry<'_>) -> io::Result<bool> {
        let fixed = size_of::<Dirent>() + if self.plus.is_some() { size_of::<EntryOut>() } else { 0 };
        let size = dirent_align(fixed + e.name.len());
        if self.buf.len() + size > self.max {
            return Ok(false);
        }
        let start = self.buf.len();
        if self.plus.is_some() {
            let out = self.entry_out(e.name);
            self.buf.extend_from_slice(out.as_bytes());
        }
        let namelen = u32::try_from(e.name.len()).map_err(|_| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        let d = Dirent { ino: e.ino, off: e.offset, namelen, typ: e.typ };
        self.buf.extend_from_slice(d.as_bytes());
        self.buf.extend_from_slice(e.name);
        self.buf.resize(start + size, 0);
        Ok(true)
    }
}

impl<F: Filesystem> Server<F> {
    pub(crate) fn opendir(&self, req: &mut Request<'_>) -> OpResult {
        let o: OpenIn = req.body.obj()?;
        let (fh, opts) = self.fs.opendir(&req.ctx, NodeId(req.hdr.nodeid), o.flags)?;
        ok(&OpenOut { fh: fh.0, open_flags: open_flags(opts), backing_id: 0 })
    }

    pub(crate) fn readdir(&self, req: &mut Request<'_>, w: &mut Writer<'_>, plus: bool) -> OpResult {
        let r: ReadIn = req.body.obj()?;
        let room = w.available().saturating_sub(size_of::<OutHeader>());
        let max = usize::try_from(r.size).unwrap_or(0).min(room).min(1 << 20);
        let node = NodeId(req.hdr.nodeid);
        let plus = plus.then_some((&self.fs, &req.ctx, node));
        let mut packer = Packer { buf: Vec::with_capacity(max.min(64 * 1024)), max, plus };
        self.fs.readdir(&req.ctx, node, HandleId(r.fh), r.offset, &mut packer)?;
        Ok(Reply::Ok(packer.buf))
    }

    pub(crate) fn releasedir(&self, req: &mut Request<'_>) -> OpResult {
        let r: ReleaseIn = req.body.obj()?;
        self.fs.releasedir(&req.ctx, NodeId(req.hdr.nodeid), HandleId(r.fh))?;
        ok_empty()
    }
}
